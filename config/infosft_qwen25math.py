# InfoSFT (2026) on math as Helloworld10011/InfoSFT trains it: training/main_train.py and
# training/scripts/run_numinamath.sh (checked 2026-11-23): TRL's SFTTrainer, 100k NuminaMath-CoT examples as
# [system: the instruction, user: problem, assistant: solution], assistant-only loss, Qwen2.5's chat template.
#   python train.py config/infosft_qwen25math.py
# Estimated time on one H100 (an estimate): ~1.5 h, as config/dft_qwen25math.py (same model and data; at most 4,096
# tokens per example instead of 2,048 clips fewer).
# Evaluate: python eval.py --model=out-infosft-qwen25math --base=Qwen/Qwen2.5-Math-1.5B --tasks=gsm8k,humaneval,ppl
#   (the paper measures retention on HumanEval and IFEval; its math suite: the repository's eval/run_math_all.sh)
# Not matched here:
# - TRL loads the model in bf16 under DeepSpeed ZeRO-2 (bf16 weights, fp32 optimizer copy); tokenwise keeps float32
#   weights and autocasts.
# - the 100k examples: TRL shuffles with datasets' shuffle(seed=42); data_seed=42 draws 100k with numpy instead, so
#   the subset differs (same distribution).
# - the repository's training template (qwen2_5_training.jinja) is Qwen2.5's with {% generation %} marks, which
#   tokenwise does not need (it finds assistant turns itself) and does not parse; the model's own template renders
#   the same text when the chat has a system message, as here.
# - batch 256 examples: batched by tokens here (~256 examples of ~600 tokens per step).
init_from = 'Qwen/Qwen2.5-Math-1.5B'
dataset = 'AI-MO/NuminaMath-CoT'
prompt_field = 'problem'
response_field = 'solution'
pair_chat = True
system_prompt = 'Please reason step by step, and put your final answer within \\boxed{}.'  # MATH_INSTRUCTION
prompt_template = '{prompt}'
response_template = '{response}'
max_examples = 100000  # --num_samples
data_seed = 42  # --seed
block_size = 4096  # --max_length
batch_tokens = 16384
grad_accum = 10
rule = 'infosft'
infosft_P = 0.93  # --P
learning_rate = 5e-5  # 1.5B models (2e-5 for 7B/8B)
min_lr_ratio = 0.0  # the HF Trainer's cosine decays to 0
warmup = 0.1  # --warmup_ratio
beta1 = 0.9
beta2 = 0.999  # HF Trainer defaults: adam_beta2 0.999, weight_decay 0, max_grad_norm 1.0
weight_decay = 0.0
grad_clip = 1.0
epochs = 1.0
eval_interval = 50
out_dir = 'out-infosft-qwen25math'
