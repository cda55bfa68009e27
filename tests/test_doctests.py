"""The worked examples in seqmatch.py's docstrings (the masking of a row, the loss by hand, add_noise) and in
textmetrics.py's (the definitions of the text metrics) are doctests, so the documentation cannot drift from the code."""
import doctest

import seqmatch
import textmetrics


def test_seqmatch_docstring_examples():
    result = doctest.testmod(seqmatch)  # prints each failing example and what it gave instead
    assert result.failed == 0, f"{result.failed} of seqmatch.py's docstring examples failed (printed above)"
    assert result.attempted >= 14, f"only {result.attempted} docstring examples ran: were some removed?"


def test_textmetrics_docstring_examples():
    result = doctest.testmod(textmetrics)
    assert result.failed == 0, f"{result.failed} of textmetrics.py's docstring examples failed (printed above)"
    assert result.attempted >= 11, f"only {result.attempted} docstring examples ran: were some removed?"
