"""
Compare trained models of a text dataset, as the SequenceMatch paper does: prints one markdown
table, one row per checkpoint. The val cross-entropy, and statistics of continuations sampled from
held-out prompts (the same prompts for every checkpoint, their true continuations in a first row for
reference): the fraction of generated words that occur in the training text, distinct-2 (unique word
pairs / word pairs), the entropy of the character 3-gram distribution, the backspace rate,
(char-level) the fraction of backspaces that deleted a rare character: one that follows the
character before it less than 1% of the time in the training text; the paper's diversity and token
4-gram entropy (textmetrics.py), the perplexity of the continuations under the model itself and,
with --mauve=True, under the featurizer, and MAUVE against the true continuations. Each sampled
column is the mean ± the standard deviation over sampling_seeds samplings. docs/eval.md has the
details; arithmetic runs: eval_arithmetic.py.
$ python eval.py --out_dirs=out-shakespeare-char-mle,out-shakespeare-char-bc,out-shakespeare-seqmatch --mauve=True
"""
import importlib.metadata
import json
import os
import re

import numpy as np
import torch
from tqdm import tqdm

import textmetrics
from batches import dataset_dir, random_windows, token_file
from checkpoint import LOAD_ERRORS, auto_device, load_model, run_settings
from seqmatch import generate, mle_loss
from tokenizer import Tokenizer

# -----------------------------------------------------------------------------
out_dirs = 'out-shakespeare-char-mle,out-shakespeare-seqmatch'  # comma-separated runs (each with a ckpt.pt)
eval_iters = 50  # batches of 12 for the val cross-entropy
num_samples = 256  # held-out prompts, each continued once per sampling seed
prompt_len = 16  # tokens of val data that start each continuation
max_new_tokens = 0  # actions sampled after each prompt, <bkspc> included; 0: the rest of the first run's block
sampling_seeds = 3  # sample with seeds seed, seed + 1, ...: each sampled column is their mean ± std
temperature = 1.0  # sampling temperature
mauve = False  # also MAUVE against the true continuations, and the perplexity under the featurizer
featurizer = 'gpt2-large'  # mauve: a Hugging Face causal LM (hub name or folder), or a ckpt.pt of this repository
mauve_scaling_factor = 5.0  # mauve: the constant c of MAUVE's divergence curve, exp(-c KL) (mauve-text's default)
json_path = ''  # also write every row's numbers (each sampling seed's) to this JSON file; '' = none
seed = 1337  # random seed of the batches, prompts and samples
device = 'auto'  # 'auto' (cuda, then mps, then cpu), or 'cpu', 'cuda', 'mps'
# -----------------------------------------------------------------------------
exec(open('configurator.py').read())  # overrides from the command line or a config file

# every check before anything is loaded or sampled: the runs' checkpoints, their dataset and block,
# json_path
try:
    device = auto_device(device)
    runs = [(out_dir, run_settings(os.path.join(out_dir, 'ckpt.pt'))) for out_dir in out_dirs.split(',')]
except LOAD_ERRORS as e:
    raise SystemExit(f"error: {e}")
first_dir, first = runs[0]
data_dir = dataset_dir(first['config']['dataset'])
new_tokens = max_new_tokens or first['model_args']['block_size'] - prompt_len  # actions per continuation
for out_dir, checkpoint in runs:
    if checkpoint['meta'].get('task') == 'arithmetic':
        raise SystemExit(f"{out_dir} is an arithmetic run: evaluate it with eval_arithmetic.py")
    if dataset_dir(checkpoint['config']['dataset']) != data_dir:
        raise SystemExit(f"one table compares runs of one dataset: {out_dir} was trained on "
                         f"{checkpoint['config']['dataset']}, {first_dir} on {first['config']['dataset']}")
    block_size = checkpoint['model_args']['block_size']
    if prompt_len + new_tokens > block_size or new_tokens <= 0:
        raise SystemExit(f"prompt_len + max_new_tokens = {prompt_len} + {new_tokens} does not fit the block size "
                         f"{block_size} of {out_dir}: lower --prompt_len or --max_new_tokens")
if json_path and not os.path.isdir(os.path.dirname(json_path) or '.'):
    raise SystemExit(f"--json_path={json_path}: there is no folder {os.path.dirname(json_path)} to write it in")
runs = [out_dir for out_dir, _ in runs]  # read again one at a time, with their models


