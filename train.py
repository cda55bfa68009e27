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
import dataclasses
import json
import math
import os
import shlex
import signal
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from batches import ReplayBuffer, RolloutPrompts, TrainBatches, dataset_dir, micro_batches, random_windows
from checkpoint import (LOAD_ERRORS, auto_device, last_saved, load_checkpoint, load_pretrained, model_from_args,
                        save_checkpoint)
from seqmatch import attention_mask, bc_loss, chunked_soft_values, generate, mle_loss, seqmatch_loss
from tokenizer import Tokenizer, load_meta

# -----------------------------------------------------------------------------
# default config values: a small char-level SequenceMatch run
# I/O
out_dir = 'out'  # where ckpt.pt goes
eval_interval = 250  # evaluate (and checkpoint) every this many iterations
log_interval = 10  # print training stats every this many iterations
eval_iters = 20  # batches per evaluation
eval_only = False  # evaluate once and exit
init_from = 'scratch'  # 'scratch', 'resume' (from out_dir), 'gpt2*', 'hf:<hub id, folder or .gguf>', or a run's ckpt.pt
overwrite = False  # True: a new run may replace the checkpoint (and log) of an earlier run in out_dir
# data
dataset = 'shakespeare_char'  # a folder data/<dataset>/, or a path to one, with train.bin, val.bin, meta.pkl
gradient_accumulation_steps = 1  # micro-batches per optimizer step (per process under DDP)
batch_size = 12  # data rows per micro-batch
block_size = 64  # tokens per row
num_workers = 0  # processes that build batches ahead of the model (a GPU's host: 4+); 0: each when needed (a CPU)
# model
n_layer = 4  # transformer blocks
n_head = 4  # attention heads per block
n_embd = 128  # width of the residual stream
dropout = 0.0  # for pretraining 0 is good, for finetuning try 0.1+ (a Hugging Face model keeps its own)
bias = False  # biases inside LayerNorm and Linear layers?
# a Hugging Face model (init_from='hf:...'; needs requirements-extra.txt)
lora_rank = 8  # LoRA adapters of this rank train with the <bkspc> rows, the rest frozen; 0 = train every weight
lora_alpha = 16.0  # the adapters' output is scaled by lora_alpha / lora_rank
lora_dropout = 0.05  # dropout on the adapters' input
lora_targets = 'all-linear'  # the layers that get adapters: every linear one but the output, or names 'q_proj,v_proj'
attn_implementation = 'sdpa'  # 'sdpa' or 'eager', which take the backspace mask exactly (flash-attention cannot)
gradient_checkpointing = False  # recompute each block's activations in the backward: less memory, more compute
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
if objective not in ('mle', 'bc', 'seqmatch'):
    raise SystemExit(f"objective must be 'mle', 'bc' or 'seqmatch', not {objective!r}")
if noise not in ('random', 'ground_truth'):
    raise SystemExit(f"noise must be 'random' or 'ground_truth', not {noise!r}")
if objective == 'seqmatch' and not 0 < prompt_len < block_size:
    raise SystemExit(f"prompt_len={prompt_len}: a rollout needs a prompt and room to generate in block_size={block_size}")
if init_from != 'resume' and not overwrite and os.path.exists(os.path.join(out_dir, 'ckpt.pt')):
    raise SystemExit(f"{out_dir} already holds a checkpoint of an earlier run; nothing was changed. Either continue "
                     f"it with --init_from=resume, or start a new run with another --out_dir=... "
                     f"(or replace it with --overwrite=True)")

# various inits, derived attributes, I/O setup
ddp = int(os.environ.get('RANK', -1)) != -1  # launched by torchrun?
try:
    device = auto_device(device)
except ValueError as e:
    raise SystemExit(str(e))
