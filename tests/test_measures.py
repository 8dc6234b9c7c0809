"""eval.py's measures that are not the training objective: the answer NLL by token class, the multiple choice
between the gold solution and altered copies, KL(base || model); each against a hand count or a direct
computation on tiny random models."""
import json
import math
import random
import re
import shutil
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import eval as E
import report
from conftest import GPT2_TOKENIZER_DIR
from data.prepare import gsm8k
from tokenizer import load_tokenizer

# Short GSM8K-style records: the tiny models' context is 128 tokens
RECORDS = [
    {"question": "Jo has 3 boxes of 4 eggs. She eats 2. How many are left?",
     "answer": "Jo has 3*4=<<3*4=12>>12 eggs.\nShe has 12-2=<<12-2=10>>10 left.\n#### 10"},
    {"question": "A pen costs $2. How much do 5 pens cost?", "answer": "5*2=<<5*2=10>>10\n#### 10"},
    {"question": "Tom runs 6 km a day for 7 days, then 8 km more. How far?",
     "answer": "He runs 6*7=<<6*7=42>>42 km.\nThen 42+8=<<42+8=50>>$50 in all.\n#### 50"},
]


@pytest.fixture
def gpt2_tok():
    return load_tokenizer(GPT2_TOKENIZER_DIR)


def full_logprobs(model, ids):
    with torch.no_grad():
        return F.log_softmax(model(torch.tensor([ids[:-1]]))[0].float(), dim=-1)


# --- token classes

def test_char_classes_by_hand():
    text = " Jo has 1,200 eggs; 4*6=<<4*6=24>>24.\n#### 1176"
    # " Jo has " | "1,200" | " eggs; " | "4*6=" outside an annotation | "<<4*6=24>>" | "24" | ".\n" | "#### 1176"
    by_hand = "0" * 8 + "1" * 5 + "0" * 7 + "1010" + "2" * 10 + "11" + "00" + "3" * 9
    assert "".join(map(str, E.char_classes(text))) == by_hand


def test_token_classes_by_hand(gpt2_tok):
    text = " Jo has 1,200 eggs and sells 4*6=<<4*6=24>>24.\n#### 1176"
    tokens = [gpt2_tok.decode([i]) for i in gpt2_tok.encode(text)]
    assert tokens == [" Jo", " has", " 1", ",", "200", " eggs", " and", " sells", " 4", "*", "6", "=", "<<", "4", "*",
                      "6", "=", "24", ">>", "24", ".", "\n", "####", " 11", "76"]
    # " 1" is a number (its space is prose, the higher class wins); "," inside 1,200 is part of the number;
    # "*" and "=" outside an annotation are prose; every token of <<4*6=24>> is calc; "\n" before #### is prose
    P, N, C, F_ = 0, 1, 2, 3
    assert E.token_classes(gpt2_tok, text) == [P, P, N, N, N, P, P, P, N, P, N, P, C, C, C, C, C, C, C, N, P, P,
                                               F_, F_, F_]


def test_classes_split_the_answer_nll(tiny_checkpoint, monkeypatch):
    from checkpoints import load_checkpoint
    model, tok = load_checkpoint(tiny_checkpoint("llama")[0])
    monkeypatch.setattr(E, "gsm8k", lambda split: RECORDS)
    args = SimpleNamespace(limit=None, split="test", batch_size=2)
    with torch.no_grad():
        got = E.eval_gsm8k_classes(model, tok, args)
        whole = E.eval_gsm8k_nll(model, tok, args)
        # direct: each answer token's CE from one unpadded pass, summed by the class read off its text by hand
        sums, counts = [0.0] * 4, [0] * 4
        for d in RECORDS:
            prompt = tok.encode("Question: " + d["question"] + "\nAnswer:", bos=tok.add_bos)
            answer = tok.encode(" " + d["answer"]) + [tok.eos_id]
            logp = full_logprobs(model, prompt + answer)[len(prompt) - 1:]
            ce = -logp.gather(1, torch.tensor(answer)[:, None])[:, 0]
            for t, c in zip(ce.tolist(), E.token_classes(tok, " " + d["answer"]) + [3]):
                sums[c], counts[c] = sums[c] + t, counts[c] + 1
    assert got["tokens"] == whole["tokens"] == sum(counts) and got["n"] == 3
    assert got["nll"] == pytest.approx(whole["nll"], rel=1e-5)
    for c, name in enumerate(E.CLASSES):
        assert got[name]["tokens"] == counts[c] and got[name]["nll"] == pytest.approx(sums[c] / counts[c], rel=1e-5)
    assert counts[3] == 3 * 3  # each final line: "####", " 10" or " 50" (one GPT-2 token), and the EOS


