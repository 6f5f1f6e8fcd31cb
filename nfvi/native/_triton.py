"""The Triton kernels of :mod:`nfvi.native.gpu` (imported on first use: CPU runs never load
Triton). See that module for the layout and the formulas."""

import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    # 1 - 2 / (exp(2x) + 1): exact limits at +-inf, absolute error near 0 of the dtype's
    # epsilon (no tanh in Triton's core language on every backend, the interpreter's too)
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _block(N, P, D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's rows (int64: K N D can pass 2^31), columns, their masks, and the
    parameter row each row reads (``r % P``)."""
    rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < N
    return rows, cols, rmask, rmask[:, None] & (cols[None, :] < D), rows % P


@triton.jit
def planar_forward_kernel(z0, w, u, b, zout, ld, zin, hsave, tiny_ptr, N, P, K,
                          swk, swp, suk, sup, sbk, sbp, D: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, KEEP: tl.constexpr):
    """One program: BLOCK_N rows of z through the K layers (nfvi.native.gpu.planar_forward)."""
    rows, cols, rmask, mask, p = _block(N, P, D, BLOCK_N, BLOCK_D)
    tiny = tl.load(tiny_ptr)
    z = tl.load(z0 + rows[:, None] * D + cols[None, :], mask=mask, other=0.0)
    acc = tl.zeros((BLOCK_N,), dtype=z.dtype)
    for k in range(K):
        wk = tl.load(w + k * swk + p[:, None] * swp + cols[None, :], mask=mask, other=0.0)
        uk = tl.load(u + k * suk + p[:, None] * sup + cols[None, :], mask=mask, other=0.0)
        bk = tl.load(b + k * sbk + p * sbp, mask=rmask, other=0.0)
        if KEEP:
            tl.store(zin + (k * N + rows[:, None]) * D + cols[None, :], z, mask=mask)
        h = _tanh(tl.sum(z * wk, axis=1) + bk)
        if KEEP:
            tl.store(hsave + k * N + rows, h, mask=rmask)
        z = z + h[:, None] * uk
        det = 1.0 + (1.0 - h * h) * tl.sum(wk * uk, axis=1)
        acc += tl.log(tl.maximum(tl.abs(det), tiny))
    tl.store(zout + rows[:, None] * D + cols[None, :], z, mask=mask)
    tl.store(ld + rows, acc, mask=rmask)


@triton.jit
def planar_backward_kernel(gz, gld, w, u, zin, hsave, g0, gw, gu, gb, tiny_ptr, N, P, K,
                           swk, swp, suk, sup, D: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_D: tl.constexpr):
    """One program: BLOCK_N rows back through the K layers, last to first
    (nfvi.native.gpu.planar_backward)."""
    rows, cols, rmask, mask, p = _block(N, P, D, BLOCK_N, BLOCK_D)
    tiny = tl.load(tiny_ptr)
    g = tl.load(gz + rows[:, None] * D + cols[None, :], mask=mask, other=0.0)
    lam = tl.load(gld + rows, mask=rmask, other=0.0)
    for i in range(K):
        k = K - 1 - i
        wk = tl.load(w + k * swk + p[:, None] * swp + cols[None, :], mask=mask, other=0.0)
        uk = tl.load(u + k * suk + p[:, None] * sup + cols[None, :], mask=mask, other=0.0)
        at = (k * N + rows[:, None]) * D + cols[None, :]
        zi = tl.load(zin + at, mask=mask, other=0.0)
        h = tl.load(hsave + k * N + rows, mask=rmask, other=0.0)
        hp = 1.0 - h * h
        s = tl.sum(wk * uk, axis=1)
        det = 1.0 + hp * s
        q_hp = tl.where(tl.abs(det) >= tiny, lam / det, 0.0) * hp
        da = hp * tl.sum(g * uk, axis=1) - 2.0 * q_hp * h * s
        tl.store(gw + at, da[:, None] * zi + q_hp[:, None] * uk, mask=mask)
        tl.store(gu + at, h[:, None] * g + q_hp[:, None] * wk, mask=mask)
        tl.store(gb + k * N + rows, da, mask=rmask)
        g = g + da[:, None] * wk
    tl.store(g0 + rows[:, None] * D + cols[None, :], g, mask=mask)
