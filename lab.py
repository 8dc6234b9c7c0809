"""
The lab: a synthetic task where the truth about every token is known, small enough to run every rule x learning
rate x seed on 2 CPU cores, through the same data/prepare.py, train.py and weights.py that real runs use.

$ python lab.py            # pre-train once (cached), the full grid, the controls; out/lab/results.md and figures
$ python lab.py --quick    # one learning rate, 2 seeds, 4 variants, no controls: a look in ~5 minutes

A tiny Llama (4 layers, width 128, 0.87M parameters, one token per character) is pre-trained on skill A, addition
of 1-4-digit numbers with column-by-column worked solutions in the GSM8K format:

    Question: 385+47
    Answer: 5+7+0=12
    8+4+1=13
    3+0+1=4
    #### 432

then fine-tuned on skill B, a + b + 1 for 1-2-digit a and b, which the model has never seen but which is built
from A's steps (a carry of 1 into the first column), half of each seed's problems replayed from skill A, with each
worked line opened by one of 16 interchangeable connective words drawn at random: *filler*, low-probability by
construction and carrying no information (ProFit's "replaceable expressions"), beside the *core* tokens. Half of
the pre-training problems are written with the same filler (--pretrain_filler), so that, like connectives in an
LLM, the words are ones the model can write but cannot predict (p ~ 1/16 each):

    Question: 85+47+1
    Answer: hence 5+7+1=13
    likewise 8+4+1=13
    #### 133

Every number the lab reports is measured on held-out problems and none is the training loss: greedy exact match of
the final answer on skill B (learned) and skill A (retained), KL(pre-trained || fine-tuned) on skill-A text, NLL of
skill-B answers by token class, and which tokens each rule keeps (w > 0) and its mean weight, by class. Each rule's
learning rate is chosen on a validation split and reported on the test split; a seed resamples the training problems
(and train.py's order), and differences from SFT are paired by seed, with 95% confidence intervals.

Controls: the same grid on data without filler, and an oracle SFT that masks the filler by ground truth.
Resumable: every finished step leaves a file (a run's val.json and test.json, the pre-trained checkpoint) that a
rerun reuses.
"""
import argparse
import dataclasses
import functools
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import train
import weights
from data.prepare import prepare
from checkpoints import load_checkpoint, read_run_checkpoint
from model import Config, Transformer
from report import mean_ci
from reproduce import VARIANTS  # name -> train.py overrides: the real-model reproduction's 7 variants
from tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.abspath(__file__))
ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))  # printable ASCII: one token per character
EOS = "<|endoftext|>"
FILLERS = ("also", "basically", "clearly", "duly", "equally", "further", "granted", "hence", "indeed", "just",
           "kindly", "likewise", "moreover", "next", "okay", "plainly")  # 16 distinct first letters: after its first
# character a word is determined, so a trained model can predict all of it but the first (p <= 1/16 < ProFit's 0.1)
MODEL = dict(arch="llama", n_layer=4, n_head=4, n_kv_head=4, n_embd=128, intermediate_size=384, block_size=256,
             tie_embeddings=True)
RUNS = {**VARIANTS, "oracle-sft": ["--rule=sft"]}  # the oracle: SFT on data whose filler has no loss mask


# -----------------------------------------------------------------------------
# The tasks. A problem is a dict: question, answer (the response, without the template's leading space), label
# (one character per answer character: 'f' filler, 'c' core) and result (the number after ####).

def column_lines(a, b, carry=0):
    """The worked solution of a + b + carry: one line per column, least significant first, carry in as the third
    term."""
    lines = []
    for i in range(max(len(str(a)), len(str(b)))):
        da, db = a // 10 ** i % 10, b // 10 ** i % 10
        s = da + db + carry
        lines.append(f"{da}+{db}+{carry}={s}")
        carry = s // 10
    return lines


def make_problem(question, lines, result, rng, filler):
    """Join the worked lines (each opened by a random filler word when filler) and label every character."""
    answer, label = "", ""
    for line in lines:
        if filler:
            word = rng.choice(FILLERS) + " "
            answer, label = answer + word, label + "f" * len(word)
        answer, label = answer + line + "\n", label + "c" * (len(line) + 1)
    tail = f"#### {result}"
    return dict(question=question, answer=answer + tail, label=label + "c" * len(tail), result=str(result))


