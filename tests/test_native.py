"""The compiled CPU kernels of the fused stacks (nfvi.native) against the torch loops:
planar, radial and Householder.

Values and gradients agree to 1e-10 in float64 for per-example, shared and broadcast
parameter rows (``N = n B`` rows reading ``B`` parameter rows, the importance-weighted NLL's
layout), with strided parameters as the amortized head produces them; the library is built
once per cache, atomically, and a machine without a compiler falls back to the torch loops
(real processes, real compiler). Skipped, saying why, where no C compiler is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from nfvi import native
from nfvi.flows import make_flow
from nfvi.flows.fused import HouseholderStackFunction, PlanarStackFunction, RadialStackFunction

F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)
K, B, D, REPEAT = 6, 5, 4, 3
FLOWS = ["planar", "radial", "householder"]

needs_kernels = pytest.mark.skipif(native.library() is None, reason=native.status())


@pytest.fixture
def backend():
    """``use(True|False)``: the compiled kernels on or off, restored afterwards."""
    was = native.enabled()
    yield native.set_enabled
    native.set_enabled(was)


def params(flow: str, P: int, dtype: torch.dtype, gen: torch.Generator) -> list[torch.Tensor]:
    """Planar ``w, u_hat [K, P, D], b [K, P, 1]``, radial ``c [K, P, D], alpha, beta`` or
    Householder ``v [K, P, D]``."""
    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=dtype) * scale

    if flow == "planar":
        return [rnd(K, P, D, scale=0.8), rnd(K, P, D, scale=0.5), rnd(K, P, 1)]
    if flow == "householder":
        return [rnd(K, P, D)]
    alpha = torch.rand(K, P, 1, generator=gen, dtype=dtype) + 0.2
    return [rnd(K, P, D), alpha, torch.rand(K, P, 1, generator=gen, dtype=dtype) * 2 - 0.1]


def stack(flow: str, z, ps):
    if flow == "householder":  # volume-preserving: no log-determinant output
        return HouseholderStackFunction.apply(z, *ps)[0], z.new_zeros(z.shape[0])
    fn = PlanarStackFunction if flow == "planar" else RadialStackFunction
    z_k, ld, _, _ = fn.apply(z, *ps)
    return z_k, ld


def forward_kernel(flow: str):
    """The kernel's forward call, ``(z, *params, keep) -> (z_K, log_det, saved, saved)``."""
    if flow == "householder":
        return lambda z, v, keep: native.householder_forward(
            z, v, (v * v).sum(-1, keepdim=True), keep)
    return native.planar_forward if flow == "planar" else native.radial_forward


def outputs_and_grads(flow: str, z, ps, gen):
    z = z.detach().requires_grad_()
    ps = [p.detach().requires_grad_() for p in ps]
    z_k, ld = stack(flow, z, ps)
    wz = torch.randn(z_k.shape, generator=gen, dtype=z.dtype)
    wl = torch.randn(ld.shape, generator=gen, dtype=z.dtype)
    grads = torch.autograd.grad((z_k * wz).sum() + (ld * wl).sum() + 0.1 * (z_k**2).sum(),
                                [z, *ps])
    return z_k.detach(), ld.detach(), grads


