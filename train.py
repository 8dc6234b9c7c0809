"""
Token-weighted supervised fine-tuning in one file: SFT, DFT, InfoSFT, ProFit and PriFT (the rules: weights.py).

$ python train.py                                        # SmolLM2-135M-Instruct (embedded GGUF), GSM8K, SFT, on the CPU
$ python train.py config/gsm8k_smollm2.py --rule=dft     # a config file, then overrides, applied in order
$ torchrun --standalone --nproc_per_node=8 train.py --init_from=meta-llama/Llama-3.2-1B --rule=dft --signal_model=prior

Read the config, then main(): setup in a dozen lines, then the training loop. Every optimizer step's loss is
sum_t w_t * CE_t * m_t / (supervised tokens of the whole step, all micro-batches and all ranks); METHODS.md says
how each official code normalises instead. Writes out_dir/ckpt.pt (+ tokenizer files, config.json) that
checkpoints.load_checkpoint and eval.py read, and out_dir/log.jsonl with one line per step.
"""
import ast
import dataclasses
import difflib
import json
import math
import os
import random
import sys
import time
import types
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import cpu
import weights
from data.loader import Batches, load_split, make_batch, plan_batches, prior_cache
from checkpoints import load_checkpoint, read_run_checkpoint

# -----------------------------------------------------------------------------
# Config: these defaults, then config files (python assignments), then --key=value, in order. main() sets the
# module globals from them, as nanoGPT's configurator does, so the code below reads each setting by its name.
# I/O
out_dir = 'out'
init_from = 'smollm2-gguf'  # the embedded SmolLM2-135M-Instruct GGUF, a hub name ('gpt2', 'HuggingFaceTB/SmolLM2-135M',
                            # 'meta-llama/Llama-3.2-1B'), a local HF folder, a .gguf file or a tokenwise out_dir
resume = False  # continue out_dir/ckpt.pt exactly where it stopped (same config required)
eval_interval = 100  # steps between held-out evaluations and checkpoints (also at step 0 and at the end)
eval_examples = 200  # held-out loss on this fixed subset (the first N) of the val split; 0 = all
log_interval = 1  # steps between console lines; log.jsonl gets every step
# data
dataset = 'gsm8k'  # gsm8k, a local .jsonl/.json/.parquet file or folder, or a hub name (see data/prepare.py)
data_dir = ''  # prepared folder; '' = data/prepare.py's folder for this dataset and tokenizer (made if missing)
prompt_field = ''  # with response_field: the record fields of prompt/response data; '' = found by name (prepare.FORMATS)
response_field = ''
messages_field = ''  # the field of chat data; '' = 'messages' or ShareGPT's 'conversations', when present
prompt_template = 'Question: {prompt}\nAnswer:'  # prompt/response text (the GSM8K evaluation format by default)
response_template = ' {response}'
pair_chat = False  # render prompt/response pairs as a chat ([system_prompt,] user, assistant) with the chat template
system_prompt = ''  # with pair_chat: a system message first
chat_template = ''  # a .jinja file; '' = the model's own chat template (ChatML if it has none)
block_size = 1024  # longest example in tokens (longer ones are clipped at the end)
max_examples = 0  # train on the first N examples only; 0 = all
data_seed = 0  # with max_examples: 0 = the first N; > 0 = N drawn at random with this seed (seeds that resample data)
batch_tokens = 8192  # padded tokens (rows x longest row) per micro-batch
grad_accum = 4  # micro-batches per optimizer step, over all ranks together (must divide by the number of ranks)
bucket_window = 1024  # shuffled examples sorted by length together: larger wastes less padding, shuffles less
# rule (weights.py; formulas and sources in METHODS.md)
rule = 'sft'  # sft | dft | infosft | profit | prift
signal_model = 'online'  # which model gives p: online = the model being trained | prior = the frozen initial model
infosft_P = 0.93
profit_tau = 0.1
profit_tau_high = 1.0  # upper bound of profit_direction='middle'
profit_direction = 'higher'  # higher | lower | middle | random
prift_mode = 'mass'  # mass | prob
prift_tau = 0.5
loss = 'fused'  # fused: weights.weighted_loss, chunked (fast) | reference: weights.reference_loss (plain autograd)
# optimizer and schedule
learning_rate = 5e-5
min_lr_ratio = 0.1  # cosine decay ends at learning_rate * min_lr_ratio
warmup = 0.1  # < 1: a fraction of max_steps; >= 1: a number of steps
weight_decay = 0.01  # on matrices and embeddings (>= 2-D) only, never on norm gains and biases
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # 0 = off
max_steps = 0  # 0 = as many as `epochs` takes
epochs = 1.0
seed = 1337
# system
device = ''  # '' = cuda if available, else cpu
dtype = 'auto'  # autocast compute dtype: auto | bfloat16 | float32 (weights, optimizer: float32 always);
# auto = bfloat16 where the hardware has bf16 matrix units, float32 elsewhere (see native_bf16)
compile = True  # torch.compile on CUDA. The CPU stays eager: compiling SmolLM2-135M took ~170 s for no steady-state gain
peak_flops = 0.0  # for MFU; 0 = the GPU's datasheet bf16 peak, or the CPU's matmul rate measured at start
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith('_') and type(v) in (bool, int, float, str)}
RENAMED = {'signal': ('signal_model', "torchrun would take --signal for its own --signals-to-handle")}
RESUME_FREE = ('resume', 'compile', 'eval_interval', 'log_interval', 'device')  # may change when resuming


