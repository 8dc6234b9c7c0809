"""train.py's data_seed: with max_examples, a seeded random draw of the training examples (reproduce.py's seeds
resample the data), and the first N without it."""
from types import SimpleNamespace

import numpy as np

import train
from test_train import PAIRS, write_prepared


def drawn(monkeypatch, folder, data_dir, **keys):
    cfg = train.configure([f"--init_from={folder}", f"--data_dir={data_dir}", "--eval_examples=2",
                           *[f"--{k}={v}" for k, v in keys.items()]])
    for k, v in cfg.items():  # the module globals main() would set, restored after the test
        monkeypatch.setattr(train, k, v)
    proc = SimpleNamespace(dev="cpu", master=True, ddp=False, reads=None)
    return train.load_model_and_data(proc)[2]["index"].tolist()


def test_data_seed_draws_a_seeded_subset(tiny_checkpoint, tmp_path, monkeypatch):
    from checkpoints import load_checkpoint
    folder = tiny_checkpoint("llama")[0]
    data_dir = write_prepared(str(tmp_path / "data"), load_checkpoint(folder)[1], PAIRS)
    assert drawn(monkeypatch, folder, data_dir, max_examples=3) == [0, 1, 2]  # data_seed=0: the first N
    a = drawn(monkeypatch, folder, data_dir, max_examples=3, data_seed=5)
    assert a == sorted(np.random.default_rng(5).permutation(len(PAIRS))[:3].tolist())
    assert a == drawn(monkeypatch, folder, data_dir, max_examples=3, data_seed=5)  # the same seed, the same draw
    draws = {tuple(drawn(monkeypatch, folder, data_dir, max_examples=3, data_seed=s)) for s in range(1, 6)}
    assert len(draws) > 1 and all(len(d) == 3 for d in draws)
    assert drawn(monkeypatch, folder, data_dir, data_seed=5) == list(range(len(PAIRS)))  # no max_examples: all