@needs_kernels
@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("rows", ["per-example", "shared", "broadcast"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_the_kernels_equal_the_torch_loops(flow, rows, dtype, backend):
    """``broadcast``: ``REPEAT B`` rows of ``z``, row ``s B + b`` reading parameter row ``b``;
    the torch reference tiles the parameters to every row and sums their gradients back."""
    gen = torch.Generator().manual_seed(0)
    N = B * REPEAT if rows == "broadcast" else B
    P = {"per-example": B, "shared": 1, "broadcast": B}[rows]
    z = torch.randn(N, D, generator=gen, dtype=dtype) * 1.5
    ps = params(flow, P, dtype, gen)
    backend(True)
    got = outputs_and_grads(flow, z, ps, torch.Generator().manual_seed(1))
    backend(False)
    tiled = [p.repeat(1, REPEAT, 1) for p in ps] if rows == "broadcast" else ps
    want = outputs_and_grads(flow, z, tiled, torch.Generator().manual_seed(1))
    if rows == "broadcast":  # d/dp of tiled copies: summed over the REPEAT copies
        want = (*want[:2], [want[2][0]] + [g.reshape(K, REPEAT, B, -1).sum(1)
                                          for g in want[2][1:]])
    tol = TOL if dtype == F64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[0], want[0], **tol)
    torch.testing.assert_close(got[1], want[1], **tol)
    for g, w in zip(got[2], want[2], strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, **tol)
        assert g.abs().sum() > 0


@needs_kernels
@pytest.mark.parametrize("flow", FLOWS)
def test_strided_parameters_as_the_head_lays_them_out(flow, backend):
    """The amortized head's ``[B, K, n]`` output seen as ``[K, B, n]`` (a transposed view)."""
    backend(True)
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(B, D, generator=gen, dtype=F64)
    ps = params(flow, B, F64, gen)
    strided = [p.transpose(0, 1).contiguous().transpose(0, 1) for p in ps]
    assert not strided[0].is_contiguous()
    for a, b in zip(stack(flow, z, strided), stack(flow, z, ps), strict=True):
        torch.testing.assert_close(a, b, **TOL)


@needs_kernels
@pytest.mark.parametrize("flow", FLOWS)
def test_the_iw_layout_reads_each_contexts_parameters_untiled(flow, backend):
    """``FlowStack.forward(repeat=S)`` without a graph: the kernels take the head's ``[K, B]``
    parameters as they are and give what the tiled contexts give."""
    torch.manual_seed(0)
    stack_ = make_flow(flow, D, K, amortized=True, context_dim=3).double()
    with torch.no_grad():
        for p in stack_.parameters():
            p.normal_(0.0, 0.5)
    ctx = torch.randn(B, 3, dtype=F64)
    z = torch.randn(REPEAT * B, D, dtype=F64)
    backend(True)
    with torch.no_grad():
        assert stack_.layers[0].fused_broadcasts(z)
        fast = stack_(z, ctx, repeat=REPEAT)
        tiled = stack_(z, ctx.repeat(REPEAT, 1))
        backend(False)
        assert not stack_.layers[0].fused_broadcasts(z)
        plain = stack_(z, ctx, repeat=REPEAT)
    for a, b, c in zip(fast, tiled, plain, strict=True):
        torch.testing.assert_close(a, b, **TOL)
        torch.testing.assert_close(a, c, **TOL)
    assert not stack_.layers[0].fused_broadcasts(z.requires_grad_())  # a graph: tiled rows


@needs_kernels
@pytest.mark.parametrize("flow", ["planar", "householder"])
@pytest.mark.parametrize("rows", ["per-example", "shared", "broadcast"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_forward_in_blocks_of_rows_equals_one_row_at_a_time(flow, rows, dtype):
    """Planar's and Householder's forwards run a block of rows layer by layer (``ROWS`` in
    kernels.c); each row's arithmetic is that of a call on the row alone: bit-equal outputs,
    log-dets and saved tensors, for 19 rows (two full blocks of 8 and a partial one)."""
    gen = torch.Generator().manual_seed(6)
    N = 19 if rows == "per-example" else 19 * 3
    P = {"per-example": N, "shared": 1, "broadcast": 19}[rows]
    z = torch.randn(N, D, generator=gen, dtype=dtype) * 1.5
    ps = params(flow, P, dtype, gen)
    fwd = forward_kernel(flow)
    whole = fwd(z, *ps, keep=True)
    for r in range(N):
        p = 0 if P == 1 else r % P
        one = fwd(z[r : r + 1], *[t[:, p : p + 1] for t in ps], keep=True)
        assert torch.equal(one[0][0], whole[0][r]) and torch.equal(one[1][0], whole[1][r])
        assert torch.equal(one[2][:, 0], whole[2][:, r])
        assert torch.equal(one[3][:, 0], whole[3][:, r])


def test_cuda_tensors_and_other_dtypes_take_the_torch_loop():
    assert not native.usable(torch.zeros(2, 2, dtype=torch.float16))
    assert not native.usable(torch.zeros(2, 2), torch.zeros(2, 2, dtype=F64))
    if torch.cuda.is_available():
        assert not native.usable(torch.zeros(2, 2, device="cuda"))


def test_torch_func_transforms_take_the_torch_loop(backend):
    """Inside ``jacrev`` the tensors are functorch wrappers the kernels cannot read."""
    backend(True)
    flow = make_flow("planar", D, 3).double()
    z = torch.randn(D, dtype=F64)
    jac = torch.func.jacrev(lambda v: flow(v[None])[0][0])(z)
    eps = 1e-6
    fd = torch.stack([(flow((z + eps * e)[None])[0][0] - flow((z - eps * e)[None])[0][0])
                      / (2 * eps) for e in torch.eye(D, dtype=F64)], dim=1)
    torch.testing.assert_close(jac, fd, rtol=1e-6, atol=1e-7)


PROBE = """
import torch
from nfvi import native
from nfvi.flows import make_flow
print(native.status())
torch.manual_seed(0)
flow = make_flow("planar", 3, 4).double()
print(repr(flow(torch.randn(2, 3, dtype=torch.float64))[1].tolist()))
"""


def probe(tmp_path, **env) -> tuple[str, str]:
    """A fresh process's status line and a planar stack's log-determinants."""
    full = {**os.environ, "NFVI_CACHE_DIR": str(tmp_path), **env}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env=full, timeout=300, check=True).stdout.splitlines()
    return out[0], out[1]


@needs_kernels
def test_built_once_per_cache_atomically_and_reused(tmp_path):
    status, values = probe(tmp_path)
    built = list(tmp_path.iterdir())
    assert status.startswith("native C kernels") and str(tmp_path) in status
    assert [p.name for p in built] == [native.library_path().name]  # no temporary left
    mtime = built[0].stat().st_mtime_ns
    again, values2 = probe(tmp_path)
    assert again == status and values2 == values
    assert built[0].stat().st_mtime_ns == mtime  # loaded, not rebuilt


def test_without_a_compiler_the_torch_loop_runs(tmp_path):
    status, values = probe(tmp_path, CC="/nonexistent/cc")
    assert status.startswith("torch loops (native kernels unavailable: no C compiler"), status
    assert list(tmp_path.iterdir()) == []
    off, values_off = probe(tmp_path, NFVI_NATIVE="0")
    assert off == "torch loops (native kernels switched off: NFVI_NATIVE=0)"
    assert values_off == values
    if native.library() is not None:  # the kernels give the same map (to float64 rounding)
        _, values_on = probe(tmp_path)
        on, ref = eval(values_on), eval(values)  # noqa: S307  (a list literal we printed)
        assert on == pytest.approx(ref, rel=1e-12, abs=1e-12)


@needs_kernels
@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("rows", ["per-example", "shared", "broadcast"])
def test_large_calls_on_threads_give_the_single_thread_result(flow, rows, backend,
                                                              monkeypatch):
    """Without a graph, a call above ``PARALLEL_WORK`` runs on threads over blocks of rows
    (parameter rows ``r % P`` kept per block); bit-equal to one call, and to the torch loop to
    1e-10. 3 threads over 7 x 5 rows: blocks that do not divide evenly."""
    gen = torch.Generator().manual_seed(3)
    N = B * 7 if rows != "per-example" else 37
    P = {"per-example": N, "shared": 1, "broadcast": B}[rows]
    z = torch.randn(N, D, generator=gen, dtype=F64)
    ps = params(flow, P, F64, gen)
    fwd = forward_kernel(flow)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fwd(z, *ps, keep=False)[:2]
        torch.set_num_threads(3)
        monkeypatch.setattr(native, "PARALLEL_WORK", 1)
        assert len(native._row_blocks(N, P, N * K * D)) == 3
        many = fwd(z, *ps, keep=False)[:2]
        v = torch.randn(N, 9, 4, generator=gen, dtype=F64)
        assert torch.equal(native.window_max(v), v.amax(-1))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many, strict=True):
        assert torch.equal(a, b)
    backend(False)
    with torch.no_grad():
        ref = stack(flow, z, [p.repeat(1, N // P, 1) for p in ps])  # every row its own copy
    for a, b in zip(many, ref, strict=True):
        torch.testing.assert_close(a, b, **TOL)


FORKED = """
import os, sys, torch
from nfvi import native
native.PARALLEL_WORK = 1
torch.set_num_threads(2)
v = torch.randn(64, 8, 4)
native.window_max(v)  # the parent's pool exists before the fork
pid = os.fork()
if pid == 0:
    torch.set_num_threads(2)
    os._exit(0 if torch.equal(native.window_max(v), v.amax(-1)) else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@needs_kernels
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_threaded_calls_on_its_own_pool():
    """The parent's worker threads do not survive a fork; the child must not wait on them."""
    done = subprocess.run([sys.executable, "-c", FORKED], timeout=60, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
