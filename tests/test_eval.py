"""eval.py: lm-eval's GSM8K protocol (shots, prompt text, extraction), pass@k, the sliding window, and the
metrics on a tiny random model checked against direct computations."""
import json
import math
import os
import random
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import eval as E
from data.prepare import gsm8k


def test_fewshot_rows_are_lm_evals_draw():
    train = gsm8k("train")
    assert len(train) == 7473
    rows = E.fewshot_rows(3, len(train))
    # lm-eval's rows for the first two test questions (its sampler over the list of train docs, seed 1234)
    assert rows[:2] == [[6374, 3610, 957, 61, 742], [7462, 6610, 4769, 286, 5501]]
    # lm-eval samples the docs themselves with one shared generator; indices pick out the same docs
    rnd = random.Random(1234)
    assert [rnd.sample(train, 5) for _ in range(3)] == [[train[j] for j in r] for r in rows]


def test_prompt_text_exact():
    shots = [{"question": "Q1?", "answer": "A1\n#### 1"}, {"question": "Q2?", "answer": "A2\n#### 2"}]
    assert E.gsm8k_prompt("Q3?", shots) == "Question: Q1?\nAnswer: A1\n#### 1\n\nQuestion: Q2?\nAnswer: A2\n#### 2\n\nQuestion: Q3?\nAnswer:"
    assert E.gsm8k_prompt("Q3?") == "Question: Q3?\nAnswer:"


def test_first_real_prompt():
    train, test = gsm8k("train"), gsm8k("test")
    prompt = E.gsm8k_prompt(test[0]["question"], [train[j] for j in E.fewshot_rows(1, len(train))[0]])
    first = "Question: " + train[6374]["question"] + "\nAnswer: " + train[6374]["answer"] + "\n\nQuestion: "
    assert prompt.startswith(first) and prompt.count("\n\nQuestion: ") == 5
    assert prompt.endswith("\n\nQuestion: " + test[0]["question"] + "\nAnswer:")


# (completion, strict-match extraction, flexible-extract extraction), worked out by hand from lm-eval's regexes
EXTRACTIONS = [
    ("She has 5 apples.\n#### 5", "5", "5"),
    ("He owes #### -12", "-12", "-12"),
    ("#### 1,234.\n", "1,234.", "1,234."),
    ("It costs $1,000 in total.", "[invalid]", "$1,000"),
    ("#### 3\nno wait\n#### 4", "3", "4"),
    ("I do not know.", "[invalid]", "[invalid]"),
    ("#### 2.50", "2.50", "2.50"),
    ("so it is 5...", "[invalid]", "5..."),
    ("It is 7", "[invalid]", "7"),
    ("Total: 10 - 3 = 7 dollars", "[invalid]", "7"),
    ("down -3 now", "[invalid]", "-3"),
    ("#### $18", "[invalid]", "$18"),
]


@pytest.mark.parametrize("text, strict, flexible", EXTRACTIONS)
def test_extraction(text, strict, flexible):
    assert E.extract(text, E.STRICT, 0) == strict
    assert E.extract(text, E.FLEXIBLE, -1) == flexible


@pytest.mark.parametrize("completion, gold, strict, flexible", [
    ("#### 1,234.\n", "x\n#### 1234", True, True),       # comma and trailing period removed
    ("It costs $1,000 in total.", "#### 1000", False, True),
    ("#### 3\n#### 4", "#### 4", False, True),
    ("#### 2.50", "#### 2.5", False, False),            # exact match: no numeric comparison
    ("so it is 5...", "#### 5", False, False),          # only one trailing period goes
    ("#### $18", "#### 18", False, True),
    ("I do not know.", "#### 0", False, False),
    ("#### -3", "#### -3", True, True),
])
def test_exact_match(completion, gold, strict, flexible):
    assert E.gsm8k_correct(completion, gold) == {"strict_match": strict, "flexible_extract": flexible}


def test_every_gold_answer_scores_itself():
    test = gsm8k("test")
    assert all(E.gsm8k_correct(d["answer"], d["answer"]) == {"strict_match": True, "flexible_extract": True} for d in test)


