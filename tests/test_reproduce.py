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


def test_learning_rate_chosen_by_validation_acc_norm_then_nll(monkeypatch):
    val = {1e-4: (0.60, 1.2), 3e-4: (0.62, 1.4), 1e-3: (0.62, 1.3)}  # lr -> (val acc_norm, val NLL)
    monkeypatch.setattr(reproduce, "train", lambda name, lr, seed, args: str(lr))
    monkeypatch.setattr(reproduce, "evaluate", lambda out, folder, split, args: {
        "gsm8k_mc": {"acc_norm": val[float(out)][0]}, "gsm8k_classes": {"nll": val[float(out)][1]}})
    args = type("A", (), {"lrs": list(val), "seeds": [1]})
    lr, rows = reproduce.choose_lr("dft", args)
    assert lr == 1e-3 and [r[0] for r in rows] == list(val)  # the tie at 62% goes to the lower NLL


def test_table_reports_the_non_objective_measures():
    r = {"gsm8k_classes": {"nll": 1.0, "calc": {"nll": 2.0}}, "gsm8k_mc": {"acc_norm": 0.5}, "kl": {"kl": 0.01}}
    s = {**r, "gsm8k_mc": {"acc_norm": 0.7}}
    text = reproduce.table(r, {"sft": [(r, 1.0), (s, 1.0)]}, {"sft": "1e-4"})
    head, _, base, sft = text.splitlines()
    assert "NLL calc" in head and "MC acc_norm" in head and "KL(base‖model)" in head
    assert "| sft | 1e-4 | 2 | 1.000 ± 0.000 |" in sft and "60.0% ± 14.1%" in sft and base.startswith("| base | – | – |")
