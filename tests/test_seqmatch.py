"""The core of the method: masking, noise, rollouts and the loss."""
import math

import pytest
import torch
import torch.nn.functional as F

from model import GPT
from seqmatch import add_noise, apply_backspaces, backspace_inputs, bc_loss, generate, seqmatch_loss

BK = 19  # <bkspc> in a vocabulary of 20: base tokens 0..18


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


def assert_rows_are_the_policy_at_each_state(model, tokens, n_prompt, bkspc_id):
    """Row j of the masked forward equals a fresh forward on the text after tokens[:j+1]."""
    input_ids, position_ids, attn_mask = backspace_inputs(tokens, bkspc_id, n_prompt)
    logits, _ = model(input_ids, position_ids=position_ids, attn_mask=attn_mask)
    worst = 0.0
    for b in range(tokens.size(0)):
        for j in range(max(n_prompt, 1) - 1, tokens.size(1)):
            text = apply_backspaces(tokens[b, :j + 1], bkspc_id, n_prompt)
            fresh, _ = model(torch.tensor([text]))
            worst = max(worst, (fresh[0, -1] - logits[b, j]).abs().max().item())
    assert worst < 1e-5, worst


def test_apply_backspaces():
    assert apply_backspaces([5, 6, 7, BK, BK, 8], BK) == [5, 8]
    assert apply_backspaces(torch.tensor([1, 2, BK, 3, BK, BK]), BK, n_prompt=0) == []
    with pytest.raises(ValueError, match='prompt'):
        apply_backspaces([1, 2, BK, BK], BK, n_prompt=1)


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
    # prompt [10, 11], then 12, <bkspc>, <bkspc> is refused; 12, <bkspc>, 13
    input_ids, position_ids, attn_mask = backspace_inputs(torch.tensor([[10, 11, 12, BK, 13]]), BK, 2)
    assert input_ids.tolist() == [[10, 11, 12, 11, 13]]  # the <bkspc> position is a copy of 11
    assert position_ids.tolist() == [[0, 1, 2, 1, 2]]
    assert attn_mask[0].int().tolist() == [[1, 0, 0, 0, 0],
                                           [1, 1, 0, 0, 0],
                                           [1, 1, 1, 0, 0],
                                           [1, 0, 0, 1, 0],   # 11 and 12 are replaced by the copy
                                           [1, 0, 0, 1, 1]]


def test_backspace_into_prompt_is_a_clear_error():
    with pytest.raises(ValueError, match=r'row 1: <bkspc> at position 3 would delete into the prompt'):
        backspace_inputs(torch.tensor([[1, 2, 3, 4], [1, 2, 3, BK]]), BK, n_prompt=3)
    with pytest.raises(ValueError, match='empty'):
        backspace_inputs(torch.tensor([[1, BK]]), BK, n_prompt=0)


class BiasedGPT(GPT):
    """A random GPT whose <bkspc> and eos logits are shifted, and which records what it computes."""
    def __init__(self, config, bkspc_bias, eos_bias=0.0):
        super().__init__(config)
        self.bias = torch.zeros(config.vocab_size)
        self.bias[BK], self.bias[0] = bkspc_bias, eos_bias
        self.seen = []

    def forward(self, *args, **kwargs):
        logits, loss = super().forward(*args, **kwargs)
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
    # every step's logits are the policy at that state, computed fresh
    for b in range(8):
        for j in range(5, 45):
            if valid[b, j]:
                text = apply_backspaces(tokens[b, :j], BK, 5)
                fresh, _ = model(torch.tensor([text]))
                assert (fresh[0, -1] - step_logits[j - 5][b]).abs().max() < 1e-5
    # and the rows in training format reproduce them
    input_ids, position_ids, attn_mask = backspace_inputs(tokens, BK, 5)
    logits, _ = model(input_ids, position_ids=position_ids, attn_mask=attn_mask)
    for j in range(5, 45):
        rows = valid[:, j]
        assert (logits[rows, j - 1] - step_logits[j - 5][rows]).abs().max() < 1e-5


def test_rollout_never_deletes_the_prompt(tiny_model):
    model = BiasedGPT(tiny_model().config, bkspc_bias=1e4).eval()
    prompt = torch.randint(0, BK, (4, 6))
    tokens, valid = generate(model, prompt, 30, BK, top_k=5)
    assert (tokens[:, 7::2] == BK).all()  # it deletes whenever it may ...
    for row in tokens:
        assert apply_backspaces(row, BK, n_prompt=6)[:6] == row[:6].tolist()  # ... but never the prompt


def test_greedy_rollout_is_deterministic(tiny_model):
    model = tiny_model()
    prompt = torch.randint(0, BK, (3, 4))
    a, _ = generate(model, prompt, 10, BK, temperature=0)
    b, _ = generate(model, prompt, 10, BK, temperature=0)
    assert torch.equal(a, b)


def test_add_noise():
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, BK, (20000,), generator=g)
    noisy, expert = add_noise(data, p_noise=0.1, bkspc_id=BK, n_prompt=1, generator=g)
    assert apply_backspaces(noisy, BK, n_prompt=1) == data.tolist()
    n_inserted = (noisy == BK).sum().item()
    assert len(noisy) == len(data) + 2 * n_inserted
    assert abs(n_inserted / (len(data) - 1) - 0.1) < 0.01  # the rate is p_noise (sd 0.002)
    bkspc_at = (noisy == BK).nonzero()[:, 0]
    noise_at = bkspc_at - 1
    assert not expert[noise_at].any()  # the environment's mistakes are not expert actions
    assert expert[bkspc_at].all()  # the corrections are
    assert (noisy[noise_at] != noisy[bkspc_at + 1]).all()  # a mistake is never the true token
    assert expert.sum() == len(data) - 1 + n_inserted  # every data token but the prompt is expert
    assert not expert[0]


