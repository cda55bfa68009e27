"""
Regenerate one of the README's tables in one command: train the arms of a recipe (MLE, BC and
SequenceMatch) with `seeds` training seeds each, evaluate every run with eval.py (MAUVE included),
and print one row per arm, each number the mean ± the standard deviation over the training seeds (a
sampled column of a run is first the mean over eval.py's sampling seeds), with the best val loss of
each run's log and its training time. The recipes:
  shakespeare_char: the main job, from scratch on character-level Tiny Shakespeare; MAUVE's
                    featurizer is a fourth run of the MLE recipe.
  smollm2:          SmolLM2-135M fine-tuned with LoRA on Tiny Shakespeare
                    (config/smollm2_shakespeare.py), plus a row for the base model before
                    fine-tuning; MAUVE's featurizer is the base model.
Every run goes to out_root/<arm>-<seed>: a finished run is not trained again and an unfinished one
(an interrupted regeneration) is resumed, so running the command again continues where it stopped.
$ python results.py --seeds=3
$ python results.py --recipe=smollm2 --out_root=out-results-smollm2
$ python results.py --seeds=2 --train_args='--max_iters=200 --eval_interval=100' --out_root=out-results-short
"""
import json
import os
import shlex
import subprocess
import sys

import numpy as np

from checkpoint import load_checkpoint
from textmetrics import table_cell

# -----------------------------------------------------------------------------
recipe = 'shakespeare_char'  # 'shakespeare_char' (the main job) or 'smollm2' (a pretrained LM), see above
seeds = 3  # training seeds per arm: 1337 (the README's single runs), 1338, ...
out_root = 'out-results'  # each run in out_root/<arm>-<seed>; use another out_root for other train_args
train_args = ''  # more train.py settings for every run (the featurizer's too), e.g. '--max_iters=200 --device=cpu'
eval_args = ''  # more eval.py settings, e.g. '--num_samples=64'
featurizer = ''  # MAUVE's featurizer for eval.py; '' = the recipe's (shakespeare_char: trained into out_root)
# -----------------------------------------------------------------------------
exec(open('configurator.py').read())  # overrides from the command line or a config file

SMOLLM2 = 'config/smollm2_shakespeare.py'
ARMS = {  # recipe: [(name, out_dir prefix, the README's train.py arguments)]
    'shakespeare_char': [
        ('MLE', 'mle', ['config/shakespeare_char_mle.py']),
        ('BC', 'bc', ['config/shakespeare_seqmatch.py', '--objective=bc']),
        ('SequenceMatch', 'seqmatch', ['config/shakespeare_seqmatch.py']),
    ],
    'smollm2': [
        # the base model as it comes (one step at learning rate 0: a checkpoint eval.py reads;
        # <bkspc> the mean token)
        ('base model', 'base', [SMOLLM2, '--objective=mle', '--max_iters=1', '--learning_rate=0', '--min_lr=0']),
        ('MLE', 'mle', [SMOLLM2, '--objective=mle']),
        ('BC', 'bc', [SMOLLM2, '--objective=bc']),
        ('SequenceMatch', 'seqmatch', [SMOLLM2]),
    ],
}
EVAL_ARGS = {  # recipe: eval.py's settings (the smollm2 runs: 32-action continuations of 32-token prompts)
    'shakespeare_char': [],
    'smollm2': ['--num_samples=256', '--sampling_seeds=1', '--eval_iters=10', '--prompt_len=32',
                '--max_new_tokens=32'],
}
if recipe not in ARMS:
    raise SystemExit(f"recipe={recipe!r}: expected one of {', '.join(ARMS)}")
# shakespeare_char: a seed that no arm uses: the featurizer, trained on data alone, never saw any
# arm's samples or weights
FEATURIZER_SEED = 0


def run(script, *args):
    """Run one of the repository's scripts, its output going to the terminal; stop in one line if it
    fails."""
    command = [sys.executable, script, *args]
    print(f"$ {shlex.join(command[1:])}", flush=True)
    if subprocess.run(command).returncode != 0:
        raise SystemExit(f"results.py: {shlex.join(command[1:])} failed (its output is above)")