def main(argv):
    globals().update(configure(argv))
    hyper = check_config()  # the rule's knobs; bad settings fail here, before any work
    proc = setup_process()  # ranks, device, compute dtype, seeds
    ckpt = read_resume_checkpoint() if resume else None
    raw_model, tokenizer, train, val = load_model_and_data(proc)
    batches = Batches(train['b'] - train['a'] - 1, batch_tokens, bucket_window, seed)
    steps = max_steps or max(1, math.ceil(epochs * batches.per_epoch / grad_accum))
    warmup_steps = int(warmup * steps) if warmup < 1 else int(warmup)
    params = [p for p in raw_model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params)
    step = restore(ckpt, raw_model, optimizer, batches, proc) if ckpt else 0
    del ckpt
    raw_model.train()
    fwd = torch.compile(raw_model) if compile and proc.device_type == 'cuda' else raw_model
    ranks = [int(os.environ['LOCAL_RANK'])] if proc.ddp and proc.device_type == 'cuda' else None
    model = DDP(fwd, device_ids=ranks) if proc.ddp else fwd
    n_params, peak = sum(p.numel() for p in params), peak_flops or default_peak(proc)
    val_batches = plan_batches(val['b'] - val['a'] - 1, batch_tokens, len(val['a']), np.random.default_rng(0))
    info = dict(rule=rule, signal=proc.reads, hyper=hyper, init_from=init_from, dataset=dataset, max_steps=steps,
                seed=seed)  # config.json, beside each checkpoint: what eval.py reports
    start_log(proc, step, tokenizer, f"{init_from}: {n_params / 1e6:.1f}M params on {proc.dev} x{proc.world}, "
              f"{proc.compute_dtype}; {len(train['a'])} train examples, {batches.per_epoch} micro-batches/epoch; "
              f"rule {rule} ({proc.reads or 'no signal'}), {loss} loss; {steps} steps")

    def checkpoint(save):  # held-out loss, logged; then, with save, ckpt.pt and config.json
        val_loss = evaluate(fwd, raw_model, val, val_batches, proc)
        log(proc, {'step': step, 'val_loss': val_loss, 'elapsed': time.time() - t_start},
            f"step {step}: val loss {val_loss:.4f}" + (f", saving {out_dir}/ckpt.pt" if save else ""))
        if save:
            save_checkpoint(raw_model, optimizer, step, batches, proc, dict(info, steps=step))

    t_start, t_steps = time.time(), []
    if step == 0 and eval_interval:
        checkpoint(save=False)
    # -------------------------------------------------------------------------------------------- the training loop
    while step < steps:
        t0 = time.time()
        lr = lr_at(step, steps, warmup_steps)
        for group in optimizer.param_groups:
            group['lr'] = lr
        mine = batches.next_step(grad_accum)[proc.rank::proc.world]  # this rank's share of the step's micro-batches
        micro = [make_batch(train, rows, proc.dev) for rows in mine]
        # N, the loss's denominator: the supervised tokens of the WHOLE step (all micro-batches, all ranks), counted
        # before any is run, so that every token weighs 1/N whichever micro-batch or rank it lands in
        n_tokens = int(all_sum(torch.tensor(sum(int(b['m'].sum()) for b in micro), device=proc.dev), proc).item())
        sums = dict(loss=0.0, ce_sum=0.0, weight_sum=0.0, kept=0.0, tokens=0.0,
                    inputs=float(sum(batches.lengths[rows].sum() for rows in mine)))  # inputs: for tokens/s and MFU
        for k, batch in enumerate(micro):
            # DDP all-reduces the gradients at every backward; only the last micro-batch's needs to
            with model.no_sync() if proc.ddp and k < len(micro) - 1 else nullcontext():
                with proc.autocast:
                    micro_loss, stats = loss_of(model, raw_model, batch, n_tokens, hyper)
                # DDP averages the gradients over ranks, but micro_loss is already a share of the global mean over
                # N: multiplying by world undoes the average, so the step's gradient equals one process's
                (micro_loss * proc.world).backward()
            for key, value in dict(stats, loss=micro_loss.detach()).items():
                sums[key] += value
        totals = sum_over_ranks(sums, proc)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float('inf')).item()
        if not (math.isfinite(totals['loss']) and math.isfinite(grad_norm)):
            raise SystemExit(f"step {step + 1}: loss {totals['loss']} / grad norm {grad_norm} is not finite; stopped "
                             f"without saving, the last good checkpoint is {out_dir}/ckpt.pt (lower learning_rate?)")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        t_steps.append(seconds_since(t0, proc))
        report(step, steps, totals, lr, grad_norm, t_steps, t_start, 6 * n_params / peak, proc)
        if (eval_interval and step % eval_interval == 0) or step == steps:
            checkpoint(save=True)
    if proc.ddp:
        dist.destroy_process_group()


