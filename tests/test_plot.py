"""plot.py draws the curves of real train.py logs, and says what to install without matplotlib."""
import json
import os

import numpy as np
import pytest

from conftest import ROOT, TINY, run


def drawn(*args):
    """Run plot.py with args and read back what it drew, panel by panel: the y label, the legend's entries (None
    without a legend), the texts, and each curve as (label, alpha, y values)."""
    inspect = (f"import json, sys; sys.argv = ['plot.py', *{list(args)!r}]; exec(open('plot.py').read()); "
               "print(json.dumps([{'ylabel': ax.get_ylabel(), "
               "'legend': ax.get_legend() and [t.get_text() for t in ax.get_legend().get_texts()], "
               "'texts': [t.get_text().strip() for t in ax.texts], "
               "'curves': [(c.get_label(), c.get_alpha(), [float(y) for y in c.get_ydata()]) for c in ax.lines "
               "if c.get_linestyle() != ':']} for ax in axes]))")
    return json.loads(run('-c', inspect).stdout.splitlines()[-1])


def test_plot_draws_runs_side_by_side(shakespeare_char, tmp_path):
    pytest.importorskip('matplotlib', reason="needs the optional matplotlib: pip install -r requirements-extra.txt")
    for objective in ('mle', 'seqmatch'):
        run('train.py', 'config/shakespeare_seqmatch.py', f'--objective={objective}',
            f'--out_dir={tmp_path / objective}', '--max_iters=10', '--eval_interval=5', '--bc_warmup_iters=5', *TINY,
            '--log_interval=2')
    png = tmp_path / 'curves.png'
    result = run('plot.py', str(tmp_path / 'mle'), str(tmp_path / 'seqmatch'), f'--output={png}')
    assert f'wrote {png}' in result.stdout
    assert png.read_bytes().startswith(b'\x89PNG') and png.stat().st_size > 10_000
    run('plot.py', str(tmp_path / 'mle'), str(tmp_path / 'seqmatch'))  # by default, beside the first run
    assert (tmp_path / 'mle' / 'plot.png').read_bytes() == png.read_bytes()
    assert not os.path.exists(os.path.join(ROOT, 'plot.png'))
    result = run('plot.py', str(tmp_path / 'no_run'), check=False)
    assert result.returncode != 0 and 'no_run/log.jsonl' in result.stderr

    val_loss, bkspc_rate, reward_gap = drawn(str(tmp_path / 'mle'), str(tmp_path / 'seqmatch'), f'--output={png}')
    for panel in (val_loss, bkspc_rate, reward_gap):
        assert panel['ylabel'] and 'SequenceMatch on' in panel['texts'], panel
    assert val_loss['legend'] == ['mle', 'seqmatch']
    assert bkspc_rate['legend'] == reward_gap['legend'] == ['seqmatch']  # the MLE run has no rollouts
    assert all(alpha is None for _, alpha, _ in val_loss['curves'])  # evaluations are averages already: not smoothed
    for panel in (bkspc_rate, reward_gap):  # the raw curve, faint, under the smoothed one
        (_, faint, raw), (label, alpha, smoothed) = panel['curves']
        assert faint < 1 and alpha is None and label == 'seqmatch' and len(raw) == len(smoothed) >= 3
        assert smoothed[0] == pytest.approx(raw[0])  # the average starts at the first value, not near 0
    raw, smoothed = reward_gap['curves'][0][2], reward_gap['curves'][1][2]
    assert sum(map(abs, np.diff(smoothed))) < sum(map(abs, np.diff(raw)))  # smoothing takes out some of the noise

    val_loss, bkspc_rate, reward_gap = drawn(str(tmp_path / 'mle'), f'--output={png}')
    assert val_loss['legend'] == ['mle'] and 'SequenceMatch on' not in val_loss['texts']
    for panel in (bkspc_rate, reward_gap):  # nothing to draw: said in the panel, no empty legend
        assert panel['legend'] is None and panel['texts'] == ['none of these runs logged this'] and not panel['curves']


def test_plot_without_matplotlib_says_what_to_install(tmp_path):
    hide = "import sys; sys.modules['matplotlib'] = None; sys.argv = ['plot.py', 'out']; exec(open('plot.py').read())"
    result = run('-c', hide, check=False)
    assert result.returncode != 0
    assert result.stderr.strip() == ("plot.py needs matplotlib, an optional extra: pip install matplotlib "
                                     "(or pip install -r requirements-extra.txt)")
