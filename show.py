"""
What each rule keeps: every token of one answer coloured by its weight under every rule, in the terminal (ANSI
colours) and as a PNG, and the w(p) curves of the rules on one plot, with this answer's tokens along the p axis.

$ python show.py                                   # the embedded SmolLM2-135M, GSM8K test question 0
$ python show.py --model=out/quick-dft --index=7   # a fine-tuned run, another question
$ python show.py --prompt="Question: 2+2?\nAnswer:" --text=" 4"    # any text (the prompt is context, unweighted)

The model given is the signal for every rule: p (and PriFT's mass u) are its probabilities of each answer token
after the prompt, as weights.target_signals computes them, so the online rules show their weights at this model's
state and PriFT treats this model as its prior. The weights are weights.token_weights at the official defaults;
nothing here reimplements a rule.
"""
import argparse
import os
import sys

import torch

import weights
from data.prepare import gsm8k
from eval import CLASSES, gsm8k_prompt, token_classes
from checkpoints import load_checkpoint

# (name, rule, hyperparameters): every rule at weights.DEFAULTS, PriFT in both modes
SHOWN = [("sft", "sft", {}), ("dft", "dft", {}), ("infosft", "infosft", {}), ("profit", "profit", {}),
         ("prift-mass", "prift", {"prift_mode": "mass"}), ("prift-prob", "prift", {"prift_mode": "prob"})]


@torch.no_grad()
def token_signals(model, tok, prompt, text):
    """The token ids of text and (p, u) of each under model, after prompt; tokenized apart as data/prepare.py does."""
    context, ids = tok.encode(prompt, bos=tok.add_bos), tok.encode(text)
    if not ids:
        raise ValueError("the text to show has no tokens")
    full = (context + ids)[-(model.config.block_size + 1):]
    if len(full) - 1 < len(ids):
        raise ValueError(f"the text is {len(ids)} tokens, more than the model's {model.config.block_size}")
    x = torch.tensor([full[:-1]], device=model.lm_head.weight.device)
    hidden = model(x, return_hidden=True)[0, -len(ids):]
    p, u = weights.target_signals(hidden, model.lm_head.weight, torch.tensor(ids, device=hidden.device))
    return ids, p.cpu(), u.cpu()


def rule_weights(p, u):
    """{name: weights} of every shown rule for signals p, u."""
    return {name: weights.token_weights(rule, p, u, **hyper) for name, rule, hyper in SHOWN}


def ansi(pieces, w):
    """Tokens on a white-to-blue background (w = 0 white, w = 1 saturated), newlines kept as a visible mark."""
    out = []
    for s, v in zip(pieces, w.tolist()):
        r, g = round(255 - 190 * v), round(255 - 120 * v)
        s = s.replace("\n", "\u21b5\n")
        out.append("\n".join(f"\x1b[48;2;{r};{g};255m\x1b[30m{line}\x1b[0m" if line else "" for line in s.split("\n")))
    return "".join(out)


def summary(classes, ws):
    """One line per rule: the mean weight over all tokens and over each token class, and the fraction kept."""
    head = f"{'rule':<11}{'mean w':>8}" + "".join(f"{c:>8}" for c in CLASSES) + f"{'kept':>8}"
    lines = [head]
    for name, w in ws.items():
        by_class = [w[[i for i, c in enumerate(classes) if c == k]] for k in range(len(CLASSES))]
        cells = "".join(f"{m.mean().item():>8.2f}" if len(m) else f"{'–':>8}" for m in by_class)
        lines.append(f"{name:<11}{w.mean().item():>8.2f}{cells}{(w > 0).float().mean().item():>8.0%}")
    return "\n".join(lines)


def layout(pieces, width):
    """(row, column, text) of each token's visible part in a monospace grid `width` columns wide; a newline in a
    token starts the next row. Tokens are never split across rows unless longer than a row."""
    spots, row, col = [], 0, 0
    for s in pieces:
        parts = s.split("\n")
        for k, part in enumerate(parts):
            if k:
                row, col = row + 1, 0
            if col + len(part) > width and col:
                row, col = row + 1, 0
            spots.append((row, col, part))
            col += len(part)
    return spots


