# PriFT (Wang et al. 2026), PriFT-mass, as wang-kee/PriFT trains it: scripts/reproduce_qwen25_math_1p5b.sh,
# scripts/train.sh and verl's sft_trainer.yaml (checked 2026-11-23): DFT's setup with the frozen initial model's
# signal. The paper's headline model is Qwen2.5-Math-7B, which does not fit one 80 GB GPU with float32 master weights
# and AdamW (7.6B x 16 bytes = 122 GB; README, memory), so this is the repository's 1.5B script.
#   python train.py config/prift_qwen25math.py            (--prift_mode=prob for PriFT-prob)
# Estimated time on one H100 (an estimate): ~2 h. Training as config/dft_qwen25math.py (~5,000 s at the 12k tokens/s
# that bench.py's measured 112 TFLOP/s gives a 1.54B model), plus one no-grad pass of the initial model over the
# 60M training tokens for the prior cache (a third of a training step's FLOPs: ~1,700 s), computed once and cached.
# Evaluate: python eval.py --model=out-prift-qwen25math --base=Qwen/Qwen2.5-Math-1.5B --tasks=gsm8k,ppl
#   the paper's Avg@16 / Pass@16: export as in config/dft_qwen25math.py, then the repository's scripts/eval_math.sh
#   --model <export> --output-dir out-eval --prompt-type qwen-boxed --n-sampling 16 --temperature 1
# Not matched here: as config/dft_qwen25math.py (pure bf16 weights in verl, batch by tokens, the prompt, EOS,
# per-micro-batch normalisation). The official code runs the reference forward every micro-batch; tokenwise caches
# the same p and u once (METHODS.md).
init_from = 'Qwen/Qwen2.5-Math-1.5B'
dataset = 'AI-MO/NuminaMath-CoT'
prompt_field = 'problem'
response_field = 'solution'
pair_chat = True
prompt_template = '{prompt}'
response_template = '{response}'
max_examples = 100000  # scripts/prepare_data.sh: numina_cot.py --train_end 100000
block_size = 2048
batch_tokens = 16384
grad_accum = 10
rule = 'prift'
signal_model = 'prior'
prift_mode = 'mass'
prift_tau = 0.5  # PRIFT_MASS_THRESHOLD
learning_rate = 5e-5
min_lr_ratio = 0.0
warmup = 0.1
beta1 = 0.9
beta2 = 0.95
weight_decay = 0.01
grad_clip = 1.0
epochs = 1.0
eval_interval = 50
out_dir = 'out-prift-qwen25math'