def number(rng):
    """1 to 4 digits, each length equally likely."""
    return int(rng.integers(0, 10 ** int(rng.integers(1, 5))))


def skill_a(rng, filler=0.0):
    """Addition of two 1-4-digit numbers, its lines opened by filler words with probability `filler`."""
    a, b = number(rng), number(rng)
    return make_problem(f"{a}+{b}", column_lines(a, b), a + b, rng, filler=rng.random() < filler)


def skill_b(rng, filler=True):
    """a + b + 1 for 1-2-digit a and b: A's column steps with a carry of 1 into the first column, where A always has
    0. Every step is one A knows (x + y + 1 is A's step after a carry); what is new is the question, the first carry
    and the filler. Two columns at most keep it learnable from a few hundred problems."""
    a, b = (int(rng.integers(0, 10 ** int(rng.integers(1, 3)))) for _ in range(2))
    return make_problem(f"{a}+{b}+1", column_lines(a, b, carry=1), a + b + 1, rng, filler)


def draw(make, n, seed, exclude=(), **kw):
    """n problems with distinct questions, none in `exclude` (a set of questions): the splits never share one."""
    rng, seen, out = np.random.default_rng(seed), set(exclude), []
    while len(out) < n:
        p = make(rng, **kw)
        if p["question"] not in seen:
            seen.add(p["question"])
            out.append(p)
    return out


def questions(*splits):
    return {p["question"] for split in splits for p in split}


# -----------------------------------------------------------------------------
# The model: a character tokenizer and a tiny Llama, saved as a tokenwise checkpoint that load_checkpoint reads

def char_tokenizer():
    """One token per character of ALPHABET (no merges) and EOS; saved as tokenizer.json, loaded by tokenizer.py."""
    ranks = {c.encode(): i for i, c in enumerate(ALPHABET)}
    return Tokenizer(ranks, r"[\s\S]", {EOS: len(ranks)}, eos_id=len(ranks), name="lab-chars")


def save_initial_model(folder, seed=0):
    """A randomly initialised tiny Llama as an out_dir (ckpt.pt + tokenizer files): train.py's --init_from."""
    tok = char_tokenizer()
    torch.manual_seed(seed)
    model = Transformer(Config(vocab_size=tok.n_vocab, eos_id=tok.eos_id, **MODEL))
    os.makedirs(folder, exist_ok=True)
    tok.save(folder)
    torch.save({'model': model.state_dict(), 'model_config': dataclasses.asdict(model.config)},
               os.path.join(folder, 'ckpt.pt'))
    return sum(p.numel() for p in model.parameters())


def write_prepared(folder, train_problems, val_problems, tok):
    """The problems as train/val.jsonl, tokenized by data/prepare.py into folder/prepared (Question/Answer format)."""
    os.makedirs(folder, exist_ok=True)
    for split, problems in (("train", train_problems), ("val", val_problems)):
        with open(os.path.join(folder, f"{split}.jsonl"), "w") as f:
            f.writelines(json.dumps(dict(question=p["question"], answer=p["answer"])) + "\n" for p in problems)
    return prepare(folder, tok, os.path.join(folder, "prepared"), block_size=MODEL["block_size"],
                   prompt_field="question", response_field="answer")


def run_argv(out_dir, init_from, data_dir, overrides):
    """train.py's arguments; peak_flops is given only to skip measuring a matmul rate (MFU means nothing here)."""
    return [f"--init_from={init_from}", f"--data_dir={data_dir}", f"--out_dir={out_dir}", "--eval_interval=0",
            "--log_interval=50", "--eval_examples=64", "--block_size=256", "--peak_flops=1e11", *overrides]


def run_train(out_dir, init_from, data_dir, overrides):
    """One train.py run, in this process (train.main, as `python train.py ...` would run it: ~2 s less per run)."""
    argv = run_argv(out_dir, init_from, data_dir, overrides)
    print("$ python train.py " + " ".join(argv), flush=True)
    train.main(argv)


# -----------------------------------------------------------------------------
# Measures, on held-out problems; none of them is the training loss

PROMPT = "Question: {}\nAnswer:"  # data/prepare.py's template; the response is " " + answer + EOS
RESULT = re.compile(r"#### (\d+)")


