"""
The statistics of generated text that eval.py puts next to MAUVE, as the SequenceMatch paper reports them, each with
its definition and a worked example:
  diversity and n-gram entropy:  need only the tokens (any sequences: characters of a string, token ids, words);
  perplexity and MAUVE:          need a language model that reads the texts, the featurizer: a Hugging Face causal LM
                                 (gpt2-large is MAUVE's own default) or one of this repository's checkpoints.
Each definition is the usual one for the metric the paper reports, with its source in the docstring.
"""
import math
import os
import statistics
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from checkpoint import load_model
from model import GPT
from seqmatch import apply_backspaces
from tokenizer import Tokenizer, hf_from_pretrained


def ngrams(tokens, n):
    """The n-grams of a sequence, in order: len(tokens) - n + 1 tuples, none if it is shorter than n.
    >>> ngrams('abcb', 2)
    [('a', 'b'), ('b', 'c'), ('c', 'b')]
    >>> ngrams('ab', 3)
    []"""
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def diversity(texts, orders=(2, 3, 4)):
    """How little the texts repeat themselves: the product over n in orders of (1 - rep_n), where
        rep_n = 1 - (distinct n-grams) / (n-grams),
    both counts summed over the texts, each text's n-grams counted as distinct within that text alone (two texts that
    share an n-gram do not repeat themselves). This is measure_repetition_and_diversity of SimCTG (Su et al., 2022,
    github.com/yxuansu/SimCTG, simctg/evaluation.py), which reports it for open-ended generation next to MAUVE, except
    that SimCTG splits texts at whitespace and misses each text's last n-gram; here every n-gram of the given sequences
    counts. 1 when no text repeats an n-gram, near 0 for texts stuck in a loop; nan if the texts hold no n-gram of some
    order (all shorter than n), where there is nothing to measure.
    >>> diversity(['abab'])  # 2-grams ab, ba, ab: 2 distinct of 3; 3-grams aba, bab: 2 of 2; 4-gram abab: 1 of 1
    0.6666666666666666
    >>> diversity(['aaaaa'])  # one token repeated: 1 distinct of 4, of 3 and of 2
    0.041666666666666664
    >>> diversity(['abab', 'abab'])  # a text repeating another is not counted: as for one of them
    0.6666666666666666
    >>> diversity(['abc'])  # no 4-gram
    nan"""
    product = 1.0
    for n in orders:
        total = distinct = 0
        for text in texts:
            grams = ngrams(text, n)
            total += len(grams)
            distinct += len(set(grams))
        if total == 0:
            return math.nan
        product *= distinct / total
    return product


def ngram_entropy(texts, n):
    """The entropy, in bits, of the distribution of n-grams pooled over all the texts:
        H = - sum over n-grams g of p(g) log2 p(g),   p(g) = (occurrences of g) / (n-grams),
    the Ent-n of Zhang et al. (2018, "Generating informative and diverse conversational responses via adversarial
    information maximization"). At most log2 of the number of n-grams (every one different); 0 for a single n-gram
    repeated; nan if there is no n-gram at all.
    >>> ngram_entropy(['abab'], 2)  # ab twice, ba once: -(2/3 log2 2/3 + 1/3 log2 1/3)
    0.9182958340544896
    >>> ngram_entropy(['ab', 'cd'], 2)  # two different 2-grams, equally often: 1 bit
    1.0
    >>> ngram_entropy(['aaaa'], 2)  # one token repeated: a single 2-gram
    0.0
    >>> ngram_entropy(['a'], 2)  # fewer tokens than n
    nan"""
    counts = Counter(g for text in texts for g in ngrams(text, n))
    total = sum(counts.values())
    if total == 0:
        return math.nan
    return -sum(c / total * math.log2(c / total) for c in counts.values()) + 0.0  # + 0.0: no -0.0


def perplexity(nll, n_tokens):
    """exp(mean negative log-likelihood per token, in nats): the number of equally likely choices the model would
    have faced per token on average; nan without tokens.
    >>> perplexity(3 * math.log(4), 3)  # each of 3 tokens had probability 1/4
    4.0"""
    return math.exp(nll / n_tokens) if n_tokens else math.nan


