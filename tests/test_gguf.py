"""GGUF files (llama.cpp's format) as Hugging Face models, init_from='hf:<file>.gguf': test_hf.py's tiny Llama and its
tokenizer written into GGUF files here with the gguf package's writer, as llama.cpp's converter lays them out (F32,
and Q8_0 matrices), fine-tuned and exported; the bad files a user can hold; and docs/huggingface.md's lines that
sample an exported model with transformers alone. Offline: nothing is downloaded."""
import json
import os
import pickle
import re
import shutil
import sys

import numpy as np
import pytest
import torch

gguf = pytest.importorskip('gguf', reason="needs the optional gguf: pip install -r requirements-extra.txt")
transformers = pytest.importorskip('transformers', reason="needs the optional transformers: "
                                                          "pip install -r requirements-extra.txt")

from conftest import ROOT, checkpoint  # noqa: E402
from conftest import HF_BK as BK, TINY_HF, Recorded, run_scripts  # noqa: E402
from batches import token_file  # noqa: E402
from checkpoint import load_model, model_from_args  # noqa: E402
from seqmatch import generate  # noqa: E402
from tokenizer import hf_meta, load_hf_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures('offline_on_one_thread')  # conftest's: offline, one thread

# llama.cpp's names of a Llama's tensors
GGUF_NAMES = {'model.embed_tokens.weight': 'token_embd.weight', 'model.norm.weight': 'output_norm.weight',
              'lm_head.weight': 'output.weight'}
GGUF_BLOCK_NAMES = {'input_layernorm': 'attn_norm', 'self_attn.q_proj': 'attn_q', 'self_attn.k_proj': 'attn_k',
                    'self_attn.v_proj': 'attn_v', 'self_attn.o_proj': 'attn_output',
                    'post_attention_layernorm': 'ffn_norm', 'mlp.gate_proj': 'ffn_gate', 'mlp.up_proj': 'ffn_up',
                    'mlp.down_proj': 'ffn_down'}


