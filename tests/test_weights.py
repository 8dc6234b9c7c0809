import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from weights import (RULES, check_rule, reference_loss, signal_of, target_signals, token_weights,  # noqa: E402
                     weighted_loss)

DTYPES = (torch.float32, torch.bfloat16)
# every (rule, hyper, signal) combination whose weights are deterministic
CONFIGS = [('sft', {}, 'online'), ('dft', {}, 'online'), ('dft', {}, 'prior'), ('infosft', {}, 'online'),
           ('infosft', {}, 'prior'), ('profit', {}, 'online'), ('profit', dict(profit_tau=0.02), 'online'),
           ('profit', dict(profit_direction='lower', profit_tau=0.02), 'prior'),
           ('profit', dict(profit_direction='middle', profit_tau=0.01, profit_tau_high=0.05), 'online'),
           ('prift', dict(prift_mode='mass'), 'prior'), ('prift', dict(prift_mode='prob'), 'prior')]


def around(x, dtype):
    """The representable neighbours below and above x in dtype, and x itself."""
    t = torch.tensor(x, dtype=dtype)
    return torch.stack([torch.nextafter(t, torch.tensor(-1.0, dtype=dtype)), t,
                        torch.nextafter(t, torch.tensor(2.0, dtype=dtype))])


def infosft_paper(p, P=0.93):
    """The paper's form p * [C - logit(p)]_+, divided by C as the official code does, in float64."""
    C = math.log(P / (1 - P))
    return p * max(C - math.log(p / (1 - p)), 0.0) / C


# ---- the rules at hand-computed points

@pytest.mark.parametrize('dtype', DTYPES)
def test_infosft_table(dtype):
    table = {0.01: 0.0278, 0.1: 0.1849, 0.3: 0.3983, 0.5: 0.5, 0.7: 0.4707, 0.9: 0.1355}  # METHODS.md (InfoSFT)
    p = torch.tensor(list(table), dtype=dtype)
    w = token_weights('infosft', p)
    assert w.dtype == torch.float32
    if dtype == torch.float32:
        assert torch.allclose(w, torch.tensor(list(table.values())), atol=5e-5)
    expected = [infosft_paper(x) for x in p.double().tolist()]  # at the values bf16 can hold
    assert torch.allclose(w.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-7)


def test_infosft_shape_and_edges():
    p = torch.linspace(0, 1, 100001)
    w = token_weights('infosft', p)
    assert torch.isfinite(w).all() and (w >= 0).all()
    assert abs(w.max().item() - 0.508) < 1e-3 and abs(p[w.argmax()].item() - 0.568) < 1e-3  # METHODS.md (InfoSFT)
    assert (w[p >= 0.93] == 0).all() and (w[(p > 0) & (p < 0.93)] > 0).all()
    tiny = torch.tensor([0.0, 1e-45, 1e-38, 1e-20, 1.0])
    w = token_weights('infosft', tiny)
    assert torch.isfinite(w).all() and w[0] == 0 and w[-1] == 0 and (w[1:4] > 0).all()
    assert w[3].item() == pytest.approx(infosft_paper(1e-20), rel=1e-5)
    assert token_weights('infosft', torch.tensor([0.8]), infosft_P=0.8).item() == 0.0
    assert token_weights('infosft', torch.tensor([0.7]), infosft_P=0.8).item() == pytest.approx(
        infosft_paper(0.7, 0.8), rel=1e-5)


@pytest.mark.parametrize('dtype', DTYPES)
def test_sft_dft(dtype):
    p = torch.tensor([0.0, 0.125, 0.5, 1.0], dtype=dtype)
    assert token_weights('sft', p).tolist() == [1.0] * 4
    assert token_weights('dft', p).tolist() == [0.0, 0.125, 0.5, 1.0]
    assert token_weights('dft', p).dtype == torch.float32


