"""
Speed checks, each printing ratios measured in the same run on the same machine:
  (a) step:     a training step (forward + backward) with a backspace mask against a causal one;
  (b) rollout:  rollouts with the step-synchronous KV cache against recomputing the whole prefix every step;
  (c) pipeline: train.py's data micro-batches at GPT-2 shapes built on the host, in the training process and by
                DataLoader workers, against the rate a GPU step needs; a SequenceMatch step per row against an
                MLE step at the Shakespeare sizes;
  (d) gpu:      the SequenceMatch step at GPT-2 124M shapes on CUDA (bf16), small shapes on a CPU: MLE step,
                masked step, SequenceMatch step and MLE on equal rows; the losses alone on the same logits;
                decoding ms/step on the first call and once warm (and HF transformers' generate on the same
                weights, if installed); tok/s, MFU, peak memory.
  (e) hf:       hf_model.py with LoRA (transformers, peft): a SequenceMatch step against an MLE step, rollouts with the
                KV cache against recomputing; with --hf_dir, a real model at config/smollm2_shakespeare.py's shapes,
                and seqmatch.generate against transformers' own generate.
Usage: python bench.py [--which=step|rollout|pipeline|gpu|all|hf] [--steps=30] [--hf_dir=models/smollm2]
(the rollout part takes ~8 minutes on 2 cores, the pipeline part ~1 minute, gpu ~1 minute on a CPU)
"""
import math
import os
import pickle
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from batches import TrainBatches, micro_batches
from model import GPT, GPTConfig
from seqmatch import (add_noise, attention_mask, backspace_inputs, bc_loss, chunked_soft_values, generate, mle_loss,
                      noisy_rows, sample_next, seqmatch_loss)

which = 'all'  # 'step', 'rollout', 'pipeline', 'gpu' or 'all'
steps = 30  # timed training steps per measurement (after 3 warm-up steps); fewer are noisy on small models
seed = 1337  # random seed of the models and inputs
hf_dir = ''  # which=hf: a Hugging Face model directory (e.g. models/smollm2) instead of a tiny random Llama
exec(open('configurator.py').read())

torch.manual_seed(seed)
VOCAB = 65  # char-level Shakespeare; <bkspc> = 65
BK = VOCAB
GPT2_BK, GPT2_EOS = 50257, 50256  # GPT-2's <bkspc> (right after its vocabulary) and <|endoftext|>
GPU_STEP_MS = 33.0  # a SequenceMatch step of GPT-2 124M at 8 x 1024 tokens on one NVIDIA H200 (docs/speed.md)


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


def alternated_medians(fns, n):
    """Median seconds of each of fns, {name: fn}, over n calls after 3 warm-up ones, the calls alternated so that the
    machine's drift falls on all of them alike."""
    times = {name: [] for name in fns}
    for i in range(n + 3):
        for name, fn in fns.items():
            t = median_time(fn, 1, warmup=0)
            if i >= 3:
                times[name].append(t)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def training_step(model, optimizer, inputs):
    """A training step (forward + backward + AdamW) on the model's inputs, a dict of its keyword arguments, with
    the cross-entropy of the input ids as a stand-in loss (what (a) compares is the forward and backward of the model)."""
    def step():
        mle_loss(model(**inputs), inputs['idx']).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def masked_inputs(tokens, bkspc_id, n_prompt):
    """What the model reads for rows with <bkspc>: idx, position_ids and the (B, n, n) mask."""
    input_ids, position_ids, removed_at = backspace_inputs(tokens, bkspc_id, n_prompt)
    return dict(idx=input_ids, position_ids=position_ids, attn_mask=attention_mask(removed_at))


