import torch

from model import KVCache


def test_default_is_causal_and_equals_an_explicit_causal_mask(tiny_model):
    model = tiny_model()
    idx = torch.randint(0, 20, (3, 17))
    logits, _ = model(idx)
    assert logits.shape == (3, 17, 20)  # logits at every position
    causal = torch.ones(17, 17, dtype=torch.bool).tril().expand(3, 17, 17)
    masked, _ = model(idx, position_ids=torch.arange(17).expand(3, 17), attn_mask=causal)
    assert (logits - masked).abs().max() < 1e-5
    # causality: changing the last token changes no earlier logits
    idx2 = idx.clone()
    idx2[:, -1] = (idx[:, -1] + 1) % 20
    assert (model(idx2)[0][:, :-1] - logits[:, :-1]).abs().max() < 1e-5


def test_kv_cache_one_token_at_a_time_equals_full_forward(tiny_model):
    model = tiny_model()
    idx = torch.randint(0, 20, (2, 12))
    full, _ = model(idx)
    cache = KVCache(model.config, batch_size=2, max_len=12)
    first, _ = model(idx[:, :5], kv_cache=cache)  # a prompt, then one token per step
    steps = [model(idx[:, t:t + 1], kv_cache=cache)[0] for t in range(5, 12)]
    incremental = torch.cat([first] + steps, dim=1)
    assert cache.length == 12
    assert (incremental - full).abs().max() < 1e-5


def test_targets_give_cross_entropy_ignoring_minus_one(tiny_model):
    model = tiny_model()
    idx = torch.randint(0, 20, (2, 8))
    targets = torch.randint(0, 20, (2, 8))
    targets[0, :3] = -1
    logits, loss = model(idx, targets)
    keep = targets != -1
    expected = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    assert abs(loss.item() - expected.item()) < 1e-5


def test_position_beyond_block_size_is_refused(tiny_model):
    model = tiny_model(block_size=8)
    try:
        model(torch.zeros(1, 9, dtype=torch.long))
    except AssertionError as e:
        assert 'block_size' in str(e)
    else:
        raise AssertionError("a row longer than block_size must be refused")
