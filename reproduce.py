"""
Small-scale reproduction on a fair grid: every rule from the same initial model, each at the learning rate that
does best for it on a validation split, then over seeds that resample the training examples, evaluated on measures
that are not the training objective; one table of mean ± std across seeds and the comparison figure.

$ python reproduce.py                                                  # the full grid (hours on a 2-core CPU)
$ python reproduce.py --variants sft dft --lrs 1e-4 3e-4 --seeds 1 2 --out out/small   # what fits in ~20 minutes
$ python reproduce.py --train_examples 1000 --warmup 10 --val_limit 200 --eval_limit 500 --ppl_tokens 8192 --out out/gpu
                                    # the README's run: 100 steps per run, 9 min on one H100 with the 7 variants side by side

1. Selection: each variant trains at each of --lrs on seed --seeds[0] and is scored on GSM8K questions no run
   reports (eval.py --split=val, the test split's last 319): the highest multiple-choice acc_norm wins, a tie
   goes to the lower answer NLL. The answer NLL alone would pick by SFT's own objective.
2. Report: each variant at its chosen rate for every seed (train.py --seed=S --data_seed=S: another random draw of
   --train_examples GSM8K train examples, in another order), evaluated on the first --eval_limit test questions:
   answer NLL by token class, multiple choice, KL(base || model) and the perplexity ratio on held-out text.

Every run is a plain `train.py` + `eval.py` call (printed before it runs), so any cell can be redone by hand.
Finished runs and evaluations (a ckpt.pt, an eval.json) are reused: an interrupted reproduction picks up where it
stopped.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

import eval as ev
import report

# name -> train.py overrides; the last one is an online rule moved to the prior signal, PriFT's general claim
VARIANTS = {
    "sft": ["--rule=sft"],
    "dft": ["--rule=dft"],
    "infosft": ["--rule=infosft"],
    "profit": ["--rule=profit"],
    "prift-prob": ["--rule=prift", "--prift_mode=prob"],
    "prift-mass": ["--rule=prift", "--prift_mode=mass"],
    "infosft-prior": ["--rule=infosft", "--signal_model=prior"],
}
# eval.py's table columns that the reproduction reports (none of them is a rule's training objective but the NLLs,
# which are SFT's: read them by class, beside the multiple choice and the KL)
REPORTED = ("NLL all", "NLL prose", "NLL number", "NLL calc", "NLL final", "MC acc_norm", "KL(base‖model)", "ppl / base")
METRICS = [c for name in REPORTED for c in report.COLUMNS if c[0] == name]


def run(cmd):
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def evaluate(model, out, split, args):
    """eval.json of `model` in `out`: on the validation questions (selection) or the reported test questions."""
    if not os.path.exists(os.path.join(out, "eval.json")):
        tasks, limit = ("gsm8k_classes,gsm8k_mc", args.val_limit) if split == "val" else \
            ("gsm8k_classes,gsm8k_mc,kl", args.eval_limit)
        run([sys.executable, "eval.py", f"--model={model}", f"--base={args.init_from}", f"--out={out}",
             f"--tasks={tasks}", f"--split={split}", f"--limit={limit}", f"--ppl_tokens={args.ppl_tokens}",
             f"--dtype={args.eval_dtype}"])
    with open(os.path.join(out, "eval.json")) as f:
        return json.load(f)


def train(name, lr, seed, args):
    out = os.path.join(args.out, f"{name}-lr{lr:g}-s{seed}")
    if not os.path.exists(os.path.join(out, "ckpt.pt")):
        run([sys.executable, "train.py", *VARIANTS[name], f"--init_from={args.init_from}", f"--out_dir={out}",
             f"--seed={seed}", f"--data_seed={seed}", f"--max_examples={args.train_examples}", "--epochs=1",
             f"--learning_rate={lr}", f"--warmup={args.warmup}", f"--batch_tokens={args.batch_tokens}",
             f"--grad_accum={args.grad_accum}", "--eval_interval=0", "--eval_examples=16",
             "--compile=False"])  # on a GPU, compiling takes longer than these short runs
    return out


def choose_lr(name, args):
    """(chosen learning rate, selection rows): the best validation acc_norm, then the lowest validation NLL."""
    rows = []
    for lr in args.lrs:
        out = train(name, lr, args.seeds[0], args)
        r = evaluate(out, os.path.join(out, "val"), "val", args)
        rows.append((lr, r["gsm8k_mc"]["acc_norm"], r["gsm8k_classes"]["nll"]))
    return max(rows, key=lambda row: (row[1], -row[2]))[0], rows


def mean_weight(out):
    """The mean token weight over the run's steps, from train.py's log. Not a step size: AdamW divides each update
    by the gradient's running RMS, so a constant scale of the loss cancels (only epsilon and clipping see it)."""
    with open(os.path.join(out, "log.jsonl")) as f:
        return statistics.mean(r["weight"] for r in map(json.loads, f) if "weight" in r)