@pytest.mark.parametrize('dtype', DTYPES)
def test_profit_boundaries(dtype):
    p = around(0.25, dtype)  # just below, at, just above tau
    assert token_weights('profit', p, profit_tau=0.25).tolist() == [0, 1, 1]  # keeps p >= tau (paper: >)
    assert token_weights('profit', p, profit_tau=0.25, profit_direction='lower').tolist() == [1, 1, 0]
    p = torch.cat([around(0.25, dtype), around(0.5, dtype)])
    w = token_weights('profit', p, profit_tau=0.25, profit_tau_high=0.5, profit_direction='middle')
    assert w.tolist() == [0, 1, 1, 1, 1, 0]
    p = around(0.1, torch.float32)  # the default tau, compared in float32 like the p of a float32 forward
    assert token_weights('profit', p).tolist() == [0, 1, 1]


def test_profit_random():
    torch.manual_seed(0)
    n = 200_000
    for p in (torch.zeros(n), torch.ones(n)):  # the draw ignores p
        w = token_weights('profit', p, profit_tau=0.3, profit_direction='random')
        assert set(w.unique().tolist()) <= {0.0, 1.0}
        assert abs((w == 0).float().mean().item() - 0.3) < 0.005  # drops with probability tau
    assert (token_weights('profit', torch.rand(100), profit_tau=0.0, profit_direction='random') == 1).all()
    assert (token_weights('profit', torch.rand(100), profit_tau=1.0, profit_direction='random') == 0).all()


@pytest.mark.parametrize('dtype', DTYPES)
def test_prift(dtype):
    p = torch.tensor([0.1, 0.9, 0.3])
    assert token_weights('prift', p, around(0.5, dtype)).tolist() == [0, 1, 1]  # u >= 0.5
    assert token_weights('prift', p, around(0.25, dtype), prift_tau=0.25).tolist() == [0, 1, 1]
    assert torch.equal(token_weights('prift', p.to(dtype), prift_mode='prob'), p.to(dtype).float())
    with pytest.raises(ValueError, match="needs u"):
        token_weights('prift', p)


def test_weights_are_detached():
    p = torch.rand(5, requires_grad=True)
    u = torch.rand(5, requires_grad=True)
    for rule in RULES:
        assert not token_weights(rule, p, u).requires_grad


# ---- target_signals: the prior's p and mass u

def mass_stat(logits, targets, **kw):
    """u read off logits (..., V): target_signals with the identity as the output matrix."""
    return target_signals(logits, torch.eye(logits.size(-1), dtype=logits.dtype), targets, **kw)[1]


def test_mass_stat_ties_by_hand():
    probs = [0.4, 0.2, 0.2, 0.1, 0.1]
    logits = torch.tensor(probs).log().repeat(5, 1)
    u = mass_stat(logits, torch.arange(5))
    # strict <: a token tied with the target is left out (the README's <= would give 0.6, 0.6, 0.2, 0.2)
    assert torch.allclose(u, torch.tensor([1.0, 0.4, 0.4, 0.1, 0.1]), atol=1e-6)
    assert u.dtype == torch.float32


def brute_mass(logits, targets):
    probs = torch.softmax(logits.float(), -1).reshape(-1, logits.size(-1)).tolist()
    out = []
    for row, y in zip(probs, targets.reshape(-1).tolist()):
        out.append(sum(q for q in row if q < row[y]) + row[y])
    return torch.tensor(out, dtype=torch.float64).view(targets.shape)


@pytest.mark.parametrize('dtype', DTYPES)
def test_mass_stat_brute_force(dtype):
    torch.manual_seed(1)
    logits = (3 * torch.randn(3, 7, 40)).to(dtype)  # bf16 logits bring many exact ties
    targets = torch.randint(40, (3, 7))
    targets[0, 0] = logits[0, 0].float().argmax()
    u = mass_stat(logits, targets, chunk_size=4)  # 4 does not divide 21 positions
    assert u.shape == targets.shape and u.dtype == torch.float32
    assert torch.allclose(u.double(), brute_mass(logits, targets), atol=1e-6)
    assert abs(u[0, 0].item() - 1.0) < 1e-6  # the argmax is always kept


def test_target_signals():
    torch.manual_seed(2)
    h, W = torch.randn(2, 9, 8), torch.randn(30, 8)
    y = torch.randint(30, (2, 9))
    y[1, -2:] = -1  # padding
    p, u = target_signals(h, W, y, chunk_size=5)
    logits = h @ W.T
    ce = F.cross_entropy(logits.view(-1, 30), y.view(-1).clamp_min(0), reduction='none').view(2, 9)
    valid = y >= 0
    assert torch.allclose(p[valid], torch.exp(-ce)[valid], rtol=1e-5)
    assert torch.allclose(u[valid].double(), brute_mass(logits, y.clamp_min(0))[valid], atol=1e-6)
    assert (p[~valid] == 0).all() and (u[~valid] == 0).all() and p.dtype == u.dtype == torch.float32


