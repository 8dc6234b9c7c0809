"""
Token-weighted supervised fine-tuning in one file: SFT, DFT, InfoSFT, ProFit and PriFT (see weights.py).

$ python train.py                                        # SmolLM2-135M-Instruct (embedded GGUF), GSM8K, SFT, on the CPU
$ python train.py config/gsm8k_smollm2.py --rule=dft     # a config file, then overrides, applied in order
$ torchrun --standalone --nproc_per_node=8 train.py --init_from=meta-llama/Llama-3.2-1B --rule=dft --signal_model=prior

Every optimizer step's loss is sum_t w_t * CE_t * m_t / (supervised tokens of the whole step, all
micro-batches and all ranks); METHODS.md says how each official code normalises instead. Writes out_dir/ckpt.pt (+ tokenizer files,
config.json) that model.load_checkpoint and eval.py read, and out_dir/log.jsonl with one line per step.
"""
import ast
import dataclasses
import difflib
import hashlib
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

import weights
from model import load_checkpoint, read_run_checkpoint

# -----------------------------------------------------------------------------
# Default config. Override with config files (python assignments) and --key=value, applied in order.
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
block_size = 1024  # longest example in tokens (longer ones are clipped at the end)
max_examples = 0  # train on the first N examples only; 0 = all
batch_tokens = 8192  # padded tokens (rows x longest row) per micro-batch
grad_accum = 4  # micro-batches per optimizer step, over all ranks together (must divide by the number of ranks)
bucket_window = 1024  # shuffled examples sorted by length together: larger wastes less padding, shuffles less
# rule (weights.py; formulas and sources in METHODS.md)
rule = 'sft'  # sft | dft | infosft | profit | prift
signal_model = 'online'  # which model gives p: online = the model being trained | prior = the frozen initial model
infosft_P = 0.93
profit_tau = 0.1
profit_tau_high = -1.0  # upper bound of profit_direction='middle'; < 0 = unset
profit_direction = 'higher'  # higher | lower | middle | random
prift_mode = 'mass'  # mass | prob
prift_tau = 0.5
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
HYPER = ('infosft_P', 'profit_tau', 'profit_tau_high', 'profit_direction', 'prift_mode', 'prift_tau')
RENAMED = {'signal': ('signal_model', "torchrun would take --signal for its own --signals-to-handle")}
RESUME_FREE = ('resume', 'compile', 'eval_interval', 'log_interval', 'device')  # may change when resuming


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
# Data: prepared splits (data/prepare.py) as memmaps; variable-length examples bucketed by length

def load_split(folder, split, block_size, limit=0):
    """Examples [a, b) of one split with at least one supervised target, cropped to block_size inputs."""
    paths = {s: os.path.join(folder, f'{split}.{s}') for s in ('ids.bin', 'mask.bin', 'offsets.npy')}
    for path in paths.values():
        if not os.path.exists(path):
            raise SystemExit(f"missing {path}: prepare the data with data/prepare.py (or fix --data_dir)")
    offsets = np.load(paths['offsets.npy']).astype(np.int64)
    if len(offsets) < 2 or offsets[-1] == 0:
        raise SystemExit(f"{folder}: the {split} split has no examples; check the dataset and re-run data/prepare.py")
    ids = np.memmap(paths['ids.bin'], dtype=np.uint32, mode='r')
    mask = np.memmap(paths['mask.bin'], dtype=np.uint8, mode='r')
    if len(ids) != offsets[-1] or len(mask) != len(ids):
        raise SystemExit(f"{folder}: {split} ids/mask/offsets sizes disagree; re-run data/prepare.py")
    a = offsets[:-1]
    b = np.minimum(offsets[1:], a + block_size + 1)
    supervised = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    keep = np.flatnonzero((b - a >= 2) & (supervised[b] - supervised[np.minimum(a + 1, b)] > 0))
    if limit:
        keep = keep[:limit]
    if len(keep) == 0:
        raise SystemExit(f"{folder}: no {split} example has a supervised token; re-run data/prepare.py")
    return dict(ids=ids, mask=mask, a=a[keep], b=b[keep], index=keep, prior=None)


