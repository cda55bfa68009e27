"""
SequenceMatch (Cundy & Ermon, ICLR 2024) in one file, in the order of the method:

  1. States and actions: a trajectory is a row of tokens; the action <bkspc> deletes the last token.
  2. Backspace masking: the policy at every state of a row in one forward pass.
  3. Noise augmentation: data never contains <bkspc>, so we insert mistakes and their corrections.
  4. Rollouts: batched sampling with <bkspc> and a step-synchronous KV cache.
  5. The loss: logits are soft Q-values; the chi^2-mixture objective on data and model transitions.

What sections 1-4 are for (read section 5 first if you like): the logit l(a|u) of action a in state u is a
soft Q-value, V(u) = logsumexp_a l(a|u) is the state's value and r = l(a|u) - gamma * V(u') is the reward
of the transition u --a--> u'. The loss raises r on the expert's transitions and keeps V and r^2 small on
a mix of data and the model's own rollouts. It needs the logits at every state of every row, including
the states a <bkspc> returns to: the masking of section 2 gives them all in one forward pass.
`python seqmatch.py 'abc<d' --n_prompt=2` prints that masking for a row ('<' is <bkspc>; show_masking).

Conventions used throughout: `tokens` is a (B, n) LongTensor of trajectories, prompt first. The first
`n_prompt` tokens of a row are the prompt, which no <bkspc> may delete. The base vocabulary is
0 .. bkspc_id - 1 and the action space is the base vocabulary plus <bkspc>, so the policy reads
logits[..., :bkspc_id + 1]; ids above bkspc_id are only padding of the embedding table.
A per-position mask `m[:, j]` always refers to the transition INTO tokens[:, j], i.e. the action
tokens[:, j] taken in the state made of tokens[:, :j].
"""

import functools

import numpy as np
import torch
import torch.nn.functional as F

from model import KVCache

# -----------------------------------------------------------------------------
# 1. States and actions


def apply_backspaces(tokens, bkspc_id, n_prompt=0):
    """The text a trajectory ends in: each <bkspc> deletes the token before it. (Text may become empty
    here; backspace_inputs refuses that, since the model needs at least one token to condition on.)
    A <bkspc> into the prompt raises ValueError("<bkspc> at position {j} would delete into the prompt
    (the first {n_prompt} tokens)").
    >>> apply_backspaces([5, 6, 7, 9, 9, 8], bkspc_id=9)
    [5, 8]"""
    text = []
    for j, tok in enumerate(tokens.tolist() if torch.is_tensor(tokens) else tokens):
        if tok == bkspc_id:
            if len(text) <= n_prompt:
                raise ValueError(f"<bkspc> at position {j} would delete into the prompt "
                                 f"(the first {n_prompt} tokens)")
            text.pop()
        else:
            text.append(tok)
    return text

# -----------------------------------------------------------------------------
# 2. Backspace masking
#
# Row j of the logits must be the policy at the state reached after tokens[0..j], exactly as if the
# model had been run on that state's text alone. We keep a stack of the input positions that make up
# the current state. An ordinary token is pushed. A <bkspc> pops the stack and its position becomes a
# copy of the token now on top (same id, same position id), replacing that entry on the stack. Every
# position attends to exactly the stack after it is processed. The copy sees what the original saw,
# so it computes the same activations and its logits are the policy at the restored state.
# backspace_inputs computes the stack for all rows and positions at once (the stack size is a running
# sum of +1 per token and -1 per <bkspc>); tests/test_seqmatch.py keeps the loop over positions as the
# reference it must equal.


@functools.lru_cache(maxsize=4)
def causal_mask(n):
    """(n, n) bool, True where i <= j: built once per length (read-only), as it costs a tenth of a mask."""
    mask = np.tri(n, dtype=bool)
    mask.setflags(write=False)
    return mask