@torch.no_grad()
def exact_match(model, tok, problems, batch_size=250):
    """Greedy exact match of the final answer (the first '#### N' of the completion), batched by prompt length."""
    order = sorted(range(len(problems)), key=lambda i: len(problems[i]["question"]))
    max_new = max(len(p["answer"]) for p in problems) + 24  # room for a wrong but longer answer
    correct = 0
    for b in range(0, len(order), batch_size):
        rows = [problems[i] for i in order[b:b + batch_size]]
        prompts = [tok.encode(PROMPT.format(p["question"])) for p in rows]
        for p, new in zip(rows, model.generate(prompts, max_new, eos_id=tok.eos_id)):
            found = RESULT.search(tok.decode(new))
            correct += found is not None and found.group(1) == p["result"]
    return correct / len(problems)


def sequences(tok, problems):
    """(ids, target labels) per problem: ids of prompt + response + EOS as data/prepare.py builds them, and for each
    target (ids[1:]) 'p' prompt, 'f' filler or 'c' core (the template's space and EOS count as core)."""
    out = []
    for p in problems:
        prompt, response = tok.encode(PROMPT.format(p["question"])), tok.encode(" " + p["answer"]) + [tok.eos_id]
        labels = "p" * (len(prompt) - 1) + "c" + p["label"] + "c"
        assert len(labels) == len(prompt) + len(response) - 1  # one token per character
        out.append((prompt + response, labels))
    return out


@torch.no_grad()
def log_probs(model, seqs, batch_size=256):
    """Log-softmax (targets, V) of every target of every sequence, concatenated in order (right padding is causal
    and so changes nothing)."""
    out = []
    for b in range(0, len(seqs), batch_size):
        rows = [ids for ids, _ in seqs[b:b + batch_size]]
        x = torch.zeros(len(rows), max(map(len, rows)) - 1, dtype=torch.long)
        for i, ids in enumerate(rows):
            x[i, :len(ids) - 1] = torch.tensor(ids[:-1])
        lp = F.log_softmax(model(x).float(), dim=-1)
        out += [lp[i, :len(ids) - 1] for i, ids in enumerate(rows)]
    return torch.cat(out)


def targets_and_labels(seqs):
    return (torch.tensor([t for ids, _ in seqs for t in ids[1:]]),
            np.array([c for _, labels in seqs for c in labels]))


def nll_by_class(model, seqs):
    """Mean NLL (nats per token) of the response targets of each class."""
    y, labels = targets_and_labels(seqs)
    nll = -log_probs(model, seqs).gather(1, y[:, None])[:, 0].numpy()
    return {c: float(nll[labels == c].mean()) for c in "fc" if (labels == c).any()}


def kl_from(model, base, seqs):
    """Mean KL(base || model) per target over whole sequences (prompts too): how far the next-token distributions
    moved on text the fine-tuning never showed."""
    lm, lb = log_probs(model, seqs), log_probs(base, seqs)
    return float((lb.exp() * (lb - lm)).sum(1).mean())


def weights_by_class(model, base, seqs, variant):
    """The fraction of each class the variant keeps (w > 0) and its mean weight, with the weights weights.py gives
    on these examples: p from the fine-tuned model for online signals, p and u from the pre-trained one for prior."""
    cfg = train.configure(VARIANTS[variant])  # train.py's own defaults for every knob the variant leaves alone
    reads = weights.signal_of(cfg["rule"], cfg["signal_model"])
    y, labels = targets_and_labels(seqs)
    lp = log_probs(base if reads == "prior" else model, seqs)
    p, u = weights.target_signals(lp, torch.eye(lp.size(1)), y)  # log-probabilities are logits of the same softmax
    w = weights.token_weights(cfg["rule"], p, u, **{k: cfg[k] for k in weights.DEFAULTS}).numpy()
    return {c: dict(kept=float((w[labels == c] > 0).mean()), weight=float(w[labels == c].mean()))
            for c in "fc" if (labels == c).any()}


# -----------------------------------------------------------------------------
# Data: held-out splits fixed once, training problems resampled by the seed