def test_add_noise_uses_task_noise_only_where_allowed():
    data = torch.arange(10)
    allowed = torch.tensor([-1] * 5 + [15] * 5)  # noise 15, and only before positions 5..9
    noisy, expert = add_noise(data, 1.0, BK, n_prompt=1, noise_fn=lambda row: allowed)
    assert noisy.tolist() == [0, 1, 2, 3, 4, 15, BK, 5, 15, BK, 6, 15, BK, 7, 15, BK, 8, 15, BK, 9]
    noisy, _ = add_noise(torch.zeros(5000, dtype=torch.long) + 1, 0.5, 3, n_prompt=1, eos_id=0)
    assert set(noisy.tolist()) == {1, 2, 3}  # neither the true token 1 nor eos 0 is ever noise


# ----------------------------------------------------------------------------- the loss

def test_loss_reduces_to_cross_entropy(tiny_model):
    model = tiny_model()
    tokens = torch.randint(0, BK, (4, 30))
    logits, _ = model(tokens)
    ones = torch.ones_like(tokens, dtype=torch.bool)
    ones[:, 0] = False  # no transition into the first token
    none = torch.zeros_like(ones)
    loss, _ = seqmatch_loss(logits, tokens, ones, ones, torch.ones(4, dtype=torch.bool), none,
                            gamma=0.998, alpha=1e12)
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, 20), tokens[:, 1:].reshape(-1))
    assert abs(loss.item() - ce.item()) < 1e-5
    assert abs(bc_loss(logits, tokens, ones).item() - ce.item()) < 1e-5


def test_loss_by_hand():
    # vocabulary {0, 1, <bkspc>=2}, eos = 1. Prompt [0]; the environment's noise 0; <bkspc>; eos.
    tokens = torch.tensor([[0, 0, 2, 1]])
    logits = torch.tensor([[[0.5, 1.0, -1.0], [0.0, 0.0, 2.0], [1.0, 3.0, 0.0], [9.0, 9.0, 9.0]]])
    valid = torch.tensor([[False, True, True, True]])
    expert = torch.tensor([[False, False, True, True]])
    done = torch.tensor([[False, False, False, True]])
    gamma, alpha = 0.9, 0.5
    V = [math.log(sum(math.exp(x) for x in row)) for row in logits[0].tolist()]
    r1 = 0.5 - gamma * V[1]  # noise 0 in state [0]: l = 0.5, next state [0, 0]
    r2 = 2.0 - gamma * V[2]  # <bkspc> in state [0, 0]: l = 2.0, back to [0]
    r3 = 3.0 - gamma * 0.0  # eos in state [0]: l = 3.0, V after eos is 0; the last row of logits is unused
    expert_term = -(r2 + r3) / 2
    value_term = ((V[0] - gamma * V[1]) + (V[1] - gamma * V[2]) + (V[2] - 0.0)) / 3
    chi2_term = (r1 ** 2 + r2 ** 2 + r3 ** 2) / 3 / (4 * alpha)
    loss, stats = seqmatch_loss(logits, tokens, valid, expert, torch.tensor([True]), done, gamma, alpha)
    assert abs(stats['expert'].item() - expert_term) < 1e-5
    assert abs(stats['value'].item() - value_term) < 1e-5
    assert abs(stats['chi2'].item() - chi2_term) < 1e-5
    assert abs(stats['reward_data'].item() - (r1 + r2 + r3) / 3) < 1e-5
    assert abs(loss.item() - (expert_term + value_term + chi2_term)) < 1e-5


def test_loss_mixture_weights_data_and_model_equally(tiny_model):
    model = tiny_model()
    data_row = torch.randint(0, BK, (1, 20))
    model_row = random_trajectories(1, 20, 4, BK, 0.3, seed=3)

    def loss_of(rows, is_data, n_prompt):
        input_ids, position_ids, attn_mask = backspace_inputs(rows, BK, n_prompt)
        logits, _ = model(input_ids, position_ids=position_ids, attn_mask=attn_mask)
        valid = torch.ones_like(rows, dtype=torch.bool)
        valid[:, 0] = False
        valid[~is_data, :4] = False  # a rollout's prompt is not its action
        expert = valid & is_data[:, None]
        return seqmatch_loss(logits, rows, valid, expert, is_data, torch.zeros_like(valid), 0.998, 0.5)

    one, stats = loss_of(torch.cat([data_row, model_row]), torch.tensor([True, False]), [1, 4])
    two, _ = loss_of(torch.cat([data_row, model_row, model_row]), torch.tensor([True, False, False]), [1, 4, 4])
    assert abs(one.item() - two.item()) < 1e-5
    assert not math.isnan(stats['reward_model'].item())
    # and the model group counts as much as the data group, not in proportion to its transitions
    data_only, _ = loss_of(data_row, torch.tensor([True]), 1)
    assert abs(one.item() - data_only.item()) > 1e-3

    one.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
