"""The core of the method: masking, noise, rollouts, soft values and the loss.

Every test is named after the function it grades (apply_backspaces, stacks_push = Stacks.push, masking =
backspace_inputs, add_noise, rollout = generate, soft_values, chunked_soft_values = SoftValues, seqmatch_loss,
bc_loss), so `pytest -k NAME` grades one function (see exercise.py). The tests grade by definition: a masked
forward against the forward on each materialised state, values against their formula written as float64 sums
over explicit terms, the loss against cases worked by hand, its closed forms and its gradient. A test never uses
the function it grades as its own reference, never holds a copy of it (a student copy of the repository has this
file), and never calls another function of seqmatch.py: where it needs the text a row ends in, it uses
final_text of conftest.py."""
import math
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from conftest import assert_rows_are_the_policy_at_each_state, final_text, random_trajectories
from model import GPT, KVCache
from seqmatch import (Stacks, add_noise, apply_backspaces, attention_mask, backspace_inputs, bc_loss, chunked_soft_values,
                      generate, seqmatch_loss, soft_values)

BK = 19  # <bkspc> in a vocabulary of 20: base tokens 0..18


def first_difference(got, want):
    """The first index where two lists differ (or where the shorter one ends), None if equal."""
    return next((i for i, (x, y) in enumerate(zip(got, want)) if x != y),
                None if len(got) == len(want) else min(len(got), len(want)))


# ----------------------------------------------------------------------------- apply_backspaces


def test_apply_backspaces():
    got = apply_backspaces([5, 6, 7, BK, BK, 8], BK)
    assert got == ([5, 8], [2, 1]), (f"[5, 6, 7, <bkspc>, <bkspc>, 8] ends in [5, 8], the <bkspc>s deleting the "
                                     f"tokens at positions 2 then 1: expected ([5, 8], [2, 1]), got {got}")
    got = apply_backspaces(torch.tensor([1, 2, BK, 3, BK, BK]), BK, n_prompt=0)
    assert got == ([], [1, 3, 0]), f"a tensor row [1, 2, <bkspc>, 3, <bkspc>, <bkspc>] ends empty, got {got}"
    with pytest.raises(ValueError, match=r'position 3\b.*prompt.*\b1 tokens'):  # where, and the prompt's length
        apply_backspaces([1, 2, BK, BK], BK, n_prompt=1)

# ----------------------------------------------------------------------------- the stack rule (Stacks.push)


def push_every_action(tokens, n_prompt, bkspc_id):
    """A Stacks started from the first n_prompt tokens of the rows, pushed each later action in turn, one call per
    position. Checks after each push that the stack depth is the length of each row's state, and that the keys
    stacks.attends(j) gives the new position (what a rollout step reads) are those of the finished rows' mask."""
    n = tokens.size(1)
    stacks, attended = Stacks(tokens[:, :n_prompt], n), []
    for j in range(n_prompt, n):
        stacks.push(j, tokens[:, j], bkspc_id)
        want = torch.tensor([len(final_text(row[:j + 1], bkspc_id)) for row in tokens])
        assert torch.equal(stacks.depth, want), (
            f"after the action at position {j} the stack depths are {stacks.depth.tolist()}, expected {want.tolist()}: "
            f"the length of each row's state (a token pushes an entry, a <bkspc> pops one)")
        attended.append((j, stacks.attends(j)))
    final = attention_mask(stacks.removed_at)  # (B, n, n)
    for j, keys in attended:
        wrong = (keys != final[:, j]).any(dim=1).nonzero()[:, 0].tolist()
        assert not wrong, (f"rows {wrong}: right after the action at position {j} it attends to {keys[wrong[0]].nonzero()[:, 0].tolist()}, "
                           f"but once the row is finished to {final[wrong[0], j].nonzero()[:, 0].tolist()}: removed_at[i] "
                           f"is written once, by the <bkspc> that takes position i off the stack")
    return stacks


@pytest.mark.parametrize('n_prompt', [1, 3])
def test_stacks_push_gives_the_policy_at_each_state(tiny_model, n_prompt):
    model = tiny_model()
    tokens = torch.cat([random_trajectories(1, 40, n_prompt, BK, p_bkspc=0.45, seed=k) for k in range(5)])
    inserted = torch.tensor([7, BK, 8, BK, 9, 10, BK, BK, 3, 4, 5, BK, BK, BK])  # copies of copies, runs of <bkspc>
    tokens[0] = torch.cat([tokens[0, :n_prompt], inserted, tokens[0, n_prompt:]])[:40]  # (the stack is as it was)
    stacks = push_every_action(tokens, n_prompt, BK)
    assert_rows_are_the_policy_at_each_state(model, tokens, (stacks.input_ids, stacks.position_ids, stacks.removed_at), BK)

# ----------------------------------------------------------------------------- masking (backspace_inputs)


@pytest.mark.parametrize('n_prompt', [1, 4, [1, 5, 2, 4, 1, 3]])
def test_masking_is_exact(tiny_model, n_prompt):
    """With an int and a per-row prompt, copies of copies, and runs of deletions."""
    model = tiny_model()
    prompts = n_prompt if isinstance(n_prompt, list) else [n_prompt] * 6
    tokens = torch.cat([random_trajectories(1, 40, p, BK, p_bkspc=0.45, seed=10 * k + len(prompts))
                        for k, p in enumerate(prompts)])
    # inserted by hand right after the prompt (each leaves the stack as it was): a run of backspaces, and
    # copies of copies that undo everything
    for b, inserted in ((0, [3, 4, 5, BK, BK, BK]), (1, [7, BK, 8, BK, 9, 10, BK, BK])):
        p = prompts[b]
        tokens[b] = torch.cat([tokens[b, :p], torch.tensor(inserted), tokens[b, p:]])[:40]
    assert (tokens == BK).sum() > 60
    assert_rows_are_the_policy_at_each_state(model, tokens, backspace_inputs(tokens, BK, n_prompt), BK)


def test_masking_is_exact_with_a_gpt2_sized_vocabulary(tiny_model):
    bk = 50257  # GPT-2's <bkspc>, inside the padded vocabulary of 50304
    model = tiny_model(vocab_size=50304, n_embd=16)
    tokens = random_trajectories(2, 24, 2, bk, p_bkspc=0.4, seed=7)
    assert_rows_are_the_policy_at_each_state(model, tokens, backspace_inputs(tokens, bk, 2), bk)


def test_masking_is_exact_at_gpt2_length(tiny_model):
    """n = 1024 (the GPT-2 block), with few and with many backspaces (hundreds of copies per row); every 7th
    position against a fresh forward (all 2,048 states would take seconds)."""
    model = tiny_model(block_size=1024, n_layer=1, n_embd=16)
    tokens = torch.cat([random_trajectories(1, 1024, 1, BK, p_bkspc=p, seed=7) for p in (0.02, 0.45)])
    assert_rows_are_the_policy_at_each_state(model, tokens, backspace_inputs(tokens, BK, 1), BK, every=7)


