"""
SequenceMatch (Cundy & Ermon, ICLR 2024) in one file, in the order of the method:

  1. States and actions: a trajectory is a row of tokens; the action <bkspc> deletes the last token.
  2. Backspace masking: one stack rule gives the policy at every state of a row in one forward pass.
  3. Noise augmentation: data never contains <bkspc>, so we insert mistakes and their corrections.
  4. Rollouts: batched sampling with <bkspc> and a step-synchronous KV cache.
  5. The loss: logits are soft Q-values, read as V and Q; the chi^2-mixture objective on data and model
     transitions, and BC.

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

import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# 1. States and actions


def apply_backspaces(tokens, bkspc_id, n_prompt=0):
    """The text a trajectory ends in: each <bkspc> deletes the token before it. Returns (text, deleted):
    the tokens left (a list), and the positions in `tokens` of the tokens that <bkspc>s deleted, in the
    order they were deleted. (Text may become empty here; backspace_inputs refuses that, since the model
    needs at least one token to condition on.) A <bkspc> into the prompt raises ValueError("<bkspc> at
    position {j} would delete into the prompt (the first {n_prompt} tokens)").
    >>> apply_backspaces([5, 6, 7, 9, 9, 8], bkspc_id=9)  # the second <bkspc> deletes 6, at position 1
    ([5, 8], [2, 1])"""
    stack = []  # positions in tokens of the tokens left so far
    deleted = []
    tokens = tokens.tolist() if torch.is_tensor(tokens) else list(tokens)
    for j, tok in enumerate(tokens):
        if tok != bkspc_id:
            stack.append(j)
        elif len(stack) <= n_prompt:
            raise ValueError(f"<bkspc> at position {j} would delete into the prompt (the first {n_prompt} tokens)")
        else:
            deleted.append(stack.pop())
    return [tokens[i] for i in stack], deleted

# -----------------------------------------------------------------------------
# 2. Backspace masking
#
# Row j of the logits must be the policy at the state reached after tokens[0..j], exactly as if the
# model had been run on that state's text alone. We keep a stack of the input positions that make up
# the current state. An ordinary token is pushed. A <bkspc> pops the stack and its position becomes a
# copy of the token now on top (same id, same position id), replacing that entry on the stack. Every
# position attends to exactly the stack after it is processed. The copy sees what the original saw,
# so it computes the same activations and its logits are the policy at the restored state.
#
# A position leaves the stack only at a <bkspc> (the one that pops it, or whose copy replaces it), so
# one number per position says when: removed_at[i]. Query j then attends to key i exactly when
#     i <= j  and  removed_at[i] > j.
# Stacks applies this rule one action at a time for a batch of rows; backspace_inputs runs it over whole
# rows for training, generate runs it step by step while sampling, so both feed the model the same thing.


class Stacks:
    """The stack of every row of a batch, advanced by push, one action per row per call. After the action
    at position j of each row:
      input_ids[:, j], position_ids[:, j]: what the model reads at position j: an ordinary token itself, at
          the stack depth before it is pushed (its index in the state's text); a <bkspc> a copy of the
          token left on top, with that token's position id;
      removed_at[:, i]: the position whose <bkspc> took position i off the stack (n while it is on it).
    All (B, n) LongTensors on the prompt's device. Starts from a prompt (B, P) of plain text, all rows as
    long. (Slot s of the stack always holds a position whose position id is s: a token pushed there, or
    a copy of the one that was.)"""

    def __init__(self, prompt, n):
        B, P = prompt.shape
        device = prompt.device
        self.n = n
        self.rows = torch.arange(B, device=device)
        self.input_ids = torch.zeros(B, n, dtype=torch.long, device=device)  # (B, n)
        self.input_ids[:, :P] = prompt
        self.position_ids = torch.arange(n, device=device).repeat(B, 1)  # (B, n): the prompt's are 0 .. P-1
        self.removed_at = torch.full((B, n), n, device=device)  # (B, n)
        self.stack = torch.arange(n, device=device).repeat(B, 1)  # (B, n): stack[b, :depth[b]], bottom first
        self.depth = torch.full((B,), P, device=device)  # (B,)

    def push(self, j, action, bkspc_id):
        """Position j of every row takes action (B,). A <bkspc> must leave at least one token on the stack."""
        rows, depth = self.rows, self.depth
        backspace = action == bkspc_id  # (B,)
        top = self.stack[rows, (depth - 1).clamp(min=0)]  # (B,): the top, which a <bkspc> pops ...
        below = self.stack[rows, (depth - 2).clamp(min=0)]  # ... and the entry below it, which its copy replaces
        slot = torch.where(backspace, depth - 2, depth)  # (B,): where j goes on the stack
        self.input_ids[:, j] = torch.where(backspace, self.input_ids[rows, below], action)
        self.position_ids[:, j] = slot
        for leaving in (top, below):  # a <bkspc> takes both off the stack (without one these writes change nothing)
            self.removed_at[rows, leaving] = torch.where(backspace, j, self.removed_at[rows, leaving])
        self.stack[rows, slot] = j
        self.depth = slot + 1

    def attends(self, j):
        """(B, n) bool: the keys that query j attends to, the rule of section 2 (keys after j are not written yet)."""
        return (torch.arange(self.n, device=self.removed_at.device) <= j) & (self.removed_at > j)


def attention_mask(removed_at):
    """removed_at: (B, n), as Stacks computes it. Returns the (B, n, n) bool mask of the rule above, True where
    query j (dim 1) attends to key i (dim 2): i <= j and removed_at[:, i] > j. Built on removed_at's device,
    right where the model reads it: the masked inputs travel as (B, n) tensors, never as (B, n, n)."""
    position = torch.arange(removed_at.size(1), device=removed_at.device)  # (n,)
    return (position[None, :] <= position[:, None]) & (removed_at[:, None, :] > position[:, None])  # (B, n, n)


def backspace_inputs(tokens, bkspc_id, n_prompt):
    """tokens: (B, n) trajectories (B may be 0). n_prompt: an int, or one per row.

    The stack of the comment above, as rules: an ordinary token keeps its id, and its position id is the
    stack depth before it is pushed (its index in the state's text); a <bkspc> gets the id and position
    id of the token left on top after the pop. Position j attends to exactly the positions on the stack
    after it (attention_mask(removed_at)), so logits row j is the policy at the state after tokens[:j+1].
    A <bkspc> that would delete into the prompt or leave no token raises ValueError("row {b}: <bkspc> at
    position {j} would delete into the prompt (the first {n_prompt} tokens) or leave the row empty").

    Example: the prompt "ab", then "c", <bkspc>, "d" (ids a=0, b=1, c=2, d=3, <bkspc>=4):
    >>> input_ids, position_ids, removed_at = backspace_inputs(torch.tensor([[0, 1, 2, 4, 3]]), 4, n_prompt=2)
    >>> input_ids.tolist(), position_ids.tolist(), removed_at.tolist()  # c (2) and b (1) leave at the <bkspc> (3)
    ([[0, 1, 2, 1, 3]], [[0, 1, 2, 1, 2]], [[5, 3, 3, 5, 5]])
    >>> show_masking('abc<d', n_prompt=2)  # the same row, '<' for <bkspc>, the mask as a grid (x = attends)
     j  token  input id  position id  attends to  logits row j is the policy at
     0    a       a           0       x . . . .   a
     1    b       b           1       x x . . .   ab
     2    c       c           2       x x x . .   abc
     3    <       b           1       x . . x .   ab
     4    d       d           2       x . . x x   abd

    Returns input_ids, position_ids and removed_at, each (B, n) int64 on tokens' device: the model reads
    model(input_ids, position_ids=position_ids, attn_mask=attention_mask(removed_at))."""
    B, n = tokens.shape
    n_prompt = torch.tensor([n_prompt] * B if isinstance(n_prompt, int) else [int(p) for p in n_prompt],
                            dtype=torch.long)  # (B,)
    # check first: a <bkspc> at j needs more than max(n_prompt, 1) tokens on the stack before it
    is_bkspc = (tokens == bkspc_id).cpu()  # (B, n)
    depth = torch.arange(1, n + 1) - 2 * is_bkspc.cumsum(dim=1)  # (B, n): the stack's size after position j
    bad = is_bkspc & (depth < n_prompt.clamp(min=1)[:, None])  # (B, n)
    if bad.any():
        b, j = bad.nonzero()[0].tolist()  # the first bad row, and its first bad position
        raise ValueError(f"row {b}: <bkspc> at position {j} would delete into the prompt "
                         f"(the first {n_prompt[b]} tokens) or leave the row empty")
    # no <bkspc> comes before every row's prompt is read (nor at position 0): start from that much plain text
    start = max(min(n_prompt.tolist(), default=1), 1)
    stacks = Stacks(tokens[:, :start], n)
    for j in range(start, n):
        stacks.push(j, tokens[:, j], bkspc_id)
    return stacks.input_ids, stacks.position_ids, stacks.removed_at

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
# What the paper states is the augmentation itself (noise tokens, each followed by <bkspc>, inserted into the
# data) and that the augmented rows are an expert acting in an MDP whose environment perturbs its actions;
# crediting the noise transition with the intended token a* is this repository's reading of that MDP.


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
# All rows advance one position per step, so one KV cache serves the batch. Each step applies the stack
# rule of section 2 (Stacks.push) and feeds the model what it says: the newest token, or the copy token
# at a <bkspc>. The rows come out already in the training format: the Stacks that generate returns hold
# their masked inputs, exactly what backspace_inputs(rows) computes, so every logit used while sampling
# is reproduced in training. On a GPU every step has the same shapes (one token per row, attending over
# the whole preallocated cache, where positions not yet written are simply not on the stack), so it
# runs every step with the same kernels.


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
    """prompt: (B, P) token ids of plain text (no <bkspc>), all rows the same length.
    Returns (tokens, valid, stacks): tokens and valid, both (B, P + max_new_tokens) on prompt's device, int64
    and bool, and the Stacks of the rows (their masked inputs: input_ids, position_ids, removed_at, equal to
    backspace_inputs(tokens, bkspc_id, P)).
    tokens is the prompt followed by the actions taken, <bkspc> included; valid[:, j] says that tokens[:, j]
    is an action of the policy: False on the prompt and on the padding after a row's eos_id, True on the
    eos_id action itself (its transition ends the episode and is trained on). After eos_id a row is padded
    with eos_id (0 without an eos_id).
    Actions are sampled from logits[..., :bkspc_id + 1] only (the base vocabulary and <bkspc>; ids above
    are padding of the embedding table), with <bkspc> masked out (-inf) wherever only the prompt is left,
    so a rollout never deletes its prompt.
    allow_bkspc=False never deletes: greedy decoding needs it, since after a <bkspc> the state is the one
    before the mistake and the argmax writes the same token again, forever.
    The model reads the prompt once; after that each step feeds it only the newest token (the copy token
    at a <bkspc>), one per row, and the KV cache (model.new_kv_cache) holds everything before it.
    The model's logits are read, never written (<bkspc> is masked on a copy of them).
    Call model.eval() first: dropout would make the policy differ from the one we train."""
    B, P = prompt.shape
    L = P + max_new_tokens
    assert L <= model.config.block_size, f"prompt + new tokens = {L} > block_size {model.config.block_size}"
    assert max_new_tokens > 0, "generate at least one token"
    pad_id = eos_id if eos_id is not None else 0
    tokens = torch.full((B, L), pad_id, dtype=torch.long, device=prompt.device)  # actions, as returned
    tokens[:, :P] = prompt
    valid = torch.zeros(B, L, dtype=torch.bool, device=prompt.device)
    done = torch.zeros(B, dtype=torch.bool, device=prompt.device)
    stacks = Stacks(prompt, L)  # what the model reads at each position (section 2)

    kv_cache = model.new_kv_cache(B, L)
    logits = model(prompt, kv_cache=kv_cache, cache_pos=0)  # the prompt: plain causal text, columns 0..P-1
    for j in range(P, L):
        policy_logits = logits[:, -1, :bkspc_id + 1].clone()  # (B, A): base vocabulary + <bkspc>
        no_bkspc = (stacks.depth <= P) | (not allow_bkspc)  # (B,): never into the prompt
        policy_logits[:, bkspc_id].masked_fill_(no_bkspc, float('-inf'))
        action = sample_next(policy_logits, temperature, top_k)
        action = torch.where(done, pad_id, action)  # after eos_id: padding, pushed like a token, read by no loss
        tokens[:, j] = action
        valid[:, j] = ~done
        stacks.push(j, action, bkspc_id)
        if eos_id is not None:
            done |= action == eos_id
        if j == L - 1 or done.all():
            break
        # column j of the cache takes the input at j, which attends over the columns <= j on its stack
        S = kv_cache.key_length(j + 1, prompt.device)  # j + 1, or L on a GPU: every step the same shapes
        logits = model(stacks.input_ids[:, j:j + 1], position_ids=stacks.position_ids[:, j:j + 1],
                       attn_mask=stacks.attends(j)[:, None, :S], kv_cache=kv_cache, cache_pos=j)  # (B, 1, S) mask
    for k in range(j + 1, L):  # every row ended early: the padding after it, pushed as backspace_inputs pushes it
        stacks.push(k, tokens[:, k], bkspc_id)
    return tokens, valid, stacks

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
#
# Both losses read the (B, n, A) logits only through two numbers per position, V and Q = l(a|u) of the
# action taken: soft_values is their definition, a few lines of autograd. At GPT-2 shapes that definition
# is costly: autograd keeps a float32 copy of the 50k-wide (bf16) logits for its backward, the largest
# tensor of a step. SoftValues computes exactly the same numbers a chunk of rows at a time with its
# backward written out, so no float32 copy of the whole logits is ever made; train.py uses it through
# chunked_soft_values, and a test holds the two to each other in values and gradients.


def soft_values(logits, actions):
    """logits: (B, n, A) over the action space (any float dtype). actions: (B, n) int64, the action of the
    transition into each position (seqmatch_loss).
    Returns V and Q, both (B, n) float32 (also under bf16 autocast), differentiable with respect to logits:
        V[:, j] = logsumexp(logits[:, j])            the value of the state after position j,
        Q[:, j] = logits[:, j-1, actions[:, j]]      the soft Q-value of the action into position j, taken
                                                     in the state after position j-1; Q[:, 0] = 0.
    >>> V, Q = soft_values(torch.tensor([[[0.0, 3.0], [1.0, 1.0]]]), torch.tensor([[0, 1]]))
    >>> [round(v, 4) for v in V[0].tolist()], Q[0].tolist()  # V = [log(1 + e^3), 1 + log 2]; Q[0, 1] = logits[0, 0, 1]
    ([3.0486, 1.6931], [0.0, 3.0])"""
    logits = logits.float()
    V = torch.logsumexp(logits, dim=-1)  # (B, n)
    Q = logits[:, :-1].gather(-1, actions[:, 1:, None]).squeeze(-1)  # (B, n-1): the action into j, read at row j-1
    return V, F.pad(Q, (1, 0))  # no action leads into position 0


class SoftValues(torch.autograd.Function):
    """soft_values(logits, actions), computed chunk_rows positions at a time and never copying the whole
    logits to float32. The backward recomputes the softmax from the logits and V: the gradient of any
    function of V and Q is softmax(logits) * dV + onehot(action) * dQ. Forward and backward together
    allocate at most the gradient (the logits' size and dtype) and a few chunks of float32 rows at once;
    V and the softmax are computed in float32 also from bf16 logits, the gradient rounded once to bf16."""

    @staticmethod
    def forward(ctx, logits, actions, chunk_rows):
        B, n, A = logits.shape
        rows = logits.flatten(0, 1)  # (B * n, A): a view, also of a slice logits[..., :A] of wider logits
        V = torch.empty(B * n, device=logits.device)  # float32
        for s in range(0, B * n, chunk_rows):
            V[s:s + chunk_rows] = torch.logsumexp(rows[s:s + chunk_rows].float(), dim=-1)
        Q = torch.zeros(B, n, device=logits.device)  # float32; no action leads into position 0
        Q[:, 1:] = logits[:, :-1].gather(-1, actions[:, 1:, None]).squeeze(-1).float()
        ctx.save_for_backward(logits, actions, V)
        ctx.chunk_rows = chunk_rows
        return V.view(B, n), Q

    @staticmethod
    def backward(ctx, dV, dQ):
        logits, actions, V = ctx.saved_tensors
        B, n, A = logits.shape
        rows, dV = logits.flatten(0, 1), dV.flatten()  # (B * n, A), (B * n,)
        grad = torch.empty(B * n, A, dtype=logits.dtype, device=logits.device)
        for s in range(0, B * n, ctx.chunk_rows):
            chunk = slice(s, s + ctx.chunk_rows)
            # the V part: softmax(logits) * dV, with softmax = exp(logits - V), in float32
            if grad.dtype == torch.float32:  # computed in grad's own rows, a pass less than through a temporary
                torch.sub(rows[chunk], V[chunk, None], out=grad[chunk]).exp_().mul_(dV[chunk, None])
            else:  # in a float32 temporary, cast into grad's rows (bf16 logits under autocast)
                grad[chunk] = (rows[chunk].float() - V[chunk, None]).exp_().mul_(dV[chunk, None])
        grad = grad.view(B, n, A)
        # the Q part: dQ[:, j] lands on logits[:, j-1, actions[:, j]], the one logit that Q[:, j] is
        grad[:, :-1].scatter_add_(-1, actions[:, 1:, None], dQ[:, 1:, None].to(grad.dtype))
        return grad, None, None


def chunked_soft_values(logits, actions, chunk_rows=None):
    """soft_values(logits, actions) computed by SoftValues: the same V, Q and gradient, for a fraction of the
    memory. A slice such as logits[..., :A] of the model's wider output is read in place, never copied.
    chunk_rows: positions per pass, by default a few MB of float32 (larger on a GPU, where each pass is a
    kernel launch); the result does not depend on it."""
    A = logits.size(-1)
    if chunk_rows is None:
        chunk_rows = max(1, (2 ** 25 if logits.is_cuda else 2 ** 19) // A)  # 128 MB of float32, or 2 MB (a CPU's cache)
    return SoftValues.apply(logits, actions, chunk_rows)


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def seqmatch_loss(V, Q, valid, expert, is_data, done, gamma, alpha):
    """V, Q: (B, n) float, from soft_values of the backspace-masked forward of the rows: V[:, j] is the
    value of the state after position j, Q[:, j] the logit of the action into position j (taken in the
    state after position j-1).
    valid, expert, done: (B, n) bool for the transition into position j: valid = trained on; expert = it
    counts in the expert term (train.py marks every valid data transition); done = it ended the episode.
    is_data: (B,) bool, True for data rows, False for model rollouts. Column 0 of the masks is ignored
    (no transition leads into the first token), and so are V[:, n-1] unless it is some V_next, and Q[:, 0].
    Returns (loss, stats): the loss a 0-dim float32 tensor, stats a dict of 0-dim tensors detached from
    the graph (they are logged, never differentiated).

    The transition into position j >= 1, with V_next a copy of V that is 0 after the episode ended
    (V itself stays as it is: V[:, j-1] is still the value of the state the transition starts in):
        V_next[:, j] = 0 if done[:, j] else V[:, j]
        r_j = Q[:, j] - gamma * V_next[:, j]            (the implicit reward)
        value_j = V[:, j-1] - gamma * V_next[:, j]
    Terms: the expert term is minus the mean of r_j over the expert transitions, which are those marked
    expert & valid on DATA rows only (an expert mark on a model row is ignored), pooled over all rows (a
    long row weighs in proportion to its transitions; 0 if there are none). The value and chi^2 (r_j^2 /
    (4 alpha)) terms average over the valid transitions of each group (data rows, model rows), pooled
    within the group, then over the groups; a group without valid transitions is dropped (data alone is
    not halved). loss = expert + value + chi2.
    stats: 'expert', 'value', 'chi2' (the three terms), 'reward_data' and 'reward_model' (the mean r_j over
    each group's valid transitions, nan for an empty group).

    Worked example (test_seqmatch_loss_by_hand): vocabulary {0, 1, <bkspc>=2}, eos = 1. Prompt [0]; the
    expert meant eos, the environment wrote the noise 0 instead; <bkspc>; eos. V and Q as soft_values
    gives them for the logits [[0.5, 1, -1], [0, 0, 2], [1, 3, 0], [9, 9, 9]] and the actions [0, 1, 2, 1]
    (the noise transition's action is the intended eos):
    >>> V = torch.tensor([[1.555, 2.240, 3.170, 10.099]])
    >>> Q = torch.tensor([[0.0, 1.0, 2.0, 3.0]])  # l(eos|[0]), l(<bkspc>|[0, 0]), l(eos|[0])
    >>> valid = torch.tensor([[False, True, True, True]])  # also the expert mask: all are data transitions
    >>> done = torch.tensor([[False, False, False, True]])  # eos ended the episode: V_next[:, 3] = 0
    >>> loss, stats = seqmatch_loss(V, Q, valid, valid, torch.tensor([True]), done, gamma=0.9, alpha=0.5)
    >>> {name: round(x.item(), 3) for name, x in stats.items()}, round(loss.item(), 3)
    ({'expert': -0.377, 'value': 0.699, 'chi2': 1.793, 'reward_data': 0.377, 'reward_model': nan}, 2.115)

    Here r = [1 - 0.9 * 2.240, 2 - 0.9 * 3.170, 3 - 0] = [-1.016, -0.853, 3.0], expert = -mean(r),
    value = mean([1.555 - 0.9 * 2.240, 2.240 - 0.9 * 3.170, 3.170 - 0]), chi2 = mean(r^2) / (4 * 0.5),
    and with no model rows their group is dropped."""
    V_now = V[:, :-1]  # (B, n-1): V(u) of the state each transition starts in
    V_next = V[:, 1:].masked_fill(done[:, 1:], 0.0)  # (B, n-1): V(u'), 0 at end-of-sequence
    reward = Q[:, 1:] - gamma * V_next  # (B, n-1)
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


def bc_loss(V, Q, expert):
    """Behaviour cloning: the cross-entropy of the expert's actions (the intended token at a noise token),
    -log pi(a|u) = V(u) - l(a|u), averaged over the transitions into the positions j >= 1 where
    expert[:, j] (column 0 is ignored; 0 if there are none). V, Q: (B, n) from soft_values; expert: (B, n)
    bool. Returns a 0-dim float32 tensor."""
    return masked_mean(V[:, :-1] - Q[:, 1:], expert[:, 1:])


def mle_loss(logits, targets):
    """Maximum likelihood (nanoGPT's objective, the baseline): the cross-entropy of the next tokens targets
    (B, n) under logits (B, n, A) over the action space. <bkspc> is never a target of clean text, but it
    takes its share of the probability, as in BC. Returns a 0-dim float32 tensor."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

# -----------------------------------------------------------------------------
# Seeing the masking of section 2: python seqmatch.py 'abc<d' --n_prompt=2


def show_masking(row, n_prompt):
    """Print what backspace_inputs makes of one row written as characters, '<' standing for <bkspc>: for
    each position its input id, position id, the positions it attends to and the state whose policy its
    logits row is. (Characters serve as token ids here: backspace_inputs needs only bkspc_id to be one.)"""
    tokens = torch.tensor([[ord(c) for c in row]])  # (1, n)
    input_ids, position_ids, removed_at = backspace_inputs(tokens, ord('<'), n_prompt)
    attn_mask = attention_mask(removed_at)  # (1, n, n)
    print(' j  token  input id  position id  ' + 'attends to'.ljust(2 * len(row) - 1) + '  logits row j is the policy at')
    for j, c in enumerate(row):
        grid = ' '.join('x' if m else '.' for m in attn_mask[0, j].tolist()).ljust(len('attends to'))
        state = ''.join(map(chr, apply_backspaces(tokens[0, :j + 1], ord('<'))[0]))
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
