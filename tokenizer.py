"""
Text <-> token ids for a prepared dataset, from the meta.pkl its prepare.py wrote:
  char-level: {'tokenizer': 'char', 'stoi', 'itos', 'vocab_size', 'bkspc_id', 'eos_id'}
  GPT-2 BPE:  {'tokenizer': 'gpt2', 'vocab_size': 50304, 'bkspc_id': 50257, 'eos_id': 50256}
<bkspc> is always the id right after the base vocabulary.
"""
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


class BPEUnavailableError(OSError):
    """GPT-2's BPE files are not in tiktoken's cache, and tiktoken could not download them."""


class Tokenizer:

    def __init__(self, meta):
        """BPEUnavailableError for a GPT-2 BPE dataset whose BPE files tiktoken can neither find nor download."""
        self.bkspc_id = meta['bkspc_id']
        self.eos_id = meta['eos_id']
        if meta['tokenizer'] == 'char':
            self.stoi, self.itos = meta['stoi'], meta['itos']
            self.gpt2 = None
        else:
            import tiktoken
            try:
                self.gpt2 = tiktoken.get_encoding('gpt2')  # downloads GPT-2's BPE files into its cache on first use
            except OSError as e:  # requests' connection errors are OSErrors
                raise BPEUnavailableError(
                    f"tiktoken could not download GPT-2's BPE files ({type(e).__name__}). Offline? Set "
                    f"TIKTOKEN_CACHE_DIR to a copy of a tiktoken cache that holds them (on a machine online, "
                    f"TIKTOKEN_CACHE_DIR=DIR python -c \"import tiktoken; tiktoken.get_encoding('gpt2')\" fills DIR)"
                ) from e

    def encode(self, text):
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
        if self.gpt2 is not None:
            return self.gpt2.decode([token])
        return self.itos[token]

    def typed_text(self, actions, deleted, strike):
        """What was typed, deletions included; deleted: the indices in actions of the tokens that <bkspc>s deleted.
        strike=False: every action as typed, each <bkspc> as ⌫: 'ab⌫c' is a, b, a <bkspc> that deleted the b,
        then c (the text 'ac'). strike=True (a terminal): the deleted tokens struck through in red, no ⌫.
        A deleted newline shows as ↵ in both, so that the lines are those of the text left."""
        deleted = set(deleted)
        pieces = []
        for j, tok in enumerate(actions):
            text = self.token_text(tok)
            if j in deleted:
                text = text.replace('\n', '↵')
                if strike:
                    text = f"\x1b[9;31m{text}\x1b[0m"
            elif tok == self.bkspc_id and strike:
                text = ''
            pieces.append(text)
        return ''.join(pieces)

    def decode(self, tokens):
        if self.gpt2 is not None:  # whole sequences at once: a character can span several BPE tokens
            return self.gpt2.decode([t for t in tokens if t != self.bkspc_id])
        return ''.join(self.token_text(t) for t in tokens)
