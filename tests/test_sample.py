"""sample.py: how --show_edits writes what was typed."""
from tokenizer import Tokenizer


def test_show_edits_writes_each_bkspc_where_it_was_typed():
    chars = sorted(set('well-made hat\n'))
    tokenizer = Tokenizer({'tokenizer': 'char', 'stoi': {c: i for i, c in enumerate(chars)},
                           'itos': dict(enumerate(chars)), 'bkspc_id': len(chars), 'eos_id': None})

    def actions(typed):
        return [tokenizer.bkspc_id if c == '⌫' else tokenizer.stoi[c] for c in typed]

    # (what was typed, the indices of the characters that <bkspc>s deleted, what --show_edits prints off a terminal)
    cases = [('well-made', [], 'well-made'),
             ('well-⌫ made', [4], 'well-⌫ made'),  # a deleted hyphen, next to the kept one of the first case
             ('hat-⌫⌫⌫', [3, 2, 1], 'hat-⌫⌫⌫'),
             ('wel\n⌫l', [3], 'wel↵⌫l')]  # a deleted newline: the lines stay those of the text left
    for typed, deleted, shown in cases:
        assert tokenizer.typed_text(actions(typed), deleted, strike=False) == shown
    struck = tokenizer.typed_text(actions('well-⌫ made'), [4], strike=True)  # on a terminal: struck through, no ⌫
    assert struck == 'well\x1b[9;31m-\x1b[0m made'