# ---- weighted_loss against independent computations

def batch(B=3, T=11, C=16, V=50, seed=0, frac=0.7):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, C, generator=g)
    W = 0.5 * torch.randn(V, C, generator=g)
    y = torch.randint(V, (B, T), generator=g)
    m = torch.rand(B, T, generator=g) < frac
    prior = dict(p_prior=torch.rand(B, T, generator=g) ** 3, u_prior=torch.rand(B, T, generator=g))
    return h, W, y, m, prior


def reference(h, W, y, m, n, rule, signal, prior, hyper, autocast=False):
    """weights.reference_loss: plain autograd over the full logits, the loss train.py --loss=reference trains on."""
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        logits = F.linear(h, W)
    return reference_loss(logits, y, m.float(), n, rule, signal, prior.get('p_prior'), prior['u_prior'], **hyper)[0]


@pytest.mark.parametrize('rule,hyper,signal', CONFIGS)
def test_chunked_equals_unchunked(rule, hyper, signal):
    h, W, y, m, prior = batch()
    n = int(m.sum()) + 5  # other micro-batches of the step hold 5 more tokens
    h.requires_grad_(), W.requires_grad_()
    ref = reference(h, W, y, m, n, rule, signal, prior, hyper)
    ref_h, ref_W = torch.autograd.grad(ref, (h, W))
    assert ref.item() != 0  # the configuration keeps some tokens
    for chunk in (1, 4, 7, 1000):  # none divides the ~23 supervised tokens
        loss, stats = weighted_loss(h, W, y, m, n, rule, signal, chunk_size=chunk, **prior, **hyper)
        gh, gW = torch.autograd.grad(loss, (h, W))
        assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-7)
        assert torch.allclose(gh, ref_h, rtol=1e-4, atol=1e-7) and torch.allclose(gW, ref_W, rtol=1e-4, atol=1e-7)
        assert (gh[~m] == 0).all()


@pytest.mark.parametrize('rule,hyper,signal', CONFIGS[:6] + CONFIGS[-2:])
def test_bf16(rule, hyper, signal):
    h, W, y, m, prior = batch(C=32, V=64)
    n = int(m.sum())
    W.requires_grad_()
    hb = h.bfloat16().requires_grad_()
    for autocast in (False, True):  # bf16 hidden states alone, and under autocast (fp32 W cast to bf16)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            loss, _ = weighted_loss(hb, W, y, m, n, rule, signal, chunk_size=5, **prior, **hyper)
        gh, gW = torch.autograd.grad(loss, (hb, W))
        assert gh.dtype == torch.bfloat16 and gW.dtype == torch.float32 and loss.dtype == torch.float32
        ref = reference(hb, W.bfloat16() if not autocast else W, y, m, n, rule, signal, prior, hyper, autocast)
        ref_h, ref_W = torch.autograd.grad(ref, (hb, W))
        assert torch.allclose(loss, ref, rtol=1e-5)
        scale_h, scale_W = ref_h.abs().max().float(), ref_W.abs().max()
        assert ((gh.float() - ref_h.float()).abs().max() / scale_h) < 1e-3
        assert ((gW - ref_W.float()).abs().max() / scale_W) < 1e-2  # the reference rounds grad_W to bf16 once


@pytest.mark.parametrize('rule,hyper,signal', CONFIGS)
def test_gradient_wrt_logits(rule, hyper, signal):
    """With W = identity the hidden states are the logits: grad = w * (softmax - onehot) / N, by hand."""
    V = 12
    _, _, y, m, prior = batch(B=2, T=5, V=V, seed=3)
    logits = (2 * torch.randn(2, 5, V, generator=torch.Generator().manual_seed(4))).requires_grad_()
    n = int(m.sum()) + 3
    loss, _ = weighted_loss(logits, torch.eye(V), y, m, n, rule, signal, chunk_size=3, **prior, **hyper)
    (grad,) = torch.autograd.grad(loss, logits)
    soft = torch.softmax(logits.detach().double(), -1)
    p = prior['p_prior'] if rule == 'prift' or signal == 'prior' else soft.gather(-1, y[..., None])[..., 0].float()
    w = token_weights(rule, p, prior['u_prior'], **hyper).double()
    expected = (w * m)[..., None] * (soft - F.one_hot(y, V)) / n
    assert torch.allclose(grad.double(), expected, atol=1e-7)


