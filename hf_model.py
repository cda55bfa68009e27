"""
A causal language model of Hugging Face transformers (Llama, Qwen2, GPT-2, ...) behind model.py's
interface, so that seqmatch.py's masking, rollouts and losses train it as they train the GPT:
train.py's init_from='hf:<model id, local directory or .gguf file>'. <bkspc> becomes the id right after the
tokenizer's vocabulary, its rows starting as the mean token's; training changes LoRA adapters (peft)
and the <bkspc> rows, or every weight.

The backspace mask reaches the attention as a 4-D mask, which transformers hands to the attention
function unchanged (masking_utils returns a 4-D mask as it is): 'sdpa' reads a boolean mask as True
= may attend; 'eager' adds the mask to the scores, so a boolean one would add 1 and 0 and be
silently wrong: it gets 0 and the dtype's most negative number instead. The flash-attention kernels
take no such mask and are refused, as is every other implementation.
"""
import dataclasses
import warnings

import torch

try:
    import peft
    import transformers
except ImportError as e:
    raise ImportError("Hugging Face models need the optional packages transformers and peft: "
                      "pip install -r requirements-extra.txt") from e

from model import LanguageModel
from tokenizer import BKSPC, check_tokenizer, hf_from_pretrained, hf_meta, load_hf_tokenizer

# peft (0.21) asks transformers (5.x) for a name it deprecated: a warning at every load that no user
# can act on
warnings.filterwarnings('ignore', message='`is_gradient_checkpointing` is deprecated', category=FutureWarning)

EXACT_ATTENTION = ('sdpa', 'eager')  # the attention implementations that take the backspace mask exactly


@dataclasses.dataclass
class HFConfig:
    hf_name: str  # the base model and its tokenizer: a hub id, a local directory or a .gguf file
    block_size: int  # longest row
    vocab_size: int = 0  # rows of the output: the base vocabulary, <bkspc>, padding; set when the model is built
    lora_rank: int = 8  # 0: every weight is trained
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: str = 'all-linear'  # peft's name for every linear layer but the output, or comma-separated names
    attn_implementation: str = 'sdpa'
    gradient_checkpointing: bool = False


class HFKVCache:
    """A KV cache (model.LanguageModel) around transformers' DynamicCache, which appends each call's
    keys and values: a call writes at cache_pos = the columns already cached, and attends over all
    of them (key_length n)."""

    def __init__(self):
        self.cache = transformers.DynamicCache()

    def key_length(self, n, device):
        return n