def backspace_inputs(tokens, bkspc_id, n_prompt):
    """tokens: (B, n) trajectories. n_prompt: an int, or one per row.

    The stack of the comment above, as rules: an ordinary token keeps its id, and its position id is the
    stack depth before it is pushed (its index in the state's text); a <bkspc> gets the id and position
    id of the token left on top after the pop. Position j attends to exactly the positions on the stack
    after it, so logits row j is the policy at the state after tokens[:j+1]. A <bkspc> that would
    delete into the prompt or leave no token raises ValueError("row {b}: <bkspc> at position {j} would
    delete into the prompt (the first {n_prompt} tokens) or leave the row empty").

    Example: the prompt "ab", then "c", <bkspc>, "d" (ids a=0, b=1, c=2, d=3, <bkspc>=4):
    >>> input_ids, position_ids, attn_mask = backspace_inputs(torch.tensor([[0, 1, 2, 4, 3]]), 4, n_prompt=2)
    >>> input_ids.tolist(), position_ids.tolist()
    ([[0, 1, 2, 1, 3]], [[0, 1, 2, 1, 2]])
    >>> show_masking('abc<d', n_prompt=2)  # the same row, '<' for <bkspc>, the mask as a grid (x = attends)
     j  token  input id  position id  attends to  logits row j is the policy at
     0    a       a           0       x . . . .   a
     1    b       b           1       x x . . .   ab
     2    c       c           2       x x x . .   abc
     3    <       b           1       x . . x .   ab
     4    d       d           2       x . . x x   abd

    Returns input_ids (B, n), position_ids (B, n) and attn_mask (B, n, n) (bool, True = may attend)
    for GPT.forward. Raises ValueError if a <bkspc> would delete into the prompt or empty the row."""
    B, n = tokens.shape
    assert n < 2 ** 15, "stack sizes and <bkspc> counts are int16 below (numpy sorts those by radix)"
    n_prompt = np.array([n_prompt] * B if isinstance(n_prompt, int) else [int(p) for p in n_prompt])  # (B,)
    tokens_np = tokens.cpu().numpy()
    is_bkspc = tokens_np == bkspc_id  # (B, n)
    n_bkspc = np.cumsum(is_bkspc, axis=1, dtype=np.int16)  # (B, n): how many <bkspc> up to and including j
    # the size of the stack after position j: +1 per ordinary token, -1 per <bkspc>
    depth = np.arange(1, n + 1, dtype=np.int16) - 2 * n_bkspc  # (B, n)
    # a <bkspc> needs more than max(n_prompt, 1) entries on the stack before it, i.e. depth + 1
    bad = is_bkspc & (depth < np.maximum(n_prompt, 1)[:, None])  # (B, n)
    if bad.any():
        b = int(bad.any(axis=1).argmax())  # the first bad row, and its first bad position
        j = int(bad[b].argmax())
        raise ValueError(f"row {b}: <bkspc> at position {j} would delete into the prompt "
                         f"(the first {n_prompt[b]} tokens) or leave the row empty")
    # Position j sits in slot depth[j] - 1 of the stack: pushed there, or there as the copy of that slot's top.
    position_ids = torch.from_numpy(depth - 1).long()  # (B, n): a slot's position id is its index, copies included
    # The entries of one slot in time order: sort the positions by depth (stable keeps time order). The top
    # of the stack after j is always j itself, so the <bkspc> at j pops j - 1 and its copy replaces the
    # entry before it in its slot (a copy is never a slot's first entry: the depth first gets there from
    # below, so that entry is in the same row). Those two are all it removes.
    row_start = np.arange(0, B * n, n)[:, None]  # (B, 1): flat index of each row's position 0
    order = (np.argsort(depth, axis=1, kind='stable') + row_start).ravel()  # (B * n,): flat positions by slot
    is_copy = is_bkspc.ravel()[order]  # (B * n,): in that order
    k = np.flatnonzero(is_copy)  # the copies' places in order; order[k - 1] is the entry each one replaces
    copies = order[k]
    # Every removal happens at a <bkspc>, so we count time in <bkspc>s: position i is on the stack after
    # j >= i iff fewer <bkspc> have come by j than by the one that removes i (removed_count[i]).
    max_count = int(n_bkspc[:, -1].max())
    removed_count = np.full(B * n, max_count + 1, dtype=np.int16)  # (B * n,): max_count + 1 = never removed
    removed_count[order[k - 1]] = removed_count[copies - 1] = n_bkspc.ravel()[copies]
    # A copy repeats its slot's previous entry, which may be a copy too: the token is that of the slot's
    # latest ordinary entry, found by a running maximum over the sorted places of ordinary entries
    latest = np.maximum.accumulate(np.where(is_copy, 0, np.arange(B * n)))  # (B * n,): places in order
    source = np.empty(B * n, dtype=np.int64)  # (B * n,): the ordinary position whose token position j carries
    source[order] = order[latest]
    input_ids = torch.from_numpy(tokens_np.ravel()[source].reshape(B, n))  # (B, n)
    # The mask: between two <bkspc>s nothing leaves the stack, so there are only max_count + 1 different
    # sets of positions not yet removed, one per <bkspc> count. Row j of the mask is the set for its
    # count, n_bkspc[j], cut to the positions up to j (causal). Writing the (B, n, n) mask is most of the
    # cost: one row copy and one cut. (numpy, not torch: torch's multi-threaded kernels, called from
    # train.py's batch thread, slow the main thread's training step down by half on a 2-core CPU.)
    not_removed = np.arange(max_count + 1, dtype=np.int16)[:, None] < removed_count.reshape(B, 1, n)  # (B, K + 1, n)
    row_of_j = n_bkspc + np.arange(0, B * (max_count + 1), max_count + 1)[:, None]  # (B, n): into not_removed
    attn_mask = not_removed.reshape(-1, n)[row_of_j.ravel()].reshape(B, n, n)  # (B, n, n)
    attn_mask &= causal_mask(n)  # the cut to i <= j
    attn_mask = torch.from_numpy(attn_mask)
    device = tokens.device
    return input_ids.to(device), position_ids.to(device), attn_mask.to(device)