def held_out(args):
    """The fixed evaluation problems: skill-A test and val, skill-B test and val (B with filler; strip_filler gives
    the plain versions), and the pre-training problems, which avoid A's test and val. Each split has its own seed;
    fine-tuning draws with 100 + seed and 200 + seed."""
    a_test = draw(skill_a, args.n_test, 1)
    pretrain = draw(skill_a, args.n_pretrain, 2, questions(a_test), filler=args.pretrain_filler)
    a_val = draw(skill_a, args.n_val, 3, questions(a_test, pretrain))
    b_test = draw(skill_b, args.n_test, 4)
    b_val = draw(skill_b, args.n_val, 5, questions(b_test))
    return dict(a_test=a_test, a_val=a_val, b_test=b_test, b_val=b_val, pretrain=pretrain)


def strip_filler(p):
    """The same problem without its filler: the no-filler control sees the very same problems and core tokens."""
    keep = [i for i, c in enumerate(p["label"]) if c != "f"]
    return dict(p, answer="".join(p["answer"][i] for i in keep), label="c" * len(keep))


def finetune_problems(args, seed, held):
    """Skill-B training problems (with filler) drawn by the seed, none in B's held-out splits, and a replay fraction
    of skill-A problems, none in A's test split, shuffled together."""
    n_replay = round(args.n_train * args.replay)
    problems = draw(skill_b, args.n_train - n_replay, 100 + seed, questions(held["b_test"], held["b_val"]))
    problems += draw(skill_a, n_replay, 200 + seed, questions(held["a_test"], held["a_val"]),
                     filler=args.pretrain_filler)
    random.Random(seed).shuffle(problems)
    return problems


def mask_filler(folder, problems, tok):
    """Zero the loss mask of every filler token in a folder data/prepare.py wrote (the oracle's ground truth): with
    one token per character, answer character j is token len(prompt) + 1 + j of its example."""
    mask = np.memmap(os.path.join(folder, "train.mask.bin"), dtype=np.uint8, mode="r+")
    offsets = np.load(os.path.join(folder, "train.offsets.npy"))
    for start, p in zip(offsets, problems):
        first = start + len(tok.encode(PROMPT.format(p["question"]))) + 1
        mask[first + np.flatnonzero(np.frombuffer(p["label"].encode(), np.uint8) == ord("f"))] = 0
    mask.flush()


def finetune_data(args, condition, seed, held, tok):
    """(prepared folder, training problems) for one condition and seed: 'filler', 'plain' (filler stripped) or
    'oracle' (the filler data with the filler's loss mask zeroed). Made once, shared by every rule and lr."""
    problems = finetune_problems(args, seed, held)
    if condition == "plain":
        problems = [strip_filler(p) for p in problems]
    folder = os.path.join(args.out, "data", f"{condition}-s{seed}")
    val = held["b_val"][:64] if condition != "plain" else [strip_filler(p) for p in held["b_val"][:64]]
    prepared = os.path.join(folder, "prepared")
    if not os.path.exists(os.path.join(prepared, "meta.json")):
        tmp = write_prepared(folder + ".tmp", problems, val, tok)
        if condition == "oracle":
            mask_filler(tmp, problems, tok)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(folder + ".tmp", folder)  # complete or absent: an interrupted run redoes it
    return prepared, problems


# -----------------------------------------------------------------------------
# Runs: pre-training once, then one fine-tuning run per (condition, variant, learning rate, seed)

def pretrain(args, held, tok):
    """The skill-A model, trained by train.py from a random tiny Llama in args.pretrain_dir; reused while its
    training settings and its problems (their number and filler fraction) are unchanged."""
    out, init = os.path.join(args.pretrain_dir, "pretrained"), os.path.join(args.pretrain_dir, "init")
    data_dir = os.path.join(args.pretrain_dir, "data", "pretrain", "prepared")
    overrides = [f"--max_steps={args.pretrain_steps}", "--learning_rate=2e-3", "--warmup=60", "--weight_decay=0.1",
                 "--batch_tokens=5120", "--grad_accum=1", "--bucket_window=8192", "--seed=0"]
    problems = dict(n_pretrain=args.n_pretrain, pretrain_filler=args.pretrain_filler)
    stamp = os.path.join(out, "problems.json")
    if os.path.exists(stamp) and load_json(stamp) == problems:
        want = train.configure(run_argv(out, init, data_dir, overrides))
        have = read_run_checkpoint(os.path.join(out, "ckpt.pt"))["config"]
        if all(have.get(k) == v for k, v in want.items() if k not in train.RESUME_FREE):
            return out
    save_initial_model(init)
    write_prepared(os.path.dirname(data_dir), held["pretrain"], held["a_test"][:64], tok)
    run_train(out, init, data_dir, overrides)
    save_json(problems, stamp)  # written last: a checkpoint without it is retrained
    return out


