# The README's `make run`: a few minutes of fine-tuning on the CPU (~140 training tokens/s on 2 cores), enough to
# see the rule move the GSM8K answer NLL and the held-out perplexity; not enough to change GSM8K accuracy.
init_from = 'smollm2-gguf'
dataset = 'gsm8k'
max_examples = 256  # ~50k tokens, one epoch
epochs = 1.0
batch_tokens = 2048
grad_accum = 2  # ~20 examples per step, ~12 steps
learning_rate = 1e-4
warmup = 0.1
eval_interval = 1000  # held-out loss at the start and the end only
eval_examples = 50
