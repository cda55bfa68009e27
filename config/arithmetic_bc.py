# Arithmetic, step 2, behaviour cloning with <bkspc> (the paper's "MLE + backspace"): fine-tune the
# pretrained model with cross-entropy on answers with ground-truth noise, a wrong digit then <bkspc>.
# Same start, data rows and steps as arithmetic_mle.py.
# python train.py config/arithmetic_bc.py
out_dir = 'out-arithmetic-bc'
init_from = 'out-arithmetic-pretrain/ckpt.pt'
dataset = 'arithmetic'
objective = 'bc'
noise = 'ground_truth'  # a wrong digit of the problem's base, inside answers only
p_noise = 0.3
block_size = 96
batch_size = 12
max_iters = 1500
lr_decay_iters = 1500
learning_rate = 3e-4
min_lr = 3e-5
eval_interval = 500
