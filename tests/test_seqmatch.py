"""The core of the method: masking, noise, rollouts and the loss.

Every test is named after the function it grades (apply_backspaces, masking = backspace_inputs, add_noise,
rollout = generate, seqmatch_loss, bc_loss), so `pytest -k NAME` grades one function (see exercise.py).
A test never uses the function it grades as its own reference, and never calls another function of
seqmatch.py: where it needs the text a row ends in, it uses final_text below."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import GPT
from seqmatch import add_noise, apply_backspaces, backspace_inputs, bc_loss, generate, seqmatch_loss

BK = 19  # <bkspc> in a vocabulary of 20: base tokens 0..18


def final_text(row, bkspc_id):
    """The tests' own reference for the text a row ends in: each <bkspc> drops the last token."""
    text = []
    for tok in row.tolist():
        text = text[:-1] if tok == bkspc_id else text + [tok]
    return text


def random_trajectories(B, n, n_prompt, bkspc_id, p_bkspc, seed):
    """Rows with many backspaces, never deleting into the prompt or emptying the row."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(B):
        row, depth = [], 0
        for j in range(n):
            if j >= n_prompt and depth > max(n_prompt, 1) and torch.rand(1, generator=g) < p_bkspc:
                row.append(bkspc_id)
                depth -= 1
            else:
                row.append(int(torch.randint(0, bkspc_id, (1,), generator=g)))
                depth += 1
        rows.append(row)
    return torch.tensor(rows)


def first_difference(got, want):
    """The first index where two lists differ (or where the shorter one ends), None if equal."""
    return next((i for i, (x, y) in enumerate(zip(got, want)) if x != y),
                None if len(got) == len(want) else min(len(got), len(want)))

# ----------------------------------------------------------------------------- apply_backspaces


def test_apply_backspaces():
    got = apply_backspaces([5, 6, 7, BK, BK, 8], BK)
    assert got == [5, 8], f"[5, 6, 7, <bkspc>, <bkspc>, 8] ends in [5, 8] (each <bkspc> deletes one token), got {got}"
    got = apply_backspaces(torch.tensor([1, 2, BK, 3, BK, BK]), BK, n_prompt=0)
    assert got == [], f"a tensor row [1, 2, <bkspc>, 3, <bkspc>, <bkspc>] ends empty, got {got}"
    with pytest.raises(ValueError, match=r'<bkspc> at position 3 would delete into the prompt \(the first 1 tokens\)'):
        apply_backspaces([1, 2, BK, BK], BK, n_prompt=1)

# ----------------------------------------------------------------------------- masking (backspace_inputs)


def assert_rows_are_the_policy_at_each_state(model, tokens, n_prompt, bkspc_id):
    """Row j of the masked forward equals a fresh forward on the state after tokens[:j+1]."""
    input_ids, position_ids, attn_mask = backspace_inputs(tokens, bkspc_id, n_prompt)
    assert input_ids.shape == position_ids.shape == tokens.shape and attn_mask.shape == tokens.shape + tokens.shape[1:]
    logits, _ = model(input_ids, position_ids=position_ids, attn_mask=attn_mask)
    for b in range(tokens.size(0)):
        for j in range(max(n_prompt, 1) - 1, tokens.size(1)):
            state = final_text(tokens[b, :j + 1], bkspc_id)
            fresh, _ = model(torch.tensor([state]))
            diff = (fresh[0, -1] - logits[b, j]).abs().max().item()
            assert diff < 1e-5, (
                f"row {b}, position {j} (token {tokens[b, j].item()}): logits differ by {diff:.3g} from a fresh "
                f"forward on its state {state}. Up to here: input_ids {input_ids[b, :j + 1].tolist()}, "
                f"position_ids {position_ids[b, :j + 1].tolist()}, position {j} attends to "
                f"{attn_mask[b, j].nonzero()[:, 0].tolist()}")


@pytest.mark.parametrize('n_prompt', [1, 4])
def test_masking_is_exact(tiny_model, n_prompt):
    model = tiny_model()
    tokens = random_trajectories(6, 40, n_prompt, BK, p_bkspc=0.45, seed=n_prompt)
    # hand-made rows: a run of backspaces right after the prompt, and one that undoes everything
    tokens[0, n_prompt:n_prompt + 6] = torch.tensor([3, 4, 5, BK, BK, BK])
    tokens[1, n_prompt:n_prompt + 8] = torch.tensor([7, BK, 8, BK, 9, 10, BK, BK])
    assert (tokens == BK).sum() > 60
    assert_rows_are_the_policy_at_each_state(model, tokens, n_prompt, BK)


def test_masking_is_exact_with_a_gpt2_sized_vocabulary(tiny_model):
    bk = 50257  # GPT-2's <bkspc>, inside the padded vocabulary of 50304
    model = tiny_model(vocab_size=50304, n_embd=16)
    tokens = random_trajectories(2, 24, 2, bk, p_bkspc=0.4, seed=7)
    assert_rows_are_the_policy_at_each_state(model, tokens, 2, bk)


def test_masking_positions_and_mask_by_hand():
    # prompt [10, 11], then 12, <bkspc>, 13: the worked example of backspace_inputs' docstring
    tokens = [10, 11, 12, BK, 13]
    states = [final_text(torch.tensor(tokens[:j + 1]), BK) for j in range(5)]
    input_ids, position_ids, attn_mask = backspace_inputs(torch.tensor([tokens]), BK, 2)
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


def test_masking_refuses_a_bkspc_into_the_prompt_or_an_empty_row():
    with pytest.raises(ValueError, match=r'^row 1: <bkspc> at position 3 would delete into the prompt '
                                         r'\(the first 3 tokens\) or leave the row empty$'):
        backspace_inputs(torch.tensor([[1, 2, 3, 4], [1, 2, 3, BK]]), BK, n_prompt=3)
    with pytest.raises(ValueError, match=r'^row 0: <bkspc> at position 1 would .* leave the row empty$'):
        backspace_inputs(torch.tensor([[1, BK]]), BK, n_prompt=0)
    with pytest.raises(ValueError, match=r'^row 1: <bkspc> at position 2 .*\(the first 2 tokens\)'):
        backspace_inputs(torch.tensor([[1, 2, 3], [1, 2, BK]]), BK, n_prompt=[1, 2])  # one n_prompt per row


def stack_loop_backspace_inputs(tokens, bkspc_id, n_prompt):
    """The tests' own reference for backspace_inputs: the stack rule of seqmatch.py, section 2, one
    position at a time (the loop that backspace_inputs computes for all rows and positions at once)."""
    B, n = tokens.shape
    n_prompt = [n_prompt] * B if isinstance(n_prompt, int) else [int(p) for p in n_prompt]
    input_ids = np.zeros((B, n), dtype=np.int64)
    position_ids = np.zeros((B, n), dtype=np.int64)
    attn_mask = np.zeros((B, n, n), dtype=bool)
    for b, row in enumerate(tokens.tolist()):
        stack = []  # input positions that make up the current state
        for j, tok in enumerate(row):
            if j > 0:
                attn_mask[b, j] = attn_mask[b, j - 1]  # start from the previous state's positions
            if tok == bkspc_id:
                if len(stack) <= max(n_prompt[b], 1):
                    raise ValueError(f"row {b}: <bkspc> at position {j} would delete into the prompt "
                                     f"(the first {n_prompt[b]} tokens) or leave the row empty")
                deleted = stack.pop()
                top = stack[-1]
                input_ids[b, j] = input_ids[b, top]  # the copy: same id ...
                position_ids[b, j] = position_ids[b, top]  # ... same position id
                attn_mask[b, j, [deleted, top]] = False
                stack[-1] = j
            else:
                input_ids[b, j] = tok
                position_ids[b, j] = len(stack)
                stack.append(j)
            attn_mask[b, j, j] = True
    return torch.from_numpy(input_ids), torch.from_numpy(position_ids), torch.from_numpy(attn_mask)


def assert_equals_stack_loop(tokens, n_prompt):
    """backspace_inputs byte for byte against the loop, dtypes included; a failure names the first difference."""
    got, want = backspace_inputs(tokens, BK, n_prompt), stack_loop_backspace_inputs(tokens, BK, n_prompt)
    for name, g, w in zip(('input_ids', 'position_ids', 'attn_mask'), got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, w.dtype, g.shape, w.shape)
        wrong = (g != w).nonzero()
        assert len(wrong) == 0, (f"n_prompt {n_prompt}: {name} differs first at (row, position"
                                 f"{', key' if name == 'attn_mask' else ''}) {wrong[0].tolist()}")


@pytest.mark.parametrize('p_bkspc', [0.0, 0.1, 0.45, 0.7])
def test_masking_equals_the_stack_loop_exactly(p_bkspc):
    """With int and per-row prompts, copies of copies and runs of deletions."""
    for n_prompt in (1, 3, [1, 5, 2, 4, 1, 3]):
        prompts = n_prompt if isinstance(n_prompt, list) else [n_prompt] * 6
        tokens = torch.cat([random_trajectories(1, 50, p, BK, p_bkspc, seed=10 * k + int(100 * p_bkspc))
                            for k, p in enumerate(prompts)])
        tokens[0] = tokens[0] % BK  # row 0 by hand: copies of copies, and a run of deletions
        tokens[0, 5:13] = torch.tensor([3, BK, 4, BK, BK, 5, 6, BK])
        assert_equals_stack_loop(tokens, n_prompt)


def test_masking_equals_the_stack_loop_at_gpt2_length():
    """n = 1024 (the GPT-2 block), with few and with many backspaces (hundreds of <bkspc> counts per row)."""
    for p_bkspc in (0.02, 0.45):
        assert_equals_stack_loop(torch.cat([random_trajectories(1, 1024, 1, BK, p_bkspc, seed=k) for k in range(3)]), 1)


# ----------------------------------------------------------------------------- rollouts (generate)


class BiasedGPT(GPT):
    """A random GPT whose <bkspc> and eos logits are shifted, and which records what it computes."""
    def __init__(self, config, bkspc_bias, eos_bias=0.0):
        super().__init__(config)
        self.bias = torch.zeros(config.vocab_size)
        self.bias[BK], self.bias[0] = bkspc_bias, eos_bias
        self.seen = []  # the last logits of each call: the policy of each step
        self.fed = []  # (tokens fed, positions already in the KV cache or None) of each call

    def forward(self, idx, targets=None, position_ids=None, attn_mask=None, kv_cache=None):
        self.fed.append((idx.size(1), kv_cache.length if kv_cache is not None else None))
        logits, loss = super().forward(idx, targets, position_ids, attn_mask, kv_cache)
        logits = logits + self.bias
        self.seen.append(logits[:, -1])
        return logits, loss


def test_rollouts_are_exact(tiny_model):
    model = BiasedGPT(tiny_model().config, bkspc_bias=2.5, eos_bias=-2.0).eval()
    torch.manual_seed(1)
    prompt = torch.randint(0, BK, (8, 5))
    tokens, valid = generate(model, prompt, 40, BK, temperature=1.5, eos_id=0)
    step_logits = model.seen  # step_logits[t]: the logits that chose tokens[:, 5 + t]
    assert tokens.shape == valid.shape == (8, 45)
    assert (tokens[:, :5] == prompt).all() and not valid[:, :5].any()
    assert (tokens[valid] == BK).sum() > 30, "the rollouts should backspace"
    assert 0 < (~valid[:, 5:]).sum() < 8 * 40 // 2, "some rows, not most, should end with eos_id"
    assert (tokens[:, 5:][~valid[:, 5:]] == 0).all(), "a row that ended is padded with eos_id"
    # every step's logits are the policy at that state, computed fresh. (With the masking tests this
    # also shows that backspace_inputs(tokens) reproduces them: rollouts come out in training format.)
    for b in range(8):
        for j in range(5, 45):
            if valid[b, j]:
                state = final_text(tokens[b, :j], BK)
                fresh, _ = model(torch.tensor([state]))
                diff = (fresh[0, -1] - step_logits[j - 5][b]).abs().max().item()
                assert diff < 1e-5, (f"row {b}, position {j}: the logits that chose token {tokens[b, j].item()} differ "
                                     f"by {diff:.3g} from a fresh forward on its state {state} (the row so far: "
                                     f"{tokens[b, :j].tolist()})")


def test_rollout_feeds_one_token_per_step_through_the_kv_cache(tiny_model):
    model = BiasedGPT(tiny_model().config, bkspc_bias=2.5).eval()
    prompt = torch.randint(0, BK, (3, 4))
    generate(model, prompt, 12, BK)
    assert model.fed[0] == (4, 0), f"the first call should feed the prompt (4 tokens) into an empty KV cache, got {model.fed[0]}"
    for t, (n_fed, cached) in enumerate(model.fed[1:], start=1):
        assert (n_fed, cached) == (1, 4 + t - 1), (
            f"call {t} fed {n_fed} tokens with {cached} positions in the KV cache: each step after the prompt "
            f"feeds only the newest token (1) and reuses the cache of all {4 + t - 1} before it")
    assert len(model.fed) >= 12, f"{len(model.fed)} forward calls for 12 new tokens"


def test_rollout_never_deletes_the_prompt(tiny_model):
    model = BiasedGPT(tiny_model().config, bkspc_bias=1e4).eval()
    prompt = torch.randint(0, BK, (4, 6))
    tokens, valid = generate(model, prompt, 30, BK, top_k=5)
    assert (tokens[:, 7::2] == BK).all(), f"it should delete whenever it may: {tokens.tolist()}"
    for b, row in enumerate(tokens):
        for j in range(6, len(row)):
            state = final_text(row[:j + 1], BK)
            assert state[:6] == row[:6].tolist(), f"row {b}, position {j}: the state {state} lost part of the prompt"
    tokens, _ = generate(model, prompt, 30, BK, top_k=5, allow_bkspc=False)
    assert not (tokens == BK).any(), f"allow_bkspc=False still deleted: {tokens.tolist()}"


def test_greedy_rollout_is_deterministic(tiny_model):
    model = tiny_model()
    prompt = torch.randint(0, BK, (3, 4))
    a, _ = generate(model, prompt, 10, BK, temperature=0)
    b, _ = generate(model, prompt, 10, BK, temperature=0)
    assert torch.equal(a, b), f"temperature=0 should be greedy: {a.tolist()} then {b.tolist()}"

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

# ----------------------------------------------------------------------------- seqmatch_loss

# what each term of seqmatch_loss is, named in a failure message when that term is off
TERMS = {
    'expert': "minus the mean reward over the data rows' expert transitions, pooled (not averaged per row); "
              "r_j = logits[:, j-1, actions[:, j]] - gamma * V[:, j], with V[:, j] = 0 where done[:, j]",
    'value': "V[:, j-1] - gamma * V[:, j] (0 where done[:, j]), averaged over the transitions of each group "
             "(data rows, model rows) pooled, then over the non-empty groups",
    'chi2': "reward^2, averaged like the value term, divided by 4 alpha",
    'reward_data': "the mean reward over the valid transitions of the data rows",
    'reward_model': "the mean reward over the valid transitions of the model rows (nan if there are none)",
}


def loop_reference(logits, actions, valid, expert, is_data, done, gamma, alpha):
    """The loss terms computed transition by transition, in float64: the transition into position j is
    the action actions[b, j] in the state whose logits are logits[b, j-1]."""
    B, n, _ = logits.shape
    V = torch.logsumexp(logits.double(), dim=-1).tolist()  # V[b][j]: the state after position j
    rewards = {True: [], False: []}  # is_data -> the rewards of that group's transitions, pooled
    values = {True: [], False: []}
    expert_rewards = []
    for b in range(B):
        for j in range(1, n):
            if not valid[b, j]:
                continue
            V_next = 0.0 if done[b, j] else V[b][j]
            r = logits[b, j - 1, actions[b, j]].item() - gamma * V_next
            rewards[bool(is_data[b])].append(r)
            values[bool(is_data[b])].append(V[b][j - 1] - gamma * V_next)
            if is_data[b] and expert[b, j]:
                expert_rewards.append(r)
    def mean(xs):
        return sum(xs) / len(xs)
    groups = [g for g in (True, False) if rewards[g]]  # an empty group is dropped
    return {
        'expert': -mean(expert_rewards) if expert_rewards else 0.0,  # 0 without expert transitions
        'value': mean([mean(values[g]) for g in groups]),
        'chi2': mean([mean([r * r for r in rewards[g]]) for g in groups]) / (4 * alpha),
        'reward_data': mean(rewards[True]) if rewards[True] else math.nan,
        'reward_model': mean(rewards[False]) if rewards[False] else math.nan,
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


def test_seqmatch_loss_reduces_to_cross_entropy(tiny_model):
    model = tiny_model()
    tokens = torch.randint(0, BK, (4, 30))
    logits, _ = model(tokens)
    ones = torch.ones_like(tokens, dtype=torch.bool)
    ones[:, 0] = False  # no transition into the first token
    none = torch.zeros_like(ones)
    loss, _ = seqmatch_loss(logits, tokens, ones, ones, torch.ones(4, dtype=torch.bool), none,
                            gamma=0.998, alpha=1e12)
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, 20), tokens[:, 1:].reshape(-1))
    assert abs(loss.item() - ce.item()) < 1e-5, (
        f"on data rows with alpha -> inf the loss is the cross-entropy {ce.item():.6g}, got {loss.item():.6g}")


def test_seqmatch_loss_by_hand():
    # vocabulary {0, 1, <bkspc>=2}, eos = 1. Prompt [0]; the expert meant eos, the environment wrote the
    # noise 0 instead; <bkspc>; eos. The noise transition's action is the intended eos (add_noise).
    # The worked example of seqmatch_loss's docstring.
    actions = torch.tensor([[0, 1, 2, 1]])
    logits = torch.tensor([[[0.5, 1.0, -1.0], [0.0, 0.0, 2.0], [1.0, 3.0, 0.0], [9.0, 9.0, 9.0]]])
    valid = torch.tensor([[False, True, True, True]])
    expert = valid  # every data transition is the expert's
    done = torch.tensor([[False, False, False, True]])  # the noise did not end the episode; eos did
    gamma, alpha = 0.9, 0.5
    V = [math.log(sum(math.exp(x) for x in row)) for row in logits[0].tolist()]
    r1 = 1.0 - gamma * V[1]  # state [0]: the expert's eos, l = 1.0; the next state is [0, noise]
    r2 = 2.0 - gamma * V[2]  # <bkspc> in state [0, noise]: l = 2.0, back to [0]
    r3 = 3.0 - gamma * 0.0  # eos in state [0]: l = 3.0, V after eos is 0; the last row of logits is unused
    expected = {
        'expert': -(r1 + r2 + r3) / 3,
        'value': ((V[0] - gamma * V[1]) + (V[1] - gamma * V[2]) + (V[2] - 0.0)) / 3,  # no model rows: one group
        'chi2': (r1 ** 2 + r2 ** 2 + r3 ** 2) / 3 / (4 * alpha),
        'reward_data': (r1 + r2 + r3) / 3,
        'reward_model': math.nan,
    }
    loss, stats = seqmatch_loss(logits, actions, valid, expert, torch.tensor([True]), done, gamma, alpha)
    assert_loss_terms(loss, stats, expected)


def test_seqmatch_loss_matches_a_loop_reference():
    g = torch.Generator().manual_seed(0)
    B, n, A = 5, 9, 6
    logits = 3 * torch.randn(B, n, A, generator=g)
    actions = torch.randint(0, A, (B, n), generator=g)
    is_data = torch.tensor([True, True, True, False, False])
    valid = torch.ones(B, n, dtype=torch.bool)
    valid[:, :2] = False  # a prompt of 2
    valid[1, 5:] = False  # rows of different lengths
    valid[4, 3:] = False
    expert = valid & is_data[:, None]
    expert[0, 4] = False  # a data transition outside the expert term
    done = torch.zeros(B, n, dtype=torch.bool)
    done[0, 6] = done[1, 4] = done[3, 8] = True  # episodes end, one of them mid-row
    args = (actions, valid, expert, is_data, done, 0.9, 0.7)
    loss, stats = seqmatch_loss(logits, *args)
    assert_loss_terms(loss, stats, loop_reference(logits, *args))


def test_seqmatch_loss_pools_each_group_and_drops_an_empty_one():
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(2, 8, 5, generator=g)
    actions = torch.randint(0, 5, (2, 8), generator=g)
    valid = torch.zeros(2, 8, dtype=torch.bool)
    valid[0, 1] = True  # one transition in row 0, seven in row 1
    valid[1, 1:] = True
    done = torch.zeros_like(valid)
    is_data = torch.tensor([True, True])
    args = (actions, valid, valid, is_data, done, 0.9, 0.5)
    loss, stats = seqmatch_loss(logits, *args)
    pooled = loop_reference(logits, *args)
    per_row = sum(loop_reference(logits[b:b + 1], actions[b:b + 1], valid[b:b + 1], valid[b:b + 1], is_data[b:b + 1],
                                 done[b:b + 1], 0.9, 0.5)['expert'] for b in (0, 1)) / 2
    got = stats['expert'].item()
    assert abs(got - per_row) > 1e-3, (f"stats['expert'] is {got:.6g}, the average of each row's mean: pool the "
                                       f"group's transitions instead (expected {pooled['expert']:.6g})")
    # only data rows: the empty model group is dropped, not averaged in as 0
    got = stats['value'].item()
    assert abs(got - pooled['value'] / 2) > 1e-3, (f"stats['value'] is {got:.6g}, half the data group's mean: "
                                                   f"the empty model group was averaged in; drop it")
    assert_loss_terms(loss, stats, pooled, context='data rows only: ')
    # the same rows as model rollouts: the empty data group is dropped, and the expert term is 0
    loss, stats = seqmatch_loss(logits, actions, valid, valid & False, ~is_data, done, 0.9, 0.5)
    expected = loop_reference(logits, actions, valid, valid & False, ~is_data, done, 0.9, 0.5)
    assert_loss_terms(loss, stats, expected, context='model rows only: ')


@pytest.mark.parametrize('gamma', [0.998, 0.9])
def test_seqmatch_loss_gradient_on_noisy_data_equals_bc(tiny_model, gamma):
    """With data rows only and alpha -> inf, every transition is the expert's, so the expert and value
    terms cancel per transition to -log pi(a|u): the gradient of L_SM is BC's (the cross-entropy of the
    expert's actions), with noise, <bkspc> and eos in the rows."""
    model = tiny_model()
    eos = 0
    g = torch.Generator().manual_seed(1)
    rows, row_actions = [], []
    for _ in range(4):  # noisy data rows as add_noise makes them: noise x~, <bkspc>, the data token a*
        row, acts = [], []
        for tok in torch.randint(1, BK, (24,), generator=g).tolist():
            if row and torch.rand(1, generator=g) < 0.3:
                row += [tok % (BK - 1) + 1, BK]  # a mistake: neither the data token nor eos
                acts += [tok, BK]  # the expert meant tok
            row.append(tok)
            acts.append(tok)
        rows.append(row)
        row_actions.append(acts)
    n = min(len(row) for row in rows)
    tokens = torch.tensor([row[:n] for row in rows])
    actions = torch.tensor([acts[:n] for acts in row_actions])
    tokens[:, n - 1] = actions[:, n - 1] = eos  # each row ends its episode ...
    tokens[0, 10] = actions[0, 10] = eos  # ... and one ends early, then goes on as a new one
    assert (tokens == BK).sum() >= 6 and (tokens != actions).sum() >= 6
    valid = torch.ones_like(tokens, dtype=torch.bool)
    valid[:, 0] = False
    done = valid & (tokens == eos)
    is_data = torch.ones(4, dtype=torch.bool)

    def gradient(loss_fn):
        # the cancellation holds transition by transition, for any logits: a plain causal forward of
        # the rows serves (and keeps this test independent of backspace_inputs)
        model.zero_grad()
        logits, _ = model(tokens)
        loss_fn(logits).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    sm = gradient(lambda logits: seqmatch_loss(logits, actions, valid, valid, is_data, done, gamma, 1e12)[0])
    bc = gradient(lambda logits: F.cross_entropy(logits[:, :-1].reshape(-1, 20), actions[:, 1:].reshape(-1)))
    diff = (sm - bc).abs().max().item()
    assert diff < 1e-6, f"the gradient differs from BC's by {diff:.3g}: {TERMS['expert']}; {TERMS['value']}"
    assert bc.abs().max().item() > 1e-3  # a real gradient, not two zeros
    # the rule it replaces (the noise transition credits the noise, outside the expert term) is not BC
    expert_old = valid & (tokens == actions)
    old = gradient(lambda logits: seqmatch_loss(logits, tokens, valid, expert_old, is_data, done, gamma, 1e12)[0])
    assert (old - bc).abs().max().item() > 1e-3


