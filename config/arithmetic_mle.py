# Arithmetic ("add or subtract in base"), the maximum-likelihood arm. The three arithmetic configs share
# the model, the data rows per step and the number of optimizer steps; only the objective differs.
# python data/arithmetic/prepare.py && python train.py config/arithmetic_mle.py
out_dir = 'out-arithmetic-mle'
dataset = 'arithmetic'
objective = 'mle'
block_size = 96  # a problem is up to ~60 characters: a row holds one with room for backspaces
batch_size = 12
n_layer = 4
n_head = 4
n_embd = 128
max_iters = 3000
lr_decay_iters = 3000
eval_interval = 500
