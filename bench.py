"""
Speed checks, each printing ratios measured in the same run on the same machine:
  (a) step:     a training step (forward + backward) with a backspace mask against a causal one;
  (b) rollout:  rollouts with the step-synchronous KV cache against recomputing the whole prefix every step;
  (c) pipeline: preparing a micro-batch at GPT-2 shapes (noise, masking) next to a tiny model's step there,
                and a SequenceMatch step per row against an MLE step at the Shakespeare sizes;
  (d) gpu:      the SequenceMatch step at GPT-2 124M shapes on CUDA (bf16), small shapes on a CPU: MLE step,
                masked step, SequenceMatch step and MLE on equal rows; the losses alone on the same logits;
                decoding ms/step on the first call and once warm (and HF transformers' generate on the same
                weights, if installed); tok/s, MFU, peak memory.
Usage: python bench.py [--which=step|rollout|pipeline|gpu|all] [--steps=30]
(the rollout part takes ~8 minutes on 2 cores, the pipeline part ~1 minute, gpu ~1 minute on a CPU)
"""
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig
from seqmatch import (add_noise, apply_backspaces, attention_mask, backspace_inputs, bc_loss, chunked_soft_values,
                      generate, noisy_rows, sample_next, seqmatch_loss)

which = 'all'  # 'step', 'rollout', 'pipeline', 'gpu' or 'all'
steps = 30  # timed training steps per measurement (after 3 warm-up steps); fewer are noisy on small models
seed = 1337  # random seed of the models and inputs
exec(open('configurator.py').read())

torch.manual_seed(seed)
VOCAB = 65  # char-level Shakespeare; <bkspc> = 65
BK = VOCAB


def make_model(n_layer, n_head, n_embd, block_size):
    return GPT(GPTConfig(block_size=block_size, vocab_size=VOCAB + 1, n_layer=n_layer, n_head=n_head,
                         n_embd=n_embd, dropout=0.0, bias=False))


