"""
Benchmarks for tokenwise; each section prints its own numbers.

    python bench.py                          # every section
    python bench.py --only rules --dtype bf16 --device cuda

peak: the measured matmul rate of each dtype (MFU's denominator; bf16 without matrix units is emulated, slowly);
on an x86 CPU also float32 through oneDNN, as tokenwise's linears run it (cpu.py), against torch's own (MKL), and
decoding's 8 rows by weights packed for oneDNN, as generate multiplies them, against plain ones.

rules: forward + backward of weighted_loss for each rule on a synthetic batch (SmolLM2 sizes by default),
against plain cross-entropy computed the same chunked way (rule 'sft') and against the naive unchunked
F.cross_entropy(h @ W.T), and the time of token_weights alone (the only work a rule adds, immune to the
noise of a shared machine). Time is the median over interleaved rounds. Memory is the peak of one more step of
each variant, after the timed rounds, above the memory in use before it: on CUDA torch.cuda.max_memory_allocated;
on CPU the peak resident set size (VmHWM, reset through /proc/self/clear_refs), which counts every page touched by
any allocator, once glibc has handed its free pages back (malloc_trim). The timed rounds never do that, as train.py
never does: pages handed back fault in again on the next step, which costs time (on a VM, a lot). The train
section's memory is measured the same way. On the CPU the whole process, every variant alike, runs with train.py's
allocator setting (cpu.keep_freed_memory; --no-keep_freed_memory: glibc's default).

train: whole training steps of tokenwise against transformers and TRL's SFTTrainer (bench_train).

generate: greedy decoding against transformers' generate (bench_generate); --gen_prompts=gsm8k decodes eval.py's
5-shot GSM8K prompts and prints the time a full evaluation would take at that pace.
"""
import argparse
import contextlib
import ctypes
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

import cpu
import model
from train import make_optimizer, matmul_flops, native_bf16
from weights import RULES, token_weights, weighted_loss

DTYPES = dict(fp32=torch.float32, bf16=torch.bfloat16)


def sync(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def rule_inputs(args, dtype):
    """A synthetic batch: hidden states (in bf16 when autocast would produce them), an fp32 lm_head, targets,
    a loss mask holding --supervised of the positions, and a prior cache."""
    g = torch.Generator().manual_seed(0)
    B, T, C, V = args.batch, args.seq, args.n_embd, args.vocab
    h = torch.randn(B, T, C, generator=g).to(args.device, dtype).requires_grad_()
    W = (0.02 * torch.randn(V, C, generator=g)).to(args.device).requires_grad_()
    y = torch.randint(V, (B, T), generator=g).to(args.device)
    mask = (torch.rand(B, T, generator=g) < args.supervised).to(args.device)
    prior = dict(p_prior=torch.rand(B, T, generator=g).to(args.device),
                 u_prior=torch.rand(B, T, generator=g).to(args.device))
    return h, W, y, mask, prior


def rule_step(args, dtype, name, inputs):
    """One forward + backward of variant `name`: a rule of weighted_loss, or 'naive'."""
    h, W, y, mask, prior = inputs
    with torch.autocast(args.device, dtype=dtype, enabled=dtype != torch.float32):
        if name == 'naive':
            logits = F.linear(h, W).float()
            loss = F.cross_entropy(logits.flatten(0, 1), y.masked_fill(~mask, -100).flatten(), reduction='sum')
            loss = loss / mask.sum()
        else:
            loss, _ = weighted_loss(h, W, y, mask, int(mask.sum()), name, chunk_size=args.chunk, **prior)
    loss.backward()
    h.grad = W.grad = None


def proc_status_kb(key):
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ':'))


def peak_start(device):
    """Start a peak-memory measure and return the memory in use now, in MB."""
    sync(device)
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    ctypes.CDLL('libc.so.6').malloc_trim(0)  # freed blocks kept by glibc would hide the next step's pages from the RSS
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # Linux: reset the peak resident set size (VmHWM) to the current one
    return proc_status_kb('VmRSS') / 2**10


def peak_end(device):
    """The peak memory in MB since peak_start."""
    sync(device)
    return torch.cuda.max_memory_allocated() / 2**20 if device == 'cuda' else proc_status_kb('VmHWM') / 2**10


