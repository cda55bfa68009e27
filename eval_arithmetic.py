"""
Compare trained arithmetic models (data/arithmetic): prints one markdown table, one row per
checkpoint. For each: exact-match accuracy of the answer after applying the backspaces, greedy
(<bkspc> forbidden) and sampled (temperature 1.0, 8 answers per question), the backspace rate, how
often a backspace removed a wrong character, and, teacher-forced, whether the model writes the right
digit, deletes its own mistakes, and what its implicit rewards price them at. (Text datasets:
eval.py.)
$ python eval_arithmetic.py --out_dirs=out-arithmetic-mle,out-arithmetic-bc,out-arithmetic-seqmatch --split=test
"""
import math
import os

import torch
import torch.nn.functional as F

import textmetrics
from batches import dataset_dir
from checkpoint import LOAD_ERRORS, auto_device, load_model, run_settings
from seqmatch import generate, soft_values
from tokenizer import Tokenizer

# -----------------------------------------------------------------------------
out_dirs = 'out-arithmetic-mle,out-arithmetic-seqmatch'  # comma-separated runs (each with a ckpt.pt)
split = 'val'  # 'val' to choose settings; to report, 'test' (the paper's 200) or 'unseen' (~1,800 more)
temperature = 1.0  # sampling temperature (greedy is reported too)
samples_per_question = 8  # sampled answers per question (averages out the sampling noise)
seed = 1337  # random seed of the samples
device = 'auto'  # 'auto' (cuda, then mps, then cpu), or 'cpu', 'cuda', 'mps'
# -----------------------------------------------------------------------------
exec(open('configurator.py').read())  # overrides from the command line or a config file


def read_problems(data_dir):
    """[(question, answer)] of the split, as written by data/arithmetic/prepare.py."""
    with open(os.path.join(data_dir, f'{split}.txt')) as f:
        return [line.rstrip('\n').split('\t') for line in f]


@torch.no_grad()
def answer_questions(model, tokenizer, problems, temp, n_samples, allow_bkspc=True):
    """Answer every question n_samples times. Returns (right, stats): right (len(problems),) is the
    fraction of each question's answers that are exactly right after the backspaces; stats, over all
    answers: backspace rate, the fraction of backspaces that removed a wrong character, their
    number, and the fraction of answers that are right and used a <bkspc> (rescued, or at least not
    spoiled, by it)."""
    prompts_of = [tokenizer.encode('\n' + question + ' ') for question, _ in problems]
    by_length = {}  # generate() takes prompts of one length at a time
    for k, prompt in enumerate(prompts_of):
        by_length.setdefault(len(prompt), []).append(k)
    right = torch.zeros(len(problems))
    n_actions = n_bkspc = n_fixes = n_right_with_bkspc = 0
    for length, ks in sorted(by_length.items()):
        ks = [k for k in ks for _ in range(n_samples)]
        for chunk in range(0, len(ks), 1024):  # bounds the KV cache's memory
            group = ks[chunk:chunk + 1024]
            prompts = torch.tensor([prompts_of[k] for k in group], device=device)  # (len(group), length)
            tokens, valid, _ = generate(model, prompts, model.config.block_size - length, tokenizer.bkspc_id,
                                     temperature=temp, eos_id=tokenizer.eos_id, allow_bkspc=allow_bkspc)
            for k, prompt, row, ok in zip(group, prompts.tolist(), tokens[:, length:].tolist(),
                                          valid[:, length:].tolist()):
                actions = [t for t, v in zip(row, ok) if v]
                text, deletions = textmetrics.typed_and_deleted(prompt, actions, tokenizer.bkspc_id)
                target = problems[k][1] + '\n'
                is_right = tokenizer.decode(text) == target
                right[k] += is_right / n_samples
                n_actions += len(actions)
                n_bkspc += len(deletions)
                n_fixes += sum(i >= len(target) or tokenizer.token_text(tok) != target[i] for i, tok, _ in deletions)
                n_right_with_bkspc += is_right and len(deletions) > 0
    n_answers = len(problems) * n_samples
    return right, (n_bkspc / max(n_actions, 1), n_fixes / max(n_bkspc, 1), n_bkspc, n_right_with_bkspc / n_answers)


