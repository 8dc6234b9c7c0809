"""
Small-scale reproduction: every rule from the same initial model on the same data, over several seeds, each run
evaluated on what it learned (GSM8K answer NLL, 0-shot GSM8K accuracy) and what it forgot (held-out perplexity
against the base model, HumanEval), then one table of mean ± std across seeds and the learn-vs-forget plot.

$ python reproduce.py                                            # the README's table
$ python reproduce.py --seeds 0 --variants sft dft --train_examples 64 --out out/quick   # a quick look

Every run is a plain `train.py` + `eval.py` call (printed before it runs), so any cell of the table can be redone by
hand. Finished runs (an eval.json in their folder) are reused, so an interrupted reproduction picks up where it
stopped.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

import eval as ev

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
# (column, eval.json task, key, format, scale)
METRICS = [("answer NLL ↓", "gsm8k_nll", "nll", ".3f", 1), ("held-out ppl ↓", "ppl", "ppl", ".2f", 1),
           ("ppl / base", "ppl", "ratio", ".4f", 1), ("GSM8K 0-shot flex %", "gsm8k", "flexible_extract", ".1f", 100),
           ("HumanEval pass@1 %", "humaneval", "pass@1", ".1f", 100), ("mean weight", "train", "mean_weight", ".2f", 1)]


def run(cmd):
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def evaluate(model, out, args):
    if not os.path.exists(os.path.join(out, "eval.json")):
        run([sys.executable, "eval.py", f"--model={model}", f"--base={args.init_from}", f"--out={out}",
             "--tasks=gsm8k_nll,ppl,gsm8k,humaneval", "--shots=0", f"--limit={args.eval_limit}",
             f"--ppl_tokens={args.ppl_tokens}", f"--he_max_new={args.he_max_new}", f"--dtype={args.eval_dtype}", f"--gen_limit={args.gen_limit}"])
    with open(os.path.join(out, "eval.json")) as f:
        return json.load(f)


def mean_weight(out):
    """The mean token weight over the run's steps, from train.py's log: how much of SFT's step a rule keeps."""
    with open(os.path.join(out, "log.jsonl")) as f:
        return statistics.mean(r["weight"] for r in map(json.loads, f) if "weight" in r)


def cell(values, fmt, scale):
    values = [v * scale for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--init_from", default="smollm2-gguf")
    p.add_argument("--train_examples", type=int, default=48, help="first N GSM8K train examples, one epoch")
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--batch_tokens", type=int, default=2048)
    p.add_argument("--grad_accum", type=int, default=1)
    p.add_argument("--eval_limit", type=int, default=48, help="GSM8K test answers scored for NLL")
    p.add_argument("--gen_limit", type=int, default=4, help="GSM8K questions and HumanEval problems generated")
    p.add_argument("--ppl_tokens", type=int, default=4096)
    p.add_argument("--he_max_new", type=int, default=128)
    p.add_argument("--eval_dtype", default="float32")
    p.add_argument("--out", default="out/reproduce")
    args = p.parse_args()

    base = evaluate(args.init_from, os.path.join(args.out, "base"), args)
    results = {}
    for name in args.variants:
        for seed in args.seeds:
            out = os.path.join(args.out, f"{name}-s{seed}")
            if not os.path.exists(os.path.join(out, "eval.json")):
                run([sys.executable, "train.py", *VARIANTS[name], f"--init_from={args.init_from}", f"--out_dir={out}",
                     f"--seed={seed}", f"--max_examples={args.train_examples}", "--epochs=1",
                     f"--learning_rate={args.learning_rate}", f"--batch_tokens={args.batch_tokens}",
                     f"--grad_accum={args.grad_accum}", "--eval_interval=0", "--eval_examples=32"])
            run_result = {**evaluate(out, out, args), "train": {"mean_weight": mean_weight(out)}}
            results.setdefault(name, []).append(run_result)

    lines = ["| variant | seeds | " + " | ".join(m[0] for m in METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    for name, runs in [("base", [base])] + list(results.items()):
        values = [cell([r.get(task, {}).get(key) for r in runs], fmt, scale) for _, task, key, fmt, scale in METRICS]
        lines.append(f"| {name} | {len(runs) if name != 'base' else '–'} | " + " | ".join(values) + " |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + "\n")
    runs = [os.path.join(args.out, f"{name}-s{seed}") for name in args.variants for seed in args.seeds]
    ev.compare(runs, os.path.join(args.out, "learn_vs_forget.png"))


if __name__ == "__main__":
    main()
