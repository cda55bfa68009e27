# SequenceMatch fine-tune of GPT-2 small (124M) on OpenWebText continuations, the paper's text setting
# at a size one modern GPU handles (its runs used Llama-2-7B). Prepare the data first:
#   python data/openwebtext/prepare.py            (pip install datasets; about an hour, ~17 GB)
# one GPU:       python train.py config/openwebtext_seqmatch.py
# several GPUs:  torchrun --standalone --nproc_per_node=8 train.py config/openwebtext_seqmatch.py
# (each process runs batch_size + model_batch_size rows x gradient_accumulation_steps per step)
out_dir = 'out-openwebtext-seqmatch'
dataset = 'openwebtext'
init_from = 'gpt2'  # needs `pip install transformers`; 'gpt2-medium' etc. for the larger ones
objective = 'seqmatch'
block_size = 512  # rows of 512 tokens: a 256-token prompt and a 256-token rollout
prompt_len = 256
batch_size = 8  # data rows per micro-batch ...
model_batch_size = 4  # ... plus rollout rows
gradient_accumulation_steps = 4
num_workers = 5  # batch builders: 8 x 1024 rows take a core 77 ms (bench.py), 8 x 512 half that
learning_rate = 6e-5  # fine-tuning: a tenth of GPT-2's pretraining rate
min_lr = 6e-6
beta2 = 0.95
warmup_iters = 100
max_iters = 5000
lr_decay_iters = 5000
bc_warmup_iters = 500  # let the new <bkspc> row learn from noise before the rollouts matter
p_noise = 0.02
sample_interval = 20
rollouts_per_sample = 32
buffer_size = 640
eval_interval = 250
eval_iters = 100
log_interval = 10
