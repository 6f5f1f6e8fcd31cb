"""The Triton kernels of the fused planar, radial and Householder stacks (nfvi.native.gpu)
against the torch loops.

Values and gradients agree to 1e-10 in float64 (float32: to its rounding) for per-example,
shared and broadcast parameter rows (``N = n B`` rows reading ``B`` parameter rows), with
strided parameters as the amortized head makes them, with and without a graph to record, and
through whole amortized planar, radial and Householder FlowStacks, whose fused forward and
backward are then one kernel launch each. The kernels run where they can: on a CUDA device, or
on the CPU through Triton's interpreter. Without CUDA,
``test_the_module_passes_in_the_interpreter`` runs this module again in a real process with
``TRITON_INTERPRET=1 NFVI_TRITON_ON_CPU=1`` (skipped, saying why, where Triton is not
installed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nfvi import native
from nfvi.flows import make_flow
from nfvi.flows.fused import (
    HouseholderStackFunction,
    PlanarStackFunction,
    RadialStackFunction,
    _householder_loop,
    _planar_loop,
    _radial_loop,
)
from nfvi.native import gpu

F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)
K, B, D, REPEAT = 6, 5, 4, 3
INTERPRETED = gpu._on_cpu_allowed()
DEVICE = "cpu" if INTERPRETED else "cuda"
runs_here = pytest.mark.skipif(
    not gpu.available() or not (INTERPRETED or torch.cuda.is_available()),
    reason="needs Triton and a CUDA device (or TRITON_INTERPRET=1 NFVI_TRITON_ON_CPU=1)")


@pytest.fixture
def kernels():
    """``use(True|False)``: the Triton kernels on (the C kernels off, so that CPU tensors reach
    the interpreter) or every kernel off (the torch loops); restored afterwards."""
    was = native.enabled(), gpu.enabled()

    def use(on: bool) -> None:
        native.set_enabled(False)
        gpu.set_enabled(on)

    yield use
    native.set_enabled(was[0])
    gpu.set_enabled(was[1])


def rnd(gen, *shape, dtype=F64, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=dtype, device=DEVICE) * scale


def stack_params(flow: str, P: int, dtype, gen, strided: bool):
    """Planar ``w, u_hat [K, P, D]``, ``b [K, P, 1]``, radial ``c [K, P, D]``, ``alpha, beta
    [K, P, 1]`` (constrained: ``alpha > 0``, ``beta > -alpha``) or Householder ``v [K, P, D]``;
    strided: views of one ``[P, K, n]`` tensor, the amortized head's layout."""
    if flow == "householder":
        if strided:
            return [rnd(gen, P, K, D + 1, dtype=dtype)[..., :D].transpose(0, 1)]
        return [rnd(gen, K, P, D, dtype=dtype)]
    if strided:
        flat = rnd(gen, P, K, 2 * D + 1, dtype=dtype, scale=0.6).transpose(0, 1)
        if flow == "planar":
            return [flat[..., :D], flat[..., D:2 * D], flat[..., 2 * D:]]
        return [flat[..., :D], flat[..., D:D + 1].abs() + 0.2, flat[..., D + 1:D + 2]]
    if flow == "planar":
        return [rnd(gen, K, P, D, dtype=dtype, scale=0.8),
                rnd(gen, K, P, D, dtype=dtype, scale=0.5), rnd(gen, K, P, 1, dtype=dtype)]
    alpha = torch.rand(K, P, 1, generator=gen, dtype=dtype, device=DEVICE) + 0.2
    beta = torch.rand(K, P, 1, generator=gen, dtype=dtype, device=DEVICE) * 2 - 0.1
    return [rnd(gen, K, P, D, dtype=dtype), alpha, beta]


STACKS = {"planar": (PlanarStackFunction, _planar_loop),
          "radial": (RadialStackFunction, _radial_loop),
          "householder": (HouseholderStackFunction, _householder_loop)}
FLOWS = list(STACKS)


def apply_stack(flow: str, z, ps):
    """``(z_K, log_det)`` through the flow's Function (Householder's log-det: zeros)."""
    out = STACKS[flow][0].apply(z, *ps)
    return (out[0], z.new_zeros(z.shape[0])) if flow == "householder" else out[:2]


def lean_loop(flow: str, z, ps):
    """The no-graph forward: ``(z_K, log_det, saved, saved)`` (Householder's: zeros)."""
    out = STACKS[flow][1](z, *ps, keep=False)
    return (out[0], z.new_zeros(z.shape[0]), *out[1:]) if flow == "householder" else out


