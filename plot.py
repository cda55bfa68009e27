"""
Training curves of one or more runs side by side, read from each run's out_dir/log.jsonl (train.py
writes it): the val loss, the backspace rate of the rollouts, and the reward gap between data and
rollouts (reward_data - reward_model), against the iteration. One PNG. The last two are logged every
log_interval and noisy: each is drawn faint, under its exponential moving average. A dotted line labelled
'SequenceMatch on' marks where it switched on. MLE and BC runs have no rollouts, so they appear in the val
loss only.
$ python plot.py out-shakespeare-char-mle out-shakespeare-char-bc out-shakespeare-seqmatch
writes out-shakespeare-char-mle/plot.png (the first run's out_dir; --output=... to choose).
Needs matplotlib, an optional extra (pip install -r requirements-extra.txt).
"""
import argparse
import json
import os

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument('out_dirs', nargs='+', metavar='OUT_DIR', help="runs of train.py (each with a log.jsonl)")
parser.add_argument('--output', help="the PNG to write (default: plot.png in the first OUT_DIR)")
args = parser.parse_args()
output = args.output or os.path.join(args.out_dirs[0], 'plot.png')  # beside the runs, not in the repository
try:
    import matplotlib
    matplotlib.use('Agg')  # write a file, open no window
    import matplotlib.pyplot as plt
except ImportError:
    raise SystemExit("plot.py needs matplotlib, an optional extra: pip install matplotlib "
                     "(or pip install -r requirements-extra.txt)")

panels = [  # (log key, title, y label, smoothed)
    ('val_loss', 'val loss', 'cross-entropy on val text (nats/token)', False),  # already a mean of eval_iters batches
    ('bkspc_rate', 'backspace rate of the rollouts', 'share of <bkspc> among the actions', True),
    ('reward_gap', 'reward gap between data and rollouts', 'reward_data - reward_model', True)]


def smooth(values, weight=0.8):
    """Exponential moving average, divided by 1 - weight^n (as TensorBoard does) so that it starts at the first
    value rather than near 0."""
    average, smoothed = 0.0, []
    for n, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        smoothed.append(average / (1 - weight ** n))
    return smoothed


fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.8))
for run, out_dir in enumerate(args.out_dirs):
    path = os.path.join(out_dir, 'log.jsonl')
    if not os.path.exists(path):
        raise SystemExit(f"no {path}: plot.py reads the log.jsonl that train.py writes into its out_dir")
    rows = [json.loads(line) for line in open(path)]
    name = os.path.basename(os.path.normpath(out_dir))
    color = f'C{run}'  # a run has the same color in every panel
    for ax, (key, _, _, smoothed) in zip(axes, panels):
        points = {}  # iteration -> value; a resumed run logs some iterations twice, and the later row wins
        for row in rows:
            if key == 'reward_gap' and 'reward_data' in row:
                points[row['iter']] = row['reward_data'] - row['reward_model']
            elif key in row:
                points[row['iter']] = row[key]
        if points:
            iters = sorted(points)
            values = [points[i] for i in iters]
            if smoothed:  # the raw per-log values, faint, under their moving average
                ax.plot(iters, values, color=color, alpha=0.25, linewidth=0.8)
                values = smooth(values)
            ax.plot(iters, values, color=color, label=name)
            for row in rows:
                if row.get('event') == 'seqmatch_on':
                    ax.axvline(row['iter'], color=color, linestyle=':')
                    ax.text(row['iter'], 0.98, ' SequenceMatch on', transform=ax.get_xaxis_transform(), color=color,
                            rotation=90, ha='left', va='top', fontsize='small')
for ax, (_, title, ylabel, _) in zip(axes, panels):
    ax.set_title(title)
    ax.set_xlabel('iteration')
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    else:  # e.g. only MLE and BC runs, which have no rollouts
        ax.text(0.5, 0.5, 'none of these runs logged this', transform=ax.transAxes, ha='center', color='gray')
fig.tight_layout()
fig.savefig(output, dpi=80)
print(f"wrote {output}")
