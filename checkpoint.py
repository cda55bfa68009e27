"""
A run on disk: its checkpoint (saved atomically, loaded without running code), the model a
checkpoint describes (a GPT or a Hugging Face model), the pretrained weights a run starts from, and
the device to run on. Scripts turn LOAD_ERRORS into one line.
"""
import contextlib
import os
import pickle
import re

import torch

from model import GPT, GPTConfig

# what loading a run, a model or its tokenizer raises for something a user can fix: a missing file,
# package or download (OSError, ImportError), a model that does not fit (ValueError), a checkpoint
# that could run code
LOAD_ERRORS = (OSError, ImportError, ValueError, pickle.UnpicklingError)


def load_pretrained(init_from, meta, config):
    """A model to fine-tune on a dataset with this meta (tokenizer.py), with the settings of
    train.py's config (its dropout; rows of at most block_size; for a Hugging Face model its lora_*
    and other settings): OpenAI's GPT-2 (init_from 'gpt2', 'gpt2-medium', ...), a Hugging Face
    causal LM ('hf:<hub id or local dir>'), or the model of another run's checkpoint (its path).
    FileNotFoundError for anything else; otherwise raises what the loaders raise, ValueError among
    them where the data's tokenizer is not the model's."""
    if init_from.startswith('gpt2'):
        if meta['tokenizer'] != 'gpt2':  # the weights read GPT-2's BPE ids: char ids would be other tokens
            raise ValueError(f"init_from={init_from!r} reads GPT-2 BPE, and this data was prepared with the "
                             f"{meta['tokenizer']!r} tokenizer: use a BPE dataset (data/shakespeare, data/openwebtext)")
        model = GPT.from_pretrained(init_from, dict(dropout=config['dropout']))
        if config['block_size'] < model.config.block_size:
            model.crop_block_size(config['block_size'])
        return model
    if init_from.startswith('hf:'):
        return model_from_args(dict(hf_name=init_from[3:], **{k: config[k] for k in (
            'block_size', 'lora_rank', 'lora_alpha', 'lora_dropout', 'lora_targets', 'attn_implementation',
            'gradient_checkpointing')}), data_meta=meta)  # the tokenizer checked before any weight loads
    if not os.path.exists(init_from):
        raise FileNotFoundError(f"init_from={init_from!r} is not 'scratch', 'resume', 'gpt2*', 'hf:...' or an "
                                f"existing checkpoint file")
    return model_from_run(init_from, meta['vocab_size'], config['dropout'])


def model_from_run(path, vocab_size, dropout):
    """The model of another run's checkpoint at path, to fine-tune with this run's dropout. A
    vocabulary of fewer than vocab_size ids (a model pretrained without <bkspc>) gains the missing
    rows, each the mean embedding. Raises what load_checkpoint raises."""
    source = load_checkpoint(path)
    config, state = GPTConfig(**dict(source['model_args'], dropout=dropout)), source['model']
    if config.vocab_size < vocab_size:
        wte = state['transformer.wte.weight']  # (V, C), tied to lm_head
        extra = wte.mean(dim=0, keepdim=True).expand(vocab_size - len(wte), -1)
        state['transformer.wte.weight'] = state['lm_head.weight'] = torch.cat([wte, extra])
        config.vocab_size = vocab_size
    model = GPT(config)
    model.load_state_dict(state)
    return model


def model_from_args(model_args, data_meta=None):
    """A new model of the kind and shape that a checkpoint's model_args describe: a GPT, or where
    they name a Hugging Face model (hf_name), hf_model.py's, which loads that model (it needs
    transformers and peft, imported only here) and checks that data_meta's data was prepared in its
    tokenizer. Raises what HFModel raises."""
    if 'hf_name' in model_args:
        from hf_model import HFConfig, HFModel
        return HFModel(HFConfig(**model_args), data_meta)
    return GPT(GPTConfig(**model_args))


def load_model(path, device='cpu'):
    """A model saved by train.py, and its checkpoint's dict: 'meta' (the dataset's vocabulary,
    bkspc_id, eos_id), 'config' (the run's settings), ... Raises what load_checkpoint and
    model_from_args raise."""
    checkpoint = load_checkpoint(path, device)
    model = model_from_args(checkpoint['model_args'])
    model.load_state_dict(checkpoint['model'])
    return model.to(device), checkpoint


def run_settings(path):
    """A checkpoint's settings without its weights: {'config', 'meta', 'model_args'} (for checks before any model
    is built). Raises what load_checkpoint raises."""
    checkpoint = load_checkpoint(path)
    return {k: checkpoint[k] for k in ('config', 'meta', 'model_args')}


def load_checkpoint(path, device='cpu'):
    """The dict that train.py saved at path. Loading runs no code the file carries: a pickle can
    call any function, so only tensors, numbers, strings, lists, tuples and dicts are read
    (weights_only=True), which is all that train.py saves. FileNotFoundError if there is no file;
    pickle.UnpicklingError, with a one-line message naming the file, if it holds anything else."""
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
    """Write checkpoint to path atomically, as a temporary file then a rename: an interrupted save
    never leaves a broken file at path. It should hold only what load_checkpoint reads (tensors,
    numbers, strings, lists and dicts). A failed write (a full disk, no permission, a vanished
    folder) removes the temporary file, leaves path as it was, and raises OSError(why it failed,
    e.g. 'No space left on device')."""
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
    """What a stopped run leaves at path, whose save of iteration was the last (None: it saved
    none), as a message."""
    if iteration is None:
        return "this run saved no checkpoint"
    if not os.path.exists(path):  # out_dir was removed under the run
        return f"its last checkpoint (iter {iteration}) is gone from {os.path.dirname(path)} as well"
    return f"{path} still holds the last good checkpoint (iter {iteration})"


def auto_device(device):
    """device as given, or for 'auto' the best there is: 'cuda', then 'mps', then 'cpu'. ValueError
    for a device that this torch cannot use (--device=cuda on a CPU build, say)."""
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    kind = device.split(':')[0]
    if kind == 'cuda' and not torch.cuda.is_available() or kind == 'mps' and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r}: this torch ({torch.__version__}) sees no {kind.upper()} device; use "
                         f"--device=cpu, or --device=auto for the best there is")
    return device
