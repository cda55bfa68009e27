"""The noise of BC and SequenceMatch training rows (seqmatch.py, section 3): random mistakes that always end, are
uniform over the wrong tokens, and rows cut so that no transition points past their end."""
import signal
from contextlib import contextmanager

import torch

from seqmatch import add_noise, noisy_rows, random_noise

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
