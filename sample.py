"""
Sample from a trained model, with <bkspc>: the printed text is what is left after the deletions;
with --show_edits=True each sample also shows what was typed and then deleted.
$ python sample.py --out_dir=out-shakespeare-seqmatch --show_edits=True
"""
import os
import sys

import torch

from model import GPT
from seqmatch import generate
from tokenizer import Tokenizer

# -----------------------------------------------------------------------------
out_dir = 'out-shakespeare-seqmatch'  # the run to sample from (its ckpt.pt)
start = "\n"  # the prompt; or "FILE:prompt.txt" to read it from a file
num_samples = 3  # samples to draw (generated as one batch)
max_new_tokens = 500  # actions per sample, <bkspc> included
temperature = 0.8  # 1.0 = the policy itself, < 1.0 = more conservative, 0 = greedy
top_k = 200  # keep only the top_k most likely actions, 0 = all
show_edits = False  # also print what was deleted: struck through on a terminal, [-like this-] otherwise
seed = 1337  # random seed of the sampling
device = 'auto'  # 'auto' (cuda, then mps, then cpu), or 'cpu', 'cuda', 'mps'
# -----------------------------------------------------------------------------
exec(open('configurator.py').read())  # overrides from the command line or a config file

if device == 'auto':
    device = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
torch.manual_seed(seed)
model, meta = GPT.from_checkpoint(os.path.join(out_dir, 'ckpt.pt'), device)
model.eval()
tokenizer = Tokenizer(meta)
bkspc_id, eos_id = meta['bkspc_id'], meta['eos_id']

if start.startswith('FILE:'):
    with open(start[5:], encoding='utf-8') as f:
        start = f.read()
try:
    prompt = tokenizer.encode(start)
except ValueError as e:
    raise SystemExit(f"cannot encode the prompt: {e}")
if not prompt:
    raise SystemExit("the prompt is empty: give at least one token with --start=...")


def sample_long(prompt):
    """Samples longer than the block: generate a block at a time, each prompted by the latest text (at
    most half a block; being the prompt, the next block cannot delete it). Returns each sample's actions."""
    block = model.config.block_size
    texts = [list(prompt) for _ in range(num_samples)]  # the text so far, after deletions
    actions = [[] for _ in range(num_samples)]
    ended = [False] * num_samples
    remaining = max_new_tokens
    while remaining > 0 and not all(ended):
        keep = min(block // 2, min(len(t) for t in texts))  # the same prompt length for every row
        context = torch.tensor([t[len(t) - keep:] for t in texts], device=device)
        n_new = min(remaining, block - keep)
        tokens, valid = generate(model, context, n_new, bkspc_id, temperature, top_k or None, eos_id)
        for i in range(num_samples):
            for tok, real in zip(tokens[i, keep:].tolist(), valid[i, keep:].tolist()):
                if real and not ended[i]:
                    actions[i].append(tok)
                    texts[i].pop() if tok == bkspc_id else texts[i].append(tok)
                    ended[i] = tok == eos_id
        remaining -= n_new
    return actions


def render(actions, strike):
    """The actions as text, with deleted tokens marked in place."""
    pieces, live = [], []  # pieces: [text, deleted?]; live: indices of pieces not yet deleted
    for tok in actions:
        if tok == bkspc_id:
            pieces[live.pop()][1] = True
        else:
            live.append(len(pieces))
            pieces.append([tokenizer.token_text(tok), False])
    if strike:
        return ''.join(f"\x1b[9;31m{t}\x1b[0m" if d else t for t, d in pieces)
    return ''.join(f"[-{t}-]" if d else t for t, d in pieces)


with torch.no_grad():
    for actions in sample_long(prompt):
        final = []
        for tok in actions:
            final.pop() if tok == bkspc_id else final.append(tok)
        print(start + tokenizer.decode(final))
        n_bkspc = actions.count(bkspc_id)
        if show_edits:
            print(f"--- with the {n_bkspc} deletion(s) shown:")
            print(start + render(actions, strike=sys.stdout.isatty()))
        print('---------------')
