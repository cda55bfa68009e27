"""
Ground-truth noise for the arithmetic task (train.py --noise=ground_truth): the mistakes a solver
of this task actually makes, a wrong digit of the problem's base inside the answer.
"""
import re

import torch

PROBLEM = re.compile(r"In base (\d+), what is [^?\n]*\? (-?\d*\n?)")  # group 2: the answer and its newline


def wrong_digit_noise(meta):
    """Returns noise_fn(tokens) for seqmatch.add_noise: for each position of a row, a digit of the
    base other than the true character if the position is inside an answer whose question is in the
    row (the row may start mid-problem), else -1."""
    stoi, itos = meta['stoi'], meta['itos']

    def noise_fn(tokens):
        text = ''.join(itos[t] for t in tokens.tolist())
        proposal = torch.full_like(tokens, -1)
        for match in PROBLEM.finditer(text):
            base = int(match.group(1))
            for j in range(match.start(2), match.end(2)):
                wrong = [d for d in range(base) if str(d) != text[j]]
                proposal[j] = stoi[str(wrong[torch.randint(len(wrong), ()).item()])]
        return proposal

    return noise_fn
