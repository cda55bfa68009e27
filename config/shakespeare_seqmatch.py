# The main job: SequenceMatch on char-level Tiny Shakespeare, sized for a laptop CPU.
# python train.py config/shakespeare_seqmatch.py
out_dir = 'out-shakespeare-seqmatch'
dataset = 'shakespeare_char'
objective = 'seqmatch'
