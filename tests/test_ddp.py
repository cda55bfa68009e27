"""Several processes (DDP over gloo on the CPU): they train one model, a GPT or a Hugging Face model with LoRA, and
they stop together."""
import importlib.util
import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, checkpoint, run
from checkpoint import load_checkpoint

HF = importlib.util.find_spec('peft') is not None and importlib.util.find_spec('transformers') is not None
if HF:  # test_hf.py skips itself without them
    from conftest import TINY_HF, hf_train_args  # and conftest's fixtures: the tiny models, their data
TORCHRUN = (sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2')

EACH_RANK_SAVES = """
import os, runpy, sys
import torch
sys.argv = ['train.py'] + sys.argv[1:]
sys.path.insert(0, os.getcwd())  # the repository, as when train.py is run directly
done = runpy.run_path('train.py', run_name='__main__')  # train.py's globals once it has finished
torch.save(done['raw_model'].state_dict(), os.path.join(done['out_dir'], f"weights_of_rank_{os.environ['RANK']}.pt"))
"""


def assert_ranks_agree(out, saved):
    """The weights each of the two processes saved (EACH_RANK_SAVES) are equal, and are ckpt.pt's (saved); the
    processes' replay buffers differ (each its own rollouts)."""
    rank_0, rank_1 = (load_checkpoint(str(out / f'weights_of_rank_{r}.pt')) for r in (0, 1))
    for name, weight in saved['model'].items():
        assert torch.equal(rank_0[name], rank_1[name]), f"{name} differs between the processes"
        assert torch.equal(rank_0[name], weight), f"{name} in ckpt.pt is not the processes' weights"
    replays = [p['replay']['tokens'] for p in saved['processes']]
    assert len(replays) == 2 and not torch.equal(*replays), "the processes rolled out the same rows"


def test_torchrun_two_processes_train_one_model(shakespeare_char, tmp_path):
    """Each process draws its own batches and rollouts, and DDP keeps their weights equal."""
    script = tmp_path / 'each_rank_saves.py'
    script.write_text(EACH_RANK_SAVES)
    out = tmp_path / 'out'
    result = run(str(script), 'config/shakespeare_seqmatch.py', f'--out_dir={out}', '--max_iters=6',
                 '--eval_interval=6', '--bc_warmup_iters=2', *TINY,
                 launcher=TORCHRUN)
    assert '2 process(es)' in result.stdout
    saved = checkpoint(out)
    assert saved['iter_num'] == 6
    assert_ranks_agree(out, saved)


@pytest.mark.skipif(not HF, reason="needs the optional peft and transformers: pip install -r requirements-extra.txt")
def test_torchrun_two_processes_fine_tune_a_hugging_face_model_with_lora(hf_dirs, hf_data, tmp_path, monkeypatch):
    """test_hf.py's tiny Llama, SequenceMatch with LoRA from iteration 3: the two processes' adapters and <bkspc> rows
    are equal after 8 iterations, and stopped at 4 and resumed to 8 (two processes again) they are those of the run
    never stopped, bit for bit."""
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')  # no script reaches the hub
    monkeypatch.setenv('OMP_NUM_THREADS', '1')  # resuming is bit for bit on one thread per process
    script = tmp_path / 'each_rank_saves.py'
    script.write_text(EACH_RANK_SAVES)
    straight, stopped = tmp_path / 'straight', tmp_path / 'stopped'
    settings = ['--objective=seqmatch', '--eval_interval=4', '--bc_warmup_iters=3']
    _, *args = hf_train_args(hf_dirs, hf_data, 'llama', straight, *settings, '--max_iters=8')
    result = run(str(script), *args, launcher=TORCHRUN)
    assert '2 process(es)' in result.stdout and 'iter 3: SequenceMatch switches on' in result.stdout
    saved = checkpoint(straight)
    trained = set(saved['model'])
    assert any('trainable_tokens' in n for n in trained) and all('lora_' in n or 'trainable_tokens' in n
                                                                 for n in trained), trained
    assert_ranks_agree(straight, saved)

    run(*hf_train_args(hf_dirs, hf_data, 'llama', stopped, *settings, '--max_iters=4'), launcher=TORCHRUN)
    result = run('train.py', '--init_from=resume', f'--out_dir={stopped}', f'--dataset={hf_data}', *TINY_HF,
                 *settings, '--max_iters=8', launcher=TORCHRUN)
    assert 'resuming training from' in result.stdout and 'iter 6:' in result.stdout
    resumed = checkpoint(stopped)
    assert resumed['model'].keys() == saved['model'].keys()
    for name, weight in saved['model'].items():
        assert torch.equal(resumed['model'][name], weight), f"{name} differs after resuming"
    for process, resumed_process in zip(saved['processes'], resumed['processes']):
        assert torch.equal(process['replay']['tokens'], resumed_process['replay']['tokens'])


POISON_RANK_1 = """
import os, runpy, sys
import torch
import torch.nn.functional as F
if os.environ['RANK'] == '1':  # this process alone sees a non-finite evaluation loss
    cross_entropy = F.cross_entropy
    def poisoned(*args, **kwargs):
        loss = cross_entropy(*args, **kwargs)
        return loss if torch.is_grad_enabled() else loss * float('inf')  # evaluation runs under no_grad
    F.cross_entropy = poisoned
sys.argv = ['train.py'] + sys.argv[1:]
sys.path.insert(0, os.getcwd())  # the repository, as when train.py is run directly
runpy.run_path('train.py', run_name='__main__')
"""


def test_ddp_non_finite_evaluation_on_one_process_stops_both(shakespeare_char, tmp_path):
    """Two gloo processes, started as torchrun would; only rank 1's evaluation loss is infinite."""
    script = tmp_path / 'poison_rank_1.py'
    script.write_text(POISON_RANK_1)
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    args = [sys.executable, str(script), 'config/shakespeare_seqmatch.py', f'--out_dir={tmp_path / "out"}',
            '--max_iters=4', '--eval_interval=2', *TINY]
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2', MASTER_ADDR='127.0.0.1',
                   MASTER_PORT=str(port), OMP_NUM_THREADS='1')
        procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    try:
        results = [p.communicate(timeout=120) for p in procs]
    except subprocess.TimeoutExpired:
        pytest.fail("a process hung after the other stopped")
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, results):
        assert p.returncode != 0
        assert 'the evaluation loss is not finite at iteration 0' in err, err