def test_masking_positions_and_mask_by_hand():
    # prompt [10, 11], then 12, <bkspc>, 13: the worked example of backspace_inputs' docstring
    tokens = [10, 11, 12, BK, 13]
    states = [final_text(torch.tensor(tokens[:j + 1]), BK) for j in range(5)]
    input_ids, position_ids, removed_at = backspace_inputs(torch.tensor([tokens]), BK, 2)
    attn_mask = attention_mask(removed_at)
    expected = {
        'input_ids': [10, 11, 12, 11, 13],  # the <bkspc> position is a copy of the token now on top, 11 ...
        'position_ids': [0, 1, 2, 1, 2],  # ... with its position id; a pushed token's position id is the stack depth
    }
    for name, got in (('input_ids', input_ids[0].tolist()), ('position_ids', position_ids[0].tolist())):
        j = first_difference(got, expected[name])
        assert j is None, (f"row 0, position {j} (token {tokens[j]}, state {states[j]}): {name} is {got}, "
                           f"expected {expected[name]}")
    expected_mask = [[1, 0, 0, 0, 0],
                     [1, 1, 0, 0, 0],
                     [1, 1, 1, 0, 0],
                     [1, 0, 0, 1, 0],  # 11 and 12 are replaced by the copy
                     [1, 0, 0, 1, 1]]
    for j, row in enumerate(attn_mask[0].int().tolist()):
        assert row == expected_mask[j], (f"row 0, position {j} (token {tokens[j]}, state {states[j]}): attends to "
                                         f"{row}, expected {expected_mask[j]} (exactly the positions of its state)")


def test_masking_returns_int64_tensors_on_the_tokens_device_also_for_zero_rows():
    tokens = torch.tensor([[1, 2, BK, 3]])
    for rows in (tokens, tokens[:0]):  # zero rows: data-only SequenceMatch draws no rollouts
        got = backspace_inputs(rows, BK, 1)
        for name, x in zip(('input_ids', 'position_ids', 'removed_at'), got):
            assert x.dtype == torch.int64 and x.shape == rows.shape and x.device == rows.device, (
                f"for {len(rows)} row(s) of 4 tokens, {name} should be an int64 tensor of shape {tuple(rows.shape)} "
                f"on {rows.device}, got a {x.dtype} tensor of shape {tuple(x.shape)} on {x.device}")


def test_masking_refuses_a_bkspc_into_the_prompt_or_an_empty_row():
    # the facts the message carries: the row, the position of the <bkspc>, and the prompt's length or the empty row
    with pytest.raises(ValueError, match=r'row 1\b.*position 3\b.*prompt.*\b3 tokens'):
        backspace_inputs(torch.tensor([[1, 2, 3, 4], [1, 2, 3, BK]]), BK, n_prompt=3)
    with pytest.raises(ValueError, match=r'row 0\b.*position 1\b.*empty'):
        backspace_inputs(torch.tensor([[1, BK]]), BK, n_prompt=0)
    with pytest.raises(ValueError, match=r'row 1\b.*position 2\b.*prompt.*\b2 tokens'):
        backspace_inputs(torch.tensor([[1, 2, 3], [1, 2, BK]]), BK, n_prompt=[1, 2])  # one n_prompt per row


# ----------------------------------------------------------------------------- rollouts (generate)


EOS = BK - 1  # the rollouts' eos_id: not 0, the id generate pads with when it is given none


class BiasedGPT(GPT):
    """A random GPT whose <bkspc> and eos logits are shifted, and which records what it is fed and computes."""
    def __init__(self, config, bkspc_bias, eos_bias=0.0, padding_bias=0.0):
        super().__init__(config)
        self.bias = torch.zeros(config.vocab_size)
        self.bias[BK], self.bias[EOS], self.bias[BK + 1:] = bkspc_bias, eos_bias, padding_bias
        self.seen = []  # a copy of the last logits of each call: the policy of each step
        self.returned = []  # (the logits each call returned, a copy of them): generate reads them, never writes them
        self.inputs = []  # a copy of (idx, position_ids, attn_mask) of each call
        self.fed = []  # (tokens fed, the cache column they are written at, or None without a cache) of each call

    def forward(self, idx, position_ids=None, attn_mask=None, kv_cache=None, cache_pos=0):
        self.fed.append((idx.size(1), cache_pos if kv_cache is not None else None))
        self.inputs.append(tuple(x if x is None else x.clone() for x in (idx, position_ids, attn_mask)))
        logits = super().forward(idx, position_ids, attn_mask, kv_cache, cache_pos)
        logits = logits + self.bias
        self.seen.append(logits[:, -1].clone())
        self.returned.append((logits, logits.clone()))
        return logits


def assert_each_step_reads_its_state(model, tokens, P):
    """What generate fed the model at each call after the prompt's: call t follows the action at position j = P+t-1,
    and feeds that one position through the KV cache, which holds the j positions before it. For each row, the
    state after tokens[:j+1] decides what it is: the state's last token (at a <bkspc>, a copy of the token left on
    top), at its position id (that token's index in the state's text), attending to the positions of the state:
    as many keys as the state has tokens, position j included, none after it. One sentence for each of the four."""
    for t in range(1, len(model.inputs)):
        j = P + t - 1
        idx, position_ids, attn_mask = model.inputs[t]
        n_fed, column = model.fed[t]
        assert (n_fed, column) == (1, j), (
            f"the call after the action at position {j} fed {n_fed} tokens at cache_pos {column}: it feeds position "
            f"{j} alone, written at column {j} of the KV cache, after the {j} columns it holds")
        for b, row in enumerate(tokens):
            state = final_text(row[:j + 1], BK)
            where = f"row {b}, the call after the action at position {j} (state {state})"
            assert idx[b, 0] == state[-1], (
                f"{where}: fed token {idx[b, 0].item()}, expected {state[-1]}: the newest position's token (at a "
                f"<bkspc>, a copy of the token left on top), whose keys and values the KV cache writes after the {j} "
                f"it holds")
            assert position_ids is not None and position_ids[b, 0] == len(state) - 1, (
                f"{where}: position id {None if position_ids is None else position_ids[b, 0].item()}, expected "
                f"{len(state) - 1}: the index of the state's last token in the state's text (the stack depth before "
                f"the push, not after it)")
            keys = [] if attn_mask is None else attn_mask[b].flatten().nonzero()[:, 0].tolist()
            assert j in keys and len(keys) == len(state) and max(keys) <= j, (
                f"{where}: the mask attends to positions {keys}: expected the {len(state)} positions of the state, "
                f"the newest one ({j}) included and none after it")


