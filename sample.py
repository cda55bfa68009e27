"""
Sample from a trained model, with <bkspc>: the printed text is what is left after the deletions;
with --show_edits=True each sample also shows what was typed and then deleted: on a terminal the
deleted tokens struck through in red, otherwise every action as typed with each <bkspc> as ⌫, so
that 'ab⌫c' is a, b, a <bkspc> that deleted the b, then c (the text 'ac'); a deleted newline shows
as ↵.
$ python sample.py --out_dir=out-shakespeare-seqmatch --show_edits=True
"""
import os
import sys

import torch

from checkpoint import LOAD_ERRORS, auto_device, load_model
from seqmatch import apply_backspaces, generate
from tokenizer import Tokenizer

# -----------------------------------------------------------------------------
out_dir = 'out-shakespeare-seqmatch'  # the run to sample from (its ckpt.pt)
start = "\n"  # the prompt; or "FILE:prompt.txt" to read it from a file
num_samples = 3  # samples to draw (generated as one batch)
max_new_tokens = 500  # actions per sample, <bkspc> included
temperature = 0.8  # 1.0 = the policy itself, < 1.0 = more conservative, 0 = greedy
top_k = 200  # keep only the top_k most likely actions, 0 = all
show_edits = False  # also print what was typed: deletions struck through on a terminal, else each <bkspc> as ⌫
seed = 1337  # random seed of the sampling
device = 'auto'  # 'auto' (cuda, then mps, then cpu), or 'cpu', 'cuda', 'mps'
# -----------------------------------------------------------------------------
exec(open('configurator.py').read())  # overrides from the command line or a config file

if temperature < 0 or top_k < 0:
    raise SystemExit(f"temperature={temperature}, top_k={top_k}: both must be >= 0 (temperature 0: greedy; top_k 0: all)")
torch.manual_seed(seed)
try:
    device = auto_device(device)
    model, checkpoint = load_model(os.path.join(out_dir, 'ckpt.pt'), device)
    tokenizer = Tokenizer(checkpoint['meta'])
    if start.startswith('FILE:'):
        with open(start[5:], encoding='utf-8') as f:
            start = f.read()
except LOAD_ERRORS as e:
    raise SystemExit(f"error: {e}")
model.eval()
bkspc_id, eos_id = checkpoint['meta']['bkspc_id'], checkpoint['meta']['eos_id']
try:
    prompt = tokenizer.encode(start)
except ValueError as e:
    raise SystemExit(f"cannot encode the prompt: {e}")
if not prompt:
    raise SystemExit("the prompt is empty: give at least one token with --start=...")


def sample_long(prompt):
    """Samples longer than the block: generate a block at a time, each prompted by the latest text
    (at most half a block; being the prompt, the next block cannot delete it). Returns each sample's
    actions."""
    block = model.config.block_size
    actions = [[] for _ in range(num_samples)]
    remaining = max_new_tokens
    while remaining > 0 and not all(eos_id in a for a in actions):  # (eos_id None: never)
        texts = [apply_backspaces(prompt + a, bkspc_id)[0] for a in actions]  # the text so far, after deletions
        keep = min(block // 2, min(len(t) for t in texts))  # the same prompt length for every row
        context = torch.tensor([t[len(t) - keep:] for t in texts], device=device)
        n_new = min(remaining, block - keep)
        tokens, valid, _ = generate(model, context, n_new, bkspc_id, temperature, top_k or None, eos_id)
        for a, row, real in zip(actions, tokens[:, keep:].tolist(), valid[:, keep:].tolist()):
            if eos_id not in a:
                a += [tok for tok, ok in zip(row, real) if ok]
        remaining -= n_new
    return actions


with torch.no_grad():
    for actions in sample_long(prompt):
        if eos_id in actions:  # the end of the text, not a part of it
            actions = actions[:actions.index(eos_id)]
        text, deleted = apply_backspaces(prompt + actions, bkspc_id)
        print(start + tokenizer.decode(text[len(prompt):]))
        if show_edits:
            print(f"--- with the {actions.count(bkspc_id)} deletion(s) shown:")
            deleted = [j - len(prompt) for j in deleted]  # indices in actions
            print(start + tokenizer.typed_text(actions, deleted, strike=sys.stdout.isatty()))
        print('---------------')
