# Arithmetic, behaviour cloning with <bkspc> (the paper's "MLE + backspace"): cross-entropy on answers
# with ground-truth noise, a wrong digit followed by <bkspc>. Same model and steps as arithmetic_mle.py.
# python train.py config/arithmetic_bc.py
out_dir = 'out-arithmetic-bc'
dataset = 'arithmetic'
objective = 'bc'
noise = 'ground_truth'  # a wrong digit of the problem's base, inside answers only
p_noise = 0.1
block_size = 96
batch_size = 12
n_layer = 4
n_head = 4
n_embd = 128
max_iters = 3000
lr_decay_iters = 3000
eval_interval = 500
