"""
Speed on x86 CPUs, nothing else: three of torch's CPU defaults that cost tokenwise's runs time, and what it does
instead. Skip this file to learn the methods: the numbers are the same up to float rounding (tests/test_cpu.py).

1. float32 matmuls. torch sends them to MKL, which on processors that are not Intel's runs its generic code path:
   on this project's AMD EPYC, AVX-512 and all, MKL_VERBOSE names it "Intel(R) Architecture processors". oneDNN,
   which torch also ships (and already uses for bf16), compiles its kernels for the instructions the CPU has,
   whoever made it. linear() and mm() send float32 CPU matmuls there: on a 2-core EPYC, 1.06-1.39x faster for
   training's 1,024-row shapes and up to 2.3x for decoding's 8 rows (`python bench.py --only peak`; README,
   Benchmarks). Weight gradients stay with torch, where oneDNN was no faster. bf16, autocast and CUDA take torch's
   own path there.
2. Weights for decoding. A decode step multiplies each weight by a few rows only, and oneDNN's kernels read a weight
   in torch's plain layout slowly then; generate() multiplies by copies reordered into oneDNN's blocked layout
   (packed_weights), made when it starts and dropped when it ends.
3. The allocator. glibc hands blocks of over 32 MB back to the kernel when they are freed, and trims the top of its
   heap; a training step then faults some of its logits, gradients and activations in anew, page by page: for
   SmolLM2-135M (4x256 tokens) on a 2-core VM, ~160k page faults and ~0.7 s of a ~4.3 s bf16 step (in float32
   fewer, and no measurable time). keep_freed_memory() makes glibc keep them for reuse, at the price of some peak
   memory (a fragmented heap: ~100 MB of a step's ~2 GB).
"""
import contextlib
import ctypes
import platform

import torch
import torch.nn as nn
import torch.nn.functional as F


def _has_onednn_linear():
    if platform.machine().lower() not in ('x86_64', 'amd64') or not torch.backends.mkldnn.is_available():
        return False  # measured on x86 only; elsewhere oneDNN wraps other libraries (Arm's ACL)
    try:
        torch.ops.mkldnn._linear_pointwise  # torch's own ops for inductor's CPU linears; absent from some builds
        torch.ops.mkldnn._reorder_linear_weight
    except (AttributeError, RuntimeError):
        return False
    return True


ONEDNN = _has_onednn_linear()


def _onednn_applies(x, w):
    return (ONEDNN and x.device.type == 'cpu' and x.dtype == w.dtype == torch.float32
            and not torch.is_autocast_enabled('cpu'))


def _onednn_linear(x, w, b=None):
    """x @ w.T + b by oneDNN; x and w may be strided views (transposes are read in place)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, 'none', [], '')


class _OneDNNLinear(torch.autograd.Function):
    """F.linear's forward and input gradient through oneDNN; the weight gradient g.T @ x through torch."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return _onednn_linear(x, w, b)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])
        grad_x = _onednn_linear(g, w.t()) if ctx.needs_input_grad[0] else None  # g @ w
        grad_w = g2.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_b = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear(x, w, b=None):
    """F.linear(x, w, b), through oneDNN for float32 on an x86 CPU (differentiable)."""
    if not _onednn_applies(x, w):
        return F.linear(x, w, b)
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or (b is not None and b.requires_grad)):
        return _OneDNNLinear.apply(x, w, b)
    return _onednn_linear(x, w, b)


def mm(a, b):
    """a @ b for 2-D tensors, through oneDNN for float32 on an x86 CPU; no autograd (for the fused loss's own
    backward)."""
    return _onednn_linear(a, b.t()) if _onednn_applies(a, b) else a @ b


class Linear(nn.Linear):
    """nn.Linear whose float32 CPU matmuls run through oneDNN (linear above); same parameters, same state dict."""
    packed = None  # oneDNN's blocked copy of the weight while packed_weights() is in force

    def forward(self, x):
        if self.packed is not None:
            return _onednn_linear(x, self.packed, self.bias)
        return linear(x, self.weight, self.bias)


@contextlib.contextmanager
def packed_weights(model, rows):
    """Within the block, every Linear of `model` (float32 or bf16, on an x86 CPU, no autocast) multiplies by a copy
    of its weight reordered into oneDNN's blocked layout for inputs of `rows` rows. Decoding's few rows read a plain
    weight slowly, a packed one up to twice as fast (`python bench.py --only peak`), and prefill's many rows lose
    nothing. Packing takes a fraction of one generate call (`bench.py --only generate --ablations` prints both), and
    the copies are dropped on exit, so that a weight updated later is never read stale. For inference only: the
    packed path has no autograd."""
    linears = []
    if ONEDNN and not torch.is_autocast_enabled('cpu'):
        # bf16 only where oneDNN runs it natively (AVX-512 BF16, AMX); elsewhere torch's own path stays
        dtypes = (torch.float32, torch.bfloat16) if torch.ops.mkldnn._is_mkldnn_bf16_supported() else (torch.float32,)
        linears = [m for m in model.modules()
                   if isinstance(m, Linear) and m.weight.device.type == 'cpu' and m.weight.dtype in dtypes]
    for m in linears:
        m.packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), rows)
    try:
        yield
    finally:
        for m in linears:
            m.packed = None


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory():
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel: blocks up to 1 GB come from
    the heap, and the heap is trimmed only when 1 GB lies free at its top. For a CPU run's process, once, before the
    work; the peak memory is unchanged, but it stays resident. Returns whether glibc took both settings (no
    glibc, no change: macOS, musl)."""
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return False
    return all(libc.mallopt(param, 1 << 30) == 1 for param in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD))
