"""
Train a GPT with maximum likelihood, behaviour cloning with <bkspc>, or SequenceMatch.

On one CPU or GPU:
$ python train.py config/shakespeare_seqmatch.py
On several GPUs of one node (DDP; gloo instead of nccl on CPUs):
$ torchrun --standalone --nproc_per_node=4 train.py config/openwebtext_seqmatch.py

objective = 'mle':      next-token cross-entropy on clean data (nanoGPT).
objective = 'bc':       cross-entropy on noise-augmented data: it learns to <bkspc> after a mistake
                        (the paper's "MLE + backspace" baseline).
objective = 'seqmatch': bc alone for bc_warmup_iters, then sm_weight * L_SM + (1 - sm_weight) * L_BC,
                        with data rows and rollouts of the current policy (a FIFO replay buffer
                        refreshed every sample_interval iterations) in one forward pass.
"""

import contextlib
import itertools
import json
import math
import os
import pickle
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from model import GPT, GPTConfig, load_checkpoint
from seqmatch import backspace_inputs, bc_loss, generate, noisy_rows, seqmatch_loss, soft_values
from tokenizer import Tokenizer, load_meta

# -----------------------------------------------------------------------------
# default config values: a small char-level SequenceMatch run
# I/O
out_dir = 'out'  # where ckpt.pt goes
eval_interval = 250  # evaluate (and checkpoint) every this many iterations
log_interval = 10  # print training stats every this many iterations
eval_iters = 20  # batches per evaluation
eval_only = False  # evaluate once and exit
init_from = 'scratch'  # 'scratch', 'resume' (from out_dir), 'gpt2*', or the path of another run's ckpt.pt
overwrite = False  # True: a new run may replace the checkpoint (and log) of an earlier run in out_dir
# data
dataset = 'shakespeare_char'  # data/<dataset>/ holds train.bin, val.bin, meta.pkl
gradient_accumulation_steps = 1  # micro-batches per optimizer step (per process under DDP)
batch_size = 12  # data rows per micro-batch
block_size = 64  # tokens per row
# model
n_layer = 4  # transformer blocks
n_head = 4  # attention heads per block
n_embd = 128  # width of the residual stream
dropout = 0.0  # for pretraining 0 is good, for finetuning try 0.1+
bias = False  # biases inside LayerNorm and Linear layers?
# AdamW optimizer
learning_rate = 1e-3  # max learning rate
max_iters = 2000  # total optimizer steps
weight_decay = 1e-1  # on the matrices (Linear weights, embeddings), not on biases or LayerNorm gains
beta1 = 0.9  # AdamW's momentum
beta2 = 0.99  # AdamW's second-moment decay; 0.99 (not 0.95) as in nanoGPT's char model: few tokens per iteration
grad_clip = 1.0  # clip gradients at this norm, or 0.0 for none
# learning rate schedule: linear warm-up, then cosine decay to min_lr
decay_lr = True  # False: a constant learning_rate
warmup_iters = 100  # iterations of linear warm-up from ~0 to learning_rate
lr_decay_iters = 2000  # ~= max_iters per Chinchilla
min_lr = 1e-4  # ~= learning_rate / 10 per Chinchilla
# objective
objective = 'seqmatch'  # 'mle', 'bc' or 'seqmatch'
p_noise = 0.05  # chance of a noise token + <bkspc> before each data token (bc, seqmatch)
noise = 'random'  # 'random': uniform over the vocabulary; 'ground_truth': the dataset's own (arithmetic)
bc_warmup_iters = 500  # seqmatch: iterations of pure bc before the SequenceMatch loss switches on
sm_weight = 0.5  # seqmatch: loss = sm_weight * L_SM + (1 - sm_weight) * L_BC
gamma = 0.998  # discount (the paper's value)
alpha = 1.0  # chi^2 regulariser: the loss has 1/(4 alpha) * E[r^2]
model_batch_size = 6  # seqmatch: rollout rows per micro-batch, drawn from the replay buffer
sample_interval = 10  # seqmatch: refresh rollouts every this many iterations
rollouts_per_sample = 24  # seqmatch: new rollouts per refresh, pushed into the buffer
buffer_size = 240  # seqmatch: the replay buffer keeps the most recent this many rollouts
prompt_len = 16  # seqmatch: data tokens that start a rollout; it generates block_size - prompt_len
prompt_suffix = ''  # seqmatch: rollout prompts end with this text (e.g. '? ', the end of a question); '' = anywhere
temperature = 1.0  # seqmatch: rollout sampling temperature
top_k = 0  # seqmatch: sample rollouts from the top k actions only, 0 = all
# system
device = 'auto'  # 'auto' (cuda, then mps, then cpu), or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'  # 'auto' (bfloat16 where supported, else float32), 'float32', 'bfloat16', 'float16'
compile = False  # torch.compile the model (PyTorch 2, a GPU helps)
seed = 1337  # random seed of the batches, the noise and the rollouts (plus the process rank under DDP)
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
exec(open('configurator.py').read())  # overrides from the command line or a config file
config = {k: globals()[k] for k in config_keys}  # saved in the checkpoint
# -----------------------------------------------------------------------------
assert objective in ('mle', 'bc', 'seqmatch'), f"objective must be 'mle', 'bc' or 'seqmatch', not {objective!r}"
assert noise in ('random', 'ground_truth'), f"noise must be 'random' or 'ground_truth', not {noise!r}"
if objective == 'seqmatch':
    assert 0 < prompt_len < block_size, "a rollout needs a prompt and room to generate"