def test_cut_at_stop():
    assert E.cut_at_stop("x = 1\n#### 1\n\nQuestion: next</s>", E.GSM8K_STOP) == "x = 1\n#### 1\n\n"
    assert E.cut_at_stop("a</s>b<|im_end|>Question:", E.GSM8K_STOP) == "a"
    assert E.cut_at_stop("no stop", E.GSM8K_STOP) == "no stop"


@pytest.mark.parametrize("n, c, k", [(1, 0, 1), (1, 1, 1), (10, 3, 1), (10, 3, 5), (20, 0, 10), (20, 15, 10), (200, 7, 100)])
def test_pass_at_k_is_the_combinatorial_formula(n, c, k):
    assert E.pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


@pytest.mark.parametrize("n, window, stride", [(10, 4, 2), (10, 4, 4), (10, 4, 1), (5, 8, 4), (2, 3, 1), (100, 16, 5)])
def test_windows_score_each_target_once_with_context(n, window, stride):
    spans = E.windows(n, window, stride)
    scored = [t for b, e, k in spans for t in range(e - k, e)]
    assert sorted(scored) == list(range(1, n)) and len(scored) == n - 1
    for b, e, k in spans:
        assert e - 1 - b <= window  # inputs ids[b:e-1] fit the window
        assert all(t - b >= min(t, window - stride + 1) for t in range(e - k, e))
    assert E.windows(10, 4, 2) == [(0, 5, 4), (2, 7, 2), (4, 9, 2), (6, 10, 1)]


# --- a tiny random model (conftest's tiny_checkpoint: Llama layout, GPT-2 tokenizer, block 128)

@pytest.fixture
def tiny(tiny_checkpoint):
    from checkpoints import load_checkpoint
    folder, _ = tiny_checkpoint("llama")
    model, tok = load_checkpoint(folder)
    return folder, model, tok


def full_ce(model, ids, first):
    """Sum of CE over targets ids[first:], from the full logits of one unpadded forward pass."""
    logits = model(torch.tensor([ids[:-1]]))[0].float()
    return F.cross_entropy(logits[first - 1:], torch.tensor(ids[first:]), reduction="sum").item()


def test_tail_nll_equals_full_logits(tiny):
    _, model, _ = tiny
    g = torch.Generator().manual_seed(0)
    seqs = [(torch.randint(0, 50257, (L,), generator=g).tolist(), k) for L, k in ((9, 3), (20, 19), (5, 1))]
    with torch.no_grad():
        nats, count = E.tail_nll(model, seqs)
        assert count == 23
        assert nats == pytest.approx(sum(full_ce(model, ids, len(ids) - k) for ids, k in seqs), rel=1e-5)


def test_perplexity_and_bits_per_byte(tiny):
    _, model, tok = tiny
    text = "The quick brown fox jumps over the lazy dog. " * 4
    ids = tok.encode(text, bos=tok.add_bos)
    args = SimpleNamespace(ppl_tokens=None, ppl_window=128, ppl_stride=None, batch_size=2)
    with torch.no_grad():
        one = E.perplexity(model, tok, text, args)  # the window holds the whole text: one plain forward pass
        nats = full_ce(model, ids, 1)
        assert one["tokens"] == len(ids) - 1
        assert one["ppl"] == pytest.approx(math.exp(nats / (len(ids) - 1)), rel=1e-5)
        assert one["bpb"] == pytest.approx(nats / (math.log(2) * len(tok.decode(ids[1:]).encode())), rel=1e-5)
        slid = E.perplexity(model, tok, text, SimpleNamespace(**{**vars(args), "ppl_window": 8, "ppl_stride": 3}))
        assert slid["tokens"] == one["tokens"] and slid["bytes"] == one["bytes"]
        capped = E.perplexity(model, tok, text, SimpleNamespace(**{**vars(args), "ppl_tokens": 10}))
        assert capped["tokens"] == 10