# --- multiple choice

def changed_span(a, b):
    """(start, end in a, end in b) of the one region where a and b differ."""
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    j = 0
    while j < min(len(a), len(b)) - i and a[-1 - j] == b[-1 - j]:
        j += 1
    return i, len(a) - j, len(b) - j


def test_mc_item_by_hand():
    context, choices = E.mc_item(RECORDS[0]["answer"], random.Random(0))
    assert context == "Jo has 3*4=<<3*4="  # the first annotation: the only one before the last
    assert choices[0] == "12>>12 eggs."  # to the end of the line: nothing downstream is scored
    assert len(choices) == 4 and len(set(choices)) == 4
    for c in choices[1:]:
        v = re.match(r"\d+", c).group()
        assert int(v) - 12 in E.MC_OFFSETS
        assert c == f"{v}>>{v} eggs."  # the annotation's result and its echo change, nothing else
    assert E.mc_item(RECORDS[1]["answer"], random.Random(0)) is None  # one annotation: it computes the final answer
    _, choices = E.mc_item(RECORDS[2]["answer"], random.Random(0))
    assert choices[0] == "42>>42 km." and all(re.fullmatch(r"\d+>>\d+ km\.", c) for c in choices)
    _, choices = E.mc_item("a 2+3=<<2+3=5>>$5 b\nc <<5*2=10>>10\n#### 10", random.Random(0))
    assert choices[0] == "5>>$5 b" and all(c == f"{c[0]}>>${c[0]} b" for c in choices)  # a "$" before the echo


def test_mc_copies_differ_from_the_gold_only_in_one_result_and_its_echo():
    test, made = gsm8k("test"), 0
    for i, d in enumerate(test[:300]):
        item = E.mc_item(d["answer"], random.Random(i))
        if item is None:
            assert len(re.findall(r"<<[^<>=]*=\d+>>", d["answer"].rsplit("<<", 1)[0])) == 0
            continue
        made += 1
        context, (gold, *altered) = item
        line_end = d["answer"].find("\n", len(context))
        assert context + gold == d["answer"][:line_end] and context.endswith("=") and len(set(altered)) == 3
        r = re.match(r"\d+", gold).group()
        last = d["answer"].rfind("<<")
        assert len(context) < last  # never the last annotation, which computes the final answer
        for copy in altered:
            v = re.match(r"\d+", copy).group()
            assert int(v) - int(r) in E.MC_OFFSETS and int(v) >= 0
            rest_g, rest_c = gold[len(r):], copy[len(v):]
            assert rest_g.startswith(">>") and rest_c.startswith(">>")
            if re.match(r">>\$?" + r + r"(?!\d)", rest_g):  # the echo repeats r: it changes with it, alone
                assert rest_c == rest_g.replace(r, v, 1)
            else:
                assert rest_c == rest_g
    assert made >= 250


def test_choice_logliks_equal_one_pass_per_choice(tiny_checkpoint):
    from checkpoints import load_checkpoint
    model, _ = load_checkpoint(tiny_checkpoint("llama")[0])
    g = torch.Generator().manual_seed(0)
    context = torch.randint(0, 50257, (17,), generator=g).tolist()
    choices = [torch.randint(0, 50257, (L,), generator=g).tolist() for L in (5, 1, 9, 4)]
    with torch.no_grad():
        got = E.choice_logliks(model, context, choices)
        for c, ll in zip(choices, got):
            logp = full_logprobs(model, context + c)[len(context) - 1:]
            assert ll == pytest.approx(logp.gather(1, torch.tensor(c)[:, None]).sum().item(), rel=1e-5, abs=1e-4)


def test_mc_accuracy_and_acc_norm_per_character(tiny_checkpoint, monkeypatch):
    from checkpoints import load_checkpoint
    model, tok = load_checkpoint(tiny_checkpoint("llama")[0])
    monkeypatch.setattr(E, "gsm8k", lambda split: RECORDS)
    samples = []
    with torch.no_grad():
        got = E.eval_gsm8k_mc(model, tok, SimpleNamespace(limit=None, split="test"), samples)
    assert got["n"] == 2 and [s["index"] for s in samples] == [0, 2]  # record 1 has nothing to alter
    for s in samples:
        _, choices = E.mc_item(RECORDS[s["index"]]["answer"], random.Random(s["index"]))
        ll = s["loglik"]
        assert s["acc"] == (ll[0] > max(ll[1:]))
        norm = [v / len(c) for v, c in zip(ll, choices)]  # lm-eval's acc_norm: per character of the choice
        assert s["acc_norm"] == (norm[0] > max(norm[1:]))
    assert got["acc_norm"] == sum(s["acc_norm"] for s in samples) / 2
    assert got["acc_norm_ci95"] == E.wilson(sum(s["acc_norm"] for s in samples), 2)


