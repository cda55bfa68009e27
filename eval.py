"""
Compare trained models: prints one markdown table, one row per checkpoint.
  arithmetic:  exact-match accuracy of the answer after applying the backspaces, greedy (<bkspc>
               forbidden) and sampled (temperature 1.0, 8 answers per question), the backspace rate, how
               often a backspace removed a wrong character, and, teacher-forced, whether the model writes
               the right digit, deletes its own mistakes, and what its implicit rewards price them at;
  text:        val cross-entropy, and statistics of continuations sampled from held-out prompts (the same
               prompts for every checkpoint, their true continuations in a first row for reference): the
               fraction of generated words that occur in the training text, distinct-2 (unique word pairs /
               word pairs), the entropy of the character 3-gram distribution, the backspace rate, (char-level)
               the fraction of backspaces that deleted a rare character: one that follows the character before it
               less than 1% of the time in the training text; the paper's diversity and token 4-gram entropy
               (textmetrics.py), the perplexity of the continuations under the model itself and, with
               --mauve=True, under the featurizer, and MAUVE against the true continuations. Each sampled column
               is the mean ± the standard deviation over sampling_seeds samplings. docs/eval.md has the details.
$ python eval.py --out_dirs=out-shakespeare-char-mle,out-shakespeare-char-bc,out-shakespeare-seqmatch --mauve=True
$ python eval.py --out_dirs=out-arithmetic-mle,out-arithmetic-bc,out-arithmetic-seqmatch --split=test
"""
import importlib.metadata
import json
import math
import os
import pickle
import re

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import textmetrics
from batches import dataset_dir, random_windows, token_file
from model import auto_device, load_model
from seqmatch import apply_backspaces, generate, mle_loss, soft_values
from tokenizer import Tokenizer

# -----------------------------------------------------------------------------
out_dirs = 'out-shakespeare-char-mle,out-shakespeare-seqmatch'  # comma-separated runs (each with a ckpt.pt)
split = 'val'  # arithmetic: 'val' to choose settings; to report, 'test' (the paper's 200) or 'unseen' (~1,800 more)
eval_iters = 50  # text: batches of 12 for the val cross-entropy
num_samples = 256  # text: held-out prompts, each continued once per sampling seed
prompt_len = 16  # text: tokens of val data that start each continuation
max_new_tokens = 0  # text: actions sampled after each prompt, <bkspc> included; 0: the rest of the first run's block
sampling_seeds = 3  # text: sample with seeds seed, seed + 1, ...: each sampled column is their mean ± std
temperature = 1.0  # sampling temperature (arithmetic also reports greedy)
samples_per_question = 8  # arithmetic: sampled answers per question (averages out the sampling noise)
mauve = False  # text: also MAUVE against the true continuations, and the perplexity under the featurizer
featurizer = 'gpt2-large'  # mauve: a Hugging Face causal LM (hub name or folder), or a ckpt.pt of this repository
mauve_scaling_factor = 5.0  # mauve: the constant c of MAUVE's divergence curve, exp(-c KL) (mauve-text's default)
json_path = ''  # text: also write every row's numbers (each sampling seed's) to this JSON file; '' = none
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
    losses, g = [], torch.Generator().manual_seed(seed)  # the same val batches for every checkpoint
    for _ in range(eval_iters):
        rows = random_windows(data_dir, 'val', 12, model.config.block_size + 1, g).to(device)
        losses.append(mle_loss(model(rows[:, :-1])[..., :n_actions], rows[:, 1:]).item())
    return sum(losses) / len(losses)


WORD = re.compile(r"[A-Za-z']+")
GENERATE_ROWS = 64  # continuations per call of generate: bounds the KV cache's memory and paces the progress bar


def training_text(data_dir, tokenizer, meta):
    """What the char-level columns need from the training text: its words, and P(next character | the one before)
    as a (bkspc_id, bkspc_id) array. (None, None) for a BPE or a large dataset, which has no such columns ('-')."""
    train = token_file(data_dir, 'train')
    if meta['tokenizer'] != 'char' or len(train) >= 2_000_000:
        return None, None
    train = train.astype(np.int64)
    known = set(WORD.findall(tokenizer.decode(train.tolist())))
    bigrams = np.zeros((tokenizer.bkspc_id, tokenizer.bkspc_id))
    np.add.at(bigrams, (train[:-1], train[1:]), 1)
    return known, bigrams / bigrams.sum(axis=1, keepdims=True).clip(min=1)


