"""
Tiny Shakespeare, one token per character, as in nanoGPT. Uses input.txt beside this file, or
downloads it. Writes train.bin and val.bin (uint16 token ids) and meta.pkl (vocabulary, bkspc_id).
Expected output:
    length of dataset in characters: 1,115,394
    vocab size: 65, <bkspc> = id 65, model vocabulary 66
    train has 1,003,854 tokens
    val has 111,540 tokens
"""
import os
import pickle
import urllib.request

import numpy as np

URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
here = os.path.dirname(os.path.abspath(__file__))
input_path = os.path.join(here, 'input.txt')
if not os.path.exists(input_path):
    try:
        urllib.request.urlretrieve(URL, input_path + '.tmp')
        os.replace(input_path + '.tmp', input_path)
    except OSError as e:
        raise SystemExit(f"could not download Tiny Shakespeare ({e}).\n"
                         f"Offline? Put the file from {URL} at {input_path}")
with open(input_path, encoding='utf-8') as f:
    data = f.read()
print(f"length of dataset in characters: {len(data):,}")

chars = sorted(set(data))
bkspc_id = len(chars)  # <bkspc> comes right after the base vocabulary
print(f"vocab size: {len(chars)}, <bkspc> = id {bkspc_id}, model vocabulary {bkspc_id + 1}")
stoi = {ch: i for i, ch in enumerate(chars)}
itos = {i: ch for i, ch in enumerate(chars)}

n = len(data)
train_ids = np.array([stoi[c] for c in data[:int(n * 0.9)]], dtype=np.uint16)
val_ids = np.array([stoi[c] for c in data[int(n * 0.9):]], dtype=np.uint16)
print(f"train has {len(train_ids):,} tokens")
print(f"val has {len(val_ids):,} tokens")
train_ids.tofile(os.path.join(here, 'train.bin'))
val_ids.tofile(os.path.join(here, 'val.bin'))
meta = {'tokenizer': 'char', 'vocab_size': bkspc_id + 1, 'bkspc_id': bkspc_id, 'eos_id': None,
        'itos': itos, 'stoi': stoi}
with open(os.path.join(here, 'meta.pkl'), 'wb') as f:
    pickle.dump(meta, f)
