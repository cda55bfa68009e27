"""
A nanoGPT-style GPT (learned positions, pre-LN blocks, weight tying, GPT-2 init) with three additions
that SequenceMatch needs (see seqmatch.py, section 2, backspace masking):
  - position_ids: a backspace makes position ids differ from the column index,
  - attn_mask: a boolean (B, T, S) mask, True = may attend, a subset of the causal triangle,
  - kv_cache: a step-synchronous cache so a batch of rollouts can grow one token per step.
With none of them given, forward() is ordinary causal language modelling.
"""

import contextlib
import math
import os
import pickle
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from tokenizer import check_tokenizer


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest row (and largest position id + 1)
    vocab_size: int = 50304  # GPT-2's 50257 + <bkspc> at 50257, padded up to a multiple of 64
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linears and LayerNorms, as GPT-2


class KVCache:
    """Keys and values of every layer for a batch of rows that all grow by the same number of tokens
    per forward call (one per step in a rollout). Preallocated: a step writes its new keys and values
    in place, nothing is reallocated or concatenated."""

    def __init__(self, config, batch_size, max_len):
        head_dim = config.n_embd // config.n_head
        self.shape = (config.n_layer, 2, batch_size, config.n_head, max_len, head_dim)
        self.kv = None  # allocated at the first update, with the activations' device and dtype (bf16 under autocast)
        self.length = 0  # number of positions already cached, the same for every row

    def key_length(self, T, device):
        """How many positions a call that adds T new ones attends over: on a GPU the whole cache, so that every
        decode step has the same shapes (kernels are planned once, and a step could be captured as a CUDA
        graph); elsewhere only the positions written so far (on a CPU the unwritten rest would cost time for
        nothing). The attention mask keeps every query off positions not yet written."""
        return self.shape[4] if device.type == 'cuda' else self.length + T

    def update(self, layer, k, v):
        """k, v: (B, nh, T, hd), the T new positions of one layer. Writes them after the `length` cached
        positions and returns the keys and values of the first S = key_length(T) positions, (B, nh, S, hd)
        each. (Every layer writes at the same place: GPT.forward advances `length` once all layers have run.)"""
        if self.kv is None:
            self.kv = torch.zeros(self.shape, device=k.device, dtype=k.dtype)
        T = k.size(2)
        assert self.length + T <= self.shape[4], "KV cache is full"
        self.kv[layer, 0, :, :, self.length:self.length + T] = k
        self.kv[layer, 1, :, :, self.length:self.length + T] = v
        S = self.key_length(T, k.device)
        return self.kv[layer, 0, :, :, :S], self.kv[layer, 1, :, :, :S]