def median_time(fn, n, warmup=3):
    """Median seconds of fn() over n calls, after warm-up calls."""
    times = []
    for i in range(n + warmup):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def time_steps(model, optimizer, inputs, n):
    """Median seconds of forward + backward + optimizer step."""
    times = []
    for i in range(n + 3):
        t0 = time.perf_counter()
        logits = model(**inputs)
        loss = logits.float().logsumexp(-1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def bench_step(n_layer, n_head, n_embd, batch_size, block_size):
    model = make_model(n_layer, n_head, n_embd, block_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = torch.randint(0, VOCAB, (batch_size, block_size))
    noisy = torch.stack([add_noise(row, 0.1, BK)[0][:block_size] for row in data])  # (B, T)
    input_ids, position_ids, removed_at = backspace_inputs(noisy, BK, 1)
    attn_mask = attention_mask(removed_at)
    causal = time_steps(model, optimizer, dict(idx=data), steps)
    masked = time_steps(model, optimizer, dict(idx=input_ids, position_ids=position_ids, attn_mask=attn_mask), steps)
    print(f"(a) {n_layer}L/{n_embd} batch {batch_size}x{block_size}: causal {causal * 1000:.0f} ms, "
          f"backspace-masked {masked * 1000:.0f} ms, ratio {masked / causal:.2f}x (target <= 1.1x)")


@torch.no_grad()
def generate_recompute(model, prompt, max_new_tokens, bkspc_id):
    """The slow reference: every step runs the model on the whole row so far (masked, as in training)."""
    tokens = prompt
    for _ in range(max_new_tokens):
        input_ids, position_ids, removed_at = backspace_inputs(tokens, bkspc_id, prompt.size(1))
        logits = model(input_ids, position_ids=position_ids, attn_mask=attention_mask(removed_at))
        policy = logits[:, -1, :bkspc_id + 1].clone()
        depth = torch.tensor([len(apply_backspaces(row, bkspc_id)[0]) for row in tokens])
        policy[depth <= prompt.size(1), bkspc_id] = float('-inf')
        tokens = torch.cat([tokens, sample_next(policy)[:, None]], dim=1)
    return tokens


def bench_rollout(batch_size, new_tokens=255):
    model = make_model(6, 6, 384, 256).eval()
    prompt = torch.randint(0, VOCAB, (batch_size, 1))
    t0 = time.perf_counter()
    generate(model, prompt, new_tokens, BK)
    cached = time.perf_counter() - t0
    t0 = time.perf_counter()
    generate_recompute(model, prompt, new_tokens, BK)
    recompute = time.perf_counter() - t0
    n = batch_size * new_tokens
    print(f"(b) 6L/384, {new_tokens} new tokens at batch {batch_size}: KV cache {n / cached:,.0f} tok/s, "
          f"recompute {n / recompute:,.0f} tok/s, speed-up {recompute / cached:.1f}x")


def bench_pipeline(batch_size=8, block_size=1024, p_noise=0.02):
    """One micro-batch of train.py's data rows at GPT-2 shapes (ids up to 50256, <bkspc> = 50257, p_noise
    of config/openwebtext_seqmatch.py), built as its background thread builds it."""
    bk, eos = 50257, 50256
    rows = torch.randint(0, eos, (batch_size, block_size))  # stand-in for windows of OpenWebText
    g = torch.Generator().manual_seed(seed)
    tokens = noisy_rows(rows, p_noise, bk, eos, generator=g)[0]
    prepare = median_time(lambda: backspace_inputs(noisy_rows(rows, p_noise, bk, eos, generator=g)[0], bk, 1), steps)
    # the masking alone, and the floor of any version that returns this mask (allocating and writing it)
    masking = median_time(lambda: backspace_inputs(tokens, bk, 1), steps)
    floor = median_time(lambda: np.ones((batch_size, block_size, block_size), dtype=bool), steps)
    # a tiny model's masked training step at the same shape (char-level vocabulary: the GPT-2 head alone
    # would take seconds per step on this CPU)
    model = make_model(4, 4, 128, block_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    input_ids, position_ids, removed_at = backspace_inputs(tokens % VOCAB, VOCAB + 1, 1)  # the same rows, no <bkspc>
    inputs = dict(idx=input_ids, position_ids=position_ids, attn_mask=attention_mask(removed_at))
    step = time_steps(model, optimizer, inputs, max(steps // 3, 3))
    n = batch_size * block_size
    print(f"(c) micro-batch {batch_size}x{block_size}, p_noise {p_noise}: preparing it (noise + masking) "
          f"{prepare * 1000:.1f} ms = {n / prepare:,.0f} tok/s; a 4L/128 training step at that shape "
          f"{step * 1000:.0f} ms: preparing is {prepare / step:.1%} of a step")
    print(f"(c) backspace_inputs {batch_size}x{block_size}: {masking * 1000:.1f} ms, of which writing the mask "
          f"takes at least {floor * 1000:.2f} ms")


def bench_sm_vs_mle(batch_size=12, model_batch_size=6, block_size=64, prompt_len=16, sample_interval=10,
                    rollouts_per_sample=24):
    """Per row, a SequenceMatch step (data + rollout rows, masked, L_SM + L_BC) against an MLE step (causal,
    cross-entropy), with config/shakespeare_seqmatch.py's sizes; the data rows are prepared in the
    background in train.py, so only the rollout rows' masking counts."""
    model = make_model(4, 4, 128, block_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = torch.randint(0, VOCAB, (batch_size, block_size + 1))
    tokens, actions, valid = noisy_rows(data[:, :-1], 0.05, BK)
    data_inputs = backspace_inputs(tokens, BK, 1)
    model.eval()
    prompts = torch.randint(0, VOCAB, (rollouts_per_sample, prompt_len))
    refresh = median_time(lambda: generate(model, prompts, block_size - prompt_len, BK), max(steps // 10, 1), 1)
    rollouts, rollout_valid, _ = generate(model, prompts[:model_batch_size], block_size - prompt_len, BK)
    model.train()

    def mle_step():
        logits = model(data[:, :-1])
        F.cross_entropy(logits[..., :BK + 1].flatten(0, 1), data[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sm_step():
        rollout_inputs = backspace_inputs(rollouts, BK, prompt_len)
        input_ids, position_ids, removed_at = (torch.cat(pair) for pair in zip(data_inputs, rollout_inputs))
        attn_mask = attention_mask(removed_at)
        all_actions, all_valid = torch.cat([actions, rollouts]), torch.cat([valid, rollout_valid])
        is_data = torch.arange(len(all_actions)) < batch_size
        logits = model(input_ids, position_ids=position_ids, attn_mask=attn_mask)
        V, Q = chunked_soft_values(logits[..., :BK + 1], all_actions)
        expert = all_valid & is_data[:, None]
        loss_sm, _ = seqmatch_loss(V, Q, all_valid, expert, is_data, torch.zeros_like(all_valid), 0.998, 1.0)
        (0.5 * loss_sm + 0.5 * bc_loss(V, Q, expert)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    mle_times, sm_times = [], []
    for _ in range(steps):  # alternating the two
        mle_times.append(median_time(mle_step, 1, warmup=0))
        sm_times.append(median_time(sm_step, 1, warmup=0))
    mle, sm = sorted(mle_times)[steps // 2], sorted(sm_times)[steps // 2]
    sm_rows = batch_size + model_batch_size
    print(f"(d) 4L/128, {block_size} tokens a row: MLE step {mle * 1000:.1f} ms for {batch_size} rows, "
          f"SequenceMatch step {sm * 1000:.1f} ms for {batch_size} + {model_batch_size} rows: per row "
          f"{sm / sm_rows / (mle / batch_size):.2f}x; adding a refresh of {rollouts_per_sample} rollouts "
          f"({refresh * 1000:.0f} ms) every {sample_interval} steps, a step costs "
          f"{(sm + refresh / sample_interval) / mle:.2f}x an MLE step on the same {batch_size} data rows")


def bench_gpu():
    """The SequenceMatch step at GPT-2 124M shapes on CUDA (bf16 autocast), or small shapes on a CPU (fp32).
    Every ratio compares two timings of this run on this machine."""
    cuda = torch.cuda.is_available()
    device = 'cuda' if cuda else 'cpu'
    if cuda:  # GPT-2 124M, 8 data rows + 4 rollout rows of 1024 tokens; rollouts: 32 rows, 512 + 512 tokens
        shape = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024)
        n_data, n_model, decode_rows, prompt_len = 8, 4, 32, 512
    else:  # the same code at a size a laptop CPU runs in seconds (GPT-2's vocabulary, a small body)
        shape = dict(n_layer=2, n_head=4, n_embd=128, block_size=128)
        n_data, n_model, decode_rows, prompt_len = 4, 2, 8, 64
    n, bk, eos = shape['block_size'], 50257, 50256
    ctx = torch.autocast('cuda', dtype=torch.bfloat16) if cuda else nullcontext()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=50304, dropout=0.0, bias=True, **shape)).to(device)
    optimizer = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), device)

    def timed(fn):
        """Median ms of fn() after 3 warm-up calls (CUDA: each call waits for the GPU to finish it)."""
        return 1000 * median_time(lambda: (fn(), sync()), steps)

    # rows as train.py builds them: noisy data rows, and rollout rows of the model itself
    data = torch.randint(0, eos, (n_data, n + 1))
    tokens, actions, valid = noisy_rows(data[:, :n], 0.02, bk, eos)
    model.eval()
    rollouts, rollout_valid, _ = generate(model, data[:n_model, :n // 2].to(device), n - n // 2, bk, eos_id=eos)
    model.train()
    all_tokens = torch.cat([tokens, rollouts.cpu()])
    all_actions, all_valid = torch.cat([actions, rollouts.cpu()]), torch.cat([valid, rollout_valid.cpu()])
    masked = [t.to(device) for t in backspace_inputs(all_tokens, bk, [1] * n_data + [n // 2] * n_model)]
    all_actions, all_valid = all_actions.to(device), all_valid.to(device)
    is_data = torch.arange(n_data + n_model, device=device) < n_data
    expert = all_valid & is_data[:, None]
    done = all_valid & (all_actions == eos)
    x_all = torch.randint(0, eos, (n_data + n_model, n + 1), device=device)

    def step(loss_fn):
        def run():
            with ctx:
                loss = loss_fn()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return run

    def mle(x):
        logits = model(x[:, :-1])
        return F.cross_entropy(logits[..., :bk + 1].flatten(0, 1), x[:, 1:].flatten())

    def masked_logits(rows):
        logits = model(masked[0][:rows], position_ids=masked[1][:rows], attn_mask=attention_mask(masked[2][:rows]))
        return chunked_soft_values(logits[..., :bk + 1], all_actions[:rows])

    def masked_bc():
        return bc_loss(*masked_logits(n_data), expert[:n_data])

    def sequencematch():
        V, Q = masked_logits(n_data + n_model)
        loss_sm, _ = seqmatch_loss(V, Q, all_valid, expert, is_data, done, 0.998, 1.0)
        return 0.5 * loss_sm + 0.5 * bc_loss(V, Q, expert)

    t = {'MLE, causal': timed(step(lambda: mle(x_all[:n_data]))),
         'backspace mask + bc_loss': timed(step(masked_bc)),
         'SequenceMatch (0.5 L_SM + 0.5 L_BC)': timed(step(sequencematch)),
         'MLE on the same rows': timed(step(lambda: mle(x_all)))}
    n_params = sum(p.numel() for p in model.parameters())
    flops = 6 * n_params + 12 * shape['n_layer'] * shape['n_embd'] * n  # per token, fwd + bwd (PaLM appendix B)
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    peak = 989e12 if 'H100' in name or 'H200' in name else None  # dense bf16 FLOP/s; MFU only where we know it
    print(f"(d) on {name}, torch {torch.__version__}, {'bf16 autocast' if cuda else 'fp32'}; "
          f"{shape['n_layer']}L/{shape['n_embd']}, vocabulary 50304, rows of {n} tokens")
    print("| step, fwd + bwd + AdamW | rows | ms | tok/s | MFU |\n|---|---|---|---|---|")
    for (what, ms), rows in zip(t.items(), (n_data, n_data, n_data + n_model, n_data + n_model)):
        mfu = f"{flops * rows * n / (ms / 1000) / peak:.1%}" if peak else "n/a"
        print(f"| {what} | {rows} | {ms:.1f} | {rows * n / (ms / 1000):,.0f} | {mfu} |")
    print(f"SequenceMatch step / MLE step on equal rows: "
          f"{t['SequenceMatch (0.5 L_SM + 0.5 L_BC)'] / t['MLE on the same rows']:.2f}x")

    # the losses alone, fwd + bwd, on the same (rows, n, 50304) logits
    rows = n_data + n_model
    logits = torch.randn(rows, n, 50304, device=device, dtype=torch.bfloat16 if cuda else torch.float32)
    logits.requires_grad_()
    targets = all_actions

    def loss_time(fn):
        def run():
            logits.grad = None
            fn().backward()
        return timed(run)

    def sm_and_bc():
        V, Q = chunked_soft_values(logits[..., :bk + 1], targets)
        loss_sm, _ = seqmatch_loss(V, Q, all_valid, expert, is_data, done, 0.998, 1.0)
        return 0.5 * loss_sm + 0.5 * bc_loss(V, Q, expert)

    policy_logits = logits[..., :bk + 1]  # (rows, n, A): the action space, a view
    losses = {
        'F.cross_entropy, unsliced logits': loss_time(lambda: F.cross_entropy(logits.flatten(0, 1), targets.flatten())),
        "train.py's MLE cross-entropy (vocabulary slice, fp32)":
            loss_time(lambda: F.cross_entropy(policy_logits.flatten(0, 1).float(), targets.flatten())),
        'bc_loss (chunked_soft_values)': loss_time(lambda: bc_loss(*chunked_soft_values(policy_logits, targets), expert)),
        '0.5 seqmatch_loss + 0.5 bc_loss, as train.py': loss_time(sm_and_bc)}
    print(f"\n| the loss alone, fwd + bwd on ({rows}, {n}, 50304) {logits.dtype} logits | ms |\n|---|---|")
    for what, ms in losses.items():
        print(f"| {what} | {ms:.1f} |")
    ce = losses['F.cross_entropy, unsliced logits']
    print(f"SM + BC loss / F.cross_entropy: {losses['0.5 seqmatch_loss + 0.5 bc_loss, as train.py'] / ce:.2f}x")

    # memory the losses keep for the backward pass: soft_values keeps the logits themselves, and V
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel() * x.element_size()) or x, lambda x: x):
        sm_and_bc()
    print(f"tensors saved for the backward of SM + BC: {sum(saved) / 2 ** 20:.0f} MiB; the logits are "
          f"{logits.numel() * logits.element_size() / 2 ** 20:.0f} MiB ({logits.dtype}), an fp32 copy "
          f"{logits.numel() * 4 / 2 ** 20:.0f} MiB")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        logits.grad = None
        sm_and_bc().backward()
        peak_gib = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
        print(f"peak memory of SM + BC fwd + bwd above the logits: {peak_gib:.2f} GiB")
    logits = policy_logits = None  # frees the memory before decoding

    # decoding: ms per step on the first call (each length new to the kernels) and on a second call
    model.eval()
    prompt = torch.randint(0, eos, (decode_rows, prompt_len), device=device)
    new_tokens = prompt_len  # as many new tokens as the prompt has
    decode = []
    for _ in range(2):
        sync()
        t0 = time.perf_counter()
        with ctx:
            generate(model, prompt, new_tokens, bk)
        sync()
        decode.append(1000 * (time.perf_counter() - t0) / new_tokens)
    line = (f"\ndecoding {decode_rows} rows, {prompt_len} + {new_tokens} tokens: {decode[0]:.2f} ms/step on the first "
            f"call, {decode[1]:.2f} warm ({decode_rows / decode[1] * 1000:,.0f} tok/s)")
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        print(line + "; HF generate: transformers is not installed")
        return
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50304, n_positions=n, n_layer=shape['n_layer'], n_head=shape['n_head'],
                                    n_embd=shape['n_embd'])).to(device).eval()
    hf_times = []
    for _ in range(2):
        sync()
        t0 = time.perf_counter()
        with ctx, torch.no_grad():
            hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                        min_new_tokens=new_tokens, do_sample=True, pad_token_id=eos)
        sync()
        hf_times.append(1000 * (time.perf_counter() - t0) / new_tokens)
    print(line + f"; HF generate (random weights, same shape): {hf_times[1]:.2f} ms/step warm, ours "
                 f"{hf_times[1] / decode[1]:.2f}x its speed")


print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
if which in ('step', 'all'):
    bench_step(6, 6, 384, 8, 256)
    bench_step(4, 4, 128, 12, 64)
if which in ('rollout', 'all'):
    bench_rollout(1)
    bench_rollout(32)
if which in ('pipeline', 'all'):
    bench_pipeline()
    bench_sm_vs_mle()
if which in ('gpu', 'all'):
    bench_gpu()