def test_rollouts_are_exact(tiny_model):
    model = BiasedGPT(tiny_model().config, bkspc_bias=2.5, eos_bias=-2.0).eval()
    torch.manual_seed(1)
    prompt = torch.randint(0, EOS, (8, 5))
    tokens, valid, _ = generate(model, prompt, 40, BK, temperature=1.5, eos_id=EOS)
    step_logits = model.seen[:]  # step_logits[t]: the logits that chose tokens[:, 5 + t]
    assert tokens.shape == valid.shape == (8, 45)
    assert (tokens[:, :5] == prompt).all() and not valid[:, :5].any()
    assert (tokens[valid] == BK).sum() > 30, "the rollouts should backspace"
    assert 0 < (~valid[:, 5:]).sum() < 8 * 40 // 2, "some rows, not most, should end with eos_id"
    padding = tokens[:, 5:][~valid[:, 5:]]
    assert (padding == EOS).all(), (f"a row that ended is padded with eos_id ({EOS}), got padding "
                                    f"{padding.unique().tolist()} (0 pads only a rollout without an eos_id)")
    for t, (logits, copy) in enumerate(model.returned):
        assert torch.equal(logits, copy), (
            f"generate changed the logits the model returned at call {t} (to {logits[logits != copy][:3].tolist()}): "
            f"it reads the model's output, never writes into it; mask <bkspc> on a copy (.clone())")
    assert_each_step_reads_its_state(model, tokens, 5)
    # every step's logits are the policy at that state, computed fresh. (With the masking tests this
    # also shows that backspace_inputs(tokens) reproduces them: rollouts come out in training format.)
    for b in range(8):
        for j in range(5, 45):
            if valid[b, j]:
                state = final_text(tokens[b, :j], BK)
                fresh = model(torch.tensor([state]))
                diff = (fresh[0, -1] - step_logits[j - 5][b]).abs().max().item()
                assert diff < 1e-5, (f"row {b}, position {j}: the logits that chose token {tokens[b, j].item()} differ "
                                     f"by {diff:.3g} from a fresh forward on its state {state} (the row so far: "
                                     f"{tokens[b, :j].tolist()}), though each step was fed the right token, position "
                                     f"id and keys: the KV cache does not hold the keys of the state's positions")


def test_rollouts_attending_over_the_whole_cache_as_on_a_gpu_are_the_same(tiny_model, monkeypatch):
    """On a GPU each step attends over the whole preallocated cache (KVCache.key_length): the same tokens."""
    model = BiasedGPT(tiny_model().config, bkspc_bias=2.5, eos_bias=-1.0).eval()
    prompt = torch.randint(0, EOS, (6, 4))
    torch.manual_seed(3)
    want = generate(model, prompt, 30, BK, eos_id=EOS)
    monkeypatch.setattr(KVCache, 'key_length', lambda self, n, device: self.shape[4])
    torch.manual_seed(3)
    got = generate(model, prompt, 30, BK, eos_id=EOS)
    for name, g, w in zip(('tokens', 'valid'), got[:2], want[:2]):
        assert torch.equal(g, w), f"{name} differ when each step attends over the whole cache: {g.tolist()} vs {w.tolist()}"


@pytest.mark.parametrize('eos_bias', [-2.0, 1.5], ids=['rows end late', 'every row ends early'])
def test_rollout_returns_the_masked_inputs_of_its_rows(tiny_model, eos_bias):
    """The Stacks that generate returns hold the rows' masked inputs (training reads them as they are), also for
    the padding after the last row ended, which the loop never samples."""
    model = BiasedGPT(tiny_model().config, bkspc_bias=2.5, eos_bias=eos_bias).eval()
    torch.manual_seed(4)
    tokens, valid, stacks = generate(model, torch.randint(0, EOS, (6, 3)), 60, BK, eos_id=EOS)
    assert (tokens == BK).sum() > 3
    if eos_bias > 0:
        assert not valid[:, -10:].any(), "the test needs every row to end well before the last step"
    assert_rows_are_the_policy_at_each_state(model, tokens, (stacks.input_ids, stacks.position_ids, stacks.removed_at),
                                             BK)


def test_rollout_feeds_one_token_per_step_through_the_cache(tiny_model):
    model = BiasedGPT(tiny_model().config, bkspc_bias=2.5).eval()
    prompt = torch.randint(0, BK, (3, 4))
    generate(model, prompt, 12, BK)
    assert model.fed[0] == (4, 0), (f"the first call should write the prompt (4 tokens) at column 0 of the KV cache, "
                                    f"got (tokens, cache_pos) = {model.fed[0]}")
    for t, (n_fed, column) in enumerate(model.fed[1:], start=1):
        assert (n_fed, column) == (1, 4 + t - 1), (
            f"call {t} fed {n_fed} tokens at cache_pos {column}: each step after the prompt feeds only the newest "
            f"token (1), written at its own column ({4 + t - 1}), and reuses the cache of the columns before it")
    assert len(model.fed) >= 12, f"{len(model.fed)} forward calls for 12 new tokens"


def test_rollout_never_deletes_the_prompt(tiny_model):
    """With <bkspc> far likelier than any token: without top_k, then with it (which must keep the masked <bkspc> out)."""
    model = BiasedGPT(tiny_model().config, bkspc_bias=1e4).eval()
    prompt = torch.randint(0, BK, (4, 6))
    for top_k in (None, 5):
        # (a dozen new tokens: a rollout that deletes into the prompt anyway stops before it deletes every token)
        tokens, valid, _ = generate(model, prompt, 12, BK, top_k=top_k)
        for b, row in enumerate(tokens):
            depth = 0
            for j, tok in enumerate(row.tolist()):
                depth += -1 if tok == BK else 1
                assert j < 6 or depth >= 6, (
                    f"row {b}, position {j}: this <bkspc> deletes into the prompt (the first 6 tokens), " + (
                        "mask <bkspc> out (-inf) wherever only the prompt is left" if top_k is None else
                        f"with top_k={top_k} (not without it): top_k keeps the masked <bkspc> out only if it sets the "
                        f"logits outside the top k to -inf, not to 0 (exp(0) = 1)") + f". The row: {row.tolist()}")
        assert (tokens[:, 7::2] == BK).all(), f"it should delete whenever it may: {tokens.tolist()}"
    tokens, _, _ = generate(model, prompt, 30, BK, top_k=5, allow_bkspc=False)
    assert not (tokens == BK).any(), f"allow_bkspc=False still deleted: {tokens.tolist()}"


def test_greedy_rollout_takes_the_argmax_of_the_policy(tiny_model):
    model = tiny_model()
    prompt = torch.randint(0, BK, (3, 4))
    tokens, _, _ = generate(model, prompt, 10, BK, temperature=0, allow_bkspc=False)
    for b, row in enumerate(tokens):
        for j in range(4, 14):
            fresh = model(row[None, :j])[0, -1, :BK]  # the policy at the state before position j, <bkspc> not allowed
            assert row[j] == fresh.argmax(), (f"row {b}, position {j}: temperature=0 took {row[j].item()}, but the "
                                               f"policy's most likely action there is {fresh.argmax().item()}")


