"""Hugging Face models through hf_model.py (train.py's init_from='hf:...'): tiny random Llama, Qwen2 and GPT-2 models
built from config objects, with a BPE tokenizer trained here on Tiny Shakespeare, saved to folders and loaded from
them as a user loads a local model. Offline (HF_HUB_OFFLINE=1): nothing is downloaded."""
import dataclasses
import os
import pickle
import random

import numpy as np
import pytest
import torch

peft = pytest.importorskip('peft', reason="needs the optional peft: pip install -r requirements-extra.txt")
transformers = pytest.importorskip('transformers', reason="needs the optional transformers: "
                                                          "pip install -r requirements-extra.txt")

from conftest import HF_BK, TINY_HF, Recorded, checkpoint, hf_train_args, run, run_scripts  # noqa: E402
from conftest import assert_rows_are_the_policy_at_each_state, final_text, random_trajectories  # noqa: E402
from batches import token_file  # noqa: E402
from checkpoint import load_model, model_from_args, save_checkpoint  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from seqmatch import attention_mask, backspace_inputs, bc_loss, generate, soft_values  # noqa: E402
from tokenizer import check_tokenizer, hf_meta  # noqa: E402

BK = HF_BK
pytestmark = pytest.mark.usefixtures('offline_on_one_thread')


@pytest.fixture(scope='module')
def seqmatch_run(hf_dirs, hf_data, tmp_path_factory):
    """SequenceMatch with LoRA on the Llama for 8 iterations (on from iteration 3): its out_dir."""
    out = str(tmp_path_factory.mktemp('hf_seqmatch') / 'straight')
    result = run(*hf_train_args(hf_dirs, hf_data, 'llama', out, '--objective=seqmatch', '--max_iters=8',
                             '--eval_interval=4', '--bc_warmup_iters=3'))
    assert 'iter 3: SequenceMatch switches on' in result.stdout and 'reward_model' in result.stdout
    return out


@pytest.fixture(scope='module')
def scripts_on_the_run(seqmatch_run, tmp_path_factory):
    """sample.py (with --show_edits), eval.py and export_hf.py on seqmatch_run: their outputs, and the export."""
    export = str(tmp_path_factory.mktemp('hf_export') / 'export')
    outputs = run_scripts(
        ('sample.py', f'--out_dir={seqmatch_run}', '--start=ROMEO:', '--num_samples=2', '--max_new_tokens=24',
         '--show_edits=True'),
        ('eval.py', f'--out_dirs={seqmatch_run}', '--num_samples=4', '--eval_iters=2', '--prompt_len=8'),
        ('export_hf.py', f'--out_dir={seqmatch_run}', f'--to={export}'))
    assert [stop for _, stop in outputs] == [None] * 3, outputs
    return [out for out, _ in outputs], export