def test_wilson_interval_by_hand():
    lo, hi = E.wilson(8, 10)  # p = 0.8, z = 1.96: (0.8 + 0.19208 -+ 1.96 sqrt(0.016 + 0.009604)) / 1.38416
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert E.wilson(0, 20)[0] == pytest.approx(0.0, abs=1e-12)


# --- forgetting as KL(base || model)

def test_kl_against_a_direct_computation(tiny_checkpoint):
    from checkpoints import load_checkpoint
    model, tok = load_checkpoint(tiny_checkpoint("llama")[0])
    base, _ = load_checkpoint(tiny_checkpoint("llama", seed=1, num_hidden_layers=1)[0])
    ids = tok.encode("The quick brown fox jumps over the lazy dog. " * 5)
    with torch.no_grad():
        got = E.kl_to_base(model, base, ids, window=128, stride=64, chunk=7)  # one window holds the text
        lm, lb = full_logprobs(model, ids), full_logprobs(base, ids)
        y = torch.tensor(ids[1:])[:, None]
        kl = (lb.exp() * (lb - lm)).sum(-1).mean().item()
        nll, base_nll = -lm.gather(1, y).mean().item(), -lb.gather(1, y).mean().item()
        assert got["tokens"] == len(ids) - 1 and got["kl"] > 0.01
        assert got["kl"] == pytest.approx(kl, rel=1e-4)
        assert torch.distributions.kl_divergence(torch.distributions.Categorical(logits=lb),
                                                 torch.distributions.Categorical(logits=lm)).mean().item() \
            == pytest.approx(got["kl"], rel=1e-4)
        assert got["ppl"] == pytest.approx(math.exp(nll), rel=1e-5)
        assert got["ratio"] == pytest.approx(math.exp(nll - base_nll), rel=1e-5)
        slid = E.kl_to_base(model, base, ids, window=16, stride=5)  # the windows of perplexity(): each target once
        assert slid["tokens"] == len(ids) - 1 and slid["kl"] > 0
        assert E.kl_to_base(model, model, ids, window=16, stride=5)["kl"] == pytest.approx(0.0, abs=1e-6)


# --- the command line and the comparison table

def test_cli_new_tasks_and_compare(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    folder = tiny_checkpoint("llama")[0]
    monkeypatch.setattr(E, "gsm8k", lambda split: RECORDS)
    text = tmp_path / "heldout.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 8)
    out = tmp_path / "run"
    r = E.main([f"--model={folder}", f"--base={folder}", "--tasks=gsm8k_classes,gsm8k_mc,kl", f"--out={out}",
                f"--ppl_data={text}", "--ppl_window=32"])
    assert json.loads((out / "eval.json").read_text()) == r
    assert r["gsm8k_classes"]["n"] == 3 and r["gsm8k_mc"]["n"] == 2 and "line" in r["gsm8k_mc"]["scored"]
    assert r["kl"]["kl"] == pytest.approx(0.0, abs=1e-6) and r["kl"]["ratio"] == pytest.approx(1.0)
    assert len((out / "eval_samples.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    shutil.copytree(out, tmp_path / "again")
    E.main(["--compare", str(out), str(tmp_path / "again"), f"--plot={tmp_path / 'c.png'}"])
    head, _, _, _, paired = capsys.readouterr().out.splitlines()
    assert paired == "again vs run, MC acc_norm on the same questions: +0 −0, exact McNemar p = 1.000"
    assert "NLL calc" in head and "MC acc_norm" in head and "KL(base‖model)" in head and "GSM8K strict" not in head
    assert (tmp_path / "c.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        E.main([f"--model={folder}", "--tasks=kl"])
    assert "pass --base" in capsys.readouterr().err


def test_mcnemar_exact_p_by_hand():
    a = {i: i < 10 for i in range(30)}  # a right on 0..9
    b = {i: 2 <= i < 22 for i in range(31)}  # b right on 2..21: gains 10..21 (12), loses 0, 1 (2); 30 is b's alone
    gained, lost, p = report.mcnemar(a, b)
    assert (gained, lost) == (12, 2)
    assert p == pytest.approx(2 * (1 + 14 + 91) / 2 ** 14)  # 2 P(X <= 2), X ~ Binomial(14, 1/2)
    assert report.mcnemar(a, a) == (0, 0, 1.0)
