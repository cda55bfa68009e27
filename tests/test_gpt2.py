"""The scale path: GPT-2 BPE data, local text prepared like OpenWebText, and GPT-2 weights."""
import os
import pickle
import random

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY, run
from model import GPT


def test_bpe_shakespeare_token_counts(shakespeare_char, gpt2_bpe):
    result = run('data/shakespeare/prepare.py')  # reuses the char-level input.txt
    assert 'train has 301,966 tokens' in result.stdout and 'val has 36,059 tokens' in result.stdout
    with open(os.path.join(ROOT, 'data/shakespeare/meta.pkl'), 'rb') as f:
        meta = pickle.load(f)
    assert (meta['bkspc_id'], meta['eos_id'], meta['vocab_size']) == (50257, 50256, 50304)


def write_documents(path, n_docs=150):
    """A stand-in for an OpenWebText sample: short made-up documents separated by blank lines."""
    rng = random.Random(0)
    words = 'the a model text writes reads deletes its own mistake when it sees one and then goes on'.split()
    docs = [' '.join(rng.choice(words) for _ in range(rng.randint(20, 60))).capitalize() + '.' for _ in range(n_docs)]
    path.write_text('\n\n'.join(docs))


def test_local_text_prepares_and_trains_with_seqmatch(tmp_path, gpt2_bpe):
    text, data = tmp_path / 'documents.txt', tmp_path / 'owt'
    write_documents(text)
    result = run('data/openwebtext/prepare.py', f'--input={text}', f'--out_dir={data}')
    assert '150 documents, the last 7 for val' in result.stdout
    assert (data / 'train.bin').exists() and (data / 'val.bin').exists()
    train = (data / 'train.bin').read_bytes()
    assert train.count((50256).to_bytes(2, 'little')) == 143  # each training document ends with <|endoftext|>
    out = tmp_path / 'out'
    result = run('train.py', 'config/shakespeare_seqmatch.py', f'--dataset={data}', f'--out_dir={out}',
                 '--max_iters=8', '--eval_interval=8', '--bc_warmup_iters=3', *TINY)
    assert 'reward_model' in result.stdout and (out / 'ckpt.pt').exists()
    sample = run('sample.py', f'--out_dir={out}', '--start=The', '--num_samples=2', '--max_new_tokens=20',
                 '--show_edits=True')
    assert sample.stdout.count('---------------') == 2


def test_gpt2_weights_load_exactly(tmp_path):
    transformers = pytest.importorskip('transformers', reason="needs the optional transformers: "
                                                              "pip install -r requirements-extra.txt")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path)
    model = GPT.from_pretrained(str(tmp_path)).eval()
    assert model.config.vocab_size == 128  # 100 tokens + <bkspc> at 100, padded to a multiple of 64
    idx = torch.randint(0, 100, (2, 32))
    with torch.no_grad():
        expected = hf(idx).logits
        logits = model(idx)
    assert (logits[..., :100] - expected).abs().max() < 1e-4
    bkspc_row = model.transformer.wte.weight[100]
    assert torch.allclose(bkspc_row, hf.transformer.wte.weight.mean(dim=0))  # <bkspc> starts as the mean token


def test_gpt2_weights_without_transformers_say_what_to_install(tmp_path):
    data = tmp_path / 'bpe'  # GPT-2 BPE data, as data/shakespeare/prepare.py writes it, without needing tiktoken
    data.mkdir()
    with open(data / 'meta.pkl', 'wb') as f:
        pickle.dump({'tokenizer': 'gpt2', 'vocab_size': 50304, 'bkspc_id': 50257, 'eos_id': 50256}, f)
    for split in ('train', 'val'):
        np.random.default_rng(0).integers(0, 50257, 2000, dtype=np.uint16).tofile(data / f'{split}.bin')
    hide = ("import sys; sys.modules['transformers'] = None; "
            f"sys.argv = ['train.py', '--init_from=gpt2', '--dataset={data}', '--out_dir={tmp_path / 'out'}', "
            "'--device=cpu']; exec(open('train.py').read())")
    result = run('-c', hide, check=False)
    assert result.returncode != 0
    message = result.stderr.strip()
    assert '\n' not in message and 'pip install transformers' in message, message
