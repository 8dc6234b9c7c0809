"""reproduce.py's table cells: mean ± sample standard deviation across seeds, missing metrics left out."""
import reproduce


def test_cell_is_mean_and_sample_std():
    assert reproduce.cell([1.0, 2.0, 4.0], ".3f", 1) == "2.333 ± 1.528"  # std with n − 1: sqrt(14/3 / 2)


def test_cell_scales_single_values_and_skips_missing():
    assert reproduce.cell([0.0625, None], ".1f", 100) == "6.2"
    assert reproduce.cell([None, None], ".1f", 100) == "–"