if ddp:
    torch.distributed.init_process_group(backend='nccl' if device.startswith('cuda') else 'gloo')
    ddp_rank, ddp_local_rank, ddp_world_size = (int(os.environ[k]) for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'))
    if device.startswith('cuda'):
        device = f'cuda:{ddp_local_rank}'
        torch.cuda.set_device(device)
    master_process = ddp_rank == 0  # this process does the logging, checkpointing etc.
else:
    ddp_rank, ddp_world_size, master_process = 0, 1, True

def say(*args):
    """print, in the first process only. A stdout that closed under the run (`| tee log`, which the
    same Ctrl-C ends) stops no save: from then on the output goes nowhere."""
    if not master_process:
        return
    try:
        print(*args, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

device_type = 'cuda' if device.startswith('cuda') else device  # for autocast
if dtype == 'auto':
    dtype = 'bfloat16' if device_type == 'cuda' and torch.cuda.is_bf16_supported() else 'float32'
if dtype != 'float32' and device_type != 'cuda':
    say(f"dtype {dtype} is only used on CUDA here; falling back to float32 on {device_type}")
    dtype = 'float32'
ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
ctx = contextlib.nullcontext() if dtype == 'float32' else torch.autocast(device_type=device_type, dtype=ptdtype)
tokens_per_iter = gradient_accumulation_steps * ddp_world_size * batch_size * block_size
say(f"device {device}, dtype {dtype}, {ddp_world_size} process(es) of {torch.get_num_threads()} thread(s); data "
    f"tokens per iteration: {tokens_per_iter:,}")
if objective == 'seqmatch' and max_iters <= bc_warmup_iters:
    say(f"note: SequenceMatch switches on at bc_warmup_iters={bc_warmup_iters}, and max_iters={max_iters} ends "
        f"the run before that: this run trains with BC alone")
torch.manual_seed(seed + ddp_rank)  # each process its own rollouts, replay draws, dropout and evaluation batches
torch.backends.cuda.matmul.allow_tf32 = True  # allow tf32 on matmul (a flag: harmless without CUDA)
torch.backends.cudnn.allow_tf32 = True  # allow tf32 on cudnn

def or_exit(load, *args):
    """load(*args), stopping with one line on what a user can fix: a missing file or package, an
    unsafe checkpoint."""
    try:
        return load(*args)
    except LOAD_ERRORS as e:
        raise SystemExit(str(e))

def duration(seconds):
    """e.g. 2m05s, or 3h07m for long runs."""
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"

# data: nanoGPT's token files, plus the ids that SequenceMatch needs
data_dir = dataset_dir(dataset)
meta = or_exit(load_meta, data_dir)
bkspc_id, eos_id = meta['bkspc_id'], meta['eos_id']
n_actions = bkspc_id + 1  # base vocabulary + <bkspc>; logits above are embedding padding
if noise == 'ground_truth' and meta.get('task') != 'arithmetic':
    raise SystemExit("noise='ground_truth' exists for the arithmetic task only")
train_batches = TrainBatches(data_dir, objective, batch_size, block_size, gradient_accumulation_steps, seed, ddp_rank,
                             p_noise, noise, meta)
if objective == 'seqmatch':
    suffix = or_exit(Tokenizer, meta).encode(prompt_suffix) if prompt_suffix else []
    rollout_prompts = RolloutPrompts(data_dir, prompt_len, suffix)

def to_device(tensors):
    return [t.to(device, non_blocking=True) for t in tensors]  # asynchronous where micro_batches pinned them

# model init
iter_num, best_val_loss, elapsed_before = 0, 1e9, 0.0  # elapsed_before: seconds of training before a resume
saved_iter = checkpoint = None  # saved_iter: the iteration that ckpt_path holds, once this run has one
ckpt_path = os.path.join(out_dir, 'ckpt.pt')
if init_from == 'scratch':
    say("initializing a new model from scratch")
    model = model_from_args(dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                                 vocab_size=meta['vocab_size'], dropout=dropout))
elif init_from == 'resume':
    checkpoint = or_exit(load_checkpoint, ckpt_path)
    missing = {'model', 'optimizer', 'scaler', 'model_args', 'iter_num', 'best_val_loss', 'processes'} - set(checkpoint)
    if missing:  # an early train.py's checkpoint; later ones resume, whatever else they hold (a batch thread's state)
        raise SystemExit(f"{ckpt_path} is from an older train.py (no {', '.join(sorted(missing))}) and cannot be "
                         f"resumed; start a new run from its weights with --init_from={ckpt_path} --out_dir=...")
    model = or_exit(model_from_args, checkpoint['model_args'])  # the architecture is the checkpoint's
    model.load_state_dict(checkpoint['model'])
    iter_num = saved_iter = checkpoint['iter_num']
    best_val_loss, elapsed_before = checkpoint['best_val_loss'], checkpoint.get('elapsed_s', 0.0)
    say(f"resuming training from {ckpt_path} at iter {iter_num}, {duration(elapsed_before)} elapsed before")
else:  # fine-tune GPT-2, a Hugging Face model, or another run's checkpoint (e.g. SequenceMatch after MLE)
    say(f"fine-tuning the weights of {init_from}")
    model = or_exit(load_pretrained, init_from, meta, config)
assert model.config.vocab_size >= n_actions, "the model has no row for <bkspc>"
assert block_size <= model.config.block_size, f"block_size {block_size} > the model's {model.config.block_size}"
model.to(device)

scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))  # float16 needs loss scaling
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
replay = ReplayBuffer(buffer_size, block_size, bkspc_id, prompt_len)  # the rollouts of seqmatch
if checkpoint is not None:
    optimizer.load_state_dict(checkpoint['optimizer'])
    scaler.load_state_dict(checkpoint['scaler'])
    if len(checkpoint['processes']) == ddp_world_size:  # each process's random stream continues as if never stopped
        state = checkpoint['processes'][ddp_rank]
        torch.set_rng_state(state['rng'])
        if state['cuda_rng'] is not None and device_type == 'cuda':
            torch.cuda.set_rng_state(state['cuda_rng'])
    else:
        say(f"resuming with {ddp_world_size} process(es) instead of {len(checkpoint['processes'])}: "
            f"new random streams for the rollouts, the first process's replay buffer")
        state = checkpoint['processes'][0]
    replay.load_state_dict(state['replay'])
