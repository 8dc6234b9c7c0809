"""
Token-weighted cross-entropy for supervised fine-tuning: SFT, DFT, InfoSFT, ProFit and PriFT.

Every rule is a detached weight w_t on the cross-entropy CE_t of each supervised target token y_t:

    loss = sum_t w_t * CE_t * m_t / n_tokens

n_tokens counts the supervised tokens of the whole optimizer step (all micro-batches and ranks), so every token
weighs the same whichever micro-batch it lands in; the official codes differ here (METHODS.md, "Normalisation").
w_t is a function of p, the probability of y_t under a *signal* model: 'online' is the model being trained
(p = exp(-CE_t) of the same forward), 'prior' is the frozen initial model (p_prior and u_prior, precomputed once
with target_signals). Formulas, defaults and sources: METHODS.md.

weighted_loss fuses the lm_head matmul with the loss, chunk by chunk, so float32 logits never exist for the
whole batch: peak extra memory is O(chunk_size * vocab) whatever the batch.
"""
import math

import torch

RULES = ('sft', 'dft', 'infosft', 'profit', 'prift')
SIGNALS = ('online', 'prior')
DIRECTIONS = ('higher', 'lower', 'middle', 'random')
MODES = ('mass', 'prob')
DEFAULTS = dict(infosft_P=0.93, profit_tau=0.1, profit_tau_high=None, profit_direction='higher',
                prift_mode='mass', prift_tau=0.5)
CHUNK = 2048  # positions per chunk: 2048 x 49152 float32 logits = 400 MB


def check_rule(rule, signal='online', **hyper):
    """Raise ValueError with a one-line message when the configuration is not valid (call it at startup)."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}: choose one of {', '.join(RULES)}")
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}: choose one of {', '.join(SIGNALS)}")
    unknown = sorted(set(hyper) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown hyperparameter {unknown[0]!r}: valid ones are {', '.join(DEFAULTS)}")
    h = {**DEFAULTS, **hyper}
    if not 0.5 < h['infosft_P'] < 1:
        raise ValueError(f"infosft_P={h['infosft_P']} must lie in (0.5, 1) so that C = logit(P) > 0 (paper: 0.93)")
    for k in ('profit_tau', 'prift_tau', 'profit_tau_high'):
        if h[k] is not None and not 0 <= h[k] <= 1:
            raise ValueError(f"{k}={h[k]} must lie in [0, 1]")
    if h['profit_direction'] not in DIRECTIONS:
        raise ValueError(f"unknown profit_direction {h['profit_direction']!r}: choose one of {', '.join(DIRECTIONS)}")
    if h['prift_mode'] not in MODES:
        raise ValueError(f"unknown prift_mode {h['prift_mode']!r}: choose one of {', '.join(MODES)}")
    if h['profit_direction'] == 'middle' and (h['profit_tau_high'] is None or h['profit_tau_high'] < h['profit_tau']):
        raise ValueError(f"profit_direction='middle' keeps profit_tau <= p <= profit_tau_high: "
                         f"pass profit_tau_high in [{h['profit_tau']}, 1] (got {h['profit_tau_high']})")


def signal_of(rule, signal):
    """The signal a rule really reads: None for sft (w = 1 reads no p), always 'prior' for prift."""
    return None if rule == 'sft' else 'prior' if rule == 'prift' else signal


def token_weights(rule, p, u=None, **hyper):
    """Detached float32 weights shaped like p; p (and u, for prift mass) come from the signal model.
    profit_direction='random' draws from torch's global generator: seed it for reproducible runs."""
    check_rule(rule, **hyper)
    h = {**DEFAULTS, **hyper}
    p = p.detach().float()
    if rule == 'sft':
        return torch.ones_like(p)
    if rule == 'dft':
        return p
    if rule == 'infosft':
        # the official code's normalized form of the paper's p * [C - logit(p)]_+: w(0.5) = 0.5, w = 0 for p >= P.
        # clamp_min keeps the logit finite at p = 0 (w = 0 * finite = 0, not 0 * inf); at p = 1 it is inf and relu
        # gives 0. log(q / (1 - q)) rather than torch.logit, which is slow on small CPU tensors.
        C = math.log(h['infosft_P'] / (1 - h['infosft_P']))
        q = p.clamp_min(torch.finfo(p.dtype).tiny)
        return p * torch.relu(1 - torch.log(q / (1 - q)) / C)
    if rule == 'profit':
        tau, direction = h['profit_tau'], h['profit_direction']
        if direction == 'higher':
            keep = p >= tau  # the paper writes p > tau; the official code keeps the boundary
        elif direction == 'lower':
            keep = p <= tau
        elif direction == 'middle':
            keep = (p >= tau) & (p <= h['profit_tau_high'])
        else:  # 'random' ignores p and drops each token with probability tau, as the official code does
            keep = torch.rand_like(p) >= tau
        return keep.float()
    if h['prift_mode'] == 'prob':  # prift: PriFT-prob is DFT with the prior signal
        return p
    if u is None:
        raise ValueError("prift_mode='mass' needs u, the prior mass of each target (see target_signals)")
    return (u.detach().float() >= h['prift_tau']).float()  # u >= 0.5 <=> y inside the prior's top-p=0.5 nucleus


