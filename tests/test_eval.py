"""eval.py's text evaluation: the paper's metrics (textmetrics.py) by hand, MAUVE as used here on closed cases, eval.py
and results.py end to end on tiny Shakespeare runs."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import textmetrics
from batches import random_windows, token_file, windows
from checkpoint import save_checkpoint
from conftest import ROOT, TINY, checkpoint, run


def test_diversity_and_ngram_entropy_by_hand():
    texts = ['abcabc', 'aab']
    # 2-grams: ab bc ca ab bc (3 distinct of 5) and aa ab (2 of 2); 3-grams: abc bca cab abc (3 of 4) and aab (1 of 1);
    # 4-grams: abca bcab cabc (3 of 3), none in 'aab'
    assert textmetrics.diversity(texts) == pytest.approx(5 / 7 * 4 / 5 * 3 / 3)
    assert textmetrics.diversity(texts, orders=(2,)) == pytest.approx(5 / 7)
    # pooled 2-grams: ab 3 times, bc 2, ca 1, aa 1, of 7
    p = [3 / 7, 2 / 7, 1 / 7, 1 / 7]
    assert textmetrics.ngram_entropy(texts, 2) == pytest.approx(-sum(q * math.log2(q) for q in p))
    assert textmetrics.ngram_entropy(texts, 5) == pytest.approx(math.log2(2))  # abcab, bcabc: two, once each
    # the same on token ids as on characters
    assert textmetrics.diversity([[0, 1, 2, 0, 1, 2], [0, 0, 1]]) == textmetrics.diversity(texts)
    # edge cases: a text shorter than n has no n-gram; a single token repeated has one n-gram of each order
    assert math.isnan(textmetrics.diversity(['abc'])) and math.isnan(textmetrics.ngram_entropy(['abc'], 4))
    assert textmetrics.diversity(['abc', 'abcd']) == 1.0  # the short text adds nothing, the other repeats nothing
    assert textmetrics.diversity(['zzzzzz']) == pytest.approx(1 / 5 * 1 / 4 * 1 / 3)
    assert textmetrics.ngram_entropy(['zzzzzz'], 3) == 0.0
    assert math.isnan(textmetrics.diversity([])) and math.isnan(textmetrics.ngram_entropy([], 2))


def tiny_hf_model(path, texts):
    """A tiny random Llama with a byte-level BPE tokenizer trained on texts, saved as a Hugging Face folder."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, show_progress=False)
    PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer).save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(path)


def test_featurizers_read_a_batch_as_each_text_alone(char_model, tmp_path):
    """Features and log-likelihoods of a padded batch equal those of each text read alone, for both kinds of
    featurizer; a text longer than the featurizer's context is cut to it, an empty one has no feature."""
    texts = ['First Citizen:\nBefore we proceed', 'Speak, speak.', 'You are all resolved rather to die than to '
             'famish? ' * 10, '']
    tiny_hf_model(str(tmp_path / 'hf'), texts * 5)
    for name in (os.path.join(char_model, 'ckpt.pt'), str(tmp_path / 'hf')):
        featurizer = textmetrics.load_featurizer(name, 'cpu')
        features, nll, n_tokens = featurizer.read(texts, 'test')
        rows = [featurizer.encode(t)[:featurizer.max_len] for t in texts]
        assert len(rows[2]) == featurizer.max_len < len(featurizer.encode(texts[2])), name
        assert features.shape[0] == 3 and n_tokens == sum(len(r) - 1 for r in rows[:3]), name
        alone = [featurizer.read([t], 'test') for t in texts[:3]]
        for k, (f, _, _) in enumerate(alone):
            assert torch.allclose(torch.from_numpy(features[k]), torch.from_numpy(f[0]), atol=1e-5), name
        assert nll == pytest.approx(sum(a[1] for a in alone), rel=1e-5), name
        assert math.isfinite(textmetrics.perplexity(nll, n_tokens))
        features, nll, n_tokens = featurizer.read(['', ''], 'only empty texts')  # every continuation ended at once
        assert len(features) == 0 and n_tokens == 0, name
    with pytest.raises(textmetrics.UnreadableTextError, match="'€'"):  # not in the char-level vocabulary
        textmetrics.load_featurizer(os.path.join(char_model, 'ckpt.pt'), 'cpu').read(['price: 5€'], 'test')


