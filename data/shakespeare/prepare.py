"""
Tiny Shakespeare with the GPT-2 BPE (tiktoken), as in nanoGPT. Uses input.txt beside this file, or the
char-level one in ../shakespeare_char (the same file), or downloads it. Writes train.bin and val.bin
(uint16 token ids) and meta.pkl.
Expected output:
    train has 301,966 tokens
    val has 36,059 tokens
<bkspc> is id 50257, right after GPT-2's vocabulary, inside the padded model vocabulary of 50304;
<|endoftext|> (50256) is the end-of-sequence token.
"""
import argparse
import os
import pickle
import sys
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository
from tokenizer import BPEUnavailableError, gpt2_encoding  # noqa: E402

argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()

URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
here = os.path.dirname(os.path.abspath(__file__))
input_path = os.path.join(here, 'input.txt')
if not os.path.exists(input_path) and os.path.exists(os.path.join(here, '..', 'shakespeare_char', 'input.txt')):
    input_path = os.path.join(here, '..', 'shakespeare_char', 'input.txt')
if not os.path.exists(input_path):
    try:
        urllib.request.urlretrieve(URL, input_path + '.tmp')
        os.replace(input_path + '.tmp', input_path)
    except OSError as e:
        raise SystemExit(f"could not download Tiny Shakespeare ({e}).\n"
                         f"Offline? Put the file from {URL} at {input_path}")
with open(input_path, encoding='utf-8') as f:
    data = f.read()

try:
    enc = gpt2_encoding()
except BPEUnavailableError as e:
    raise SystemExit(str(e))
n = len(data)
train_ids = np.array(enc.encode_ordinary(data[:int(n * 0.9)]), dtype=np.uint16)
val_ids = np.array(enc.encode_ordinary(data[int(n * 0.9):]), dtype=np.uint16)
print(f"train has {len(train_ids):,} tokens")
print(f"val has {len(val_ids):,} tokens")
train_ids.tofile(os.path.join(here, 'train.bin'))
val_ids.tofile(os.path.join(here, 'val.bin'))
meta = {'tokenizer': 'gpt2', 'vocab_size': 50304, 'bkspc_id': enc.n_vocab, 'eos_id': enc.eot_token}
with open(os.path.join(here, 'meta.pkl'), 'wb') as f:
    pickle.dump(meta, f)