def weights_time(device, rule, p, u, reps=20):
    """Seconds of token_weights alone on the batch's tokens, the only work a rule adds to plain CE; the fastest
    of reps, since on a shared machine the others measure the scheduler."""
    ts = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        token_weights(rule, p, u)
        sync(device)
        ts.append(time.perf_counter() - t0)
    return min(ts)


def bench_rules(args):
    names = list(RULES) + ['naive']
    B, T = args.batch, args.seq
    print(f"== rules: weighted_loss forward+backward, {B}x{T} tokens ({args.supervised:.0%} supervised), "
          f"C={args.n_embd}, V={args.vocab}, chunk={args.chunk}, {args.device}, {torch.get_num_threads()} threads")
    for dname in args.dtype:
        dtype = DTYPES[dname]
        inputs = rule_inputs(args, dtype)
        times = {name: [] for name in names}
        for r in range(args.warmup + args.iters):  # interleaved rounds: load drift hits every variant alike
            for name in names:
                sync(args.device)
                t0 = time.perf_counter()
                rule_step(args, dtype, name, inputs)
                sync(args.device)
                if r >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
        mem = {}
        for name in names:  # memory: one untimed step each
            base = peak_start(args.device)
            rule_step(args, dtype, name, inputs)
            mem[name] = peak_end(args.device) - base
        del inputs
        p, u = torch.rand(2, B * T, device=args.device)
        weights_s = {name: weights_time(args.device, name, p, u) if name in RULES else 0.0 for name in names}
        med = {name: statistics.median(t) for name, t in times.items()}
        print(f"-- {dname}{' (autocast, fp32 lm_head)' if dtype != torch.float32 else ''}")
        head = ('variant', 'time ms', '/ sft', '/ naive', 'peak MB', '/ naive', 'weights ms')
        print('{:<8} {:>9} {:>7} {:>8} {:>9} {:>8} {:>11}'.format(*head))
        for name in names:
            print(f"{name:<8} {1e3 * med[name]:9.1f} {med[name] / med['sft']:7.3f} {med[name] / med['naive']:8.3f} "
                  f"{mem[name]:9.0f} {mem[name] / max(mem['naive'], 1):8.3f} {1e3 * weights_s[name]:11.3f}")


def load_pair(args):
    """tokenwise's model and transformers' on the same weights: ours loaded, exported, read back by transformers."""
    from transformers import AutoModelForCausalLM
    from checkpoints import export_hf, load_checkpoint
    ours, tok = load_checkpoint(args.model, args.device)
    with tempfile.TemporaryDirectory() as d:
        export_hf(ours, tok, d)
        theirs = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).to(args.device)
    return ours.train(), theirs.train(), tok


def median_range(per_round):
    """Per-round ratios as 'median [min-max]': on a shared machine the spread tells a real difference from noise."""
    return f"{statistics.median(per_round):.2f} [{min(per_round):.2f}-{max(per_round):.2f}]"


def trl_trainer(args, ours, tok, x, dname, out_dir, steps, before_step, timed):
    """TRL's SFTTrainer with loss_type='dft' (its chunked fused_lm_head path) on a copy of the same weights, exported
    to an HF folder and read back, and an in-memory dataset of the same pre-tokenized rows. Its own loop drives the
    rounds: before_step(r) runs every other variant's step of round r, then timed(r, start) brackets TRL's own step
    (forward, loss, backward, fused AdamW, scheduler; the next batch is collated before the clock starts)."""
    from datasets import Dataset, disable_progress_bars
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from checkpoints import export_hf

    class Rounds(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            before_step(state.global_step)
            timed(state.global_step, start=True)

        def on_step_end(self, a, state, control, **kw):
            timed(state.global_step - 1, start=False)

    with tempfile.TemporaryDirectory() as d:
        export_hf(ours, tok, d)
        hf_model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).to(args.device)
        tokenizer = AutoTokenizer.from_pretrained(d)
    rows = Dataset.from_dict({'input_ids': x.tolist() * steps})
    disable_progress_bars()  # the trainer's dataset preparation; the final metrics line goes with PrinterCallback
    # SFTTrainer's defaults (fused AdamW among them), but the work of the other variants: no activation
    # checkpointing, no gradient clipping; and no saving, logging or tqdm; bf16 = its autocast
    cfg = SFTConfig(output_dir=out_dir, loss_type='dft', per_device_train_batch_size=len(x),
                    max_steps=steps, max_length=x.shape[1], activation_checkpointing=False, max_grad_norm=0.0,
                    bf16=dname == 'bf16', use_cpu=args.device == 'cpu', save_strategy='no', logging_strategy='no',
                    report_to=[], disable_tqdm=True, seed=0)
    trainer = SFTTrainer(model=hf_model, args=cfg, train_dataset=rows, processing_class=tokenizer, callbacks=[Rounds()])
    trainer.remove_callback(PrinterCallback)
    return trainer


