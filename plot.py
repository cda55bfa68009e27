"""
Training curves of one or more runs side by side, read from each run's out_dir/log.jsonl (train.py
writes it): the val loss, the backspace rate of the rollouts, and the reward gap between data and
rollouts (reward_data - reward_model), against the iteration. One PNG; a dotted line marks where
SequenceMatch switched on. MLE and BC runs have no rollouts, so they appear in the val loss only.
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

panels = [('val_loss', 'val loss'), ('bkspc_rate', 'backspace rate of the rollouts'),
          ('reward_gap', 'reward gap: reward_data - reward_model')]
fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.8))
for out_dir in args.out_dirs:
    path = os.path.join(out_dir, 'log.jsonl')
    if not os.path.exists(path):
        raise SystemExit(f"no {path}: plot.py reads the log.jsonl that train.py writes into its out_dir")
    rows = [json.loads(line) for line in open(path)]
    name = os.path.basename(os.path.normpath(out_dir))
    color = None  # each run keeps the color its first curve got
    for ax, (key, title) in zip(axes, panels):
        points = {}  # iteration -> value; a resumed run logs some iterations twice, and the later row wins
        for row in rows:
            if key == 'reward_gap' and 'reward_data' in row:
                points[row['iter']] = row['reward_data'] - row['reward_model']
            elif key in row:
                points[row['iter']] = row[key]
        if points:
            iters = sorted(points)
            color = ax.plot(iters, [points[i] for i in iters], label=name, color=color)[0].get_color()
        for row in rows:
            if row.get('event') == 'seqmatch_on':
                ax.axvline(row['iter'], color=color, linestyle=':')
        ax.set_title(title)
        ax.set_xlabel('iteration')
axes[0].legend()
fig.tight_layout()
fig.savefig(output, dpi=80)
print(f"wrote {output}")
