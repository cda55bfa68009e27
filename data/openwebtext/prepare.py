"""
OpenWebText with the GPT-2 BPE, as in nanoGPT: every document ends with <|endoftext|> (50256), the
end-of-sequence token of rollouts. Writes train.bin, val.bin (uint16) and meta.pkl.
With --tokenizer=hf:<model id, local directory or .gguf file>, in that Hugging Face model's tokenizer instead, each
document ending with its eos token, for train.py's init_from='hf:...' (uint32 ids for a vocabulary of more than
65,536).

The real corpus (~8M documents, ~9B tokens, ~17 GB train.bin; needs `pip install datasets` and an hour):
$ python data/openwebtext/prepare.py
Any local text file the same way, documents separated by blank lines (e.g. a small sample):
$ python data/openwebtext/prepare.py --input=FILE [--out_dir=DIR] [--tokenizer=hf:HuggingFaceTB/SmolLM2-135M]
"""
import argparse
import os
import pickle
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository
from tokenizer import BPEUnavailableError, gpt2_encoding, hf_meta, load_hf_tokenizer  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument('--input', help='a local text file to prepare instead of the HuggingFace dataset')
parser.add_argument('--out_dir', default=os.path.dirname(os.path.abspath(__file__)), help='where the files go')
parser.add_argument('--num_proc', type=int, default=8, help='worker processes for the HuggingFace path')
parser.add_argument('--tokenizer', default='gpt2',
                    help="'gpt2' (GPT-2's BPE), or 'hf:<model id, local directory or .gguf file>': that model's "
                         "tokenizer")
args = parser.parse_args()
if args.input and not os.path.isfile(args.input):
    raise SystemExit(f"--input={args.input}: there is no such file")

if args.tokenizer.startswith('hf:'):
    try:
        hf = load_hf_tokenizer(args.tokenizer[3:])
    except (OSError, ImportError, ValueError) as e:  # ValueError: a bad GGUF file
        raise SystemExit(str(e))
    meta = hf_meta(hf, args.tokenizer[3:])
    if meta['eos_id'] is None:
        raise SystemExit(f"{args.tokenizer[3:]}'s tokenizer has no eos token to end the documents with")
    encode, eos_id = (lambda text: hf.encode(text, add_special_tokens=False)), meta['eos_id']
elif args.tokenizer == 'gpt2':
    try:
        enc = gpt2_encoding()
    except BPEUnavailableError as e:
        raise SystemExit(str(e))
    meta = {'tokenizer': 'gpt2', 'vocab_size': 50304, 'bkspc_id': enc.n_vocab, 'eos_id': enc.eot_token}
    encode, eos_id = enc.encode_ordinary, enc.eot_token
else:
    raise SystemExit(f"--tokenizer={args.tokenizer}: expected 'gpt2' or 'hf:<model id or local directory>'")
token_dtype = np.dtype(meta.get('token_dtype', 'uint16'))


def tokenize(text):
    return encode(text) + [eos_id]  # the end-of-sequence token ends every document


def write(split, ids):
    """ids: an iterable of token-id lists, written one after another; atomically (temp file + rename)."""
    path = os.path.join(args.out_dir, f'{split}.bin')
    with open(path + '.tmp', 'wb') as f:
        n = 0
        for doc in ids:
            np.array(doc, dtype=token_dtype).tofile(f)
            n += len(doc)
    os.replace(path + '.tmp', path)
    print(f"{split} has {n:,} tokens")


os.makedirs(args.out_dir, exist_ok=True)
if args.input:
    with open(args.input, encoding='utf-8') as f:
        docs = [d.strip() for d in f.read().split('\n\n') if d.strip()]
    n_val = max(1, len(docs) // 20)  # the last 5% of documents
    print(f"{args.input}: {len(docs):,} documents, the last {n_val:,} for val")
    write('train', (tokenize(d) for d in tqdm(docs[:-n_val], desc='train')))
    write('val', (tokenize(d) for d in tqdm(docs[-n_val:], desc='val')))
else:
    try:
        from datasets import load_dataset
    except ImportError:
        raise SystemExit("the OpenWebText path needs the optional package datasets: pip install datasets\n"
                         "(or prepare a local text file with --input=FILE)")
    try:
        dataset = load_dataset('openwebtext', num_proc=args.num_proc)
    except OSError as e:  # ConnectionError included
        raise SystemExit(f"could not download OpenWebText from the HuggingFace hub ({e}).\n"
                         f"Offline? Prepare a local text file instead: --input=FILE")
    split = dataset['train'].train_test_split(test_size=0.0005, seed=2357, shuffle=True)  # as nanoGPT
    split['val'] = split.pop('test')
    tokenized = split.map(lambda ex: {'ids': tokenize(ex['text'])}, remove_columns=['text'],
                          desc='tokenizing', num_proc=args.num_proc)
    for name, dset in tokenized.items():
        write(name, (ex['ids'] for ex in tqdm(dset, desc=f'writing {name}')))

meta_path = os.path.join(args.out_dir, 'meta.pkl')
with open(meta_path + '.tmp', 'wb') as f:  # atomically, as the token files
    pickle.dump(meta, f)
os.replace(meta_path + '.tmp', meta_path)