def reference_attention(q, k, v, attn_mask):
    """What F.scaled_dot_product_attention computes with a boolean mask (and no dropout), written out; a test
    holds the two to each other. q: (B, nh, T, hd); k, v: (B, nh, S, hd); attn_mask: (B, 1, T, S), True = may
    attend. A query's weights are a softmax over the keys it may attend to: the others get exactly 0."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, T, S)
    scores = scores.masked_fill(~attn_mask, float('-inf'))
    return F.softmax(scores, dim=-1) @ v  # (B, nh, T, hd)


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.layer = layer  # index into the KV cache

    def forward(self, x, attn_mask=None, kv_cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hd)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hd)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)  # (B, nh, S, hd)
        dropout_p = self.dropout if self.training else 0.0
        if attn_mask is None:
            # the fast path: plain causal attention over the whole row (GPT.forward guarantees S == T)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            # attn_mask: (B, 1, T, S), broadcast over heads; the fused kernel computes reference_attention
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU, so its weights load exactly
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config, layer):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, kv_cache=None):
        x = x + self.attn(self.ln_1(x), attn_mask, kv_cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None and config.block_size is not None
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, layer) for layer in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2
        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections into the residual stream by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, position_ids=None, attn_mask=None, kv_cache=None):
        """idx: (B, T) token ids. position_ids: (B, T), default 0.. (after the cached positions).
        attn_mask: (B, T, S) bool, True = may attend; S = T without a KV cache, else kv_cache.key_length(T);
        default causal. Returns the logits (B, T, vocab_size) at every position."""
        B, T = idx.size()
        past = kv_cache.length if kv_cache is not None else 0
        S = kv_cache.key_length(T, idx.device) if kv_cache is not None else T  # the keys each query is scored against
        # position ids never exceed the row's length (a state is at most as long as the row), so this
        # check covers them without reading them back from the device
        assert past + T <= self.config.block_size, f"row of {past + T} tokens > block_size {self.config.block_size}"
        if attn_mask is None and kv_cache is not None:
            # causal attention that continues a cache: query t sees the past positions and itself, not the unwritten rest
            attn_mask = torch.ones(T, S, dtype=torch.bool, device=idx.device).tril(past).expand(B, T, S)
        if attn_mask is not None:
            assert attn_mask.shape == (B, T, S), f"attn_mask {tuple(attn_mask.shape)} != {(B, T, S)}"
            attn_mask = attn_mask.unsqueeze(1)  # (B, 1, T, S): the same mask for every head
        if position_ids is None:  # (T,): one lookup, broadcast over the batch
            position_ids = torch.arange(past, past + T, device=idx.device)

        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(position_ids))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, attn_mask, kv_cache)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, vocab_size)
        if kv_cache is not None:
            kv_cache.length += T
        return logits

    def new_kv_cache(self, batch_size, max_len):
        """An empty KV cache for batch_size rows of up to max_len positions (seqmatch.generate asks for it)."""
        return KVCache(self.config, batch_size, max_len)

    def crop_block_size(self, block_size):
        """Use a smaller block size than the checkpoint's (e.g. GPT-2's 1024 on a CPU)."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_pretrained(cls, model_type, override_args=None):
        """Load HuggingFace GPT-2 weights ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', or the path of
        a saved GPT2LMHeadModel) and add the <bkspc> row right after GPT-2's vocabulary (id 50257),
        padded up to a multiple of 64 (50304). Needs the optional `transformers` package."""
        override_args = override_args or {}
        assert set(override_args) <= {'dropout'}, "only dropout can be overridden"
        try:
            from transformers import GPT2LMHeadModel
        except ImportError as e:
            raise ImportError("GPT-2 weights need the optional package transformers: pip install transformers") from e
        print(f"loading weights from pretrained gpt: {model_type}")
        hf = GPT2LMHeadModel.from_pretrained(model_type)
        hf_config = hf.config
        n_base = hf_config.vocab_size  # 50257 for GPT-2; <bkspc> becomes id n_base
        config = GPTConfig(
            block_size=hf_config.n_positions,
            vocab_size=math.ceil((n_base + 1) / 64) * 64,
            n_layer=hf_config.n_layer, n_head=hf_config.n_head, n_embd=hf_config.n_embd,
            dropout=override_args.get('dropout', 0.0), bias=True,
        )
        model = GPT(config)
        sd_hf = hf.state_dict()
        # HF's GPT-2 stores these as Conv1D, i.e. transposed relative to nn.Linear
        transposed = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in ('lm_head.weight', 'transformer.wte.weight'):
                    continue  # tied; filled below
                w = sd_hf[name]
                p.copy_(w.t() if name.endswith(transposed) else w)
            wte = sd_hf['transformer.wte.weight']  # (n_base, C)
            model.transformer.wte.weight[:n_base] = wte
            # <bkspc> starts as the mean embedding: an ordinary-looking token the fine-tune can move.
            # The padding rows above it are never sampled and never in a loss (see seqmatch.generate).
            model.transformer.wte.weight[n_base:] = wte.mean(dim=0)
        return model

    @classmethod
    def from_run(cls, path, vocab_size, dropout):
        """The model of another run's checkpoint at path, to fine-tune with this run's dropout. A vocabulary of fewer
        than vocab_size ids (a model pretrained without <bkspc>) gains the missing rows, each the mean embedding.
        Raises what load_checkpoint raises."""
        source = load_checkpoint(path)
        config, state = GPTConfig(**dict(source['model_args'], dropout=dropout)), source['model']
        if config.vocab_size < vocab_size:
            wte = state['transformer.wte.weight']  # (V, C), tied to lm_head
            extra = wte.mean(dim=0, keepdim=True).expand(vocab_size - len(wte), -1)
            state['transformer.wte.weight'] = state['lm_head.weight'] = torch.cat([wte, extra])
            config.vocab_size = vocab_size
        model = cls(config)
        model.load_state_dict(state)
        return model

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # weight decay on matrices (Linear weights, embeddings), none on biases and LayerNorm gains
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
            {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0},
        ]
        fused = device_type == 'cuda'  # the fused AdamW kernel exists for CUDA only
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)