checkpoint = None  # free up memory

raw_model = model
if compile:
    say("compiling the model... (takes a ~minute)")
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
            rows = random_windows(data_dir, split, batch_size, block_size + 1)  # clean text, at random offsets
            x, y = to_device([rows[:, :-1], rows[:, 1:]])
            with ctx:
                logits = model(x)
            losses[k] = mle_loss(logits[..., :n_actions], y)
        out[split] = losses.mean().item()
    model.train()
    return out

@torch.no_grad()
def refresh_rollouts():
    """Roll out the current policy from data prompts into the replay buffer, with the masked inputs
    that generate's stack rule computed on the way."""
    raw_model.eval()
    with ctx:
        replay.push(*generate(raw_model, rollout_prompts.draw(rollouts_per_sample).to(device), block_size - prompt_len,
                              bkspc_id, temperature=temperature, top_k=top_k or None, eos_id=eos_id))
    raw_model.train()

def compute_loss(batch, use_sm):
    """The loss of one micro-batch (as train_batches builds it, on the device) and a dict of stats
    for the log."""
    if objective == 'mle':
        with ctx:
            logits = model(batch[0])  # x; its targets y are batch[1]
        return mle_loss(logits[..., :n_actions], batch[1]), {}
    if use_sm:  # add rollouts from the replay buffer: one forward pass for data and model rows
        batch = [torch.cat(pair) for pair in zip(batch, to_device(replay.draw(model_batch_size)))]  # data rows first
    tokens, actions, valid, input_ids, position_ids, removed_at = batch
    is_data = torch.arange(len(tokens), device=device) < batch_size  # (B,)
    expert = valid & is_data[:, None]  # every data transition is the expert's (seqmatch.py, section 3)
    done = valid & (tokens == eos_id) if eos_id is not None else torch.zeros_like(valid)
    with ctx:
        logits = model(input_ids, position_ids=position_ids, attn_mask=attention_mask(removed_at))
    V, Q = chunked_soft_values(logits[..., :n_actions], actions)  # (B, n) each, float32: all the losses read
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

def any_process(*flags):
    """Whether each flag is set in any process: under DDP the processes decide together (one
    all-reduce), since a process that stopped alone would leave the others waiting for it forever in
    the next collective."""
    flags = torch.tensor(flags, dtype=torch.float32, device=device)
    if ddp:
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return [bool(f) for f in flags.tolist()]

def last_good():
    return last_saved(ckpt_path, saved_iter)  # what a stop leaves behind, for its message

