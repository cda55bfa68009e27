"""
Export a run that fine-tuned a Hugging Face model (train.py's init_from='hf:...') as a Hugging Face
model directory: the weights with the LoRA adapters and the <bkspc> rows merged in, and the
tokenizer with <bkspc> (the id right after the base vocabulary, as in training), so that
AutoModelForCausalLM.from_pretrained(DIR) loads it anywhere. Or, with --gguf=FILE, a GGUF file's
model as it is (dequantized to float32), which then loads in seconds where the file takes most of a
minute.
$ python export_hf.py --out_dir=out-hf-lora-seqmatch --to=out-smollm2-export
$ python export_hf.py --gguf=models/SmolLM2-135M-Instruct.Q4_1.gguf --to=models/smollm2
"""
import os

from checkpoint import LOAD_ERRORS, load_model

# -----------------------------------------------------------------------------
out_dir = 'out-hf-lora-seqmatch'  # the run to export (its ckpt.pt)
gguf = ''  # or a .gguf file to write as a model directory instead of a run
to = ''  # the directory to write, new or empty
# -----------------------------------------------------------------------------
exec(open('configurator.py').read())  # overrides from the command line or a config file

if not to:
    raise SystemExit("say where the model goes: --to=DIR")
if os.path.isfile(to) or (os.path.isdir(to) and os.listdir(to)):
    raise SystemExit(f"{to} is a file or a folder that is not empty; nothing was written: export to a new or "
                     f"empty directory")
try:
    if gguf:  # a base model as it is
        import transformers
        from tokenizer import hf_from_pretrained
        for auto_class in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
            hf_from_pretrained(auto_class, gguf).save_pretrained(to)
    else:
        model, checkpoint = load_model(os.path.join(out_dir, 'ckpt.pt'))
except LOAD_ERRORS as e:
    raise SystemExit(f"error: {e}")
if gguf:
    print(f"wrote {gguf} to {to} (float32): init_from='hf:{to}' reads it as it reads the file")
    raise SystemExit(0)
if 'hf_name' not in checkpoint['model_args']:
    raise SystemExit(f"{out_dir} trained model.py's GPT, not a Hugging Face model: there is nothing to export")
model.export(to)
print(f"exported {out_dir} (fine-tuned from {model.config.hf_name}) to {to}")
