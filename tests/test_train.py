"""End-to-end runs of the real scripts (train.py, sample.py) on tiny settings, as subprocesses."""
import ast
import json
import math
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from batches import TrainBatches, suffix_ends
from conftest import ROOT, TINY, checkpoint, run
from checkpoint import load_model
from seqmatch import attention_mask


@pytest.mark.parametrize('objective', ['mle', 'bc', 'seqmatch'])
def test_train_then_sample(shakespeare_char, tmp_path, objective):
    out = str(tmp_path / objective)
    result = run('train.py', 'config/shakespeare_seqmatch.py', f'--objective={objective}', f'--out_dir={out}',
                 '--max_iters=20', '--eval_interval=10', '--bc_warmup_iters=10', *TINY)
    assert 'step 20: train loss' in result.stdout
    assert os.path.exists(os.path.join(out, 'ckpt.pt')) and not os.path.exists(os.path.join(out, 'ckpt.pt.tmp'))
    if objective == 'mle':  # --help lists exactly the settings a run records
        assert set(help_settings('train.py')) == set(checkpoint(out)['config'])
    assert 'iter 15: loss' in result.stdout and 'elapsed, ETA' in result.stdout
    rows = [json.loads(line) for line in open(os.path.join(out, 'log.jsonl'))]
    assert [r['iter'] for r in rows if 'val_loss' in r] == [0, 10, 20]
    assert [r['iter'] for r in rows if 'loss' in r] == [5, 10, 15, 20]
    # the ETA runs at the average speed of the current phase so far, whose start is after the evaluation that a run
    # starts with (in the log: the elapsed time at its first row counts that evaluation, so it is larger): in a
    # SequenceMatch run the BC warm-up (to iteration 10) is a phase of its own
    assert [r['threads'] for r in rows if r.get('event') == 'start'] == [torch.get_num_threads()]
    first_end = 10 if objective == 'seqmatch' else 20
    for r in rows:
        if 'eta_s' in r:
            end = first_end if r['iter'] <= first_end else 20
            assert (r['eta_s'] == 0) == (r['iter'] == end), r
            if r['iter'] < first_end:
                assert r['eta_s'] < r['elapsed_s'] / r['iter'] * (end - r['iter']), r
    if objective == 'seqmatch':
        assert 'ETA 0m00s to the switch-on' in result.stdout
        assert 'reward_model' in result.stdout and 'bkspc rate' in result.stdout  # SequenceMatch was on
        assert 'iter 10: SequenceMatch switches on' in result.stdout
        assert [r['iter'] for r in rows if r.get('event') == 'seqmatch_on'] == [10]
        assert [r['iter'] for r in rows if 'reward_data' in r and 'bkspc_rate' in r] == [15, 20]
    else:
        assert 'switches on' not in result.stdout and 'to the switch-on' not in result.stdout
        assert [r['event'] for r in rows if 'event' in r] == ['start']
    sample = run('sample.py', f'--out_dir={out}', '--num_samples=2', '--max_new_tokens=50', '--show_edits=True',
                 '--start=ROMEO:')
    assert sample.stdout.count('ROMEO:') >= 2 and '---------------' in sample.stdout