def cell(values, fmt, scale):
    values = [v * scale for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def table(base, results, chosen):
    head = ["variant", "lr", "seeds", *[m[0] for m in METRICS], "mean w"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, runs in [("base", [(base, None)])] + list(results.items()):
        cells = [cell([report.measure(r, m) for r, _ in runs], m[3], 1) for m in METRICS]
        weight = "–" if name == "base" else cell([w for _, w in runs], ".2f", 1)
        lines.append(f"| {name} | {chosen.get(name, '–')} | {len(runs) if name != 'base' else '–'} | "
                     + " | ".join(cells) + f" | {weight} |")
    return "\n".join(lines)


PAIRED = [m for m in METRICS if m[0] in ("NLL all", "NLL final", "MC acc_norm", "KL(base‖model)")]


def paired_table(results, pairs):
    """`a` minus `b` at the same seed (the same training examples in the same order), for each (a, b) in `pairs`
    with both present: mean [95% CI] over seeds."""
    lines = ["| variant | " + " | ".join(f"Δ {m[0]}" for m in PAIRED) + " |", "|---" * (len(PAIRED) + 1) + "|"]
    for a, b in pairs:
        if a not in results or b not in results:
            continue
        cells = []
        for m in PAIRED:
            scale, fmt = (100, "+.1f") if m[3].endswith("%") else (1, "+" + m[3])  # accuracies in points
            diffs = [scale * (report.measure(r, m) - report.measure(s, m)) for (r, _), (s, _) in zip(results[a], results[b])]
            mean, half = report.mean_ci(diffs)
            cells.append(f"{mean:{fmt}} [{mean - half:{fmt}}, {mean + half:{fmt}}]")
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# PriFT's claim, rule by rule: the same weighting with p from the frozen base against p from the model in training
PRIOR_VS_ONLINE = [("prift-prob", "dft"), ("infosft-prior", "infosft")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--lrs", nargs="+", type=float, default=[3e-5, 1e-4, 3e-4], help="learning rates to choose from")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="data and order seeds (> 0)")
    p.add_argument("--init_from", default="smollm2-gguf")
    p.add_argument("--train_examples", type=int, default=48, help="GSM8K train examples per run (a seeded draw)")
    p.add_argument("--warmup", type=int, default=1, help="warmup steps")
    p.add_argument("--batch_tokens", type=int, default=2048)
    p.add_argument("--grad_accum", type=int, default=1)
    p.add_argument("--eval_limit", type=int, default=200, help="test questions reported (<= 1000)")
    p.add_argument("--val_limit", type=int, default=200, help="validation questions for choosing the rate")
    p.add_argument("--ppl_tokens", type=int, default=4096, help="held-out tokens for KL and the ppl ratio")
    p.add_argument("--eval_dtype", default="float32")
    p.add_argument("--out", default="out/reproduce")
    args = p.parse_args(argv)
    if min(args.seeds) < 1:
        p.error("--seeds must be >= 1 (train.py's data_seed=0 means the first N examples, not a random draw)")
    if args.eval_limit > ev.VAL_FROM:
        p.error(f"--eval_limit must be <= {ev.VAL_FROM}: the test questions after it are the validation split")

    base = evaluate(args.init_from, os.path.join(args.out, "base"), "test", args)
    results, chosen, selection = {}, {}, []
    for name in args.variants:
        chosen[name], rows = choose_lr(name, args)
        selection += [f"| {name} | {lr:g} | {acc:.1%} | {nll:.3f} |" for lr, acc, nll in rows]
        for seed in args.seeds:
            out = train(name, chosen[name], seed, args)
            results.setdefault(name, []).append((evaluate(out, os.path.join(out, "test"), "test", args),
                                                 mean_weight(out)))
    text = ("Learning rate chosen on the validation questions (first seed):\n\n| variant | lr | val MC acc_norm | "
            "val NLL |\n|---|---|---|---|\n" + "\n".join(selection) + "\n\nAt the chosen rate, mean ± std over "
            "seeds:\n\n" + table(base, results, {k: f"{v:g}" for k, v in chosen.items()}))
    paired = "paired by seed (same examples, same order), mean [95% CI] over " + f"{len(args.seeds)} seeds"
    if "sft" in results and len(results) > 1:
        text += f"\n\nDifference from SFT, {paired}:\n\n" + paired_table(results, [(n, "sft") for n in results if n != "sft"])
    if any(a in results and b in results for a, b in PRIOR_VS_ONLINE):
        text += (f"\n\nPrior signal minus online signal, each at its chosen rate, {paired}:\n\n"
                 + paired_table(results, PRIOR_VS_ONLINE))
    print(text)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text + "\n")
    runs = [os.path.join(args.out, "base")] + [os.path.join(args.out, f"{n}-lr{chosen[n]:g}-s{s}", "test")
                                               for n in args.variants for s in args.seeds]
    report.compare(runs, os.path.join(args.out, "compare.png"))


if __name__ == "__main__":
    main()
