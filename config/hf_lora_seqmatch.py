# SequenceMatch with LoRA on a small modern LM, on one GPU: SmolLM2-135M (Hugging Face) fine-tuned on OpenWebText
# continuations, the paper's text setting (its runs: Llama-2-7B with QLoRA). Data in the model's tokenizer first:
#   python data/openwebtext/prepare.py --tokenizer=hf:HuggingFaceTB/SmolLM2-135M --out_dir=data/openwebtext_smollm2
#   python train.py config/hf_lora_seqmatch.py
# Another causal LM the same way, e.g. --init_from=hf:Qwen/Qwen2.5-0.5B with data prepared in its tokenizer.
# Not run with these settings: the machine this repository is developed on has no GPU, so no time, memory or result
# was measured; tests/test_hf.py runs the same code on tiny random models on a CPU.
out_dir = 'out-hf-lora-seqmatch'
dataset = 'openwebtext_smollm2'
init_from = 'hf:HuggingFaceTB/SmolLM2-135M'  # needs `pip install -r requirements-extra.txt`
objective = 'seqmatch'
lora_rank = 16  # adapters on every linear layer of the blocks, and the <bkspc> rows; the rest frozen
lora_alpha = 32.0
block_size = 512  # rows of 512 tokens: a 256-token prompt and a 256-token rollout
prompt_len = 256
batch_size = 8  # data rows per micro-batch ...
model_batch_size = 4  # ... plus rollout rows
gradient_accumulation_steps = 4
num_workers = 5  # batch builders: 8 x 1024 rows take a core 77 ms (bench.py), 8 x 512 half that
learning_rate = 2e-4  # LoRA trains few weights from zero: a larger rate than full fine-tuning's
min_lr = 2e-5
weight_decay = 0.0  # nothing pulls the adapters or the <bkspc> rows towards zero
beta2 = 0.95
warmup_iters = 100
max_iters = 3000
lr_decay_iters = 3000
bc_warmup_iters = 500  # let the new <bkspc> rows learn from noise before the rollouts matter
p_noise = 0.02
sample_interval = 20
rollouts_per_sample = 32
buffer_size = 640
eval_interval = 250
eval_iters = 100
log_interval = 10
