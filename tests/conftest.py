import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # tests import model.py and seqmatch.py from the repository root
# Without internet, the one setting the tests need (README, "Tests"): a folder with the files they would download,
# DIR/tinyshakespeare/input.txt and DIR/tiktoken_cache/ (tiktoken's cache holding GPT-2's BPE files).
OFFLINE_DATA = os.environ.get('SEQMATCH_OFFLINE_DATA')
if OFFLINE_DATA and 'TIKTOKEN_CACHE_DIR' not in os.environ:
    os.environ['TIKTOKEN_CACHE_DIR'] = os.path.abspath(os.path.join(OFFLINE_DATA, 'tiktoken_cache'))

from checkpoint import load_checkpoint  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from seqmatch import attention_mask  # noqa: E402

# settings that make train.py take a second or two: the end-to-end tests add theirs after these
TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=4', '--eval_iters=2',
        '--log_interval=5', '--warmup_iters=5', '--lr_decay_iters=40', '--prompt_len=8', '--model_batch_size=2',
        '--rollouts_per_sample=4', '--sample_interval=5', '--buffer_size=8', '--device=cpu']


def run(script, *args, check=True, launcher=(sys.executable,)):
    """Run one of the repository's scripts (or `-c`) from the repository root, as a user would."""
    result = subprocess.run([*launcher, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed:\n{result.stdout}\n{result.stderr}")
    return result


def checkpoint(out_dir):
    """The ckpt.pt that train.py wrote into out_dir, read as every script reads it."""
    return load_checkpoint(os.path.join(out_dir, 'ckpt.pt'))


@pytest.fixture
def tiny_model():
    """A small random GPT in eval mode (dropout off), fp32 on the CPU; <bkspc> is the last id."""
    def make(vocab_size=20, block_size=64, n_layer=2, n_head=2, n_embd=32, seed=0):
        torch.manual_seed(seed)
        config = GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer,
                           n_head=n_head, n_embd=n_embd, dropout=0.0, bias=True)
        return GPT(config).eval()
    return make


@pytest.fixture(scope='session')
def shakespeare_char():
    """data/shakespeare_char prepared: from input.txt already there, the offline copy, or a download."""
    data = os.path.join(ROOT, 'data', 'shakespeare_char')
    if not os.path.exists(os.path.join(data, 'meta.pkl')):
        if OFFLINE_DATA and not os.path.exists(os.path.join(data, 'input.txt')):
            shutil.copy(os.path.join(OFFLINE_DATA, 'tinyshakespeare', 'input.txt'), os.path.join(data, 'input.txt'))
        result = subprocess.run([sys.executable, 'data/shakespeare_char/prepare.py'], cwd=ROOT,
                                capture_output=True, text=True)
        if 'could not download' in result.stderr:
            pytest.skip("Tiny Shakespeare could not be downloaded: set SEQMATCH_OFFLINE_DATA=DIR with "
                        "DIR/tinyshakespeare/input.txt (README, Tests)")
        assert result.returncode == 0, result.stdout + result.stderr
    return 'shakespeare_char'


@pytest.fixture(scope='session')
def char_model(shakespeare_char, tmp_path_factory):
    """The out_dir of a small char-level model of Tiny Shakespeare trained briefly, with BC and plenty of noise, so
    that it has learned what a character that does not fit looks like: it tells held-out text from random characters,
    which a random-weight model does not, and serves offline as MAUVE's featurizer and as a run to evaluate."""
    out = tmp_path_factory.mktemp('char_model')
    # one wide layer learns that fastest (measured: MAUVE of val text against random characters 0.04-0.06 where a
    # random-weight model gets 0.36-0.46; two layers of 128 for as long, 0.07-0.11; two of 64 for longer, 0.17-0.20)
    run('train.py', 'config/shakespeare_seqmatch.py', '--objective=bc', '--p_noise=0.3', f'--out_dir={out}',
        '--n_layer=1', '--n_head=4', '--n_embd=128', '--batch_size=32', '--learning_rate=2e-3', '--max_iters=250',
        '--lr_decay_iters=250', '--warmup_iters=30', '--eval_interval=250', '--eval_iters=2', '--device=cpu')
    return str(out)


@pytest.fixture(scope='session')
def gpt2_bpe():
    """GPT-2's BPE through tiktoken, which downloads its files on first use."""
    import tiktoken
    try:
        return tiktoken.get_encoding('gpt2')
    except OSError:  # requests' connection errors are OSErrors
        pytest.skip("tiktoken could not download GPT-2's BPE files: set SEQMATCH_OFFLINE_DATA=DIR with "
                    "DIR/tiktoken_cache/ (README, Tests)")


# ----------------------------------------------------------------------------- rows with <bkspc>, by definition
# (test_seqmatch.py grades the masking with these; test_hf.py holds a Hugging Face model to them too)


def final_text(row, bkspc_id):
    """The text a row ends in, by the definition: each <bkspc> drops the last token."""
    text = []
    for tok in row.tolist():
        text = text[:-1] if tok == bkspc_id else text + [tok]
    return text


def random_trajectories(B, n, n_prompt, bkspc_id, p_bkspc, seed):
    """Rows with many backspaces, never deleting into the prompt or emptying the row."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(B):
        row, depth = [], 0
        for j in range(n):
            if j >= n_prompt and depth > max(n_prompt, 1) and torch.rand(1, generator=g) < p_bkspc:
                row.append(bkspc_id)
                depth -= 1
            else:
                row.append(int(torch.randint(0, bkspc_id, (1,), generator=g)))
                depth += 1
        rows.append(row)
    return torch.tensor(rows)


def last_logits_of_each_state(model, states):
    """The model's last logits on each state (a list of token lists), in padded causal forwards of up to 256
    states: padding after a state's end changes nothing before it."""
    last = []
    for k in range(0, len(states), 256):
        chunk = states[k:k + 256]
        n = max(len(s) for s in chunk)
        logits = model(torch.tensor([s + [0] * (n - len(s)) for s in chunk]))
        last.append(logits[torch.arange(len(chunk)), torch.tensor([len(s) - 1 for s in chunk])])
    return torch.cat(last)  # (len(states), vocab)


def assert_rows_are_the_policy_at_each_state(model, tokens, masked_inputs, bkspc_id, every=1):
    """The definition of the masking: with masked_inputs = (input_ids, position_ids, removed_at) of the rows tokens,
    row j of the masked forward equals the model's forward on the state after tokens[:j+1], the position ids are
    the stack depths (the index of each state's last token in its text), and the input id is that last token.
    Checked at every position j, or every `every`-th one and the last."""
    input_ids, position_ids, removed_at = masked_inputs
    for name, x in zip(('input_ids', 'position_ids', 'removed_at'), masked_inputs):
        assert x.shape == tokens.shape, f"for tokens of shape {tuple(tokens.shape)}, {name} has shape {tuple(x.shape)}"
    attn_mask = attention_mask(removed_at)
    logits = model(input_ids, position_ids=position_ids, attn_mask=attn_mask)
    n = tokens.size(1)
    checked = sorted(set(range(0, n, every)) | {n - 1})
    for b in range(tokens.size(0)):
        states = {j: final_text(tokens[b, :j + 1], bkspc_id) for j in checked}
        fresh = dict(zip(checked, last_logits_of_each_state(model, list(states.values()))))
        for j in checked:
            where = f"row {b}, position {j} (token {tokens[b, j].item()}, state {states[j]})"
            assert input_ids[b, j] == states[j][-1], (
                f"{where}: input id {input_ids[b, j].item()}, expected {states[j][-1]}: the last token of the state "
                f"(at a <bkspc>, a copy of the token left on top)")
            assert position_ids[b, j] == len(states[j]) - 1, (
                f"{where}: position id {position_ids[b, j].item()}, expected {len(states[j]) - 1}: the index of "
                f"the state's last token in the state's text (the stack depth)")
            diff = (fresh[j] - logits[b, j]).abs().max().item()
            assert diff < 1e-5, (
                f"{where}: logits differ by {diff:.3g} from a fresh forward on the state. Up to here: input_ids "
                f"{input_ids[b, :j + 1].tolist()}, position_ids {position_ids[b, :j + 1].tolist()}, position {j} "
                f"attends to {attn_mask[b, j].nonzero()[:, 0].tolist()} (exactly the positions that make up its state)")


# -----------------------------------------------------------------------------
# Hugging Face models (test_hf.py, test_gguf.py, test_ddp.py): tiny random Llama, Qwen2 and GPT-2 models built from
# config objects, with a BPE tokenizer trained here on Tiny Shakespeare, saved to folders and loaded from them as a
# user loads a local model. Offline (HF_HUB_OFFLINE=1): nothing is downloaded.

HF_BK = 320  # <bkspc>: the tokenizer below has 320 tokens, <|endoftext|> (eos) at 0
# settings that make a Hugging Face run take seconds (the model's own shape comes from its folder)
TINY_HF = ['--block_size=32', '--batch_size=4', '--eval_iters=2', '--log_interval=2', '--warmup_iters=2',
           '--lr_decay_iters=40', '--prompt_len=8', '--model_batch_size=2', '--rollouts_per_sample=4',
           '--sample_interval=5', '--buffer_size=8', '--device=cpu', '--learning_rate=1e-2']


@pytest.fixture(scope='module')
def offline_on_one_thread():
    """No script reaches the hub; every run takes one thread: resuming is bit for bit on one thread only, and
    models this small run far faster on one than on two threads of a shared CPU."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv('HF_HUB_OFFLINE', '1')
        env.setenv('OMP_NUM_THREADS', '1')
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def hf_dirs(shakespeare_char, tmp_path_factory):
    """{name: folder} of tiny models, each with the same tokenizer: 'llama' (an untied output layer, grouped-query
    attention, no row to spare for <bkspc>), 'qwen2' (tied, 16 padding rows), 'gpt2' (tied, learned positions, Conv1D
    layers), and 't5', a model that is not a causal LM (its config alone). 'docs': a text file of documents."""
    transformers = pytest.importorskip('transformers', reason="needs the optional transformers: "
                                                              "pip install -r requirements-extra.txt")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    root = tmp_path_factory.mktemp('hf')
    text = open(os.path.join(ROOT, 'data', 'shakespeare_char', 'input.txt')).read()[:60_000]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator([text], trainers.BpeTrainer(vocab_size=HF_BK, special_tokens=['<|endoftext|>'],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token='<|endoftext|>')
    assert len(tokenizer) == HF_BK
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=0)
    configs = {'llama': transformers.LlamaConfig(vocab_size=HF_BK, tie_word_embeddings=False, **shape),
               'qwen2': transformers.Qwen2Config(vocab_size=HF_BK + 16, tie_word_embeddings=True, **shape),
               'gpt2': transformers.GPT2Config(vocab_size=HF_BK, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                               bos_token_id=0, eos_token_id=0)}
    dirs = {}
    for name, config in configs.items():
        torch.manual_seed(0)
        dirs[name] = str(root / name)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
    dirs['t5'] = str(root / 't5')
    transformers.T5Config(vocab_size=HF_BK, d_model=16, d_ff=32, num_layers=1, num_heads=2).save_pretrained(dirs['t5'])
    tokenizer.save_pretrained(dirs['t5'])
    dirs['docs'] = str(root / 'docs.txt')
    with open(dirs['docs'], 'w') as f:
        f.write(text)  # Shakespeare's speeches are separated by blank lines: each is a document
    return dirs


@pytest.fixture(scope='session')
def hf_data(hf_dirs, tmp_path_factory):
    """The documents prepared in the tiny models' tokenizer, as a user prepares them."""
    data = str(tmp_path_factory.mktemp('hf_data') / 'data')
    result = run('data/openwebtext/prepare.py', f"--input={hf_dirs['docs']}", f'--out_dir={data}',
                 f"--tokenizer=hf:{hf_dirs['llama']}")
    assert 'documents, the last' in result.stdout
    return data


def hf_train_args(hf_dirs, hf_data, arch, out_dir, *args):
    """The arguments of train.py fine-tuning one of the tiny models on hf_data."""
    return ('train.py', f'--init_from=hf:{hf_dirs[arch]}', f'--dataset={hf_data}', f'--out_dir={out_dir}', *TINY_HF,
            *args)


RUN_SCRIPTS = """
import contextlib, io, json, os, runpy, sys
sys.path.insert(0, os.getcwd())  # the repository, as when a script is run directly
for script, *args in json.loads(sys.argv[1]):
    sys.argv, out, stop = [script, *args], io.StringIO(), None
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name='__main__')
    except SystemExit as e:  # what the shell shows of it: str(e.code), on stderr
        stop = str(e.code)
    print(json.dumps([out.getvalue(), stop]))
"""


def run_scripts(*runs):
    """Runs each (script, *args) as `python script *args` runs it, one after another in one process, which imports
    torch, transformers and peft once (most of a tiny run's time). Returns [(its stdout, what it stopped with: the
    message of its SystemExit, or None)]."""
    result = run('-c', RUN_SCRIPTS, json.dumps(runs))
    return [tuple(json.loads(line)) for line in result.stdout.splitlines()]


class Recorded(torch.nn.Module):
    """A model whose <bkspc> logit is raised (its rollouts delete often), recording the logits of each call's last
    position as the model computed them: the policy of each rollout step."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.seen = model, model.config, []

    def new_kv_cache(self, batch_size, max_len):
        return self.model.new_kv_cache(batch_size, max_len)

    def forward(self, idx, **kwargs):
        logits = self.model(idx, **kwargs)
        self.seen.append(logits[:, -1])
        return logits + 6.0 * (torch.arange(logits.size(-1)) == HF_BK)