def test_seqmatch_loss_mixture_weights_data_and_model_equally(tiny_model):
    model = tiny_model()
    data_row = torch.randint(0, BK, (1, 20))
    model_row = random_trajectories(1, 20, 4, BK, 0.3, seed=3)

    def loss_of(rows, is_data):
        logits, _ = model(rows)  # any logits show the weighting; a plain forward keeps backspace_inputs out
        valid = torch.ones_like(rows, dtype=torch.bool)
        valid[:, 0] = False
        valid[~is_data, :4] = False  # a rollout's prompt is not its action
        expert = valid & is_data[:, None]
        return seqmatch_loss(logits, rows, valid, expert, is_data, torch.zeros_like(valid), 0.998, 0.5)

    one, stats = loss_of(torch.cat([data_row, model_row]), torch.tensor([True, False]))
    two, _ = loss_of(torch.cat([data_row, model_row, model_row]), torch.tensor([True, False, False]))
    assert abs(one.item() - two.item()) < 1e-5, "a second copy of the model row changes the loss: average within each group"
    assert not math.isnan(stats['reward_model'].item())
    # and the model group counts as much as the data group, not in proportion to its transitions
    data_only, _ = loss_of(data_row, torch.tensor([True]))
    assert abs(one.item() - data_only.item()) > 1e-3

    one.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)

