"""The lab (lab.py): its problems and token labels, its splits and seeds, the oracle's mask, and --quick end to end."""
import json
import re

import numpy as np

import lab
from data.loader import load_split
from tokenizer import load_tokenizer


def small_args(tmp_path):
    return lab.parse_args(["--out", str(tmp_path), "--n_test", "30", "--n_val", "20", "--n_pretrain", "500",
                           "--n_train", "40"])


def solved(problem):
    """The result the worked lines give, recomputed from them: each line's last digit, bottom up, after the final
    carry (each line's sum checked on the way)."""
    lines = re.findall(r"(\d)\+(\d)\+(\d)=(\d+)", problem["answer"])
    assert all(int(a) + int(b) + int(c) == int(s) for a, b, c, s in lines)
    sums = [int(s) for *_, s in lines]
    return str(int(str(sums[-1] // 10) + "".join(str(s % 10) for s in reversed(sums))))


def test_problems_are_right_and_labelled():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = lab.skill_a(rng), lab.skill_b(rng)
        for p in (a, b):
            assert len(p["label"]) == len(p["answer"]) and set(p["label"]) <= {"f", "c"}
            assert solved(p) == p["result"] == p["answer"].split("#### ")[1]
        assert int(a["result"]) == sum(map(int, a["question"].split("+")))
        assert int(b["result"]) == sum(map(int, b["question"].split("+")))
        assert "f" not in a["label"]
        # the filler is exactly one connective word and a space at the start of every worked line, nothing else
        filler = [b["answer"][m.start():m.end()] for m in re.finditer("f+", b["label"])]
        lines = b["answer"].split("\n")[:-1]
        assert len(filler) == len(lines) and all(line.startswith(w) for w, line in zip(filler, lines))
        assert all(w[:-1] in lab.FILLERS and w[-1] == " " for w in filler)
        plain = lab.strip_filler(b)
        a_, b_, _ = map(int, b["question"].split("+"))
        assert plain["answer"] == "\n".join(lab.column_lines(a_, b_, carry=1) + [f"#### {b['result']}"])
        assert plain["label"] == "c" * len(plain["answer"])


def test_splits_are_disjoint_and_the_seed_resamples_the_training_problems(tmp_path):
    args = small_args(tmp_path)
    held = lab.held_out(args)
    qs = {k: lab.questions(v) for k, v in held.items()}
    assert len(qs["a_test"]) == 30 and len(qs["b_val"]) == 20  # distinct questions within a split
    assert not qs["a_test"] & qs["a_val"] and not qs["a_test"] & qs["pretrain"] and not qs["a_val"] & qs["pretrain"]
    assert not qs["b_test"] & qs["b_val"]
    runs = [lab.questions(lab.finetune_problems(args, seed, held)) for seed in (0, 1)]
    for q in runs:
        assert not q & (qs["b_test"] | qs["b_val"] | qs["a_test"] | qs["a_val"])
    assert len(runs[0] & runs[1]) < 10  # another seed draws other problems, not the same ones in another order
    assert lab.finetune_problems(args, 0, held) == lab.finetune_problems(args, 0, held)
    replay = lab.finetune_problems(lab.parse_args(["--out", str(tmp_path), "--n_train", "40", "--replay", "0.25",
                                                   "--n_test", "30", "--n_val", "20", "--n_pretrain", "500"]), 0, held)
    assert sum(p["question"].count("+") == 1 for p in replay) == 10  # skill A: a+b; skill B: a+b+1


def test_pretraining_shows_the_filler_words_on_the_fraction_asked(tmp_path):
    """The filler must be in the pre-trained model's repertoire (as real connectives are in an LLM's), on about
    --pretrain_filler of skill A, and the same in the replay; A's held-out splits stay without it."""
    for fraction in (0.0, 0.5):
        args = lab.parse_args(["--out", str(tmp_path), "--n_test", "30", "--n_val", "20", "--n_pretrain", "2000",
                               "--n_train", "400", "--pretrain_filler", str(fraction)])
        held = lab.held_out(args)
        with_filler = [("f" in p["label"]) for p in held["pretrain"]]
        assert abs(np.mean(with_filler) - fraction) < 0.04
        for p in held["pretrain"]:  # all of a problem's lines or none of them
            lines = p["answer"].split("\n")[:-1]
            assert sum(line.split(" ")[0] in lab.FILLERS for line in lines) == len(lines) * ("f" in p["label"])
        replay = [p for p in lab.finetune_problems(args, 0, held) if p["question"].count("+") == 1]
        assert abs(np.mean([("f" in p["label"]) for p in replay]) - fraction) < 0.1
        assert not any("f" in p["label"] for p in held["a_test"] + held["a_val"])


def test_tokenizer_round_trip_and_oracle_mask(tmp_path):
    tok = lab.char_tokenizer()
    tok.save(tmp_path / "tok")
    loaded = load_tokenizer(str(tmp_path / "tok"))
    text = "Question: 385+47+1\nAnswer: hence 5+7+1=13\n#### 433"
    assert loaded.fingerprint == tok.fingerprint and loaded.encode(text) == tok.encode(text)
    assert len(tok.encode(text)) == len(text) and loaded.eos_id == tok.eos_id

    args = small_args(tmp_path)
    held = lab.held_out(args)
    folders = {c: lab.finetune_data(args, c, 0, held, tok) for c in ("filler", "oracle", "plain")}
    split = {c: load_split(folders[c][0], "train", 256) for c in folders}
    filler, oracle = split["filler"], split["oracle"]
    assert np.array_equal(filler["ids"], oracle["ids"])
    dropped = np.flatnonzero(np.asarray(filler["mask"]) != np.asarray(oracle["mask"]))
    # exactly the filler characters lose their loss, and every one of them does
    assert tok.decode(np.asarray(filler["ids"])[dropped].tolist()).replace(" ", "") == "".join(
        w for p in folders["oracle"][1] for w in re.findall(r"([a-z]+) ", p["answer"]))
    assert np.asarray(oracle["mask"]).sum() == np.asarray(split["plain"]["mask"]).sum()


def test_quick_is_one_lr_two_seeds_four_variants_and_no_controls_unless_asked():
    quick, full = lab.parse_args(["--quick"]), lab.parse_args([])
    assert (quick.lrs, quick.seeds, quick.controls) == ([8e-4], [0, 1], False)
    assert quick.variants == ["sft", "dft", "profit", "prift-prob"]
    assert full.controls and full.variants == list(lab.VARIANTS) and len(full.lrs) == 3 and len(full.seeds) == 4
    assert lab.parse_args(["--quick", "--controls", "--variants", "sft", "dft"]).controls


def test_quick_end_to_end_and_resume(tmp_path, capsys):
    argv = ["--quick", "--controls", "--out", str(tmp_path), "--pretrain_dir", str(tmp_path), "--variants", "sft", "profit", "prift-mass", "--n_pretrain", "2000",
            "--pretrain_steps", "20", "--n_test", "16", "--n_val", "16", "--n_measure", "16", "--n_train", "24",
            "--epochs", "1", "--no_gate"]
    lab.main(argv)
    report = (tmp_path / "results.md").read_text()
    for name in ("sft", "profit", "prift-mass", "oracle-sft", "pre-trained", "filler data", "plain data"):
        assert name in report
    assert (tmp_path / "learned_vs_retained.png").stat().st_size > 0 and (tmp_path / "kept_by_class.png").exists()
    test = json.loads((tmp_path / "runs/filler/oracle-sft/lr0.0008-s1/test.json").read_text())
    assert test["weights"]["f"]["kept"] == 0 and 0 <= test["learned"] <= 1 and test["kl"] >= 0
    profit = json.loads((tmp_path / "runs/filler/profit/lr0.0008-s0/test.json").read_text())
    assert set(profit["weights"]) == {"f", "c"} and set(profit["nll"]) == {"f", "c"}
    # resumable: a second invocation trains nothing and writes the same table
    capsys.readouterr()
    lab.main(argv)
    assert "python train.py" not in capsys.readouterr().out
    assert (tmp_path / "results.md").read_text().split("\n")[4:] == report.split("\n")[4:]