# What each sft_<name> variant of the train section (--ablations) undoes: float32 linears through torch's own matmul
# instead of oneDNN's, and plain GQA attention instead of the folded query heads (cpu.py, model.Attention).
ABLATIONS = dict(torch_mm=(cpu, 'ONEDNN', False), gqa=(model, 'FOLD_MAX_T', 0))
# ... and each tokenwise_<name> variant of the generate section: weights as they are instead of packed for decoding's
# few rows, and no oneDNN at all (torch's own matmuls, plain weights).
GEN_ABLATIONS = dict(unpacked=(model, 'packed_weights', lambda module, rows: contextlib.nullcontext()),
                     torch_mm=ABLATIONS['torch_mm'])


@contextlib.contextmanager
def setting(module, name, value):
    """module.name = value for the duration of the block."""
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def with_setting(ablation, fn, *args):
    with setting(*ablation):
        return fn(*args)


def bench_train(args):
    """Training steps on one batch, in interleaved rounds (each round runs every variant once, so load drift on a
    shared machine hits all alike): tokenwise with each rule (forward, fused loss, backward, train.py's fused AdamW)
    against transformers' LlamaForCausalLM with F.cross_entropy and plain torch.optim.AdamW, and
    against TRL's SFTTrainer(loss_type='dft'), on the same weights and tokens. Each ratio is the median, and the
    range, of the per-round ratios."""
    ours, theirs, tok = load_pair(args)
    g = torch.Generator().manual_seed(0)
    B, T, V = args.train_batch, args.train_seq, ours.config.vocab_size
    x, y = torch.randint(V, (2, B, T), generator=g).to(args.device)
    mask = torch.ones(B, T, dtype=torch.bool, device=args.device)
    prior = dict(p_prior=torch.rand(B, T, generator=g).to(args.device), u_prior=torch.rand(B, T, generator=g).to(args.device))
    n_params = sum(p.numel() for p in ours.parameters())
    compile_ = args.device == 'cuda' if args.compile is None else args.compile
    fwd = torch.compile(ours) if compile_ else ours  # as train.py runs it
    rounds = args.train_rounds
    print(f"== train: {B}x{T} tokens, {args.model} ({n_params / 1e6:.0f}M params), {args.device}, "
          f"{torch.get_num_threads()} threads, tokenwise {'compiled' if compile_ else 'eager'}, transformers eager; "
          f"{args.warmup} + {rounds} interleaved rounds (+ 1 for memory); tokens/s: median; ratios: median [min-max] "
          "over rounds")
    for dname in args.dtype:
        dtype = DTYPES[dname]
        # transformers: PyTorch's default AdamW, a Python loop over the parameters on the CPU; tokenwise: train.py's
        opts = {'transformers': torch.optim.AdamW(theirs.parameters(), lr=1e-6)}
        opts.update({name: make_optimizer(list(ours.parameters())) for name in RULES})
        if args.ablations:
            opts.update({f'sft_{off}': make_optimizer(list(ours.parameters())) for off in ABLATIONS})

        def step(name):
            rule, _, off = name.partition('_')  # sft_<ablation>: sft with one of tokenwise's CPU choices undone
            with torch.autocast(args.device, dtype=dtype, enabled=dtype != torch.float32), \
                    setting(*ABLATIONS[off]) if off else contextlib.nullcontext():
                if name == 'transformers':
                    loss = F.cross_entropy(theirs(x).logits.float().flatten(0, 1), y.flatten())
                else:
                    h = fwd(x, return_hidden=True)
                    loss, _ = weighted_loss(h, ours.lm_head.weight, y, mask, B * T, rule, **prior)
            loss.backward()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)

        names = list(opts) + (['trl'] if args.trl else [])
        times, mem, clock = {name: [] for name in names}, {}, {}
        memory_round = args.warmup + rounds  # one untimed round after the timed ones measures the peak memory

        def timed(name, r, start):  # start: open the clock; else: close it and keep the round if it is timed
            if r == memory_round:
                if start:
                    clock[name] = peak_start(args.device)
                else:
                    mem[name] = peak_end(args.device) - clock[name]
            elif start:
                sync(args.device)
                clock[name] = time.perf_counter()
            else:
                sync(args.device)
                if r >= args.warmup:
                    times[name].append(time.perf_counter() - clock[name])

        def round_(r):
            for name in opts:
                timed(name, r, start=True)
                step(name)
                timed(name, r, start=False)

        if args.trl:
            with tempfile.TemporaryDirectory() as out:
                trl_trainer(args, ours, tok, x, dname, out, memory_round + 1, round_,
                            lambda r, start: timed('trl', r, start)).train()
        else:
            for r in range(memory_round + 1):
                round_(r)
        peak = max(matmul_flops(args.device, dtype, n=2048, reps=10, mm=mm) for mm in (torch.mm, cpu.mm))
        tps = {name: B * T / statistics.median(t) for name, t in times.items()}

        def ratio(name, base):
            return median_range([b / t for t, b in zip(times[name], times[base])])

        print(f"-- {dname}: measured matmul peak {peak / 1e9:.0f} GFLOP/s")
        print('{:<13} {:>9} {:>18} {:>18} {:>12} {:>7}'.format('variant', 'tokens/s', '/ transformers', '/ trl',
                                                                'step peak MB', 'MFU'))
        for name in names:
            vs_trl = ratio(name, 'trl') if args.trl else ''
            print(f"{name:<13} {tps[name]:9.0f} {ratio(name, 'transformers'):>18} {vs_trl:>18} {mem[name]:12.0f} "
                  f"{6 * n_params * tps[name] / peak:7.1%}")


