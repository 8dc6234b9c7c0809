"""bench.py's train section end to end on a tiny model: every variant, TRL's SFTTrainer and the ablations among them,
gets its tokens/s and its ratios as a median and a range over the interleaved rounds; the generate section on GSM8K
prompts, its ablations among the variants; the peak section's tables of oneDNN and packed weights."""
import re
import sys

import pytest

import bench
import cpu

ROW = re.compile(r"^(\w+) +(\d+) +(\d+\.\d\d) \[(\d+\.\d\d)-(\d+\.\d\d)\] +(\d+\.\d\d) \[(\d+\.\d\d)-(\d+\.\d\d)\]")


def test_train_section_reports_every_variant_with_its_spread(tiny_checkpoint, monkeypatch, capsys):
    folder, _ = tiny_checkpoint("llama")
    monkeypatch.setattr(sys, "argv", ["bench.py", "--only", "train", "--model", folder, "--train_batch", "2",
                                      "--train_seq", "8", "--warmup", "1", "--train_rounds", "2", "--ablations"])
    bench.main()
    out = capsys.readouterr().out
    assert "1 + 2 interleaved rounds" in out
    rows = {m[1]: m for m in map(ROW.match, out.splitlines()) if m}
    assert set(rows) == {"transformers", *bench.RULES, "sft_torch_mm", "sft_gqa", "trl"}
    for name, m in rows.items():
        median, low, high = (float(v) for v in m.groups()[2:5])
        assert low <= median <= high
    assert rows["transformers"].groups()[2:5] == ("1.00",) * 3 and rows["trl"].groups()[5:8] == ("1.00",) * 3


def test_generate_section_on_gsm8k_prompts_estimates_a_full_evaluation(tiny_checkpoint, monkeypatch, capsys):
    folder, _ = tiny_checkpoint("llama")
    monkeypatch.setattr(sys, "argv", ["bench.py", "--only", "generate", "--model", folder, "--gen_prompts", "gsm8k",
                                      "--gen_batch", "2", "--gen_tokens", "3", "--iters", "1", "--warmup", "0",
                                      "--dtype", "fp32", "--ablations"])
    bench.main()
    out = capsys.readouterr().out
    for ablation in bench.GEN_ABLATIONS:  # tokenwise against itself with one CPU choice undone
        assert re.search(rf"-- fp32: tokenwise [\d.]+ tokens/s, tokenwise_{ablation} [\d.]+ tokens/s, ratio ", out)
    if cpu.ONEDNN:
        assert re.search(r"-- fp32: packing the weights for 2 rows: \d+ ms", out)
    # the tiny model's 128-token context keeps each 5-shot prompt's last 125 tokens, as eval.py would
    assert "== generate: 2 gsm8k prompts of 125-125 tokens, 3 new tokens each" in out
    assert re.search(r"evaluation at this pace \(660 batches of 2 x 3 tokens\): tokenwise [\d.]+ min, "
                     r"transformers [\d.]+ min, transformers_static [\d.]+ min", out)


@pytest.mark.skipif(not cpu.ONEDNN, reason="no oneDNN linear on this machine")
def test_peak_tables_of_onednn_and_packed_weights_cover_every_shape(capsys):
    bench.onednn_vs_torch(rounds=1)
    bench.packed_vs_plain(['fp32'], rounds=1)
    out = capsys.readouterr().out
    assert len(re.findall(r"^ *(1024|8) x +\d+ -> +\d+ +x @ W\.T: torch +\d+, oneDNN +\d+ \(\d+\.\d\dx\)", out, re.M)) == 8
    assert len(re.findall(r"^fp32 +\d+ -> +\d+ +torch +[\d.]+, packed +[\d.]+ \(\d+\.\d\dx\)$", out, re.M)) == 4
