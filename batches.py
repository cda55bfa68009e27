"""
The rows that train.py and eval.py read: windows of a prepared dataset's token files, train.py's micro-batches of
data, and the replay buffer of the model's own rollouts that SequenceMatch trains on next to them.

A prepared dataset is a folder with train.bin and val.bin (token ids, uint16 as in nanoGPT, or uint32 where meta.pkl
says so) and meta.pkl (see tokenizer.py), written by one of the data/*/prepare.py. A micro-batch is a function of its
index (the seed, the process, the iteration and the micro-step), so a resumed run builds the same batches again with
no generator state saved, and worker processes can build them ahead of the model.
"""
import functools
import multiprocessing
import os
import signal

import numpy as np
import torch

from seqmatch import backspace_inputs, noisy_rows
from tokenizer import load_meta


def dataset_dir(dataset):
    """The folder of a dataset: data/<dataset> for a name such as 'shakespeare_char', the path itself for a path
    such as 'out-mytext/data' or '/data/owt' (a prepare.py's --out_dir)."""
    return dataset if os.path.dirname(dataset) else os.path.join('data', dataset)


@functools.lru_cache
def token_dtype(data_dir):
    """The dtype of a dataset's token files: uint16, or what its meta.pkl names (uint32 for more than 65,536 ids)."""
    return np.dtype(load_meta(data_dir).get('token_dtype', 'uint16'))


def token_file(data_dir, split):
    """The split's token ids, a read-only memmap. Make a new one for each read: one kept open leaks memory (as
    nanoGPT notes)."""
    return np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=token_dtype(data_dir), mode='r')


def windows(data_dir, split, starts, length):
    """(len(starts), length) int64 windows of the split's tokens beginning at starts, on the CPU."""
    data = token_file(data_dir, split)
    return torch.stack([torch.from_numpy(data[i:i + length].astype(np.int64)) for i in starts])


def random_windows(data_dir, split, n_rows, length, generator=None):
    """(n_rows, length) windows at offsets drawn uniformly (from torch's global generator if none is given)."""
    n_tokens = len(token_file(data_dir, split))
    if n_tokens <= length:
        raise ValueError(f"{split}.bin in {data_dir} has {n_tokens} tokens, too few for windows of {length}: "
                         f"prepare a longer text, or use a smaller block_size")
    return windows(data_dir, split, torch.randint(n_tokens - length, (n_rows,), generator=generator), length)


def suffix_ends(data, suffix, chunk=1 << 24):
    """(k,) int64: the index right after each occurrence of the token ids suffix in data, found a chunk of tokens at a
    time, so that a token file of billions never becomes a boolean array of its size."""
    n, ends = len(suffix), []
    for start in range(0, len(data) - n + 1, chunk):
        window = np.asarray(data[start:start + chunk + n - 1])  # the occurrences that start in this chunk
        hits = np.lib.stride_tricks.sliding_window_view(window, n) == suffix  # (len(window) - n + 1, n)
        ends.append(np.flatnonzero(hits.all(axis=1)) + start + n)
    return np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)


class RolloutPrompts:
    """Prompts for rollouts: windows of prompt_len tokens of the training data, ending anywhere, or right after
    each occurrence of the token ids suffix (the end of a question, say) if one is given."""

    def __init__(self, data_dir, prompt_len, suffix=()):
        self.data_dir, self.prompt_len, self.ends = data_dir, prompt_len, None
        if suffix:
            ends = suffix_ends(token_file(data_dir, 'train'), suffix)
            self.ends = torch.from_numpy(ends[ends >= prompt_len])
            assert len(self.ends) > 0, f"the prompt suffix {suffix} never occurs in the training data"

    def draw(self, n_rows):
        """(n_rows, prompt_len) prompts, drawn with torch's global generator."""
        if self.ends is None:
            return random_windows(self.data_dir, 'train', n_rows, self.prompt_len)
        ends = self.ends[torch.randint(len(self.ends), (n_rows,))]
        return windows(self.data_dir, 'train', ends - self.prompt_len, self.prompt_len)