if init_from != 'resume' and not overwrite and os.path.exists(os.path.join(out_dir, 'ckpt.pt')):
    raise SystemExit(f"{out_dir} already holds a checkpoint of an earlier run; nothing was changed. Either continue "
                     f"it with --init_from=resume, or start a new run with another --out_dir=... "
                     f"(or replace it with --overwrite=True)")

# various inits, derived attributes, I/O setup
ddp = int(os.environ.get('RANK', -1)) != -1  # launched by torchrun?
if device == 'auto':
    device = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
if ddp:
    torch.distributed.init_process_group(backend='nccl' if device.startswith('cuda') else 'gloo')
    ddp_rank = int(os.environ['RANK'])
    ddp_local_rank = int(os.environ['LOCAL_RANK'])
    ddp_world_size = int(os.environ['WORLD_SIZE'])
    if device.startswith('cuda'):
        device = f'cuda:{ddp_local_rank}'
        torch.cuda.set_device(device)
    master_process = ddp_rank == 0  # this process does the logging, checkpointing etc.
else:
    ddp_rank, ddp_world_size, master_process = 0, 1, True
print_once = print if master_process else (lambda *a, **k: None)
device_type = 'cuda' if device.startswith('cuda') else device  # for autocast
if dtype == 'auto':
    dtype = 'bfloat16' if device_type == 'cuda' and torch.cuda.is_bf16_supported() else 'float32'
if dtype != 'float32' and device_type != 'cuda':
    print_once(f"dtype {dtype} is only used on CUDA here; falling back to float32 on {device_type}")
    dtype = 'float32'
ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
ctx = contextlib.nullcontext() if dtype == 'float32' else torch.autocast(device_type=device_type, dtype=ptdtype)
tokens_per_iter = gradient_accumulation_steps * ddp_world_size * batch_size * block_size
print_once(f"device {device}, dtype {dtype}, {ddp_world_size} process(es); data tokens per iteration: {tokens_per_iter:,}")
torch.manual_seed(seed + ddp_rank)  # each process its own rollouts, replay draws, dropout and evaluation batches
if device_type == 'cuda':
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

def or_exit(load, *args):
    """load(*args); what a user can fix (a missing file or package, a checkpoint refused as unsafe) stops with one
    line."""
    try:
        return load(*args)
    except (FileNotFoundError, ImportError, pickle.UnpicklingError) as e:
        raise SystemExit(str(e))

def duration(seconds):
    """e.g. 2m05s, or 3h07m for long runs."""
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"

# data: nanoGPT's uint16 memmaps, plus the ids that SequenceMatch needs
data_dir = os.path.join('data', dataset)
meta = or_exit(load_meta, data_dir)
bkspc_id, eos_id = meta['bkspc_id'], meta['eos_id']
n_actions = bkspc_id + 1  # base vocabulary + <bkspc>; logits above are embedding padding
if noise == 'ground_truth':
    assert meta.get('task') == 'arithmetic', "noise='ground_truth' exists for the arithmetic task only"
    from data.arithmetic.noise import wrong_digit_noise  # the one dataset with noise of its own