def load_pretrained(init_from, meta, config):
    """A model to fine-tune on a dataset with this meta (tokenizer.py), with the settings of train.py's config (its
    dropout; rows of at most block_size; for a Hugging Face model its lora_* and other settings): OpenAI's GPT-2
    (init_from 'gpt2', 'gpt2-medium', ...), a Hugging Face causal LM ('hf:<hub id or local dir>'), or the model of
    another run's checkpoint (its path). FileNotFoundError for anything else; otherwise raises what the loaders
    raise, ValueError among them where the data's tokenizer is not the model's."""
    if init_from.startswith('gpt2'):
        model = GPT.from_pretrained(init_from, dict(dropout=config['dropout']))
        if config['block_size'] < model.config.block_size:
            model.crop_block_size(config['block_size'])
        return model
    if init_from.startswith('hf:'):
        check_tokenizer(meta, init_from[3:])  # before any weight loads
        return model_from_args(dict(hf_name=init_from[3:], **{k: config[k] for k in (
            'block_size', 'lora_rank', 'lora_alpha', 'lora_dropout', 'lora_targets', 'attn_implementation',
            'gradient_checkpointing')}))
    if not os.path.exists(init_from):
        raise FileNotFoundError(f"init_from={init_from!r} is not 'scratch', 'resume', 'gpt2*', 'hf:...' or an "
                                f"existing checkpoint file")
    return GPT.from_run(init_from, meta['vocab_size'], config['dropout'])


def model_from_args(model_args):
    """A new model of the kind and shape that a checkpoint's model_args describe: a GPT, or where they name a Hugging
    Face model (hf_name), hf_model.py's, which loads that model (it needs transformers and peft, imported only here).
    Raises what HFModel raises."""
    if 'hf_name' in model_args:
        from hf_model import HFConfig, HFModel
        return HFModel(HFConfig(**model_args))
    return GPT(GPTConfig(**model_args))


def load_model(path, device='cpu'):
    """A model saved by train.py, and its checkpoint's dict: 'meta' (the dataset's vocabulary, bkspc_id, eos_id),
    'config' (the run's settings), ... Raises what load_checkpoint and model_from_args raise."""
    checkpoint = load_checkpoint(path, device)
    model = model_from_args(checkpoint['model_args'])
    model.load_state_dict(checkpoint['model'])
    return model.to(device), checkpoint


def load_checkpoint(path, device='cpu'):
    """The dict that train.py saved at path. Loading runs no code the file carries: a pickle can call any
    function, so only tensors, numbers, strings, lists, tuples and dicts are read (weights_only=True), which
    is all that train.py saves. FileNotFoundError if there is no file; pickle.UnpicklingError, with a
    one-line message naming the file, if it holds anything else."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}: train one first (python train.py ...)")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:  # torch's message is a page of advice; the line that matters:
        what = re.search(r'WeightsUnpickler error: ([^.\n]*)', str(e))  # e.g. "Unsupported global: GLOBAL exec ..."
        raise pickle.UnpicklingError(f"refused to load {path}: it holds more than tensors, numbers, strings, lists "
                                     f"and dicts{f' ({what.group(1)})' if what else ''}, and reading that could "
                                     f"run code") from None


def save_checkpoint(checkpoint, path):
    """Write checkpoint to path atomically, as a temporary file then a rename: an interrupted save never leaves a
    broken file at path. It should hold only what load_checkpoint reads (tensors, numbers, strings, lists and
    dicts). A failed write (a full disk, no permission, a vanished folder) removes the temporary file, leaves
    path as it was, and raises OSError(why it failed, e.g. 'No space left on device')."""
    tmp_path = path + '.tmp'
    try:
        with open(tmp_path, 'wb') as f:  # a file, not a path: torch then reports a failed write as a
            torch.save(checkpoint, f)     # RuntimeError whose __context__ is the OSError that says why
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as e:
        why = e if isinstance(e, OSError) else e.__context__ or e
        with contextlib.suppress(OSError):  # a half-written file would keep the space it took
            os.remove(tmp_path)
        raise OSError(getattr(why, 'strerror', None) or str(why)) from None


def last_saved(path, iteration):
    """What a stopped run leaves at path, whose save of iteration was the last (None: it saved none), as a message."""
    if iteration is None:
        return "this run saved no checkpoint"
    if not os.path.exists(path):  # out_dir was removed under the run
        return f"its last checkpoint (iter {iteration}) is gone from {os.path.dirname(path)} as well"
    return f"{path} still holds the last good checkpoint (iter {iteration})"


def auto_device(device):
    """device as given, or for 'auto' the best there is: 'cuda', then 'mps', then 'cpu'."""
    if device != 'auto':
        return device
    return 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
