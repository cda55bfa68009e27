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

import json
import math
import os
import queue
import threading
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch.distributed import destroy_process_group, init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP

from model import GPT, GPTConfig
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
    init_process_group(backend='nccl' if device.startswith('cuda') else 'gloo')
    ddp_rank = int(os.environ['RANK'])
    ddp_local_rank = int(os.environ['LOCAL_RANK'])
    ddp_world_size = int(os.environ['WORLD_SIZE'])
    if device.startswith('cuda'):
        device = f'cuda:{ddp_local_rank}'
        torch.cuda.set_device(device)
    master_process = ddp_rank == 0  # this process does the logging, checkpointing etc.
else:
    ddp_rank, ddp_world_size, master_process = 0, 1, True
device_type = 'cuda' if device.startswith('cuda') else device  # for autocast
if dtype == 'auto':
    dtype = 'bfloat16' if device_type == 'cuda' and torch.cuda.is_bf16_supported() else 'float32'
if dtype != 'float32' and device_type != 'cuda':
    print(f"dtype {dtype} is only used on CUDA here; falling back to float32 on {device_type}")
    dtype = 'float32'
ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
ctx = nullcontext() if dtype == 'float32' else torch.autocast(device_type=device_type, dtype=ptdtype)
tokens_per_iter = gradient_accumulation_steps * ddp_world_size * batch_size * block_size
if master_process:
    print(f"device {device}, dtype {dtype}, {ddp_world_size} process(es); data tokens per iteration: {tokens_per_iter:,}")
torch.manual_seed(seed + ddp_rank)  # each process draws its own batches
if device_type == 'cuda':
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

# data: nanoGPT's uint16 memmaps, plus the ids that SequenceMatch needs
data_dir = os.path.join('data', dataset)
meta = load_meta(data_dir)
bkspc_id, eos_id = meta['bkspc_id'], meta['eos_id']
n_actions = bkspc_id + 1  # base vocabulary + <bkspc>; logits above are embedding padding

# Training batches are built in a background thread while the model computes on the previous one, so the
# noise, the masking and the pinning stay off the critical path (nanoGPT overlaps only its copy). The thread
# draws from a generator of its own; the global one (rollouts, the replay draw, dropout, evaluation
# batches) stays on the main thread, drawn in the same order whatever the thread does. Each batch comes
# with the state of the thread's generator after it was built, and a checkpoint saves that state for the
# last batch used: a resumed run rebuilds exactly the batches that were prefetched but never used.
batch_rng = torch.Generator().manual_seed(seed + ddp_rank + 1_000_000)  # not a copy of the global stream

noise_fn = None
if noise == 'ground_truth':
    assert meta.get('task') == 'arithmetic', "noise='ground_truth' exists for the arithmetic task only"
    from data.arithmetic.noise import wrong_digit_noise  # the one dataset with noise of its own
    noise_fn = wrong_digit_noise(meta, batch_rng)  # it runs in the batch thread, off the global generator
print_once = print if master_process else (lambda *a, **k: None)


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
    """(n_rows, prompt_len) windows of the training data that end with prompt_suffix."""
    if not prompt_suffix:
        return data_rows('train', n_rows, prompt_len)
    ends = prompt_ends[torch.randint(len(prompt_ends), (n_rows,))]
    return windows('train', ends - prompt_len, prompt_len)


if objective == 'seqmatch' and prompt_suffix:  # every place in the training data where a prompt may end
    suffix = Tokenizer(meta).encode(prompt_suffix)
    train_data = np.fromfile(os.path.join(data_dir, 'train.bin'), dtype=np.uint16)
    hit = np.ones(len(train_data) - len(suffix) + 1, dtype=bool)
    for k, tok in enumerate(suffix):
        hit &= train_data[k:len(train_data) - len(suffix) + 1 + k] == tok
    prompt_ends = torch.from_numpy(np.nonzero(hit)[0] + len(suffix))
    prompt_ends = prompt_ends[prompt_ends >= prompt_len]
    assert len(prompt_ends) > 0, f"prompt_suffix {prompt_suffix!r} never occurs in the training data"
    del train_data


def to_device(*tensors):
    if device_type == 'cuda':  # pinned memory lets the copy overlap with compute
        return [t.pin_memory().to(device, non_blocking=True) for t in tensors]
    return [t.to(device) for t in tensors]


def clean_batch(split):
    """x, y: (batch_size, block_size) inputs and next-token targets for plain language modelling."""
    rows = data_rows(split, batch_size, block_size + 1)
    return to_device(rows[:, :-1], rows[:, 1:])


