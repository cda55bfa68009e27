# SequenceMatch fine-tune of GPT-2 small on BPE Tiny Shakespeare (a GPU, or a patient CPU).
#   python data/shakespeare/prepare.py
#   python train.py config/shakespeare_gpt2_seqmatch.py
out_dir = 'out-shakespeare-gpt2-seqmatch'
dataset = 'shakespeare'
init_from = 'gpt2'  # needs `pip install transformers`
objective = 'seqmatch'
block_size = 256
prompt_len = 128
batch_size = 8
model_batch_size = 4
learning_rate = 3e-5
min_lr = 3e-6
warmup_iters = 50
max_iters = 2000
lr_decay_iters = 2000
bc_warmup_iters = 300
p_noise = 0.05
sample_interval = 20
rollouts_per_sample = 16
buffer_size = 320
eval_interval = 250
eval_iters = 40