def bench_step(n_layer, n_head, n_embd, batch_size, block_size):
    model = make_model(n_layer, n_head, n_embd, block_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = torch.randint(0, VOCAB, (batch_size, block_size))
    noisy = torch.stack([add_noise(row, 0.1, BK)[0][:block_size] for row in data])  # (B, T)
    t = alternated_medians({'causal': training_step(model, optimizer, dict(idx=data)),
                            'masked': training_step(model, optimizer, masked_inputs(noisy, BK, 1))}, steps)
    causal, masked = t['causal'], t['masked']
    print(f"(a) {n_layer}L/{n_embd} batch {batch_size}x{block_size}: causal {causal * 1000:.0f} ms, "
          f"backspace-masked {masked * 1000:.0f} ms, ratio {masked / causal:.2f}x (target <= 1.1x)")


@torch.no_grad()
def generate_recompute(model, prompt, max_new_tokens, bkspc_id):
    """The slow reference: every step runs the model on the whole row so far (masked, as in training). It writes
    text only, no <bkspc>, as generate(allow_bkspc=False) does: a step costs the same either way."""
    tokens = prompt
    for _ in range(max_new_tokens):
        logits = model(**masked_inputs(tokens, bkspc_id, prompt.size(1)))
        tokens = torch.cat([tokens, sample_next(logits[:, -1, :bkspc_id])[:, None]], dim=1)  # the base vocabulary
    return tokens


@torch.no_grad()
def decoding_rates(model, prompt, new_tokens, bkspc_id):
    """New tokens per second of rollouts after prompt, with the KV cache (generate) and recomputing the prefix."""
    n = prompt.size(0) * new_tokens
    cached = median_time(lambda: generate(model, prompt, new_tokens, bkspc_id, allow_bkspc=False), 1, warmup=0)
    recompute = median_time(lambda: generate_recompute(model, prompt, new_tokens, bkspc_id), 1, warmup=0)
    return n / cached, n / recompute


def bench_rollout(batch_size, new_tokens=255):
    model = make_model(6, 6, 384, 256).eval()
    cached, recompute = decoding_rates(model, torch.randint(0, VOCAB, (batch_size, 1)), new_tokens, BK)
    print(f"(b) 6L/384, {new_tokens} new tokens at batch {batch_size}: KV cache {cached:,.0f} tok/s, "
          f"recompute {recompute:,.0f} tok/s, speed-up {cached / recompute:.1f}x")


def worker_rate(train_batches, num_workers, n):
    """Micro-batches a second that num_workers DataLoader workers deliver, once started (nothing else consumes
    them: this is what they can build)."""
    batches = micro_batches(train_batches, 0, n + 2 * num_workers + 2, num_workers, pin_memory=False)
    for _ in range(2 * num_workers + 2):  # the workers' start, and the batches they built meanwhile
        next(batches)
    t0 = time.perf_counter()
    for _ in range(n):
        next(batches)
    return n / (time.perf_counter() - t0)


def bench_pipeline(batch_size=8, block_size=1024, p_noise=0.02):
    """train.py's data micro-batches at GPT-2 shapes (ids up to 50256, <bkspc> = 50257, the p_noise of
    config/openwebtext_seqmatch.py), from a token file of random ids: one built in this process (the noise, then
    the stack rule), and the rate of one and of two DataLoader workers (train.py's num_workers)."""
    with tempfile.TemporaryDirectory() as data_dir:
        np.random.default_rng(seed).integers(0, GPT2_EOS, 2 ** 21, dtype=np.uint16).tofile(f'{data_dir}/train.bin')
        with open(os.path.join(data_dir, 'meta.pkl'), 'wb') as f:
            pickle.dump({'tokenizer': 'gpt2', 'vocab_size': 50304, 'bkspc_id': GPT2_BK, 'eos_id': GPT2_EOS}, f)
        train_batches = TrainBatches(data_dir, 'seqmatch', batch_size, block_size, 1, seed, 0, p_noise, 'random',
                                     {'bkspc_id': GPT2_BK, 'eos_id': GPT2_EOS})
        items = iter(range(10 ** 6))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a DataLoader worker
        build = median_time(lambda: train_batches[next(items)], steps)
        tokens = train_batches[0][0]
        stack_rule = median_time(lambda: backspace_inputs(tokens, GPT2_BK, 1), steps)
        torch.set_num_threads(threads)
        rates = {w: worker_rate(train_batches, w, max(steps, 10)) for w in (1, 2)}
    need = 2 * 1000 / GPU_STEP_MS  # micro-batches a second: twice what one GPU step per micro-batch takes
    print(f"(c) micro-batch {batch_size}x{block_size}, p_noise {p_noise}: built on one thread in {build * 1000:.1f} ms "
          f"(the stack rule {stack_rule * 1000:.1f} ms of it); DataLoader workers: 1 builds "
          f"{rates[1]:.1f}/s, 2 build {rates[2]:.1f}/s ({rates[2] / rates[1]:.2f}x, target >= 1.7x on 2 cores)")
    print(f"(c) a GPU step of {GPU_STEP_MS:.0f} ms (GPT-2 124M, 8 x 1024 tokens, one NVIDIA H200) takes "
          f"{1000 / GPU_STEP_MS:.1f} micro-batches/s; twice that, {need:.1f}/s, needs {math.ceil(need * build):d} "
          f"workers on free cores at {build * 1000:.1f} ms a micro-batch (each builds 1000 / {build * 1000:.1f} = "
          f"{1 / build:.1f}/s), e.g. on a 16-core GPU host")


def bench_sm_vs_mle(batch_size=12, model_batch_size=6, block_size=64, prompt_len=16, sample_interval=10,
                    rollouts_per_sample=24):
    """Per row, a SequenceMatch step (data + rollout rows, masked, L_SM + L_BC) against an MLE step (causal,
    cross-entropy), with config/shakespeare_seqmatch.py's sizes; the data rows are prepared ahead of the step in
    train.py, and the rollout rows come with their masked inputs (generate's Stacks), so neither is timed."""
    model = make_model(4, 4, 128, block_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = torch.randint(0, VOCAB, (batch_size, block_size + 1))
    tokens, actions, valid = noisy_rows(data[:, :-1], 0.05, BK)
    model.eval()
    prompts = torch.randint(0, VOCAB, (rollouts_per_sample, prompt_len))
    refresh = median_time(lambda: generate(model, prompts, block_size - prompt_len, BK), max(steps // 10, 1), 1)
    rollouts, rollout_valid, stacks = generate(model, prompts[:model_batch_size], block_size - prompt_len, BK)
    model.train()
    input_ids, position_ids, removed_at = (torch.cat(pair) for pair in zip(
        backspace_inputs(tokens, BK, 1), (stacks.input_ids, stacks.position_ids, stacks.removed_at)))
    all_actions, all_valid = torch.cat([actions, rollouts]), torch.cat([valid, rollout_valid])
    is_data = torch.arange(len(all_actions)) < batch_size
    expert = all_valid & is_data[:, None]

    def mle_step():
        mle_loss(model(data[:, :-1])[..., :BK + 1], data[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sm_step():
        logits = model(input_ids, position_ids=position_ids, attn_mask=attention_mask(removed_at))
        V, Q = chunked_soft_values(logits[..., :BK + 1], all_actions)
        loss_sm, _ = seqmatch_loss(V, Q, all_valid, expert, is_data, torch.zeros_like(all_valid), 0.998, 1.0)
        (0.5 * loss_sm + 0.5 * bc_loss(V, Q, expert)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    t = alternated_medians({'mle': mle_step, 'sm': sm_step}, steps)
    mle, sm = t['mle'], t['sm']
    sm_rows = batch_size + model_batch_size
    print(f"(c) 4L/128, {block_size} tokens a row: MLE step {mle * 1000:.1f} ms for {batch_size} rows, "
          f"SequenceMatch step {sm * 1000:.1f} ms for {batch_size} + {model_batch_size} rows: per row "
          f"{sm / sm_rows / (mle / batch_size):.2f}x; adding a refresh of {rollouts_per_sample} rollouts "
          f"({refresh * 1000:.0f} ms) every {sample_interval} steps, a step costs "
          f"{(sm + refresh / sample_interval) / mle:.2f}x an MLE step on the same {batch_size} data rows")

# ----------------------------------------------------------------------------- (d) GPT-2 shapes

CUDA = torch.cuda.is_available()
DEVICE = 'cuda' if CUDA else 'cpu'
CTX = torch.autocast('cuda', dtype=torch.bfloat16) if CUDA else nullcontext()
sync = torch.cuda.synchronize if CUDA else (lambda: None)
# GPT-2 124M, 8 data rows + 4 rollout rows of 1024 tokens, decoding 32 rows of 512 + 512 tokens; on a CPU the
# same code at a size it runs in seconds (GPT-2's vocabulary, a small body)
SHAPE = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024) if CUDA else \
    dict(n_layer=2, n_head=4, n_embd=128, block_size=128)
N_DATA, N_MODEL, DECODE_ROWS, PROMPT_LEN = (8, 4, 32, 512) if CUDA else (4, 2, 8, 64)


def timed_ms(fn):
    """Median ms of fn() after 3 warm-up calls (CUDA: each call waits for the GPU to finish it)."""
    return 1000 * median_time(lambda: (fn(), sync()), steps)


def gpt2_rows(model):
    """Rows as train.py builds them: N_DATA noisy data rows and N_MODEL rollouts of the model, on DEVICE: a dict of
    input_ids, position_ids, removed_at, actions, valid, is_data, expert and done."""
    n = SHAPE['block_size']
    tokens, actions, valid = noisy_rows(torch.randint(0, GPT2_EOS, (N_DATA, n)), 0.02, GPT2_BK, GPT2_EOS)
    model.eval()
    rollouts, rollout_valid, stacks = generate(model, tokens[:N_MODEL, :n // 2].to(DEVICE), n - n // 2, GPT2_BK,
                                               eos_id=GPT2_EOS)
    model.train()
    rows = dict(zip(('input_ids', 'position_ids', 'removed_at'), backspace_inputs(tokens, GPT2_BK, 1)),
                actions=actions, valid=valid)
    rows = {k: torch.cat([v.to(DEVICE), rollout]) for k, v, rollout in zip(
        rows, rows.values(), (stacks.input_ids, stacks.position_ids, stacks.removed_at, rollouts, rollout_valid))}
    rows['is_data'] = torch.arange(N_DATA + N_MODEL, device=DEVICE) < N_DATA
    rows['expert'] = rows['valid'] & rows['is_data'][:, None]
    rows['done'] = rows['valid'] & (rows['actions'] == GPT2_EOS)
    return rows


def sm_and_bc(V, Q, rows):
    """train.py's SequenceMatch loss: 0.5 L_SM + 0.5 L_BC."""
    loss_sm, _ = seqmatch_loss(V, Q, rows['valid'], rows['expert'], rows['is_data'], rows['done'], 0.998, 1.0)
    return 0.5 * loss_sm + 0.5 * bc_loss(V, Q, rows['expert'])


def bench_gpu_steps(model, rows):
    """A training step (fwd + bwd + AdamW) of each kind, with tok/s and MFU."""
    optimizer = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), DEVICE)
    n = SHAPE['block_size']
    x = torch.randint(0, GPT2_EOS, (N_DATA + N_MODEL, n + 1), device=DEVICE)

    def step(loss_fn):
        def run():
            with CTX:
                loss = loss_fn()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return run

    def masked(n_rows):
        """V and Q of the first n_rows rows, masked as train.py masks them."""
        logits = model(rows['input_ids'][:n_rows], position_ids=rows['position_ids'][:n_rows],
                       attn_mask=attention_mask(rows['removed_at'][:n_rows]))
        return chunked_soft_values(logits[..., :GPT2_BK + 1], rows['actions'][:n_rows])

    def mle(n_rows):
        return mle_loss(model(x[:n_rows, :-1])[..., :GPT2_BK + 1], x[:n_rows, 1:])

    t = {'MLE, causal': timed_ms(step(lambda: mle(N_DATA))),
         'backspace mask + bc_loss': timed_ms(step(lambda: bc_loss(*masked(N_DATA), rows['expert'][:N_DATA]))),
         'SequenceMatch (0.5 L_SM + 0.5 L_BC)': timed_ms(step(lambda: sm_and_bc(*masked(N_DATA + N_MODEL), rows))),
         'MLE on the same rows': timed_ms(step(lambda: mle(N_DATA + N_MODEL)))}
    n_params = sum(p.numel() for p in model.parameters())
    flops = 6 * n_params + 12 * SHAPE['n_layer'] * SHAPE['n_embd'] * n  # per token, fwd + bwd (PaLM appendix B)
    name = torch.cuda.get_device_name() if CUDA else f"CPU, {torch.get_num_threads()} threads"
    peak = 989e12 if 'H100' in name or 'H200' in name else None  # dense bf16 FLOP/s; MFU only where we know it
    print(f"(d) on {name}, torch {torch.__version__}, {'bf16 autocast' if CUDA else 'fp32'}; "
          f"{SHAPE['n_layer']}L/{SHAPE['n_embd']}, vocabulary 50304, rows of {n} tokens")
    print("| step, fwd + bwd + AdamW | rows | ms | tok/s | MFU |\n|---|---|---|---|---|")
    for (what, ms), n_rows in zip(t.items(), (N_DATA, N_DATA, N_DATA + N_MODEL, N_DATA + N_MODEL)):
        mfu = f"{flops * n_rows * n / (ms / 1000) / peak:.1%}" if peak else "n/a"
        print(f"| {what} | {n_rows} | {ms:.1f} | {n_rows * n / (ms / 1000):,.0f} | {mfu} |")
    print(f"SequenceMatch step / MLE step on equal rows: "
          f"{t['SequenceMatch (0.5 L_SM + 0.5 L_BC)'] / t['MLE on the same rows']:.2f}x")


def bench_gpu_losses(rows):
    """The losses alone, fwd + bwd, on the same (rows, n, 50304) logits, and the memory their backward keeps."""
    n_rows = N_DATA + N_MODEL
    logits = torch.randn(n_rows, SHAPE['block_size'], 50304, device=DEVICE,
                         dtype=torch.bfloat16 if CUDA else torch.float32, requires_grad=True)
    policy_logits = logits[..., :GPT2_BK + 1]  # (rows, n, A): the action space, a view
    targets = rows['actions']

    def loss_time(fn):
        def run():
            logits.grad = None
            fn().backward()
        return timed_ms(run)

    def sm_and_bc_of_logits():
        return sm_and_bc(*chunked_soft_values(policy_logits, targets), rows)

    losses = {
        'F.cross_entropy, unsliced logits': loss_time(lambda: F.cross_entropy(logits.flatten(0, 1), targets.flatten())),
        "train.py's MLE cross-entropy (vocabulary slice, fp32)": loss_time(lambda: mle_loss(policy_logits, targets)),
        'bc_loss (chunked_soft_values)':
            loss_time(lambda: bc_loss(*chunked_soft_values(policy_logits, targets), rows['expert'])),
        '0.5 seqmatch_loss + 0.5 bc_loss, as train.py': loss_time(sm_and_bc_of_logits)}
    print(f"\n| the loss alone, fwd + bwd on ({n_rows}, {SHAPE['block_size']}, 50304) {logits.dtype} logits | ms |"
          f"\n|---|---|")
    for what, ms in losses.items():
        print(f"| {what} | {ms:.1f} |")
    ce = losses['F.cross_entropy, unsliced logits']
    print(f"SM + BC loss / F.cross_entropy: {losses['0.5 seqmatch_loss + 0.5 bc_loss, as train.py'] / ce:.2f}x")
    # memory the losses keep for the backward pass: chunked_soft_values keeps the logits themselves, and V
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel() * x.element_size()) or x, lambda x: x):
        sm_and_bc_of_logits()
    print(f"tensors saved for the backward of SM + BC: {sum(saved) / 2 ** 20:.0f} MiB; the logits are "
          f"{logits.numel() * logits.element_size() / 2 ** 20:.0f} MiB ({logits.dtype}), an fp32 copy "
          f"{logits.numel() * 4 / 2 ** 20:.0f} MiB")
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        logits.grad = None
        sm_and_bc_of_logits().backward()
        print(f"peak memory of SM + BC fwd + bwd above the logits: "
              f"{(torch.cuda.max_memory_allocated() - base) / 2 ** 30:.2f} GiB")


def decode_ms_per_step(generate_fn, new_tokens):
    """ms per decoding step of generate_fn() on its first call (each length new to the kernels) and on a second."""
    times = []
    for _ in range(2):
        sync()
        t0 = time.perf_counter()
        with CTX, torch.no_grad():
            generate_fn()
        sync()
        times.append(1000 * (time.perf_counter() - t0) / new_tokens)
    return times


def bench_gpu_decoding(model):
    """Rollouts of DECODE_ROWS rows, PROMPT_LEN + as many new tokens, against HF transformers' generate on a model of
    the same shape."""
    model.eval()
    prompt = torch.randint(0, GPT2_EOS, (DECODE_ROWS, PROMPT_LEN), device=DEVICE)
    cold, warm = decode_ms_per_step(lambda: generate(model, prompt, PROMPT_LEN, GPT2_BK), PROMPT_LEN)
    line = (f"\ndecoding {DECODE_ROWS} rows, {PROMPT_LEN} + {PROMPT_LEN} tokens: {cold:.2f} ms/step on the first "
            f"call, {warm:.2f} warm ({DECODE_ROWS / warm * 1000:,.0f} tok/s)")
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        print(line + "; HF generate: transformers is not installed")
        return
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50304, n_positions=SHAPE['block_size'], n_layer=SHAPE['n_layer'],
                                    n_head=SHAPE['n_head'], n_embd=SHAPE['n_embd'])).to(DEVICE).eval()
    _, hf_warm = decode_ms_per_step(lambda: hf.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=PROMPT_LEN, min_new_tokens=PROMPT_LEN,
        do_sample=True, pad_token_id=GPT2_EOS), PROMPT_LEN)
    print(line + f"; HF generate (random weights, same shape): {hf_warm:.2f} ms/step warm, ours "
                 f"{hf_warm / warm:.2f}x its speed")