prompt_ends = None  # where a rollout prompt may end: anywhere (None), or right after each prompt_suffix in the data
if objective == 'seqmatch' and prompt_suffix:
    suffix = Tokenizer(meta).encode(prompt_suffix)
    train_data = np.memmap(os.path.join(data_dir, 'train.bin'), dtype=np.uint16, mode='r')
    hits = np.lib.stride_tricks.sliding_window_view(train_data, len(suffix)) == suffix  # (n - len(suffix) + 1, len)
    ends = np.flatnonzero(hits.all(axis=1)) + len(suffix)
    prompt_ends = torch.from_numpy(ends[ends >= prompt_len])
    assert len(prompt_ends) > 0, f"prompt_suffix {prompt_suffix!r} never occurs in the training data"

def windows(split, starts, length):
    """(len(starts), length) windows of the split's tokens beginning at starts, on the CPU."""
    # recreate the memmap every batch to avoid a memory leak, as nanoGPT does
    data = np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=np.uint16, mode='r')
    return torch.stack([torch.from_numpy(data[i:i + length].astype(np.int64)) for i in starts])

def data_rows(split, n_rows, length, generator=None):
    """(n_rows, length) windows at random offsets of the split."""
    n_tokens = os.path.getsize(os.path.join(data_dir, f'{split}.bin')) // 2  # uint16
    return windows(split, torch.randint(n_tokens - length, (n_rows,), generator=generator), length)

def rollout_prompts(n_rows):
    """(n_rows, prompt_len) windows of the training data that end where a prompt may end."""
    if prompt_ends is None:
        return data_rows('train', n_rows, prompt_len)
    ends = prompt_ends[torch.randint(len(prompt_ends), (n_rows,))]
    return windows('train', ends - prompt_len, prompt_len)

def to_device(*tensors):
    if device_type == 'cuda':  # pinned memory lets the copy overlap with compute
        return [t.pin_memory().to(device, non_blocking=True) for t in tensors]
    return [t.to(device) for t in tensors]

def train_batch(it, micro_step):
    """Micro-batch micro_step of iteration it, as CPU tensors: x, y for mle; otherwise the noisy data rows (tokens,
    actions, valid; see noisy_rows) and their masked inputs (input_ids, position_ids, attn_mask). A function of its
    index: a resumed run rebuilds the same batches from iter_num, with no generator state saved or handed over."""
    index = np.random.SeedSequence([seed, ddp_rank, it, micro_step])  # mixes the four into one well-spread seed
    g = torch.Generator().manual_seed(int(index.generate_state(1, np.uint64)[0]))
    if objective == 'mle':
        rows = data_rows('train', batch_size, block_size + 1, g)
        batch = [rows[:, :-1], rows[:, 1:]]
    else:
        rows = data_rows('train', batch_size, block_size, g)
        noise_fn = wrong_digit_noise(meta, g) if noise == 'ground_truth' else None
        tokens, actions, valid = noisy_rows(rows, p_noise, bkspc_id, eos_id, noise_fn, g)
        batch = [tokens, actions, valid, *backspace_inputs(tokens, bkspc_id, 1)]
    if device_type == 'cuda':  # pinned memory lets the copy to the GPU overlap with compute
        batch = [t.pin_memory() for t in batch]
    return batch

def micro_batches(start):
    """train_batch of each micro-step from iteration start on, each built in a background thread while the model
    computes on the one before: the noise, the masking and the pinning stay off the critical path."""
    indices = itertools.product(range(start, max_iters), range(gradient_accumulation_steps))
    builder = ThreadPoolExecutor(max_workers=1)
    upcoming = builder.submit(train_batch, *next(indices))
    for index in indices:
        batch, upcoming = upcoming.result(), builder.submit(train_batch, *index)  # result(): raises what it raised
        yield batch
    yield upcoming.result()