def tiled(ps, N: int):
    """Parameters for ``P`` rows repeated to ``N`` (row ``r`` gets row ``r % P``)."""
    return [p.repeat(1, N // p.shape[1], 1) if p.shape[1] not in (1, N) else p for p in ps]


def outputs_and_grads(flow, z, ps, gen, tile_to: int | None = None):
    z = z.detach().requires_grad_()
    ps = [p.detach().requires_grad_() for p in ps]
    used = tiled(ps, tile_to) if tile_to else ps
    z_k, ld = apply_stack(flow, z, used)
    wz = rnd(gen, *z_k.shape, dtype=z.dtype)
    wl = rnd(gen, *ld.shape, dtype=z.dtype)
    grads = torch.autograd.grad((z_k * wz).sum() + (ld * wl).sum() + 0.1 * (z_k**2).sum(),
                                [z, *ps])
    return z_k.detach(), ld.detach(), grads


@runs_here
@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("rows", ["per-example", "shared", "broadcast", "strided"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_the_kernels_equal_the_torch_loops(flow, rows, dtype, kernels):
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    N = B * REPEAT if rows == "broadcast" else B
    P = 1 if rows == "shared" else B
    z = rnd(gen, N, D, dtype=dtype, scale=1.5)
    ps = stack_params(flow, P, dtype, gen, strided=rows == "strided")
    kernels(True)
    before = gpu.launches
    got = outputs_and_grads(flow, z, ps, torch.Generator(device=DEVICE).manual_seed(1))
    assert gpu.launches == before + 2  # one forward, one backward
    kernels(False)
    want = outputs_and_grads(flow, z, ps, torch.Generator(device=DEVICE).manual_seed(1),
                             tile_to=N if rows == "broadcast" else None)
    tol = TOL if dtype == F64 else dict(rtol=1e-4, atol=1e-5)
    for a, b in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]], strict=True):
        assert a.shape == b.shape and a.device.type == DEVICE
        torch.testing.assert_close(a, b, **tol)
    assert all(g.abs().sum() > 0 for g in got[2])


@runs_here
@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("P", [1, B], ids=["shared", "broadcast"])
def test_without_a_graph_the_forward_reads_the_untiled_rows(flow, P, kernels):
    """The IS pass's layout: ``REPEAT B`` rows, row ``s B + b`` reading parameter row ``b``."""
    gen = torch.Generator(device=DEVICE).manual_seed(2)
    N = B * REPEAT
    z = rnd(gen, N, D)
    ps = stack_params(flow, P, F64, gen, strided=True)
    kernels(True)
    with torch.no_grad():
        got = lean_loop(flow, z, ps)
    kernels(False)
    with torch.no_grad():
        want = lean_loop(flow, z, tiled(ps, N))
    assert got[2] is None and got[3] is None
    torch.testing.assert_close(got[0], want[0], **TOL)
    torch.testing.assert_close(got[1], want[1], **TOL)


@runs_here
@pytest.mark.parametrize("name, hparams", [("planar", {"centered": True}), ("radial", {}),
                                           ("householder", {})],
                         ids=["planar", "radial", "householder"])
def test_an_amortized_stack_runs_on_the_kernels(name, hparams, kernels):
    """The whole flow (head, constraints, stack): fused on the kernels equals layer by layer,
    and its fused forward and backward are one launch each."""
    torch.manual_seed(0)
    flow = make_flow(name, D, 7, amortized=True, context_dim=3, **hparams).double()
    flow = flow.to(DEVICE)
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, 0.5)
    gen = torch.Generator(device=DEVICE).manual_seed(3)
    z, ctx = rnd(gen, B, D), rnd(gen, B, 3)
    results = []
    for fused in (True, False):
        kernels(fused)
        flow.fused = fused
        before = gpu.launches
        z_k, ld = flow(z, ctx)
        grads = torch.autograd.grad(z_k.square().sum() + ld.sum(), list(flow.parameters()))
        results.append((gpu.launches - before, z_k.detach(), ld.detach(), grads))
    assert results[0][0] == 2 and results[1][0] == 0
    torch.testing.assert_close(results[0][1], results[1][1], **TOL)
    torch.testing.assert_close(results[0][2], results[1][2], **TOL)
    for a, b in zip(results[0][3], results[1][3], strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_the_kernels_stay_off_the_cpu_unless_interpreting():
    z = torch.randn(3, D)
    assert gpu.usable(z) == (INTERPRETED and gpu.available())


def test_the_module_passes_in_the_interpreter():
    """Without CUDA: this module in a real process under Triton's interpreter."""
    if INTERPRETED or torch.cuda.is_available():
        pytest.skip("the kernels' tests above ran here directly")
    if not gpu.available():
        pytest.skip("Triton is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1", "NFVI_TRITON_ON_CPU": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
         str(Path(__file__)), "-k", "not interpreter"],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    tail = done.stdout[-3000:] + done.stderr[-2000:]
    assert done.returncode == 0, tail
    assert "skipped" not in done.stdout.splitlines()[-1], tail
    assert "34 passed" in done.stdout.splitlines()[-1], tail
