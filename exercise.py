"""
Make a student copy of this repository with some functions left for the student to write:

    python exercise.py backspace_inputs seqmatch_loss --out=../student

copies the repository's files to DIR, replaces the body of each function of the named exercises by
`raise NotImplementedError` (its signature and docstring stay: they are the contract the student
implements), and prints the command that grades each one. The tests are named after the function they
grade, so a grading command is pytest with a -k selection; tests/test_exercises.py checks that each
selection fails on the blank exercise and that every other test still passes, but for the tests of the
exercises that call it (Stacks.push is the stack rule of both backspace_inputs and generate).
"""
import argparse
import ast
import os
import shutil
import subprocess
from collections import namedtuple

ROOT = os.path.dirname(os.path.abspath(__file__))

# path: the file; functions: what the student writes ('f' or 'Class.f'); selection: the pytest -k selection of the
# tests that grade it; calls: the exercises it calls, whose graders pass first (the selection calls no others)
Exercise = namedtuple('Exercise', 'path functions selection calls')
EXERCISES = {
    'apply_backspaces': Exercise('seqmatch.py', ['apply_backspaces'], 'apply_backspaces', []),
    'Stacks.push': Exercise('seqmatch.py', ['Stacks.push'], 'stacks_push', []),  # the stack rule
    'backspace_inputs': Exercise('seqmatch.py', ['backspace_inputs'], 'masking', ['Stacks.push']),
    'add_noise': Exercise('seqmatch.py', ['add_noise'], 'add_noise', []),
    'generate': Exercise('seqmatch.py', ['generate', 'sample_next'], 'rollout', ['Stacks.push', 'KVCache.update']),
    # the definition, graded without the chunked version, which is blanked too: nothing in the copy computes V and Q
    'soft_values': Exercise('seqmatch.py', ['soft_values', 'SoftValues.forward', 'SoftValues.backward'],
                            'soft_values and not chunked_soft_values', []),
    # advanced: the same numbers a chunk at a time, with the backward by hand, graded on the peak memory of forward
    # and backward too; the definition is blanked as well (its lines would be the forward's)
    'SoftValues': Exercise('seqmatch.py', ['SoftValues.forward', 'SoftValues.backward', 'soft_values'],
                           'chunked_soft_values', []),
    'seqmatch_loss': Exercise('seqmatch.py', ['seqmatch_loss'], 'seqmatch_loss', []),
    'bc_loss': Exercise('seqmatch.py', ['bc_loss'], 'bc_loss', []),
    'KVCache.update': Exercise('model.py', ['KVCache.update'], 'kv_cache', []),
}
CORE_TESTS = ['tests/test_seqmatch.py', 'tests/test_model.py']  # the test files that grade the exercises
# these check the teacher's copy, whose functions are all written: in a student copy they could only fail
TEACHER_ONLY = {'exercise.py', 'tests/test_exercises.py'}


def grading_command(exercise):
    return f'python -m pytest -q {" ".join(CORE_TESTS)} -k "{EXERCISES[exercise].selection}"'


def blank(source, qualname):
    """source with the body of function qualname ('f' or 'Class.f') replaced by `raise NotImplementedError`;
    the decorators, signature and docstring stay. Lines are cut where Python's own parser puts them."""
    node = ast.parse(source)
    for name in qualname.split('.'):
        node = next(n for n in node.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == name)
    lines = source.splitlines(keepends=True)
    has_docstring = ast.get_docstring(node) is not None
    first = node.body[0].end_lineno if has_docstring else node.body[0].lineno - 1  # index of the first line to cut
    indent = ' ' * node.body[0].col_offset
    return ''.join(lines[:first] + [indent + 'raise NotImplementedError\n'] + lines[node.end_lineno:])


def make_student_copy(exercises, out):
    """Copy the repository's files (those git tracks or would track) to out, the exercises blanked."""
    if os.path.exists(out) and os.listdir(out):
        raise FileExistsError(f"{out} exists and is not empty: choose a new directory")
    files = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for path in files:
        if path in TEACHER_ONLY or not os.path.isfile(os.path.join(ROOT, path)):
            continue  # (a tracked file deleted in the working tree is not copied)
        os.makedirs(os.path.dirname(os.path.join(out, path)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, path), os.path.join(out, path))
    for exercise in exercises:
        path, functions = EXERCISES[exercise].path, EXERCISES[exercise].functions
        with open(os.path.join(out, path)) as f:
            source = f.read()
        for qualname in functions:
            source = blank(source, qualname)
        with open(os.path.join(out, path), 'w') as f:
            f.write(source)


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description="Write a student copy with the named functions left blank.")
    parser.add_argument('exercises', nargs='+', choices=EXERCISES, metavar='FUNCTION',
                        help=f"one or more of: {', '.join(EXERCISES)}")
    parser.add_argument('--out', required=True, help="the directory of the student copy (new or empty)")
    args = parser.parse_args()
    try:
        make_student_copy(args.exercises, args.out)
    except FileExistsError as e:
        raise SystemExit(f"error: {e}")
    print(f"wrote a student copy to {args.out}; in it, implement each function and grade it with:")
    for exercise in args.exercises:
        path, functions, _, calls = EXERCISES[exercise]
        print(f"  {', '.join(functions)} ({path}):  {grading_command(exercise)}"
              + (f"  (it calls {' and '.join(calls)}: grade {'those' if len(calls) > 1 else 'that'} first)" if calls else ''))
