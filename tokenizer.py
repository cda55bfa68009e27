"""
Text <-> token ids for a prepared dataset, from the meta.pkl its prepare.py wrote:
  char-level: {'tokenizer': 'char', 'stoi', 'itos', 'vocab_size', 'bkspc_id', 'eos_id'}
  GPT-2 BPE:  {'tokenizer': 'gpt2', 'vocab_size': 50304, 'bkspc_id': 50257, 'eos_id': 50256}
  a Hugging Face model's tokenizer: {'tokenizer': 'hf:<model id, local directory or .gguf file>',
              'tokenizer_hash', 'vocab_size', 'bkspc_id', 'eos_id', 'token_dtype'} (hf_meta)
<bkspc> is always the id right after the base vocabulary.
"""
import hashlib
import importlib.util
import itertools
import json
import os
import pickle


def load_meta(data_dir):
    """The meta.pkl of a prepared dataset. FileNotFoundError if there is none: saying which prepare.py to run,
    or, if data_dir has none, which datasets there are."""
    path = os.path.join(data_dir, 'meta.pkl')
    if not os.path.exists(path):
        prepare = os.path.join(data_dir, 'prepare.py')
        if os.path.exists(prepare):
            raise FileNotFoundError(f"no prepared data in {data_dir}: run python {prepare} first")
        data = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
        datasets = sorted(d for d in os.listdir(data) if os.path.exists(os.path.join(data, d, 'prepare.py')))
        raise FileNotFoundError(f"no dataset at {data_dir}: the datasets are {', '.join(datasets)} (data/<name>/, "
                                f"each with a prepare.py), or a folder that a prepare.py wrote (--out_dir=...)")
    with open(path, 'rb') as f:
        return pickle.load(f)


BKSPC = '<bkspc>'  # the token's text in a Hugging Face tokenizer (hf_model.py's export adds it)


def hf_from_pretrained(auto_class, name, **kwargs):
    """auto_class.from_pretrained(...) (AutoTokenizer, AutoConfig or AutoModelForCausalLM) of the Hugging Face model
    name: a hub id, a local directory, or a local .gguf file (llama.cpp's format), whose weights load dequantized to
    float32 (a plain model, which trains and saves as one). Raises ImportError without the gguf package, ValueError in
    one line for a folder that holds GGUF files but no Hugging Face model, and for a file that is not a GGUF, is
    truncated, or holds a model transformers cannot read from GGUF; else what from_pretrained raises."""
    if os.path.isdir(name) and not os.path.exists(os.path.join(name, 'config.json')):
        ggufs = sorted(f for f in os.listdir(name) if f.endswith('.gguf'))
        if ggufs:  # transformers would ask for sentencepiece or tiktoken
            raise ValueError(f"{name} holds no Hugging Face model (no config.json), but GGUF files: name one, "
                             f"hf:{os.path.join(name, ggufs[0])}")
    if not os.path.isfile(name):
        return auto_class.from_pretrained(name, **kwargs)
    with open(name, 'rb') as f:
        if f.read(4) != b'GGUF':
            raise ValueError(f"{name} is not a GGUF file (it does not start with the bytes GGUF): hf:... takes a hub "
                             f"id, a Hugging Face model directory or a .gguf file")
    if importlib.util.find_spec('gguf') is None:
        raise ImportError(f"{name} is a GGUF file, which needs the optional package gguf: "
                          f"pip install -r requirements-extra.txt")
    import transformers
    if auto_class is transformers.AutoModelForCausalLM:  # else it stays quantized: neither trains nor saves
        kwargs['quantization_config'] = transformers.GgufConfig(dequantize=True)
    try:
        return auto_class.from_pretrained(os.path.dirname(os.path.abspath(name)), gguf_file=os.path.basename(name),
                                          **kwargs)
    except Exception as e:  # transformers' GGUF readers raise anything from struct.error to IndexError
        raise gguf_error(name, e) from e


def gguf_error(path, error):
    """ValueError in one line, with what to do, for the GGUF file path that transformers could not load (it raised
    error): truncated (gguf's reader cannot read it either) or a model transformers cannot read from GGUF."""
    import gguf
    import transformers
    try:
        architecture = gguf.GGUFReader(path).fields['general.architecture'].contents()
    except (ValueError, IndexError, KeyError):  # it reads past the end, or misses what every GGUF has
        return ValueError(f"{path} is truncated or damaged: its {os.path.getsize(path):,} bytes do not hold the "
                          f"header and tensors it declares as a GGUF file; download or copy it again")
    return ValueError(f"transformers {transformers.__version__} cannot load {path}, a GGUF of architecture "
                      f"{architecture!r} ({' '.join(str(error).split())}): use the model's Hugging Face directory or "
                      f"hub id instead, or a transformers that reads {architecture} from GGUF")