class HFModel(LanguageModel):

    def __init__(self, config, data_meta=None):
        """Loads config.hf_name, adds <bkspc> and the adapters. Raises OSError (the model cannot be
        loaded: offline and not in the hub's cache, say) and ValueError (an attention implementation
        that cannot take the mask, not a causal LM, rows longer than its positions or its attention
        window, data prepared in another tokenizer than the model's, where data_meta, the data's
        meta.pkl, is given) in one line, before loading any weight."""
        super().__init__()
        name = config.hf_name
        if config.attn_implementation not in EXACT_ATTENTION:
            raise ValueError(f"attn_implementation={config.attn_implementation!r} cannot take SequenceMatch's "
                             f"backspace mask exactly; use one of {', '.join(EXACT_ATTENTION)}")
        tokenizer = load_hf_tokenizer(name)
        hf_config = hf_from_pretrained(transformers.AutoConfig, name)
        if type(hf_config) not in transformers.MODEL_FOR_CAUSAL_LM_MAPPING:
            raise ValueError(f"{name} is a {hf_config.model_type} model, not a causal language model "
                             f"(AutoModelForCausalLM cannot load it)")
        if config.block_size > hf_config.max_position_embeddings:
            raise ValueError(f"block_size {config.block_size} > the {hf_config.max_position_embeddings} positions "
                             f"of {name}")
        # the backspace mask replaces the model's own, a sliding window included: exact only while a
        # row fits in it
        window = getattr(hf_config, 'sliding_window', None)
        if window is not None and window < config.block_size:
            raise ValueError(f"{name} attends over a sliding window of {window} tokens, which the backspace mask "
                             f"leaves out: use a block_size of at most {window}")
        model_meta = hf_meta(tokenizer, name)
        if data_meta is not None:
            check_tokenizer(data_meta, name, model_meta)
        bkspc_id = model_meta['bkspc_id']
        # float32 weights, as model.py's GPT: train.py's autocast computes in bf16 where it can
        lm = hf_from_pretrained(transformers.AutoModelForCausalLM, name, config=hf_config, dtype=torch.float32,
                                attn_implementation=config.attn_implementation)
        if BKSPC not in tokenizer.get_vocab():  # a new token (an exported run's tokenizer has it, trained)
            if lm.get_input_embeddings().weight.size(0) <= bkspc_id:  # no padding row to take it
                lm.resize_token_embeddings(bkspc_id + 1, pad_to_multiple_of=64, mean_resizing=False)
            # <bkspc> starts as the mean token, an ordinary-looking start that training can move; so
            # do the padding rows above it, which no loss reads, so that every load of the model is
            # the same
            with torch.no_grad():
                for weight in {lm.get_input_embeddings().weight, lm.get_output_embeddings().weight}:  # one if tied
                    weight[bkspc_id:] = weight[:bkspc_id].mean(dim=0)
        config.vocab_size = lm.get_output_embeddings().weight.size(0)
        if config.gradient_checkpointing:
            lm.activation_checkpointing_enable()
        if config.lora_rank:
            embedding, output = lm.get_input_embeddings(), lm.get_output_embeddings()
            module_name = {id(module): n for n, module in lm.named_modules()}
            # peft trains the listed rows only; a tied output layer follows its embedding
            bkspc_rows = ([bkspc_id] if embedding.weight is output.weight else
                          {module_name[id(embedding)]: [bkspc_id], module_name[id(output)]: [bkspc_id]})
            targets = config.lora_targets if config.lora_targets == 'all-linear' else config.lora_targets.split(',')
            lm = peft.get_peft_model(lm, peft.LoraConfig(
                r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                target_modules=targets, trainable_token_indices=bkspc_rows))
        self.lm, self.config = lm, config

    def forward(self, idx, position_ids=None, attn_mask=None, kv_cache=None, cache_pos=0):
        """As model.LanguageModel.forward: logits (B, T, vocab_size) at every position of idx (B,
        T)."""
        if kv_cache is not None:  # a DynamicCache can only append
            assert cache_pos == kv_cache.cache.get_seq_length(), "a DynamicCache grows at its end only"
        if position_ids is None:
            position_ids = torch.arange(cache_pos, cache_pos + idx.size(1), device=idx.device)[None]  # (1, T)
        if attn_mask is not None:
            attn_mask = attn_mask[:, None]  # (B, 1, T, S): the same for every head
            attention = self.lm.config._attn_implementation  # checked at each call: it can be changed after loading
            if attention == 'eager':  # eager adds the mask to the scores
                dtype = self.lm.dtype
                attn_mask = torch.zeros(attn_mask.shape, dtype=dtype, device=idx.device).masked_fill_(
                    ~attn_mask, torch.finfo(dtype).min)  # (B, 1, T, S)
            elif attention != 'sdpa':
                raise ValueError(f"attention implementation {attention!r} cannot take the backspace mask exactly")
        cache = kv_cache.cache if kv_cache is not None else None
        return self.lm(input_ids=idx, position_ids=position_ids, attention_mask=attn_mask, cache=cache,
                       use_cache=cache is not None).logits  # (B, T, vocab_size)

    def new_kv_cache(self, batch_size, max_len):
        """An empty KV cache (seqmatch.generate asks for it); a DynamicCache needs neither size in
        advance."""
        return HFKVCache()

    def state_dict(self):
        """What training changes, {name: tensor} with the names of the Hugging Face (or peft) model:
        the LoRA adapters and the <bkspc> rows, or every weight (lora_rank 0). The rest is the base
        model, which config.hf_name names."""
        return {name: p.detach() for name, p in self.lm.named_parameters() if p.requires_grad}

    def load_state_dict(self, state):
        """Loads what state_dict returned. ValueError if it holds other weights than this model
        trains."""
        trained = {name: p for name, p in self.lm.named_parameters() if p.requires_grad}
        if set(state) != set(trained):
            raise ValueError(f"the checkpoint trained other weights of {self.config.hf_name} than this model "
                             f"({len(state)} tensors, not {len(trained)})")
        with torch.no_grad():
            for name, p in trained.items():
                p.copy_(state[name])

    def export(self, directory):
        """Writes a Hugging Face model directory that from_pretrained loads: the weights with the
        adapters and the <bkspc> rows merged in, and the tokenizer with <bkspc> at its id. Merges in
        place: use this model no more."""
        lm = self.lm.merge_and_unload() if self.config.lora_rank else self.lm
        tokenizer = load_hf_tokenizer(self.config.hf_name)
        tokenizer.add_tokens([BKSPC], special_tokens=True)  # at the id after the vocabulary: bkspc_id
        lm.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