# model init
model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                  vocab_size=meta['vocab_size'], dropout=dropout)
iter_num, best_val_loss, elapsed_before = 0, 1e9, 0.0  # elapsed_before: seconds of training before a resume
saved_iter = None  # the iteration that ckpt_path holds, once this run has one
checkpoint = None
ckpt_path = os.path.join(out_dir, 'ckpt.pt')
if init_from == 'scratch':
    print_once("initializing a new model from scratch")
    model = GPT(GPTConfig(**model_args))
elif init_from == 'resume':
    checkpoint = or_exit(load_checkpoint, ckpt_path)
    missing = {'model', 'optimizer', 'scaler', 'model_args', 'iter_num', 'best_val_loss', 'processes'} - set(checkpoint)
    if missing:  # an early train.py's checkpoint; later ones resume, whatever else they hold (a batch thread's state)
        raise SystemExit(f"{ckpt_path} is from an older train.py (no {', '.join(sorted(missing))}) and cannot be "
                         f"resumed; start a new run from its weights with --init_from={ckpt_path} --out_dir=...")
    model_args = checkpoint['model_args']  # the architecture must match the checkpoint
    model = GPT(GPTConfig(**model_args))
    model.load_state_dict(checkpoint['model'])
    iter_num = saved_iter = checkpoint['iter_num']
    best_val_loss = checkpoint['best_val_loss']
    elapsed_before = checkpoint.get('elapsed_s', 0.0)  # 0 for checkpoints from before it was saved
    print_once(f"resuming training from {ckpt_path} at iter {iter_num}, {duration(elapsed_before)} elapsed before")
elif init_from.startswith('gpt2'):
    print_once(f"initializing from OpenAI GPT-2 weights: {init_from}")
    model = or_exit(GPT.from_pretrained, init_from, dict(dropout=dropout))
    for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size'):
        model_args[k] = getattr(model.config, k)
    if block_size < model.config.block_size:
        model.crop_block_size(block_size)
        model_args['block_size'] = block_size
else:
    # fine-tune another run's checkpoint, e.g. SequenceMatch on top of an MLE-pretrained model
    print_once(f"fine-tuning the weights of {init_from}")
    if not os.path.exists(init_from):
        raise SystemExit(f"init_from={init_from!r} is not 'scratch', 'resume', 'gpt2*' or an existing checkpoint file")
    source = or_exit(load_checkpoint, init_from)
    model_args = dict(source['model_args'], dropout=dropout)
    state = source['model']
    if model_args['vocab_size'] < meta['vocab_size']:  # a model without a <bkspc> row: add one
        wte = state['transformer.wte.weight']
        extra = wte.mean(dim=0, keepdim=True).expand(meta['vocab_size'] - len(wte), -1)
        state['transformer.wte.weight'] = state['lm_head.weight'] = torch.cat([wte, extra])
        model_args['vocab_size'] = meta['vocab_size']
    model = GPT(GPTConfig(**model_args))
    model.load_state_dict(state)
assert model.config.vocab_size >= n_actions, "the model has no row for <bkspc>"
assert block_size <= model.config.block_size, f"block_size {block_size} > the model's {model.config.block_size}"
model.to(device)

scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))  # float16 needs loss scaling
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
replay = {'tokens': torch.empty(0, block_size, dtype=torch.long), 'valid': torch.empty(0, block_size, dtype=torch.bool)}
if checkpoint is not None:
    optimizer.load_state_dict(checkpoint['optimizer'])
    scaler.load_state_dict(checkpoint['scaler'])
    if len(checkpoint['processes']) == ddp_world_size:  # each process's random stream continues as if never stopped
        state = checkpoint['processes'][ddp_rank]
        torch.set_rng_state(state['rng'])
        if state['cuda_rng'] is not None and device_type == 'cuda':
            torch.cuda.set_rng_state(state['cuda_rng'])
    else:
        print_once(f"resuming with {ddp_world_size} process(es) instead of {len(checkpoint['processes'])}: "
                   f"new random streams for the rollouts, the first process's replay buffer")
        state = checkpoint['processes'][0]
    replay = state['replay']
checkpoint = None  # free up memory
# a rollout's masked inputs are built once, as it enters the buffer, not each time it is drawn (derived: not saved)
MASKED = ('input_ids', 'position_ids', 'attn_mask')
if objective == 'seqmatch':  # (the only objective with rollouts)
    replay.update(zip(MASKED, backspace_inputs(replay['tokens'], bkspc_id, prompt_len)))

