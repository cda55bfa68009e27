"""data/shakespeare_char/prepare.py on a text file of one's own: the files it writes, then train.py and sample.py
on them; --help; a file it cannot prepare."""
import os
import pickle
import random
import subprocess
import sys

import numpy as np

from conftest import ROOT, TINY, run

PREPARE = 'data/shakespeare_char/prepare.py'
SHAKESPEARE_CHAR = os.path.join(ROOT, 'data', 'shakespeare_char')


def write_text(path):
    """A few KB of made-up lines (a non-ASCII character among them); returns the text."""
    rng = random.Random(0)
    words = 'the cat sat on a mat and saw its own well-made hat in the café'.split()
    text = ''.join(' '.join(rng.choice(words) for _ in range(rng.randint(3, 9))) + '\n' for _ in range(150))
    path.write_text(text, encoding='utf-8')
    return text


def files_and_times(folder):
    """What a script could have written in folder: {name: modification time}."""
    return {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder)}


def typed_to_final(shown):
    """The text that sample.py's --show_edits line comes to: each ⌫ deletes the character before it."""
    text = []
    for c in shown:
        if c == '⌫':
            text.pop()
        else:
            text.append(c)
    return ''.join(text)


def test_own_text_prepares_then_trains_and_samples(tmp_path):
    text_file, data, out = tmp_path / 'story.txt', tmp_path / 'story', tmp_path / 'out'
    text = write_text(text_file)
    before = files_and_times(SHAKESPEARE_CHAR)
    result = run(PREPARE, f'--input={text_file}', f'--out_dir={data}')
    chars, n_train = sorted(set(text)), int(len(text) * 0.9)
    assert result.stdout.splitlines() == [f"length of dataset in characters: {len(text):,}",
                                          f"vocab size: {len(chars)}, <bkspc> = id {len(chars)}, "
                                          f"model vocabulary {len(chars) + 1}",
                                          f"train has {n_train:,} tokens", f"val has {len(text) - n_train:,} tokens"]
    assert sorted(os.listdir(data)) == ['meta.pkl', 'train.bin', 'val.bin']  # no temporary file left behind
    assert files_and_times(SHAKESPEARE_CHAR) == before  # nothing written beside prepare.py
    with open(data / 'meta.pkl', 'rb') as f:
        meta = pickle.load(f)
    assert (meta['tokenizer'], meta['bkspc_id'], meta['eos_id'], meta['vocab_size']) == (
        'char', len(chars), None, len(chars) + 1)
    assert meta['stoi'] == {c: i for i, c in enumerate(chars)} and meta['itos'] == dict(enumerate(chars))
    for split, expected in (('train', text[:n_train]), ('val', text[n_train:])):
        ids = np.fromfile(data / f'{split}.bin', dtype=np.uint16)
        assert ''.join(meta['itos'][i] for i in ids) == expected, split

    result = run('train.py', f'--dataset={data}', '--objective=seqmatch', f'--out_dir={out}', '--max_iters=10',
                 '--eval_interval=10', '--bc_warmup_iters=5', *TINY)
    assert 'iter 5: SequenceMatch switches on' in result.stdout and 'step 10: train loss' in result.stdout
    sample = run('sample.py', f'--out_dir={out}', '--start=the cat', '--num_samples=2', '--max_new_tokens=40',
                 '--show_edits=True')
    samples = sample.stdout.split('Overriding: show_edits = True\n')[1].split('---------------\n')
    assert len(samples) == 3 and samples[-1] == ''
    for printed in samples[:-1]:
        final, edits = printed.split('\n--- with the ')
        typed = edits.split(' deletion(s) shown:\n')[1][:-1]
        assert final.startswith('the cat') and set(final) <= set(chars), final
        assert typed_to_final(typed) == final, (typed, final)


def test_a_text_too_short_for_a_block_stops_training_in_one_line(tmp_path):
    text_file, data = tmp_path / 'short.txt', tmp_path / 'short'
    text_file.write_text('the cat sat on the mat\n' * 10)  # 230 characters: val has 23, fewer than a block's 33
    run(PREPARE, f'--input={text_file}', f'--out_dir={data}')
    result = run('train.py', f'--dataset={data}', f'--out_dir={tmp_path / "out"}', *TINY, check=False)
    assert result.returncode != 0 and result.stderr.strip() == (
        f"val.bin in {data} has 23 tokens, too few for windows of 33: prepare a longer text, or use a smaller "
        f"block_size"), result.stderr


def test_help_prints_the_usage_and_prepares_nothing(tmp_path):
    before = files_and_times(SHAKESPEARE_CHAR)
    result = run(PREPARE, '--help', f'--out_dir={tmp_path / "never"}')
    assert result.stdout.startswith('usage: ') and '--input' in result.stdout and '--out_dir' in result.stdout
    assert result.stderr == ''
    assert files_and_times(SHAKESPEARE_CHAR) == before and not (tmp_path / 'never').exists()


def test_a_file_it_cannot_prepare_is_a_one_line_error(tmp_path):
    empty, binary, too_many = tmp_path / 'empty.txt', tmp_path / 'binary.txt', tmp_path / 'too_many.txt'
    empty.write_text('')
    binary.write_bytes(b'ok\xff\xfe')
    too_many.write_text(''.join(chr(c) for c in range(0x10000, 0x20000)), encoding='utf-8')  # 65,536 characters
    errors = {
        tmp_path / 'missing.txt': f"cannot read {tmp_path / 'missing.txt'}: No such file or directory",
        tmp_path: f"cannot read {tmp_path}: Is a directory",
        empty: f"{empty} is empty: there is no text to prepare",
        binary: f"cannot read {binary}: not UTF-8 text (invalid start byte at byte 2)",
        too_many: f"{too_many} has 65,536 distinct characters; the ids are uint16, so at most 65,535",
    }
    for path, message in errors.items():
        result = run(PREPARE, f'--input={path}', f'--out_dir={tmp_path / "never"}', check=False)
        assert result.returncode != 0 and result.stderr.strip() == message, result.stderr
        assert not (tmp_path / 'never').exists()


def test_prepare_help_needs_no_network(tmp_path):
    """--help answers before anything is downloaded or built (an empty tiktoken cache, every download refused)."""
    env = dict(os.environ, TIKTOKEN_CACHE_DIR=str(tmp_path), HTTPS_PROXY='http://127.0.0.1:9',
               https_proxy='http://127.0.0.1:9', NO_PROXY='', no_proxy='')
    for script in ('data/shakespeare/prepare.py', 'data/shakespeare_char/prepare.py', 'data/openwebtext/prepare.py'):
        result = subprocess.run([sys.executable, script, '--help'], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0 and 'usage:' in result.stdout, (script, result.stderr)
