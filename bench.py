"""
Speed checks for the two claims of the backspace masking (seqmatch.py, section 2), on the Shakespeare-size models:
  (a) a training step (forward + backward) with a backspace mask costs about what a causal one does;
  (b) rollouts with the step-synchronous KV cache beat recomputing the whole prefix every step.
Prints ratios. Usage: python bench.py [--which=step|rollout|both] [--steps=30]  (the rollout part takes ~8 minutes on 2 cores)
"""
import time

import torch

from model import GPT, GPTConfig
from seqmatch import add_noise, apply_backspaces, backspace_inputs, generate, sample_next

which = 'both'  # 'step', 'rollout' or 'both'
steps = 30  # timed training steps per measurement (after 3 warm-up steps); fewer are noisy on small models
seed = 1337  # random seed of the models and inputs
exec(open('configurator.py').read())

torch.manual_seed(seed)
VOCAB = 65  # char-level Shakespeare; <bkspc> = 65
BK = VOCAB


def make_model(n_layer, n_head, n_embd, block_size):
    return GPT(GPTConfig(block_size=block_size, vocab_size=VOCAB + 1, n_layer=n_layer, n_head=n_head,
                         n_embd=n_embd, dropout=0.0, bias=False))


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


print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, fp32")
if which in ('step', 'both'):
    bench_step(6, 6, 384, 8, 256)
    bench_step(4, 4, 128, 12, 64)
if which in ('rollout', 'both'):
    bench_rollout(1)
    bench_rollout(32)