def train_batch(generator):
    """The data rows of one training micro-batch, as CPU tensors: x, y for mle; otherwise the noise-augmented
    rows (tokens, actions, valid, see noisy_rows; the first token is the prompt) and their backspace-masked
    inputs (input_ids, position_ids, attn_mask)."""
    if objective == 'mle':
        rows = data_rows('train', batch_size, block_size + 1, generator)
        return [rows[:, :-1], rows[:, 1:]]
    rows = data_rows('train', batch_size, block_size, generator)
    tokens, actions, valid = noisy_rows(rows, p_noise, bkspc_id, eos_id, noise_fn, generator)
    return [tokens, actions, valid, *backspace_inputs(tokens, bkspc_id, 1)]


def prefetch(batches, n_batches):
    """Thread body: put (batch, batch_rng's state after it) into the queue, n_batches times."""
    for _ in range(n_batches):
        try:
            batch = train_batch(batch_rng)
        except Exception as e:  # raised again in the main thread, which would otherwise wait forever
            batches.put(e)
            return
        if device_type == 'cuda':  # pinned memory lets the copy to the GPU overlap with compute
            batch = [t.pin_memory() for t in batch]
        batches.put((batch, batch_rng.get_state()))


def next_batch():
    """The next prefetched training batch: a list of CPU tensors (see train_batch)."""
    global batch_rng_state
    item = batches.get()
    if isinstance(item, Exception):
        raise item
    batch, batch_rng_state = item
    return batch


# model init
model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                  vocab_size=meta['vocab_size'], dropout=dropout)
iter_num = 0
best_val_loss = 1e9
checkpoint = None
ckpt_path = os.path.join(out_dir, 'ckpt.pt')
if init_from == 'scratch':
    print_once(f"initializing a new model from scratch")
    model = GPT(GPTConfig(**model_args))
elif init_from == 'resume':
    print_once(f"resuming training from {ckpt_path}")
    if not os.path.exists(ckpt_path):
        raise SystemExit(f"init_from='resume' but there is no checkpoint at {ckpt_path}")
    checkpoint = torch.load(ckpt_path, map_location='cpu', weights_only=False)
    model_args = checkpoint['model_args']  # the architecture must match the checkpoint
    model = GPT(GPTConfig(**model_args))
    model.load_state_dict(checkpoint['model'])
    iter_num = checkpoint['iter_num']
    best_val_loss = checkpoint['best_val_loss']
elif init_from.startswith('gpt2'):
    print_once(f"initializing from OpenAI GPT-2 weights: {init_from}")
    model = GPT.from_pretrained(init_from, dict(dropout=dropout))
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
    source = torch.load(init_from, map_location='cpu', weights_only=False)
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
    if len(checkpoint['processes']) == ddp_world_size:  # each process's batches continue as if never stopped
        state = checkpoint['processes'][ddp_rank]
        torch.set_rng_state(state['rng'])
        batch_rng.set_state(state['batch_rng'])
        if state['cuda_rng'] is not None and device_type == 'cuda':
            torch.cuda.set_rng_state(state['cuda_rng'])
    else:
        print_once(f"resuming with {ddp_world_size} process(es) instead of {len(checkpoint['processes'])}: "
                   f"new random streams, the first process's replay buffer")
        state = checkpoint['processes'][0]
    replay = state['replay']
checkpoint = None  # free up memory

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
            x, y = clean_batch(split)
            with ctx:
                logits, _ = model(x)
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
    replay = {k: torch.cat([replay[k], v.cpu()])[-buffer_size:] for k, v in (('tokens', tokens), ('valid', valid))}
    return ((tokens == bkspc_id) & valid).sum().item() / max(valid.sum().item(), 1)


def compute_loss(use_sm):
    """The loss of one micro-batch and a dict of stats for the log."""
    if objective == 'mle':
        x, y = to_device(*next_batch())
        with ctx:
            logits, _ = model(x)
        return F.cross_entropy(logits[..., :n_actions].flatten(0, 1).float(), y.flatten()), {}
    batch = to_device(*next_batch())  # the data rows, built in the background
    if use_sm:  # add rollouts from the replay buffer: one forward pass for data and model rows
        pick = torch.randint(len(replay['tokens']), (model_batch_size,))
        tokens, valid = replay['tokens'][pick], replay['valid'][pick]  # (model_batch_size, block_size)
        # a rollout's actions are its tokens; its rows are few, so they are masked here, on the critical path
        rollouts = to_device(tokens, tokens, valid, *backspace_inputs(tokens, bkspc_id, prompt_len))
        batch = [torch.cat(pair) for pair in zip(batch, rollouts)]  # (B, ...): data rows first
    tokens, actions, valid, input_ids, position_ids, attn_mask = batch
    is_data = torch.arange(len(tokens), device=device) < batch_size  # (B,)
    expert = valid & is_data[:, None]  # every data transition is the expert's (seqmatch.py, section 3)
    done = valid & (tokens == eos_id) if eos_id is not None else torch.zeros_like(valid)
    with ctx:
        logits, _ = model(input_ids, position_ids=position_ids, attn_mask=attn_mask)
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