def run_dir(args, condition, variant, lr, seed):
    return os.path.join(args.out, "runs", condition, variant, f"lr{lr:g}-s{seed}")


def b_split(held, split, condition):
    return held[split] if condition == "filler" else [strip_filler(p) for p in held[split]]


def val_cell(args, held, tok, pretrained, condition, variant, lr, seed):
    """Fine-tune one cell and measure it on the validation splits (what the learning rate is chosen on)."""
    out = run_dir(args, condition, variant, lr, seed)
    path = os.path.join(out, "val.json")
    if not os.path.exists(path):
        data = "oracle" if variant == "oracle-sft" else condition
        data_dir, _ = finetune_data(args, data, seed, held, tok)
        run_train(out, pretrained, data_dir, [*RUNS[variant], f"--learning_rate={lr}",
                                              f"--epochs={args.epochs}", f"--seed={seed}", "--batch_tokens=1600",
                                              "--grad_accum=1", "--warmup=0.1"])
        model, _ = load_checkpoint(out)
        result = dict(learned=exact_match(model, tok, b_split(held, "b_val", condition)),
                      retained=exact_match(model, tok, held["a_val"]))
        save_json(result, path)
    return load_json(path)


def test_cell(args, held, tok, base, condition, variant, lr, seed):
    """Every measure of one (chosen) cell on the test splits."""
    out = run_dir(args, condition, variant, lr, seed)
    path = os.path.join(out, "test.json")
    if not os.path.exists(path):
        model, _ = load_checkpoint(out)
        _, problems = finetune_data(args, condition, seed, held, tok)
        b_test = b_split(held, "b_test", condition)
        result = dict(learned=exact_match(model, tok, b_test), retained=exact_match(model, tok, held["a_test"]),
                      kl=kl_from(model, base, sequences(tok, held["a_test"][:args.n_measure])),
                      nll=nll_by_class(model, sequences(tok, b_test[:args.n_measure])))
        train_seqs = sequences(tok, problems[:args.n_measure])
        if variant == "oracle-sft":  # w = 1 on core, and the mask, not a weight, removes the filler
            result["weights"] = dict(f=dict(kept=0.0, weight=0.0), c=dict(kept=1.0, weight=1.0))
        else:
            result["weights"] = weights_by_class(model, base, train_seqs, variant)
        save_json(result, path)
    return load_json(path)


def base_results(args, held, tok, base):
    """The pre-trained model on the test splits: where every fine-tuning run starts."""
    path = os.path.join(args.out, "base.json")
    if not os.path.exists(path):
        save_json(dict(retained=exact_match(base, tok, held["a_test"]),
                       learned={c: exact_match(base, tok, b_split(held, "b_test", c)) for c in ("filler", "plain")},
                       nll={c: nll_by_class(base, sequences(tok, b_split(held, "b_test", c)[:args.n_measure]))
                            for c in ("filler", "plain")}), path)
    return load_json(path)


def save_json(obj, path):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)  # a file that exists is complete


def load_json(path):
    with open(path) as f:
        return json.load(f)


# -----------------------------------------------------------------------------
# Statistics, the table and the figures

def choose_lr(val, seeds, lrs):
    """The learning rate with the best mean validation accuracy on skill B (ties: the smaller lr)."""
    return max(lrs, key=lambda lr: (statistics.mean(val[lr, s]["learned"] for s in seeds), -lr))


def pct(mean, half=None):
    return f"{100 * mean:.1f}" + ("" if half is None or math.isnan(half) else f" ± {100 * half:.1f}")


def delta(mean, half):
    """A paired difference in points, with its 95% CI: '+4.2 [+1.0, +7.4]'; an interval without 0 is significant."""
    return f"{100 * mean:+.1f} [{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}]"


def paired(test, name, key, seeds):
    """Paired by seed against SFT (same training problems, same order): mean difference and its 95% CI."""
    return mean_ci([test[name][s][key] - test["sft"][s][key] for s in seeds])


