# Arithmetic, step 2, the maximum-likelihood arm: fine-tune the pretrained model (arithmetic_pretrain.py)
# with more of the same. The three arms start from the same weights and share the data rows per step and
# the number of optimizer steps; only the objective differs. (The architecture comes from the checkpoint.)
# python train.py config/arithmetic_mle.py
out_dir = 'out-arithmetic-mle'
init_from = 'out-arithmetic-pretrain/ckpt.pt'
dataset = 'arithmetic'
objective = 'mle'
block_size = 96
batch_size = 12
max_iters = 1500
lr_decay_iters = 1500
learning_rate = 3e-4  # fine-tuning: below pretraining's 1e-3
min_lr = 3e-5
eval_interval = 500
