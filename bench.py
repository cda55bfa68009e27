"""
Speed checks for the two claims of the backspace masking (seqmatch.py, section 2), on the Shakespeare-size models:
  (a) a training step (forward + backward) with a backspace mask costs about what a causal one does;
  (b) rollouts with the step-synchronous KV cache beat recomputing the whole prefix every step;
and for the batch pipeline of train.py (issue 12):
  (c) preparing a micro-batch at GPT-2 shapes (noise, masking) next to a tiny model's step at that shape,
      and backspace_inputs against the loop over positions it replaced (tests/test_seqmatch.py);
  (d) the cost per row of a SequenceMatch step against an MLE step, with the rollouts amortised.
Prints ratios. Usage: python bench.py [--which=step|rollout|pipeline|all] [--steps=30]
(the rollout part takes ~8 minutes on 2 cores, the pipeline part ~1 minute)
"""
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig
from seqmatch import (add_noise, apply_backspaces, backspace_inputs, bc_loss, generate, noisy_rows, sample_next,
                      seqmatch_loss)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tests'))
from test_seqmatch import stack_loop_backspace_inputs  # noqa: E402 (the reference, kept with its test)

which = 'all'  # 'step', 'rollout', 'pipeline' or 'all'
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
        logits, _ = model(**inputs)
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
    input_ids, position_ids, attn_mask = backspace_inputs(noisy, BK, 1)
    causal = time_steps(model, optimizer, dict(idx=data), steps)
    masked = time_steps(model, optimizer, dict(idx=input_ids, position_ids=position_ids, attn_mask=attn_mask), steps)
    print(f"(a) {n_layer}L/{n_embd} batch {batch_size}x{block_size}: causal {causal * 1000:.0f} ms, "
          f"backspace-masked {masked * 1000:.0f} ms, ratio {masked / causal:.2f}x (target <= 1.1x)")


@torch.no_grad()
def generate_recompute(model, prompt, max_new_tokens, bkspc_id):
    """The slow reference: every step runs the model on the whole row so far (masked, as in training)."""
    tokens = prompt
    for _ in range(max_new_tokens):
        input_ids, position_ids, attn_mask = backspace_inputs(tokens, bkspc_id, prompt.size(1))
        logits, _ = model(input_ids, position_ids=position_ids, attn_mask=attn_mask)
        policy = logits[:, -1, :bkspc_id + 1].clone()
        depth = torch.tensor([len(apply_backspaces(row, bkspc_id)) for row in tokens])
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
    # The masking alone against the loop it replaced, and the floor any version pays (allocating and writing
    # the (B, n, n) bool mask it returns), timed two ways, the two sides alternating (other processes share
    # the CPU): back to back (warm caches: train.py's batch thread while a GPU computes) and single calls,
    # each after the other side's (cold caches: a CPU that also runs the model)
    candidates = dict(loop=lambda: stack_loop_backspace_inputs(tokens, bk, 1),
                      vectorised=lambda: backspace_inputs(tokens, bk, 1),
                      floor=lambda: np.ones((batch_size, block_size, block_size), dtype=bool))
    warm_times, cold_times = ({name: [] for name in candidates} for _ in range(2))
    for i in range(steps):
        for name, fn in candidates.items():
            cold_times[name].append(median_time(fn, 1, warmup=0))
            if i % 3 == 0:  # a block of 1 + 3 calls
                warm_times[name].append(median_time(fn, 3, warmup=1))
    warm, cold = ({name: sorted(t)[len(t) // 2] for name, t in times.items()} for times in (warm_times, cold_times))
    # a tiny model's masked training step at the same shape (char-level vocabulary: the GPT-2 head alone
    # would take seconds per step on this CPU)
    model = make_model(4, 4, 128, block_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = backspace_inputs(tokens % VOCAB, VOCAB + 1, 1)  # the same rows, without <bkspc>
    step = time_steps(model, optimizer, dict(zip(('idx', 'position_ids', 'attn_mask'), inputs)), max(steps // 3, 3))
    n = batch_size * block_size
    print(f"(c) micro-batch {batch_size}x{block_size}, p_noise {p_noise}: preparing it (noise + masking) "
          f"{prepare * 1000:.1f} ms = {n / prepare:,.0f} tok/s; a 4L/128 training step at that shape "
          f"{step * 1000:.0f} ms: preparing is {prepare / step:.1%} of a step")
    for how, t in (('back to back', warm), ('single calls', cold)):
        print(f"(c) backspace_inputs {batch_size}x{block_size}, {how}: loop over positions {t['loop'] * 1000:.1f} ms, "
              f"vectorised {t['vectorised'] * 1000:.2f} ms, speed-up {t['loop'] / t['vectorised']:.1f}x; writing the "
              f"mask alone {t['floor'] * 1000:.2f} ms (no version that returns this mask can beat the loop by more "
              f"than {t['loop'] / t['floor']:.0f}x)")


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
    rollouts, rollout_valid = generate(model, prompts[:model_batch_size], block_size - prompt_len, BK)
    model.train()

    def mle_step():
        logits, _ = model(data[:, :-1])
        F.cross_entropy(logits[..., :BK + 1].flatten(0, 1), data[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sm_step():
        rollout_inputs = backspace_inputs(rollouts, BK, prompt_len)
        input_ids, position_ids, attn_mask = (torch.cat(pair) for pair in zip(data_inputs, rollout_inputs))
        all_actions, all_valid = torch.cat([actions, rollouts]), torch.cat([valid, rollout_valid])
        is_data = torch.arange(len(all_actions)) < batch_size
        logits, _ = model(input_ids, position_ids=position_ids, attn_mask=attn_mask)
        logits = logits[..., :BK + 1]
        expert = all_valid & is_data[:, None]
        loss_sm, _ = seqmatch_loss(logits, all_actions, all_valid, expert, is_data, torch.zeros_like(all_valid),
                                   0.998, 1.0)
        (0.5 * loss_sm + 0.5 * bc_loss(logits, all_actions, expert)).backward()
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


print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, fp32")
if which in ('step', 'all'):
    bench_step(6, 6, 384, 8, 256)
    bench_step(4, 4, 128, 12, 64)
if which in ('rollout', 'all'):
    bench_rollout(1)
    bench_rollout(32)
if which in ('pipeline', 'all'):
    bench_pipeline()
    bench_sm_vs_mle()