def test_generate_texts_batched_equals_each_alone_cut_at_stop(tiny):
    _, model, tok = tiny
    prompts = ["Question: What is 2 + 2?\nAnswer:", "def f(x):\n", "Once upon a time, in a land far away, there"]
    alone = [tok.decode(model.generate([tok.encode(p, bos=tok.add_bos)], 12)[0]) for p in prompts]
    stops = (alone[0][4:6], alone[2][3:5])  # strings that do occur, so rows really stop
    texts, max_new = E.generate_texts(model, tok, prompts, 12, stops, batch_size=3, what="test")
    assert max_new == 12 and texts == [E.cut_at_stop(a, stops) for a in alone]
    assert not any(s in t for s in stops for t in texts)


def test_answer_nll_by_hand(tiny):
    _, model, tok = tiny
    test = gsm8k("test")[:2]
    with torch.no_grad():
        got = E.eval_gsm8k_nll(model, tok, SimpleNamespace(limit=2, split="test", batch_size=2))
        nats, count = 0.0, 0
        for d in test:
            prompt = tok.encode("Question: " + d["question"] + "\nAnswer:", bos=tok.add_bos)
            answer = tok.encode(" " + d["answer"]) + [tok.eos_id]
            nats, count = nats + full_ce(model, prompt + answer, len(prompt)), count + len(answer)
    assert got["n"] == 2 and got["tokens"] == count and got["nll"] == pytest.approx(nats / count, rel=1e-5)


def test_cli_writes_eval_json_and_compare(tiny, tmp_path, capsys):
    folder = tiny[0]
    out = tmp_path / "run"
    r = E.main([f"--model={folder}", f"--base={folder}", "--tasks=gsm8k,gsm8k_nll,humaneval,ppl", "--limit=2",
                "--gsm8k_max_new=4", "--he_max_new=4", "--ppl_tokens=100", f"--out={out}"])
    saved = json.loads((out / "eval.json").read_text())
    assert saved == r
    assert {"model", "base", "rule", "signal", "steps", "time_s", "gsm8k", "gsm8k_nll", "humaneval", "ppl"} <= set(saved)
    assert saved["rule"] is None and saved["gsm8k"]["n"] == 2 and saved["gsm8k"]["shots"] == 5
    assert saved["humaneval"]["n"] == 2 and "pass@10" not in saved["humaneval"]
    assert saved["ppl"]["ratio"] == 1.0 and saved["ppl"]["base"]["ppl"] == saved["ppl"]["ppl"]
    assert len((out / "eval_samples.jsonl").read_text().splitlines()) == 4
    capsys.readouterr()
    E.main(["--compare", str(out), str(tmp_path / "missing"), f"--plot={tmp_path / 'plot.png'}"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| run | rule |") and len(table) == 3 and table[2].startswith("| run |")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_bad_input_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        E.main(["--model=x", "--tasks=gsm8k,mmlu"])
    assert "unknown task(s) mmlu" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        E.main(["--model=x", "--limit=0"])
    assert "--limit must be a positive integer" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="--ppl_data"):  # before any model is loaded
        E.main(["--model=does-not-matter", "--tasks=ppl", f"--ppl_data={tmp_path / 'none.txt'}"])
    with pytest.raises(SystemExit, match="no eval.json"):
        E.main(["--compare", str(tmp_path)])


def test_offline_sources_and_one_line_errors(tmp_path, monkeypatch):
    text = E.heldout_text("lee")  # shipped by gensim: no network needed
    assert len(text) > 300_000 and text.count("\n") >= 299

    def offline(*a, **kw):
        raise OSError("network is unreachable")
    monkeypatch.setattr("datasets.load_dataset", offline)
    with pytest.raises(ConnectionError, match="could not load wikitext from the hub .*--ppl_data=lee"):
        E.heldout_text("wikitext")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "eval.py", "--model=/nowhere", "--tasks=gsm8k_nll"], cwd=root,
                         capture_output=True, text=True)
    assert res.returncode == 1 and res.stderr == "error: no checkpoint at /nowhere: pass a HF folder, a .gguf file, " \
                                                 "a tokenwise out_dir or a hub name\n", res.stderr