def load_hf(hf_dirs, arch, **settings):
    """A tiny model through the adapter in eval mode, LoRA adapters and <bkspc> rows moved off their initial values
    (a LoRA adapter starts as zero: it would change nothing)."""
    torch.manual_seed(1)  # the same adapters at every call (LoRA's A matrices start random)
    model = model_from_args(dict(hf_name=hf_dirs[arch], block_size=64, **settings)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize('attention', ['sdpa', 'eager'])
@pytest.mark.parametrize('arch', ['llama', 'qwen2', 'gpt2'])
def test_masked_forward_and_rollouts_are_exact(hf_dirs, arch, attention):
    """Row j of the masked forward is the model on the state after j actions; each rollout step's logits are the
    model on its state, with the rollout's deleted positions left in the KV cache and masked out."""
    model = load_hf(hf_dirs, arch, attn_implementation=attention)
    assert model.lm.config._attn_implementation == attention
    with torch.no_grad():
        tokens = random_trajectories(4, 40, 3, BK, p_bkspc=0.45, seed=0)
        assert (tokens == BK).sum() > 20
        assert_rows_are_the_policy_at_each_state(model, tokens, backspace_inputs(tokens, BK, 3), BK)
        recorded = Recorded(model)
        torch.manual_seed(2)
        tokens, _, stacks = generate(recorded, torch.randint(1, BK, (6, 4)), 30, BK)
        assert (tokens == BK).sum() > 10, "the rollouts should delete"
        for b in range(6):
            for j in range(4, 34):
                state = final_text(tokens[b, :j], BK)
                diff = (model(torch.tensor([state]))[0, -1] - recorded.seen[j - 4][b]).abs().max().item()
                assert diff < 1e-5, f"row {b}, position {j}: the step's logits differ by {diff:.3g} from its state's"
        assert_rows_are_the_policy_at_each_state(model, tokens, (stacks.input_ids, stacks.position_ids,
                                                                 stacks.removed_at), BK)


def test_eager_attention_with_a_boolean_mask_is_wrong_and_the_adapter_converts_it(hf_dirs):
    """Why the adapter turns the mask into 0 / a large negative number for 'eager': as a boolean one it is added to
    the scores as 1 and 0, and the logits come out wrong without any error."""
    model = load_hf(hf_dirs, 'llama', attn_implementation='eager')
    tokens = random_trajectories(2, 20, 2, BK, p_bkspc=0.4, seed=3)
    input_ids, position_ids, removed_at = backspace_inputs(tokens, BK, 2)
    mask = attention_mask(removed_at)  # (B, n, n)
    with torch.no_grad():
        raw = model.lm(input_ids=input_ids, position_ids=position_ids, attention_mask=mask[:, None]).logits
        adapted = model(input_ids, position_ids=position_ids, attn_mask=mask)
    assert (raw - adapted).abs().max() > 0.01


def test_bkspc_rows_start_as_the_mean_token(hf_dirs):
    """<bkspc> takes the id after the vocabulary: a row of the tables where there is one to spare (qwen2's padding),
    else the tables grow to a multiple of 64; its rows, input and (untied) output, and the padding rows after it
    start as the mean of the vocabulary's. lora_rank=0: a plain model whose every weight trains."""
    for arch, rows in (('llama', 384), ('qwen2', BK + 16), ('gpt2', 384)):
        model = model_from_args(dict(hf_name=hf_dirs[arch], block_size=64, lora_rank=0))
        assert model.config.vocab_size == rows
        assert all(p.requires_grad for p in model.parameters())
        tables = (model.lm.get_input_embeddings().weight, model.lm.get_output_embeddings().weight)
        assert (tables[0] is tables[1]) == (arch != 'llama')
        for table in tables:
            assert table.shape[0] == rows
            assert torch.equal(table[BK:], table[:BK].mean(dim=0).expand(rows - BK, -1)), arch


def test_a_model_that_cannot_take_the_mask_is_refused_before_any_weight_loads(hf_dirs, tmp_path):
    def refused(settings, message):
        with pytest.raises(ValueError) as e:
            model_from_args({'block_size': 64, **settings})
        assert str(e.value) == message
    refused(dict(hf_name=hf_dirs['llama'], attn_implementation='flash_attention_2'),
            "attn_implementation='flash_attention_2' cannot take SequenceMatch's backspace mask exactly; use one of "
            "sdpa, eager")
    refused(dict(hf_name=hf_dirs['t5']),
            f"{hf_dirs['t5']} is a t5 model, not a causal language model (AutoModelForCausalLM cannot load it)")
    refused(dict(hf_name=hf_dirs['gpt2'], block_size=256), f"block_size 256 > the 128 positions of {hf_dirs['gpt2']}")
    window = str(tmp_path / 'window')
    transformers.AutoConfig.from_pretrained(hf_dirs['qwen2'], use_sliding_window=True,
                                            sliding_window=32).save_pretrained(window)
    refused(dict(hf_name=window), f"{window} attends over a sliding window of 32 tokens, which the backspace mask "
                                  f"leaves out: use a block_size of at most 32")
    # an implementation switched after loading: refused at the first masked call
    model = load_hf(hf_dirs, 'llama')
    model.lm.set_attn_implementation('flex_attention')
    with pytest.raises(ValueError, match="'flex_attention' cannot take the backspace mask exactly"):
        model(torch.zeros(1, 4, dtype=torch.long), attn_mask=torch.ones(1, 4, 4, dtype=torch.bool).tril())


def test_gradient_checkpointing_recomputes_each_block_for_the_same_gradients(hf_dirs):
    x = torch.randint(0, BK, (2, 16))
    grads, calls = [], []
    for checkpointing in (False, True):
        model = load_hf(hf_dirs, 'llama', gradient_checkpointing=checkpointing, lora_dropout=0.0).train()
        mlp = next(m for name, m in model.named_modules() if name.endswith('layers.0.mlp'))  # inside a checkpoint
        forwards, mlp_forward = [], mlp.forward
        mlp.forward = lambda *args: forwards.append(1) or mlp_forward(*args)  # (a recomputation runs no hooks)
        V, Q = soft_values(model(x)[..., :BK + 1], x)
        bc_loss(V, Q, torch.ones_like(x, dtype=torch.bool)).backward()
        grads.append({name: p.grad for name, p in model.named_parameters() if p.requires_grad})
        calls.append(len(forwards))
    assert calls == [1, 2], f"block 0's MLP ran {calls} times without and with checkpointing"
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_prepare_writes_the_models_tokenizer(hf_dirs, hf_data):
    with open(os.path.join(hf_data, 'meta.pkl'), 'rb') as f:
        meta = pickle.load(f)
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dirs['llama'])
    assert meta == hf_meta(tokenizer, hf_dirs['llama'])
    assert (meta['tokenizer'], meta['bkspc_id'], meta['eos_id'], meta['vocab_size'], meta['token_dtype']) == (
        f"hf:{hf_dirs['llama']}", BK, 0, BK + 1, 'uint16')
    documents = [d.strip() for d in open(hf_dirs['docs']).read().split('\n\n') if d.strip()]
    written = np.concatenate([token_file(hf_data, 'train'), token_file(hf_data, 'val')])
    assert tokenizer.decode(written.tolist()) == '<|endoftext|>'.join(documents) + '<|endoftext|>'
    check_tokenizer(meta, hf_dirs['gpt2'])  # the same tokenizer in another model's folder reads the same data