raw_model = model
if compile:
    print_once("compiling the model... (takes a ~minute)")
    model = torch.compile(model)
if ddp:
    model = DDP(model, device_ids=[ddp_local_rank] if device_type == 'cuda' else None)

@torch.no_grad()
def estimate_loss():
    """Cross-entropy of the policy (base vocabulary + <bkspc>) on clean train and val text."""
    out = {}
    model.eval()
    for split in ('train', 'val'):
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            rows = data_rows(split, batch_size, block_size + 1)  # clean text, at random offsets
            x, y = to_device(rows[:, :-1], rows[:, 1:])
            with ctx:
                logits = model(x)
            losses[k] = F.cross_entropy(logits[..., :n_actions].flatten(0, 1).float(), y.flatten())
        out[split] = losses.mean().item()
    model.train()
    return out

@torch.no_grad()
def refresh_rollouts():
    """Roll out the current policy from data prompts and push the rows into the FIFO replay buffer.
    Returns the fraction of rollout actions that were <bkspc>."""
    global replay
    raw_model.eval()
    prompts = rollout_prompts(rollouts_per_sample).to(device)
    with ctx:
        tokens, valid = generate(raw_model, prompts, block_size - prompt_len, bkspc_id,
                                 temperature=temperature, top_k=top_k or None, eos_id=eos_id)
    raw_model.train()
    new = {'tokens': tokens.cpu(), 'valid': valid.cpu()}
    new.update(zip(MASKED, backspace_inputs(new['tokens'], bkspc_id, prompt_len)))
    replay = {k: torch.cat([replay[k], new[k]])[-buffer_size:] for k in replay}
    return ((tokens == bkspc_id) & valid).sum().item() / max(valid.sum().item(), 1)

def compute_loss(use_sm):
    """The loss of one micro-batch and a dict of stats for the log."""
    if objective == 'mle':
        x, y = to_device(*next(batches))
        with ctx:
            logits = model(x)
        return F.cross_entropy(logits[..., :n_actions].flatten(0, 1).float(), y.flatten()), {}
    batch = to_device(*next(batches))  # the data rows, built in the background (micro_batches)
    if use_sm:  # add rollouts from the replay buffer: one forward pass for data and model rows
        pick = torch.randint(len(replay['tokens']), (model_batch_size,))
        # (model_batch_size, ...) each; a rollout's actions are its tokens
        rollouts = to_device(*(replay[k][pick] for k in ('tokens', 'tokens', 'valid', *MASKED)))
        batch = [torch.cat(pair) for pair in zip(batch, rollouts)]  # (B, ...): data rows first
    tokens, actions, valid, input_ids, position_ids, attn_mask = batch
    is_data = torch.arange(len(tokens), device=device) < batch_size  # (B,)
    expert = valid & is_data[:, None]  # every data transition is the expert's (seqmatch.py, section 3)
    done = valid & (tokens == eos_id) if eos_id is not None else torch.zeros_like(valid)
    with ctx:
        logits = model(input_ids, position_ids=position_ids, attn_mask=attn_mask)
    V, Q = soft_values(logits[..., :n_actions], actions)  # (B, n) each, float32: all the losses read of the logits
    loss_bc = bc_loss(V, Q, expert)
    if not use_sm:
        return loss_bc, {'bc': loss_bc.detach()}
    loss_sm, stats = seqmatch_loss(V, Q, valid, expert, is_data, done, gamma, alpha)
    stats['bc'] = loss_bc.detach()
    return sm_weight * loss_sm + (1 - sm_weight) * loss_bc, stats

def get_lr(it):
    if it < warmup_iters:  # linear warm-up
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # from 1 down to 0
    return min_lr + coeff * (learning_rate - min_lr)

def last_good():
    """What a stop leaves behind, for its message."""
    if saved_iter is None:
        return "this run saved no checkpoint"
    if not os.path.exists(ckpt_path):  # out_dir was removed under the run
        return f"its last checkpoint (iter {saved_iter}) is gone from {out_dir} as well"
    return f"{ckpt_path} still holds the last good checkpoint (iter {saved_iter})"

