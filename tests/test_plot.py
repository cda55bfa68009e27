"""plot.py draws the curves of real train.py logs, and says what to install without matplotlib."""
import os

import pytest

from conftest import ROOT, TINY, run


def test_plot_draws_runs_side_by_side(shakespeare_char, tmp_path):
    pytest.importorskip('matplotlib', reason="needs the optional matplotlib: pip install -r requirements-extra.txt")
    for objective in ('mle', 'seqmatch'):
        run('train.py', 'config/shakespeare_seqmatch.py', f'--objective={objective}',
            f'--out_dir={tmp_path / objective}', '--max_iters=10', '--eval_interval=5', '--bc_warmup_iters=5', *TINY)
    png = tmp_path / 'curves.png'
    result = run('plot.py', str(tmp_path / 'mle'), str(tmp_path / 'seqmatch'), f'--output={png}')
    assert f'wrote {png}' in result.stdout
    assert png.read_bytes().startswith(b'\x89PNG') and png.stat().st_size > 10_000
    run('plot.py', str(tmp_path / 'mle'), str(tmp_path / 'seqmatch'))  # by default, beside the first run
    assert (tmp_path / 'mle' / 'plot.png').read_bytes() == png.read_bytes()
    assert not os.path.exists(os.path.join(ROOT, 'plot.png'))
    result = run('plot.py', str(tmp_path / 'no_run'), check=False)
    assert result.returncode != 0 and 'no_run/log.jsonl' in result.stderr


def test_plot_without_matplotlib_says_what_to_install(tmp_path):
    hide = "import sys; sys.modules['matplotlib'] = None; sys.argv = ['plot.py', 'out']; exec(open('plot.py').read())"
    result = run('-c', hide, check=False)
    assert result.returncode != 0
    assert result.stderr.strip() == ("plot.py needs matplotlib, an optional extra: pip install matplotlib "
                                     "(or pip install -r requirements-extra.txt)")