@pytest.mark.parametrize('temperature, top_k', [(1.0, None), (0.5, None), (2.0, 4), (1.0, 50)])
def test_rollout_samples_softmax_of_the_logits_over_temperature_within_the_top_k(tiny_model, temperature, top_k):
    """The first action of 6,000 rows sharing one prompt: its counts against softmax(logits / temperature) over
    the top_k actions (zero probability outside them; top_k=50, more than the 19 actions, keeps them all), by a
    chi-square statistic."""
    model = BiasedGPT(tiny_model().config, bkspc_bias=1.0).eval()
    prompt = torch.randint(0, BK, (1, 5)).expand(6000, 5)
    torch.manual_seed(5)
    try:
        tokens, _, _ = generate(model, prompt, 1, BK, temperature=temperature, top_k=top_k)
    except RuntimeError as e:
        raise AssertionError(f"generate(top_k={top_k}) with {BK} actions to sample from (only the prompt is left: no "
                             f"<bkspc>) raised {e!r}: a top_k above the number of actions keeps them all") from e
    # the probabilities term by term: no <bkspc> (only the prompt is left), the top_k largest logits kept
    scaled = [x / temperature for x in model(prompt[:1])[0, -1, :BK].tolist()]
    kept = sorted(scaled, reverse=True)[:top_k]
    total = math.fsum(math.exp(x) for x in kept)
    p = torch.tensor([math.exp(x) / total if x >= kept[-1] else 0.0 for x in scaled], dtype=torch.float64)
    counts = torch.bincount(tokens[:, 5], minlength=BK + 1).double()
    assert counts[BK] == 0, (f"{counts[BK].item():.0f} draws were <bkspc>, masked out (-inf) while only the prompt is "
                             f"left: outside the top k too a logit is -inf, not 0 (whose exp is 1)")
    counts = counts[:BK]
    outside = counts[p == 0].sum().item()
    assert outside == 0, (f"{outside:.0f} draws fell outside the top {top_k} actions, which have probability 0 (their "
                          f"logits are -inf: not 0, whose exp is 1)")
    expected = 6000 * p
    chi2 = ((counts - expected) ** 2 / expected)[p > 0].sum().item()
    dof = int((p > 0).sum()) - 1
    assert chi2 < dof + 6 * math.sqrt(2 * dof), (
        f"the counts of the first action {counts.long().tolist()} are far from 6000 * softmax(logits / {temperature}) "
        f"over the top {top_k or 'all'} actions {expected.round().long().tolist()} (chi-square {chi2:.0f} with {dof} "
        f"degrees of freedom): divide the logits by temperature, and keep only the top_k before the softmax")


def test_rollout_eos_is_a_valid_action_and_the_row_is_padded_after_it(tiny_model):
    model = BiasedGPT(tiny_model().config, bkspc_bias=1.0, eos_bias=1.5).eval()
    torch.manual_seed(2)
    prompt = torch.randint(0, EOS, (8, 3))
    tokens, valid, _ = generate(model, prompt, 30, BK, eos_id=EOS)
    ended = 0
    for b in range(8):
        eos_at = [j for j in range(3, 33) if tokens[b, j] == EOS]  # the first is the eos action, any later ones padding
        if not eos_at:
            continue
        ended += 1
        j = eos_at[0]
        assert valid[b, j], (f"row {b} took eos at position {j}, and valid[{b}, {j}] is False: the eos action itself is "
                             f"an action of the policy, so valid is True there (train.py trains on that transition "
                             f"and marks it done; without it no episode ever ends)")
        assert valid[b, 3:j].all(), f"row {b}: every action before eos is the policy's: valid {valid[b, 3:j].tolist()}"
        assert not valid[b, j + 1:].any() and (tokens[b, j + 1:] == EOS).all(), (
            f"row {b} ended with eos at position {j}: after it every token is padding (eos_id {EOS}, not 0), with "
            f"valid False; "
            f"got tokens {tokens[b, j + 1:].tolist()}, valid {valid[b, j + 1:].tolist()}")
    assert ended >= 4, f"only {ended} of 8 rows ended: the test needs rows that take eos"


def test_rollout_samples_only_the_base_vocabulary_and_bkspc(tiny_model):
    """ids above <bkspc> pad the embedding table (GPT-2: 50258 .. 50303); they are never actions."""
    model = BiasedGPT(tiny_model(vocab_size=24).config, bkspc_bias=0.0, padding_bias=50.0).eval()
    prompt = torch.randint(0, BK, (6, 4))
    for kwargs in (dict(temperature=1.0), dict(temperature=1.0, top_k=3), dict(temperature=0)):
        tokens, _, _ = generate(model, prompt, 20, BK, **kwargs)
        assert tokens.max() <= BK, (f"generate({kwargs}) sampled the padding id {tokens.max().item()}: sample from "
                                    f"logits[..., :bkspc_id + 1] only (the base vocabulary and <bkspc>)")
# ----------------------------------------------------------------------------- add_noise


def test_add_noise():
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, BK, (20000,), generator=g)
    noisy, actions = add_noise(data, p_noise=0.1, bkspc_id=BK, n_prompt=1, generator=g)
    text = final_text(noisy, BK)
    j = first_difference(text, data.tolist())
    assert j is None, f"the noisy row should end in the data; they differ first at data position {j}"
    n_inserted = (noisy == BK).sum().item()
    assert len(noisy) == len(data) + 2 * n_inserted, "each insertion is two tokens: the noise and its <bkspc>"
    rate = n_inserted / (len(data) - 1)
    assert abs(rate - 0.1) < 0.01, f"the rate of insertions after the prompt is p_noise 0.1 (sd 0.002), got {rate}"
    bkspc_at = (noisy == BK).nonzero()[:, 0]
    noise_at = bkspc_at - 1
    assert noisy[0] == data[0], "no noise inside the prompt"
    same = (noisy[noise_at] == noisy[bkspc_at + 1]).nonzero()[:, 0]
    assert len(same) == 0, f"position {noise_at[same[:1]].tolist()}: a mistake must not be the true token"
    # the action at a noise token is the data token the expert meant (the one after the <bkspc>) ...
    wrong = (actions[noise_at] != noisy[bkspc_at + 1]).nonzero()[:, 0]
    assert len(wrong) == 0, (f"position {noise_at[wrong[:1]].tolist()}: the action of a noise token is the data "
                             f"token after its <bkspc>")
    # ... and everywhere else the row's own token, <bkspc> included
    elsewhere = torch.ones(len(noisy), dtype=torch.bool)
    elsewhere[noise_at] = False
    wrong = (elsewhere & (actions != noisy)).nonzero()[:, 0]
    assert len(wrong) == 0, f"position {wrong[:1].tolist()}: away from a noise token the action is the row's token"


def test_add_noise_uses_task_noise_only_where_allowed():
    data = torch.arange(10)
    allowed = torch.tensor([-1] * 5 + [15] * 5)  # noise 15, and only before positions 5..9
    noisy, actions = add_noise(data, 1.0, BK, n_prompt=1, noise_fn=lambda row: allowed)
    assert noisy.tolist() == [0, 1, 2, 3, 4, 15, BK, 5, 15, BK, 6, 15, BK, 7, 15, BK, 8, 15, BK, 9], noisy.tolist()
    assert actions.tolist() == [0, 1, 2, 3, 4, 5, BK, 5, 6, BK, 6, 7, BK, 7, 8, BK, 8, 9, BK, 9], actions.tolist()
    noisy, _ = add_noise(torch.zeros(5000, dtype=torch.long) + 1, 0.5, 3, n_prompt=1, eos_id=0)
    assert set(noisy.tolist()) == {1, 2, 3}, "neither the true token 1 nor eos 0 is ever noise"

# ----------------------------------------------------------------------------- soft_values (and SoftValues)