def draw_held_out(data_dir, eos_id):
    """Windows of val data at offsets drawn from a generator of their own seeded with seed, so that every checkpoint
    gets the same: (prompts (num_samples, prompt_len), the true continuation of each, a list of up to max_new_tokens
    tokens (up to an eos_id), and sampling_seeds more sets of num_samples such lists from elsewhere in val: held-out
    text that the first row compares with the true continuations, to show what MAUVE gives text from their source)."""
    g = torch.Generator().manual_seed(seed)
    rows = random_windows(data_dir, 'val', num_samples * (1 + sampling_seeds), prompt_len + max_new_tokens, g)
    texts = [until_eos(text, eos_id) for text in rows[:, prompt_len:].tolist()]
    return rows[:num_samples, :prompt_len], texts[:num_samples], [texts[k * num_samples:(k + 1) * num_samples]
                                                                  for k in range(1, 1 + sampling_seeds)]


def until_eos(tokens, eos_id):
    """The tokens of a text up to its first eos_id (the end of a document), if any."""
    return tokens[:tokens.index(eos_id)] if eos_id in tokens else tokens


@torch.no_grad()
def sample_continuations(model, tokenizer, prompts, bar):
    """One continuation of each prompt, from torch's global generator: (the tokens each leaves after its backspaces,
    up to an eos_id; the number of actions taken; the deletions, as typed_and_deleted gives them)."""
    texts, n_actions, deletions = [], 0, []
    for chunk in prompts.split(GENERATE_ROWS):
        tokens, valid, _ = generate(model, chunk.to(device), max_new_tokens, tokenizer.bkspc_id,
                                    temperature=temperature, eos_id=tokenizer.eos_id)
        for prompt, row, ok in zip(chunk.tolist(), tokens[:, prompt_len:].tolist(), valid[:, prompt_len:].tolist()):
            actions = [t for t, v in zip(row, ok) if v]
            text, deleted = typed_and_deleted(prompt, actions, tokenizer.bkspc_id)
            texts.append(until_eos(text, tokenizer.eos_id))
            n_actions += len(actions)
            deletions += deleted
        bar.update(len(chunk))
    return texts, n_actions, deletions


def text_statistics(texts, tokenizer, known):
    """The columns that need only the texts (lists of token ids): {column: value}; 'in_train' only with the training
    text's words (known)."""
    decoded = [tokenizer.decode(t) for t in texts]
    # whole words only: drop each continuation's first and last word, which the cut may have split
    words = [w for t in decoded for w in WORD.findall(t)[1:-1]]
    pairs = [p for t in decoded for p in zip(WORD.findall(t), WORD.findall(t)[1:])]
    stats = {'distinct2': len(set(pairs)) / max(len(pairs), 1), 'char_entropy': textmetrics.ngram_entropy(decoded, 3),
             'diversity': textmetrics.diversity(texts), 'entropy4': textmetrics.ngram_entropy(texts, 4)}
    if known is not None:
        stats['in_train'] = sum(w in known for w in words) / max(len(words), 1)
    return stats


def featurize(texts, tokenizer, desc):
    """(MAUVE's features, perplexity) of the texts (lists of token ids) under the featurizer."""
    try:
        features, nll, n_tokens = reader.read([tokenizer.decode(t) for t in texts], desc)
    except ValueError as e:  # a checkpoint's vocabulary without a character of this text
        raise SystemExit(f"--featurizer={featurizer} cannot read this dataset's text: {e}")
    return features, textmetrics.perplexity(nll, n_tokens)


def reference_row(held, tokenizer, known):
    """The true continuations' columns, where they have one: {column: [value]}; MAUVE, one value per sampling seed,
    is that of other held-out text against them."""
    _, continuations, others = held
    values = {k: [v] for k, v in text_statistics(continuations, tokenizer, known).items()}
    if mauve:
        features, ppl = featurize(continuations, tokenizer, 'featurizing the true continuations')
        values['ppl_featurizer'] = [ppl]
        values['mauve'] = [textmetrics.mauve(featurize(texts, tokenizer, 'featurizing other held-out text')[0],
                                             features, mauve_scaling_factor, seed + s) for s, texts in enumerate(others)]
    return values


