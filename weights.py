"""
Token-weighted cross-entropy for supervised fine-tuning: SFT, DFT, InfoSFT, ProFit and PriFT. Every rule weighs the
cross-entropy CE_t of each supervised target token y_t (m_t = 1) by w_t = f(p_t), detached (no gradient through w):

    loss = sum_t w_t * CE_t * m_t / n_tokens

p_t is y_t's probability under a *signal* model: 'online', the model being trained (exp(-CE_t), same forward), or
'prior', the frozen initial model (PriFT; computed once by target_signals). n_tokens counts the supervised tokens of
the whole optimizer step, all micro-batches and ranks, so every token weighs the same wherever it lands; the official
codes differ here (METHODS.md: each rule's formula, defaults, sources and normalisation). Read in order:
token_weights (the rules), reference_loss (the method in ten lines), then weighted_loss, the fast path: the same loss
and gradients, chunk by chunk, never holding the batch's logits (tests/test_weights.py proves them equal).
"""
import math

import torch
import torch.nn.functional as F

from cpu import mm

RULES = ('sft', 'dft', 'infosft', 'profit', 'prift')
SIGNALS = ('online', 'prior')
DEFAULTS = dict(infosft_P=0.93, profit_tau=0.1, profit_tau_high=1.0, profit_direction='higher',
                prift_mode='mass', prift_tau=0.5)  # the official codes' defaults (METHODS.md)


# -----------------------------------------------------------------------------
# The rules: w = f(p)

def token_weights(rule, p, u=None, infosft_P=0.93, profit_tau=0.1, profit_tau_high=1.0, profit_direction='higher',
                  prift_mode='mass', prift_tau=0.5):
    """Float32 weights shaped like p, the signal model's probability of each target (u: prift mass only).
    Settings are checked once, by check_rule, where a run starts."""
    p = p.detach().float()
    if rule == 'sft':
        return torch.ones_like(p)
    if rule == 'dft':
        return p
    if rule == 'infosft':
        # The official code's normalised form of the paper's p * [C - logit(p)]_+: w(0.5) = 0.5 (as DFT), w = 0 for
        # p >= P, w -> 0 as p -> 0, so medium-confidence tokens weigh most. clamp_min keeps logit(0) finite
        # (0 * finite = 0, not 0 * inf); log(q / (1 - q)) because torch.logit is slow on small CPU tensors.
        C = math.log(infosft_P / (1 - infosft_P))
        q = p.clamp_min(torch.finfo(p.dtype).tiny)
        return p * torch.relu(1 - torch.log(q / (1 - q)) / C)
    if rule == 'profit':
        if profit_direction == 'higher':  # ProFit: drop the unlikely (replaceable) tokens
            keep = p >= profit_tau  # the paper writes p > tau; the official code keeps the boundary
        elif profit_direction == 'lower':  # the paper's ablation: keep only the unlikely ones
            keep = p <= profit_tau
        elif profit_direction == 'middle':
            keep = (p >= profit_tau) & (p <= profit_tau_high)
        elif profit_direction == 'random':  # ignores p: drops each token with probability tau, as the code does
            keep = torch.rand_like(p) >= profit_tau  # torch's global generator: seed it for reproducible runs
        else:
            raise ValueError(f"unknown profit_direction {profit_direction!r}")
        return keep.float()
    if rule == 'prift':  # p and u come from the frozen initial model
        if prift_mode == 'prob':  # PriFT-prob: DFT's weight, read from the prior
            return p
        if u is None:
            raise ValueError("prift_mode='mass' needs u, the prior mass of each target (see target_signals)")
        return (u.detach().float() >= prift_tau).float()  # u >= 0.5 <=> y lies in the prior's top-p=0.5 nucleus
    raise ValueError(f"unknown rule {rule!r}: choose one of {', '.join(RULES)}")


def signal_of(rule, signal):
    """The signal a rule really reads: None for sft (w = 1 reads no p), always 'prior' for prift."""
    return None if rule == 'sft' else 'prior' if rule == 'prift' else signal


