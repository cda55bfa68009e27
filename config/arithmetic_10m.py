# Arithmetic at 10M parameters: an overlay, named after the pretrain's or an arm's config (the configurator
# applies config files in order, so these values win over the ones before them):
# python train.py config/arithmetic_pretrain.py config/arithmetic_10m.py --seed=1337 \
#     --out_dir=out-arithmetic-10m-pretrain-1337
# python train.py config/arithmetic_bc.py config/arithmetic_10m.py --seed=1337 \
#     --init_from=out-arithmetic-10m-pretrain-1337/ckpt.pt --out_dir=out-arithmetic-10m-bc-1337
# (the same for arithmetic_mle.py and arithmetic_seqmatch.py; docs/arithmetic.md has the loop over seeds)
# out_dir and init_from stay on the command line: a config file cannot tell which config it follows, and an
# init_from set here would turn the pretrain into a fine-tune. Without them a 10M arm would fine-tune the
# 0.8M pretrain in out-arithmetic-pretrain (train.py prints which checkpoint it fine-tunes).
# Cost: on one NVIDIA H200 (bf16) the pretrain took 90 s and each fine-tune 30-70 s.
# On one core of the 2-core development CPU (fp32) an iteration took 3.2 s in the pretrain and in BC, and 7.1 s in
# SequenceMatch once switched on (rollouts included), about 40x the 0.8M recipe's 80 and 175 ms measured the same way:
# extrapolated (not run to the end), some 5 hours for the pretrain and 10 for a seed's four runs (pretrain, MLE,
# BC, SequenceMatch). Use a GPU.
n_layer = 6  # the pretrain: 6 blocks (a fine-tune takes its architecture from its checkpoint: arms ignore these 3)
n_head = 6  # ... of 6 heads
n_embd = 384  # ... on a 384-wide residual stream: 10.7M parameters, against 0.8M at 4 x 128
batch_size = 48  # data rows per step, 4x the 0.8M recipe's 12, in the pretrain and every arm
model_batch_size = 48  # seqmatch: rollout rows per step, as many as data rows (as at 0.8M); ignored elsewhere
rollouts_per_sample = 192  # seqmatch: fresh rollouts per refresh, 4 per rollout row (as at 0.8M: 48 for 12)
buffer_size = 960  # seqmatch: the replay buffer, 5 refreshes deep (as the default 240 for 48)