def logsumexp_by_definition(row):
    """log sum_a exp(row[a]) of a list of floats, a float64 sum over its terms, the largest m taken out first so that
    no term overflows: m + log sum_a exp(row[a] - m)."""
    m = max(row)
    return m + math.log(math.fsum(math.exp(x - m) for x in row))


def definition_V_Q_gradient(logits, actions, dV, dQ):
    """V, Q and the gradient of sum(V * dV + Q * dQ) with respect to the logits, term by term in float64:
        V[b, j] = log sum_a exp(logits[b, j, a])
        Q[b, j] = logits[b, j-1, actions[b, j]]                          (Q[b, 0] = 0)
        grad[b, j, a] = exp(logits[b, j, a] - V[b, j]) * dV[b, j]  +  dQ[b, j+1] if a == actions[b, j+1]
    Also returns the size of the terms of each gradient entry, |first| + |second|, the scale of its rounding."""
    x, act, dV, dQ = logits.double().tolist(), actions.tolist(), dV.double().tolist(), dQ.double().tolist()
    B, n, A = logits.shape
    V = [[logsumexp_by_definition(x[b][j]) for j in range(n)] for b in range(B)]
    Q = [[0.0] + [x[b][j - 1][act[b][j]] for j in range(1, n)] for b in range(B)]
    softmax_term = [[[math.exp(x[b][j][a] - V[b][j]) * dV[b][j] for a in range(A)] for j in range(n)] for b in range(B)]
    action_term = [[[dQ[b][j + 1] if j + 1 < n and act[b][j + 1] == a else 0.0 for a in range(A)] for j in range(n)]
                   for b in range(B)]
    as_tensor = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    s, q = as_tensor(softmax_term), as_tensor(action_term)
    return as_tensor(V), as_tensor(Q), s + q, s.abs() + q.abs()


def assert_soft_values_are_the_definition(fn, dtype, offset=0.0):
    """fn(logits, actions) -> (V, Q) against their float64 definition, values and gradient, on logits around offset
    that are a slice of wider ones (as the model's padded vocabulary). V and Q are exact but for float32's rounding
    of their own value (the logits are what they are, bf16 ones included); the gradient has the logits' dtype, so
    it may be off by one rounding of its terms in that dtype."""
    g = torch.Generator().manual_seed(0)
    B, n, A, padding = 3, 7, 11, 5
    wide = (offset + 4 * torch.randn(B, n, A + padding, generator=g)).to(dtype).requires_grad_()
    actions = torch.randint(0, A, (B, n), generator=g)
    dV, dQ = torch.randn(B, n, generator=g), torch.randn(B, n, generator=g)
    V, Q = fn(wide[..., :A], actions)
    for name, x in (('V', V), ('Q', Q)):
        assert x.dtype == torch.float32 and x.shape == (B, n), (
            f"{name} should be a float32 tensor of shape {(B, n)} (the losses add up many of them), got a "
            f"{x.dtype} tensor of shape {tuple(x.shape)}")
    V_ref, Q_ref, grad_ref, grad_scale = definition_V_Q_gradient(wide.detach()[..., :A], actions, dV, dQ)
    where = f"for {str(dtype)[6:]} logits around {offset:g}"
    infinite = (~torch.isfinite(V)).nonzero()
    assert len(infinite) == 0, (
        f"{where}, V{infinite[0].tolist()} is {V[tuple(infinite[0])].item()}, the definition gives "
        f"{V_ref[tuple(infinite[0])].item():.6g}: "
        f"exp overflows float32 above 88 (and underflows below -103), so exp().sum().log() fails; take each row's "
        f"largest logit m out first, V = m + log sum_a exp(l_a - m) (torch.logsumexp does)")
    err = (V.double() - V_ref).abs() / V_ref.abs().clamp(min=1)  # (B, n)
    b, j = divmod(int(err.argmax()), n)
    assert err.max().item() < 1e-5, (
        f"{where}, V[{b}, {j}] is {V[b, j].item():.7g}, the definition log sum_a exp(logits[{b}, {j}, a]) gives "
        f"{V_ref[b, j].item():.7g}" + (": compute V in float32 (cast the logits, then take the logsumexp; V computed "
                                       "in bf16 and cast after keeps bf16's 3 significant digits)"
                                       if dtype == torch.bfloat16 else ""))
    wrong = (Q.double() != Q_ref).nonzero()
    assert len(wrong) == 0, (
        f"Q{wrong[0].tolist()} is {Q[tuple(wrong[0])].item():.6g}, expected {Q_ref[tuple(wrong[0])].item():.6g}: "
        f"Q[:, j] = logits[:, j-1, actions[:, j]], the logit of the action into position j in the state before it "
        f"(Q[:, 0] = 0)")
    assert V.requires_grad and Q.requires_grad, "V and Q should be differentiable with respect to the logits"
    (V * dV + Q * dQ).sum().backward()
    assert wide.grad.dtype == dtype, f"the gradient should have the logits' dtype {dtype}, got {wide.grad.dtype}"
    assert (wide.grad[..., A:] == 0).all(), "the padding columns beyond the action space get no gradient"
    # the rounding allowed: one or two of the gradient's dtype (bf16: 8 bits), or float32's of V, which exp(l - V) carries
    rounding = 2 ** -7 if dtype == torch.bfloat16 else 1e-6 + 2.4e-7 * V_ref.abs().max().item()
    err = (wide.grad[..., :A].double() - grad_ref).abs() - rounding * grad_scale  # (B, n, A): > 0 where off
    b, j, a = (int(i) for i in torch.unravel_index(err.argmax(), err.shape))
    assert err.max().item() <= 0, (
        f"{where}, the gradient of the logits differs from its definition at [{b}, {j}, {a}]: "
        f"{wide.grad[b, j, a].item():.6g}, expected {grad_ref[b, j, a].item():.6g} = softmax(logits[{b}, {j}])[{a}] * "
        f"dV[{b}, {j}]" + (f" + dQ[{b}, {j + 1}] (the action into position {j + 1})"
                           if j + 1 < n and actions[b, j + 1] == a else "")
        + (": with bf16 logits compute the softmax in float32, from the float32 V, and round once into the bf16 "
           "gradient (bf16 arithmetic on the way is off by more than that rounding)" if dtype == torch.bfloat16 else ""))


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_soft_values_and_their_gradient_are_the_definition(dtype):
    assert_soft_values_are_the_definition(soft_values, dtype)


@pytest.mark.parametrize('offset', [1000.0, -1000.0])
def test_soft_values_of_logits_far_from_zero_are_the_definition(offset):
    assert_soft_values_are_the_definition(soft_values, torch.float32, offset)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_chunked_soft_values_and_their_gradient_are_the_definition(dtype):
    assert_soft_values_are_the_definition(lambda logits, actions: chunked_soft_values(logits, actions, 4), dtype)


@pytest.mark.parametrize('offset', [1000.0, -1000.0])
def test_chunked_soft_values_of_logits_far_from_zero_are_the_definition(offset):
    assert_soft_values_are_the_definition(lambda logits, actions: chunked_soft_values(logits, actions, 4),
                                          torch.float32, offset)