def bench_generate(args):
    """Greedy generation of a padded batch with a static KV cache: tokenwise against transformers' generate, with its
    default (dynamic) cache and with cache_implementation='static' (--ablations: and against itself with one CPU
    choice undone, GEN_ABLATIONS). Each ratio is the median of --iters rounds.
    --gen_prompts=gsm8k: eval.py's 5-shot prompts of the first GSM8K questions, and the time a whole evaluation
    would take at this pace."""
    ours, theirs, tok = load_pair(args)
    g = torch.Generator().manual_seed(0)
    V, B, new = ours.config.vocab_size, args.gen_batch, args.gen_tokens
    if args.gen_prompts == 'gsm8k':
        from eval import gsm8k_prompts, prompt_ids
        questions, texts = gsm8k_prompts()
        prompts = prompt_ids(tok, texts[:B], ours.config.block_size, new)
    else:
        prompts = [torch.randint(V, (int(n),), generator=g).tolist() for n in torch.randint(16, 64, (B,), generator=g)]
    P = max(map(len, prompts))
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts], device=args.device)
    attn = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts], device=args.device)
    print(f"== generate: {B} {args.gen_prompts} prompts of {min(map(len, prompts))}-{P} tokens, {new} new tokens each, "
          f"greedy, {args.device}")

    def hf(**kw):
        return lambda: theirs.generate(ids, attention_mask=attn, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                       pad_token_id=0, **kw)[:, P:].tolist()
    for dname in args.dtype:
        dtype = DTYPES[dname]
        ours.to(dtype).eval(), theirs.to(dtype).eval()
        if args.device == 'cuda':  # as eval.py does: fixed-size caches, one compiled CUDA-graph decode step
            ours.setup_caches(B, P + new)
        runs = dict(tokenwise=lambda: ours.generate(prompts, new), transformers=hf(),
                    transformers_static=hf(cache_implementation="static"))
        if args.ablations:
            for off in GEN_ABLATIONS:
                runs[f'tokenwise_{off}'] = lambda off=off: with_setting(GEN_ABLATIONS[off], ours.generate, prompts, new)
            t0 = time.perf_counter()
            with cpu.packed_weights(ours, B):  # what each tokenwise generate call spends on packing
                print(f"-- {dname}: packing the weights for {B} rows: {(time.perf_counter() - t0) * 1e3:.0f} ms")
        times, outs = {name: [] for name in runs}, {}
        with torch.inference_mode():
            for r in range(args.warmup + args.iters):
                for name, fn in runs.items():
                    t0 = time.perf_counter()
                    outs[name] = fn()
                    sync(args.device)
                    if r >= args.warmup:
                        times[name].append(time.perf_counter() - t0)
        tps = {name: B * new / statistics.median(t) for name, t in times.items()}
        for name in [name for name in runs if name != 'tokenwise']:
            ratio = median_range([a / b for a, b in zip(times[name], times['tokenwise'])])  # paired by round
            same = sum(a == b for a, b in zip(outs['tokenwise'], outs[name]))
            print(f"-- {dname}: tokenwise {tps['tokenwise']:.0f} tokens/s, {name} {tps[name]:.0f} tokens/s, ratio "
                  f"{ratio}; identical rows {same}/{B}")
        if args.gen_prompts == 'gsm8k':  # an upper bound: eval.py stops a batch once every row has written a stop string
            batches = -(-len(questions) // B)
            print(f"-- {dname}: a full GSM8K 5-shot evaluation at this pace ({batches} batches of {B} x {new} tokens): "
                  + ", ".join(f"{name} {batches * statistics.median(t) / 60:.1f} min" for name, t in times.items()))


def bench_peak(args):
    """The matmul rate per dtype, the denominator of MFU; also shows whether bf16 has matrix units here, and on an
    x86 CPU what oneDNN's float32 kernels gain over torch's (MKL's) at training's and decoding's shapes."""
    print(f"== peak: 1024x1024 matmul, {args.device}, {torch.get_num_threads()} threads")
    rates = {dname: matmul_flops(args.device, DTYPES[dname]) for dname in args.dtype}
    if args.device == 'cpu' and cpu.ONEDNN:
        rates['fp32 oneDNN'] = matmul_flops(args.device, torch.float32, mm=cpu.mm)
    for dname, rate in rates.items():
        print(f"{dname:<11} {rate / 1e9:10.1f} GFLOP/s {rate / rates[args.dtype[0]]:7.3f}x {args.dtype[0]}")
    if args.device == 'cpu' and cpu.ONEDNN:
        onednn_vs_torch()
        packed_vs_plain([d for d in args.dtype if d == 'fp32' or torch.ops.mkldnn._is_mkldnn_bf16_supported()])


def onednn_vs_torch(rounds=10):
    """x @ W.T in float32 through oneDNN against torch's own kernel, for SmolLM2's linears at a training batch's
    1024 rows and a decoding batch's 8, and the gradient g @ W: the fastest of interleaved rounds."""
    print("-- fp32 x @ W.T (and g @ W), oneDNN vs torch: GFLOP/s, the fastest of", rounds, "interleaved rounds")
    g = torch.Generator().manual_seed(0)
    for rows in (1024, 8):
        for out, inp in ((960, 576), (3072, 576), (576, 1536), (49152, 576)):
            x, W = torch.randn(rows, inp, generator=g), torch.randn(out, inp, generator=g)
            dy = torch.randn(rows, out, generator=g)
            pairs = {'x @ W.T': (lambda: x @ W.T, lambda: cpu.mm(x, W.T)),
                     'g @ W': (lambda: dy @ W, lambda: cpu.mm(dy, W))}
            cells = []
            for name, (theirs, ours) in pairs.items():
                best = fastest((theirs, ours), rounds)
                flops = 2 * rows * out * inp
                cells.append(f"{name}: torch {flops / best[0] / 1e9:4.0f}, oneDNN {flops / best[1] / 1e9:4.0f} "
                             f"({best[0] / best[1]:.2f}x)")
            print(f"{rows:5d} x {inp:5d} -> {out:5d}   " + '   '.join(cells))


def packed_vs_plain(dnames, rounds=10):
    """Decoding's 8 rows by SmolLM2's weights: torch's F.linear against the weight packed for oneDNN, as generate
    multiplies (cpu.packed_weights); GB/s of weight read, the fastest of interleaved rounds."""
    print("-- 8 rows x W.T, torch vs the weight packed for oneDNN: GB/s of W, the fastest of", rounds, "interleaved "
          "rounds")
    g = torch.Generator().manual_seed(0)
    for dname in dnames:
        for out, inp in ((960, 576), (3072, 576), (576, 1536), (49152, 576)):
            layer = cpu.Linear(inp, out, bias=False, dtype=DTYPES[dname])
            x = torch.randn(8, inp, generator=g).to(DTYPES[dname])
            with torch.no_grad(), cpu.packed_weights(layer, rows=8):
                best = fastest((lambda: F.linear(x, layer.weight), lambda: layer(x)), rounds)
            gb = layer.weight.numel() * layer.weight.element_size() / 1e9
            print(f"{dname} {inp:5d} -> {out:5d}   torch {gb / best[0]:5.1f}, packed {gb / best[1]:5.1f} "
                  f"({best[0] / best[1]:.2f}x)")


def fastest(fns, rounds):
    """The shortest time of each fn over `rounds` rounds that run them all in turn."""
    best = [float('inf')] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


SECTIONS = dict(peak=bench_peak, rules=bench_rules, train=bench_train, generate=bench_generate)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--only', nargs='+', choices=list(SECTIONS), default=list(SECTIONS), help='sections to run')
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--dtype', nargs='+', choices=list(DTYPES), help='default: fp32, plus bf16 where the device has bf16 matrix units')
    ap.add_argument('--iters', type=int, default=3, help='timed rounds')
    ap.add_argument('--warmup', type=int, default=1, help='untimed rounds first')
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--seq', type=int, default=512)
    ap.add_argument('--n_embd', type=int, default=576)
    ap.add_argument('--vocab', type=int, default=49152)
    ap.add_argument('--chunk', type=int, default=2048, help='positions per chunk of weighted_loss')
    ap.add_argument('--supervised', type=float, default=1.0, help='fraction of supervised positions')
    ap.add_argument('--model', default='smollm2-gguf', help='train/generate: any checkpoints.load_checkpoint path')
    ap.add_argument('--compile', action=argparse.BooleanOptionalAction, help='torch.compile tokenwise in train '
                    '(default: on CUDA, as train.py does)')
    ap.add_argument('--train_batch', type=int, default=4)
    ap.add_argument('--train_seq', type=int, default=256)
    ap.add_argument('--train_rounds', type=int, default=5, help='train: timed interleaved rounds (--iters: the others)')
    ap.add_argument('--ablations', action=argparse.BooleanOptionalAction, default=False,
                    help='train, generate: also tokenwise with each of its CPU choices undone '
                         '(bench.ABLATIONS, bench.GEN_ABLATIONS)')
    ap.add_argument('--trl', action=argparse.BooleanOptionalAction, default=True,
                    help="train: TRL's SFTTrainer(loss_type='dft') as a second baseline (requirements-dev.txt)")
    ap.add_argument('--gen_batch', type=int, default=8)
    ap.add_argument('--gen_tokens', type=int, default=64)
    ap.add_argument('--gen_prompts', default='random', choices=['random', 'gsm8k'],
                    help='generate: random tokens (16-63), or 5-shot GSM8K prompts as eval.py builds them')
    ap.add_argument('--keep_freed_memory', action=argparse.BooleanOptionalAction, default=True,
                    help="CPU: train.py's allocator setting for the whole process (cpu.keep_freed_memory)")
    args = ap.parse_args()
    if args.device == 'cuda' and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible to torch")
    if args.device == 'cpu' and args.keep_freed_memory:
        cpu.keep_freed_memory()
    args.dtype = args.dtype or (['fp32', 'bf16'] if native_bf16(args.device) else ['fp32'])
    for name in args.only:
        SECTIONS[name](args)


if __name__ == '__main__':
    main()
