# Arithmetic, SequenceMatch: bc (as arithmetic_bc.py) for bc_warmup_iters, then the chi^2-mixture loss
# on data and on the model's own answers to training questions. Same model and data steps as the others.
# python train.py config/arithmetic_seqmatch.py
out_dir = 'out-arithmetic-seqmatch'
dataset = 'arithmetic'
objective = 'seqmatch'
noise = 'ground_truth'
p_noise = 0.1
block_size = 96
batch_size = 12
n_layer = 4
n_head = 4
n_embd = 128
max_iters = 3000
lr_decay_iters = 3000
eval_interval = 500
bc_warmup_iters = 1000
sm_weight = 0.2  # chosen on the validation questions (README: what we tried)
prompt_len = 48  # rollouts answer a training question: the prompt ends with it ...
prompt_suffix = '? '  # ... right where the answer starts; the newline after the answer ends the rollout