def plan_batches(lengths, batch_tokens, window, rng):
    """Micro-batches (arrays of example indices): shuffle, sort each window by length, cut each window into
    batches of at most batch_tokens padded tokens, shuffle the batches. Same rng state, same plan."""
    order = rng.permutation(len(lengths))
    batches = []
    for w in range(0, len(order), window):
        chunk = order[w:w + window]
        chunk = chunk[np.argsort(lengths[chunk], kind='stable')]
        start = 0
        for i in range(1, len(chunk) + 1):  # ascending lengths: the newest example is the longest of the batch
            if i == len(chunk) or (i + 1 - start) * lengths[chunk[i]] > batch_tokens:
                batches.append(chunk[start:i])
                start = i
    return [batches[j] for j in rng.permutation(len(batches))]


def make_batch(data, rows, device):
    """x, y, m (+ prior p, u) tensors (B, T) with right padding; padded and prompt targets have m = 0."""
    a, b = data['a'][rows], data['b'][rows]
    B, T = len(rows), int((b - a).max()) - 1
    x, y = np.zeros((B, T), np.int64), np.zeros((B, T), np.int64)
    m = np.zeros((B, T), np.float32)
    prior = data['prior']
    p, u = (np.zeros((B, T), np.float32) for _ in range(2))
    for r in range(B):
        n = b[r] - a[r] - 1
        x[r, :n], y[r, :n], m[r, :n] = data['ids'][a[r]:b[r] - 1], data['ids'][a[r] + 1:b[r]], data['mask'][a[r] + 1:b[r]]
        if prior is not None:
            p[r, :n], u[r, :n] = prior[0][a[r] + 1:b[r]], prior[1][a[r] + 1:b[r]]
    batch = dict(x=x, y=y, m=m, p=p, u=u) if prior is not None else dict(x=x, y=y, m=m)
    return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()}


def prior_cache(model, data, folder, tok_fingerprint, batch_tokens, device, autocast):
    """(p_ref, u_ref) per target token of the frozen initial model, aligned with data['ids'] (0 where unsupervised).
    Kept beside the prepared data and keyed by the weights, tokenizer and data files, so a stale cache is never
    used; only the examples this run trains on are computed (and remembered for later runs)."""
    key = hashlib.sha256(tok_fingerprint.encode())
    for name, t in model.state_dict().items():
        key.update(name.encode())
        key.update(t.detach().float().cpu().numpy().tobytes())
    for s in ('ids.bin', 'mask.bin', 'offsets.npy'):
        st = os.stat(os.path.join(folder, f'train.{s}'))
        key.update(f'{s}:{st.st_size}:{st.st_mtime_ns}'.encode())
    cache = os.path.join(folder, f'prior-{key.hexdigest()[:16]}')
    os.makedirs(cache, exist_ok=True)
    n_tok = len(data['ids'])
    files = [os.path.join(cache, f) for f in ('p.npy', 'u.npy', 'done.npy')]
    if not os.path.exists(files[2]):
        for f in files[:2]:
            np.lib.format.open_memmap(f, mode='w+', dtype=np.float32, shape=(n_tok,)).flush()
        np.save(files[2], np.zeros(len(np.load(os.path.join(folder, 'train.offsets.npy'))) - 1, bool))
    done = np.load(files[2])
    todo = np.flatnonzero(~done[data['index']])
    if len(todo):
        print(f"prior signals: a no-grad pass of the initial model over {len(todo)} examples -> {cache}")
        P, U = (np.lib.format.open_memmap(f, mode='r+') for f in files[:2])
        sub = dict(data, a=data['a'][todo], b=data['b'][todo], prior=None)
        for rows in plan_batches(sub['b'] - sub['a'], batch_tokens, len(todo), np.random.default_rng(0)):
            batch = make_batch(sub, rows, device)
            with torch.no_grad(), autocast:
                h = model(batch['x'], return_hidden=True)
                p, u = weights.target_signals(h, model.lm_head.weight, batch['y'])
            p, u = (t.mul(batch['m']).cpu().numpy() for t in (p, u))
            for r, i in enumerate(rows):
                a, n = sub['a'][i], sub['b'][i] - sub['a'][i] - 1
                P[a + 1:a + 1 + n], U[a + 1:a + 1 + n] = p[r, :n], u[r, :n]
        P.flush(), U.flush()
        done[data['index'][todo]] = True
        np.save(files[2] + '.tmp.npy', done)  # marked done only after the values are on disk
        os.replace(files[2] + '.tmp.npy', files[2])
    return tuple(np.load(f, mmap_mode='r') for f in files[:2])