def rotary_interleaved(weight, heads):
    """A q or k projection's rows as llama.cpp stores them: within each head, its rotary halves interleaved
    (x0, x(d/2), x1, x(d/2+1), ...), which transformers undoes when it reads the file."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, weight.shape[1]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(path, folder, architecture='llama', quantize=False):
    """The Llama in folder (its config, weights and byte-level BPE tokenizer) as a GGUF file; quantize: its matrices
    in Q8_0 (8-bit blocks, as a llama.cpp quantization writes them), the norms in F32."""
    config = transformers.AutoConfig.from_pretrained(folder)
    weights = transformers.AutoModelForCausalLM.from_pretrained(folder).state_dict()
    bpe = json.load(open(os.path.join(folder, 'tokenizer.json')))
    vocab = {**bpe['model']['vocab'], **{t['content']: t['id'] for t in bpe['added_tokens']}}
    special = {t['content'] for t in bpe['added_tokens'] if t['special']}
    tokens = sorted(vocab, key=vocab.get)
    writer = gguf.GGUFWriter(path, architecture)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters['rope_theta'])
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model('gpt2')  # llama.cpp's name for byte-level BPE
    writer.add_token_list(tokens)
    writer.add_token_merges([' '.join(pair) for pair in bpe['model']['merges']])
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    names = dict(GGUF_NAMES)
    for i in range(config.num_hidden_layers):
        names.update({f'model.layers.{i}.{hf}.weight': f'blk.{i}.{g}.weight' for hf, g in GGUF_BLOCK_NAMES.items()})
    for name, weight in weights.items():
        weight = weight.numpy()
        if 'q_proj' in name or 'k_proj' in name:
            weight = rotary_interleaved(weight, config.num_attention_heads if 'q_proj' in name else
                                        config.num_key_value_heads)
        if quantize and weight.ndim == 2:
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(names[name], gguf.quants.quantize(weight, q8), raw_dtype=q8)
        else:
            writer.add_tensor(names[name], weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope='module')
def ggufs(hf_dirs, tmp_path_factory):
    """{name: path}: 'f32' and 'q8', the tiny Llama; and the bad ones: 'not_gguf' (its safetensors file),
    'truncated' (q8 cut in half), 'mpt' (an architecture transformers cannot read from GGUF), 'folder' (a directory
    that holds f32 but no Hugging Face model)."""
    root = tmp_path_factory.mktemp('gguf')
    files = {name: str(root / f'{name}.gguf') for name in ('f32', 'q8', 'mpt', 'truncated')}
    write_gguf(files['f32'], hf_dirs['llama'])
    write_gguf(files['q8'], hf_dirs['llama'], quantize=True)
    write_gguf(files['mpt'], hf_dirs['llama'], architecture='mpt')
    q8 = open(files['q8'], 'rb').read()
    with open(files['truncated'], 'wb') as f:
        f.write(q8[:len(q8) // 2])
    files['not_gguf'] = os.path.join(hf_dirs['llama'], 'model.safetensors')
    files['folder'] = str(root / 'folder')
    os.makedirs(files['folder'])
    shutil.copy(files['f32'], files['folder'])
    return files


def test_a_gguf_loads_as_the_model_and_tokenizer_it_was_written_from(hf_dirs, ggufs):
    """F32: the same weights, bit for bit, and the same tokenizer (so the same data) as the model folder; Q8_0: a
    plain float32 model, no longer quantized, within 8-bit rounding of them."""
    assert {t.tensor_type.name for t in gguf.GGUFReader(ggufs['q8']).tensors} == {'Q8_0', 'F32'}
    folder = model_from_args(dict(hf_name=hf_dirs['llama'], block_size=64, lora_rank=0)).lm.state_dict()
    for name, tolerance in (('f32', 0.0), ('q8', 1e-3)):
        model = model_from_args(dict(hf_name=ggufs[name], block_size=64, lora_rank=0))
        assert model.config.vocab_size == 384 and getattr(model.lm, 'hf_quantizer', None) is None
        weights = model.lm.state_dict()
        assert weights.keys() == folder.keys()
        for key, weight in weights.items():
            assert weight.dtype == torch.float32 and (weight - folder[key]).abs().max() <= tolerance, (name, key)
    tokenizer, expected = load_hf_tokenizer(ggufs['q8']), load_hf_tokenizer(hf_dirs['llama'])
    text = open(os.path.join(ROOT, 'data', 'shakespeare_char', 'input.txt')).read()[100_000:104_000]
    assert tokenizer.encode(text, add_special_tokens=False) == expected.encode(text, add_special_tokens=False)
    meta = hf_meta(tokenizer, ggufs['q8'])
    assert meta == {**hf_meta(expected, hf_dirs['llama']), 'tokenizer': f"hf:{ggufs['q8']}"}


@pytest.fixture(scope='module')
def gguf_run(hf_dirs, ggufs, tmp_path_factory):
    """Documents prepared in the Q8_0 GGUF's tokenizer, SequenceMatch with LoRA on it for 6 iterations, sample.py
    and export_hf.py on the run, as a user runs them: (data, out_dir, export, the scripts' outputs)."""
    root = tmp_path_factory.mktemp('gguf_run')
    data, out, export = str(root / 'data'), str(root / 'out'), str(root / 'export')
    q8 = ggufs['q8']
    outputs = run_scripts(
        ('data/openwebtext/prepare.py', f"--input={hf_dirs['docs']}", f'--out_dir={data}', f'--tokenizer=hf:{q8}'),
        ('train.py', f'--init_from=hf:{q8}', f'--dataset={data}', f'--out_dir={out}', *TINY_HF,
         '--objective=seqmatch', '--max_iters=6', '--eval_interval=6', '--bc_warmup_iters=2'),
        ('sample.py', f'--out_dir={out}', '--start=ROMEO:', '--num_samples=1', '--max_new_tokens=16'),
        ('export_hf.py', f'--out_dir={out}', f'--to={export}'))
    assert [stop for _, stop in outputs] == [None] * 4, outputs
    return data, out, export, [output for output, _ in outputs]


def test_prepare_train_sample_and_export_from_a_gguf(hf_dirs, ggufs, gguf_run):
    """The data is in the GGUF's tokenizer (the folder's, token for token); the run trains from the file and saves only
    the adapters and the <bkspc> rows beside its path; the export is a plain model directory with <bkspc> that gives
    the run's logits and reads the same data."""
    data, out, export, (prepared, trained, sampled, exported) = gguf_run
    with open(os.path.join(data, 'meta.pkl'), 'rb') as f:
        meta = pickle.load(f)
    assert meta == {**hf_meta(load_hf_tokenizer(hf_dirs['llama']), hf_dirs['llama']), 'tokenizer': f"hf:{ggufs['q8']}"}
    documents = [d.strip() for d in open(hf_dirs['docs']).read().split('\n\n') if d.strip()]
    written = np.concatenate([token_file(data, 'train'), token_file(data, 'val')])
    folder_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dirs['llama'])
    assert folder_tokenizer.decode(written.tolist()) == '<|endoftext|>'.join(documents) + '<|endoftext|>'
    assert 'iter 2: SequenceMatch switches on' in trained and 'step 6: train loss' in trained, trained
    saved = checkpoint(out)
    assert saved['model_args']['hf_name'] == ggufs['q8'] and saved['iter_num'] == 6
    assert saved['model'] and all('lora_' in n or 'trainable_tokens' in n for n in saved['model']), list(saved['model'])
    assert 'ROMEO:' in sampled and f"to {export}" in exported
    exported_lm = transformers.AutoModelForCausalLM.from_pretrained(export).eval()
    assert 'quantization_config' not in json.load(open(os.path.join(export, 'config.json')))
    model, _ = load_model(os.path.join(out, 'ckpt.pt'))
    x = torch.randint(0, BK + 1, (3, 20))
    with torch.no_grad():
        assert (model.eval()(x) - exported_lm(x).logits).abs().max() < 1e-5
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    assert tokenizer.convert_tokens_to_ids('<bkspc>') == BK and len(tokenizer) == BK + 1
    assert hf_meta(tokenizer, export)['tokenizer_hash'] == meta['tokenizer_hash']  # reads the same data


