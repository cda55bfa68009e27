"""Checkpoints: loading one runs no code, a failed save loses nothing, and a run continues from one exactly."""
import os
import pickle
import re
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, checkpoint, run
from checkpoint import load_checkpoint, load_model


class Payload:
    """Unpickling it calls exec: what a checkpoint from anyone could carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_a_checkpoint_that_carries_code_is_refused(shakespeare_char, tmp_path):
    marker, path = tmp_path / 'the_code_ran', str(tmp_path / 'shared.pt')
    torch.save({'model_args': {}, 'model': {}, 'meta': {'tokenizer': 'char', 'note': Payload(marker)}}, path)
    torch.load(path, weights_only=False)  # the payload is live: an unguarded load runs it
    assert marker.exists()
    marker.unlink()
    for load in (load_checkpoint, load_model):
        with pytest.raises(pickle.UnpicklingError) as refused:
            load(path)
        message = str(refused.value)
        assert path in message and 'refused' in message and '\n' not in message, message
    result = run('train.py', f'--init_from={path}', f'--out_dir={tmp_path / "run"}', *TINY, check=False)
    assert result.returncode != 0
    assert result.stderr.strip() == message, result.stderr  # one line, no traceback
    os.makedirs(tmp_path / 'shared')
    os.replace(path, tmp_path / 'shared' / 'ckpt.pt')
    for script in ('sample.py', 'eval.py'):  # the scripts that read another run's checkpoint
        result = run(script, f'--out_dirs={tmp_path / "shared"}' if script == 'eval.py' else f'--out_dir={tmp_path / "shared"}',
                     check=False)
        assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert 'refused to load' in result.stderr, result.stderr
    assert not marker.exists(), "loading the checkpoint ran the code it carries"


FULL_DISK = """
import builtins, errno, io, os, runpy, sys
real_open = builtins.open
class FullDisk(io.FileIO):
    written = 0
    def write(self, data):  # the first 2,000 bytes land, then the disk is full
        if self.written + len(data) > 2000:
            print(f"full disk after {self.written} bytes", flush=True)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return super().write(data)
def open_on_a_full_disk(file, mode='r', *args, **kwargs):
    if str(file).endswith('ckpt.pt.tmp'):
        return FullDisk(file, mode)
    return real_open(file, mode, *args, **kwargs)
