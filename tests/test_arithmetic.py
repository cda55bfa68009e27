"""The arithmetic task: the generator, its ground-truth noise, and eval_arithmetic.py on a tiny checkpoint."""
import math
import pickle
import re

import numpy as np
import pytest
import torch

from conftest import TINY, checkpoint, run
from data.arithmetic.noise import wrong_digit_noise
from seqmatch import add_noise, apply_backspaces

QUESTION = re.compile(r"In base (\d+), what is (\d+) ([+-]) (\d+)\?")


def prepare(out_dir, *args):
    run('data/arithmetic/prepare.py', f'--out_dir={out_dir}', '--n_train=300', '--n_val=20', '--n_test=20', *args)
    with open(out_dir / 'meta.pkl', 'rb') as f:
        meta = pickle.load(f)
    return meta


@pytest.fixture(scope='module')
def arithmetic(tmp_path_factory):
    out = tmp_path_factory.mktemp('arithmetic')
    return out, prepare(out)


def test_generator_is_deterministic_per_seed(arithmetic, tmp_path):
    out, _ = arithmetic
    prepare(tmp_path / 'same')
    prepare(tmp_path / 'other', '--seed=1')
    for name in ('train.bin', 'val.bin', 'val.txt', 'test.txt', 'unseen.txt'):
        assert (tmp_path / 'same' / name).read_bytes() == (out / name).read_bytes()
    assert (tmp_path / 'other' / 'test.txt').read_bytes() != (out / 'test.txt').read_bytes()


def test_answers_are_right_and_splits_disjoint(arithmetic):
    out, meta = arithmetic
    train_text = ''.join(meta['itos'][t] for t in np.fromfile(out / 'train.bin', dtype=np.uint16).tolist())
    train_lines = train_text.splitlines()
    held_out = {split: [l.split('\t') for l in (out / f'{split}.txt').read_text().splitlines()]
                for split in ('val', 'test', 'unseen')}
    assert len(train_lines) == 300 and len(held_out['val']) == len(held_out['test']) == 20
    assert len(held_out['unseen']) == 9 * 20 * 20 * 2 - 340  # every other question: bases x operands x ops
    questions = {'train': {line.rsplit(' ', 1)[0] for line in train_lines}}
    questions.update({split: {q for q, _ in pairs} for split, pairs in held_out.items()})
    for a, b in [('train', 'val'), ('train', 'test'), ('val', 'test'), ('train', 'unseen'), ('val', 'unseen'),
                 ('test', 'unseen')]:
        assert not questions[a] & questions[b], (a, b)
    for question, answer in [l.rsplit(' ', 1) for l in train_lines] + held_out['test'] + held_out['unseen']:
        base, x, op, y = QUESTION.fullmatch(question).groups()
        base = int(base)
        expected = int(x, base) + int(y, base) if op == '+' else int(x, base) - int(y, base)
        assert int(answer, base) == expected, (question, answer)
        assert all(int(d) < base for d in answer.lstrip('-'))
    assert meta['eos_id'] == meta['stoi']['\n'] and meta['bkspc_id'] == len(meta['stoi'])


def test_ground_truth_noise_is_a_wrong_digit_of_the_base(arithmetic):
    out, meta = arithmetic
    data = torch.from_numpy(np.fromfile(out / 'train.bin', dtype=np.uint16).astype(np.int64))  # 300 problems
    bk, itos = meta['bkspc_id'], meta['itos']
    torch.manual_seed(0)  # ground-truth noise draws from the global generator
    noisy, _ = add_noise(data, 0.3, bk, noise_fn=wrong_digit_noise(meta))
    assert apply_backspaces(noisy, bk)[0] == data.tolist()
    text = ''.join('#' if t == bk else itos[t] for t in noisy.tolist())
    n_checked = 0
    for j in (noisy == bk).nonzero()[:, 0].tolist():
        noise, true = text[j - 1], text[j + 1]
        assert noise.isdigit() and noise != true
        base = int(re.findall(r"In base (\d+)", text[:j])[-1])  # the problem this answer belongs to
        assert int(noise) < base
        assert '?' in text[text.rfind('\n', 0, j) + 1:j]  # inside the answer, after the question
        n_checked += 1
    assert n_checked > 100


