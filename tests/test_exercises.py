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
        'bc_loss', "actions[:, 1:].masked_fill(~expert[:, 1:], -1)", "actions[:, 1:]",
        "count only expert ones"),
    'seqmatch_loss averages the expert term per row': (
        'seqmatch_loss', "expert_term = -masked_mean(reward, data_mask & expert[:, 1:])",
        "e = data_mask & expert[:, 1:]\n"
        "    expert_term = -((reward * e).sum(1) / e.sum(1).clamp(min=1))[e.any(1)].mean()",
        "pool the group's transitions"),
    'seqmatch_loss reads the action in the next state': (
        'seqmatch_loss', "Q = logits[:, :-1].gather(", "Q = logits[:, 1:].gather(",
        "r_j = logits[:, j-1, actions[:, j]] - gamma * V[:, j]"),
    'generate recomputes each state from scratch': (
        'generate',
        "logits, _ = model(input_ids[:, j:j + 1], position_ids=position_ids[:, j:j + 1],\n"
        "                          attn_mask=on_stack[:, None, :j + 1], kv_cache=kv_cache)",
        "logits = torch.stack([model(input_ids[b, stack[b, :depth[b]]][None])[0][0, -1:] for b in range(B)])",
        "each step after the prompt feeds only the newest token"),
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
