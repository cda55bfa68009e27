import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # tests import model.py and seqmatch.py from the repository root
# offline copies that CI and this workplace keep beside the repository (never used by the product code)
SHARED_DATA = os.path.join(ROOT, '..', 'shared', 'data')
if 'TIKTOKEN_CACHE_DIR' not in os.environ and os.path.isdir(os.path.join(SHARED_DATA, 'tiktoken_cache')):
    os.environ['TIKTOKEN_CACHE_DIR'] = os.path.abspath(os.path.join(SHARED_DATA, 'tiktoken_cache'))

from model import GPT, GPTConfig  # noqa: E402


@pytest.fixture
def tiny_model():
    """A small random GPT in eval mode (dropout off), fp32 on the CPU; <bkspc> is the last id."""
    def make(vocab_size=20, block_size=64, n_layer=2, n_head=2, n_embd=32, seed=0):
        torch.manual_seed(seed)
        config = GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer,
                           n_head=n_head, n_embd=n_embd, dropout=0.0, bias=True)
        return GPT(config).eval()
    return make
