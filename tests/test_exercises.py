"""The exercise set of exercise.py, tried as a teacher would: for each exercise, a student copy with it blank
fails every test of its grading selection, and its selection passes with every other exercise blank (but those
it calls); and a function written wrong in a way students do write it fails with a message that says what is
off. Each check runs pytest on a copy of the repository (two at a time), so this file takes a few minutes."""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import pytest

from exercise import CORE_TESTS, EXERCISES, make_student_copy


def start_core_tests(copy, selection):
    """Start pytest on the core tests of a copy whose names match the -k selection (one thread: several of these
    run at once); finish_core_tests waits for it."""
    junit = os.path.join(copy, f'junit-{abs(hash(selection))}.xml')
    command = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '--tb=short', f'--junitxml={junit}',
               *CORE_TESTS, '-k', selection]
    process = subprocess.Popen(command, cwd=copy, env={**os.environ, 'OMP_NUM_THREADS': '1'},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return process, junit


def finish_core_tests(started):
    """{test: passed}, and pytest's output."""
    process, junit = started
    output = process.communicate()[0]
    outcomes = {f"{case.get('classname')}.{case.get('name')}": not any(c.tag in ('failure', 'error') for c in case)
                for case in ET.parse(junit).iter('testcase')}
    return outcomes, output


def run_core_tests(copy, selection):
    return finish_core_tests(start_core_tests(copy, selection))


@pytest.mark.parametrize('exercise', EXERCISES)
def test_a_blank_exercise_fails_its_selection_which_passes_with_every_other_exercise_blank(tmp_path, exercise):
    """With the exercise blank every test of its selection fails; with every other exercise blank (but those it
    calls) every test of its selection passes. So a student grades one function at a time, in the order of the
    calls (Stacks.push before backspace_inputs and generate), and, over all exercises, a blank one fails no test
    outside its selection but those of the exercises that call it."""
    blank, others = str(tmp_path / 'student'), str(tmp_path / 'others')  # (neutral names: -k matches folder names)
    selection, functions = EXERCISES[exercise].selection, set(EXERCISES[exercise].functions)
    make_student_copy([exercise], blank)
    make_student_copy([e for e in EXERCISES if e not in EXERCISES[exercise].calls
                       and not functions & set(EXERCISES[e].functions)], others)
    runs = [start_core_tests(blank, selection), start_core_tests(others, selection)]  # at once, a thread each
    (graded, output), (alone, alone_output) = map(finish_core_tests, runs)
    passed = [test for test, ok in graded.items() if ok]
    assert graded and not passed, (f"-k '{selection}' selects {len(graded)} tests, and these pass with "
                                   f"{exercise} blank, so they grade nothing of it: {passed}\n{output[-3000:]}")
    failed = [test for test, ok in alone.items() if not ok]
    assert not failed, (f"with every other exercise blank (but {EXERCISES[exercise].calls or 'none'}, which it calls), "
                        f"these tests of -k '{selection}' fail: they should call no other exercise (use a reference "
                        f"of their own): {failed}\n{alone_output[-3000:]}")


def test_the_tests_outside_every_selection_pass_with_every_exercise_blank(tmp_path):
    copy = str(tmp_path / 'student')
    make_student_copy(list(EXERCISES), copy)
    outside = ' and '.join(f'not ({exercise.selection})' for exercise in EXERCISES.values())
    graded, output = run_core_tests(copy, outside)
    failed = [test for test, ok in graded.items() if not ok]
    assert graded and not failed, (f"with every exercise blank these tests, which grade none, fail: they should not "
                                   f"call an exercise: {failed}\n{output[-3000:]}")


# mistakes students make: (exercise, the reference's text, what the student wrote instead, what the failure says)
MISTAKES = {
    'bc_loss counts every transition': (
        'bc_loss', "masked_mean(V[:, :-1] - Q[:, 1:], expert[:, 1:])", "(V[:, :-1] - Q[:, 1:]).mean()",
        "count only expert ones"),
    'bc_loss averages per row, then over rows': (
        'bc_loss', "return masked_mean(V[:, :-1] - Q[:, 1:], expert[:, 1:])",
        "nll, e = V[:, :-1] - Q[:, 1:], expert[:, 1:]\n"
        "    return ((nll * e).sum(1) / e.sum(1).clamp(min=1))[e.any(1)].mean()",
        "the mean per row, then over rows"),
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
    'seqmatch_loss averages chi^2 over the expert transitions only': (
        'seqmatch_loss', "chi2_term = sum(masked_mean(reward ** 2, g) for g in groups) / len(groups) / (4 * alpha)",
        "chi2_term = masked_mean(reward ** 2, data_mask & expert[:, 1:]) / (4 * alpha)",
        "stats['chi2'] is"),
    'seqmatch_loss takes the mean data reward over the expert transitions only': (
        'seqmatch_loss', "'reward_data': masked_mean(reward, data_mask).detach()",
        "'reward_data': masked_mean(reward, data_mask & expert[:, 1:]).detach()",
        "stats['reward_data'] is"),
    'seqmatch_loss returns stats attached to the graph': (
        'seqmatch_loss', "'expert': expert_term.detach(), 'value': value_term.detach(), 'chi2': chi2_term.detach(),",
        "'expert': expert_term, 'value': value_term, 'chi2': chi2_term,",
        "return them detached"),
    'soft_values reads the action in the next state': (
        'soft_values', "Q = logits[:, :-1].gather(", "Q = logits[:, 1:].gather(",
        "Q[:, j] = logits[:, j-1, actions[:, j]]"),
    'SoftValues.forward reads the action in the next state': (
        'SoftValues', "Q[:, 1:] = logits[:, :-1].gather(", "Q[:, 1:] = logits[:, 1:].gather(",
        "Q[:, j] = logits[:, j-1, actions[:, j]]"),
    'SoftValues.backward puts dQ on the row of the next state': (
        'SoftValues', "grad[:, :-1].scatter_add_(", "grad[:, 1:].scatter_add_(", "the gradient of the logits differs"),
    'generate marks the eos action as not valid': (
        'generate', "valid[:, j] = ~done", "valid[:, j] = ~done & (action != pad_id)",
        "the eos action itself is an action of the policy"),
    'generate samples the padding ids above <bkspc>': (
        'generate', "policy_logits = logits[:, -1, :bkspc_id + 1].clone()", "policy_logits = logits[:, -1].clone()",
        "sample from logits[..., :bkspc_id + 1] only"),
    'generate lets <bkspc> delete into the prompt': (
        'generate', "no_bkspc = (stacks.depth <= P) | (not allow_bkspc)",
        "no_bkspc = (stacks.depth < P) | (not allow_bkspc)", "this <bkspc> deletes into the prompt"),
    'sample_next ignores the temperature': (
        'generate', "    logits = logits / temperature\n", "", "divide the logits by temperature"),
    'sample_next ignores top_k': (
        'generate', "        logits = logits.masked_fill(logits < kth, float('-inf'))\n", "", "fell outside the top"),
    'sample_next samples at temperature 0': (
        'generate', "        return logits.argmax(dim=-1)",
        "        return torch.multinomial(F.softmax(logits.float(), dim=-1), num_samples=1)[:, 0]",
        "the policy's most likely action there is"),
    'generate recomputes each state from scratch': (
        'generate',
        "logits = model(stacks.input_ids[:, j:j + 1], position_ids=stacks.position_ids[:, j:j + 1],\n"
        "                       attn_mask=stacks.attends(j)[:, None, :S], kv_cache=kv_cache, cache_pos=j)",
        "logits = torch.stack([model(stacks.input_ids[b, stacks.stack[b, :stacks.depth[b]]][None])[0, -1:]\n"
        "                              for b in range(B)])",
        "each step after the prompt feeds only the newest token"),
    'Stacks.push gives a copy the position id of the deleted token': (
        'Stacks.push', "self.position_ids[:, j] = slot", "self.position_ids[:, j] = depth",
        "the index of the state's last token in the state's text"),
    'KVCache.update writes every call at the start': (
        'KVCache.update', "self.kv[layer, 0, :, :, cache_pos:cache_pos + T] = k\n"
                          "        self.kv[layer, 1, :, :, cache_pos:cache_pos + T] = v",
        "self.kv[layer, 0, :, :, :T] = k\n        self.kv[layer, 1, :, :, :T] = v",
        "3 tokens per call: row 0, position 3: the logits differ"),
    'soft_values takes exp().sum().log()': (
        'soft_values', "V = torch.logsumexp(logits, dim=-1)", "V = logits.exp().sum(dim=-1).log()",
        "exp overflows float32"),
    'soft_values computes V in bf16, then casts it': (
        'soft_values', "    logits = logits.float()\n    V = torch.logsumexp(logits, dim=-1)",
        "    V = torch.logsumexp(logits, dim=-1).float()\n    logits = logits.float()", "compute V in float32"),
    'SoftValues.forward takes exp().sum().log()': (
        'SoftValues', "torch.logsumexp(rows[s:s + chunk_rows].float(), dim=-1)",
        "rows[s:s + chunk_rows].float().exp().sum(dim=-1).log()", "exp overflows float32"),
    'SoftValues.forward computes V in bf16': (
        'SoftValues', "torch.logsumexp(rows[s:s + chunk_rows].float(), dim=-1)",
        "torch.logsumexp(rows[s:s + chunk_rows], dim=-1)", "compute V in float32"),
    'SoftValues.forward copies the whole logits to float32': (
        'SoftValues', "rows = logits.flatten(0, 1)  # (B * n, A)", "rows = logits.flatten(0, 1).float()  # (B * n, A)",
        "a float32 copy of the whole logits"),
    'SoftValues.forward saves V in bf16 for the backward': (
        'SoftValues', "ctx.save_for_backward(logits, actions, V)",
        "ctx.save_for_backward(logits, actions, V.to(logits.dtype))", "from the float32 V"),
    'SoftValues.backward builds the whole float32 softmax at once': (
        'SoftValues', """        grad = torch.empty(B * n, A, dtype=logits.dtype, device=logits.device)
        for s in range(0, B * n, ctx.chunk_rows):
            chunk = slice(s, s + ctx.chunk_rows)
            # the V part: softmax(logits) * dV, with softmax = exp(logits - V), in float32
            if grad.dtype == torch.float32:  # computed in grad's own rows, a pass less than through a temporary
                torch.sub(rows[chunk], V[chunk, None], out=grad[chunk]).exp_().mul_(dV[chunk, None])
            else:  # in a float32 temporary, cast into grad's rows (bf16 logits under autocast)
                grad[chunk] = (rows[chunk].float() - V[chunk, None]).exp_().mul_(dV[chunk, None])
        grad = grad.view(B, n, A)""",
        "        grad = (rows.float() - V[:, None]).exp().mul(dV[:, None]).to(logits.dtype).view(B, n, A)",
        "a whole float32 softmax"),
    'SoftValues.backward computes the softmax in bf16': (
        'SoftValues', "grad[chunk] = (rows[chunk].float() - V[chunk, None]).exp_().mul_(dV[chunk, None])",
        "grad[chunk] = (rows[chunk] - V[chunk, None].to(rows.dtype)).exp_().mul_(dV[chunk, None].to(rows.dtype))",
        "compute the softmax in float32"),
    'bc_loss returns a detached loss': (
        'bc_loss', "return masked_mean(V[:, :-1] - Q[:, 1:], expert[:, 1:])",
        "return masked_mean(V[:, :-1] - Q[:, 1:], expert[:, 1:]).detach()", "bc_loss is detached"),
    'generate pads with 0 instead of eos_id': (
        'generate', "pad_id = eos_id if eos_id is not None else 0", "pad_id = 0", "padded with eos_id"),
    'generate masks <bkspc> in the logits the model returned': (
        'generate', "policy_logits = logits[:, -1, :bkspc_id + 1].clone()",
        "policy_logits = logits[:, -1, :bkspc_id + 1]", "generate changed the logits the model returned"),
    'generate feeds the stack depth after the push as position id': (
        'generate', "position_ids=stacks.position_ids[:, j:j + 1]", "position_ids=stacks.depth[:, None]",
        "the stack depth before the push, not after it"),
    'generate feeds the token before the newest into the KV cache': (
        'generate', "stacks.input_ids[:, j:j + 1]", "stacks.input_ids[:, j - 1:j]", "the newest position's token"),
    "generate's mask leaves out the newest position": (
        'generate', "attn_mask=stacks.attends(j)", "attn_mask=stacks.attends(j - 1)", "the newest one"),
    'sample_next does not clamp top_k to the number of actions': (
        'generate', "torch.topk(logits, min(top_k, logits.size(-1)))", "torch.topk(logits, top_k)",
        "a top_k above the number of actions keeps them all"),
    'sample_next fills the logits outside the top k with 0': (
        'generate', "logits.masked_fill(logits < kth, float('-inf'))", "logits.masked_fill(logits < kth, 0.0)",
        "a logit is -inf, not 0"),
}


def grade(mistake, copy):
    """The mistake written into a student copy made in copy (with no exercise blank), graded by its exercise's
    selection: ({test: passed}, pytest's output), or the error that stopped it."""
    exercise, reference, wrong, _ = MISTAKES[mistake]
    make_student_copy([], copy)
    path = os.path.join(copy, EXERCISES[exercise].path)
    with open(path) as f:
        source = f.read()
    if source.count(reference) != 1:
        return f"{exercise} changed: update this mistake to its new text"
    with open(path, 'w') as f:
        f.write(source.replace(reference, wrong))
    return run_core_tests(copy, EXERCISES[exercise].selection)


@pytest.fixture(scope='module')
def graded_mistakes(request, tmp_path_factory):
    """{mistake: a future of grade(mistake)} for the mistakes of the tests that run (all of them, or those that -k
    selects), graded two copies at a time from the first test on."""
    selected = [item.callspec.params['mistake'] for item in request.session.items
                if hasattr(item, 'callspec') and 'mistake' in item.callspec.params]
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {mistake: pool.submit(grade, mistake, str(tmp_path_factory.mktemp('copy') / 'student'))
               for mistake in selected}


@pytest.mark.parametrize('mistake', MISTAKES)
def test_a_wrong_exercise_fails_with_a_message_that_says_what_is_off(graded_mistakes, mistake):
    exercise, _, _, message = MISTAKES[mistake]
    result = graded_mistakes[mistake].result()
    assert not isinstance(result, str), result
    graded, output = result
    assert not all(graded.values()), f"{mistake}, and yet every test of -k '{EXERCISES[exercise].selection}' passes"
    assert message in output, f"{mistake}: the failure should say '{message}'; it says:\n{output[-3000:]}"