def check_config():
    """The rule's knobs, as weights.token_weights takes them, once every setting is known to be valid."""
    hyper = {k: globals()[k] for k in weights.DEFAULTS}
    try:
        weights.check_rule(rule, signal_model, **hyper)
    except ValueError as e:
        raise SystemExit(f"config: {e}")
    if dtype not in ('auto', 'bfloat16', 'float32'):
        raise SystemExit(f"dtype={dtype!r}: use auto, bfloat16 or float32 (float16 would need loss scaling)")
    if loss not in ('fused', 'reference'):
        raise SystemExit(f"loss={loss!r}: use fused (weights.weighted_loss) or reference (weights.reference_loss)")
    return hyper


def loss_of(model, raw_model, batch, n_tokens, hyper):
    """This micro-batch's share of the step's loss, and its stats (weights.py): the fused, chunked loss, or the
    reference loss over the full logits (slower, more memory, the same numbers; tests prove it)."""
    prior = batch.get('p'), batch.get('u')
    if loss == 'reference':
        return weights.reference_loss(model(batch['x']), batch['y'], batch['m'], n_tokens, rule, signal_model,
                                      *prior, **hyper)
    h = model(batch['x'], return_hidden=True)
    return weights.weighted_loss(h, raw_model.lm_head.weight, batch['y'], batch['m'], n_tokens, rule, signal_model,
                                 *prior, **hyper)


def lr_at(step, steps, warmup_steps):
    """Linear warmup, then cosine decay to learning_rate * min_lr_ratio."""
    if step < warmup_steps:
        return learning_rate * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return learning_rate * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def evaluate(fwd, raw_model, val, val_batches, proc):
    """Plain CE per supervised token of the held-out subset, over all ranks: the same measure for every rule."""
    sums = torch.zeros(2, dtype=torch.float64, device=proc.dev)
    for rows in val_batches[proc.rank::proc.world]:
        batch = make_batch(val, rows, proc.dev)
        with proc.autocast:
            h = fwd(batch['x'], return_hidden=True)
            _, st = weights.weighted_loss(h, raw_model.lm_head.weight, batch['y'], batch['m'], int(batch['m'].sum()))
        sums += torch.stack([st['ce_sum'].double(), st['tokens'].double().to(proc.dev)])
    all_sum(sums, proc)
    return (sums[0] / sums[1]).item()


def sum_over_ranks(sums, proc):
    """The step's accumulators summed over ranks, in one all-reduce, as floats."""
    values = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=proc.dev) for v in sums.values()])
    return dict(zip(sums, all_sum(values, proc).tolist()))


def seconds_since(t0, proc):
    if proc.device_type == 'cuda':
        torch.cuda.synchronize(proc.dev)  # CUDA runs asynchronously: wait for the step before reading the clock
    return time.time() - t0