def test_chunked_soft_values_do_not_depend_on_the_chunk_size():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 9, 13, generator=g, requires_grad=True)
    actions = torch.randint(0, 13, (4, 9), generator=g)
    results = []
    for chunk_rows in (1, 5, 36, None):
        logits.grad = None
        V, Q = chunked_soft_values(logits, actions, chunk_rows)
        (V.square() + Q).sum().backward()
        results.append((chunk_rows, V.detach(), Q.detach(), logits.grad.clone()))
    for chunk_rows, *got in results[1:]:
        for name, x, y in zip(('V', 'Q', 'the gradient'), got, results[0][1:]):
            assert torch.equal(x, y), f"{name} with chunk_rows={chunk_rows} differs from chunk_rows=1"


class Allocations(TorchDispatchMode):
    """Every tensor that the ops run under it allocate, alive from the op that makes it until it is freed: `peak` is
    the most bytes alive at once, `alive` those alive now, `largest` the biggest allocations (bytes, op, shape,
    dtype). A view, or an op that writes in place or into out=, allocates nothing: its output shares the storage of
    an input. (What a kernel allocates inside itself and frees before it returns is not seen.)"""

    def __init__(self):
        super().__init__()
        self.peak, self.alive, self.largest = 0, 0, []
        self.tensors_of = {}  # storage -> [bytes, number of live tensors on it]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {x.untyped_storage().data_ptr() for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)}
        for x in tree_flatten(out)[0]:
            if not isinstance(x, torch.Tensor):
                continue
            storage = x.untyped_storage()
            key = storage.data_ptr()
            if key in self.tensors_of:
                self.tensors_of[key][1] += 1
            elif key in inputs or storage.nbytes() == 0:
                continue  # shares the storage of a tensor made outside
            else:
                self.tensors_of[key] = [storage.nbytes(), 1]
                self.alive += storage.nbytes()
                self.peak = max(self.peak, self.alive)
                self.largest = sorted(self.largest + [(storage.nbytes(), str(func), tuple(x.shape), x.dtype)])[-3:]
            weakref.finalize(x, self.release, key)
        return out

    def release(self, key):
        self.tensors_of[key][1] -= 1
        if self.tensors_of[key][1] == 0:
            self.alive -= self.tensors_of.pop(key)[0]


def test_chunked_soft_values_allocate_the_gradient_and_a_few_chunks_at_most():
    """At GPT-2 shapes the logits are the largest tensor of a step, and bf16 under autocast: forward and backward
    together may allocate the gradient they return (the logits' size and dtype) and a few chunks of float32 rows at
    once, never a float32 tensor as large as the logits."""
    B, n, A, chunk_rows = 4, 64, 1000, 8
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(B, n, A, generator=g).to(torch.bfloat16).requires_grad_()
    actions = torch.randint(0, A, (B, n), generator=g)
    dV, dQ = torch.randn(B, n, generator=g), torch.randn(B, n, generator=g)
    chunks = 4 * chunk_rows * A * 4  # bytes of 4 chunks of float32 rows
    small = 16 * B * n * 4  # V, Q and other (B, n) float32 tensors
    with Allocations() as forward:
        V, Q = chunked_soft_values(logits, actions, chunk_rows)
    assert forward.peak <= chunks + small, (
        f"chunked_soft_values' forward had {forward.peak:,} bytes alive at once, more than 4 chunks of float32 rows "
        f"({chunks:,}): a float32 copy of the whole logits? Take the logsumexp a chunk of rows at a time. The largest "
        f"allocations: {forward.largest[::-1]}")
    with Allocations() as backward:
        (V * dV + Q * dQ).sum().backward()
    gradient = logits.numel() * logits.element_size()
    assert forward.alive + backward.peak <= gradient + chunks + small, (
        f"chunked_soft_values' backward had {forward.alive + backward.peak:,} bytes alive at once (with what the "
        f"forward kept), more than the gradient it returns ({gradient:,} bytes, the logits' size and dtype) and 4 "
        f"chunks of float32 rows ({chunks:,}): a whole float32 softmax? Compute it a chunk of rows at a time, into the "
        f"gradient's rows. The largest allocations: {backward.largest[::-1]}")


# ----------------------------------------------------------------------------- seqmatch_loss

# what each term of seqmatch_loss is, named in a failure message when that term is off
TERMS = {
    'expert': "minus the mean reward over the data rows' expert transitions, pooled over all rows (not averaged "
              "per row); r_j = Q[:, j] - gamma * V_next[:, j], with V_next[:, j] = 0 where done[:, j], else V[:, j]",
    'value': "V[:, j-1] - gamma * V_next[:, j], averaged over the transitions of each group (data rows, model rows) "
             "pooled, then over the non-empty groups",
    'chi2': "reward^2, averaged like the value term, divided by 4 alpha",
    'reward_data': "the mean reward over the valid transitions of the data rows",
    'reward_model': "the mean reward over the valid transitions of the model rows (nan if there are none)",
}


def assert_loss_terms(loss, stats, expected, context=''):
    """Each stat equals the expected term (nan where expected), and the loss is their sum."""
    assert set(stats) == set(TERMS), f"stats keys are {sorted(stats)}, expected {sorted(TERMS)}"
    for term, want in expected.items():
        got = stats[term].item()
        ok = math.isnan(got) if math.isnan(want) else abs(got - want) < 1e-5
        assert ok, f"{context}stats['{term}'] is {got:.6g}, expected {want:.6g}: it should be {TERMS[term]}"
    want = expected['expert'] + expected['value'] + expected['chi2']
    assert abs(loss.item() - want) < 1e-5, f"{context}the loss {loss.item():.6g} != expert + value + chi2 = {want:.6g}"


def test_seqmatch_loss_by_hand():
    # vocabulary {0, 1, <bkspc>=2}, eos = 1. Prompt [0]; the expert meant eos, the environment wrote the
    # noise 0 instead; <bkspc>; eos. The worked example of seqmatch_loss's docstring, V and Q as numbers:
    V = [1.5, 2.25, 3.0, 10.0]  # the states [0], [0, noise], [0] again, [0, eos]
    Q = [0.0, 1.0, 2.0, 3.0]  # l(eos|[0]) (the intended action of the noise transition), l(<bkspc>|[0, noise]), l(eos|[0])
    valid = torch.tensor([[False, True, True, True]])
    done = torch.tensor([[False, False, False, True]])  # the noise did not end the episode; eos did
    gamma, alpha = 0.9, 0.5
    r = [Q[1] - gamma * V[1], Q[2] - gamma * V[2], Q[3] - gamma * 0.0]  # V after eos is 0; V[3] is unused
    values = [V[0] - gamma * V[1], V[1] - gamma * V[2], V[2] - gamma * 0.0]
    expected = {
        'expert': -sum(r) / 3,
        'value': sum(values) / 3,  # no model rows: one group
        'chi2': sum(x * x for x in r) / 3 / (4 * alpha),
        'reward_data': sum(r) / 3,
        'reward_model': math.nan,
    }
    loss, stats = seqmatch_loss(torch.tensor([V]), torch.tensor([Q]), valid, valid, torch.tensor([True]), done,
                                gamma, alpha)
    assert_loss_terms(loss, stats, expected)
    assert loss.dtype == torch.float32 and loss.dim() == 0, f"the loss should be a 0-dim float32 tensor, got {loss}"