# -----------------------------------------------------------------------------
# 3. Noise augmentation
#
# Before each data token a* (after the prompt), with probability p_noise, insert a noise token x~ and a
# <bkspc>. Read the noise as the environment perturbing the expert's action: in state u the expert chose
# a*, the environment wrote x~ instead. So u -> u+x~ is an expert transition whose ACTION is a* (its next
# state is u+x~), and u+x~ --<bkspc>--> u is an ordinary expert transition. add_noise therefore returns,
# next to the noisy row, the action of every transition. (Crediting x~ itself as an action would teach
# mistakes; dropping u -> u+x~ from the expert term but keeping it in the value term flattens the policy
# in front of every inserted mistake.) On data alone the SequenceMatch loss is then exactly BC.


def random_noise(tokens, bkspc_id, eos_id=None, generator=None):
    """For every position, a token drawn uniformly from the base vocabulary other than the true token
    (a mistake must be wrong) and other than eos_id (which would end the episode); -1 where no such token
    exists (the vocabulary holds only the true token and eos_id), which add_noise reads as "no noise here"."""
    eos = tokens if eos_id is None else torch.full_like(tokens, eos_id)  # (n,)
    low, high = torch.minimum(tokens, eos), torch.maximum(tokens, eos)  # (n,) the ids to leave out
    n_left = bkspc_id - 1 - (high != low).long()  # (n,) how many ids are left to draw from
    # uniform over 0 .. n_left - 1 (float64: no id is measurably likelier), then skip over the left-out
    # ids, the lower one first; no rejection loop, so it ends even when nothing is left to draw
    noise = (torch.rand(tokens.shape, dtype=torch.float64, generator=generator) * n_left).long()  # (n,)
    noise += (noise >= low).long()
    noise += ((noise >= high) & (high != low)).long()
    return noise.masked_fill(n_left <= 0, -1)


def add_noise(tokens, p_noise, bkspc_id, n_prompt=1, eos_id=None, noise_fn=None, generator=None):
    """tokens: (n,) one data row. Returns (noisy, actions), both (n + 2k,) for k insertions: the row the
    model reads, and the expert's action of the transition into each position (the row itself, except
    that a noise token's action is the data token after its <bkspc>).
    noise_fn(tokens) -> (n,) gives a noise token to insert before each position, or -1 where none may
    go ("ground-truth noise", e.g. a wrong digit); the default is random_noise.
    >>> noisy, actions = add_noise(torch.tensor([5, 6, 7]), 1.0, bkspc_id=9, noise_fn=lambda t: t * 0 + 8)
    >>> noisy.tolist(), actions.tolist()
    ([5, 8, 9, 6, 8, 9, 7], [5, 6, 9, 6, 7, 9, 7])"""
    tokens = tokens.cpu()
    n = len(tokens)
    if noise_fn is None:
        proposal = random_noise(tokens, bkspc_id, eos_id, generator)
    else:
        proposal = noise_fn(tokens)
    insert = (torch.rand(n, generator=generator) < p_noise) & (proposal >= 0)  # (n,)
    insert[:n_prompt] = False
    dest = torch.arange(n) + 2 * torch.cumsum(insert.long(), 0)  # where each data token lands
    noise_at = dest[insert] - 2  # the noise goes two places before its data token, <bkspc> one before
    noisy = torch.empty(n + 2 * int(insert.sum()), dtype=torch.long)
    noisy[dest] = tokens
    noisy[noise_at] = proposal[insert]
    noisy[noise_at + 1] = bkspc_id
    actions = noisy.clone()
    actions[noise_at] = tokens[insert]  # the expert meant the data token; the environment wrote the noise
    return noisy, actions