def draw_tokens(pieces, ws, path, width=100, fontsize=8):
    """A panel per rule: each token's text on a box coloured by its weight. Monospace text on a grid of exact
    character cells (axes placed in inches), so each box fits its token."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    cmap = plt.get_cmap("Blues")
    spots = layout(pieces, width)
    rows = spots[-1][0] + 1
    char_in, line_in, title_in, margin = 0.602 * fontsize / 72, 1.6 * fontsize / 72, 0.3, 0.2  # DejaVu Sans Mono
    panel_in = rows * line_in + title_in
    W, H = width * char_in + 2 * margin + 0.9, len(ws) * panel_in + margin
    fig = plt.figure(figsize=(W, H))
    owner = [i for i, s in enumerate(pieces) for _ in s.split("\n")]  # the token each visible part belongs to
    for k, (name, w) in enumerate(ws.items()):
        top = H - margin / 2 - k * panel_in - title_in
        ax = fig.add_axes([margin / W, (top - rows * line_in) / H, width * char_in / W, rows * line_in / H])
        for (row, col, text), i in zip(spots, owner):
            v = float(w[i])
            ax.add_patch(Rectangle((col, row - 0.5), max(len(text), 0.3), 1, facecolor=cmap(0.05 + 0.85 * v),
                                   edgecolor="white", lw=0.6))
            ax.text(col, row, text, family="DejaVu Sans Mono", fontsize=fontsize, va="center", ha="left",
                    color="white" if v > 0.6 else "black")
        ax.set(xlim=(0, width), ylim=(rows - 0.5, -0.5))
        ax.axis("off")
        ax.set_title(f"{name}: mean weight {w.mean().item():.2f}, kept {(w > 0).float().mean().item():.0%}",
                     fontsize=fontsize + 1, loc="left")
    bar = fig.add_axes([(W - 0.6) / W, 0.25, 0.12 / W, 0.5])
    fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(0.05, 0.9)), cax=bar,
                 label="weight: white 0, dark 1", ticks=[])
    fig.savefig(path, dpi=130)
    plt.close(fig)


def draw_curves(path, p_tokens=None):
    """The rules' w as a function of the signal, on one plot; PriFT-mass reads u (the prior mass up to the target),
    the others p. With p_tokens, the shown answer's tokens along the axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    grid = torch.linspace(0, 1, 2001)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    curves = [("sft: 1", "sft", {}), ("dft: p  (= prift-prob, p from the prior)", "dft", {}),
              (f"infosft: p·relu(1 − logit(p)/logit({weights.DEFAULTS['infosft_P']}))", "infosft", {}),
              (f"profit: 1[p ≥ {weights.DEFAULTS['profit_tau']}]", "profit", {}),
              (f"prift-mass: 1[u ≥ {weights.DEFAULTS['prift_tau']}]  (x = u)", "prift", {"prift_mode": "mass"})]
    for k, (label, rule, hyper) in enumerate(curves):
        ax.plot(grid, weights.token_weights(rule, grid, grid, **hyper), label=label, lw=2, ls="--" if k == 4 else "-")
    if p_tokens is not None:
        ax.plot(p_tokens, torch.full_like(p_tokens, -0.04), "|", color="gray", ms=10, label="this answer's tokens (p)")
    ax.set(xlabel="p, the signal model's probability of the target token (u for prift-mass)", ylabel="weight w",
           ylim=(-0.08, 1.08), title="what each rule weighs")
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-gguf", help="the signal model: run folder, HF folder, .gguf, hub name")
    ap.add_argument("--index", type=int, default=0, help="GSM8K test question whose gold answer is shown")
    ap.add_argument("--text", help="any text instead of a GSM8K answer (the weighted part)")
    ap.add_argument("--prompt", default="", help="context before --text (unweighted)")
    ap.add_argument("--png", default="out/show.png", help="the tokens coloured by weight, one panel per rule")
    ap.add_argument("--curves", default="out/curves.png", help="the w(p) curves")
    ap.add_argument("--color", default="auto", choices=("auto", "always", "never"), help="ANSI colours in the terminal")
    args = ap.parse_args(argv)
    if args.text is not None:  # a typed "\n" is a newline, as in the GSM8K prompt format
        args.prompt, args.text = args.prompt.replace("\\n", "\n"), args.text.replace("\\n", "\n")
    else:
        test = gsm8k("test")
        if not 0 <= args.index < len(test):
            raise SystemExit(f"--index={args.index}: GSM8K's test split has questions 0..{len(test) - 1}")
        args.prompt, args.text = gsm8k_prompt(test[args.index]["question"]), " " + test[args.index]["answer"]
    try:
        model, tok = load_checkpoint(args.model)
        ids, p, u = token_signals(model.eval(), tok, args.prompt, args.text)
        classes = token_classes(tok, args.text)
    except (FileNotFoundError, ValueError, ConnectionError) as e:
        raise SystemExit(f"error: {e}")
    pieces = [tok.decode([i]) for i in ids]
    ws = rule_weights(p, u)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(f"{args.model}: p of each token after the prompt (the signal of every rule, and PriFT's prior)")
    for name, w in ws.items():
        print(f"\n{name}:\n" + (ansi(pieces, w) if color else
                                " ".join(f"{s!r}:{v:.2f}" for s, v in zip(pieces, w.tolist()))))
    print("\n" + summary(classes, ws))
    for path in (args.png, args.curves):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    draw_tokens(pieces, ws, args.png)
    draw_curves(args.curves, p)
    print(f"\nwrote {args.png} and {args.curves}", file=sys.stderr)


if __name__ == "__main__":
    main()
