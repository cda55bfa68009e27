"""
Ground-truth noise for the arithmetic task (train.py --noise=ground_truth): the mistakes a solver of this
task actually makes, a wrong digit of the problem's base inside the answer. A row may start in the
middle of a problem; its first answer, whose question is cut off, gets no noise.
"""
import re

import torch

PROBLEM = re.compile(r"In base (\d+), what is [^?\n]*\? (-?\d*\n?)")  # group 2: the answer and its newline


def wrong_digit_noise(meta, generator=None):
    """noise_fn(tokens (n,)) -> (n,) for seqmatch.add_noise: inside an answer, a digit of its base other
    than the true character; -1 (no noise) everywhere else. Draws from generator alone: train.py makes one
    noise_fn per micro-batch, with that batch's generator, so the noise too is a function of the batch's index."""
    stoi, itos = meta['stoi'], meta['itos']

    def noise_fn(tokens):
        text = ''.join(itos[t] for t in tokens.tolist())
        proposal = torch.full_like(tokens, -1)
        for match in PROBLEM.finditer(text):
            base = int(match.group(1))
            for j in range(match.start(2), match.end(2)):
                wrong = [d for d in range(base) if str(d) != text[j]]
                proposal[j] = stoi[str(wrong[torch.randint(len(wrong), (), generator=generator).item()])]
        return proposal
    return noise_fn