def noisy_rows(rows, p_noise, bkspc_id, eos_id=None, noise_fn=None, generator=None):
    """rows: (B, n) data rows; the first token of each is the prompt. Returns tokens, actions and valid, all
    (B, n): each row with noise added (add_noise) and cut back to n tokens, the expert's action into each
    position, and valid[:, j] = the transition into position j is trained on."""
    n = rows.size(1)
    tokens, actions = zip(*[add_noise(row, p_noise, bkspc_id, 1, eos_id, noise_fn, generator) for row in rows])
    tokens = torch.stack([t[:n] for t in tokens])  # (B, n): a noisy row is longer, keep its beginning
    actions = torch.stack([a[:n] for a in actions])  # (B, n)
    valid = torch.ones_like(tokens, dtype=torch.bool)  # (B, n)
    valid[:, 0] = False  # no transition into the first token
    # a noise token whose intended token was cut off (it ends the row, or only its <bkspc> follows) is
    # dropped: its action would be a token that is not in the row
    valid[:, -2:] &= tokens[:, -2:] == actions[:, -2:]
    return tokens, actions, valid

# -----------------------------------------------------------------------------
# 4. Rollouts with <bkspc>
#
# All rows advance one position per step, so one KV cache serves the batch. A <bkspc> step feeds the
# copy token of section 2 and changes that row's attention mask; the rows come out already in the
# training format, and backspace_inputs(rows) reproduces every logit used while sampling.