def load_hf_tokenizer(name):
    """The tokenizer of a Hugging Face model, a hub id, a local directory or a .gguf file (AutoTokenizer). ImportError
    saying what to install; OSError in one line if it cannot be loaded (a hub id offline and not in the hub's cache,
    say); ValueError in one line for a bad GGUF file (hf_from_pretrained)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise ImportError("Hugging Face models need the optional packages transformers and peft: "
                          "pip install -r requirements-extra.txt") from e
    try:
        return hf_from_pretrained(AutoTokenizer, name)
    except OSError as e:  # transformers' message spans lines; every line of it says something
        raise OSError(f"cannot load the Hugging Face model {name}: {' '.join(str(e).split())}") from None


def hf_meta(tokenizer, name):
    """meta.pkl's entries for data in the tokenizer of the Hugging Face model name. <bkspc> is the id right after
    the tokenizer's vocabulary, or its own id in a tokenizer that has it (an exported run's). tokenizer_hash names
    the vocabulary without <bkspc>: a model whose tokenizer has the same one reads the data as it was written."""
    vocab = tokenizer.get_vocab()  # {token: id}, the added tokens included
    bkspc_id = vocab.pop(BKSPC) if BKSPC in vocab else max(vocab.values()) + 1
    vocab_hash = hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()[:16]
    return {'tokenizer': f'hf:{name}', 'tokenizer_hash': vocab_hash, 'vocab_size': bkspc_id + 1, 'bkspc_id': bkspc_id,
            'eos_id': tokenizer.eos_token_id, 'token_dtype': 'uint16' if bkspc_id < 2 ** 16 else 'uint32'}


def check_tokenizer(meta, name, model_meta=None):
    """ValueError, naming both, unless the data that meta describes was prepared in the tokenizer of the Hugging Face
    model name (model_meta: hf_meta of its tokenizer, where already loaded); raises what load_hf_tokenizer raises."""
    model_meta = model_meta or hf_meta(load_hf_tokenizer(name), name)
    if meta.get('tokenizer_hash') != model_meta['tokenizer_hash']:
        raise ValueError(f"the data was prepared with the tokenizer {meta['tokenizer']}, and the model {name} has "
                         f"another one: prepare it with --tokenizer=hf:{name} (data/openwebtext/prepare.py)")


class BPEUnavailableError(OSError):
    """GPT-2's BPE files are not in tiktoken's cache, and tiktoken could not download them."""


def gpt2_encoding():
    """GPT-2's BPE through tiktoken, which downloads its files into its cache on first use. BPEUnavailableError, with
    what to do offline, where it can neither find nor download them."""
    import tiktoken
    try:
        return tiktoken.get_encoding('gpt2')
    except OSError as e:  # requests' connection errors are OSErrors
        raise BPEUnavailableError(
            f"tiktoken could not download GPT-2's BPE files ({type(e).__name__}). Offline? Set "
            f"TIKTOKEN_CACHE_DIR to a copy of a tiktoken cache that holds them (on a machine online, "
            f"TIKTOKEN_CACHE_DIR=DIR python -c \"import tiktoken; tiktoken.get_encoding('gpt2')\" fills DIR)") from e


class Tokenizer:

    def __init__(self, meta):
        """BPEUnavailableError for a GPT-2 BPE dataset whose BPE files tiktoken can neither find nor download."""
        self.bkspc_id = meta['bkspc_id']
        self.eos_id = meta['eos_id']
        self.gpt2 = self.hf = None
        if meta['tokenizer'] == 'char':
            self.stoi, self.itos = meta['stoi'], meta['itos']
        elif meta['tokenizer'].startswith('hf:'):
            self.hf = load_hf_tokenizer(meta['tokenizer'][3:])
        else:
            self.gpt2 = gpt2_encoding()

    def encode(self, text):
        if self.hf is not None:
            return self.hf.encode(text, add_special_tokens=False)  # the text alone, as prepare.py writes documents
        if self.gpt2 is not None:
            return self.gpt2.encode(text, allowed_special={'<|endoftext|>'})
        unknown = sorted(set(text) - set(self.stoi))
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {', '.join(repr(c) for c in unknown)}")
        return [self.stoi[c] for c in text]

    def token_text(self, token):
        """One token as text; <bkspc> is shown as ⌫."""
        if token == self.bkspc_id:
            return '⌫'
        if self.hf is not None:
            return self.hf.decode([token])
        if self.gpt2 is not None:
            return self.gpt2.decode([token])
        return self.itos[token]

    def typed_text(self, actions, deleted, strike):
        """What was typed, deletions included; deleted: the indices in actions of the tokens that <bkspc>s deleted.
        strike=False: every action as typed, each <bkspc> as ⌫: 'ab⌫c' is a, b, a <bkspc> that deleted the b,
        then c (the text 'ac'). strike=True (a terminal): the deleted tokens struck through in red, no ⌫.
        A deleted newline shows as ↵ in both, so that the lines are those of the text left."""
        deleted = set(deleted)
        kind = lambda j: 'bkspc' if actions[j] == self.bkspc_id else 'deleted' if j in deleted else 'kept'  # noqa: E731
        pieces = []
        # a run of tokens of one kind is decoded at once: a character can span several byte-level BPE tokens
        for what, run in itertools.groupby(range(len(actions)), key=kind):
            run = [actions[j] for j in run]
            if what == 'bkspc':
                pieces.append('' if strike else '⌫' * len(run))
                continue
            text = self.decode(run)
            if what == 'deleted':
                text = text.replace('\n', '↵')
                if strike:
                    text = f"\x1b[9;31m{text}\x1b[0m"
            pieces.append(text)
        return ''.join(pieces)

    def decode(self, tokens):
        bpe = self.hf if self.hf is not None else self.gpt2
        if bpe is not None:  # whole sequences at once: a character can span several BPE tokens
            return bpe.decode([t for t in tokens if t != self.bkspc_id])
        return ''.join(self.token_text(t) for t in tokens)
