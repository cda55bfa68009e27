"""sample.py: how --show_edits writes what was typed, bad settings, and a GPT-2 BPE run without GPT-2's BPE files."""
import pickle

import torch

import numpy as np

from conftest import TINY, run
from tokenizer import Tokenizer


def test_show_edits_writes_each_bkspc_where_it_was_typed():
    chars = sorted(set('well-made hat\n'))
    tokenizer = Tokenizer({'tokenizer': 'char', 'stoi': {c: i for i, c in enumerate(chars)},
                           'itos': dict(enumerate(chars)), 'bkspc_id': len(chars), 'eos_id': None})

    def actions(typed):
        return [tokenizer.bkspc_id if c == '⌫' else tokenizer.stoi[c] for c in typed]

    # (what was typed, the indices of the characters that <bkspc>s deleted, what --show_edits prints off a terminal)
    cases = [('well-made', [], 'well-made'),
             ('well-⌫ made', [4], 'well-⌫ made'),  # a deleted hyphen, next to the kept one of the first case
             ('hat-⌫⌫⌫', [3, 2, 1], 'hat-⌫⌫⌫'),
             ('wel\n⌫l', [3], 'wel↵⌫l')]  # a deleted newline: the lines stay those of the text left
    for typed, deleted, shown in cases:
        assert tokenizer.typed_text(actions(typed), deleted, strike=False) == shown
    struck = tokenizer.typed_text(actions('well-⌫ made'), [4], strike=True)  # on a terminal: struck through, no ⌫
    assert struck == 'well\x1b[9;31m-\x1b[0m made'


def test_show_edits_writes_characters_that_span_several_bpe_tokens(gpt2_bpe):
    """A byte-level BPE splits some characters over tokens, which decode to '�' one at a time: as typed, each run of
    kept or deleted tokens is decoded at once."""
    tokenizer = Tokenizer({'tokenizer': 'gpt2', 'bkspc_id': 50257, 'eos_id': 50256})
    before, deleted, after = (tokenizer.encode(text) for text in ('well 😀', ' 🎩', ' met'))
    assert len(tokenizer.encode('😀')) > 1 and len(deleted) > 1, "the test needs characters of several tokens"
    typed = before + deleted + [50257] * len(deleted) + after
    shown = tokenizer.typed_text(typed, list(range(len(before), len(before) + len(deleted))), strike=False)
    assert shown == 'well 😀 🎩' + '⌫' * len(deleted) + ' met', shown


def test_bad_settings_stop_sample_in_one_line(char_model, tmp_path):
    cases = [(['--temperature=-1'], ['temperature=-1', '>= 0']), (['--top_k=-5'], ['top_k=-5', '>= 0']),
             ([f'--start=FILE:{tmp_path}/missing.txt'], ['missing.txt']), (['--start=price: 5€'], ["'€'"]),
             ([f'--out_dir={tmp_path}/no_run'], ['no checkpoint at'])]
    if not torch.cuda.is_available():
        cases.append((['--device=cuda'], ['no CUDA device']))
    for args, facts in cases:
        result = run('sample.py', f'--out_dir={char_model}', '--max_new_tokens=4', *args, check=False)
        assert result.returncode != 0, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and all(fact in lines[0] for fact in facts), (args, result.stderr)


def test_bpe_run_without_the_bpe_files_is_a_one_line_error(tmp_path, monkeypatch):
    """A GPT-2 BPE checkpoint sampled or evaluated offline with an empty tiktoken cache: one line that says what to
    set."""
    data, out, empty_cache = tmp_path / 'bpe', tmp_path / 'out', tmp_path / 'empty_cache'
    data.mkdir()
    empty_cache.mkdir()
    with open(data / 'meta.pkl', 'wb') as f:  # as data/shakespeare/prepare.py writes it, without needing tiktoken
        pickle.dump({'tokenizer': 'gpt2', 'vocab_size': 50304, 'bkspc_id': 50257, 'eos_id': 50256}, f)
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        rng.integers(0, 50257, 2000, dtype=np.uint16).tofile(data / f'{split}.bin')
    run('train.py', f'--dataset={data}', '--objective=mle', f'--out_dir={out}', '--max_iters=2', '--eval_interval=2',
        *TINY)
    monkeypatch.setenv('TIKTOKEN_CACHE_DIR', str(empty_cache))
    for proxy in ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy'):  # a download is refused, even online
        monkeypatch.setenv(proxy, 'http://127.0.0.1:9')
    for no_proxy in ('NO_PROXY', 'no_proxy'):
        monkeypatch.delenv(no_proxy, raising=False)
    for script, args in (('sample.py', [f'--out_dir={out}', '--start=Hello']), ('eval.py', [f'--out_dirs={out}'])):
        result = run(script, *args, check=False)
        assert result.returncode != 0, script
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and 'TIKTOKEN_CACHE_DIR' in lines[0], (script, result.stderr)
        assert "tiktoken could not download GPT-2's BPE files (" in lines[0], (script, lines[0])
