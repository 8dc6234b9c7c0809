# SmolLM2-135M-Instruct (the embedded GGUF) on GSM8K, sized for the CPU: ~140 tokens/s on 2 cores, so these 512
# examples (~100k tokens, ~12 steps) take about 12 minutes plus evaluations. On a GPU, train on all 7,473
# examples: python train.py config/gsm8k_smollm2.py --max_examples=0 --epochs=3 --grad_accum=8
init_from = 'smollm2-gguf'
dataset = 'gsm8k'
out_dir = 'out-gsm8k-smollm2'
max_examples = 512
epochs = 1.0
batch_tokens = 4096
grad_accum = 2
learning_rate = 5e-5  # DFT's setting for 1.5B; small models tolerate more, but keep the papers' value
warmup = 0.1
eval_interval = 5
eval_examples = 100