def _signals(logits, y):
    """(p, u) of targets y under float32 logits (n, V); u sums p(v) over p(v) < p(y) (strict, as the official
    PriFT code: ties with the target are left out), plus p(y). Negative targets (padding) give p = u = 0."""
    probs = torch.softmax(logits.float(), dim=-1)
    valid = y >= 0
    py = probs.gather(1, y.clamp_min(0)[:, None])
    u = torch.where(probs < py, probs, 0).sum(1) + py[:, 0]
    return torch.where(valid, py[:, 0], 0), torch.where(valid, u, 0)


@torch.no_grad()
def mass_stat(logits, targets, chunk_size=CHUNK):
    """u for each position of logits (..., V) and targets (...), float32, chunked over positions."""
    x, y = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
    u = torch.empty(y.shape, dtype=torch.float32, device=logits.device)
    for i in range(0, len(y), chunk_size):
        u[i:i + chunk_size] = _signals(x[i:i + chunk_size], y[i:i + chunk_size])[1]
    return u.view(targets.shape)


def _compute_dtype(x):
    """The matmul dtype: autocast's when it is on (as F.linear would), else the hidden states' own."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


@torch.no_grad()
def target_signals(hidden, lm_head_weight, targets, chunk_size=CHUNK):
    """(p, u) float32 shaped like targets: the probability and the mass of each target under this model."""
    dt = _compute_dtype(hidden)
    x, y = hidden.reshape(-1, hidden.size(-1)).to(dt), targets.reshape(-1)
    W = lm_head_weight.to(dt)
    p, u = (torch.empty(y.shape, dtype=torch.float32, device=hidden.device) for _ in range(2))
    with torch.autocast(hidden.device.type, enabled=False):
        for i in range(0, len(y), chunk_size):
            s = slice(i, i + chunk_size)
            p[s], u[s] = _signals(x[s] @ W.T, y[s])
    return p.view(targets.shape), u.view(targets.shape)


class _FusedWeightedCE(torch.autograd.Function):
    """lm_head + weighted CE over gathered supervised positions. The forward computes the gradients chunk by
    chunk (w detached, so d loss / d logits = w * (softmax - onehot) / n) and keeps only grad_h and grad_W."""

    @staticmethod
    def forward(ctx, h, W, y, p_sig, u_sig, n, dt, chunk_size, grad, rule, hyper):
        hd, Wd = h.to(dt), W.to(dt)
        need_h, need_W = grad and ctx.needs_input_grad[0], grad and ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hd) if need_h else None
        grad_W = None
        ce, w = (torch.empty(len(y), dtype=torch.float32, device=h.device) for _ in range(2))
        for i in range(0, len(y), chunk_size):
            s = slice(i, i + chunk_size)
            logits = (hd[s] @ Wd.T).float()
            target = logits.gather(1, y[s, None])
            top = logits.amax(1, keepdim=True)
            e = logits.sub_(top).exp_()  # unnormalised softmax, in place of the logits
            total = e.sum(1, keepdim=True)
            ce[s] = (top + total.log() - target)[:, 0]
            p = torch.exp(-ce[s]) if p_sig is None else p_sig[s]  # online p: detached, from this very forward
            w[s] = token_weights(rule, p, None if u_sig is None else u_sig[s], **hyper)
            if need_h or need_W:
                scale = w[s, None] / n
                g = e.mul_(scale / total).scatter_add_(1, y[s, None], -scale).to(dt)  # w * (softmax - onehot) / n
                if need_h:
                    grad_h[s] = g @ Wd
                if need_W:
                    gW = (g.T @ hd[s]).float()  # accumulated over chunks in float32
                    grad_W = gW if grad_W is None else grad_W.add_(gW)
        if need_W and grad_W is None:  # no supervised token
            grad_W = torch.zeros(W.shape, dtype=torch.float32, device=W.device)
        ctx.save_for_backward(grad_h, grad_W)
        ctx.dtypes = h.dtype, W.dtype
        kept = (w > 0).sum()
        ctx.mark_non_differentiable(ce, w, kept)
        return (w * ce).sum() / n, ce, w, kept

    @staticmethod
    def backward(ctx, grad_loss, *_):
        grad_h, grad_W = ctx.saved_tensors
        # in place: these buffers serve this one backward (a second one fails loudly on their version counter)
        grad_h = None if grad_h is None else grad_h.mul_(grad_loss).to(ctx.dtypes[0])
        grad_W = None if grad_W is None else grad_W.mul_(grad_loss).to(ctx.dtypes[1])
        return grad_h, grad_W, *[None] * 9


def weighted_loss(hidden, lm_head_weight, targets, mask, n_tokens, rule='sft', signal='online', p_prior=None,
                  u_prior=None, chunk_size=CHUNK, **hyper):
    """(loss, stats): loss = sum(w * CE * mask) / n_tokens, differentiable w.r.t. hidden (B, T, C) and
    lm_head_weight (V, C); stats are detached sums over this call: ce_sum, weight_sum, kept (w > 0), tokens.
    targets, mask, p_prior, u_prior: (B, T). hyper: see DEFAULTS. chunk_size: positions per chunk (memory knob)."""
    check_rule(rule, signal, **hyper)
    h = {**DEFAULTS, **hyper}
    use_u = rule == 'prift' and h['prift_mode'] == 'mass'
    use_p = not use_u and signal_of(rule, signal) == 'prior'
    if use_p and p_prior is None:
        raise ValueError(f"rule={rule!r} with the prior signal needs p_prior (build the cache with target_signals)")
    if use_u and u_prior is None:
        raise ValueError("rule='prift' with prift_mode='mass' needs u_prior (build the cache with target_signals)")
    C, V = hidden.size(-1), lm_head_weight.size(0)
    if targets.shape != mask.shape or hidden.shape[:-1] != targets.shape or lm_head_weight.size(1) != C:
        raise ValueError(f"shapes do not match: hidden {tuple(hidden.shape)} must be targets/mask "
                         f"{tuple(targets.shape)}/{tuple(mask.shape)} + (C,), "
                         f"lm_head_weight {tuple(lm_head_weight.shape)} (V, C)")
    for name, t in (('p_prior', p_prior if use_p else None), ('u_prior', u_prior if use_u else None)):
        if t is not None and t.shape != targets.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected the targets' {tuple(targets.shape)}")
    idx = mask.reshape(-1).nonzero()[:, 0]  # supervised positions only: padding and prompts cost nothing
    sel = slice(None) if len(idx) == mask.numel() else idx  # all supervised: a view, no gather and scatter
    if n_tokens < len(idx):
        raise ValueError(f"n_tokens={n_tokens} is below this call's {len(idx)} supervised tokens: "
                         "pass the supervised tokens of the whole optimizer step")
    y = targets.reshape(-1)[sel]
    if len(y) and (y.min() < 0 or y.max() >= V):
        raise ValueError(f"supervised targets must lie in [0, {V}), got [{y.min().item()}, {y.max().item()}]")
    p_sig = p_prior.reshape(-1)[sel].float() if use_p else None
    u_sig = u_prior.reshape(-1)[sel].float() if use_u else None
    n = max(float(n_tokens), 1.0)  # no supervised token anywhere: the loss is 0/1 = 0, never 0/0
    dt = _compute_dtype(hidden)
    with torch.autocast(hidden.device.type, enabled=False):
        loss, ce, w, kept = _FusedWeightedCE.apply(hidden.reshape(-1, C)[sel], lm_head_weight, y, p_sig, u_sig,
                                                   n, dt, chunk_size, torch.is_grad_enabled(), rule, hyper)
    stats = dict(ce_sum=ce.sum(), weight_sum=w.sum(), kept=kept, tokens=torch.tensor(len(y), device=hidden.device))
    return loss, stats
