# The README's `make run`: a few minutes of fine-tuning per rule on the CPU (~140 training tokens/s on 2 cores),
# every rule from the same start on the same 64 examples, enough for the rules to part on the answer NLL by token
# class and on KL(base || model); not enough to change GSM8K accuracy.
init_from = 'smollm2-gguf'
dataset = 'gsm8k'
max_examples = 64  # ~12k tokens, one epoch
epochs = 1.0
batch_tokens = 2048
grad_accum = 1  # ~10 examples per step, ~7 steps
learning_rate = 1e-4
warmup = 1  # steps (a fraction of ~7 steps would round to 0)
eval_interval = 1000  # train.py's held-out loss at the end only (its val split is GSM8K test: eval.py reports)
eval_examples = 16
