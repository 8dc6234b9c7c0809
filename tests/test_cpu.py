"""cpu.py: the oneDNN float32 linear equals F.linear (values and gradients) and is really the path taken; bf16 and
autocast keep torch's; packed weights equal plain ones and generate really uses them, only while it runs;
keep_freed_memory stops a freed block from faulting in again."""
import platform
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import cpu
import model as M

X86 = platform.machine().lower() in ('x86_64', 'amd64')


def onednn_calls(fn):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == 'mkldnn::_linear_pointwise')


def test_onednn_is_found_on_x86():
    # on x86 torch ships oneDNN: a build where the check fails would silently lose the speed-up
    if not X86:
        pytest.skip("the oneDNN path is for x86 CPUs only")
    assert cpu.ONEDNN


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(7, 33), (2, 5, 33)])
def test_linear_equals_f_linear_with_gradients(shape, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, requires_grad=True)
    w = torch.randn(17, 33, generator=g, requires_grad=True)
    b = torch.randn(17, generator=g, requires_grad=True) if bias else None
    inputs = [t for t in (x, w, b) if t is not None]
    out = cpu.linear(x, w, b)
    grad_out = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, inputs, grad_out)
    ref = F.linear(x, w, b)
    ref_grads = torch.autograd.grad(ref, inputs, grad_out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if cpu.ONEDNN:  # forward and input gradient both went through oneDNN
        assert onednn_calls(lambda: torch.autograd.grad(cpu.linear(x, w, b), inputs, grad_out)) == 2


def test_mm_reads_transposed_views():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(40, 30, generator=g), torch.randn(50, 30, generator=g)
    for left, right in ((a, b.T), (a.T.contiguous().T, b.T), (b, a.T)):
        torch.testing.assert_close(cpu.mm(left, right), left @ right, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not cpu.ONEDNN, reason="no oneDNN linear on this machine")
def test_model_forward_and_backward_run_through_onednn_in_float32_only():
    cfg = M.Config(vocab_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, intermediate_size=48, block_size=32)
    model = M.Transformer(cfg)
    idx = torch.randint(64, (2, 9), generator=torch.Generator().manual_seed(2))
    linears = 4 * cfg.n_layer + 1  # qkv, proj, fc, mlp proj per block, and the vocabulary head
    assert onednn_calls(lambda: model(idx)) == linears
    assert onednn_calls(lambda: model(idx).sum().backward()) == 2 * linears
    with torch.autocast('cpu', dtype=torch.bfloat16):  # autocast: torch's bf16 path, untouched
        assert onednn_calls(lambda: model(idx)) == 0
    with torch.no_grad():
        assert onednn_calls(lambda: model.to(torch.bfloat16)(idx)) == 0


@pytest.mark.skipif(not cpu.ONEDNN, reason="no oneDNN linear on this machine")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_weights_equal_plain_linear(dtype, bias):
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no native bf16 here, so bf16 weights are not packed")
    g = torch.Generator().manual_seed(3)
    layer = cpu.Linear(33, 70, bias=bias).to(dtype)
    inputs = [torch.randn(*shape, generator=g).to(dtype) for shape in ((8, 33), (3, 1, 33), (2, 45, 33))]
    with torch.no_grad():
        want = [F.linear(x, layer.weight, layer.bias) for x in inputs]
        with cpu.packed_weights(layer, rows=8):  # packed for 8 rows, right for any number
            assert layer.packed is not None
            got = [layer(x) for x in inputs]
    assert layer.packed is None
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    for g_, w_ in zip(got, want):
        assert g_.dtype == dtype
        torch.testing.assert_close(g_, w_, **tol)


@pytest.mark.skipif(not cpu.ONEDNN, reason="no oneDNN linear on this machine")
def test_generate_multiplies_by_packed_weights_and_drops_them_after(monkeypatch):
    cfg = M.Config(vocab_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, intermediate_size=48, block_size=64,
                   tie_embeddings=False)
    model = M.Transformer(cfg).eval()
    linears = [m for m in model.modules() if isinstance(m, cpu.Linear)]
    calls = []
    original = cpu.Linear.forward

    def spy(self, x):
        calls.append(self.packed is not None)
        return original(self, x)

    monkeypatch.setattr(cpu.Linear, 'forward', spy)
    first = model.generate([[1, 2, 3], [4, 5]], 6)
    assert calls and all(calls)
    assert all(m.packed is None for m in linears)
    with torch.no_grad():  # a weight changed after one call is read fresh by the next, not from a stale copy:
        model.lm_head.weight.mul_(-1)  # the first token turns from the most likely into the least likely
        least_likely = model(torch.tensor([[1, 2, 3]]))[0, -1].argmax().item()
    assert model.generate([[1, 2, 3]], 1) == [[least_likely]] != [first[0][:1]]
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):  # autocast keeps torch's own path
        with cpu.packed_weights(model, rows=2):
            assert all(m.packed is None for m in linears)


FAULTS = """
import resource, sys, torch
import cpu
if sys.argv[1] == 'keep':
    assert cpu.keep_freed_memory()
counts = []
for _ in range(32):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 << 20, dtype=torch.uint8)  # a 64 MB block, touched, then freed
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(max(counts[-8:]))
"""


@pytest.mark.skipif(sys.platform != 'linux', reason="glibc's allocator")
def test_keep_freed_memory_stops_a_freed_block_faulting_in_again():
    # glibc's default maps every such block anew: 16k page faults each time. Kept, the first 6-10 blocks still fault
    # (measured over 15 runs; torch's 64-byte-aligned allocations do not fit exactly into a block just freed, and
    # the heap grows until freed blocks have coalesced); after that, none does
    def faults(mode):
        run = subprocess.run([sys.executable, '-c', FAULTS, mode], capture_output=True, text=True, check=True,
                             cwd=M.__file__.rsplit('/', 1)[0])
        return int(run.stdout)
    assert faults('default') > 10_000
    assert faults('keep') < 1_000
