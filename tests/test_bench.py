"""bench.py's GPU section runs on a CPU at small shapes, and its Hugging Face section on tiny models: every table
prints, with its ratios."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def test_bench_gpu_section_runs_on_a_cpu():
    result = subprocess.run([sys.executable, 'bench.py', '--which=gpu', '--steps=1'], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'}, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    for line in ('| MLE, causal | 4 |', 'SequenceMatch step / MLE step on equal rows:', 'SM + BC loss / F.cross_entropy:',
                 'tensors saved for the backward of SM + BC:', 'decoding 8 rows, 64 + 64 tokens:'):
        assert line in result.stdout, f"bench.py --which=gpu printed no '{line}':\n{result.stdout}"


@pytest.mark.parametrize('model', ['tiny Llama', 'hf_dir'])
def test_bench_hf_section_runs(model, hf_dirs):
    args = [f"--hf_dir={hf_dirs['llama']}"] if model == 'hf_dir' else []
    result = subprocess.run([sys.executable, 'bench.py', '--which=hf', '--steps=1', *args], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'}, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = ['SequenceMatch step (', 'speed-up'] + (["transformers' generate", 'its speed'] if args else [])
    for line in lines:
        assert line in result.stdout, f"bench.py --which=hf {' '.join(args)} printed no '{line}':\n{result.stdout}"
