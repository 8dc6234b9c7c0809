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


def test_mean_ci_is_student_t_over_seeds():
    import report
    mean, half = report.mean_ci([1.0, 2.0, 4.0])  # std sqrt(7/3), t(2) = 4.303
    assert mean == 7 / 3 and abs(half - 4.303 * (7 / 3) ** 0.5 / 3 ** 0.5) < 1e-12


def test_paired_table_subtracts_sft_seed_by_seed():
    def run(acc, kl):
        return {"gsm8k_classes": {"nll": 1.0, "final": {"nll": 2.0}}, "gsm8k_mc": {"acc_norm": acc}, "kl": {"kl": kl}}
    # SFT's seeds differ by 0.2 in accuracy; DFT is 0.1 below SFT on every seed: the paired interval has no width
    results = {"sft": [(run(0.5, 0.01), 1.0), (run(0.7, 0.01), 1.0)],
               "dft": [(run(0.4, 0.03), 0.6), (run(0.6, 0.05), 0.6)]}
    head, _, dft = reproduce.paired_table(results, [("dft", "sft"), ("infosft", "sft")]).splitlines()  # no infosft: skipped
    assert head == "| variant | Δ NLL all | Δ NLL final | Δ MC acc_norm | Δ KL(base‖model) |"
    assert dft.startswith("| dft − sft | ")
    assert "| -10.0 [-10.0, -10.0] |" in dft  # points, not fractions
    assert "+0.0300 [-0.0971, +0.1571]" in dft  # mean 0.03, t(1) = 12.706 x 0.01414 / 1.414
