"""The exercise set of exercise.py, tried as a teacher would: for each exercise, a student copy with that
function blank fails every test of its grading selection and passes every other test of the core test
files; and a function written wrong in a way students do write it fails with a message that says what
is off. Each check runs pytest on a copy of the repository, so this file takes a minute or two."""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from exercise import CORE_TESTS, EXERCISES, make_student_copy


def run_core_tests(copy, selection):
    """Run the core tests of a copy whose names match the -k selection: {test: passed}, pytest's output."""
    junit = os.path.join(copy, 'junit.xml')
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '--tb=short', f'--junitxml={junit}',
         *CORE_TESTS, '-k', selection],
        cwd=copy, env={**os.environ, 'OMP_NUM_THREADS': '1'}, capture_output=True, text=True)
    outcomes = {f"{case.get('classname')}.{case.get('name')}": not any(c.tag in ('failure', 'error') for c in case)
                for case in ET.parse(junit).iter('testcase')}
    return outcomes, result.stdout


@pytest.mark.parametrize('exercise', EXERCISES)
def test_a_blank_exercise_fails_its_selection_and_nothing_else(tmp_path, exercise):
    copy = str(tmp_path / 'student')  # (a neutral name: -k also matches the names of parent directories)
    make_student_copy([exercise], copy)
    selection = EXERCISES[exercise][2]
    graded, output = run_core_tests(copy, selection)
    passed = [test for test, ok in graded.items() if ok]
    assert graded and not passed, (f"-k '{selection}' selects {len(graded)} tests, and these pass with "
                                   f"{exercise} blank, so they grade nothing of it: {passed}\n{output[-3000:]}")
    others, output = run_core_tests(copy, f'not ({selection})')
    failed = [test for test, ok in others.items() if not ok]
    assert others and not failed, (f"with {exercise} blank these tests outside -k '{selection}' fail: they should "
                                   f"not call it (use a reference of their own): {failed}\n{output[-3000:]}")


# mistakes students make: (exercise, the reference's text, what the student wrote instead, what the failure says)
MISTAKES = {
    'bc_loss counts every transition': (
        'bc_loss', "masked_mean(V[:, :-1] - Q[:, 1:], expert[:, 1:])", "(V[:, :-1] - Q[:, 1:]).mean()",
        "count only expert ones"),
    'seqmatch_loss averages the expert term per row': (
        'seqmatch_loss', "expert_term = -masked_mean(reward, data_mask & expert[:, 1:])",
        "e = data_mask & expert[:, 1:]\n"
        "    expert_term = -((reward * e).sum(1) / e.sum(1).clamp(min=1))[e.any(1)].mean()",
        "pooled over all rows (not averaged per row)"),
    'seqmatch_loss zeroes V itself after the episode ends': (
        'seqmatch_loss', "V_now = V[:, :-1]", "V_now = V.masked_fill(done, 0.0)[:, :-1]",
        "V_next[:, j] = 0 where done[:, j], else V[:, j]"),
    'seqmatch_loss counts expert marks on model rows': (
        'seqmatch_loss', "expert_term = -masked_mean(reward, data_mask & expert[:, 1:])",
        "expert_term = -masked_mean(reward, valid & expert[:, 1:])",
        "a mark on a model row is ignored"),
    'seqmatch_loss returns stats attached to the graph': (
        'seqmatch_loss', "'expert': expert_term.detach(), 'value': value_term.detach(), 'chi2': chi2_term.detach(),",
        "'expert': expert_term, 'value': value_term, 'chi2': chi2_term,",
        "return them detached"),
    'soft_values reads the action in the next state': (
        'soft_values', "Q[:, 1:] = logits[:, :-1].gather(", "Q[:, 1:] = logits[:, 1:].gather(",
        "Q[:, j] = logits[:, j-1, actions[:, j]]"),
    'generate marks the eos action as not valid': (
        'generate', "valid[:, j] = ~done", "valid[:, j] = ~done & (action != pad_id)",
        "the eos action itself is an action of the policy"),
    'generate samples the padding ids above <bkspc>': (
        'generate', "policy_logits = logits[:, -1, :bkspc_id + 1].clone()", "policy_logits = logits[:, -1].clone()",
        "sample from logits[..., :bkspc_id + 1] only"),
    'generate recomputes each state from scratch': (
        'generate',
        "logits = model(stacks.input_ids[:, j:j + 1], position_ids=stacks.position_ids[:, j:j + 1],\n"
        "                       attn_mask=stacks.attends(j)[:, None, :S], kv_cache=kv_cache)",
        "logits = torch.stack([model(stacks.input_ids[b, stacks.stack[b, :stacks.depth[b]]][None])[0, -1:]\n"
        "                              for b in range(B)])",
        "each step after the prompt feeds only the newest token"),
    'Stacks.push gives a copy the position id of the deleted token': (
        'Stacks.push', "self.position_ids[:, j] = slot", "self.position_ids[:, j] = depth",
        "the index of the state's last token in the state's text"),
    'KVCache.update writes every call at the start': (
        'KVCache.update', "self.kv[layer, 0, :, :, self.length:self.length + T] = k\n"
                          "        self.kv[layer, 1, :, :, self.length:self.length + T] = v",
        "self.kv[layer, 0, :, :, :T] = k\n        self.kv[layer, 1, :, :, :T] = v",
        "3 tokens per call: row 0, position 3: the logits differ"),
}


@pytest.mark.parametrize('mistake', MISTAKES)
def test_a_wrong_exercise_fails_with_a_message_that_says_what_is_off(tmp_path, mistake):
    exercise, reference, wrong, message = MISTAKES[mistake]
    copy = str(tmp_path / 'student')
    make_student_copy([], copy)
    path = os.path.join(copy, EXERCISES[exercise][0])
    with open(path) as f:
        source = f.read()
    assert source.count(reference) == 1, f"{exercise} changed: update this mistake to its new text"
    with open(path, 'w') as f:
        f.write(source.replace(reference, wrong))
    graded, output = run_core_tests(copy, EXERCISES[exercise][2])
    assert not all(graded.values()), f"{mistake}, and yet every test of -k '{EXERCISES[exercise][2]}' passes"
    assert message in output, f"{mistake}: the failure should say '{message}'; it says:\n{output[-3000:]}"