@torch.no_grad()
def val_cross_entropy(model, data_dir, n_actions):
    """The policy's cross-entropy on eval_iters batches of val text, the same batches for every
    checkpoint."""
    losses, g = [], torch.Generator().manual_seed(seed)
    for _ in tqdm(range(eval_iters), desc='val cross-entropy', unit='batch', leave=False):
        rows = random_windows(data_dir, 'val', 12, model.config.block_size + 1, g).to(device)
        losses.append(mle_loss(model(rows[:, :-1])[..., :n_actions], rows[:, 1:]).item())
    return sum(losses) / len(losses)


WORD = re.compile(r"[A-Za-z']+")
GENERATE_ROWS = 64  # continuations per call of generate: bounds the KV cache's memory and paces the progress bar


def training_text(data_dir, tokenizer, meta):
    """What the char-level columns need from the training text: its words, and P(next character |
    the one before) as a (bkspc_id, bkspc_id) array. (None, None) for a BPE or a large dataset,
    which has no such columns ('-')."""
    train = token_file(data_dir, 'train')
    if meta['tokenizer'] != 'char' or len(train) >= 2_000_000:
        return None, None
    train = train.astype(np.int64)
    known = set(WORD.findall(tokenizer.decode(train.tolist())))
    bigrams = np.zeros((tokenizer.bkspc_id, tokenizer.bkspc_id))
    np.add.at(bigrams, (train[:-1], train[1:]), 1)
    return known, bigrams / bigrams.sum(axis=1, keepdims=True).clip(min=1)


def draw_held_out(data_dir, eos_id):
    """Windows of val data at offsets drawn from a generator of their own seeded with seed, so that
    every checkpoint gets the same: (prompts (num_samples, prompt_len), the true continuation of
    each, a list of up to new_tokens tokens (up to an eos_id), and sampling_seeds more sets of
    num_samples such lists from elsewhere in val: held-out text that the first row compares with the
    true continuations, to show what MAUVE gives text from their source)."""
    g = torch.Generator().manual_seed(seed)
    rows = random_windows(data_dir, 'val', num_samples * (1 + sampling_seeds), prompt_len + new_tokens, g)
    texts = [until_eos(text, eos_id) for text in rows[:, prompt_len:].tolist()]
    return rows[:num_samples, :prompt_len], texts[:num_samples], [texts[k * num_samples:(k + 1) * num_samples]
                                                                  for k in range(1, 1 + sampling_seeds)]


def until_eos(tokens, eos_id):
    """The tokens of a text up to its first eos_id (the end of a document), if any."""
    return tokens[:tokens.index(eos_id)] if eos_id in tokens else tokens


@torch.no_grad()
def sample_continuations(model, tokenizer, prompts, bar):
    """One continuation of each prompt, from torch's global generator: (the tokens each leaves after
    its backspaces, up to an eos_id; the number of actions taken; the deletions, as
    textmetrics.typed_and_deleted gives them)."""
    texts, n_actions, deletions = [], 0, []
    for chunk in prompts.split(GENERATE_ROWS):
        tokens, valid, _ = generate(model, chunk.to(device), new_tokens, tokenizer.bkspc_id,
                                    temperature=temperature, eos_id=tokenizer.eos_id)
        for prompt, row, ok in zip(chunk.tolist(), tokens[:, prompt_len:].tolist(), valid[:, prompt_len:].tolist()):
            actions = [t for t, v in zip(row, ok) if v]
            text, deleted = textmetrics.typed_and_deleted(prompt, actions, tokenizer.bkspc_id)
            texts.append(until_eos(text, tokenizer.eos_id))
            n_actions += len(actions)
            deletions += deleted
        bar.update(len(chunk))
    return texts, n_actions, deletions


def text_statistics(texts, tokenizer, known):
    """The columns that need only the texts (lists of token ids): {column: value}; 'in_train' only
    with the training text's words (known)."""
    decoded = [tokenizer.decode(t) for t in texts]
    # whole words only: drop each continuation's first and last word, which the cut may have split
    words = [w for t in decoded for w in WORD.findall(t)[1:-1]]
    pairs = [p for t in decoded for p in zip(WORD.findall(t), WORD.findall(t)[1:])]
    stats = {'distinct2': len(set(pairs)) / max(len(pairs), 1), 'char_entropy': textmetrics.ngram_entropy(decoded, 3),
             'diversity': textmetrics.diversity(texts), 'entropy4': textmetrics.ngram_entropy(texts, 4)}
    if known is not None:
        stats['in_train'] = sum(w in known for w in words) / max(len(words), 1)
    return stats