def save_checkpoint():
    """Every process calls it. Written to a temporary file, then renamed: an interrupted save never leaves a broken
    ckpt.pt, and a failed one (a full disk, no permission, a vanished out_dir) stops with the previous one intact.
    It holds tensors, numbers, strings, lists and dicts only: all that model.load_checkpoint reads."""
    global saved_iter
    # what each process needs to continue exactly: its random stream and its replay buffer (batches need nothing)
    state = {'rng': torch.get_rng_state(), 'replay': {k: replay[k] for k in ('tokens', 'valid')},
             'cuda_rng': torch.cuda.get_rng_state() if device_type == 'cuda' else None}
    processes = [state]
    if ddp:
        processes = [None] * ddp_world_size
        torch.distributed.all_gather_object(processes, state)
    if master_process:
        checkpoint = {
            'model': raw_model.state_dict(), 'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict(),
            'model_args': model_args, 'iter_num': iter_num, 'best_val_loss': best_val_loss, 'config': config,
            'meta': meta, 'processes': processes, 'elapsed_s': elapsed_before + time.time() - t_start,
        }
        tmp_path = ckpt_path + '.tmp'
        try:
            with open(tmp_path, 'wb') as f:  # a file, not a path: torch then reports a failed write as a
                torch.save(checkpoint, f)     # RuntimeError whose __context__ is the OSError that says why
            os.replace(tmp_path, ckpt_path)
        except (OSError, RuntimeError) as e:
            why = e if isinstance(e, OSError) else e.__context__ or e
            with contextlib.suppress(OSError):  # a half-written file would keep the space it took
                os.remove(tmp_path)
            raise SystemExit(f"stopping: saving the checkpoint of iter {iter_num} to {tmp_path} failed "
                             f"({getattr(why, 'strerror', None) or why}); {last_good()}")
        print(f"saved checkpoint to {ckpt_path}")
    saved_iter = iter_num

log_path = os.path.join(out_dir, 'log.jsonl')  # every logged number, one JSON object a line (plot.py reads it)
if master_process:
    os.makedirs(out_dir, exist_ok=True)
    if init_from != 'resume':
        open(log_path, 'w').close()  # a new run starts a new log; a resumed one appends to its own

def log_row(row):
    try:
        with open(log_path, 'a') as f:
            f.write(json.dumps(row) + '\n')
    except OSError as e:  # a full disk, a vanished out_dir: as for a failed save
        raise SystemExit(f"stopping: writing {log_path} failed ({e.strerror}); {last_good()}")

def on_ctrl_c(signum, frame):
    """The first Ctrl-C asks the loop to save and stop; a second one stops at once."""
    global ctrl_c
    ctrl_c = True
    signal.signal(signal.SIGINT, signal.default_int_handler)
    when = 'at the next log line, where the processes agree on it' if ddp else 'after this iteration'
    print_once(f"Ctrl-C: saving a checkpoint {when}; Ctrl-C again to stop at once, unsaved", flush=True)