def native_bf16(device_type):
    """Whether bf16 matmuls run on matrix units: GPUs from Ampere on, x86 CPUs with AVX512-BF16 or AMX. Other CPUs
    emulate them: on a 2-core AVX2 EPYC bf16 matmuls ran at 0.7% of float32's rate (bench.py --only peak); with AMX,
    bf16 training steps ran 1.06-1.24x faster than float32 ones (README)."""
    if device_type == 'cuda':
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def matmul_flops(device, dtype, n=1024, reps=10, warmup=3):
    """The measured FLOP/s of an n x n matmul: the denominator of MFU where no datasheet peak applies. The warm-up
    calls keep thread start-up and cold caches out of the timing."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(warmup):
        a @ b
    if device.startswith('cuda'):
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.startswith('cuda'):
        torch.cuda.synchronize(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


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


# -----------------------------------------------------------------------------

def main(argv):
    cfg = configure(argv)
    c = types.SimpleNamespace(**cfg)
    hyper = {k: cfg[k] for k in HYPER if k != 'profit_tau_high'}
    hyper['profit_tau_high'] = c.profit_tau_high if c.profit_tau_high >= 0 else None
    try:  # bad rule settings fail here, before any model is loaded
        weights.check_rule(c.rule, c.signal_model, **hyper)
    except ValueError as e:
        raise SystemExit(f"config: {e}")
    if c.dtype not in ('auto', 'bfloat16', 'float32'):
        raise SystemExit(f"dtype={c.dtype!r}: use auto, bfloat16 or float32 (float16 would need loss scaling)")
    signal = weights.signal_of(c.rule, c.signal_model)
    use_prior = signal == 'prior'

    # distributed setup: torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; one process otherwise
    dev = c.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    ddp = int(os.environ.get('WORLD_SIZE', 1)) > 1
    rank, world = 0, 1
    if ddp:
        dist.init_process_group('nccl' if dev.startswith('cuda') else 'gloo')
        rank, world = dist.get_rank(), dist.get_world_size()
        if dev.startswith('cuda'):
            dev = f"cuda:{os.environ['LOCAL_RANK']}"
            torch.cuda.set_device(dev)
    if c.grad_accum % world:
        raise SystemExit(f"grad_accum={c.grad_accum} must be a multiple of the {world} ranks")
    master = rank == 0
    device_type = 'cuda' if dev.startswith('cuda') else 'cpu'
    compute_dtype = c.dtype if c.dtype != 'auto' else 'bfloat16' if native_bf16(device_type) else 'float32'
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if compute_dtype == 'bfloat16' else nullcontext()
    torch.manual_seed(c.seed + rank)
    random.seed(c.seed + rank)
    np.random.seed(c.seed + rank)

    def allsum(t):  # sums over ranks, in place
        if ddp:
            dist.all_reduce(t)
        return t

    ckpt_path = os.path.join(c.out_dir, 'ckpt.pt')
    ckpt = None
    if c.resume:
        if not os.path.exists(ckpt_path):
            raise SystemExit(f"--resume=True but there is no {ckpt_path}")
        try:
            ckpt = read_run_checkpoint(ckpt_path)
        except ValueError as e:
            raise SystemExit(f"resume: {e}")
        changed = [k for k in cfg if k not in RESUME_FREE and ckpt['config'].get(k) != cfg[k]]
        if changed:
            k = changed[0]
            raise SystemExit(f"resume: {k}={cfg[k]!r} but the checkpoint ran with {ckpt['config'].get(k)!r}; "
                             f"resume with the same config (or start a new out_dir)")

    # model: always the initial weights first (the prior signals come from them), then the checkpoint's
    try:
        raw_model, tokenizer = load_checkpoint(c.init_from, device=dev, dtype=torch.float32)
    except (FileNotFoundError, ValueError, ConnectionError) as e:
        raise SystemExit(f"init_from={c.init_from!r}: {e}")
    block_size = min(c.block_size, raw_model.config.block_size)

    # data: prepared by data/prepare.py for this tokenizer
    folder = c.data_dir
    if not folder:  # rank 0 tokenizes (once: prepare reuses a folder made with the same settings), then the others
        from data.prepare import prepare
        for turn in (True, False):
            if master == turn:
                try:
                    folder = prepare(c.dataset, tokenizer, block_size=block_size)
                except (ValueError, FileNotFoundError, ConnectionError) as e:
                    raise SystemExit(f"data: {e}")
            if ddp:
                dist.barrier()
    meta_path = os.path.join(folder, 'meta.json')
    if not os.path.exists(meta_path):
        raise SystemExit(f"missing {meta_path}: prepare the data with data/prepare.py (or fix --data_dir)")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get('tokenizer') != tokenizer.fingerprint:
        raise SystemExit(f"data prepared with tokenizer {meta.get('tokenizer')} but model uses {tokenizer.fingerprint}; "
                         f"re-run data/prepare.py with --init_from={c.init_from}")
    train = load_split(folder, 'train', block_size, c.max_examples)
    val = load_split(folder, 'val', block_size, c.eval_examples)
    if use_prior:
        if master:
            train['prior'] = prior_cache(raw_model, train, folder, tokenizer.fingerprint, c.batch_tokens, dev, autocast)
        if ddp:
            dist.barrier()
        if not master:
            train['prior'] = prior_cache(raw_model, train, folder, tokenizer.fingerprint, c.batch_tokens, dev, autocast)
    train_len = train['b'] - train['a'] - 1
    val_batches = plan_batches(val['b'] - val['a'] - 1, c.batch_tokens, len(val['a']), np.random.default_rng(0))

    plans = {}

    def epoch_plan(epoch):  # a pure function of (seed, epoch): the data position is just (epoch, index)
        if epoch not in plans:
            plans.clear()
            plans[epoch] = plan_batches(train_len, c.batch_tokens, c.bucket_window, np.random.default_rng([c.seed, epoch]))
        return plans[epoch]

    steps = c.max_steps or max(1, math.ceil(c.epochs * len(epoch_plan(0)) / c.grad_accum))
    warmup_steps = int(c.warmup * steps) if c.warmup < 1 else int(c.warmup)

    def lr_at(step):  # linear warmup, then cosine decay to learning_rate * min_lr_ratio
        if step < warmup_steps:
            return c.learning_rate * (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return c.learning_rate * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    # optimizer: decay matrices and embeddings, not norm gains and biases (as nanoGPT)
    params = [p for p in raw_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{'params': [p for p in params if p.dim() >= 2], 'weight_decay': c.weight_decay},
                                   {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}],
                                  lr=c.learning_rate, betas=(c.beta1, c.beta2), fused=device_type == 'cuda')
    step, pos = 0, {'epoch': 0, 'index': 0}
    if ckpt is not None:
        raw_model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        step, pos = ckpt['step'], dict(ckpt['data'])
        rng = ckpt['rng'][rank]
        random.setstate(rng['python'])
        np.random.set_state(('MT19937', np.array(rng['numpy'][0], np.uint32), *rng['numpy'][1:]))
        torch.set_rng_state(torch.tensor(rng['torch'], dtype=torch.uint8))
        if 'cuda' in rng and device_type == 'cuda':
            torch.cuda.set_rng_state(torch.tensor(rng['cuda'], dtype=torch.uint8), dev)
        del ckpt
    raw_model.train()
    fwd = torch.compile(raw_model) if c.compile and device_type == 'cuda' else raw_model
    model = DDP(fwd, device_ids=[int(os.environ['LOCAL_RANK'])] if device_type == 'cuda' else None) if ddp else fwd
    n_params = sum(p.numel() for p in params)
    # MFU's peak: dense bf16 of an H100/H200 or A100; on the CPU, its measured matmul rate in the compute dtype
    gpu = torch.cuda.get_device_name(dev) if device_type == 'cuda' else ''
    peak = c.peak_flops or (989e12 if any(h in gpu for h in ('H100', 'H200', 'H800')) else 312e12 if gpu
                            else matmul_flops(dev, getattr(torch, compute_dtype)))

    def take_step():  # the global micro-batches of one optimizer step, advancing the data position
        batches = []
        while len(batches) < c.grad_accum:
            plan = epoch_plan(pos['epoch'])
            if pos['index'] == len(plan):
                pos['epoch'], pos['index'] = pos['epoch'] + 1, 0
                continue
            batches.append(plan[pos['index']])
            pos['index'] += 1
        return batches

    @torch.no_grad()
    def evaluate():  # plain CE per supervised token of the held-out subset, summed over ranks
        sums = torch.zeros(2, dtype=torch.float64, device=dev)
        for rows in val_batches[rank::world]:
            batch = make_batch(val, rows, dev)
            with autocast:
                h = fwd(batch['x'], return_hidden=True)
                _, st = weights.weighted_loss(h, raw_model.lm_head.weight, batch['y'], batch['m'], int(batch['m'].sum()))
            sums += torch.stack([st['ce_sum'].double(), st['tokens'].double().to(dev)])
        allsum(sums)
        return (sums[0] / sums[1]).item()

    def log(record):
        if master:
            with open(os.path.join(c.out_dir, 'log.jsonl'), 'a') as f:
                f.write(json.dumps(record) + '\n')

    def save():
        # plain lists, so that the states of all ranks can be gathered and the checkpoint loads with weights_only
        np_state = np.random.get_state()
        rng = {'python': random.getstate(), 'numpy': [np_state[1].tolist(), *np_state[2:]],
               'torch': torch.get_rng_state().tolist()}
        if device_type == 'cuda':
            rng['cuda'] = torch.cuda.get_rng_state(dev).tolist()
        rngs = [None] * world
        if ddp:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if not master:
            return
        ckpt = {'model': raw_model.state_dict(), 'model_config': dataclasses.asdict(raw_model.config),
                'optimizer': optimizer.state_dict(), 'step': step, 'config': cfg, 'rng': rngs, 'data': dict(pos)}
        atomic_save(ckpt, ckpt_path)
        info = dict(rule=c.rule, signal=signal, hyper=hyper, init_from=c.init_from, dataset=c.dataset,
                    steps=step, max_steps=steps, seed=c.seed)
        atomic_save(json.dumps(info, indent=2), os.path.join(c.out_dir, 'config.json'))

    if master:
        os.makedirs(c.out_dir, exist_ok=True)
        tokenizer.save(c.out_dir)  # with ckpt.pt, out_dir is a checkpoint that model.load_checkpoint reads
        log_path = os.path.join(c.out_dir, 'log.jsonl')
        if c.resume and os.path.exists(log_path):  # drop what was logged after the checkpoint we continue from
            with open(log_path) as f:
                kept = [line for line in f if json.loads(line)['step'] <= step]
            atomic_save(''.join(kept), log_path)
        elif os.path.exists(log_path):
            os.remove(log_path)
        print(f"{c.init_from}: {n_params / 1e6:.1f}M params on {dev} x{world}, {compute_dtype}; {len(train['a'])} train "
              f"examples, {len(epoch_plan(0))} micro-batches/epoch; rule {c.rule} ({signal or 'no signal'}); {steps} steps")

    t_start = time.time()
    t_steps, n_timed = 0.0, 0
    if step == 0 and c.eval_interval:
        val_loss = evaluate()
        log({'step': 0, 'val_loss': val_loss, 'elapsed': time.time() - t_start})
        if master:
            print(f"step 0: val loss {val_loss:.4f}")
    while step < steps:
        t0 = time.time()
        mine = take_step()[rank::world]  # this rank's share of the step, counted before any is run
        batches = [make_batch(train, rows, dev) for rows in mine]
        n_tokens = int(allsum(torch.tensor(sum(int(b['m'].sum()) for b in batches), device=dev)).item())
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group['lr'] = lr
        sums = torch.zeros(6, dtype=torch.float64, device=dev)  # loss, ce, weight, kept, supervised, input tokens
        sums[5] = float(sum(train_len[rows].sum() for rows in mine))
        for k, batch in enumerate(batches):
            sync = model.no_sync() if ddp and k < len(batches) - 1 else nullcontext()
            with sync:
                with autocast:
                    h = model(batch['x'], return_hidden=True)
                    loss, st = weights.weighted_loss(h, raw_model.lm_head.weight, batch['y'], batch['m'], n_tokens,
                                                     c.rule, c.signal_model, batch.get('p'), batch.get('u'), **hyper)
                (loss * world).backward()  # DDP averages gradients over ranks; the loss is already a global mean
            sums += torch.stack([loss.detach().double(), st['ce_sum'].double(), st['weight_sum'].double(),
                                 st['kept'].double().to(dev), st['tokens'].double().to(dev), sums.new_zeros(())])
        allsum(sums)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, c.grad_clip if c.grad_clip > 0 else float('inf')).item()
        if not (math.isfinite(sums[0].item()) and math.isfinite(grad_norm)):
            raise SystemExit(f"step {step + 1}: loss {sums[0].item()} / grad norm {grad_norm} is not finite; stopped "
                             f"without saving, the last good checkpoint is {ckpt_path} (lower learning_rate?)")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if device_type == 'cuda':
            torch.cuda.synchronize(dev)
        dt = time.time() - t0
        t_steps, n_timed = t_steps + dt, n_timed + 1
        loss_v, ce_sum, w_sum, kept, sup, toks = sums.tolist()
        rec = {'step': step, 'loss': loss_v, 'ce': ce_sum / sup, 'weight': w_sum / sup, 'kept': kept / sup, 'lr': lr,
               'grad_norm': grad_norm, 'tokens_per_s': toks / dt, 'mfu': 6 * n_params * toks / dt / peak,
               'elapsed': time.time() - t_start}
        log(rec)
        if master and (step % c.log_interval == 0 or step == steps):
            eta = t_steps / n_timed * (steps - step)
            print(f"step {step}/{steps} | loss {loss_v:.4f} ce {rec['ce']:.4f} w {rec['weight']:.3f} kept {rec['kept']:.3f}"
                  f" | lr {lr:.2e} | gnorm {grad_norm:.2f} | {rec['tokens_per_s']:.0f} tok/s, mfu {100 * rec['mfu']:.1f}%"
                  f" | {rec['elapsed'] / 60:.1f} min, eta {eta / 60:.1f} min")
        if (c.eval_interval and step % c.eval_interval == 0) or step == steps:
            val_loss = evaluate()
            log({'step': step, 'val_loss': val_loss, 'elapsed': time.time() - t_start})
            if master:
                print(f"step {step}: val loss {val_loss:.4f}, saving {ckpt_path}")
            save()
    if ddp:
        dist.destroy_process_group()


if __name__ == '__main__':
    main(sys.argv[1:])
