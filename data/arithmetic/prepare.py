"""
"Add or subtract in base", the arithmetic task of the SequenceMatch paper (from the DeepMind mathematics
dataset), generated here with no download. One problem per line, character-level:
    In base 7, what is 23 - 14? 6
The newline after the answer is the end-of-sequence token. Seeded; the train, validation and test
problems are disjoint. Writes train.bin / val.bin (the train and validation problems as text),
val.txt, test.txt and unseen.txt (question<TAB>answer, for eval_arithmetic.py; unseen = every other question the
generator can ask) and meta.pkl.
$ python data/arithmetic/prepare.py [--n_train=5000] [--max_value=20] [--seed=0]
Expected output with the defaults:
    5,000 train, 200 validation and 200 test problems (bases 2-10, operands below 20)
    vocab size: 26, <bkspc> = id 26, model vocabulary 27
    train has 156,865 tokens
    val has 6,322 tokens
    1,800 more questions the generator can ask, none of them above (unseen.txt)
"""
import argparse
import os
import pickle
import random

import numpy as np

parser = argparse.ArgumentParser(description='generate the add-or-subtract-in-base problems')
parser.add_argument('--n_train', type=int, default=5000, help='training problems (the paper: 5,000)')
parser.add_argument('--n_val', type=int, default=200, help='validation problems, for choosing settings')
parser.add_argument('--n_test', type=int, default=200, help='held-out test problems (the paper: 200)')
parser.add_argument('--max_value', type=int, default=20, help='operands are drawn from 0 .. max_value - 1')
parser.add_argument('--seed', type=int, default=0)
parser.add_argument('--out_dir', default=os.path.dirname(os.path.abspath(__file__)))
args = parser.parse_args()

DIGITS = '0123456789'
BASES = range(2, 11)  # digits only, so every base shares one small vocabulary


def to_base(value, base):
    if value < 0:
        return '-' + to_base(-value, base)
    out = ''
    while True:
        value, digit = divmod(value, base)
        out = DIGITS[digit] + out
        if value == 0:
            return out


def problem(rng):
    base = rng.choice(BASES)
    x, y = rng.randrange(args.max_value), rng.randrange(args.max_value)
    op = rng.choice('+-')
    answer = x + y if op == '+' else x - y
    return f"In base {base}, what is {to_base(x, base)} {op} {to_base(y, base)}?", to_base(answer, base)


rng = random.Random(args.seed)
problems = {}  # question -> answer; a dict so that no question appears twice
n_total = args.n_train + args.n_val + args.n_test
while len(problems) < n_total:
    question, answer = problem(rng)
    problems[question] = answer
items = list(problems.items())
splits = {'train': items[:args.n_train], 'val': items[args.n_train:args.n_train + args.n_val],
          'test': items[args.n_train + args.n_val:]}
print(f"{args.n_train:,} train, {args.n_val:,} validation and {args.n_test:,} test problems "
      f"(bases {BASES[0]}-{BASES[-1]}, operands below {args.max_value})")

text = {split: ''.join(f"{q} {a}\n" for q, a in pairs) for split, pairs in splits.items()}
chars = sorted(set(''.join(text.values())))
stoi = {ch: i for i, ch in enumerate(chars)}
bkspc_id = len(chars)
print(f"vocab size: {len(chars)}, <bkspc> = id {bkspc_id}, model vocabulary {bkspc_id + 1}")
os.makedirs(args.out_dir, exist_ok=True)
for split in ('train', 'val'):
    ids = np.array([stoi[c] for c in text[split]], dtype=np.uint16)
    ids.tofile(os.path.join(args.out_dir, f'{split}.bin'))
    print(f"{split} has {len(ids):,} tokens")
# every other question the generator can ask: a larger held-out set, to grade with less noise than 200
unseen = {}
for base in BASES:
    for x in range(args.max_value):
        for y in range(args.max_value):
            for op in '+-':
                question = f"In base {base}, what is {to_base(x, base)} {op} {to_base(y, base)}?"
                if question not in problems:
                    unseen[question] = to_base(x + y if op == '+' else x - y, base)
splits['unseen'] = list(unseen.items())
print(f"{len(unseen):,} more questions the generator can ask, none of them above (unseen.txt)")
for split in ('val', 'test', 'unseen'):
    with open(os.path.join(args.out_dir, f'{split}.txt'), 'w') as f:
        f.writelines(f"{q}\t{a}\n" for q, a in splits[split])
meta = {'tokenizer': 'char', 'vocab_size': bkspc_id + 1, 'bkspc_id': bkspc_id, 'eos_id': stoi['\n'],
        'itos': dict(enumerate(chars)), 'stoi': stoi, 'task': 'arithmetic'}
with open(os.path.join(args.out_dir, 'meta.pkl'), 'wb') as f:
    pickle.dump(meta, f)
