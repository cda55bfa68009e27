"""The GPT with position ids, an attention mask and a KV cache. Tests named kv_cache grade KVCache.update
(the rollout tests of test_seqmatch.py use the cache too, see exercise.py)."""
import pytest
import torch
import torch.nn.functional as F

from model import KVCache, reference_attention


def test_default_is_causal_and_equals_an_explicit_causal_mask(tiny_model):
    model = tiny_model()
    idx = torch.randint(0, 20, (3, 17))
    logits = model(idx)
    assert logits.shape == (3, 17, 20)  # logits at every position
    causal = torch.ones(17, 17, dtype=torch.bool).tril().expand(3, 17, 17)
    masked = model(idx, position_ids=torch.arange(17).expand(3, 17), attn_mask=causal)
    assert (logits - masked).abs().max() < 1e-5
    # causality: changing the last token changes no earlier logits
    idx2 = idx.clone()
    idx2[:, -1] = (idx[:, -1] + 1) % 20
    assert (model(idx2)[:, :-1] - logits[:, :-1]).abs().max() < 1e-5


def assert_same_logits(incremental, full, how):
    for b in range(full.size(0)):
        for t in range(full.size(1)):
            diff = (incremental[b, t] - full[b, t]).abs().max().item()
            assert diff < 1e-5, (f"{how}: row {b}, position {t}: the logits differ by {diff:.3g} from the full forward "
                                 f"(the cache must hold the keys and values of positions 0..{t} of each layer)")


def test_kv_cache_one_token_at_a_time_equals_full_forward(tiny_model):
    model = tiny_model()
    idx = torch.randint(0, 20, (2, 12))
    full = model(idx)
    cache = KVCache(model.config, batch_size=2, max_len=12)
    first = model(idx[:, :5], kv_cache=cache, cache_pos=0)  # a prompt, then one token per step
    steps = [model(idx[:, t:t + 1], kv_cache=cache, cache_pos=t) for t in range(5, 12)]
    assert_same_logits(torch.cat([first] + steps, dim=1), full, "one token per step after a prompt of 5")


def test_kv_cache_several_tokens_per_call_equals_full_forward(tiny_model):
    # after the first call, a chunk of 3 new tokens is causal among itself and sees every cached position
    model = tiny_model()
    idx = torch.randint(0, 20, (2, 12))
    full = model(idx)
    cache = KVCache(model.config, batch_size=2, max_len=12)
    chunks = [model(idx[:, t:t + 3], kv_cache=cache, cache_pos=t) for t in range(0, 12, 3)]
    assert_same_logits(torch.cat(chunks, dim=1), full, "3 tokens per call")


def test_kv_cache_rewriting_a_column_replaces_it(tiny_model):
    """A call writes exactly the columns it is given: writing column 5 again with another token gives the logits of
    the row with that token, as a fresh forward does (nothing is appended behind the caller's back)."""
    model = tiny_model()
    idx = torch.randint(0, 20, (2, 8))
    other = idx.clone()
    other[:, 5] = (idx[:, 5] + 1) % 20
    cache = KVCache(model.config, batch_size=2, max_len=8)
    model(idx[:, :6], kv_cache=cache, cache_pos=0)
    again = [model(other[:, t:t + 1], kv_cache=cache, cache_pos=t) for t in range(5, 8)]
    assert_same_logits(torch.cat(again, dim=1), model(other)[:, 5:], "column 5 written twice")


def test_position_beyond_block_size_is_refused(tiny_model):
    model = tiny_model(block_size=8)
    with pytest.raises(AssertionError, match=r'9 tokens.*block_size 8'):  # the row's length and the limit
        model(torch.zeros(1, 9, dtype=torch.long))


def test_kv_cache_attending_over_the_whole_cache_as_on_a_gpu_equals_full_forward(tiny_model):
    """On a GPU every step attends over the whole preallocated cache (KVCache.key_length: the same shapes each step);
    the mask keeps each query off the columns not written yet. Asked for here on the CPU."""
    model = tiny_model()
    idx = torch.randint(0, 20, (2, 12))
    full = model(idx)
    cache = KVCache(model.config, batch_size=2, max_len=12)
    assert cache.key_length(6, torch.device('cuda')) == 12 and cache.key_length(6, torch.device('cpu')) == 6
    first = model(idx[:, :5], kv_cache=cache, cache_pos=0)
    causal = torch.ones(12, 12, dtype=torch.bool).tril()  # (T, S): row t may attend to columns <= t
    steps = [model(idx[:, t:t + 1], attn_mask=causal[t].expand(2, 1, 12), kv_cache=cache, cache_pos=t)
             for t in range(5, 12)]
    assert_same_logits(torch.cat([first] + steps, dim=1), full, "one token per step, attending over the whole cache")


def test_reference_attention_is_what_sdpa_computes_with_a_boolean_mask():
    """The four lines a reader can check against the fused kernel the model calls, on a mask that drops keys
    from the middle of the causal triangle, as the backspace masking does."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 8, generator=g) for _ in range(3))  # (B, nh, T, hd)
    mask = torch.ones(6, 6, dtype=torch.bool).tril().repeat(2, 1, 1)  # (B, T, S)
    mask[0, 3:, 1:3] = False  # row 0: positions 1 and 2 deleted from position 3 on
    mask = mask[:, None]  # (B, 1, T, S)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = reference_attention(q, k, v, mask)
    assert (got - want).abs().max() < 1e-6