def report(step, steps, totals, lr, grad_norm, t_steps, t_start, flops_per_token_over_peak, proc):
    """One log.jsonl line per step; a console line every log_interval steps."""
    n, dt = totals['tokens'], t_steps[-1]
    rec = {'step': step, 'loss': totals['loss'], 'ce': totals['ce_sum'] / n, 'weight': totals['weight_sum'] / n,
           'kept': totals['kept'] / n, 'lr': lr, 'grad_norm': grad_norm, 'tokens_per_s': totals['inputs'] / dt,
           'mfu': totals['inputs'] / dt * flops_per_token_over_peak, 'elapsed': time.time() - t_start}
    eta = sum(t_steps) / len(t_steps) * (steps - step)
    line = (f"step {step}/{steps} | loss {rec['loss']:.4f} ce {rec['ce']:.4f} w {rec['weight']:.3f} kept "
            f"{rec['kept']:.3f} | lr {lr:.2e} | gnorm {grad_norm:.2f} | {rec['tokens_per_s']:.0f} tok/s, mfu "
            f"{100 * rec['mfu']:.1f}% | {rec['elapsed'] / 60:.1f} min, eta {eta / 60:.1f} min")
    log(proc, rec, line if step % log_interval == 0 or step == steps else None)


# -----------------------------------------------------------------------------
# Config