def checkpoint_now():
    """Every process calls it; the first writes ckpt_path (atomically). A failed save stops the
    run."""
    global saved_iter
    # what each process needs to continue exactly: its random stream and its replay buffer (batches
    # need nothing)
    state = {'rng': torch.get_rng_state(), 'replay': replay.state_dict(),
             'cuda_rng': torch.cuda.get_rng_state() if device_type == 'cuda' else None}
    processes = [state]
    if ddp:
        processes = [None] * ddp_world_size
        torch.distributed.all_gather_object(processes, state)
    if master_process:
        checkpoint = {
            'model': raw_model.state_dict(), 'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict(),
            'model_args': dataclasses.asdict(raw_model.config), 'iter_num': iter_num, 'best_val_loss': best_val_loss,
            'config': config, 'meta': meta, 'processes': processes, 'elapsed_s': elapsed_before + time.time() - t_start}
        try:
            save_checkpoint(checkpoint, ckpt_path)
        except OSError as e:
            raise SystemExit(f"stopping: saving the checkpoint of iter {iter_num} to {ckpt_path}.tmp failed ({e}); "
                             f"{last_good()}")
        say(f"saved checkpoint to {ckpt_path}")
    saved_iter = iter_num

log_path = os.path.join(out_dir, 'log.jsonl')  # every logged number, one JSON object a line (plot.py reads it)
if master_process:
    os.makedirs(out_dir, exist_ok=True)
    if init_from != 'resume':
        open(log_path, 'w').close()  # a new run starts a new log; a resumed one appends to its own

def log_row(row):
    if not master_process:
        return
    try:
        with open(log_path, 'a') as f:
            f.write(json.dumps(row) + '\n')
    except OSError as e:  # a full disk, a vanished out_dir: as for a failed save
        raise SystemExit(f"stopping: writing {log_path} failed ({e.strerror}); {last_good()}")

def resume_command():
    """The command that continues this run: its own arguments, then --init_from=resume and its
    out_dir."""
    args = [a for a in sys.argv[1:] if not a.startswith(('--init_from=', '--out_dir=', '--overwrite='))]
    launcher = f"torchrun --standalone --nproc_per_node={ddp_world_size}" if ddp else "python"
    return ' '.join([launcher, *map(shlex.quote, [sys.argv[0], *args, '--init_from=resume', f'--out_dir={out_dir}'])])

def on_ctrl_c(signum, frame):
    """The first Ctrl-C asks the loop to save and stop; a second one stops at once."""
    global ctrl_c
    ctrl_c = True
    signal.signal(signal.SIGINT, signal.default_int_handler)
    when = 'at the next log line, where the processes agree on it' if ddp else 'after this iteration'
    say(f"Ctrl-C: saving a checkpoint {when}; Ctrl-C again to stop at once, unsaved")

def eta(t):
    """Seconds left in the current phase at its average speed so far (later evaluations and sampling
    included, the evaluation before its first iteration not). The BC warm-up of a SequenceMatch run
    is a phase of its own: how long an iteration of SequenceMatch takes is known only once it
    runs."""
    end = bc_warmup_iters if in_warmup() else max_iters
    return (t - phase_start[0]) / max(iter_num - phase_start[1], 1) * (end - iter_num)

def in_warmup():
    return objective == 'seqmatch' and iter_num <= bc_warmup_iters < max_iters

# training loop
batches = micro_batches(train_batches, iter_num * gradient_accumulation_steps, max_iters * gradient_accumulation_steps,
                        num_workers, pin_memory=device_type == 'cuda')
ctrl_c = stop = False  # Ctrl-C pressed in this process; all processes agreed to stop
signal.signal(signal.SIGINT, on_ctrl_c)  # under torchrun, each process gets the Ctrl-C as a SIGINT of its own
t0 = t_start = time.time()
# the thread count with the run: runs that differ in it differ in the last digits, which rollouts
# amplify
log_row({'iter': iter_num, 'event': 'start', 'device': device, 'processes': ddp_world_size,
         'threads': torch.get_num_threads()})
