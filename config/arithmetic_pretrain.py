# Arithmetic ("add or subtract in base"), step 1 of 2: pretrain one model with maximum likelihood. The
# three arms (arithmetic_mle.py, _bc.py, _seqmatch.py) each fine-tune this checkpoint for the same number
# of steps, as the paper fine-tunes one pretrained model with each objective.
# python data/arithmetic/prepare.py && python train.py config/arithmetic_pretrain.py
out_dir = 'out-arithmetic-pretrain'
dataset = 'arithmetic'
objective = 'mle'
block_size = 96  # a problem is up to ~60 characters: a row holds one with room for backspaces
batch_size = 12
n_layer = 4
n_head = 4
n_embd = 128
max_iters = 6000  # at 3000 steps MLE answers 26% of the validation questions, at 6000 60%
lr_decay_iters = 6000
eval_interval = 500