def save_checkpoint():
    """Written to a temporary file, then renamed: an interrupted save never leaves a broken ckpt.pt."""
    # what each process needs to continue exactly: its random streams and its replay buffer
    state = {'rng': torch.get_rng_state(), 'batch_rng': batch_rng_state, 'replay': replay,
             'cuda_rng': torch.cuda.get_rng_state() if device_type == 'cuda' else None}
    processes = [state]
    if ddp:
        processes = [None] * ddp_world_size
        torch.distributed.all_gather_object(processes, state)
    if not master_process:
        return
    checkpoint = {
        'model': raw_model.state_dict(), 'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict(),
        'model_args': model_args, 'iter_num': iter_num, 'best_val_loss': best_val_loss, 'config': config,
        'meta': meta, 'processes': processes,
    }
    os.makedirs(out_dir, exist_ok=True)
    torch.save(checkpoint, ckpt_path + '.tmp')
    os.replace(ckpt_path + '.tmp', ckpt_path)
    print(f"saved checkpoint to {ckpt_path}")


def duration(seconds):
    """e.g. 2m05s, or 3h07m for long runs."""
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


log_path = os.path.join(out_dir, 'log.jsonl')  # every logged number, one JSON object a line (plot.py reads it)
if master_process:
    os.makedirs(out_dir, exist_ok=True)
    if init_from != 'resume':
        open(log_path, 'w').close()  # a new run starts a new log; a resumed one appends to its own


def log_row(row):
    with open(log_path, 'a') as f:
        f.write(json.dumps(row) + '\n')


# training loop
batch_rng_state = batch_rng.get_state()  # as of the last batch used: what a checkpoint saves
batches = queue.Queue(maxsize=2)
if not eval_only:  # exactly the micro-batches this run will use, so the thread ends with the loop
    n_batches = max(max_iters - iter_num, 0) * gradient_accumulation_steps
    threading.Thread(target=prefetch, args=(batches, n_batches), daemon=True).start()
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
            raise SystemExit(f"stopping: the evaluation loss is not finite at iteration {iter_num}; "
                             f"{ckpt_path} still holds the last good checkpoint")
        best_val_loss = min(best_val_loss, losses['val'])
        if iter_num > 0 and not eval_only:
            save_checkpoint()
    if eval_only or iter_num >= max_iters:
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
        finite = torch.isfinite(loss.detach()).float()
        if ddp:  # every process stops together, or the others would wait for it forever
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if not finite.item():
            raise SystemExit(f"stopping: the loss is not finite ({loss.item()}) at iteration {iter_num}; "
                             f"{ckpt_path} still holds the last good checkpoint")
        scaler.scale(loss / gradient_accumulation_steps).backward()
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)

    iter_num += 1
    local_iter_num += 1
    if iter_num % log_interval == 0 and master_process:
        t1 = time.time()
        dt = (t1 - t0) / log_interval  # per iteration, sampling included
        t0 = t1
        row = {'iter': iter_num, 'loss': loss.item(), 'ms_per_iter': dt * 1000,
               'sampling_ms': rollout_time / log_interval * 1000, 'data_tok_per_s': tokens_per_iter / dt}
        row.update({k: v.item() for k, v in stats.items()})
        if use_sm:
            row['bkspc_rate'] = bkspc_rate
        row['elapsed_s'] = t1 - t_start
        row['eta_s'] = dt * (max_iters - iter_num)  # at the speed of the last log_interval iterations
        rollout_time = 0.0
        line = f"iter {iter_num}: loss {row['loss']:.4f}, {row['ms_per_iter']:.1f} ms/iter"
        line += f" (sampling {row['sampling_ms']:.1f}), {row['data_tok_per_s']:,.0f} data tok/s"
        line += ''.join(f", {k} {row[k]:.4f}" for k in stats)
        if use_sm:
            line += f", bkspc rate {bkspc_rate:.3f}"
        print(line + f", {duration(row['elapsed_s'])} elapsed, ETA {duration(row['eta_s'])}")
        log_row(row)

if master_process and not eval_only:
    print(f"done in {duration(time.time() - t_start)}: best val loss {best_val_loss:.4f}; checkpoint in {ckpt_path}")
if ddp:  # a cheap check that DDP did its job: every process ends with the same weights
    checksums = [None] * ddp_world_size
    torch.distributed.all_gather_object(checksums, sum(p.double().sum().item() for p in raw_model.parameters()))
    print_once(f"DDP: weight checksums of the {ddp_world_size} processes differ by {max(checksums) - min(checksums)}")
    torch.distributed.barrier()  # no process tears down gloo while another is still talking to it
    destroy_process_group()