def test_weights_not_differentiated():
    """DFT's loss is p*CE with p detached: the gradient is p * dCE, not d(p*CE) with p = exp(-CE)."""
    h, W, y, m, _ = batch()
    h.requires_grad_()
    loss, _ = weighted_loss(h, W, y, m, int(m.sum()), 'dft')
    (grad,) = torch.autograd.grad(loss, h)
    ce = F.cross_entropy((h @ W.T).flatten(0, 1), y.flatten(), reduction='none').view(y.shape)
    detached = torch.autograd.grad((torch.exp(-ce).detach() * ce * m).sum() / m.sum(), h, retain_graph=True)[0]
    attached = torch.autograd.grad((torch.exp(-ce) * ce * m).sum() / m.sum(), h)[0]
    assert torch.allclose(grad, detached, rtol=1e-4, atol=1e-8)
    assert not torch.allclose(grad, attached, rtol=1e-2)


@pytest.mark.parametrize('rule', ['sft', 'infosft'])
def test_micro_batches_sum_to_one_batch(rule):
    h, W, y, m, _ = batch(B=2, T=13)
    m[0, :6] = False  # the two rows hold different token counts
    n = int(m.sum())
    h.requires_grad_(), W.requires_grad_()
    whole, _ = weighted_loss(h, W, y, m, n, rule, chunk_size=4)
    gh, gW = torch.autograd.grad(whole, (h, W))
    parts = [weighted_loss(h[i:i + 1], W, y[i:i + 1], m[i:i + 1], n, rule, chunk_size=4)[0] for i in range(2)]
    ph, pW = torch.autograd.grad(parts[0] + parts[1], (h, W))
    assert torch.allclose(parts[0] + parts[1], whole, rtol=1e-6)
    # gW sums over chunks that the two calls cut differently: float32 rounding, at the scale of gW's largest entry
    assert torch.allclose(ph, gh, atol=1e-8) and torch.allclose(pW, gW, rtol=1e-5, atol=1e-6 * gW.abs().max())


def test_upstream_gradient_scales():
    """The loss inside a larger expression: backward multiplies by the incoming gradient."""
    h, W, y, m, _ = batch()
    h.requires_grad_(), W.requires_grad_()
    n = int(m.sum())
    gh, gW = torch.autograd.grad(weighted_loss(h, W, y, m, n, 'infosft')[0], (h, W))
    loss, _ = weighted_loss(h, W, y, m, n, 'infosft')
    sh, sW = torch.autograd.grad(3 * loss + h.sum(), (h, W))
    assert torch.allclose(sh, 3 * gh + 1, rtol=1e-6) and torch.allclose(sW, 3 * gW, rtol=1e-6)


def test_stats():
    h, W, y, m, prior = batch()
    loss, stats = weighted_loss(h, W, y, m, int(m.sum()), 'prift', 'prior', **prior)
    ce = F.cross_entropy((h @ W.T).flatten(0, 1), y.flatten(), reduction='none').view(y.shape)
    w = (prior['u_prior'] >= 0.5).float()
    assert torch.allclose(stats['ce_sum'], ce[m].sum(), rtol=1e-5)
    assert stats['weight_sum'].item() == w[m].sum().item() and stats['kept'].item() == int(w[m].sum())
    assert stats['tokens'].item() == int(m.sum())
    assert not any(v.requires_grad for v in stats.values())


@pytest.mark.parametrize('rule,hyper,signal', CONFIGS)
def test_no_supervised_tokens(rule, hyper, signal):
    h, W, y, m, prior = batch()
    h.requires_grad_(), W.requires_grad_()
    for n in (0, 17):  # nothing in the whole step, or nothing in this micro-batch only
        loss, stats = weighted_loss(h, W, y, torch.zeros_like(m), n, rule, signal, **prior, **hyper)
        gh, gW = torch.autograd.grad(loss, (h, W))
        assert loss.item() == 0 and (gh == 0).all() and (gW == 0).all() and stats['tokens'].item() == 0