# ----------------------------------------------------------------------------- bc_loss


def test_bc_loss_by_hand():
    # the row of test_seqmatch_loss_by_hand: the cross-entropy of the three intended actions
    actions = torch.tensor([[0, 1, 2, 1]])
    logits = torch.tensor([[[0.5, 1.0, -1.0], [0.0, 0.0, 2.0], [1.0, 3.0, 0.0], [9.0, 9.0, 9.0]]])
    expert = torch.tensor([[False, True, True, True]])
    V = torch.logsumexp(logits[0], dim=-1).tolist()
    log_pi = [logits[0, j, a].item() - V[j] for j, a in ((0, 1), (1, 2), (2, 1))]  # logits[j-1] chose actions[j]
    got = bc_loss(logits, actions, expert).item()
    assert abs(got + sum(log_pi) / 3) < 1e-5, (f"bc_loss is {got:.6g}, expected {-sum(log_pi) / 3:.6g}: the action "
                                               f"actions[:, j] is chosen by logits[:, j-1]")


def test_bc_loss_counts_only_expert_transitions():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 7, 5, generator=g)
    actions = torch.randint(0, 5, (3, 7), generator=g)
    expert = torch.rand(3, 7, generator=g) < 0.5
    expert[:, 0] = True  # ignored: no transition into the first token
    nll = -torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, actions[:, 1:, None])[..., 0]  # (3, 6)
    want, every = nll[expert[:, 1:]].mean().item(), nll.mean().item()
    got = bc_loss(logits, actions, expert).item()
    hint = ": that is the mean over every transition, count only expert ones" if abs(got - every) < 1e-5 else ""
    assert abs(got - want) < 1e-5, f"bc_loss is {got:.6g}, expected {want:.6g}{hint}"
