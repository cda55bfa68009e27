# Arithmetic, step 2, SequenceMatch: fine-tune the pretrained model with bc (as arithmetic_bc.py) for
# bc_warmup_iters, then with the chi^2-mixture loss on data and on the model's own answers to training
# questions. Same start, data rows and steps as arithmetic_mle.py. Settings chosen on the validation
# questions (docs/arithmetic.md: every setting tried).
# python train.py config/arithmetic_seqmatch.py
out_dir = 'out-arithmetic-seqmatch'
init_from = 'out-arithmetic-pretrain/ckpt.pt'
dataset = 'arithmetic'
objective = 'seqmatch'
noise = 'ground_truth'
p_noise = 0.3
block_size = 96
batch_size = 12
max_iters = 1500
lr_decay_iters = 1500
learning_rate = 3e-4
min_lr = 3e-5
eval_interval = 500
bc_warmup_iters = 300  # bc first, so that the rollouts already use <bkspc> (not tuned)
sm_weight = 0.2  # on validation 0.5 cost more P(right); 0.1 to 0.01 cost as much, deleted no more
alpha = 10.0  # on validation alpha 1 lowered P(right) (0.758 vs. 0.801), 0.01 collapsed it, 100 was level
gamma = 0.95  # on validation 0.9, 0.95 and 0.998 were level (docs/arithmetic.md); 0.95 deleted a little more
model_batch_size = 12  # rollout rows per step, as many as data rows: ...
rollouts_per_sample = 48  # ... and fresh ones to draw them from
prompt_len = 48  # rollouts answer a training question: the prompt ends with it ...
prompt_suffix = '? '  # ... right where the answer starts; the newline after the answer ends the rollout