def test_a_bad_gguf_stops_prepare_and_train_with_one_line(hf_dirs, ggufs, gguf_run, tmp_path):
    """Each bad file stops prepare.py and train.py with one line naming it, what is wrong and what to do; nothing is
    written."""
    data, out = gguf_run[0], str(tmp_path / 'never')
    expected = {
        'not_gguf': [f"{ggufs['not_gguf']} is not a GGUF file", "takes a hub id, a Hugging Face model directory or "
                                                               "a .gguf file"],
        'truncated': [f"{ggufs['truncated']} is truncated or damaged", f"{os.path.getsize(ggufs['truncated']):,} "
                                                                       f"bytes", "download or copy it again"],
        'mpt': [f"cannot load {ggufs['mpt']}", "architecture 'mpt'", "not supported",
                "use the model's Hugging Face directory or hub id instead"],
        'folder': [f"{ggufs['folder']} holds no Hugging Face model (no config.json)",
                   f"hf:{os.path.join(ggufs['folder'], 'f32.gguf')}"],
    }
    runs = []
    for name in expected:
        runs.append(('data/openwebtext/prepare.py', f"--input={hf_dirs['docs']}", f'--out_dir={out}',
                     f'--tokenizer=hf:{ggufs[name]}'))
        runs.append(('train.py', f'--init_from=hf:{ggufs[name]}', f'--dataset={data}', f'--out_dir={out}', *TINY_HF))
    stops = [stop for _, stop in run_scripts(*runs)]
    assert len(stops) == 2 * len(expected)
    for (name, facts), prepare_stop, train_stop in zip(expected.items(), stops[::2], stops[1::2]):
        for stop in (prepare_stop, train_stop):
            assert stop is not None and '\n' not in stop and all(fact in stop for fact in facts), (name, stop)
    assert not os.path.exists(out)


def test_without_the_gguf_package_a_gguf_asks_for_it(ggufs, monkeypatch):
    monkeypatch.setitem(sys.modules, 'gguf', None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"is a GGUF file, which needs the optional package gguf: pip install -r "
                                          r"requirements-extra.txt"):
        load_hf_tokenizer(ggufs['f32'])


def docs_python_block():
    """The one Python code block of docs/huggingface.md."""
    blocks = re.findall(r"```python\n(.*?)```", open(os.path.join(ROOT, 'docs', 'huggingface.md')).read(), re.DOTALL)
    assert len(blocks) == 1, "docs/huggingface.md should hold one Python block, the sampling lines"
    return blocks[0]


def test_the_docs_sampling_lines_follow_seqmatch_generate_at_every_state(gguf_run, tmp_path, monkeypatch, capsys):
    """docs/huggingface.md's block, run as it is on the export (in a folder where 'out-smollm2-export' is the export),
    with seqmatch.generate's actions forced on its torch.multinomial: at every state its policy is generate's (the
    model on that state, <bkspc> masked out where only the prompt is left), it asks for as many actions, and it
    prints the text that generate's actions leave."""
    export = gguf_run[2]
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    prompt = tokenizer.encode('The meaning of life is', add_special_tokens=False)  # the block's own prompt
    recorded = Recorded(model_from_args(dict(hf_name=export, block_size=128, lora_rank=0)).eval())  # deletes often
    torch.manual_seed(0)
    tokens, valid, _ = generate(recorded, torch.tensor([prompt]), 64, BK, eos_id=tokenizer.eos_token_id)
    actions = tokens[0, len(prompt):][valid[0, len(prompt):]].tolist()
    assert actions.count(BK) >= 5, "generate should delete, and delete after deleting"
    policies, forced = [], iter(actions)

    def forced_multinomial(probs, num_samples):
        policies.append(probs.clone())
        return torch.tensor([next(forced)])
    monkeypatch.setattr(torch, 'multinomial', forced_multinomial)
    monkeypatch.chdir(tmp_path)
    os.symlink(export, 'out-smollm2-export')
    exec(docs_python_block(), {})
    assert len(policies) == len(actions)
    state = list(prompt)
    for j, (policy, action) in enumerate(zip(policies, actions)):
        logits = recorded.seen[j][0, :BK + 1].clone()  # generate's model on the state before action j
        if len(state) == len(prompt):
            logits[BK] = float('-inf')
        expected = logits.log_softmax(-1)  # compared as log-probabilities: a tiny random model's are all ~1/320
        assert torch.equal(policy > 0, expected > float('-inf')), f"action {j}: <bkspc> masked otherwise"
        diff = (policy.log() - expected)[policy > 0].abs().max().item()
        assert diff < 1e-5, f"action {j}: its log-probabilities differ by {diff:.3g} from generate's"
        state = state[:-1] if action == BK else state + [action]
    if actions[-1] == tokenizer.eos_token_id:  # ends the text, not part of it
        state.pop()
    assert capsys.readouterr().out == tokenizer.decode(state) + '\n'
