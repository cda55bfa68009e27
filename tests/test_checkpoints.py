"""Checkpoints: loading one runs no code, a failed save loses nothing, and a run continues from one exactly."""
import os
import pickle

import pytest
import torch

from conftest import TINY, checkpoint, run
from model import GPT, load_checkpoint


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
    for load in (load_checkpoint, GPT.from_checkpoint):
        with pytest.raises(pickle.UnpicklingError) as refused:
            load(path)
        message = str(refused.value)
        assert path in message and 'refused' in message and '\n' not in message, message
    result = run('train.py', f'--init_from={path}', f'--out_dir={tmp_path / "run"}', *TINY, check=False)
    assert result.returncode != 0
    assert result.stderr.strip() == message, result.stderr  # one line, no traceback
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
