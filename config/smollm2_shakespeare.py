# The paper's text experiment in miniature, on a laptop CPU: a real pretrained LM, SmolLM2-135M-Instruct (from its
# 4-bit GGUF file, dequantized; LoRA on top, the paper's QLoRA in spirit), fine-tuned on Tiny Shakespeare
# continuations with SequenceMatch (results.py --recipe=smollm2 adds MLE and BC). docs/huggingface.md has the commands
# that write the model directory and prepare the data. About 11 minutes alone on a 2-core CPU.
out_dir = 'out-smollm2-seqmatch'
dataset = 'data/shakespeare_smollm2'  # Tiny Shakespeare's speeches in SmolLM2's tokenizer, each ended by its eos
init_from = 'hf:models/smollm2'  # export_hf.py --gguf's directory (hf:<the .gguf file> works too, slower to load)
device = 'cpu'
lora_rank = 16  # adapters on every linear layer of the blocks, and the <bkspc> rows; the rest frozen
lora_alpha = 32.0
block_size = 64  # rows of 64 tokens: a 32-token prompt and a 32-action rollout
prompt_len = 32
batch_size = 4  # data rows per iteration ...
model_batch_size = 2  # ... plus rollout rows from the replay buffer
rollouts_per_sample = 8  # 8 rollouts cost a refresh hardly more than 4
sample_interval = 20
buffer_size = 40
learning_rate = 1e-3  # LoRA trains few weights from zero, and the run is short
min_lr = 1e-4
weight_decay = 0.0  # nothing pulls the adapters or the <bkspc> rows towards zero
beta2 = 0.95
warmup_iters = 20
max_iters = 200
lr_decay_iters = 200
bc_warmup_iters = 100  # the <bkspc> rows start as the mean token: BC teaches them to delete first
p_noise = 0.1
sm_weight = 0.8  # chosen on validation data (docs/huggingface.md): 0.8 beat 0.5 in MAUVE
alpha = 10.0  # at alpha 1 the chi^2 term (r^2 / 4 alpha, r about -3 nats a BPE token) pulled the model off the data
eval_interval = 200  # the val loss at the start and the end
eval_iters = 20
log_interval = 10
