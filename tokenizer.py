"""
Text <-> token ids for a prepared dataset, from the meta.pkl its prepare.py wrote:
  char-level: {'tokenizer': 'char', 'stoi', 'itos', 'vocab_size', 'bkspc_id', 'eos_id'}
  GPT-2 BPE:  {'tokenizer': 'gpt2', 'vocab_size': 50304, 'bkspc_id': 50257, 'eos_id': 50256}
<bkspc> is always the id right after the base vocabulary.
"""
import os
import pickle


def load_meta(data_dir):
    path = os.path.join(data_dir, 'meta.pkl')
    if not os.path.exists(path):
        raise SystemExit(f"no prepared data in {data_dir}: run python {os.path.join(data_dir, 'prepare.py')} first")
    with open(path, 'rb') as f:
        return pickle.load(f)


class Tokenizer:

    def __init__(self, meta):
        self.bkspc_id = meta['bkspc_id']
        self.eos_id = meta['eos_id']
        if meta['tokenizer'] == 'char':
            self.stoi, self.itos = meta['stoi'], meta['itos']
            self.gpt2 = None
        else:
            import tiktoken
            self.gpt2 = tiktoken.get_encoding('gpt2')

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

    def decode(self, tokens):
        if self.gpt2 is not None:  # whole sequences at once: a character can span several BPE tokens
            return self.gpt2.decode([t for t in tokens if t != self.bkspc_id])
        return ''.join(self.token_text(t) for t in tokens)