def check_rule(rule, signal='online', **hyper):
    """Raise ValueError with a one-line message when a setting is not valid: call it once, where a run starts."""
    for name, value, options in (('rule', rule, RULES), ('signal', signal, SIGNALS)):
        if value not in options:
            raise ValueError(f"unknown {name} {value!r}: choose one of {', '.join(options)}")
    unknown = sorted(set(hyper) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown hyperparameter {unknown[0]!r}: valid ones are {', '.join(DEFAULTS)}")
    k = {**DEFAULTS, **hyper}
    if not 0.5 < k['infosft_P'] < 1:
        raise ValueError(f"infosft_P={k['infosft_P']} must lie in (0.5, 1) so that C = logit(P) > 0 (paper: 0.93)")
    for name in ('profit_tau', 'prift_tau', 'profit_tau_high'):
        if not 0 <= k[name] <= 1:
            raise ValueError(f"{name}={k[name]} must lie in [0, 1]")
    for name, options in (('profit_direction', ('higher', 'lower', 'middle', 'random')), ('prift_mode', ('mass', 'prob'))):
        if k[name] not in options:
            raise ValueError(f"unknown {name} {k[name]!r}: choose one of {', '.join(options)}")
    if k['profit_direction'] == 'middle' and k['profit_tau_high'] < k['profit_tau']:
        raise ValueError(f"profit_direction='middle' keeps profit_tau <= p <= profit_tau_high: "
                         f"pass profit_tau_high in [{k['profit_tau']}, 1] (got {k['profit_tau_high']})")


# -----------------------------------------------------------------------------
# The loss, as a learner reads it (train.py --loss=reference runs exactly this)

def reference_loss(logits, targets, mask, n_tokens, rule='sft', signal='online', p_prior=None, u_prior=None,
                   **hyper):
    """(loss, stats) from full logits (B, T, V): the method in plain autograd. stats as weighted_loss's."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction='none').view(targets.shape)
    online = signal_of(rule, signal) != 'prior'
    p = torch.exp(-ce).detach() if online else p_prior  # online: the model's own p, detached (w is a constant)
    w = token_weights(rule, p, u_prior, **hyper) * mask
    loss = (w * ce).sum() / max(n_tokens, 1)  # n_tokens: the whole step's supervised tokens, not this batch's
    stats = dict(ce_sum=(ce.detach() * mask).sum(), weight_sum=w.sum(), kept=(w > 0).sum(), tokens=(mask > 0).sum())
    return loss, stats


# -----------------------------------------------------------------------------
# Prior signals (PriFT): p and u of the frozen initial model, computed once per example (train.py caches them)

CHUNK = 2048  # positions per chunk: 2048 x 49152 float32 logits = 400 MB


def _compute_dtype(x):
    """The matmul dtype: autocast's when it is on (as F.linear would), else the hidden states' own."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


@torch.no_grad()
def target_signals(hidden, lm_head_weight, targets, chunk_size=CHUNK):
    """(p, u) float32 shaped like targets: each target's probability and mass under this model (lm_head_weight:
    its (V, C) output matrix; pass the logits and an identity matrix to read them off logits)."""
    dt = _compute_dtype(hidden)
    x, y = hidden.reshape(-1, hidden.size(-1)).to(dt), targets.reshape(-1)
    W = lm_head_weight.to(dt)
    p, u = (torch.empty(y.shape, dtype=torch.float32, device=hidden.device) for _ in range(2))
    with torch.autocast(hidden.device.type, enabled=False):
        for i in range(0, len(y), chunk_size):
            s = slice(i, i + chunk_size)
            probs = torch.softmax(mm(x[s], W.T).float(), dim=-1)
            py = probs.gather(1, y[s].clamp_min(0)[:, None])  # negative targets (padding) give p = u = 0 below
            # u: the mass of the tokens less likely than the target (strict <, as the official PriFT code: ties with
            # the target are left out), plus the target's own; u >= 0.5 <=> y lies in the top-p=0.5 nucleus
            p[s], u[s] = py[:, 0], torch.where(probs < py, probs, 0).sum(1) + py[:, 0]
    valid = targets.reshape(-1) >= 0
    return torch.where(valid, p, 0).view(targets.shape), torch.where(valid, u, 0).view(targets.shape)


# -----------------------------------------------------------------------------
# The fast path: reference_loss's loss and gradients, fused with the lm_head and chunked over positions

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
            logits = mm(hd[s], Wd.T).float()  # mm: a @ b, through oneDNN for float32 on the CPU (cpu.py)
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
                    grad_h[s] = mm(g, Wd)
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
    """(loss, stats) as reference_loss, from the final hidden states (B, T, C) and lm_head_weight (V, C) instead of
    the logits: differentiable w.r.t. both; stats are detached sums over this call: ce_sum, weight_sum, kept (w > 0),
    tokens. targets, mask, p_prior, u_prior: (B, T). hyper: see DEFAULTS, checked once by check_rule where a run
    starts. chunk_size: positions per chunk (the memory knob)."""
    needs_u = rule == 'prift' and hyper.get('prift_mode', DEFAULTS['prift_mode']) == 'mass'
    needs_p = signal_of(rule, signal) == 'prior' and not needs_u
    if needs_p and p_prior is None:
        raise ValueError(f"rule={rule!r} with the prior signal needs p_prior (build the cache with target_signals)")
    if needs_u and u_prior is None:
        raise ValueError("rule='prift' with prift_mode='mass' needs u_prior (build the cache with target_signals)")
    C = hidden.size(-1)
    if targets.shape != mask.shape or hidden.shape[:-1] != targets.shape or lm_head_weight.size(1) != C:
        raise ValueError(f"shapes do not match: hidden {tuple(hidden.shape)} must be targets/mask "
                         f"{tuple(targets.shape)}/{tuple(mask.shape)} + (C,), "
                         f"lm_head_weight {tuple(lm_head_weight.shape)} (V, C)")
    for name, t in (('p_prior', p_prior if needs_p else None), ('u_prior', u_prior if needs_u else None)):
        if t is not None and t.shape != targets.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected the targets' {tuple(targets.shape)}")
    idx = mask.reshape(-1).nonzero()[:, 0]  # supervised positions only: padding and prompts cost nothing
    sel = slice(None) if len(idx) == mask.numel() else idx  # all supervised: a view, no gather and scatter
    if n_tokens < len(idx):
        raise ValueError(f"n_tokens={n_tokens} is below this call's {len(idx)} supervised tokens: "
                         "pass the supervised tokens of the whole optimizer step")
    y = targets.reshape(-1)[sel]
    p_sig = p_prior.reshape(-1)[sel].float() if needs_p else None
    u_sig = u_prior.reshape(-1)[sel].float() if needs_u else None
    n = max(float(n_tokens), 1.0)  # no supervised token anywhere: the loss is 0/1 = 0, never 0/0
    dt = _compute_dtype(hidden)
    with torch.autocast(hidden.device.type, enabled=False):
        loss, ce, w, kept = _FusedWeightedCE.apply(hidden.reshape(-1, C)[sel], lm_head_weight, y, p_sig, u_sig,
                                                   n, dt, chunk_size, torch.is_grad_enabled(), rule, hyper)
    stats = dict(ce_sum=ce.sum(), weight_sum=w.sum(), kept=kept, tokens=torch.tensor(len(y), device=hidden.device))
    return loss, stats