def text_row(model, tokenizer, data_dir, held, known, follows, name):
    """A checkpoint's columns: {column: [value, one per sampling seed]} ([one value] for the val cross-entropy)."""
    values = {'ce': [val_cross_entropy(model, data_dir, tokenizer.bkspc_id + 1)]}
    prompts, continuations, _ = held
    print(f"{name}: sampling {sampling_seeds} x {num_samples} continuations of {max_new_tokens} actions, then "
          f"reading them with the model itself{' and the featurizer' if mauve else ''}")
    bar = tqdm(total=sampling_seeds * num_samples, desc='sampling', unit='continuation', leave=False)
    samples = []
    for s in range(sampling_seeds):
        torch.manual_seed(seed + s)
        samples.append(sample_continuations(model, tokenizer, prompts, bar))
    bar.close()
    itself = textmetrics.CheckpointFeaturizer(model, tokenizer)
    for s, (texts, n_actions, deletions) in enumerate(samples):
        stats = text_statistics(texts, tokenizer, known)
        stats['bkspc_rate'] = len(deletions) / max(n_actions, 1)
        if follows is not None:
            stats['rare'] = sum(follows[prev, tok] < 0.01 for _, tok, prev in deletions) / max(len(deletions), 1)
        _, nll, n_tokens = itself.read([tokenizer.decode(t) for t in texts], f'seed {seed + s}: the model reads')
        stats['ppl_model'] = textmetrics.perplexity(nll, n_tokens)
        if mauve:
            features, stats['ppl_featurizer'] = featurize(texts, tokenizer, f'seed {seed + s}: featurizing')
            # the true continuations cut to the generated texts' lengths (shortened by the backspaces), so that MAUVE
            # does not tell them apart by their length
            truth = [c[:len(t)] for c, t in zip(continuations, texts)]
            stats['mauve'] = textmetrics.mauve(features, featurize(truth, tokenizer, f'seed {seed + s}: featurizing '
                                                                   f'the true continuations')[0],
                                               mauve_scaling_factor, seed + s)
        for k, v in stats.items():
            values.setdefault(k, []).append(v)
    return values


TEXT_COLUMNS = [  # (key, header, format), in the table's order
    ('ce', 'val cross-entropy', '{:.4f}'), ('in_train', 'words in training text', '{:.3f}'),
    ('distinct2', 'distinct-2', '{:.3f}'), ('char_entropy', 'char 3-gram entropy (bits)', '{:.2f}'),
    ('bkspc_rate', 'backspace rate', '{:.4f}'), ('rare', 'backspaces that deleted a rare character', '{:.2f}'),
    ('diversity', 'diversity', '{:.3f}'), ('entropy4', '4-gram entropy (bits)', '{:.2f}'),
    ('ppl_model', 'perplexity (the model)', '{:.2f}')]
if mauve:
    TEXT_COLUMNS += [('ppl_featurizer', 'perplexity (featurizer)', '{:.2f}'), ('mauve', 'MAUVE', '{:.3f}')]

if mauve:  # before any sampling: without mauve-text or the featurizer, stop here in one line
    try:
        textmetrics.mauve_text()
    except ImportError as e:
        raise SystemExit(str(e))
    mauve_version = importlib.metadata.version('mauve-text')
    print(f"loading the featurizer {featurizer}")
    try:
        reader = textmetrics.load_featurizer(featurizer, device)
    except (OSError, ImportError, ValueError, pickle.UnpicklingError) as e:  # (offline, the hub's errors are OSErrors)
        raise SystemExit(f"--featurizer={featurizer} cannot be loaded ({' '.join(str(e).split())}); offline, give a "
                         f"folder with a saved Hugging Face causal LM, or a checkpoint of this repository "
                         f"(--featurizer=out-shakespeare-char-mle/ckpt.pt)")

if json_path and not os.path.isdir(os.path.dirname(json_path) or '.'):  # before hours of sampling, not after
    raise SystemExit(f"--json_path={json_path}: there is no folder {os.path.dirname(json_path)} to write it in")