def test_no_grad_mode():
    h, W, y, m, _ = batch()
    h.requires_grad_()
    with torch.no_grad():
        loss, _ = weighted_loss(h, W, y, m, int(m.sum()), 'infosft')
    assert not loss.requires_grad
    assert torch.allclose(loss, reference(h, W, y, m, int(m.sum()), 'infosft', 'online', {'u_prior': None}, {}))


# ---- bad input

@pytest.mark.parametrize('kwargs,message', [
    (dict(rule='dtf'), "unknown rule 'dtf': choose one of sft, dft, infosft, profit, prift"),
    (dict(rule='dft', signal='offline'), "unknown signal 'offline': choose one of online, prior"),
    (dict(rule='profit', profit_taw=0.2), "unknown hyperparameter 'profit_taw'"),
    (dict(rule='infosft', infosft_P=0.5), r"infosft_P=0.5 must lie in \(0.5, 1\)"),
    (dict(rule='infosft', infosft_P=1.0), r"infosft_P=1.0 must lie in \(0.5, 1\)"),
    (dict(rule='profit', profit_tau=-0.1), r"profit_tau=-0.1 must lie in \[0, 1\]"),
    (dict(rule='prift', prift_tau=1.5), r"prift_tau=1.5 must lie in \[0, 1\]"),
    (dict(rule='profit', profit_direction='up'), "unknown profit_direction 'up': choose one of higher, lower"),
    (dict(rule='prift', prift_mode='top'), "unknown prift_mode 'top': choose one of mass, prob"),
    (dict(rule='profit', profit_direction='middle', profit_tau=0.5, profit_tau_high=0.4), "pass profit_tau_high in"),
])
def test_check_rule_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_rule(**kwargs)


def test_token_weights_refuses_what_it_cannot_compute():
    p = torch.rand(4)
    with pytest.raises(ValueError, match="unknown rule 'dtf'"):
        token_weights('dtf', p)
    with pytest.raises(ValueError, match="unknown profit_direction 'up'"):
        token_weights('profit', p, profit_direction='up')
    with pytest.raises(TypeError, match="profit_taw"):
        token_weights('profit', p, profit_taw=0.2)
    with pytest.raises(ValueError, match="needs u"):
        token_weights('prift', p)


def test_check_rule_accepts_defaults():
    for rule in RULES:
        for signal in ('online', 'prior'):
            check_rule(rule, signal)


def test_weighted_loss_errors():
    h, W, y, m, prior = batch()
    n = int(m.sum())
    with pytest.raises(ValueError, match="needs u_prior"):
        weighted_loss(h, W, y, m, n, 'prift', 'prior', p_prior=prior['p_prior'])
    with pytest.raises(ValueError, match="needs p_prior"):
        weighted_loss(h, W, y, m, n, 'prift', prift_mode='prob')
    with pytest.raises(ValueError, match="needs p_prior"):
        weighted_loss(h, W, y, m, n, 'dft', 'prior')
    with pytest.raises(ValueError, match="p_prior has shape"):
        weighted_loss(h, W, y, m, n, 'dft', 'prior', p_prior=prior['p_prior'][:, :-1])
    with pytest.raises(ValueError, match=f"n_tokens={n - 1} is below this call's {n} supervised tokens"):
        weighted_loss(h, W, y, m, n - 1)
    with pytest.raises(ValueError, match="shapes do not match"):
        weighted_loss(h, W[:, :-1], y, m, n)
    with pytest.raises(ValueError, match="shapes do not match"):
        weighted_loss(h, W, y, m[:, :-1], n)
    y[~m] = -100  # padding targets outside the vocabulary are fine when masked
    y[m] = 3
    weighted_loss(h, W, y, m, n)


def test_signal_of_names_what_each_rule_reads():
    assert [signal_of(r, 'online') for r in RULES] == [None, 'online', 'online', 'online', 'prior']
    assert [signal_of(r, 'prior') for r in RULES] == [None, 'prior', 'prior', 'prior', 'prior']
