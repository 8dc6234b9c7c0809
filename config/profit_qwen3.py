# ProFit (2026) as Utaotao/ProFit trains it: run.sh, README.md and data/dataset_info.json (checked 2026-11-23):
# LLaMA-Factory, full fine-tuning of Qwen3-0.6B-Base on Shadow-2K (2,000 Infinity-Instruct chats, ShareGPT
# 'conversations'), keep tokens with p >= 0.1.
# Shadow-2K is a file in wutaiqiang/Shadow-FT, not a hub dataset: download
#   https://github.com/wutaiqiang/Shadow-FT/raw/main/data/Shadow_2k.parquet   to data/Shadow_2k.parquet
#   python train.py config/profit_qwen3.py
# Estimated time on one H100 (an estimate): ~1 minute of training plus torch.compile. bench.py's measured 112 TFLOP/s
# (138k tokens/s on SmolLM2-135M) gives a 0.6B model 112e12 / (6 x 0.6e9) = 31k tokens/s; 2,000 chats of ~700 tokens
# (assumed; meta.json counts them) are 1.4M tokens = 45 s.
# Evaluate: python eval.py --model=out-profit-qwen3 --base=Qwen/Qwen3-0.6B-Base --tasks=gsm8k,ppl
#   (the paper's five benchmarks, GPQA-D, GSM8K, MATH-500, AIME24 and IFEval, run in OpenCompass on an HF export:
#   python -c "import checkpoints as c; c.export_hf(*c.load_checkpoint('out-profit-qwen3'), 'hf-profit')")
# Not matched here:
# - LLaMA-Factory loads the model in bf16 (--bf16 true), so without DeepSpeed its weights and AdamW state are bf16;
#   tokenwise keeps float32 weights and optimizer state and autocasts to bf16.
# - batch: run.sh has 1 example per GPU x 4 accumulation steps on an unstated number of GPUs; here ~4k tokens per
#   step (~6 examples).
# - run.sh sets no --template, so LLaMA-Factory derives one from the tokenizer's chat template; tokenwise renders the
#   model's template itself, which opens the last assistant turn with an empty <think></think> block (unsupervised).
init_from = 'Qwen/Qwen3-0.6B-Base'
dataset = 'data/Shadow_2k.parquet'
max_examples = 4000  # --max_samples (more than Shadow-2K has)
block_size = 8192  # --cutoff_len
batch_tokens = 4096
grad_accum = 1
rule = 'profit'
profit_tau = 0.1  # prob_threshold
profit_direction = 'higher'  # threshold_direction
learning_rate = 1e-5
min_lr_ratio = 0.0  # the HF Trainer's cosine decays to 0
warmup = 0.1
beta1 = 0.9
beta2 = 0.999  # HF Trainer defaults: adam_beta2 0.999, weight_decay 0, max_grad_norm 1.0
weight_decay = 0.0
grad_clip = 1.0
epochs = 1.0
eval_interval = 100
out_dir = 'out-profit-qwen3'