def test_seqmatch_loss_with_model_rows_by_hand():
    """A data row and a model row: each group averaged on its own, the expert term on the data row's expert
    transitions only (one of its valid transitions is not marked expert here), the reward statistics per group."""
    V = [[1.0, 2.0, 0.5, 1.5],  # a data row: 3 valid transitions, the one into position 2 not marked expert
         [0.5, 1.0, 2.0, 3.0]]  # a model row: a prompt of 2, then 2 actions, the last one ending the episode
    Q = [[0.0, 1.0, 0.0, 2.0],
         [0.0, 0.0, 1.5, -1.0]]
    valid = torch.tensor([[False, True, True, True], [False, False, True, True]])
    expert = torch.tensor([[False, True, False, True], [False, False, False, False]])
    done = torch.tensor([[False, False, False, False], [False, False, False, True]])
    gamma, alpha = 0.5, 0.25  # 4 alpha = 1
    r_data = [Q[0][1] - gamma * V[0][1], Q[0][2] - gamma * V[0][2], Q[0][3] - gamma * V[0][3]]  # [0, -0.25, 1.25]
    r_model = [Q[1][2] - gamma * V[1][2], Q[1][3] - gamma * 0.0]  # [0.5, -1]: V after the episode ended is 0
    value_data = [V[0][0] - gamma * V[0][1], V[0][1] - gamma * V[0][2], V[0][2] - gamma * V[0][3]]
    value_model = [V[1][1] - gamma * V[1][2], V[1][2] - gamma * 0.0]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    expected = {
        'expert': -mean([r_data[0], r_data[2]]),  # the expert transitions into positions 1 and 3
        'value': (mean(value_data) + mean(value_model)) / 2,
        'chi2': (mean([r * r for r in r_data]) + mean([r * r for r in r_model])) / 2 / (4 * alpha),
        'reward_data': mean(r_data),
        'reward_model': mean(r_model),
    }
    loss, stats = seqmatch_loss(torch.tensor(V), torch.tensor(Q), valid, expert, torch.tensor([True, False]), done,
                                gamma, alpha)
    assert_loss_terms(loss, stats, expected, "a data row and a model row: ")


def random_batch(seed, is_data, n=9):
    """Random V, Q and masks for rows of different lengths, episodes that end mid-row, and a prompt of 2."""
    g = torch.Generator().manual_seed(seed)
    B = len(is_data)
    V, Q = 3 * torch.randn(B, n, generator=g), 3 * torch.randn(B, n, generator=g)
    valid = torch.ones(B, n, dtype=torch.bool)
    valid[:, :2] = False  # a prompt of 2
    valid[0, 5:] = False  # rows of different lengths
    valid[-1, 3:] = False
    done = torch.rand(B, n, generator=g) < 0.2  # episodes end, some mid-row
    return V, Q, valid, done


@pytest.mark.parametrize('is_data', [[True, True, True, False, False], [True, True], [False, False, False]],
                         ids=['data and model rows', 'data rows only', 'model rows only'])
def test_seqmatch_loss_gradient_is_the_closed_form(is_data):
    """dL/dQ_j and dL/dV_j written out: they fix the averaging of every term (pooled within a group, each
    non-empty group weighted equally, the expert term pooled over the data rows), which transitions count,
    the discount and 0 after the episode ends, and 1/(4 alpha)."""
    is_data = torch.tensor(is_data)
    V, Q, valid, done = random_batch(0, is_data)
    expert = valid & is_data[:, None]
    expert[0, 3] = False  # a data transition outside the expert term
    gamma, alpha = 0.9, 0.7
    V.requires_grad_()
    Q.requires_grad_()
    loss, _ = seqmatch_loss(V, Q, valid, expert, is_data, done, gamma, alpha)
    loss.backward()

    # the closed form, transition by transition (j >= 1): r_j = Q_j - gamma V_next_j
    t = valid.clone()
    t[:, 0] = False
    data, model = t & is_data[:, None], t & ~is_data[:, None]
    e = expert & data
    groups = [g for g in (data, model) if g.any()]
    n_of = torch.zeros(V.shape)  # the size of each transition's group
    for g in groups:
        n_of[g] = g.sum()
    V_next = torch.where(done, 0.0, V.detach())
    r = Q.detach() - gamma * V_next
    # dL/dr_j = -1/N_expert (expert transitions) + 2 r_j / (4 alpha) / (G N_group) (valid transitions)
    dr = -e.float() / max(e.sum(), 1) + torch.where(t, 2 * r / (4 * alpha) / (len(groups) * n_of.clamp(min=1)), 0.0)
    dvalue = torch.where(t, 1 / (len(groups) * n_of.clamp(min=1)), 0.0)  # dL/d value_j
    want_dQ = dr
    want_dV = torch.zeros_like(V)
    want_dV[:, :-1] += dvalue[:, 1:]  # value_j = V_{j-1} - gamma V_next_j
    want_dV -= torch.where(done, 0.0, gamma * (dvalue + dr))  # V_j enters r_j and value_j, unless done[:, j]
    for name, got, want in (('Q', Q.grad, want_dQ), ('V', V.grad, want_dV)):
        wrong = ((got - want).abs() > 1e-5).nonzero()
        assert len(wrong) == 0, (
            f"dL/d{name} at (row, position) {wrong[0].tolist()} is {got[tuple(wrong[0])].item():.6g}, expected "
            f"{want[tuple(wrong[0])].item():.6g}. The terms: expert = {TERMS['expert']}; value = {TERMS['value']}; "
            f"chi2 = {TERMS['chi2']}. Transitions into position 0, invalid ones, and the expert term on model rows "
            f"do not count.")


def cross_entropy_by_terms(V, Q, mask):
    """The mean of V[b, j-1] - Q[b, j] (-log pi of the action into position j) over the positions j >= 1 where
    mask[b, j], a float64 sum over the explicit terms."""
    terms = [V[b, j - 1].item() - Q[b, j].item() for b in range(V.size(0)) for j in range(1, V.size(1)) if mask[b, j]]
    return math.fsum(terms) / len(terms)


def test_seqmatch_loss_reduces_to_bc_with_data_only_and_alpha_to_infinity():
    """Every data transition is the expert's: expert and value terms cancel per transition to
    V(u) - l(a|u) = -log pi(a|u), the cross-entropy of BC."""
    is_data = torch.tensor([True, True, True])
    V, Q, valid, done = random_batch(3, is_data)
    loss, _ = seqmatch_loss(V, Q, valid, valid, is_data, done, gamma=0.998, alpha=1e12)
    ce = cross_entropy_by_terms(V, Q, valid)
    assert abs(loss.item() - ce) < 1e-4, (
        f"on data rows with alpha -> inf the loss is the cross-entropy {ce:.6g}, got {loss.item():.6g}")