def sample_next(logits, temperature=1.0, top_k=None):
    """logits: (B, A) -> (B,) actions. temperature=0 means greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float('-inf'))
    return torch.multinomial(F.softmax(logits.float(), dim=-1), num_samples=1)[:, 0]


@torch.no_grad()
def generate(model, prompt, max_new_tokens, bkspc_id, temperature=1.0, top_k=None, eos_id=None, allow_bkspc=True):
    """prompt: (B, P) token ids, all rows the same length. Returns (tokens, valid), both (B, P + max_new_tokens):
    the prompt followed by the actions taken (<bkspc> included), and valid[:, j] = tokens[:, j] is an
    action of the policy (False on the prompt and on the padding after a row's eos_id).
    allow_bkspc=False never deletes: greedy decoding needs it, since after a <bkspc> the state is the one
    before the mistake and the argmax writes the same token again, forever.
    The model reads the prompt once; after that each step feeds it only the newest token (the copy token
    at a <bkspc>), one per row, and the KV cache holds everything before it.
    Call model.eval() first: dropout would make the policy differ from the one we train."""
    B, P = prompt.shape
    L = P + max_new_tokens
    assert L <= model.config.block_size, f"prompt + new tokens = {L} > block_size {model.config.block_size}"
    device = prompt.device
    rows = torch.arange(B, device=device)
    # after a row ends it is padded with an ordinary token, pushed like any other: no loss ever reads it
    # and no real position attends to it (it comes after them), so it need not be masked out
    pad_id = eos_id if eos_id is not None else 0
    tokens = torch.full((B, L), pad_id, dtype=torch.long, device=device)  # actions, as returned
    tokens[:, :P] = prompt
    valid = torch.zeros(B, L, dtype=torch.bool, device=device)
    # what the model is fed (section 2): the copy token and its position id at a <bkspc>
    input_ids = tokens.clone()
    position_ids = torch.arange(L, device=device).repeat(B, 1)
    stack = torch.arange(L, device=device).repeat(B, 1)  # stack[b, :depth[b]]: positions of the state
    depth = torch.full((B,), P, device=device)
    on_stack = torch.zeros(B, L, dtype=torch.bool, device=device)  # the same set, as an attention mask
    on_stack[:, :P] = True
    done = torch.zeros(B, dtype=torch.bool, device=device)

    kv_cache = KVCache(model.config, B, L)
    logits, _ = model(prompt, kv_cache=kv_cache)  # the prompt is plain causal text
    for j in range(P, L):
        policy_logits = logits[:, -1, :bkspc_id + 1].clone()  # (B, A): base vocabulary + <bkspc>
        policy_logits[:, bkspc_id].masked_fill_((depth <= P) | (not allow_bkspc), float('-inf'))  # never into the prompt
        action = sample_next(policy_logits, temperature, top_k)
        action = torch.where(done, pad_id, action)
        tokens[:, j] = action
        valid[:, j] = ~done

        backspace = action == bkspc_id  # (B,)
        deleted = stack[rows, depth - 1]
        top = stack[rows, (depth - 2).clamp(min=0)]  # the new top after a pop (meaningless otherwise)
        input_ids[:, j] = torch.where(backspace, input_ids[rows, top], action)
        position_ids[:, j] = torch.where(backspace, position_ids[rows, top], depth)
        on_stack[rows, deleted] &= ~backspace  # (written as &= so that no step waits for the device)
        on_stack[rows, top] &= ~backspace
        on_stack[:, j] = True
        stack[rows, torch.where(backspace, depth - 2, depth)] = j  # replace the top, or push
        depth = torch.where(backspace, depth - 1, depth + 1)
        if eos_id is not None:
            done |= action == eos_id
        if j == L - 1 or done.all():
            break
        logits, _ = model(input_ids[:, j:j + 1], position_ids=position_ids[:, j:j + 1],
                          attn_mask=on_stack[:, None, :j + 1], kv_cache=kv_cache)
    return tokens, valid

# -----------------------------------------------------------------------------
# 5. The loss
#
# The logit l(a|u) is a soft Q-value: V(u) = logsumexp_a l(a|u), the policy is softmax(l(.|u)), and the
# implicit reward of u --a--> u' is r = l(a|u) - gamma * V(u'), with V(u') = 0 after end-of-sequence.
# The chi^2-mixture (IQ-Learn) objective, minimised:
#   L_SM = - E_expert[r] + E_mix[V(u) - gamma * V(u')] + 1/(4 alpha) * E_mix[r^2]
# where the mixture gives data and model trajectories equal weight. Every data transition is an expert
# one (section 3), so with data only and alpha -> inf the first two terms cancel per transition to
# V(u) - l(a|u) = -log pi(a|u): the cross-entropy of the expert's actions, i.e. BC (MLE without noise).
# What SequenceMatch adds to BC is the chi^2 term and the model's own rollouts in the mixture.


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def seqmatch_loss(logits, actions, valid, expert, is_data, done, gamma, alpha):
    """logits: (B, n, A) over the action space, from the backspace-masked forward of the token rows.
    actions: (B, n) the action of the transition into position j: the row's token, except that a noise
    token's action is the token the expert intended (add_noise); for rollouts, the row itself.
    valid, expert, done: (B, n) bool for the transition into position j (expert: counts in the expert
    term, every valid data transition in train.py; done: it ended the episode). is_data: (B,) bool, True
    for data rows, False for model rollouts. Returns (loss, stats) with stats a dict of detached scalars.

    Index alignment: logits[:, j] is the policy at the state after position j, so the transition into
    position j >= 1 is the action actions[:, j] taken in the state of logits[:, j-1]:
        r_j = logits[:, j-1, actions[:, j]] - gamma * V[:, j],   value_j = V[:, j-1] - gamma * V[:, j]
    with V = logsumexp(logits, -1) and V[:, j] = 0 where done[:, j]. Column 0 of the masks is ignored (no
    transition leads into the first token); the last row of logits enters only through V.
    Averaging: the expert term is minus the mean of r_j over all expert transitions of the data rows,
    pooled (a long row weighs in proportion to its transitions; 0 if there are none). The value and chi^2 terms average over
    the valid transitions of each group (data rows, model rows), pooled within the group, then over the
    groups; a group without valid transitions is dropped (data alone is not halved).
    stats: 'expert', 'value', 'chi2' (the three terms; the loss is their sum), 'reward_data' and
    'reward_model' (the mean r_j of each group, nan for an empty group).

    Worked example (test_seqmatch_loss_by_hand): vocabulary {0, 1, <bkspc>=2}, eos = 1. Prompt [0]; the
    expert meant eos, the environment wrote the noise 0 instead; <bkspc>; eos.
    >>> logits = torch.tensor([[[0.5, 1.0, -1.0], [0.0, 0.0, 2.0], [1.0, 3.0, 0.0], [9.0, 9.0, 9.0]]])
    >>> actions = torch.tensor([[0, 1, 2, 1]])  # the noise transition's action is the intended eos
    >>> valid = torch.tensor([[False, True, True, True]])  # also the expert mask: all are data transitions
    >>> done = torch.tensor([[False, False, False, True]])  # eos ended the episode
    >>> V = torch.logsumexp(logits[0], dim=-1); V.round(decimals=3)
    tensor([ 1.5550,  2.2400,  3.1700, 10.0990])
    >>> r = torch.stack([logits[0, 0, 1] - 0.9 * V[1], logits[0, 1, 2] - 0.9 * V[2], logits[0, 2, 1] - 0.9 * 0])
    >>> r.round(decimals=3)  # eos (the intended action), <bkspc>, eos (V = 0 after it); logits[0, 3] unused
    tensor([-1.0160, -0.8530,  3.0000])
    >>> loss, stats = seqmatch_loss(logits, actions, valid, valid, torch.tensor([True]), done, gamma=0.9, alpha=0.5)
    >>> {name: round(x.item(), 3) for name, x in stats.items()}, round(loss.item(), 3)
    ({'expert': -0.377, 'value': 0.699, 'chi2': 1.793, 'reward_data': 0.377, 'reward_model': nan}, 2.115)

    Here expert = -mean(r), value = mean(V[:3] - 0.9 * [V[1], V[2], 0]), chi2 = mean(r^2) / (4 * 0.5), and
    with no model rows their group is dropped."""
    logits = logits.float()
    V = torch.logsumexp(logits, dim=-1)  # (B, n): V of the state after each position
    Q = logits[:, :-1].gather(-1, actions[:, 1:, None]).squeeze(-1)  # (B, n-1): l(a|u) of each action
    V_now = V[:, :-1]  # (B, n-1): V(u)
    V_next = V[:, 1:].masked_fill(done[:, 1:], 0.0)  # (B, n-1): V(u'), 0 at end-of-sequence
    reward = Q - gamma * V_next  # (B, n-1)
    value = V_now - gamma * V_next  # (B, n-1)

    valid = valid[:, 1:]
    data_mask = valid & is_data[:, None]
    model_mask = valid & ~is_data[:, None]
    groups = [g for g in (data_mask, model_mask) if g.any()]  # average within each group, then over groups
    expert_term = -masked_mean(reward, data_mask & expert[:, 1:])
    value_term = sum(masked_mean(value, g) for g in groups) / len(groups)
    chi2_term = sum(masked_mean(reward ** 2, g) for g in groups) / len(groups) / (4 * alpha)
    loss = expert_term + value_term + chi2_term

    nan = torch.tensor(float('nan'))
    stats = {
        'expert': expert_term.detach(), 'value': value_term.detach(), 'chi2': chi2_term.detach(),
        'reward_data': masked_mean(reward, data_mask).detach() if data_mask.any() else nan,
        'reward_model': masked_mean(reward, model_mask).detach() if model_mask.any() else nan,
    }
    return loss, stats


def bc_loss(logits, actions, expert):
    """Behaviour cloning: cross-entropy of the expert's actions (the intended token at a noise token).
    logits (B, n, A), actions and expert (B, n)."""
    targets = actions[:, 1:].masked_fill(~expert[:, 1:], -1)  # (B, n-1); -1 = not an expert action
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           ignore_index=-1)

# -----------------------------------------------------------------------------
# Seeing the masking of section 2: python seqmatch.py 'abc<d' --n_prompt=2


def show_masking(row, n_prompt):
    """Print what backspace_inputs makes of one row written as characters, '<' standing for <bkspc>: for
    each position its input id, position id, the positions it attends to and the state whose policy its
    logits row is. (Characters serve as token ids here: backspace_inputs needs only bkspc_id to be one.)"""
    tokens = torch.tensor([[ord(c) for c in row]])  # (1, n)
    input_ids, position_ids, attn_mask = backspace_inputs(tokens, ord('<'), n_prompt)
    print(' j  token  input id  position id  ' + 'attends to'.ljust(2 * len(row) - 1) + '  logits row j is the policy at')
    for j, c in enumerate(row):
        grid = ' '.join('x' if m else '.' for m in attn_mask[0, j].tolist()).ljust(len('attends to'))
        state = ''.join(map(chr, apply_backspaces(tokens[0, :j + 1], ord('<'))))
        print(f"{j:2d}    {c}       {chr(input_ids[0, j])}      {position_ids[0, j].item():6d}       {grid}  {state}")


if __name__ == '__main__':
    import argparse
    parser = argparse.ArgumentParser(description="Print the backspace masking of one row (section 2).")
    parser.add_argument('row', help="the row as characters, '<' for <bkspc>, e.g. 'abc<d'")
    parser.add_argument('--n_prompt', type=int, default=1, help="the first n_prompt characters are the prompt")
    args = parser.parse_args()
    try:
        show_masking(args.row, args.n_prompt)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