def featurize(reader, texts, tokenizer, desc):
    """(MAUVE's features, perplexity) of the texts (lists of token ids) under the featurizer
    reader."""
    try:
        features, nll, n_tokens = reader.read([tokenizer.decode(t) for t in texts], desc)
    except textmetrics.UnreadableTextError as e:  # a checkpoint's vocabulary without a character of this text
        raise SystemExit(f"--featurizer={featurizer} cannot read this dataset's text: {e}")
    return features, textmetrics.perplexity(nll, n_tokens)


def reference_row(held, tokenizer, known, reader):
    """The true continuations' columns, where they have one: {column: [value]}; MAUVE, one value per
    sampling seed, is that of other held-out text against them."""
    _, continuations, others = held
    values = {k: [v] for k, v in text_statistics(continuations, tokenizer, known).items()}
    if mauve:
        features, ppl = featurize(reader, continuations, tokenizer, 'featurizing the true continuations')
        values['ppl_featurizer'] = [ppl]
        values['mauve'] = [textmetrics.mauve(featurize(reader, texts, tokenizer, 'featurizing other held-out text')[0],
                                             features, mauve_scaling_factor, seed + s) for s, texts in enumerate(others)]
    return values


def text_row(model, tokenizer, data_dir, held, known, follows, name, reader):
    """A checkpoint's columns: {column: [value, one per sampling seed]} ([one value] for the val
    cross-entropy)."""
    values = {'ce': [val_cross_entropy(model, data_dir, tokenizer.bkspc_id + 1)]}
    prompts, continuations, _ = held
    print(f"{name}: sampling {sampling_seeds} x {num_samples} continuations of {new_tokens} actions, then "
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
            features, stats['ppl_featurizer'] = featurize(reader, texts, tokenizer, f'seed {seed + s}: featurizing')
            # the true continuations cut to the generated texts' lengths (shortened by the
            # backspaces), so that MAUVE does not tell them apart by their length
            truth = [c[:len(t)] for c, t in zip(continuations, texts)]
            if len(features):  # no MAUVE ('-') where every continuation ended at once: nothing to compare
                stats['mauve'] = textmetrics.mauve(features, featurize(reader, truth, tokenizer, f'seed {seed + s}: '
                                                                       f'featurizing the true continuations')[0],
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


if mauve:  # without mauve-text or the featurizer, stop here in one line
    try:
        textmetrics.mauve_text()
    except ImportError as e:
        raise SystemExit(str(e))
    mauve_version = importlib.metadata.version('mauve-text')
    print(f"loading the featurizer {featurizer}")
    try:
        reader = textmetrics.load_featurizer(featurizer, device)
    except LOAD_ERRORS as e:  # (offline, the hub's errors are OSErrors)
        raise SystemExit(f"--featurizer={featurizer} cannot be loaded ({' '.join(str(e).split())}); offline, give a "
                         f"folder with a saved Hugging Face causal LM, or a checkpoint of this repository "
                         f"(--featurizer=out-shakespeare-char-mle/ckpt.pt)")
else:
    reader = None

rows = []  # (name, out_dir, {column: [values]})
held = None  # the held-out prompts and true continuations, drawn once, for every checkpoint
for out_dir in runs:
    try:  # a base model missing or unavailable offline, a model that does not fit this transformers
        model, checkpoint = load_model(os.path.join(out_dir, 'ckpt.pt'), device)
        tokenizer = Tokenizer(checkpoint['meta'])
        model.eval()
        if held is None:  # a val split shorter than the windows stops in one line
            held = draw_held_out(data_dir, tokenizer.eos_id)
            known, follows = training_text(data_dir, tokenizer, checkpoint['meta'])
            rows.append(('val text (the true continuations)', None, reference_row(held, tokenizer, known, reader)))
    except LOAD_ERRORS as e:
        raise SystemExit(f"error: {e}")
    name = f"{out_dir} ({checkpoint['config']['objective']})"
    rows.append((name, out_dir, text_row(model, tokenizer, data_dir, held, known, follows, name, reader)))
    print(f"evaluated {out_dir}")

seeds = list(range(seed, seed + sampling_seeds))
print(f"\n{num_samples} continuations of {new_tokens} actions after {prompt_len}-token val prompts at temperature "
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
    settings = dict(num_samples=num_samples, prompt_len=prompt_len, max_new_tokens=new_tokens,
                    temperature=temperature, seeds=seeds, mauve=mauve, featurizer=featurizer if mauve else None,
                    mauve_scaling_factor=mauve_scaling_factor if mauve else None)
    with open(json_path, 'w') as f:  # NaN where a metric is undefined (no n-grams), as Python's json reads it
        json.dump({'settings': settings, 'columns': TEXT_COLUMNS,
                   'rows': [{'name': name, 'out_dir': out, 'values': values} for name, out, values in rows]}, f,
                  indent=1)
