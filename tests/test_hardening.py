"""Issue 12: the vectorised backspace masking, and the defects a code review found in train.py and seqmatch.py."""
import os
import pickle
import signal
from contextlib import contextmanager

import numpy as np
import torch

from conftest import TINY, run
from seqmatch import add_noise, noisy_rows, random_noise

BK = 19  # <bkspc> in a vocabulary of 20: base tokens 0..18


@contextmanager
def deadline(seconds):
    """Fail instead of hanging: a SIGALRM interrupts the code under test after `seconds`."""
    def give_up(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_random_noise_ends_when_eos_is_the_only_other_token():
    # base vocabulary {0, 1}, <bkspc> = 2, eos = 0: a data token 1 has no mistake that is not eos
    tokens = torch.tensor([1, 1, 0, 1])
    with deadline(10):
        noise = random_noise(tokens, bkspc_id=2, eos_id=0)
        noisy, actions = add_noise(tokens, 1.0, bkspc_id=2, eos_id=0)
    assert noise.tolist() == [-1, -1, 1, -1]  # only the eos token itself has a wrong token that is not eos
    assert noisy.tolist() == [1, 1, 1, 2, 0, 1]  # so that is the only noise inserted (after the prompt)
    assert actions.tolist() == [1, 1, 0, 2, 0, 1]


def test_random_noise_is_uniform_over_the_other_tokens():
    g = torch.Generator().manual_seed(0)
    tokens = torch.tensor([3, 0, 4, 2] * 5000)  # base vocabulary 0..4, eos = 2
    noise = random_noise(tokens, bkspc_id=5, eos_id=2, generator=g)
    for true in (3, 0, 4, 2):
        drawn = noise[tokens == true]
        allowed = sorted({0, 1, 3, 4} - {true})
        counts = torch.bincount(drawn, minlength=5)
        assert sorted(drawn.unique().tolist()) == allowed
        assert (counts[allowed].float() / len(drawn) - 1 / len(allowed)).abs().max() < 0.03


def test_noisy_rows_cut_on_a_noise_token_drop_its_transition():
    every_time = lambda t: t * 0 + 9  # noise token 9 before every data token after the prompt; <bkspc> = 10
    rows = torch.tensor([[5, 6, 7, 8, 4]])  # noisy: 5 9 <bkspc> 6 9 <bkspc> 7 9 <bkspc> 8 9 <bkspc> 4
    tokens, actions, valid = noisy_rows(rows, 1.0, bkspc_id=10, noise_fn=every_time)  # cut to 5: ends on a 9
    assert tokens.tolist() == [[5, 9, 10, 6, 9]] and actions.tolist() == [[5, 6, 10, 6, 7]]
    assert valid.tolist() == [[False, True, True, True, False]]  # 7, the action into the last 9, is cut off
    tokens, actions, valid = noisy_rows(torch.tensor([[5, 6, 7, 8, 4, 3]]), 1.0, bkspc_id=10, noise_fn=every_time)
    assert tokens.tolist() == [[5, 9, 10, 6, 9, 10]]  # cut to 6: the 9's <bkspc> follows, its 7 does not
    assert valid.tolist() == [[False, True, True, True, False, True]]
    tokens, actions, valid = noisy_rows(torch.tensor([[5, 6, 7, 8]]), 1.0, bkspc_id=10, noise_fn=every_time)
    assert tokens.tolist() == [[5, 9, 10, 6]] and valid.tolist() == [[False, True, True, True]]  # cut on data


def test_resume_into_sequencematch_off_a_refresh_boundary(shakespeare_char, tmp_path):
    out = str(tmp_path)
    run('train.py', 'config/shakespeare_seqmatch.py', f'--out_dir={out}', '--max_iters=4', '--eval_interval=4',
        '--bc_warmup_iters=100', *TINY)  # stopped in the bc warm-up: the checkpoint's replay buffer is empty
    assert len(torch.load(os.path.join(out, 'ckpt.pt'), weights_only=False)['processes'][0]['replay']['tokens']) == 0
    # SequenceMatch from iteration 1 now, refreshing at 1, 6, 11, ...: iteration 4 is no refresh
    result = run('train.py', 'config/shakespeare_seqmatch.py', f'--out_dir={out}', '--max_iters=6', '--eval_interval=4',
                 '--init_from=resume', '--bc_warmup_iters=1', *TINY, '--sample_interval=5')
    assert 'iter 5:' in result.stdout and 'bkspc rate' in result.stdout


def test_ground_truth_noise_draws_from_the_batch_generator(tmp_path):
    """train.py's batch thread passes its own generator: the noise must leave the global one alone, which
    the main thread uses at the same time (replay draws, dropout, rollouts)."""
    from data.arithmetic.noise import wrong_digit_noise
    run('data/arithmetic/prepare.py', f'--out_dir={tmp_path}', '--n_train=50', '--n_val=5', '--n_test=5')
    meta = pickle.loads((tmp_path / 'meta.pkl').read_bytes())
    data = torch.from_numpy(np.fromfile(tmp_path / 'train.bin', dtype=np.uint16).astype(np.int64))
    global_state = torch.get_rng_state()
    noise = [wrong_digit_noise(meta, torch.Generator().manual_seed(7))(data) for _ in range(2)]
    assert (noise[0] >= 0).sum() > 20 and torch.equal(noise[0], noise[1])  # a function of the generator alone
    assert torch.equal(torch.get_rng_state(), global_state)