def results_table(condition, names, chosen, test, base, seeds):
    classes = "fc" if condition == "filler" else "c"
    head = ["variant", "lr", "learned % (B)", "Δ vs SFT", "retained % (A)", "Δ vs SFT", "KL(A) ×1e3"]
    head += [f"NLL {c}" for c in classes] + [f"kept {c} %" for c in classes] + [f"mean w {c}" for c in classes]
    rows = [["pre-trained", "–", pct(base["learned"][condition]), "", pct(base["retained"]), "", "0"]
            + [f"{base['nll'][condition][c]:.3f}" for c in classes] + ["–"] * 2 * len(classes)]
    for name in names:
        runs = [test[name][s] for s in seeds]
        row = [name, f"{chosen[name]:g}"]
        for key in ("learned", "retained"):
            row.append(pct(*mean_ci([r[key] for r in runs])))
            row.append("" if name == "sft" else delta(*paired(test, name, key, seeds)))
        row.append(f"{1e3 * statistics.mean(r['kl'] for r in runs):.1f}")
        row += [f"{statistics.mean(r['nll'][c] for r in runs):.3f}" for c in classes]
        row += [f"{100 * statistics.mean(r['weights'][c]['kept'] for r in runs):.0f}" for c in classes]
        row += [f"{statistics.mean(r['weights'][c]['weight'] for r in runs):.2f}" for c in classes]
        rows.append(row)
    return "\n".join("| " + " | ".join(r) + " |" for r in [head, ["---"] * len(head), *rows])


def lr_table(names, val, seeds, lrs):
    """Validation accuracy (learned / retained, mean over seeds) at every learning rate: the curves, as numbers."""
    head = ["variant"] + [f"lr {lr:g}" for lr in lrs]
    rows = [[name] + ["{:.1f} / {:.1f}".format(*(100 * statistics.mean(val[name][lr, s][k] for s in seeds)
                                                   for k in ("learned", "retained"))) for lr in lrs]
            for name in names]
    return "\n".join("| " + " | ".join(r) + " |" for r in [head, ["---"] * len(head), *rows])