rows = []
first_data_dir = held = None  # text: the held-out prompts and true continuations, drawn once, for every checkpoint
for out_dir in out_dirs.split(','):
    torch.manual_seed(seed)  # arithmetic: the answers of checkpoints of one shape are sampled from the same stream
    try:  # no checkpoint or base model, one that could run code, a model that does not fit this transformers
        model, checkpoint = load_model(os.path.join(out_dir, 'ckpt.pt'), device)
    except (OSError, ImportError, ValueError, pickle.UnpicklingError) as e:
        raise SystemExit(f"error: {e}")
    model.eval()
    meta, config = checkpoint['meta'], checkpoint['config']
    data_dir = dataset_dir(config['dataset'])
    first_data_dir = first_data_dir or data_dir
    if data_dir != first_data_dir:
        raise SystemExit(f"one table compares runs of one dataset: {out_dir} was trained on {data_dir}, the runs "
                         f"before it on {first_data_dir}")
    try:
        tokenizer = Tokenizer(meta)
    except (OSError, ImportError) as e:  # GPT-2's BPE files or a Hugging Face tokenizer unavailable offline
        raise SystemExit(str(e))
    name = f"{out_dir} ({config['objective']})"
    if meta.get('task') == 'arithmetic':
        if mauve or json_path:
            raise SystemExit(f"--mauve and --json_path are for text datasets, and {out_dir} is an arithmetic run")
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
        max_new_tokens = max_new_tokens or model.config.block_size - prompt_len
        if prompt_len + max_new_tokens > model.config.block_size or max_new_tokens <= 0:
            raise SystemExit(f"prompt_len + max_new_tokens = {prompt_len} + {max_new_tokens} does not fit the block "
                             f"size {model.config.block_size} of {out_dir}: lower --prompt_len or --max_new_tokens")
        try:  # a val split shorter than the windows stops in one line
            if held is None:
                held = draw_held_out(data_dir, tokenizer.eos_id)
                known, follows = training_text(data_dir, tokenizer, meta)
                rows.append(('val text (the true continuations)', None, reference_row(held, tokenizer, known)))
            rows.append((name, out_dir, text_row(model, tokenizer, data_dir, held, known, follows, name)))
        except ValueError as e:
            raise SystemExit(str(e))
    print(f"evaluated {out_dir}")

if meta.get('task') == 'arithmetic':
    print(f"\naccuracy on the {len(problems)} {split} questions (exact match after backspaces): greedy with "
          f"<bkspc> forbidden, and {samples_per_question} sampled answers per question (± a standard error)\n")
    print(f"| checkpoint | greedy | sampled (T={temperature}) | right with a <bkspc> | backspace rate "
          "| backspaces that removed a wrong character (count) | P(right) | P(right), first character "
          "| P(right), end of line | P(<bkspc> after a mistake) | P(<bkspc> after the right character) "
          "| round trip r(u,w) + gamma r(u+w,<bkspc>) | r at end of line |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print('\n'.join(rows))
else:
    seeds = list(range(seed, seed + sampling_seeds))
    print(f"\n{num_samples} continuations of {max_new_tokens} actions after {prompt_len}-token val prompts at temperature "
          f"{temperature}, sampled with the seeds {', '.join(map(str, seeds))}: each sampled column is the mean ± the "
          f"standard deviation over the seeds")
    if mauve:
        print(f"MAUVE (mauve-text {mauve_version}): featurizer {featurizer}, its final hidden state at a text's last "
              f"token; each checkpoint's {num_samples} continuations of a seed against the true continuations, each "
              f"cut to the generated one's length; scaling factor {mauve_scaling_factor}, k-means seeded with the "
              f"sampling seed. First row: {num_samples} other windows of val text against the true continuations")
    print(f"\n| checkpoint | {' | '.join(header for _, header, _ in TEXT_COLUMNS)} |")
    print(f"|---|{'---|' * len(TEXT_COLUMNS)}")
    for name, _, values in rows:
        print(f"| {name} | {' | '.join(textmetrics.table_cell(values.get(key), fmt) for key, _, fmt in TEXT_COLUMNS)} |")
    if json_path:
        settings = dict(num_samples=num_samples, prompt_len=prompt_len, max_new_tokens=max_new_tokens,
                        temperature=temperature, seeds=seeds, mauve=mauve, featurizer=featurizer if mauve else None,
                        mauve_scaling_factor=mauve_scaling_factor if mauve else None)
        with open(json_path, 'w') as f:  # NaN where a metric is undefined (no n-grams), as Python's json reads it
            json.dump({'settings': settings, 'columns': TEXT_COLUMNS, 'rows': [{'name': name, 'out_dir': out, 'values': values}
                                                      for name, out, values in rows]}, f, indent=1)
