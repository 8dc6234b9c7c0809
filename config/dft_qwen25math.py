# DFT (Wu et al. 2025) as yongliang-wu/DFT trains it: README.md's launch command and verl's sft_trainer.yaml
# (checked 2026-11-23). Needs a network (model and data from the hub) and a GPU with >= 48 GB (README, memory).
#   python train.py config/dft_qwen25math.py
# Estimated time on one H100 (an estimate, not a measurement): ~1.5 h of training. bench.py measured 138k tokens/s
# (bf16, compiled) on SmolLM2-135M, 6 x 135M x 138k = 112 TFLOP/s; at the same rate a 1.54B model trains at
# 112e12 / (6 x 1.54e9) = 12k tokens/s, and 100k NuminaMath-CoT examples at ~600 tokens each (assumed; meta.json
# counts them) are 60M tokens = 5,000 s. Preparing the data tokenizes all 860k train records first (minutes).
# Evaluate: python eval.py --model=out-dft-qwen25math --base=Qwen/Qwen2.5-Math-1.5B --tasks=gsm8k,ppl
#   the paper's own measure (5 math benchmarks, Avg@16, Qwen2.5-Math's evaluation, prompt type qwen-boxed) runs on an
#   HF export: python -c "import checkpoints as c; c.export_hf(*c.load_checkpoint('out-dft-qwen25math'), 'hf-dft')"
#   then, in QwenLM/Qwen2.5-Math's evaluation folder: bash sh/eval.sh qwen-boxed hf-dft out-eval 16 1
# Not matched here:
# - verl trains pure bf16 weights (fsdp_config.model_dtype=bf16); tokenwise keeps float32 master weights and AdamW
#   state and autocasts to bf16, so its updates are not rounded to bf16 (and it needs 16 bytes per parameter).
# - batch 256 examples: tokenwise batches by tokens; batch_tokens x grad_accum below is ~256 examples of ~600 tokens.
# - DFT's numina_cot.py (which builds the prompt from each problem) is not in the stored copy of the repository;
#   here the prompt is the problem alone, rendered as a user turn with the model's chat template, as verl's
#   SFTDataset renders prompt/response data (not checked either). verl appends EOS (<|endoftext|>) to the
#   response; tokenwise supervises the template's end of turn (<|im_end|>) instead.
# - verl divides each micro-batch's loss by its own tokens; tokenwise by the step's (METHODS.md, normalisation).
init_from = 'Qwen/Qwen2.5-Math-1.5B'
dataset = 'AI-MO/NuminaMath-CoT'
prompt_field = 'problem'
response_field = 'solution'
pair_chat = True
prompt_template = '{prompt}'
response_template = '{response}'
max_examples = 100000  # README: numina_cot.py --train_end 100000 (the first 100k)
block_size = 2048  # data.max_length
batch_tokens = 16384
grad_accum = 10  # ~256 examples per step, ~390 steps
rule = 'dft'
learning_rate = 5e-5
min_lr_ratio = 0.0  # verl's cosine decays to 0
warmup = 0.1
beta1 = 0.9
beta2 = 0.95
weight_decay = 0.01
grad_clip = 1.0
epochs = 1.0
eval_interval = 50
out_dir = 'out-dft-qwen25math'
