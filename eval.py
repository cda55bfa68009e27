"""
Compare trained models: prints one markdown table, one row per checkpoint.
  arithmetic:  exact-match accuracy of the answer after applying the backspaces, greedy (<bkspc>
               forbidden) and sampled (temperature 1.0, 8 answers per question), the backspace rate, how
               often a backspace removed a wrong character, and, teacher-forced, whether the model writes
               the right digit, deletes its own mistakes, and what its implicit rewards price them at;
  text:        val cross-entropy, and statistics of sampled continuations: the fraction of generated
               words that occur in the training text, distinct-2 (unique word pairs / word pairs),
               the entropy of the character 3-gram distribution, the backspace rate, and (char-level)
               the fraction of backspaces that deleted a rare character: one that follows the character
               before it less than 1% of the time in the training text.
$ python eval.py --out_dirs=out-arithmetic-mle,out-arithmetic-bc,out-arithmetic-seqmatch --split=test
"""
import math
import os
import pickle
import re
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from batches import dataset_dir, random_windows
from model import auto_device, load_model
from seqmatch import apply_backspaces, generate, mle_loss, soft_values
from tokenizer import Tokenizer

# -----------------------------------------------------------------------------
out_dirs = 'out-shakespeare-char-mle,out-shakespeare-seqmatch'  # comma-separated runs (each with a ckpt.pt)
split = 'val'  # arithmetic: 'val' to choose settings; to report, 'test' (the paper's 200) or 'unseen' (~1,800 more)
eval_iters = 50  # text: batches of 12 for the val cross-entropy
num_samples = 64  # text: sampled continuations
prompt_len = 16  # text: tokens of val data that start each continuation
temperature = 1.0  # sampling temperature (arithmetic also reports greedy)
samples_per_question = 8  # arithmetic: sampled answers per question (averages out the sampling noise)
seed = 1337  # random seed of the batches, prompts and samples
device = 'auto'  # 'auto' (cuda, then mps, then cpu), or 'cpu', 'cuda', 'mps'
# -----------------------------------------------------------------------------
exec(open('configurator.py').read())  # overrides from the command line or a config file
device = auto_device(device)


def typed_and_deleted(prompt, actions, bkspc_id):
    """The answer a prompt's actions leave after the backspaces and, for each <bkspc>, (the index in the
    answer at which the deleted token had been typed, that token, the token before it)."""
    row = list(prompt) + list(actions)
    text, deleted = apply_backspaces(row, bkspc_id, len(prompt))
    deletions = []
    for i in deleted:
        state = apply_backspaces(row[:i], bkspc_id)[0]  # the text in which row[i] was typed
        deletions.append((len(state) - len(prompt), row[i], state[-1]))
    return text[len(prompt):], deletions


def read_problems(data_dir):
    """[(question, answer)] of the split, as written by data/arithmetic/prepare.py."""
    with open(os.path.join(data_dir, f'{split}.txt')) as f:
        return [line.rstrip('\n').split('\t') for line in f]