@torch.no_grad()
def mistake_detection(model, tokenizer, problems, gamma):
    """Teacher-forced over every answer character (the newline included) of the split's questions:
      P(right): the policy's probability of the right character, given that it writes one (not
          <bkspc>), over all answer characters, at the first one, and at the end of line;
      P(<bkspc> after a mistake): the chance of deleting a wrong character w just written, weighted
          by the policy's P(w), i.e. averaged over the model's own likely mistakes;
      P(<bkspc> after the right character): the chance of deleting a right one;
      the round trip r(u, w) + gamma * r(u + w, <bkspc>) of those mistakes, with the implicit
          rewards r = l(a|u) - gamma * V(u') of the logits: the soft-Q policy writes w with
          probability at least exp(round trip - (1 - gamma^2) V(u)), so only a clearly negative round
          trip keeps mistakes unlikely;
      r at the end of line: l(eos|u), since V = 0 after the episode ends.
    A <bkspc> returns the model to the state it was in, so sampling gains from it only as far as the
    second number is above the third."""
    bk = tokenizer.bkspc_id
    stats = {k: [] for k in ('p_right', 'p_right_first', 'p_right_eol', 'p_bk_wrong', 'p_bk_right',
                             'round_trip', 'r_eos')}
    for question, answer in problems:
        prefix, target = tokenizer.encode('\n' + question + ' '), tokenizer.encode(answer + '\n')
        # one row per (answer position i, candidate c): prefix + target[:i] + [c, <bkspc>], padded
        # on the right (causal attention: the padding changes nothing before it). The row's tokens
        # are its actions, so soft_values reads off Q = l(c|u) and l(<bkspc>|u + c), and V of every
        # state, as the loss does.
        n = len(prefix) + len(target) + 1
        rows = [prefix + target[:i] + [c, bk] for i in range(len(target)) for c in range(bk)]
        x = torch.tensor([r + [0] * (n - len(r)) for r in rows], device=device)  # (len(target) * bk, n)
        logits = model(x)[..., :bk + 1]  # (rows, n, A)
        V, Q = soft_values(logits, x)  # (rows, n) each
        probs = F.softmax(logits.float(), dim=-1)
        for i, right in enumerate(target):
            at = len(prefix) + i  # where the candidate sits
            block = slice(i * bk, (i + 1) * bk)  # row k of the block has the candidate c = k
            policy = probs[i * bk, at - 1, :bk]  # (bk,): P(c | state), the same in every row of the block
            policy = policy / policy.sum()  # among the characters it may write (not <bkspc>)
            deletes = probs[block, at, bk]  # (bk,): P(<bkspc> | state + c)
            wrong = torch.arange(bk, device=device) != right
            l_u, V_u = Q[block, at], V[i * bk, at - 1]  # (bk,), (): l(c|u), V(u)
            # r(u, c) + gamma * r(u + c, <bkspc>), with r = Q - gamma * V(next state); <bkspc>
            # returns to u
            round_trip = (l_u - gamma * V[block, at]) + gamma * (Q[block, at + 1] - gamma * V_u)  # (bk,)
            stats['p_right'].append(policy[right].item())
            if i == 0:
                stats['p_right_first'].append(policy[right].item())
            if i == len(target) - 1:
                stats['p_right_eol'].append(policy[right].item())
                stats['r_eos'].append(l_u[right].item())
            stats['p_bk_wrong'].append(((policy * deletes)[wrong].sum() / policy[wrong].sum()).item())
            stats['p_bk_right'].append(deletes[right].item())
            stats['round_trip'].append(((policy * round_trip)[wrong].sum() / policy[wrong].sum()).item())
    return {k: sum(v) / len(v) for k, v in stats.items()}


try:
    device = auto_device(device)
    runs = [(out_dir, run_settings(os.path.join(out_dir, 'ckpt.pt'))) for out_dir in out_dirs.split(',')]
except LOAD_ERRORS as e:
    raise SystemExit(f"error: {e}")
for out_dir, checkpoint in runs:  # before any sampling: every run must be an arithmetic one
    if checkpoint['meta'].get('task') != 'arithmetic':
        raise SystemExit(f"{out_dir} was trained on {checkpoint['config']['dataset']}, not an arithmetic task: "
                         f"evaluate text with eval.py")
data_dir = dataset_dir(runs[0][1]['config']['dataset'])
problems = read_problems(data_dir)

rows = []
for out_dir, checkpoint in runs:
    torch.manual_seed(seed)  # the answers of checkpoints of one shape are sampled from the same stream
    try:
        model, checkpoint = load_model(os.path.join(out_dir, 'ckpt.pt'), device)
    except LOAD_ERRORS as e:
        raise SystemExit(f"error: {e}")
    model.eval()
    tokenizer = Tokenizer(checkpoint['meta'])
    greedy, _ = answer_questions(model, tokenizer, problems, 0, 1, allow_bkspc=False)
    sampled, (rate, fixes, n, rescued) = answer_questions(model, tokenizer, problems, temperature,
                                                          samples_per_question)
    se = sampled.std().item() / math.sqrt(len(problems))  # questions differ more than samples do
    d = mistake_detection(model, tokenizer, problems, checkpoint['config']['gamma'])
    rows.append(f"| {out_dir} ({checkpoint['config']['objective']}) | {greedy.mean():.3f} | {sampled.mean():.3f} ± "
                f"{se:.3f} | {rescued:.3f} | {rate:.4f} | {fixes:.2f} ({n}) | {d['p_right']:.3f} "
                f"| {d['p_right_first']:.3f} | {d['p_right_eol']:.3f} | {d['p_bk_wrong']:.3f} | {d['p_bk_right']:.3f} "
                f"| {d['round_trip']:.2f} | {d['r_eos']:.2f} |")
    print(f"evaluated {out_dir}")

print(f"\naccuracy on the {len(problems)} {split} questions (exact match after backspaces): greedy with "
      f"<bkspc> forbidden, and {samples_per_question} sampled answers per question (± a standard error)\n")
print(f"| checkpoint | greedy | sampled (T={temperature}) | right with a <bkspc> | backspace rate "
      "| backspaces that removed a wrong character (count) | P(right) | P(right), first character "
      "| P(right), end of line | P(<bkspc> after a mistake) | P(<bkspc> after the right character) "
      "| round trip r(u,w) + gamma r(u+w,<bkspc>) | r at end of line |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
print('\n'.join(rows))