def bench_gpu():
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=50304, dropout=0.0, bias=True, **SHAPE)).to(DEVICE)
    rows = gpt2_rows(model)
    bench_gpu_steps(model, rows)
    bench_gpu_losses(rows)
    bench_gpu_decoding(model)


def tiny_llama(folder, vocab, block_size):
    """Writes a tiny random Hugging Face Llama (4 layers of 128) and a tokenizer of vocab words w0 .. w{vocab-1} (w0
    the eos) into folder, loaded as a local model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    words = Tokenizer(models.WordLevel({f'w{i}': i for i in range(vocab)}, unk_token='w0'))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=words, eos_token='w0').save_pretrained(folder)
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=block_size,
                                 eos_token_id=0, bos_token_id=0)).save_pretrained(folder)


def bench_hf(n_data=8, n_model=4, row=128, decode_rows=8, decode_prompt=64, new_tokens=128):
    """hf_model.py on the CPU, with LoRA as config/hf_lora_seqmatch.py trains it: a tiny random Llama (a vocabulary of
    2,000 words), or the model in directory hf_dir at config/smollm2_shakespeare.py's shapes. A SequenceMatch step
    (n_data noisy data rows + n_model rollout rows, masked, 0.5 L_SM + 0.5 L_BC) of row tokens each against an MLE
    step on as many rows; rollouts of new_tokens after a prompt of decode_prompt, with the KV cache against
    recomputing the whole prefix every step, and (hf_dir) against transformers' own generate on the same weights.
    Needs transformers and peft."""
    import tempfile
    from checkpoint import model_from_args
    from tokenizer import hf_meta, load_hf_tokenizer
    if hf_dir:
        n_data, n_model, row, decode_prompt, new_tokens = 4, 2, 64, 32, 32
        name, lora = hf_dir, dict(lora_rank=16, lora_alpha=32.0)
    block_size = max(row, decode_prompt + new_tokens)
    with tempfile.TemporaryDirectory() as folder:
        if not hf_dir:
            tiny_llama(folder, 2000, block_size)
            name, lora = folder, {}
        meta = hf_meta(load_hf_tokenizer(name), name)
        model = model_from_args(dict(hf_name=name, block_size=block_size, **lora))
    bk, eos, prompt_len = meta['bkspc_id'], meta['eos_id'], row // 2
    text_ids = torch.tensor([i for i in range(bk) if i != eos])  # prompts and data rows without the eos
    random_text = lambda *shape: text_ids[torch.randint(0, len(text_ids), shape)]
    optimizer = model.configure_optimizers(0.0, 1e-4, (0.9, 0.95), 'cpu')
    tokens, actions, valid = noisy_rows(random_text(n_data, row), 0.05, bk, eos)
    model.eval()
    rollouts, rollout_valid, stacks = generate(model, random_text(n_model, prompt_len), row - prompt_len, bk,
                                               eos_id=eos)
    model.train()
    masked = [torch.cat(pair) for pair in zip(backspace_inputs(tokens, bk, 1),
                                              (stacks.input_ids, stacks.position_ids, stacks.removed_at))]
    rows = dict(actions=torch.cat([actions, rollouts]), valid=torch.cat([valid, rollout_valid]),
                is_data=torch.arange(n_data + n_model) < n_data)
    rows.update(expert=rows['valid'] & rows['is_data'][:, None], done=rows['valid'] & (rows['actions'] == eos))
    x = random_text(n_data + n_model, row + 1)  # MLE on as many rows

    def mle_step():
        logits = model(x[:, :-1])
        F.cross_entropy(logits[..., :bk + 1].flatten(0, 1), x[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sm_step():
        logits = model(masked[0], position_ids=masked[1], attn_mask=attention_mask(masked[2]))
        sm_and_bc(*chunked_soft_values(logits[..., :bk + 1], rows['actions']), rows).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    what = f"{hf_dir} with LoRA r 16" if hf_dir else "tiny Llama 4L/128 with LoRA"
    t = alternated_medians({'mle': mle_step, 'sm': sm_step}, steps)
    mle, sm = t['mle'], t['sm']
    print(f"(hf) {what}, {n_data + n_model} rows of {row} tokens: MLE step {mle * 1000:.1f} ms, SequenceMatch step "
          f"({n_data} data + {n_model} rollout rows) {sm * 1000:.1f} ms: {sm / mle:.2f}x (target <= 1.3x)")
    model.eval()
    prompts = random_text(decode_rows, decode_prompt)
    cached, recompute = decoding_rates(model, prompts, new_tokens, bk)
    print(f"(hf) {decode_prompt} + {new_tokens} new tokens at batch {decode_rows}: KV cache {cached:,.0f} tok/s, "
          f"recompute {recompute:,.0f} tok/s, speed-up {cached / recompute:.1f}x (target >= 5x)")
    if hf_dir:  # the same rollouts with backspace against transformers' generate (no backspace, no eos stop)
        sampled = lambda: generate(model, prompts, new_tokens, bk, eos_id=eos)
        own = lambda: model.lm.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, top_k=0,
                                        top_p=1.0, temperature=1.0, max_new_tokens=new_tokens,
                                        min_new_tokens=new_tokens, pad_token_id=eos)
        with torch.no_grad():
            t = alternated_medians({'ours': sampled, 'transformers': own}, steps)
        print(f"(hf) generate, {decode_rows} rows of {decode_prompt} + {new_tokens}: seqmatch.generate "
              f"{t['ours'] * 1000 / new_tokens:.1f} ms/step, transformers' generate "
              f"{t['transformers'] * 1000 / new_tokens:.1f} ms/step: ours {t['transformers'] / t['ours']:.2f}x its "
              f"speed (target >= 0.9x)")


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
if which == 'hf':
    bench_hf()