def configure(argv):
    """DEFAULTS updated by config files and --key=value in order; unknown keys and wrong types are errors."""
    cfg = dict(DEFAULTS)

    def put(key, val, where):
        if key in RENAMED:
            new, why = RENAMED[key]
            raise SystemExit(f"{where}: {key} is now called {new} ({why})")
        if key not in cfg:
            near = difflib.get_close_matches(key, cfg, n=1)
            raise SystemExit(f"{where}: unknown config key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        want = type(DEFAULTS[key])
        if want is float and type(val) is int:
            val = float(val)
        if type(val) is not want:
            raise SystemExit(f"{where}: {key} must be {want.__name__}, got {val!r}")
        cfg[key] = val

    for arg in argv:
        if arg.startswith('--'):
            key, eq, raw = arg[2:].partition('=')
            if not eq:
                raise SystemExit(f"bad argument {arg!r}: write --key=value")
            try:  # strings are taken as written; everything else is a python literal (True, 3, 1e-4)
                val = raw if type(DEFAULTS.get(key)) is str else ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                val = raw
            put(key, val, arg)
        else:
            if not os.path.isfile(arg):
                raise SystemExit(f"config file {arg!r} not found (arguments are config files or --key=value)")
            scope = {}
            exec(open(arg).read(), scope)
            for key, val in scope.items():
                if not key.startswith('_') and not isinstance(val, types.ModuleType):
                    put(key, val, arg)
    return cfg


# -----------------------------------------------------------------------------
# Setup: processes, model, data, optimizer

def setup_process():
    """Rank, world size, device, compute dtype and seeds: torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; one process
    otherwise. reads: the signal the rule really reads (None, 'online' or 'prior')."""
    dev = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    ddp, rank, world = int(os.environ.get('WORLD_SIZE', 1)) > 1, 0, 1
    if ddp:
        dist.init_process_group('nccl' if dev.startswith('cuda') else 'gloo')
        rank, world = dist.get_rank(), dist.get_world_size()
        if dev.startswith('cuda'):
            dev = f"cuda:{os.environ['LOCAL_RANK']}"
            torch.cuda.set_device(dev)
    if grad_accum % world:
        raise SystemExit(f"grad_accum={grad_accum} must be a multiple of the {world} ranks")
    device_type = 'cuda' if dev.startswith('cuda') else 'cpu'
    if device_type == 'cpu':
        cpu.keep_freed_memory()  # glibc would hand each step's big blocks back, and the next step fault them in again
    compute_dtype = dtype if dtype != 'auto' else 'bfloat16' if native_bf16(device_type) else 'float32'
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if compute_dtype == 'bfloat16' else nullcontext()
    for seeded in (torch.manual_seed, random.seed, np.random.seed):
        seeded(seed + rank)
    return types.SimpleNamespace(ddp=ddp, rank=rank, world=world, master=rank == 0, dev=dev, device_type=device_type,
                                 compute_dtype=compute_dtype, autocast=autocast,
                                 reads=weights.signal_of(rule, signal_model))


def all_sum(t, proc):
    """t summed over ranks, in place."""
    if proc.ddp:
        dist.all_reduce(t)
    return t


def load_model_and_data(proc):
    """The initial model (float32 master weights), its tokenizer, and the train/val splits prepared for that
    tokenizer; with the prior signal, the frozen initial model's p and u for every training target."""
    try:
        model, tokenizer = load_checkpoint(init_from, device=proc.dev, dtype=torch.float32)
    except (FileNotFoundError, ValueError, ConnectionError) as e:
        raise SystemExit(f"init_from={init_from!r}: {e}")
    max_len = min(block_size, model.config.block_size)
    folder = data_dir
    if not folder:  # rank 0 tokenizes (once: prepare reuses a folder made with the same settings), then the others
        from data.prepare import prepare
        for turn in (True, False):
            if proc.master == turn:
                try:
                    folder = prepare(dataset, tokenizer, block_size=max_len, prompt_field=prompt_field or None,
                                     response_field=response_field or None, messages_field=messages_field or None,
                                     prompt_template=prompt_template, response_template=response_template,
                                     chat_template=chat_template or None, pair_chat=pair_chat,
                                     system_prompt=system_prompt)
                except (ValueError, FileNotFoundError, ConnectionError) as e:
                    raise SystemExit(f"data: {e}")
            if proc.ddp:
                dist.barrier()
    meta_path = os.path.join(folder, 'meta.json')
    if not os.path.exists(meta_path):
        raise SystemExit(f"missing {meta_path}: prepare the data with data/prepare.py (or fix --data_dir)")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get('tokenizer') != tokenizer.fingerprint:
        raise SystemExit(f"data prepared with tokenizer {meta.get('tokenizer')} but model uses {tokenizer.fingerprint}; "
                         f"re-run data/prepare.py with --init_from={init_from}")
    train = load_split(folder, 'train', max_len, 0 if data_seed else max_examples)
    if data_seed and max_examples:  # a seeded random subset, in data order (the prior cache is keyed by index)
        pick = np.sort(np.random.default_rng(data_seed).permutation(len(train['a']))[:max_examples])
        train.update(a=train['a'][pick], b=train['b'][pick], index=train['index'][pick])
    val = load_split(folder, 'val', max_len, eval_examples)
    if proc.reads == 'prior':  # rank 0 computes the cache first; the others then read it
        for turn in (True, False):
            if proc.master == turn:
                train['prior'] = prior_cache(model, train, folder, tokenizer.fingerprint, batch_tokens, proc.dev,
                                             proc.autocast)
            if proc.ddp and turn:
                dist.barrier()
    return model, tokenizer, train, val


def make_optimizer(params):
    """AdamW with weight decay on matrices and embeddings, not on norm gains and biases (as nanoGPT). fused: one
    kernel over all parameters instead of a Python loop over them, on the CPU too (same results, tested)."""
    groups = [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
              {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(beta1, beta2), fused=True)


def native_bf16(device_type):
    """Whether bf16 matmuls run on matrix units: GPUs from Ampere on, x86 CPUs with AVX512-BF16 or AMX. Other CPUs
    emulate them: on a 2-core AVX2 EPYC bf16 matmuls ran at 0.7% of float32's rate (bench.py --only peak); with AMX,
    bf16 training steps ran 1.06-1.24x faster than float32 ones (README)."""
    if device_type == 'cuda':
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def default_peak(proc):
    """MFU's denominator: the dense bf16 datasheet peak of an H100/H200 or A100; on the CPU, its measured matmul
    rate in the compute dtype (no datasheet applies), the faster of torch's kernel and oneDNN's (cpu.py)."""
    if proc.device_type == 'cuda':
        gpu = torch.cuda.get_device_name(proc.dev)
        return 989e12 if any(h in gpu for h in ('H100', 'H200', 'H800')) else 312e12
    return max(matmul_flops(proc.dev, getattr(torch, proc.compute_dtype), mm=mm) for mm in (torch.mm, cpu.mm))


def matmul_flops(dev, dtype, n=1024, reps=10, warm=3, mm=torch.mm):
    """The measured FLOP/s of an n x n matmul (mm: whose kernel): the denominator of MFU where no datasheet peak
    applies. The warm-up calls keep thread start-up and cold caches out of the timing."""
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(warm):
        mm(a, b)
    if dev.startswith('cuda'):
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        mm(a, b)
    if dev.startswith('cuda'):
        torch.cuda.synchronize(dev)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


# -----------------------------------------------------------------------------
# Checkpoints and logs

def current_config():
    return {k: globals()[k] for k in DEFAULTS}


def read_resume_checkpoint():
    """out_dir/ckpt.pt, if it was written with this same config (the settings in RESUME_FREE may change)."""
    path = os.path.join(out_dir, 'ckpt.pt')
    if not os.path.exists(path):
        raise SystemExit(f"--resume=True but there is no {path}")
    try:
        ckpt = read_run_checkpoint(path)
    except ValueError as e:
        raise SystemExit(f"resume: {e}")
    cfg = current_config()
    changed = [k for k in cfg if k not in RESUME_FREE and ckpt['config'].get(k) != cfg[k]]
    if changed:
        k = changed[0]
        raise SystemExit(f"resume: {k}={cfg[k]!r} but the checkpoint ran with {ckpt['config'].get(k)!r}; "
                         f"resume with the same config (or start a new out_dir)")
    return ckpt


def restore(ckpt, model, optimizer, batches, proc):
    """Weights, optimizer moments, data position and every RNG as the checkpoint left them; returns its step."""
    model.load_state_dict(ckpt['model'])
    optimizer.load_state_dict(ckpt['optimizer'])
    batches.load(ckpt['data'])
    rng = ckpt['rng'][proc.rank]
    random.setstate(rng['python'])
    np.random.set_state(('MT19937', np.array(rng['numpy'][0], np.uint32), *rng['numpy'][1:]))
    torch.set_rng_state(torch.tensor(rng['torch'], dtype=torch.uint8))
    if 'cuda' in rng and proc.device_type == 'cuda':
        torch.cuda.set_rng_state(torch.tensor(rng['cuda'], dtype=torch.uint8), proc.dev)
    return ckpt['step']


def save_checkpoint(model, optimizer, step, batches, proc, info):
    """ckpt.pt (what resume needs) and config.json (what eval.py reports), both written atomically."""
    # plain lists, so that the states of all ranks can be gathered and the checkpoint loads with weights_only
    np_state = np.random.get_state()
    rng = {'python': random.getstate(), 'numpy': [np_state[1].tolist(), *np_state[2:]],
           'torch': torch.get_rng_state().tolist()}
    if proc.device_type == 'cuda':
        rng['cuda'] = torch.cuda.get_rng_state(proc.dev).tolist()
    rngs = [rng]
    if proc.ddp:
        rngs = [None] * proc.world
        dist.all_gather_object(rngs, rng)
    if not proc.master:
        return
    ckpt = {'model': model.state_dict(), 'model_config': dataclasses.asdict(model.config),
            'optimizer': optimizer.state_dict(), 'step': step, 'config': current_config(), 'rng': rngs,
            'data': batches.state()}
    atomic_save(ckpt, os.path.join(out_dir, 'ckpt.pt'))
    atomic_save(json.dumps(info, indent=2), os.path.join(out_dir, 'config.json'))


def atomic_save(obj, path):
    """Write to a temp file in the same folder, fsync, rename: a crash leaves the old file or the new, never half."""
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        if path.endswith('.pt'):
            torch.save(obj, f)
        else:
            f.write(obj.encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def start_log(proc, step, tokenizer, header):
    """out_dir with the tokenizer files (with ckpt.pt it is a checkpoint checkpoints.load_checkpoint reads) and a log.jsonl
    that holds what was logged up to the step this run starts from; the run's header line on the console."""
    if not proc.master:
        return
    print(header)
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save(out_dir)
    path = os.path.join(out_dir, 'log.jsonl')
    if resume and os.path.exists(path):  # drop what was logged after the checkpoint we continue from
        with open(path) as f:
            kept = [line for line in f if json.loads(line)['step'] <= step]
        atomic_save(''.join(kept), path)
    elif os.path.exists(path):
        os.remove(path)


def log(proc, record, line=None):
    """A record in log.jsonl and, if given, a line on the console (rank 0 only)."""
    if proc.master:
        with open(os.path.join(out_dir, 'log.jsonl'), 'a') as f:
            f.write(json.dumps(record) + '\n')
        if line:
            print(line)


if __name__ == '__main__':
    main(sys.argv[1:])