def one_line_error(result):
    """The one line a script stopped with (no traceback)."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr
    return lines[0]


def test_unknown_config_key_is_a_clear_error(tmp_path):
    out = tmp_path / 'never'
    line = one_line_error(run('train.py', f'--out_dir={out}', '--max_iter=10', check=False))
    assert "unknown key 'max_iter'" in line and 'did you mean max_iters?' in line, line
    config = tmp_path / 'typo.py'
    config.write_text('learning_rat = 1e-3\n')
    line = one_line_error(run('train.py', str(config), f'--out_dir={out}', check=False))
    assert "'learning_rat'" in line and str(config) in line and 'did you mean learning_rate?' in line, line
    line = one_line_error(run('train.py', f'--out_dir={out}', '--zzz=1', check=False))
    assert "unknown key 'zzz'" in line and 'did you mean' not in line, line  # nothing close: no suggestion
    line = one_line_error(run('train.py', f'--out_dir={out}', '--max_iters=ten', check=False))
    assert "max_iters='ten'" in line and 'an int' in line, line
    assert not out.exists()


def test_settings_a_run_cannot_use_stop_it_in_one_line(shakespeare_char, tmp_path):
    """Each with the words that say what to change, before anything is written."""
    out = tmp_path / 'never'
    cases = [(['--objective=sm'], ["objective must be 'mle', 'bc' or 'seqmatch'", "'sm'"]),
             (['--noise=gaussian'], ["noise must be 'random' or 'ground_truth'"]),
             (['--prompt_len=64', '--block_size=64'], ['prompt_len=64', 'block_size=64']),
             (['--noise=ground_truth'], ['arithmetic task only']),
             (['--init_from=gpt2'], ["init_from='gpt2' reads GPT-2 BPE", "'char' tokenizer"])]
    if not torch.cuda.is_available():
        cases.append((['--device=cuda'], ["device='cuda'", 'no CUDA device', '--device=cpu']))
    for args, facts in cases:
        line = one_line_error(run('train.py', f'--out_dir={out}', '--max_iters=2', *args, check=False))
        assert all(fact in line for fact in facts), (args, line)
    assert not out.exists()


def test_an_unknown_dataset_lists_the_datasets_there_are(tmp_path):
    out = tmp_path / 'never'
    result = run('train.py', '--dataset=no_such_dataset', f'--out_dir={out}', check=False)
    assert result.returncode != 0
    message = result.stderr.strip()
    assert '\n' not in message and 'no_such_dataset/prepare.py' not in message, message
    listed = message.split('the datasets are ')[1].split(' (')[0].split(', ')
    data = os.path.join(ROOT, 'data')
    there = sorted(d for d in os.listdir(data) if os.path.exists(os.path.join(data, d, 'prepare.py')))
    assert listed == there and 'shakespeare_char' in listed, message
    assert not out.exists()


def test_missing_checkpoint_and_unknown_prompt_characters(shakespeare_char, tmp_path):
    result = run('sample.py', f'--out_dir={tmp_path}', check=False)
    assert result.returncode != 0 and 'no checkpoint' in result.stderr
    out = str(tmp_path / 'run')
    run('train.py', f'--out_dir={out}', '--objective=mle', '--max_iters=2', '--eval_interval=2', *TINY)
    result = run('sample.py', f'--out_dir={out}', '--start=Hello wörld €', check=False)
    assert result.returncode != 0
    assert "characters not in the vocabulary: 'ö', '€'" in result.stderr


def test_trained_model_deletes_rare_characters(shakespeare_char, tmp_path):
    """The main job, smaller and shorter (about 15 s): the model learns to use <bkspc>, and far more often than
    chance after a character that rarely follows the one before it in Shakespeare (a noise-like character)."""
    out = str(tmp_path / 'sm')
    run('train.py', 'config/shakespeare_seqmatch.py', f'--out_dir={out}', '--n_layer=2', '--n_embd=64',
        '--max_iters=200', '--lr_decay_iters=200', '--bc_warmup_iters=100', '--eval_interval=200', '--device=cpu')
    result = run('eval.py', f'--out_dirs={out}', '--num_samples=48', '--eval_iters=5')
    cells = result.stdout.strip().splitlines()[-1].strip('|').split('|')
    bkspc_rate, rare = (float(cells[k].split(' ± ')[0]) for k in (5, 6))  # the means over the sampling seeds
    print(result.stdout)
    assert bkspc_rate > 0.01, "the model should use <bkspc>"
    # 5.7% of the characters of the val text are rare after the one before them (77% of uniform noise is):
    # a model that deleted at random would score about that
    assert rare > 0.25, "deletions should remove noise-like characters far more often than chance"


def test_diverging_loss_stops_without_touching_the_checkpoint(shakespeare_char, tmp_path):
    out = str(tmp_path)
    run('train.py', f'--out_dir={out}', '--objective=bc', '--max_iters=4', '--eval_interval=4', *TINY)
    good = checkpoint(out)
    result = run('train.py', f'--out_dir={out}', '--objective=bc', '--max_iters=40', '--eval_interval=4',
                 '--init_from=resume', '--learning_rate=1e30', '--grad_clip=0.0', *TINY, check=False)
    assert result.returncode != 0
    assert 'not finite' in result.stderr and 'still holds the last good checkpoint' in result.stderr
    after = checkpoint(out)
    assert after['iter_num'] == 4
    assert all(torch.equal(good['model'][k], after['model'][k]) for k in good['model'])


def help_settings(script):
    """The settings that `python script --help` lists: {name: its line}."""
    result = run(script, '--help')
    assert result.stdout.startswith(f'usage: python {script} ')
    lines = [line.strip() for line in result.stdout.split('settings (')[1].splitlines() if line.startswith('  ')]
    return {line.split(' = ')[0]: line for line in lines}


@pytest.mark.parametrize('script', ['train.py', 'sample.py', 'eval.py', 'results.py', 'bench.py'])
def test_help_lists_every_setting_with_its_default_and_comment(script):
    settings = help_settings(script)
    assert len(settings) >= 3
    for line in settings.values():
        assert '  # ' in line, f"{script}: the setting {line!r} has no comment"
        default = ast.literal_eval(line.split(' = ', 1)[1].split('  # ')[0])
        assert isinstance(default, (int, float, bool, str)), f"{script}: {line!r} shows no plain default"
    if script == 'train.py':
        assert settings['out_dir'].startswith("out_dir = 'out'  # ")  # the default itself, as the script has it


def test_a_new_run_never_overwrites_an_earlier_one(shakespeare_char, tmp_path):
    out = str(tmp_path)
    run('train.py', f'--out_dir={out}', '--objective=mle', '--max_iters=2', '--eval_interval=2', *TINY)
    before = open(os.path.join(out, 'ckpt.pt'), 'rb').read()
    result = run('train.py', f'--out_dir={out}', '--objective=mle', '--max_iters=2', '--eval_interval=2', *TINY,
                 check=False)
    assert result.returncode != 0
    assert 'already holds a checkpoint' in result.stderr
    for way_out in ('--init_from=resume', '--out_dir=', '--overwrite=True'):
        assert way_out in result.stderr
    assert open(os.path.join(out, 'ckpt.pt'), 'rb').read() == before
    run('train.py', f'--out_dir={out}', '--objective=mle', '--max_iters=2', '--eval_interval=2', *TINY,
        '--overwrite=True', '--seed=2')
    assert open(os.path.join(out, 'ckpt.pt'), 'rb').read() != before  # an explicit overwrite does replace it


def test_data_only_sequencematch_trains_past_the_switch_on(shakespeare_char, tmp_path):
    """model_batch_size=0: SequenceMatch on the data rows alone, an ablation that docs/arithmetic.md reports."""
    result = run('train.py', 'config/shakespeare_seqmatch.py', f'--out_dir={tmp_path}', '--max_iters=10',
                 '--eval_interval=10', '--bc_warmup_iters=3', *TINY, '--model_batch_size=0')
    assert 'iter 3: SequenceMatch switches on' in result.stdout and 'note: ' not in result.stdout
    rows = [json.loads(line) for line in open(tmp_path / 'log.jsonl')]
    trained = [r for r in rows if 'reward_data' in r]
    assert [r['iter'] for r in trained] == [5, 10]
    assert all(math.isfinite(r['loss']) and math.isfinite(r['reward_data']) for r in trained), trained
    assert checkpoint(tmp_path)['iter_num'] == 10


def test_a_run_that_ends_before_sequencematch_switches_on_says_so(shakespeare_char, tmp_path):
    result = run('train.py', f'--out_dir={tmp_path}', '--objective=seqmatch', '--max_iters=2', '--eval_interval=2',
                 '--bc_warmup_iters=5', *TINY)
    assert ("note: SequenceMatch switches on at bc_warmup_iters=5, and max_iters=2 ends the run before that: this run "
            "trains with BC alone") in result.stdout.splitlines()


def test_the_logged_bc_loss_is_its_definition_on_the_data_rows(shakespeare_char, tmp_path):
    """The BC term train.py logs, against its definition on the same micro-batches: the cross-entropy of the
    expert's actions on the data rows (not the rollouts drawn into the batch after the switch-on), under the policy,
    the softmax over the action space (not over the padding ids above <bkspc>: this vocabulary has 14 of them).
    learning_rate=0 keeps the weights those of the checkpoint."""
    data = tmp_path / 'padded'
    shutil.copytree(os.path.join(ROOT, 'data', shakespeare_char), data, ignore=shutil.ignore_patterns('*.py', '*.txt'))
    with open(data / 'meta.pkl', 'rb') as f:
        meta = pickle.load(f)
    meta['vocab_size'] = meta['bkspc_id'] + 1 + 14
    with open(data / 'meta.pkl', 'wb') as f:
        pickle.dump(meta, f)
    out = tmp_path / 'run'
    run('train.py', 'config/shakespeare_seqmatch.py', f'--dataset={data}', f'--out_dir={out}', *TINY, '--max_iters=6',
        '--bc_warmup_iters=3', '--eval_interval=6', '--log_interval=1', '--learning_rate=0.0', '--min_lr=0.0')
    model = load_model(str(out / 'ckpt.pt'))[0]
    bk = meta['bkspc_id']
    batches = TrainBatches(str(data), 'seqmatch', 4, 32, 1, 1337, 0, 0.05, 'random', meta)  # TINY's rows
    logged = [r for r in map(json.loads, open(out / 'log.jsonl')) if 'bc' in r]
    assert [r['iter'] for r in logged] == [1, 2, 3, 4, 5, 6] and 'reward_model' in logged[-1]
    for r in logged:
        tokens, actions, valid, input_ids, position_ids, removed_at = batches[r['iter'] - 1]  # its data rows
        with torch.no_grad():
            logits = model(input_ids, position_ids=position_ids, attn_mask=attention_mask(removed_at)).double()
        def cross_entropy(log_probs):  # of the expert's action into each valid position j >= 1, term by term
            transitions = [(b, j) for b, j in valid.nonzero().tolist() if j >= 1]
            return math.fsum(-log_probs[b, j - 1, actions[b, j]].item() for b, j in transitions) / len(transitions)
        want = cross_entropy(logits[..., :bk + 1].log_softmax(-1))
        padded = cross_entropy(logits.log_softmax(-1))
        hint = ("that is the softmax over the padding ids too: read the logits of the action space, "
                "logits[..., :bkspc_id + 1]" if abs(r['bc'] - padded) < 1e-4 else
                "count the expert transitions only: the rollout rows in the batch (after the switch-on) are not")
        assert abs(r['bc'] - want) < 1e-4, (f"iter {r['iter']}: train.py logged bc {r['bc']:.6f}, but the cross-entropy "
                                            f"of the expert's actions on the data rows is {want:.6f}: {hint}")


def test_prompt_suffix_is_found_across_chunk_boundaries():
    """suffix_ends reads the token file a chunk at a time: every occurrence, one that straddles two chunks included,
    and no other, as a scan of every position finds them."""
    data = np.array([3, 1, 2, 1, 2, 2, 1, 2, 1, 1, 2], dtype=np.uint16)
    want = [j + 2 for j in range(len(data) - 1) if list(data[j:j + 2]) == [1, 2]]
    for chunk in (1, 2, 3, 4, 100):
        assert suffix_ends(data, [1, 2], chunk).tolist() == want, chunk
    assert suffix_ends(data[:1], [1, 2]).tolist() == []