def plot(path, conditions, names, val, test, base, seeds, lrs):
    """Learned vs retained (test, 95% CI bars), kept fraction of filler vs core, accuracy vs learning rate."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {n: plt.cm.tab10(i) for i, n in enumerate(names["filler"])}
    fig, axes = plt.subplots(1, len(conditions), figsize=(6 * len(conditions), 5), squeeze=False)
    for ax, cond in zip(axes[0], conditions):
        for name in names[cond]:
            (x, dx), (y, dy) = (mean_ci([test[cond][name][s][k] * 100 for s in seeds]) for k in ("learned", "retained"))
            ax.errorbar(x, y, xerr=dx, yerr=dy, fmt="o", color=colors[name], label=name, capsize=3)
        ax.plot(100 * base["learned"][cond], 100 * base["retained"], "k*", ms=12, label="pre-trained")
        ax.set(xlabel="learned: skill-B test exact match %", ylabel="retained: skill-A test exact match %",
               title=f"{cond} data, each rule at its validation-chosen lr ({len(seeds)} seeds, 95% CI)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(path, "learned_vs_retained.png"), dpi=110)

    fig, ax = plt.subplots(figsize=(8, 4))
    filler_names = names["filler"]
    for k, (cls, label) in enumerate((("f", "filler"), ("c", "core"))):
        kept = [100 * statistics.mean(test["filler"][n][s]["weights"][cls]["kept"] for s in seeds) for n in filler_names]
        ax.bar(np.arange(len(filler_names)) + 0.4 * k - 0.2, kept, 0.4, label=label)
    ax.set_xticks(range(len(filler_names)), filler_names, rotation=20)
    ax.set(ylabel="tokens kept (w > 0) %", title="What each rule trains on, filler data (weights at the end of training)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(path, "kept_by_class.png"), dpi=110)

    if len(lrs) > 1:
        fig, axes = plt.subplots(1, len(conditions), figsize=(6 * len(conditions), 4.5), squeeze=False)
        for ax, cond in zip(axes[0], conditions):
            for name in names[cond]:
                for key, style in (("learned", "-o"), ("retained", ":s")):
                    ax.plot(lrs, [100 * statistics.mean(val[cond][name][lr, s][key] for s in seeds) for lr in lrs],
                            style, color=colors[name], label=name if key == "learned" else None)
            ax.set(xscale="log", xlabel="learning rate", ylabel="validation exact match %",
                   title=f"{cond} data: learned (solid) and retained (dotted)")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(path, "accuracy_vs_lr.png"), dpi=110)
    plt.close("all")


# -----------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one learning rate (--quick_lr), seeds 0 and 1, no controls, "
                   "and unless --variants is given sft, dft, profit and prift-prob: a look in about 5 minutes")
    p.add_argument("--out", default="out/lab", help="the fine-tuning runs, results.md and the figures")
    p.add_argument("--pretrain_dir", default="out/lab", help="the pre-trained model (and its data), shared")
    p.add_argument("--lrs", type=float, nargs="+", default=[4e-4, 8e-4, 1.6e-3])
    p.add_argument("--quick_lr", type=float, default=8e-4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, help="default: all seven")
    p.add_argument("--controls", action=argparse.BooleanOptionalAction,
                   help="the no-filler grid and the oracle SFT (default: on, off with --quick)")
    p.add_argument("--control_variants", nargs="+", default=["sft", "dft", "profit", "prift-mass"], choices=VARIANTS,
                   help="the variants of the no-filler grid (the rules that drop or shrink low-p tokens; all seven "
                        "would not fit in 45 minutes)")
    p.add_argument("--n_train", type=int, default=300, help="fine-tuning problems per seed (replay included)")
    p.add_argument("--replay", type=float, default=0.5, help="fraction of the fine-tuning problems from skill A")
    p.add_argument("--epochs", type=float, default=8.0)
    p.add_argument("--n_test", type=int, default=1000, help="held-out problems per skill (test split)")
    p.add_argument("--n_val", type=int, default=500, help="held-out problems per skill (validation split)")
    p.add_argument("--n_measure", type=int, default=500, help="problems for the KL, NLL and weight measures")
    p.add_argument("--n_pretrain", type=int, default=100_000)
    p.add_argument("--pretrain_steps", type=int, default=1500)
    p.add_argument("--pretrain_filler", type=float, default=0.5,
                   help="fraction of the pre-training (and replayed) problems written with filler: 0 makes the "
                        "filler words new to the model")
    p.add_argument("--workers", type=int, default=2, help="processes of one thread each (seeds are shared out)")
    p.add_argument("--no_gate", action="store_true", help="run the grid even if the pilot cell misses 20-80%%")
    args = p.parse_args(argv)
    if args.quick:  # each (variant, seed) cell costs ~25 s of one core: 4 variants x 2 seeds, val and test
        args.lrs, args.seeds = [args.quick_lr], args.seeds[:2]
        args.variants = args.variants or ["sft", "dft", "profit", "prift-prob"]
    args.variants = args.variants or list(VARIANTS)
    args.controls = not args.quick if args.controls is None else args.controls
    if "sft" not in args.variants or "sft" not in args.control_variants:
        p.error("the variants must include sft: every difference is paired against it")
    return args


SETTINGS = ("n_train", "replay", "epochs", "n_test", "n_val", "n_measure", "n_pretrain", "pretrain_steps",
            "pretrain_filler")


def check_settings(args):
    """The settings every cached result in args.out depends on: written by the first invocation, and a later one
    with other values stops instead of mixing results (learning rates, seeds and variants may change freely)."""
    path, settings = os.path.join(args.out, "settings.json"), {k: getattr(args, k) for k in SETTINGS}
    if os.path.exists(path) and load_json(path) != settings:
        raise SystemExit(f"{args.out} holds results made with {load_json(path)}; these settings are {settings}: "
                         f"pass another --out")
    os.makedirs(args.out, exist_ok=True)
    save_json(settings, path)


def gate(val, lrs):
    """The pilot cell (SFT, filler data, seed 0, every lr): the task is worth the grid only if SFT learns skill B
    partly (20-80%) at some learning rate without erasing skill A."""
    ok = [lr for lr in lrs if 0.2 <= val[lr]["learned"] <= 0.8 and val[lr]["retained"] > 0]
    print("pilot cell (sft, filler, seed 0): " + ", ".join(
        f"lr {lr:g}: learned {100 * val[lr]['learned']:.1f}%, retained {100 * val[lr]['retained']:.1f}%" for lr in lrs))
    return bool(ok)


_CONTEXT = {}


def context(args):
    """(tokenizer, held-out problems, pre-trained checkpoint, pre-trained model): made once per process."""
    if args.out not in _CONTEXT:
        tok, held = char_tokenizer(), held_out(args)
        pretrained = pretrain(args, held, tok)
        _CONTEXT[args.out] = tok, held, pretrained, load_checkpoint(pretrained)[0]
    return _CONTEXT[args.out]


def grid(args):
    """condition -> the variants run on it."""
    names = {"filler": list(args.variants) + (["oracle-sft"] if args.controls else [])}
    return {**names, "plain": [n for n in args.variants if n in args.control_variants]} if args.controls else names


def val_seed(args, seed):
    """Every (condition, variant, lr) cell of one seed, on the validation splits."""
    tok, held, pretrained, _ = context(args)
    return {(c, n, lr): val_cell(args, held, tok, pretrained, c, n, lr, seed)
            for c, names in grid(args).items() for n in names for lr in args.lrs}


def test_seed(args, chosen, seed):
    """Every (condition, variant) of one seed at its chosen lr, on the test splits."""
    tok, held, _, base = context(args)
    return {(c, n): test_cell(args, held, tok, base, c, n, chosen[c][n], seed)
            for c, names in grid(args).items() for n in names}


def per_seed(args, fn, *extra):
    """{seed: fn(args, *extra, seed)}: in args.workers processes of one thread each, seeds shared out among them
    (a seed's cells share their data folders, so two processes never write the same file), or in this process."""
    if args.workers < 2:
        return {s: fn(args, *extra, s) for s in args.seeds}
    pool = multiprocessing.get_context("spawn").Pool(min(args.workers, len(args.seeds)),
                                                      initializer=torch.set_num_threads, initargs=(1,))
    with pool:
        return dict(zip(args.seeds, pool.map(functools.partial(fn, args, *extra), args.seeds)))


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    check_settings(args)
    tok, held, pretrained, base = context(args)
    base_res = base_results(args, held, tok, base)
    print(f"pre-trained: skill A {100 * base_res['retained']:.1f}%, skill B {100 * base_res['learned']['filler']:.1f}% "
          f"(test exact match) after {time.time() - t0:.0f} s")
    pilot = {lr: val_cell(args, held, tok, pretrained, "filler", "sft", lr, args.seeds[0]) for lr in args.lrs}
    if not gate(pilot, args.lrs) and not args.no_gate:
        raise SystemExit("the pilot cell misses the gate: calibrate the task (--epochs, --lrs, --n_train, --replay) "
                         "or pass --no_gate")
    names = grid(args)
    by_seed = per_seed(args, val_seed)
    val = {c: {n: {(lr, s): by_seed[s][c, n, lr] for s in args.seeds for lr in args.lrs} for n in names[c]}
           for c in names}
    chosen = {c: {n: choose_lr(val[c][n], args.seeds, args.lrs) for n in names[c]} for c in names}
    by_seed = per_seed(args, test_seed, chosen)
    test = {c: {n: {s: by_seed[s][c, n] for s in args.seeds} for n in names[c]} for c in names}
    conditions = list(names)

    minutes = (time.time() - t0) / 60
    lines = [f"# tokenwise lab: `python lab.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             f"{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), learning rates {', '.join(f'{lr:g}' for lr in args.lrs)}; "
             f"{args.n_train} fine-tuning problems per seed (replay {args.replay:.0%}), {args.epochs:g} epochs; "
             f"filler in {args.pretrain_filler:.0%} of the pre-training problems; "
             f"{args.n_test} test problems per skill; this invocation ran {minutes:.1f} min.", ""]
    for c in conditions:
        lines += [f"## {c} data: test, each rule at its validation-chosen lr (mean ± 95% CI; Δ paired by seed)", "",
                  results_table(c, names[c], chosen[c], test[c], base_res, args.seeds), "",
                  f"## {c} data: validation exact match %, learned / retained, by learning rate", "",
                  lr_table(names[c], val[c], args.seeds, args.lrs), ""]
    report = "\n".join(lines)
    print(report)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(report)
    plot(args.out, conditions, names, val, test, base_res, args.seeds, args.lrs)
    print(f"wrote {args.out}/results.md and figures in {minutes:.1f} min")


if __name__ == "__main__":
    main()