def test_seqmatch_loss_ignores_expert_marks_on_model_rows_and_returns_detached_stats():
    is_data = torch.tensor([True, True, False, False])
    V, Q, valid, done = random_batch(4, is_data)
    marks_on_data = valid & is_data[:, None]
    V.requires_grad_()
    want, _ = seqmatch_loss(V, Q, valid, marks_on_data, is_data, done, 0.9, 0.5)
    got, stats = seqmatch_loss(V, Q, valid, valid, is_data, done, 0.9, 0.5)  # expert marks on every row
    assert abs(got.item() - want.item()) < 1e-6, (
        f"with expert marks on the model rows too the loss is {got.item():.6g}, expected {want.item():.6g}: the "
        f"expert term counts only the transitions marked expert & valid on DATA rows (is_data); a mark on a "
        f"model row is ignored")
    attached = [name for name, x in stats.items() if x.requires_grad]
    assert not attached, f"stats {attached} are attached to the graph: return them detached (they are only logged)"


def test_seqmatch_loss_mixture_weights_data_and_model_equally():
    is_data = torch.tensor([True, False])
    V, Q, valid, done = random_batch(5, is_data)
    one, stats = seqmatch_loss(V, Q, valid, valid & is_data[:, None], is_data, done, 0.998, 0.5)
    twice = [torch.cat([x, x[1:]]) for x in (V, Q, valid, done)]  # a second copy of the model row
    is_data2 = torch.tensor([True, False, False])
    two, _ = seqmatch_loss(*twice[:3], twice[2] & is_data2[:, None], is_data2, twice[3], 0.998, 0.5)
    assert abs(one.item() - two.item()) < 1e-5, "a second copy of the model row changes the loss: average within each group"
    assert not math.isnan(stats['reward_model'].item()), f"stats['reward_model'] is nan: it should be {TERMS['reward_model']}"


def bc_gradient_by_terms(mask, shape):
    """The gradient of the cross-entropy of the transitions into the positions j >= 1 where mask[b, j], with respect
    to V and Q, term by term: each of the N transitions adds 1/N to dV[b, j-1] and -1/N to dQ[b, j]."""
    dV, dQ = torch.zeros(shape), torch.zeros(shape)
    transitions = [(b, j) for b in range(shape[0]) for j in range(1, shape[1]) if mask[b, j]]
    for b, j in transitions:
        dV[b, j - 1] += 1 / len(transitions)
        dQ[b, j] -= 1 / len(transitions)
    return dV, dQ


@pytest.mark.parametrize('gamma', [0.998, 0.9])
def test_seqmatch_loss_gradient_on_noisy_data_equals_bc(gamma):
    """Noisy data rows as add_noise makes them (noise x~, <bkspc>, the data token a*), each ending its episode with
    eos, one of them mid-row and going on as a new one: with data only and alpha -> inf the gradient of L_SM with
    respect to V and Q is BC's, transition by transition (the loss reads the logits only through V and Q)."""
    eos = 0
    g = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(4):
        row = []
        for tok in torch.randint(1, BK, (24,), generator=g).tolist():
            if row and torch.rand(1, generator=g) < 0.3:
                row += [tok % (BK - 1) + 1, BK]  # a mistake: neither the data token nor eos
            row.append(tok)
        rows.append(row)
    n = min(len(row) for row in rows)
    tokens = torch.tensor([row[:n] for row in rows])
    tokens[:, n - 1] = eos  # each row ends its episode ...
    tokens[0, 10] = eos  # ... and one ends early, then goes on as a new one
    valid = torch.ones_like(tokens, dtype=torch.bool)
    valid[:, 0] = False
    done = valid & (tokens == eos)
    V, Q = (3 * torch.randn(tokens.shape, generator=g)).requires_grad_(), torch.randn(tokens.shape, generator=g)
    Q.requires_grad_()
    loss, _ = seqmatch_loss(V, Q, valid, valid, torch.ones(4, dtype=torch.bool), done, gamma, 1e12)
    loss.backward()
    want_dV, want_dQ = bc_gradient_by_terms(valid, tokens.shape)
    for name, got, want in (('V', V.grad, want_dV), ('Q', Q.grad, want_dQ)):
        diff = (got - want).abs().max().item()
        assert diff < 1e-6, (f"dL/d{name} differs from BC's by {diff:.3g}: {TERMS['expert']}; {TERMS['value']}")

# ----------------------------------------------------------------------------- bc_loss


def test_bc_loss_by_hand():
    # the row of test_seqmatch_loss_by_hand: the cross-entropy of the three intended actions, V(u) - l(a|u)
    V = torch.tensor([[1.5, 2.25, 3.0, 10.0]])
    Q = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    expert = torch.tensor([[False, True, True, True]])
    want = ((1.5 - 1.0) + (2.25 - 2.0) + (3.0 - 3.0)) / 3
    got = bc_loss(V, Q, expert)
    assert abs(got.item() - want) < 1e-6, (f"bc_loss is {got.item():.6g}, expected {want:.6g}: the mean of "
                                           f"V[:, j-1] - Q[:, j] (= -log pi of the action into position j)")


def test_bc_loss_counts_only_expert_transitions_pooled_over_rows():
    """Rows with 5, 1 and 2 expert transitions: each transition weighs the same, whichever row it is in."""
    g = torch.Generator().manual_seed(2)
    V, Q = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    expert = torch.tensor([[True, True, True, False, True, True, True],  # column 0 is ignored: no transition into it
                           [False, False, False, True, False, False, False],
                           [True, False, True, False, False, False, True]])
    want = cross_entropy_by_terms(V, Q, expert)
    every = cross_entropy_by_terms(V, Q, torch.ones_like(expert))
    per_row = sum(cross_entropy_by_terms(V[b:b + 1], Q[b:b + 1], expert[b:b + 1]) for b in range(3)) / 3
    got = bc_loss(V, Q, expert).item()
    hint = (": that is the mean over every transition, count only expert ones" if abs(got - every) < 1e-5 else
            ": that is the mean per row, then over rows; pool the expert transitions of all rows (a row with more "
            "of them counts more)" if abs(got - per_row) < 1e-5 else "")
    assert abs(got - want) < 1e-5, f"bc_loss is {got:.6g}, expected {want:.6g}{hint}"


def test_bc_loss_gradient_is_the_closed_form():
    """A loss to train on: differentiable in V and Q, 1/N on V[:, j-1] and -1/N on Q[:, j] for each of the N expert
    transitions j."""
    g = torch.Generator().manual_seed(3)
    V, Q = torch.randn(3, 6, generator=g).requires_grad_(), torch.randn(3, 6, generator=g).requires_grad_()
    expert = torch.rand(3, 6, generator=g) < 0.5
    loss = bc_loss(V, Q, expert)
    assert loss.requires_grad, ("bc_loss is detached from V and Q (.detach(), .item() or a new tensor): it is the loss "
                                "train.py differentiates, keep it on their graph")
    loss.backward()
    want_dV, want_dQ = bc_gradient_by_terms(expert, V.shape)
    for name, got, want in (('V', V.grad, want_dV), ('Q', Q.grad, want_dQ)):
        assert got is not None and (got - want).abs().max().item() < 1e-6, (
            f"dbc_loss/d{name} is {got.tolist() if got is not None else None}, expected {want.tolist()}: each of the "
            f"N expert transitions j >= 1 adds 1/N to dV[:, j-1] and -1/N to dQ[:, j]")
