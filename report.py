"""
The comparison report of eval.py --compare: a markdown table across run folders (one column per measure any run
has), paired exact McNemar tests on the multiple choice against the first run, and one bar chart per measure.
"""
import json
import math
import os
import statistics
import sys

from eval import CLASSES


def compare(paths, plot):
    runs, folders = [], []
    for path in paths:
        file = path if path.endswith(".json") else os.path.join(path, "eval.json")
        if not os.path.isfile(file):
            print(f"skipping {path}: no eval.json", file=sys.stderr)
            continue
        folder = os.path.dirname(os.path.abspath(file))
        name = os.path.basename(folder)  # reproduce.py's <run>/test and <run>/val are named by their run too
        name = f"{os.path.basename(os.path.dirname(folder))}/{name}" if name in ("test", "val") else name
        with open(file) as f:
            runs.append((name, json.load(f)))
        folders.append(folder)
    if not runs:
        raise SystemExit(f"no eval.json in {' '.join(paths)}: run python eval.py --model=<run dir> first")

    columns = [c for c in COLUMNS if any(measure(r, c) is not None for _, r in runs)]  # what some run has
    head = ["run", "rule", "signal", "steps"] + [c[0] for c in columns]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for name, r in runs:
        meta = ["–" if r.get(k) is None else str(r[k]) for k in ("rule", "signal", "steps")]
        cells = ["–" if measure(r, c) is None else format(measure(r, c), c[3]) for c in columns]
        print("| " + " | ".join([name] + meta + cells) + " |")
    first = mc_hits(folders[0])
    for (name, _), folder in list(zip(runs, folders))[1:] if first else []:
        gained, lost, p = mcnemar(first, mc_hits(folder))
        print(f"{name} vs {runs[0][0]}, MC acc_norm on the same questions: +{gained} −{lost}, exact McNemar p = {p:.3f}")
    plot_measures(runs, columns, plot)


def mc_hits(folder):
    """{question index: acc_norm hit} of a run's gsm8k_mc, from the eval_samples.jsonl beside its eval.json."""
    path = os.path.join(folder, "eval_samples.jsonl")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return {s["index"]: s["acc_norm"] for s in map(json.loads, f) if s["task"] == "gsm8k_mc"}


def mcnemar(a, b):
    """(questions only b gets right, only a gets right, two-sided exact McNemar p) over the questions both scored:
    the paired test, which is far more sensitive than comparing two accuracies' intervals."""
    both = a.keys() & b.keys()
    gained, lost = sum(b[i] and not a[i] for i in both), sum(a[i] and not b[i] for i in both)
    n = gained + lost
    return gained, lost, min(1.0, 2 * sum(math.comb(n, j) for j in range(min(gained, lost) + 1)) / 2 ** n)


T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # Student t


def mean_ci(values):
    """(mean, half-width of the 95% confidence interval of the mean: Student t over len(values) seeds)."""
    if len(values) < 2:
        return statistics.mean(values), float("nan")
    return statistics.mean(values), T975[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))


# (column, eval.json task, key or (key, subkey), format): the table's and the figure's measures, in this order
COLUMNS = [("GSM8K strict", "gsm8k", "strict_match", ".1%"), ("GSM8K flexible", "gsm8k", "flexible_extract", ".1%"),
           ("answer NLL", "gsm8k_nll", "nll", ".3f"), ("NLL all", "gsm8k_classes", "nll", ".3f"),
           *[(f"NLL {c}", "gsm8k_classes", (c, "nll"), ".3f") for c in CLASSES],
           ("MC acc", "gsm8k_mc", "acc", ".1%"), ("MC acc_norm", "gsm8k_mc", "acc_norm", ".1%"),
           ("HumanEval pass@1", "humaneval", "pass@1", ".1%"), ("held-out ppl", "ppl", "ppl", ".2f"),
           ("Δppl vs base", "ppl", "delta", "+.2f"), ("KL(base‖model)", "kl", "kl", ".4f"),
           ("ppl / base", "kl", "ratio", ".4f")]


def measure(r, column):
    """One eval.json's value for a COLUMNS entry, or None."""
    v = r.get(column[1]) or {}
    for k in column[2] if isinstance(column[2], tuple) else (column[2],):
        v = v.get(k) if isinstance(v, dict) else None
    return v


def plot_measures(runs, columns, plot):
    """One bar chart per measure, a bar per run; MC acc_norm with its 95% Wilson interval."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"no plot: {plot} needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return
    if not columns:
        print("no measure to plot", file=sys.stderr)
        return
    cols = min(4, len(columns))
    rows = math.ceil(len(columns) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 0.35 * len(runs) * rows + 1.6 * rows), squeeze=False)
    names = [name for name, _ in runs]
    for ax, c in zip(axes.flat, columns):
        got = [(i, measure(r, c), r.get(c[1], {}).get(f"{c[2]}_ci95") if isinstance(c[2], str) else None)
               for i, (_, r) in enumerate(runs) if measure(r, c) is not None]
        y, x, ci = zip(*got)
        err = None if None in ci else [[v - lo for v, (lo, _) in zip(x, ci)], [hi - v for v, (_, hi) in zip(x, ci)]]
        ax.barh(y, x, xerr=err, color=[f"C{i}" for i in y], capsize=3)
        for k, (i, v) in enumerate(zip(y, x)):
            at = v if err is None else v + err[1][k]  # right of the bar or of its interval
            ax.annotate(format(v, c[3]), (at, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        # zoomed on the values: differences between runs are small next to the values themselves
        ends = list(x) + ([b for pair in ci for b in pair] if err else [])
        lo, hi = min(ends), max(ends)
        pad = 0.3 * (hi - lo) or 0.05 * abs(hi) or 1e-3
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_yticks(range(len(names)), names if ax.get_subplotspec().colspan.start == 0 else [""] * len(names),
                      fontsize=8)
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_title(c[0], fontsize=9)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(plot, dpi=120)
    print(f"saved {plot}", file=sys.stderr)
