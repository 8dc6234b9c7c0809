"""reproduce.py's table: mean ± sample standard deviation across seeds, missing metrics left out, mean weights."""
import json

import reproduce


def test_cell_is_mean_and_sample_std():
    assert reproduce.cell([1.0, 2.0, 4.0], ".3f", 1) == "2.333 ± 1.528"  # std with n − 1: sqrt(14/3 / 2)


def test_cell_scales_single_values_and_skips_missing():
    assert reproduce.cell([0.0625, None], ".1f", 100) == "6.2"
    assert reproduce.cell([None, None], ".1f", 100) == "–"


def test_mean_weight_averages_the_logged_steps_only(tmp_path):
    lines = [{"step": 0, "val_loss": 1.5}, {"step": 1, "loss": 0.1, "weight": 0.2}, {"step": 2, "loss": 0.1, "weight": 0.5}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert reproduce.mean_weight(str(tmp_path)) == 0.35