def test_a_vocabulary_beyond_uint16_is_written_as_uint32(tmp_path):
    """70,000 tokens (as Qwen's or Llama-3's 150,000): ids above 65,535 need uint32 token files."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = {f'w{i}': i for i in range(1, 70_000)}
    wordlevel = Tokenizer(models.WordLevel({'<eos>': 0, **words}, unk_token='<eos>'))
    wordlevel.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder, docs = str(tmp_path / 'big'), tmp_path / 'docs.txt'
    transformers.PreTrainedTokenizerFast(tokenizer_object=wordlevel, eos_token='<eos>').save_pretrained(folder)
    rng = random.Random(0)
    ids = [[rng.choice([5, 65_535, 65_536, 69_999]) for _ in range(30)] for _ in range(40)]
    docs.write_text('\n\n'.join(' '.join(f'w{i}' for i in doc) for doc in ids))
    data = str(tmp_path / 'data')
    run('data/openwebtext/prepare.py', f'--input={docs}', f'--out_dir={data}', f'--tokenizer=hf:{folder}')
    with open(os.path.join(data, 'meta.pkl'), 'rb') as f:
        meta = pickle.load(f)
    assert (meta['bkspc_id'], meta['token_dtype']) == (70_000, 'uint32')
    written = np.concatenate([token_file(data, 'train'), token_file(data, 'val')]).tolist()
    assert written == [i for doc in ids for i in doc + [0]]


def test_train_mle_and_bc(hf_dirs, hf_data, tmp_path):
    """MLE with LoRA on GPT-2 with eager attention; BC on Qwen2 training every weight, with gradient checkpointing."""
    mle, bc = str(tmp_path / 'mle'), str(tmp_path / 'bc')
    outputs = run_scripts(
        hf_train_args(hf_dirs, hf_data, 'gpt2', mle, '--objective=mle', '--max_iters=4', '--eval_interval=4',
                   '--attn_implementation=eager'),
        hf_train_args(hf_dirs, hf_data, 'qwen2', bc, '--objective=bc', '--max_iters=4', '--eval_interval=4',
                   '--lora_rank=0', '--gradient_checkpointing=True'))
    for out, stop in outputs:
        assert stop is None and 'step 4: train loss' in out and 'iter 4: loss' in out, (out, stop)
    trained = set(checkpoint(mle)['model'])
    assert trained and all('lora_' in name or 'trainable_tokens' in name for name in trained), trained
    every = {name for name, _ in transformers.AutoModelForCausalLM.from_pretrained(hf_dirs['qwen2']).named_parameters()}
    assert set(checkpoint(bc)['model']) == every


def test_resume_continues_exactly(hf_dirs, hf_data, seqmatch_run, tmp_path):
    """Stopped at iteration 4 and resumed to 8, SequenceMatch on since 3: the weights of the run never stopped, bit for
    bit (one thread, see offline_on_one_thread)."""
    args = ['--objective=seqmatch', '--eval_interval=4', '--bc_warmup_iters=3']
    run(*hf_train_args(hf_dirs, hf_data, 'llama', tmp_path, *args, '--max_iters=4'))
    result = run('train.py', '--init_from=resume', f'--out_dir={tmp_path}', f'--dataset={hf_data}', *TINY_HF, *args,
                 '--max_iters=8')
    assert 'resuming training from' in result.stdout and 'iter 6:' in result.stdout
    straight, resumed = checkpoint(seqmatch_run), checkpoint(tmp_path)
    assert straight['model'].keys() == resumed['model'].keys()
    for name in straight['model']:
        assert torch.equal(straight['model'][name], resumed['model'][name]), f"{name} differs after resuming"
    assert torch.equal(straight['processes'][0]['replay']['tokens'], resumed['processes'][0]['replay']['tokens'])


def test_sample_shows_the_edits_and_eval_reads_the_run(seqmatch_run, scripts_on_the_run):
    (sample, evaluation, _), _ = scripts_on_the_run
    samples = sample.split('Overriding: show_edits = True\n')[1].split('---------------\n')
    assert len(samples) == 3 and samples[-1] == ''
    for printed in samples[:-1]:
        final, edits = printed.split('\n--- with the ')
        n, typed = edits.split(' deletion(s) shown:\n')
        assert final.startswith('ROMEO:') and typed.startswith('ROMEO:') and typed.count('⌫') == int(n)
    row = evaluation.strip().splitlines()[-1]
    assert row.startswith(f'| {seqmatch_run} (seqmatch) |'), evaluation


def test_lora_trains_only_the_adapters_and_bkspc_rows_and_the_export_loads_anywhere(hf_dirs, hf_data, seqmatch_run,
                                                                                   scripts_on_the_run):
    saved = checkpoint(seqmatch_run)
    trained = set(saved['model'])
    assert {n for n in trained if 'trainable_tokens' in n} == {  # the Llama's output layer is untied: two rows
        'base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta.default',
        'base_model.model.lm_head.token_adapter.trainable_tokens_delta.default'}
    assert all('lora_' in n for n in trained if 'trainable_tokens' not in n)
    assert saved['model_args']['hf_name'] == hf_dirs['llama'] and saved['meta']['tokenizer'] == f"hf:{hf_dirs['llama']}"
    _, export = scripts_on_the_run
    base = transformers.AutoModelForCausalLM.from_pretrained(hf_dirs['llama']).state_dict()
    exported = transformers.AutoModelForCausalLM.from_pretrained(export).eval()
    for name, weight in exported.state_dict().items():
        if name in ('model.embed_tokens.weight', 'lm_head.weight'):  # trained at <bkspc> only
            assert torch.equal(weight[:BK], base[name]) and weight.shape[0] == 384, name
            assert not torch.equal(weight[BK], base[name].mean(dim=0)), f"{name}: the <bkspc> row did not train"
        elif name.endswith('proj.weight'):  # every linear layer of the blocks has a trained adapter
            assert not torch.equal(weight, base[name]), f"{name}: its LoRA adapter did not train"
        else:
            assert torch.equal(weight, base[name]), f"{name} changed, but it is no adapter's"
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    assert tokenizer.convert_tokens_to_ids('<bkspc>') == BK and len(tokenizer) == BK + 1
    model, _ = load_model(os.path.join(seqmatch_run, 'ckpt.pt'))
    x = torch.randint(0, BK + 1, (3, 20))
    with torch.no_grad():
        assert (model.eval()(x) - exported(x).logits).abs().max() < 1e-5
    # fine-tuned again from the export: <bkspc> is its trained row, and the data of the base tokenizer fits
    again = model_from_args(dict(hf_name=export, block_size=32, lora_rank=0))
    assert torch.equal(again.lm.get_input_embeddings().weight, exported.get_input_embeddings().weight)
    with open(os.path.join(hf_data, 'meta.pkl'), 'rb') as f:
        check_tokenizer(pickle.load(f), export)


def test_bad_input_stops_with_one_line_and_writes_nothing(hf_dirs, hf_data, shakespeare_char, tmp_path):
    """Each stop is the one line a user sees."""
    out, llama = str(tmp_path / 'never'), hf_dirs['llama']
    gpt = tmp_path / 'gpt'
    gpt.mkdir()
    config = GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=1, n_embd=8)
    save_checkpoint({'model_args': dataclasses.asdict(config), 'model': GPT(config).state_dict()}, str(gpt / 'ckpt.pt'))
    train = ['train.py', f'--out_dir={out}', f'--dataset={hf_data}', *TINY_HF]
    cases = {
        (*train, '--init_from=hf:no-such-org/no-such-model'):
            "cannot load the Hugging Face model no-such-org/no-such-model: We couldn't connect to",
        (*train, f"--init_from=hf:{hf_dirs['t5']}"):
            f"{hf_dirs['t5']} is a t5 model, not a causal language model (AutoModelForCausalLM cannot load it)",
        (*train, f'--init_from=hf:{llama}', '--attn_implementation=flash_attention_2'):
            "attn_implementation='flash_attention_2' cannot take SequenceMatch's backspace mask exactly; use one of "
            "sdpa, eager",
        (*train, f'--init_from=hf:{llama}', '--dataset=shakespeare_char'):
            f"the data was prepared with the tokenizer char, and the model {llama} has another one: prepare it with "
            f"--tokenizer=hf:{llama} (data/openwebtext/prepare.py)",
        ('export_hf.py', f'--out_dir={gpt}', f'--to={out}'):
            f"{gpt} trained model.py's GPT, not a Hugging Face model: there is nothing to export",
        ('export_hf.py', f'--out_dir={gpt}', f'--to={gpt}'):
            f"{gpt} is a file or a folder that is not empty; nothing was written: export to a new or empty directory",
        ('data/openwebtext/prepare.py', f"--input={hf_dirs['docs']}", f'--out_dir={out}', '--tokenizer=hf2:x'):
            "--tokenizer=hf2:x: expected 'gpt2' or 'hf:<model id or local directory>'",
    }
    stops = [stop for _, stop in run_scripts(*cases)]
    for (args, expected), stop in zip(cases.items(), stops):
        assert stop is not None and stop.startswith(expected) and '\n' not in stop, (args, stop)
    assert len(stops) == len(cases) and not os.path.exists(out)