@torch.no_grad()
def answer_questions(model, tokenizer, problems, temp, n_samples, allow_bkspc=True):
    """Answer every question n_samples times. Returns (right, stats): right (len(problems),) is the
    fraction of each question's answers that are exactly right after the backspaces; stats, over all
    answers: backspace rate, the fraction of backspaces that removed a wrong character, their number, and
    the fraction of answers that are right and used a <bkspc> (rescued, or at least not spoiled, by it)."""
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
                text, deletions = typed_and_deleted(prompt, actions, tokenizer.bkspc_id)
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
    P(right): the policy's probability of the right character, given that it writes one (not <bkspc>),
    over all answer characters, at the first one, and at the end of line;
    P(<bkspc> after a mistake): the chance of deleting a wrong character w just written, weighted by
    the policy's P(w), i.e. averaged over the model's own likely mistakes;
    P(<bkspc> after the right character): the chance of deleting a right one;
    the round trip r(u, w) + gamma * r(u + w, <bkspc>) of those mistakes, with the implicit rewards
    r = l(a|u) - gamma * V(u') of the logits: the soft-Q policy writes w with probability at least
    exp(round trip - (1 - gamma^2) V(u)), so only a clearly negative round trip keeps mistakes unlikely;
    r at the end of line: l(eos|u), since V = 0 after the episode ends.
    A <bkspc> returns the model to the state it was in, so sampling gains from it only as far as the
    second number is above the third."""
    bk = tokenizer.bkspc_id
    stats = {k: [] for k in ('p_right', 'p_right_first', 'p_right_eol', 'p_bk_wrong', 'p_bk_right',
                             'round_trip', 'r_eos')}
    for question, answer in problems:
        prefix, target = tokenizer.encode('\n' + question + ' '), tokenizer.encode(answer + '\n')
        # one row per (answer position i, candidate c): prefix + target[:i] + [c, <bkspc>], padded on the right
        # (causal attention: the padding changes nothing before it). The row's tokens are its actions, so
        # soft_values reads off Q = l(c|u) and l(<bkspc>|u + c), and V of every state, as the loss does.
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
            # r(u, c) + gamma * r(u + c, <bkspc>), with r = Q - gamma * V(next state); <bkspc> returns to u
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


@torch.no_grad()
def val_cross_entropy(model, data_dir, n_actions):
    losses = []
    for _ in range(eval_iters):
        rows = random_windows(data_dir, 'val', 12, model.config.block_size + 1).to(device)
        losses.append(mle_loss(model(rows[:, :-1])[..., :n_actions], rows[:, 1:]).item())
    return sum(losses) / len(losses)


WORD = re.compile(r"[A-Za-z']+")


@torch.no_grad()
def text_row(model, tokenizer, data_dir):
    bkspc_id = tokenizer.bkspc_id
    ce = val_cross_entropy(model, data_dir, bkspc_id + 1)
    prompts = random_windows(data_dir, 'val', num_samples, prompt_len).to(device)
    tokens, valid, _ = generate(model, prompts, model.config.block_size - prompt_len, bkspc_id,
                             temperature=temperature, eos_id=tokenizer.eos_id)
    texts, n_actions, deletions = [], 0, []
    for prompt, row, ok in zip(prompts.tolist(), tokens[:, prompt_len:].tolist(), valid[:, prompt_len:].tolist()):
        actions = [t for t, v in zip(row, ok) if v]
        text, deleted = typed_and_deleted(prompt, actions, bkspc_id)
        texts.append(tokenizer.decode(text))
        n_actions += len(actions)
        deletions += deleted
    # whole words only: drop each continuation's first and last word, which the cut may have split
    words = [w for t in texts for w in WORD.findall(t)[1:-1]]
    train = np.fromfile(os.path.join(data_dir, 'train.bin'), dtype=np.uint16).astype(np.int64)
    in_train = rare = float('nan')  # for small char-level training texts only
    if tokenizer.gpt2 is None and len(train) < 2_000_000:
        known = set(WORD.findall(tokenizer.decode(train.tolist())))
        in_train = sum(w in known for w in words) / max(len(words), 1)
        bigrams = np.zeros((bkspc_id, bkspc_id))
        np.add.at(bigrams, (train[:-1], train[1:]), 1)
        follows = bigrams / bigrams.sum(axis=1, keepdims=True).clip(min=1)  # P(next | previous)
        rare = sum(follows[prev, tok] < 0.01 for _, tok, prev in deletions) / max(len(deletions), 1)
    pairs = [p for t in texts for p in zip(WORD.findall(t), WORD.findall(t)[1:])]
    distinct2 = len(set(pairs)) / max(len(pairs), 1)
    trigrams = Counter(t[i:i + 3] for t in texts for i in range(len(t) - 2))
    total = sum(trigrams.values())
    entropy = -sum(c / total * math.log2(c / total) for c in trigrams.values())
    return ce, in_train, distinct2, entropy, len(deletions) / max(n_actions, 1), rare


rows = []
for out_dir in out_dirs.split(','):
    torch.manual_seed(seed)  # every checkpoint sees the same prompts and val batches
    try:
        model, checkpoint = load_model(os.path.join(out_dir, 'ckpt.pt'), device)
    except (OSError, ImportError, pickle.UnpicklingError) as e:  # no checkpoint or base model, one that could run code
        raise SystemExit(f"error: {e}")
    model.eval()
    meta, config = checkpoint['meta'], checkpoint['config']
    data_dir = dataset_dir(config['dataset'])
    tokenizer = Tokenizer(meta)
    name = f"{out_dir} ({config['objective']})"
    if meta.get('task') == 'arithmetic':
        problems = read_problems(data_dir)
        greedy, _ = answer_questions(model, tokenizer, problems, 0, 1, allow_bkspc=False)
        sampled, (rate, fixes, n, rescued) = answer_questions(model, tokenizer, problems, temperature,
                                                              samples_per_question)
        se = sampled.std().item() / math.sqrt(len(problems))  # questions differ more than samples do
        d = mistake_detection(model, tokenizer, problems, config['gamma'])
        rows.append(f"| {name} | {greedy.mean():.3f} | {sampled.mean():.3f} ± {se:.3f} | {rescued:.3f} "
                    f"| {rate:.4f} | {fixes:.2f} ({n}) | {d['p_right']:.3f} | {d['p_right_first']:.3f} "
                    f"| {d['p_right_eol']:.3f} | {d['p_bk_wrong']:.3f} | {d['p_bk_right']:.3f} "
                    f"| {d['round_trip']:.2f} | {d['r_eos']:.2f} |")
    else:
        ce, in_train, distinct2, entropy, rate, rare = text_row(model, tokenizer, data_dir)
        rows.append(f"| {name} | {ce:.4f} | {in_train:.3f} | {distinct2:.3f} | {entropy:.2f} | {rate:.4f} | {rare:.2f} |")
    print(f"evaluated {out_dir}")

if meta.get('task') == 'arithmetic':
    print(f"\naccuracy on the {len(problems)} {split} questions (exact match after backspaces): greedy with "
          f"<bkspc> forbidden, and {samples_per_question} sampled answers per question (± a standard error)\n")
    print(f"| checkpoint | greedy | sampled (T={temperature}) | right with a <bkspc> | backspace rate "
          "| backspaces that removed a wrong character (count) | P(right) | P(right), first character "
          "| P(right), end of line | P(<bkspc> after a mistake) | P(<bkspc> after the right character) "
          "| round trip r(u,w) + gamma r(u+w,<bkspc>) | r at end of line |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
else:
    print(f"\n{num_samples} continuations of {prompt_len}-token val prompts at temperature {temperature}\n")
    print("| checkpoint | val cross-entropy | words in training text | distinct-2 | char 3-gram entropy (bits) "
          "| backspace rate | backspaces that deleted a rare character |")
    print("|---|---|---|---|---|---|---|")
print('\n'.join(rows))
