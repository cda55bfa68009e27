"""
Tiny Shakespeare, one token per character, as in nanoGPT: uses input.txt beside this file, or downloads it.
Any text file (UTF-8) the same way with --input=FILE: the vocabulary is the text's characters, the first 90%
of the text is train and the rest val. Writes train.bin and val.bin (uint16 token ids) and meta.pkl
(vocabulary, bkspc_id) beside this file or into --out_dir, each through a temporary file and a rename.
$ python data/shakespeare_char/prepare.py
Expected output:
    length of dataset in characters: 1,115,394
    vocab size: 65, <bkspc> = id 65, model vocabulary 66
    train has 1,003,854 tokens
    val has 111,540 tokens
$ python data/shakespeare_char/prepare.py --input=FILE --out_dir=DIR   # then python train.py --dataset=DIR
"""
import argparse
import os
import pickle
import urllib.request

import numpy as np

URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
here = os.path.dirname(os.path.abspath(__file__))
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument('--input', help='a text file to prepare instead of Tiny Shakespeare')
parser.add_argument('--out_dir', default=here, help='where the files go (default: beside this file)')
args = parser.parse_args()

input_path = args.input or os.path.join(here, 'input.txt')
if not args.input and not os.path.exists(input_path):
    try:
        urllib.request.urlretrieve(URL, input_path + '.tmp')
        os.replace(input_path + '.tmp', input_path)
    except OSError as e:
        raise SystemExit(f"could not download Tiny Shakespeare ({e}).\n"
                         f"Offline? Put the file from {URL} at {input_path}")
try:
    with open(input_path, encoding='utf-8') as f:
        data = f.read()
except OSError as e:
    raise SystemExit(f"cannot read {input_path}: {e.strerror}")
except UnicodeDecodeError as e:
    raise SystemExit(f"cannot read {input_path}: not UTF-8 text ({e.reason} at byte {e.start:,})")
if not data:
    raise SystemExit(f"{input_path} is empty: there is no text to prepare")
print(f"length of dataset in characters: {len(data):,}")

chars = sorted(set(data))
if len(chars) > 65535:  # ids are stored as uint16, and <bkspc> takes the id after the last character
    raise SystemExit(f"{input_path} has {len(chars):,} distinct characters; the ids are uint16, so at most 65,535")
bkspc_id = len(chars)  # <bkspc> comes right after the base vocabulary
print(f"vocab size: {len(chars)}, <bkspc> = id {bkspc_id}, model vocabulary {bkspc_id + 1}")
stoi = {ch: i for i, ch in enumerate(chars)}
itos = {i: ch for i, ch in enumerate(chars)}

n = len(data)
train_ids = np.array([stoi[c] for c in data[:int(n * 0.9)]], dtype=np.uint16)
val_ids = np.array([stoi[c] for c in data[int(n * 0.9):]], dtype=np.uint16)
print(f"train has {len(train_ids):,} tokens")
print(f"val has {len(val_ids):,} tokens")
meta = {'tokenizer': 'char', 'vocab_size': bkspc_id + 1, 'bkspc_id': bkspc_id, 'eos_id': None,
        'itos': itos, 'stoi': stoi}


def save(name, write):
    """write(f) into out_dir/name through a temporary file: an interrupted run leaves no half-written file."""
    path = os.path.join(args.out_dir, name)
    with open(path + '.tmp', 'wb') as f:
        write(f)
    os.replace(path + '.tmp', path)


os.makedirs(args.out_dir, exist_ok=True)
save('train.bin', train_ids.tofile)
save('val.bin', val_ids.tofile)
save('meta.pkl', lambda f: pickle.dump(meta, f))  # last: a folder with a meta.pkl is a prepared dataset