# training loop
batches = micro_batches(iter_num)
ctrl_c = stop = False  # Ctrl-C pressed in this process; all processes agreed to stop
signal.signal(signal.SIGINT, on_ctrl_c)  # under torchrun, each process gets the Ctrl-C as a SIGINT of its own
t0 = t_start = time.time()
local_iter_num = 0  # iterations in this process's lifetime
rollout_time = 0.0  # seconds spent sampling since the last log
bkspc_rate = float('nan')  # of the latest rollouts
while True:
    lr = get_lr(iter_num) if decay_lr else learning_rate
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr

    resumed_here = init_from == 'resume' and local_iter_num == 0 and not eval_only  # evaluated before the stop
    if (iter_num % eval_interval == 0 or iter_num == max_iters or eval_only) and not resumed_here:
        losses = estimate_loss()
        print_once(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        if master_process:
            log_row({'iter': iter_num, 'train_loss': losses['train'], 'val_loss': losses['val']})
        finite = torch.tensor(float(all(map(math.isfinite, losses.values()))), device=device)
        if ddp:  # every process stops together, or the others would wait for it forever in the next collective
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if not finite.item():
            raise SystemExit(f"stopping: the evaluation loss is not finite at iteration {iter_num}; {last_good()}")
        best_val_loss = min(best_val_loss, losses['val'])
        if iter_num > 0 and not eval_only:
            save_checkpoint()
    if eval_only or iter_num >= max_iters:
        break
    if stop:  # after a Ctrl-C; here, after the evaluation that may be due, so that resuming is exact
        if saved_iter != iter_num:
            save_checkpoint()
        print_once(f"interrupted at iter {iter_num}, saved; continue with --init_from=resume")
        break

    use_sm = objective == 'seqmatch' and iter_num >= bc_warmup_iters
    if use_sm and iter_num == bc_warmup_iters and master_process:  # so that nobody reads the jump as divergence
        print(f"iter {iter_num}: SequenceMatch switches on: the loss now includes the SequenceMatch terms "
              f"({sm_weight} * L_SM + {1 - sm_weight:g} * L_BC), so it jumps, and the log gains expert, value, chi2, "
              f"reward_data, reward_model and bkspc rate; the val loss stays comparable")
        log_row({'iter': iter_num, 'event': 'seqmatch_on'})
    # refresh on schedule, and whenever the buffer is empty: a run resumed off a refresh boundary (after
    # bc_warmup_iters was changed, say) has nothing to draw rollouts from
    if use_sm and ((iter_num - bc_warmup_iters) % sample_interval == 0 or len(replay['tokens']) == 0):
        t_sample = time.time()
        bkspc_rate = refresh_rollouts()
        rollout_time += time.time() - t_sample

    for micro_step in range(gradient_accumulation_steps):
        if ddp:  # only sync gradients at the last micro step
            model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        loss, stats = compute_loss(use_sm)
        scaler.scale(loss / gradient_accumulation_steps).backward()
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)

    iter_num += 1
    local_iter_num += 1
    if iter_num % log_interval == 0 or (ctrl_c and not ddp):
        # the loop's one host sync, where the loss is read anyway: a loss that is not finite stops the run here,
        # before it reaches a checkpoint (the evaluation before each save checks the weights too); under DDP the
        # processes also agree here on a Ctrl-C, which each of them gets at another moment
        flags = torch.stack([~torch.isfinite(loss.detach()), torch.tensor(ctrl_c, device=device)]).float()
        if ddp:  # every process stops together, or the others would wait for it forever
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        diverged, stop = flags.tolist()
        if diverged:
            raise SystemExit(f"stopping: the loss is not finite ({loss.item()}) at iteration {iter_num}; {last_good()}")
    if iter_num % log_interval == 0 and master_process:
        t1 = time.time()
        dt, t0 = (t1 - t0) / log_interval, t1  # per iteration, sampling included
        row = {'iter': iter_num, 'loss': loss.item(), 'ms_per_iter': dt * 1000,
               'sampling_ms': rollout_time / log_interval * 1000, 'data_tok_per_s': tokens_per_iter / dt,
               **{k: v.item() for k, v in stats.items()}, **({'bkspc_rate': bkspc_rate} if use_sm else {}),
               'elapsed_s': elapsed_before + t1 - t_start,
               # at this process's average speed, evaluations and sampling included: steady, where the last few
               # iterations' speed swings with whatever else runs on the machine
               'eta_s': (t1 - t_start) / local_iter_num * (max_iters - iter_num)}
        rollout_time = 0.0
        print(f"iter {iter_num}: loss {row['loss']:.4f}, {row['ms_per_iter']:.1f} ms/iter (sampling "
              f"{row['sampling_ms']:.1f}), {row['data_tok_per_s']:,.0f} data tok/s"
              + ''.join(f", {k} {row[k]:.4f}" for k in stats) + (f", bkspc rate {bkspc_rate:.3f}" if use_sm else '')
              + f", {duration(row['elapsed_s'])} elapsed, ETA {duration(row['eta_s'])}")
        log_row(row)

if master_process and not eval_only and not stop:
    print(f"done in {duration(elapsed_before + time.time() - t_start)}: best val loss {best_val_loss:.4f}; "
          f"checkpoint in {ckpt_path}")
if ddp:
    torch.distributed.barrier()  # no process tears down gloo while another is still talking to it
    torch.distributed.destroy_process_group()
if stop:
    raise SystemExit(130)  # the shell's code for a run stopped by Ctrl-C
