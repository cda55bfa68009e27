"""
The model: a nanoGPT-style GPT (learned positions, pre-LN blocks, weight tying, GPT-2 init), and the
interface that seqmatch.py and train.py ask of every model (LanguageModel below; hf_model.py is its
other implementation). SequenceMatch needs three things of a language model beyond causal language
modelling (seqmatch.py, section 2):
  - position_ids: after a backspace, position ids differ from the column index,
  - attn_mask: a boolean (B, T, S) mask, True = may attend, a subset of the causal triangle,
  - kv_cache + cache_pos: a cache that a batch of rollouts grows one column per step.
With none of them given, forward() is ordinary causal language modelling.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


class LanguageModel(nn.Module):
    """The interface that seqmatch.py (generate) and train.py use. GPT below and hf_model.HFModel
    implement it; a third model implements these five and nothing else.

    config.block_size: the longest row.
    config.vocab_size: the rows of the output: the base vocabulary, <bkspc> at bkspc_id right after
        it, then padding that no loss or sample reads.

    forward(idx, position_ids=None, attn_mask=None, kv_cache=None, cache_pos=0) -> logits
        idx:          (B, T) token ids.
        position_ids: (B, T); default cache_pos, cache_pos + 1, ...
        attn_mask:    (B, T, S) bool, True = may attend; default causal, S = cache_pos + T.
        kv_cache:     from new_kv_cache. The call writes the keys and values of idx at the
                      cache's columns cache_pos .. cache_pos + T - 1; query t attends over its
                      columns 0 .. S - 1 (those attn_mask allows). Nothing else changes the cache.
        returns:      (B, T, vocab_size) logits at every position.

    new_kv_cache(batch_size, max_len) -> an empty cache. Its key_length(n, device) is the S that a
        call attends over once n columns are written: n, or more where fixed shapes run faster.

    configure_optimizers(weight_decay, learning_rate, betas, device_type) -> AdamW over the
        parameters that train.

    state_dict() / load_state_dict(state): what training changes (for a GPT, every weight).
    """

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # weight decay on matrices (Linear weights, embeddings), none on biases and LayerNorm gains;
        # frozen weights (a Hugging Face base model under LoRA) are left out
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
            {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0},
        ]
        fused = device_type == 'cuda'  # the fused AdamW kernel exists for CUDA only
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)


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
    """Keys and values of every layer for a batch of rows, preallocated: a call writes its new keys
    and values in place, at the columns its caller names (cache_pos), and nothing is reallocated or
    concatenated."""

    def __init__(self, config, batch_size, max_len):
        head_dim = config.n_embd // config.n_head
        self.shape = (config.n_layer, 2, batch_size, config.n_head, max_len, head_dim)
        # allocated at the first update, with the activations' device and dtype (bf16 under autocast)
        self.kv = None

    def key_length(self, n, device):
        """S, the keys a call attends over once n columns are written: on a GPU the whole cache, so
        that every decode step has the same shapes (kernels are planned once, and a step could be
        captured as a CUDA graph); elsewhere the n written (on a CPU the unwritten rest would cost
        time for nothing). The attention mask keeps every query off the columns not yet written."""
        return self.shape[4] if device.type == 'cuda' else n

    def update(self, layer, cache_pos, k, v):
        """k, v: (B, nh, T, hd), the keys and values of one layer at T new positions. Writes them at
        columns cache_pos .. cache_pos + T - 1 and returns the layer's whole cache, keys and values
        (B, nh, max_len, hd)."""
        if self.kv is None:
            self.kv = torch.zeros(self.shape, device=k.device, dtype=k.dtype)
        T = k.size(2)
        assert cache_pos + T <= self.shape[4], "KV cache is full"
        self.kv[layer, 0, :, :, cache_pos:cache_pos + T] = k
        self.kv[layer, 1, :, :, cache_pos:cache_pos + T] = v
        return self.kv[layer, 0], self.kv[layer, 1]


def reference_attention(q, k, v, attn_mask):
    """What F.scaled_dot_product_attention computes with a boolean mask (and no dropout), written
    out; a test holds the two to each other. q: (B, nh, T, hd); k, v: (B, nh, S, hd); attn_mask: (B,
    1, T, S), True = may attend. A query's weights are a softmax over the keys it may attend to: the
    others get exactly 0."""
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

    def forward(self, x, attn_mask=None, kv_cache=None, cache_pos=0):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hd)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hd)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, cache_pos, k, v)  # (B, nh, max_len, hd)
            S = attn_mask.size(-1)  # GPT.forward gives a mask with a cache
            k, v = k[:, :, :S], v[:, :, :S]  # (B, nh, S, hd)
        dropout_p = self.dropout if self.training else 0.0
        if attn_mask is None:
            # the fast path: plain causal attention over the row (no cache: S == T)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            # attn_mask: (B, 1, T, S), broadcast over heads; the fused kernel computes
            # reference_attention
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

    def forward(self, x, attn_mask=None, kv_cache=None, cache_pos=0):
        x = x + self.attn(self.ln_1(x), attn_mask, kv_cache, cache_pos)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(LanguageModel):

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

    def forward(self, idx, position_ids=None, attn_mask=None, kv_cache=None, cache_pos=0):
        """As LanguageModel.forward: logits (B, T, vocab_size) at every position of idx (B, T)."""
        B, T = idx.size()
        # position ids never exceed the row's length (a state is at most as long as the row), so
        # this check covers them without reading them back from the device
        assert cache_pos + T <= self.config.block_size, \
            f"row of {cache_pos + T} tokens > block_size {self.config.block_size}"
        if attn_mask is None and kv_cache is not None:
            # causal attention that continues a cache: query t sees the columns before it and itself
            S = cache_pos + T
            causal = torch.ones(T, S, dtype=torch.bool, device=idx.device).tril(cache_pos)  # (T, S)
            attn_mask = causal.expand(B, T, S)
        if attn_mask is not None:
            assert attn_mask.shape[:2] == (B, T), f"attn_mask {tuple(attn_mask.shape)} != ({B}, {T}, S)"
            assert kv_cache is not None or attn_mask.size(2) == T, "no KV cache: a mask is (B, T, T)"
            attn_mask = attn_mask.unsqueeze(1)  # (B, 1, T, S): the same mask for every head
        if position_ids is None:  # (T,): one lookup, broadcast over the batch
            position_ids = torch.arange(cache_pos, cache_pos + T, device=idx.device)

        x = self.transformer.wte(idx) + self.transformer.wpe(position_ids)  # (B, T, C)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, attn_mask, kv_cache, cache_pos)
        x = self.transformer.ln_f(x)
        return self.lm_head(x)  # (B, T, vocab_size)

    def new_kv_cache(self, batch_size, max_len):
        """An empty KV cache for batch_size rows of up to max_len positions (seqmatch.generate asks
        for it)."""
        return KVCache(self.config, batch_size, max_len)

    def crop_block_size(self, block_size):
        """Use a smaller block size than the checkpoint's (e.g. GPT-2's 1024 on a CPU)."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_pretrained(cls, model_type, override_args=None):
        """Load HuggingFace GPT-2 weights ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', or the
        path of a saved GPT2LMHeadModel) and add the <bkspc> row right after GPT-2's vocabulary (id
        50257), padded up to a multiple of 64 (50304). Needs the optional `transformers` package."""
        override_args = override_args or {}
        assert set(override_args) <= {'dropout'}, "only dropout can be overridden"
        try:
            from transformers import GPT2LMHeadModel
        except ImportError as e:
            raise ImportError("GPT-2 weights need the optional package transformers: "
                              "pip install transformers") from e
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
            # <bkspc> starts as the mean embedding: an ordinary-looking token the fine-tune can
            # move. The padding rows above it are never sampled and never in a loss (see
            # seqmatch.generate).
            model.transformer.wte.weight[n_base:] = wte.mean(dim=0)
        return model