def test_mauve_tells_held_out_text_from_random_tokens(char_model):
    """The closed checks of MAUVE as eval.py uses it, with the trained char-level featurizer: two sets of 200
    disjoint windows of 64 characters of val text, drawn at random, score high against each other; val text against
    uniformly random characters scores low."""
    featurizer = textmetrics.load_featurizer(os.path.join(char_model, 'ckpt.pt'), 'cpu')
    tokenizer, data_dir = featurizer.tokenizer, os.path.join(ROOT, 'data', 'shakespeare_char')
    g = torch.Generator().manual_seed(0)
    starts = torch.randperm(len(token_file(data_dir, 'val')) // 64, generator=g)[:400] * 64  # disjoint windows
    noise = torch.randint(tokenizer.bkspc_id, (200, 64), generator=g)
    features = [featurizer.read([tokenizer.decode(row) for row in rows.tolist()], 'test')[0]
                for rows in (windows(data_dir, 'val', starts[:200], 64), windows(data_dir, 'val', starts[200:], 64),
                             noise)]
    same = textmetrics.mauve(features[0], features[1], 5.0, seed=0)
    different = textmetrics.mauve(features[0], features[2], 5.0, seed=0)
    print(f"MAUVE: two sets of val text {same:.3f}, val text against random characters {different:.3f}")
    assert same > 0.9 and different < 0.2


def table(stdout):
    """eval.py's text table: (header cells, {row name: cells})."""
    lines = [line for line in stdout.splitlines() if line.startswith('| ')]
    split = [[c.strip() for c in line.strip('|').split('|')] for line in lines]
    return split[0][1:], {cells[0]: cells[1:] for cells in split[1:]}


def test_eval_prints_the_text_table_with_the_new_columns(char_model, tmp_path):
    """Two checkpoints (the same run twice: the same prompts and seeds for every checkpoint give the same row), MAUVE
    with the run's own checkpoint as featurizer, the numbers also written as JSON."""
    ckpt, json_path = os.path.join(char_model, 'ckpt.pt'), tmp_path / 'eval.json'
    result = run('eval.py', f'--out_dirs={char_model},{char_model}', '--num_samples=40', '--max_new_tokens=32',
                 '--eval_iters=2', '--mauve=True', f'--featurizer={ckpt}', f'--json_path={json_path}')
    header, rows = table(result.stdout)
    assert header == ['val cross-entropy', 'words in training text', 'distinct-2', 'char 3-gram entropy (bits)',
                      'backspace rate', 'backspaces that deleted a rare character', 'diversity',
                      '4-gram entropy (bits)', 'perplexity (the model)', 'perplexity (featurizer)', 'MAUVE']
    assert f'featurizer {ckpt}' in result.stdout and 'scaling factor 5.0' in result.stdout
    assert 'seeds 1337, 1338, 1339' in result.stdout
    reference, name = 'val text (the true continuations)', f'{char_model} (bc)'
    assert list(rows) == [reference, name], rows  # the second row is the same checkpoint's: identical
    assert rows[reference][0] == '-' and rows[reference][4] == '-' and rows[reference][8] == '-'
    values = json.loads(json_path.read_text())
    assert [row['name'] for row in values['rows']] == [reference, name, name]
    assert values['rows'][1]['values'] == values['rows'][2]['values']
    model = values['rows'][1]['values']
    assert all(len(model[k]) == 3 for k, _, _ in values['columns'] if k != 'ce')  # one value per sampling seed
    assert all(0 <= v <= 1 for k in ('diversity', 'mauve', 'distinct2') for v in model[k])
    # the featurizer is the model itself here: the two perplexities are one number
    assert model['ppl_model'] == pytest.approx(model['ppl_featurizer'])
    for (key, _, fmt), shown in zip(values['columns'], rows[name]):
        mean, std = shown.split(' ± ') if key != 'ce' else (shown, None)
        assert mean == fmt.format(sum(model[key]) / len(model[key])), (key, shown)
    # the cross-entropy of the continuations under the model, in nats, against its val cross-entropy: an MLE model
    # writes text it finds about as likely as Shakespeare's
    assert abs(math.log(model['ppl_model'][0]) - model['ce'][0]) < 0.5


def test_eval_stops_in_one_line_before_any_sampling(char_model, tmp_path):
    """An unloadable featurizer (gpt2-large offline), continuations longer than the block, a run of another dataset
    after the first, an arithmetic run: one line, and nothing sampled."""
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'empty_hf_home'))
    other_dataset, arithmetic = checkpoint(char_model), checkpoint(char_model)
    other_dataset['config']['dataset'] = 'shakespeare'
    arithmetic['meta']['task'] = 'arithmetic'
    for name, ckpt in (('other_dataset', other_dataset), ('arithmetic', arithmetic)):
        os.makedirs(tmp_path / name)
        save_checkpoint(ckpt, str(tmp_path / name / 'ckpt.pt'))
    for args, start in ((['--out_dirs=' + char_model + ',' + str(tmp_path / 'other_dataset')],
                         'one table compares runs of one dataset'),
                        (['--out_dirs=' + str(tmp_path / 'arithmetic')], f'{tmp_path / "arithmetic"} is an arithmetic run'),
                        (['--mauve=True'], '--featurizer=gpt2-large cannot be loaded'),
                        (['--max_new_tokens=64'], 'prompt_len + max_new_tokens = 16 + 64 does not fit the block size 64'),
                        (['--json_path=nowhere/table.json'], '--json_path=nowhere/table.json: there is no folder nowhere')):
        result = subprocess.run([sys.executable, 'eval.py', f'--out_dirs={char_model}', *args], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(start), result.stderr
        assert 'sampling' not in result.stdout, result.stdout
    with pytest.raises(FileNotFoundError, match='no checkpoint at nowhere/ckpt.pt'):  # a path, not a hub name
        textmetrics.load_featurizer('nowhere/ckpt.pt', 'cpu')


def test_windows_longer_than_the_split_are_refused(shakespeare_char):
    data_dir = os.path.join(ROOT, 'data', shakespeare_char)
    n_val = len(token_file(data_dir, 'val'))
    with pytest.raises(ValueError, match=f'val.bin in .* has {n_val} tokens, too few for windows of {n_val}'):
        random_windows(data_dir, 'val', 1, n_val)
    assert random_windows(data_dir, 'val', 1, n_val - 1).shape == (1, n_val - 1)


def test_results_regenerates_the_table_over_seeds(shakespeare_char, tmp_path):
    """results.py on tiny settings, after an interruption: of its 3 arms x 2 seeds one run is finished (not trained
    again) and one unfinished (resumed); the others and a featurizer are trained, all evaluated and tabled."""
    train_args = [*TINY, '--max_iters=10', '--eval_interval=5', '--bc_warmup_iters=5']
    run('train.py', 'config/shakespeare_char_mle.py', '--seed=1337', *train_args, f'--out_dir={tmp_path / "mle-1337"}')
    run('train.py', 'config/shakespeare_seqmatch.py', '--objective=bc', '--seed=1338', *train_args,
        f'--out_dir={tmp_path / "bc-1338"}')
    path = tmp_path / 'bc-1338' / 'ckpt.pt'
    checkpoint = torch.load(path, weights_only=True)
    checkpoint['iter_num'] = 5  # as a Ctrl-C or a kill at iter 5 leaves it
    torch.save(checkpoint, path)
    result = run('results.py', '--seeds=2', f'--out_root={tmp_path}', f'--train_args={" ".join(train_args)}',
                 '--eval_args=--num_samples=20 --max_new_tokens=16 --eval_iters=2 --sampling_seeds=2')
    # 4 runs and the featurizer trained, 1 resumed
    assert result.stdout.count('$ train.py') == 6 and result.stdout.count('--init_from=resume') == 1
    assert result.stdout.count('is trained already') == 1 and torch.load(path, weights_only=True)['iter_num'] == 10
    assert os.path.exists(tmp_path / 'featurizer' / 'ckpt.pt')
    header, rows = table(result.stdout.split('shakespeare_char with 2 training seed(s)')[1])
    assert header[:3] == ['best val loss (log)', 'training time (s)', 'val cross-entropy'] and header[-1] == 'MAUVE'
    assert list(rows) == ['val text (the true continuations)', 'MLE', 'BC', 'SequenceMatch']
    for arm in ('MLE', 'BC', 'SequenceMatch'):
        assert all(' ± ' in c for c in rows[arm]), rows[arm]  # the mean ± the standard deviation over the 2 seeds
    values = {row['out_dir']: row['values'] for row in json.loads((tmp_path / 'eval.json').read_text())['rows']}
    ce = [values[str(tmp_path / f'mle-{seed}')]['ce'][0] for seed in (1337, 1338)]
    assert rows['MLE'][2] == f"{sum(ce) / 2:.4f} ± {abs(ce[0] - ce[1]) / math.sqrt(2):.4f}"
    best = [min(json.loads(line)['val_loss'] for line in open(tmp_path / f'mle-{seed}' / 'log.jsonl')
                if 'val_loss' in line) for seed in (1337, 1338)]
    assert rows['MLE'][0] == f"{sum(best) / 2:.4f} ± {abs(best[0] - best[1]) / math.sqrt(2):.4f}"


def test_mauve_keeps_faiss_quiet():
    """faiss's k-means warns from C++ on stderr at each of MAUVE's runs (fewer than 39 points per cluster, as
    mauve-text always sets it): nothing a user can act on, so nothing is printed; stderr works again after it."""
    result = run('-c', "import sys, numpy as np, textmetrics; rng = np.random.default_rng(0); "
                       "x, y = (rng.normal(size=(200, 8)).astype('float32') for _ in range(2)); "
                       "print(textmetrics.mauve(x, y, 5.0, 0)); print('after', file=sys.stderr)")
    assert 0 < float(result.stdout) <= 1 and result.stderr.strip() == 'after', result.stderr