class TrainBatches(torch.utils.data.Dataset):
    """train.py's micro-batches: item k is micro-step k % micro_steps of iteration k // micro_steps, a list of
    (batch_size, block_size) CPU tensors. objective 'mle': x and y, windows of the data and their next tokens.
    'bc' and 'seqmatch': the data rows with noise (tokens, actions and valid, as seqmatch.noisy_rows returns them)
    and their masked inputs (input_ids, position_ids and removed_at, as seqmatch.backspace_inputs returns them).
    noise: 'random' (uniform), or 'ground_truth' (the dataset's own: a wrong digit of the arithmetic task's base)."""

    def __init__(self, data_dir, objective, batch_size, block_size, micro_steps, seed, rank, p_noise, noise, meta):
        self.data_dir, self.objective, self.batch_size, self.block_size = data_dir, objective, batch_size, block_size
        self.micro_steps, self.seed, self.rank = micro_steps, seed, rank
        self.p_noise, self.noise, self.meta = p_noise, noise, meta

    def __getitem__(self, k):
        it, micro_step = divmod(k, self.micro_steps)
        index = np.random.SeedSequence([self.seed, self.rank, it, micro_step])  # the four, mixed into one seed
        g = torch.Generator().manual_seed(int(index.generate_state(1, np.uint64)[0]))
        if self.objective == 'mle':
            rows = random_windows(self.data_dir, 'train', self.batch_size, self.block_size + 1, g)
            return [rows[:, :-1], rows[:, 1:]]
        rows = random_windows(self.data_dir, 'train', self.batch_size, self.block_size, g)
        noise_fn = None  # random noise
        if self.noise == 'ground_truth':
            from data.arithmetic.noise import wrong_digit_noise  # the one dataset with noise of its own
            noise_fn = wrong_digit_noise(self.meta, g)
        bkspc_id = self.meta['bkspc_id']
        tokens, actions, valid = noisy_rows(rows, self.p_noise, bkspc_id, self.meta['eos_id'], noise_fn, g)
        return [tokens, actions, valid, *backspace_inputs(tokens, bkspc_id, 1)]


FORK = 'fork' if 'fork' in multiprocessing.get_all_start_methods() else None


def ignore_ctrl_c(worker_id):
    """A terminal's Ctrl-C reaches every process of the job: the workers leave it to train.py, which saves first
    and then stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def micro_batches(train_batches, start, stop, num_workers, pin_memory):
    """Items start .. stop - 1 of train_batches, in order: built by num_workers worker processes while the model
    computes (0: each in this process when it is needed), and pinned if pin_memory, so that the copy to the GPU
    can overlap with compute."""
    # a generator of its own: a loader draws a seed from the one it is given, by default torch's global one, which
    # the rollouts and replay draws read, and a resumed run must find it as the run left it. Workers are forked
    # where the system can: a spawned worker would run the calling script (train.py) again.
    loader = torch.utils.data.DataLoader(train_batches, batch_size=None, sampler=range(start, stop),
                                         num_workers=num_workers, pin_memory=pin_memory, generator=torch.Generator(),
                                         worker_init_fn=ignore_ctrl_c if num_workers else None,
                                         multiprocessing_context=FORK if num_workers else None)
    return iter(loader)


class ReplayBuffer:
    """The model's rollouts, newest last, at most size rows (on the CPU): their tokens and valid, as seqmatch.generate
    returns them, and their masked inputs (input_ids, position_ids and removed_at), as the Stacks it returns holds
    them. A checkpoint holds tokens and valid; the masked inputs are derived from them (backspace_inputs)."""
    MASKED = ('input_ids', 'position_ids', 'removed_at')

    def __init__(self, size, block_size, bkspc_id, prompt_len):
        self.size, self.bkspc_id, self.prompt_len = size, bkspc_id, prompt_len
        self.load_state_dict({'tokens': torch.empty(0, block_size, dtype=torch.long),
                              'valid': torch.empty(0, block_size, dtype=torch.bool)})

    def __len__(self):
        return len(self.rows['tokens'])

    def push(self, tokens, valid, stacks):
        new = {'tokens': tokens, 'valid': valid, **{k: getattr(stacks, k) for k in self.MASKED}}
        self.rows = {k: torch.cat([self.rows[k], new[k].cpu()])[-self.size:] for k in self.rows}

    def draw(self, n_rows):
        """n_rows rows drawn uniformly (torch's global generator), in train.py's order: tokens, actions (a rollout's
        actions are its tokens), valid, input_ids, position_ids, removed_at."""
        pick = torch.randint(len(self), (n_rows,))
        return [self.rows[k][pick] for k in ('tokens', 'tokens', 'valid', *self.MASKED)]

    def bkspc_rate(self, n_rows):
        """The share of <bkspc> among the actions of the newest n_rows rollouts."""
        tokens, valid = self.rows['tokens'][-n_rows:], self.rows['valid'][-n_rows:]
        return ((tokens == self.bkspc_id) & valid).sum().item() / max(valid.sum().item(), 1)

    def state_dict(self):
        return {'tokens': self.rows['tokens'], 'valid': self.rows['valid']}

    def load_state_dict(self, state):
        masked = backspace_inputs(state['tokens'], self.bkspc_id, self.prompt_len)
        self.rows = {'tokens': state['tokens'], 'valid': state['valid'], **dict(zip(self.MASKED, masked))}