# -----------------------------------------------------------------------------
# Featurizers: a language model that reads texts


def table_cell(values, fmt):
    """A number over seeds as eval.py and results.py report it: '-' for none, the one value, or the mean ± the standard
    deviation (n - 1) of several; None among the values (a column that a run lacks) is left out.
    >>> table_cell([0.5, 0.7], '{:.2f}'), table_cell([2.0], '{:.1f}'), table_cell(None, '{:.1f}')
    ('0.60 ± 0.14', '2.0', '-')"""
    values = [v for v in values or () if v is not None]
    if not values:
        return '-'
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def typed_and_deleted(prompt, actions, bkspc_id):
    """The answer a prompt's actions leave after the backspaces and, for each <bkspc>, (the index in the
    answer at which the deleted token had been typed, that token, the token before it)."""
    row = list(prompt) + list(actions)
    text, deleted = apply_backspaces(row, bkspc_id, len(prompt))
    deletions = []
    for i in deleted:
        state = apply_backspaces(row[:i], bkspc_id)[0]  # the text in which row[i] was typed
        deletions.append((len(state) - len(prompt), row[i], state[-1]))
    return text[len(prompt):], deletions


class UnreadableTextError(ValueError):
    """A text that the featurizer's tokenizer cannot encode (a character-level checkpoint's vocabulary without one of
    its characters)."""


class Featurizer:
    """Reads texts with a language model, batch by batch. For each text, the feature MAUVE compares: the final hidden
    state (after the last layer norm) at the text's last token, as mauve-text's own featurize_tokens_from_model takes
    it; and the log-likelihood of the text's tokens, each given those before it (the first token has no context and is
    not counted). A text is cut to its first max_len tokens, the model's context (mauve-text cuts at 1024 tokens).
    Subclasses set max_len and device, and define encode(text) -> token ids and forward(ids, mask) -> (hidden
    (B, T, C), logits (B, T, V)) for right-padded ids (B, T) with mask True on the real tokens."""

    @torch.no_grad()
    def read(self, texts, desc, batch_size=16):
        """(features, nll, n_tokens): features, a (number of texts with a token, C) float32 array (a text with no token
        has no last token, and no feature: mauve-text drops empty texts too); nll, the summed negative log-likelihood
        in nats of n_tokens tokens. desc names the texts on the progress bar. UnreadableTextError for a text that the
        featurizer's tokenizer cannot encode."""
        rows = [row for row in (self.encode(text)[:self.max_len] for text in texts) if row]
        if not rows:  # (a model that ends every continuation at once)
            return np.zeros((0, 0), dtype=np.float32), 0.0, 0
        features, nll, n_tokens = [], 0.0, 0
        for start in tqdm(range(0, len(rows), batch_size), desc=desc, unit='batch', leave=False):
            batch = rows[start:start + batch_size]
            lengths = torch.tensor([len(row) for row in batch], device=self.device)
            ids = torch.zeros(len(batch), int(lengths.max()), dtype=torch.long, device=self.device)
            for i, row in enumerate(batch):
                ids[i, :len(row)] = torch.tensor(row)
            mask = torch.arange(ids.size(1), device=self.device) < lengths[:, None]  # (B, T)
            hidden, logits = self.forward(ids, mask)
            features.append(hidden[torch.arange(len(batch)), lengths - 1].float().cpu())
            token_nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(),
                                        reduction='none').view(len(batch), -1)  # (B, T-1): each token given those before it
            nll += token_nll[mask[:, 1:]].sum().item()
            n_tokens += int(mask[:, 1:].sum())
        return torch.cat(features).numpy(), nll, n_tokens