phase_start = None  # (time, iteration) where the current phase's training began in this process, for the ETA
rollout_time = 0.0  # seconds spent sampling since the last log
while True:
    lr = get_lr(iter_num) if decay_lr else learning_rate
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr

    resumed_here = iter_num == saved_iter and not eval_only  # a resumed run was evaluated before its stop
    if (iter_num % eval_interval == 0 or iter_num == max_iters or eval_only) and not resumed_here:
        losses = or_exit(estimate_loss)  # a val split shorter than a block stops in one line
        say(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        log_row({'iter': iter_num, 'train_loss': losses['train'], 'val_loss': losses['val']})
        if any_process(not all(map(math.isfinite, losses.values())))[0]:
            raise SystemExit(f"stopping: the evaluation loss is not finite at iteration {iter_num}; {last_good()}")
        best_val_loss = min(best_val_loss, losses['val'])
        if iter_num > 0 and not eval_only:
            checkpoint_now()
    if eval_only or iter_num >= max_iters:
        break
    if stop:  # after a Ctrl-C; here, after the evaluation that may be due, so that resuming is exact
        if saved_iter != iter_num:
            checkpoint_now()
        say(f"interrupted at iter {iter_num}, saved; continue with: {resume_command()}")
        break

    phase_start = phase_start or (time.time(), iter_num)  # after the evaluation that a run starts with
    use_sm = objective == 'seqmatch' and iter_num >= bc_warmup_iters
    if use_sm and iter_num == bc_warmup_iters:  # said, so that nobody reads the jump in the loss as divergence
        say(f"iter {iter_num}: SequenceMatch switches on: the loss now includes the SequenceMatch terms "
            f"({sm_weight} * L_SM + {1 - sm_weight:g} * L_BC), so it jumps, and the log gains expert, value, "
            f"chi2, reward_data, reward_model and bkspc rate; the val loss stays comparable")
        phase_start = (time.time(), iter_num)
        log_row({'iter': iter_num, 'event': 'seqmatch_on', 'elapsed_s': elapsed_before + phase_start[0] - t_start})
    # refresh on schedule, and whenever the buffer is empty (as after a resume with a new
    # bc_warmup_iters)
    if use_sm and ((iter_num - bc_warmup_iters) % sample_interval == 0 or len(replay) == 0):
        t_sample = time.time()
        refresh_rollouts()
        rollout_time += time.time() - t_sample

    for micro_step in range(gradient_accumulation_steps):
        if ddp:  # only sync gradients at the last micro step
            model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        loss, stats = compute_loss(to_device(next(batches)), use_sm)
        scaler.scale(loss / gradient_accumulation_steps).backward()
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)

    iter_num += 1
    if iter_num % log_interval == 0 or (ctrl_c and not ddp):
        # the loop's one host sync: a loss that is not finite stops the run before it reaches a
        # checkpoint (the evaluation before each save checks the weights too); the processes agree
        # here on a Ctrl-C, too
        diverged, stop = any_process(not math.isfinite(loss.item()), ctrl_c)
        if diverged:
            raise SystemExit(f"stopping: the loss is not finite ({loss.item()}) at iteration {iter_num}; {last_good()}")
    if iter_num % log_interval == 0 and master_process:
        t1 = time.time()
        dt, t0 = (t1 - t0) / log_interval, t1  # per iteration, sampling included
        row = {'iter': iter_num, 'loss': loss.item(), 'ms_per_iter': dt * 1000,
               'sampling_ms': rollout_time / log_interval * 1000, 'data_tok_per_s': tokens_per_iter / dt,
               **{k: v.item() for k, v in stats.items()}, **({'bkspc_rate': replay.bkspc_rate(rollouts_per_sample)}
                                                              if use_sm else {}),
               'elapsed_s': elapsed_before + t1 - t_start, 'eta_s': eta(t1)}
        rollout_time = 0.0
        log_row(row)
        shown = {'ms_per_iter': '{:.1f} ms/iter', 'sampling_ms': 'sampling {:.1f} ms', 'elapsed_s': '{} elapsed',
                 'data_tok_per_s': '{:,.0f} data tok/s', 'bkspc_rate': 'bkspc rate {:.3f}',
                 'eta_s': 'ETA {} to the switch-on' if in_warmup() else 'ETA {}'}
        say(f"iter {iter_num}: " + ', '.join(shown.get(k, k + ' {:.4f}').format(
            duration(v) if k in ('elapsed_s', 'eta_s') else v) for k, v in row.items() if k != 'iter'))

if master_process and not eval_only and not stop:
    say(f"done in {duration(elapsed_before + time.time() - t_start)}: best val loss {best_val_loss:.4f}; "
        f"checkpoint in {ckpt_path}")
if ddp:
    torch.distributed.barrier()  # no process tears down gloo while another is still talking to it
    torch.distributed.destroy_process_group()
if stop:
    raise SystemExit(130)  # the shell's code for a run stopped by Ctrl-C