builtins.open = open_on_a_full_disk
sys.argv = ['train.py'] + sys.argv[1:]
sys.path.insert(0, os.getcwd())  # the repository, as when train.py is run directly
runpy.run_path('train.py', run_name='__main__')
"""


def test_a_failed_save_loses_nothing_and_says_so(shakespeare_char, tmp_path):
    out = tmp_path / 'run'
    args = [f'--out_dir={out}', '--objective=mle', '--eval_interval=4', *TINY]
    run('train.py', *args, '--max_iters=4')
    before = (out / 'ckpt.pt').read_bytes()
    script = tmp_path / 'full_disk.py'
    script.write_text(FULL_DISK)
    result = run(str(script), *args, '--max_iters=12', '--init_from=resume', check=False)
    assert 'full disk after' in result.stdout  # the save failed halfway, with part of the file written
    assert result.returncode != 0
    message = result.stderr.strip()
    assert '\n' not in message, f"expected one line, got:\n{message}"
    tmp = f'{out}/ckpt.pt.tmp'
    assert f'saving the checkpoint of iter 8 to {tmp} failed (No space left on device)' in message
    assert f'{out}/ckpt.pt still holds the last good checkpoint (iter 4)' in message
    assert not os.path.exists(tmp), "the half-written file is still there, holding the space it took"
    assert (out / 'ckpt.pt').read_bytes() == before
    assert checkpoint(out)['iter_num'] == 4


def test_resume_continues_exactly(shakespeare_char, tmp_path, monkeypatch):
    """The stopped run builds its batches in two worker processes, the straight one in the training process: a batch
    is a function of its index. Bit for bit needs one thread: with several, PyTorch's CPU kernels may split a sum
    differently from one run to the next, which is not what this test is about."""
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    args = ['config/shakespeare_seqmatch.py', '--eval_interval=10', '--bc_warmup_iters=5', *TINY]
    straight, stopped = str(tmp_path / 'straight'), str(tmp_path / 'stopped')
    run('train.py', *args, f'--out_dir={straight}', '--max_iters=20')
    args.append('--num_workers=2')
    run('train.py', *args, f'--out_dir={stopped}', '--max_iters=10')
    half = checkpoint(stopped)
    assert half['iter_num'] == 10 and len(half['optimizer']['state']) > 0
    result = run('train.py', *args, f'--out_dir={stopped}', '--max_iters=20', '--init_from=resume')
    assert 'iter 15:' in result.stdout and 'iter 5:' not in result.stdout  # it went on from iteration 10
    a, b = checkpoint(straight), checkpoint(stopped)
    assert b['iter_num'] == 20
    for name in a['model']:
        assert torch.equal(a['model'][name], b['model'][name]), f"{name} differs after resuming"
    assert torch.equal(a['processes'][0]['replay']['tokens'], b['processes'][0]['replay']['tokens'])


def test_resume_into_sequencematch_off_a_refresh_boundary(shakespeare_char, tmp_path):
    run('train.py', 'config/shakespeare_seqmatch.py', f'--out_dir={tmp_path}', '--max_iters=4', '--eval_interval=4',
        '--bc_warmup_iters=100', *TINY)  # stopped in the bc warm-up: the checkpoint's replay buffer is empty
    assert len(checkpoint(tmp_path)['processes'][0]['replay']['tokens']) == 0
    # SequenceMatch from iteration 1 now, refreshing at 1, 6, 11, ...: iteration 4 is no refresh
    result = run('train.py', 'config/shakespeare_seqmatch.py', f'--out_dir={tmp_path}', '--max_iters=6',
                 '--eval_interval=4', '--init_from=resume', '--bc_warmup_iters=1', *TINY, '--sample_interval=5')
    assert 'iter 5:' in result.stdout and 'bkspc rate' in result.stdout


def test_ctrl_c_saves_and_the_run_continues_exactly(shakespeare_char, tmp_path, monkeypatch):
    """Ctrl-C mid-run saves where the run is, says the whole command that continues it, and resuming from there
    gives the weights of a run that was never stopped. The Ctrl-C goes to the whole process group, as a terminal
    sends it, batch workers included. One thread: bit for bit needs it (see test_resume_continues_exactly)."""
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    args = ['train.py', 'config/shakespeare_seqmatch.py', '--eval_interval=10', '--bc_warmup_iters=5', *TINY,
            '--num_workers=2']
    stopped, straight = tmp_path / 'stopped', tmp_path / 'straight'
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    proc = subprocess.Popen([sys.executable, *args, f'--out_dir={stopped}', '--max_iters=100000'], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in proc.stdout:
            if line.startswith('iter 5:'):  # training, well before the end
                os.killpg(proc.pid, signal.SIGINT)
                break
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    stop = re.search(r'^interrupted at iter (\d+), saved; continue with: (.*)$', out, re.M)
    assert stop, out + err
    assert stop.group(2) == ' '.join(['python', *args, '--max_iters=100000', '--init_from=resume', f'--out_dir={stopped}'])
    assert proc.returncode == 130 and 'Traceback' not in err, err
    n = int(stop.group(1))
    saved = checkpoint(stopped)
    assert saved['iter_num'] == n and saved['elapsed_s'] > 0
    result = run(*args, f'--out_dir={stopped}', f'--max_iters={n + 6}', '--init_from=resume')
    assert f'resuming training from {stopped}/ckpt.pt at iter {n}, ' in result.stdout
    run(*args, f'--out_dir={straight}', f'--max_iters={n + 6}')
    a, b = checkpoint(straight), checkpoint(stopped)
    assert b['iter_num'] == n + 6
    for name in a['model']:
        assert torch.equal(a['model'][name], b['model'][name]), f"{name} differs after resuming"
    assert torch.equal(a['processes'][0]['replay']['tokens'], b['processes'][0]['replay']['tokens'])
    assert b['elapsed_s'] > saved['elapsed_s']  # the clock went on from the stop, not from zero


def test_ctrl_c_saves_when_the_pipe_to_tee_closed_first(shakespeare_char, tmp_path):
    """`python train.py ... | tee log`, then Ctrl-C in the terminal: the same SIGINT ends tee, so stdout is a pipe
    with no reader when the run tries to say that it saves. It saves all the same, and exits as after a Ctrl-C."""
    out = tmp_path / 'teed'
    proc = subprocess.Popen([sys.executable, 'train.py', 'config/shakespeare_seqmatch.py', '--eval_interval=1000',
                             *TINY, f'--out_dir={out}', '--max_iters=100000'], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in proc.stdout:
            if line.startswith('iter 5:'):
                proc.stdout.close()  # tee is gone
                os.killpg(proc.pid, signal.SIGINT)
                break
        err = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert proc.returncode == 130 and 'Traceback' not in err and 'BrokenPipe' not in err, err
    assert checkpoint(out)['iter_num'] >= 5


def test_older_checkpoints_resume_or_say_why_not(shakespeare_char, tmp_path):
    run('train.py', f'--out_dir={tmp_path / "now"}', '--objective=bc', '--max_iters=4', '--eval_interval=4', *TINY)
    now = checkpoint(tmp_path / 'now')
    # as the batch thread saved them: its generator's state in each process, no elapsed time
    batch_thread = dict(now, processes=[dict(p, batch_rng=torch.get_rng_state()) for p in now['processes']])
    del batch_thread['elapsed_s']
    (tmp_path / 'batch_thread').mkdir()
    torch.save(batch_thread, tmp_path / 'batch_thread' / 'ckpt.pt')
    result = run('train.py', f'--out_dir={tmp_path / "batch_thread"}', '--objective=bc', '--max_iters=6',
                 '--eval_interval=4', '--init_from=resume', *TINY)
    assert 'at iter 4, 0m00s elapsed before' in result.stdout and 'iter 5:' in result.stdout
    # as the first train.py saved them: the random state and the replay buffer at the top, no scaler
    first = {k: v for k, v in now.items() if k not in ('processes', 'scaler')}
    first.update(rng=[now['processes'][0]['rng']], replay=now['processes'][0]['replay'])
    (tmp_path / 'first').mkdir()
    torch.save(first, tmp_path / 'first' / 'ckpt.pt')
    result = run('train.py', f'--out_dir={tmp_path / "first"}', '--init_from=resume', *TINY, check=False)
    assert result.returncode != 0
    assert result.stderr.strip() == (f"{tmp_path}/first/ckpt.pt is from an older train.py (no processes, scaler) and "
                                     f"cannot be resumed; start a new run from its weights with "
                                     f"--init_from={tmp_path}/first/ckpt.pt --out_dir=...")


def test_resuming_without_a_checkpoint_says_so_first(shakespeare_char, tmp_path):
    result = run('train.py', f'--out_dir={tmp_path}', '--init_from=resume', *TINY, check=False)
    assert result.returncode != 0
    assert result.stderr.strip() == f"no checkpoint at {tmp_path}/ckpt.pt: train one first (python train.py ...)"
    assert 'resuming training' not in result.stdout
