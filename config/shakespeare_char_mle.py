# The baseline: plain maximum likelihood, nanoGPT's CPU recipe for char-level Shakespeare.
# python train.py config/shakespeare_char_mle.py
out_dir = 'out-shakespeare-char-mle'
dataset = 'shakespeare_char'
objective = 'mle'