class CheckpointFeaturizer(Featurizer):
    """A model of this repository with its tokenizer (a train.py checkpoint, or the model being evaluated; a GPT or
    a Hugging Face run): its final hidden state is the input of its output layer, read by a forward pre-hook (for a
    GPT, the output of its final layer norm), so the model computes exactly what it computes in training.
    Log-likelihoods are those of its policy (the base vocabulary and <bkspc>), as eval.py's val cross-entropy."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_len, self.device = model.config.block_size, next(model.parameters()).device
        self.n_actions = tokenizer.bkspc_id + 1
        self.output_layer = model.lm_head if isinstance(model, GPT) else model.lm.get_output_embeddings()  # a HF run's

    def encode(self, text):
        try:
            return self.tokenizer.encode(text)
        except ValueError as e:
            raise UnreadableTextError(str(e)) from None

    def forward(self, ids, mask):
        hidden = []  # the output layer's input, kept by a hook that lives for this forward only
        hook = self.output_layer.register_forward_pre_hook(lambda module, inputs: hidden.append(inputs[0]))
        try:
            logits = self.model(ids)  # causal: the padding after a text changes nothing before it
        finally:
            hook.remove()
        return hidden[0], logits[..., :self.n_actions]


class HFFeaturizer(Featurizer):
    """A Hugging Face causal LM, by hub name (e.g. gpt2-large, downloaded once into Hugging Face's cache), folder or
    .gguf file."""

    def __init__(self, name, device):
        """Raises OSError when it cannot be loaded (offline and not in the cache, say), ImportError without
        transformers."""
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise ImportError("a Hugging Face featurizer needs the optional package transformers: "
                              "pip install -r requirements-extra.txt") from e
        self.tokenizer = hf_from_pretrained(AutoTokenizer, name)
        self.model = hf_from_pretrained(AutoModelForCausalLM, name).to(device).eval()
        self.max_len, self.device = self.model.config.max_position_embeddings, device

    def encode(self, text):
        return self.tokenizer(text)['input_ids']

    def forward(self, ids, mask):
        out = self.model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        return out.hidden_states[-1], out.logits


def load_featurizer(name, device):
    """A file (but a .gguf) or a name ending in .pt (a train.py ckpt.pt) is a checkpoint of this repository; any other a
    Hugging Face causal LM. Raises what model.load_model, Tokenizer and HFFeaturizer raise: OSError
    (FileNotFoundError, BPEUnavailableError and the hub's errors among them), ImportError, pickle.UnpicklingError."""
    if name.endswith('.pt') or os.path.isfile(name) and not name.endswith('.gguf'):
        model, checkpoint = load_model(name, device)
        return CheckpointFeaturizer(model, Tokenizer(checkpoint['meta']))
    return HFFeaturizer(name, device)


def mauve_text():
    """The mauve-text package (an optional extra: it brings faiss and scikit-learn). ImportError without it."""
    try:
        import mauve as mauve_text
    except ImportError as e:
        raise ImportError("MAUVE needs the optional package mauve-text: pip install -r requirements-extra.txt") from e
    return mauve_text


def mauve(p_features, q_features, scaling_factor, seed):
    """MAUVE (Pillutla et al., NeurIPS 2021) of two sets of texts given their features, computed by mauve-text with
    its defaults: both sets quantized together by k-means into (the smaller set's size) / 10 clusters, after a PCA
    that keeps 90% of the variance; then the area under the divergence curve of the two cluster histograms P and Q,
    the points (exp(-c KL(Q | R)), exp(-c KL(P | R))) for the mixtures R = w P + (1 - w) Q, c = scaling_factor.
    1 for sets the featurizer cannot tell apart, near 0 for sets it always can. seed seeds the PCA and the k-means.
    Raises ImportError without mauve-text."""
    compute_mauve = mauve_text().compute_mauve
    # faiss's k-means writes to the process's stderr, from C++, that it has fewer than 39 points per cluster: it
    # always has, with mauve-text's n / 10 clusters, and nobody can act on it (an error still raises as it would)
    stderr = os.dup(2)
    with open(os.devnull, 'w') as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        return compute_mauve(p_features=p_features, q_features=q_features, mauve_scaling_factor=scaling_factor,
                             seed=seed, verbose=False).mauve
    finally:
        os.dup2(stderr, 2)
        os.close(stderr)