def train(out_dir, args, seed):
    """Train a run into out_dir, unless it is there already: resume it if it is unfinished (an
    interrupted regeneration), skip it if it is done."""
    path = os.path.join(out_dir, 'ckpt.pt')
    common = [*args, f'--seed={seed}', *shlex.split(train_args)]
    if not os.path.exists(path):
        run('train.py', *common, f'--out_dir={out_dir}')
        return
    checkpoint = load_checkpoint(path)
    if checkpoint['iter_num'] >= checkpoint['config']['max_iters']:
        print(f"{out_dir} is trained already (iter {checkpoint['iter_num']}): not training it again")
    else:
        run('train.py', *common, '--init_from=resume', f'--out_dir={out_dir}')


def run_record(out_dir):
    """(best val loss in the run's log.jsonl, the seconds its checkpoint says it trained)."""
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        best = min(row['val_loss'] for row in map(json.loads, f) if 'val_loss' in row)
    return best, load_checkpoint(os.path.join(out_dir, 'ckpt.pt'))['elapsed_s']


try:
    seed_list = [1337 + k for k in range(seeds)]
    arms = ARMS[recipe]
    # the base model does not train: one run of it (its row's spread is 0)
    arm_seeds = {arm: seed_list[:1] if prefix == 'base' else seed_list for arm, prefix, _ in arms}
    runs = {arm: [os.path.join(out_root, f'{prefix}-{s}') for s in arm_seeds[arm]] for arm, prefix, _ in arms}
    for s in seed_list:
        for arm, prefix, args in arms:
            if s in arm_seeds[arm]:
                train(os.path.join(out_root, f'{prefix}-{s}'), args, s)
    if not featurizer and recipe == 'smollm2':
        featurizer = 'models/smollm2'  # the base model, as the paper's featurizer was a pretrained LM
    if not featurizer:
        train(os.path.join(out_root, 'featurizer'), ['config/shakespeare_char_mle.py'], FEATURIZER_SEED)
        featurizer = os.path.join(out_root, 'featurizer', 'ckpt.pt')
    table_path = os.path.join(out_root, 'eval.json')
    run('eval.py', f"--out_dirs={','.join(d for dirs in runs.values() for d in dirs)}", '--mauve=True',
        f'--featurizer={featurizer}', f'--json_path={table_path}', *EVAL_ARGS[recipe], *shlex.split(eval_args))
    with open(table_path) as f:
        table = json.load(f)
    by_dir = {row['out_dir']: row['values'] for row in table['rows']}
    columns = table['columns']  # [key, header, format] of each eval.py column
    records = {d: run_record(d) for dirs in runs.values() for d in dirs}
except OSError as e:  # a run's files unreadable, a full disk
    raise SystemExit(f"results.py: {e}")

settings = table['settings']
print(f"\n{recipe} with {seeds} training seed(s) ({', '.join(map(str, seed_list))}): each number is the mean ± the "
      f"standard deviation over the training seeds; a sampled column of one run is itself the mean over eval.py's "
      f"sampling seeds {settings['seeds']}. eval.py: {settings['num_samples']} continuations of "
      f"{settings['max_new_tokens']} actions after {settings['prompt_len']}-token val prompts; MAUVE's featurizer "
      f"{featurizer}. Training times from the checkpoints: a busy machine takes longer\n")
print(f"| run | best val loss (log) | training time (s) | {' | '.join(header for _, header, _ in columns)} |")
print(f"|---|---|---|{'---|' * len(columns)}")
reference = table['rows'][0]  # the true continuations; its MAUVE's spread is over eval.py's sampling seeds
print(f"| {reference['name']} | - | - | "
      f"{' | '.join(table_cell(reference['values'].get(k, []), fmt) for k, _, fmt in columns)} |")
for arm, dirs in runs.items():
    best = table_cell([records[d][0] for d in dirs], '{:.4f}')
    seconds = table_cell([records[d][1] for d in dirs], '{:.0f}')
    # each run's value: the mean over its sampling seeds; None where eval.py has none (a char-level
    # column of BPE text)
    means = {k: [float(np.mean(by_dir[d][k])) if k in by_dir[d] else None for d in dirs] for k, _, _ in columns}
    print(f"| {arm} | {best} | {seconds} | {' | '.join(table_cell(means[k], fmt) for k, _, fmt in columns)} |")