def test_pretrain_then_three_arms_then_eval(arithmetic, tmp_path):
    """The README's comparison on tiny settings: one pretrained model, each arm fine-tunes it, eval_arithmetic.py
    prints one row per arm."""
    out, _ = arithmetic
    tiny = [f'--dataset={out}', *TINY, '--block_size=80', '--eval_interval=4']
    pretrained = tmp_path / 'pretrain'
    run('train.py', 'config/arithmetic_pretrain.py', f'--out_dir={pretrained}', '--max_iters=4', *tiny)
    arms = {arm: tmp_path / arm for arm in ('mle', 'bc', 'seqmatch')}
    for arm, run_dir in arms.items():
        result = run('train.py', f'config/arithmetic_{arm}.py', f'--init_from={pretrained}/ckpt.pt',
                     f'--out_dir={run_dir}', '--max_iters=8', '--bc_warmup_iters=4', '--prompt_len=50', *tiny)
        assert f'fine-tuning the weights of {pretrained}/ckpt.pt' in result.stdout
    result = run('eval_arithmetic.py', f'--out_dirs={",".join(map(str, arms.values()))}', '--split=test')
    assert '| checkpoint | greedy | sampled (T=1.0) | right with a <bkspc> |' in result.stdout
    for arm, run_dir in arms.items():
        row = next(line for line in result.stdout.splitlines() if line.startswith(f'| {run_dir} ({arm}) | '))
        cells = [float(c.split()[0]) for c in row.strip('|').split('|')[1:]]
        assert len(cells) == 12, row
        assert all(0 <= c <= 1 for c in cells[:10]), row  # accuracies, rates and probabilities
        assert all(math.isfinite(c) for c in cells[10:]), row  # implicit rewards


def test_the_10m_overlay_applies_after_the_pretrain_and_an_arm(arithmetic, tmp_path):
    """config/arithmetic_10m.py, named after another config, wins over it: the pretrain gets the 10M model and
    every run the 10M batches."""
    out, _ = arithmetic
    short = [f'--dataset={out}', '--max_iters=1', '--eval_iters=1', '--block_size=80', '--device=cpu']
    run('train.py', 'config/arithmetic_pretrain.py', 'config/arithmetic_10m.py', f'--out_dir={tmp_path / "pre"}', *short)
    pretrained = checkpoint(tmp_path / 'pre')
    assert {k: pretrained['model_args'][k] for k in ('n_layer', 'n_head', 'n_embd')} == dict(n_layer=6, n_head=6, n_embd=384)
    run('train.py', 'config/arithmetic_bc.py', 'config/arithmetic_10m.py', f'--init_from={tmp_path / "pre" / "ckpt.pt"}',
        f'--out_dir={tmp_path / "bc"}', *short)
    config = checkpoint(tmp_path / 'bc')['config']
    assert (config['objective'], config['batch_size'], config['model_batch_size'], config['buffer_size']) == ('bc', 48, 48, 960)


def test_ground_truth_noise_is_a_function_of_the_batch_generator(arithmetic):
    """train.py makes the noise of each micro-batch with that batch's generator: the same generator state gives the
    same noise, and the global generator (rollouts, replay draws, dropout) is left alone."""
    out, meta = arithmetic
    data = torch.from_numpy(np.fromfile(out / 'train.bin', dtype=np.uint16).astype(np.int64))
    global_state = torch.get_rng_state()
    noise = [wrong_digit_noise(meta, torch.Generator().manual_seed(7))(data) for _ in range(2)]
    assert (noise[0] >= 0).sum() > 100 and torch.equal(noise[0], noise[1])
    assert not torch.equal(noise[0], wrong_digit_noise(meta, torch.Generator().manual_seed(8))(data))
    assert torch.equal(torch.get_rng_state(), global_state)
