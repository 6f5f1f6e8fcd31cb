"""The Triton kernels of :mod:`nfvi.native.gpu` (imported on first use: CPU runs never load
Triton): the planar, radial and Householder stacks, forward and backward. See that module
for the layout, and :mod:`nfvi.flows.fused` for the formulas."""

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
def _start(x, tiny_ptr, N, P, D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """:func:`_block`, the dtype's tiny, and this program's rows of ``x [N, D]`` (z, or the
    incoming gradient)."""
    rows, cols, rmask, mask, p = _block(N, P, D, BLOCK_N, BLOCK_D)
    x_rows = tl.load(x + rows[:, None] * D + cols[None, :], mask=mask, other=0.0)
    return rows, cols, rmask, mask, p, tl.load(tiny_ptr), x_rows


@triton.jit
def _log_abs(x, tiny):
    return tl.log(tl.maximum(tl.abs(x), tiny))


@triton.jit
def _inv_abs(x, scale, tiny):
    """scale / x, 0 below the clamp (the gradient of scale * log|x|)."""
    return tl.where(tl.abs(x) >= tiny, scale / x, 0.0)


@triton.jit
def planar_forward_kernel(z0, w, u, b, zout, ld, zin, hsave, tiny_ptr, N, P, K,
                          swk, swp, suk, sup, sbk, sbp, D: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, KEEP: tl.constexpr):
    """One program: BLOCK_N rows of z through the K layers (nfvi.native.gpu.planar_forward)."""
    rows, cols, rmask, mask, p, tiny, z = _start(z0, tiny_ptr, N, P, D, BLOCK_N, BLOCK_D)
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
        acc += _log_abs(det, tiny)
    tl.store(zout + rows[:, None] * D + cols[None, :], z, mask=mask)
    tl.store(ld + rows, acc, mask=rmask)


@triton.jit
def planar_backward_kernel(gz, gld, w, u, zin, hsave, g0, gw, gu, gb, tiny_ptr, N, P, K,
                           swk, swp, suk, sup, D: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_D: tl.constexpr):
    """One program: BLOCK_N rows back through the K layers, last to first
    (nfvi.native.gpu.planar_backward)."""
    rows, cols, rmask, mask, p, tiny, g = _start(gz, tiny_ptr, N, P, D, BLOCK_N, BLOCK_D)
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
        q_hp = _inv_abs(det, lam, tiny) * hp
        da = hp * tl.sum(g * uk, axis=1) - 2.0 * q_hp * h * s
        tl.store(gw + at, da[:, None] * zi + q_hp[:, None] * uk, mask=mask)
        tl.store(gu + at, h[:, None] * g + q_hp[:, None] * wk, mask=mask)
        tl.store(gb + k * N + rows, da, mask=rmask)
        g = g + da[:, None] * wk
    tl.store(g0 + rows[:, None] * D + cols[None, :], g, mask=mask)


@triton.jit
def radial_forward_kernel(z0, c, alpha, beta, zout, ld, dsave, rsave, tiny_ptr, N, P, K,
                          sck, scp, sak, sap, sbk, sbp, D: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, KEEP: tl.constexpr):
    """One program: BLOCK_N rows of z through the K radial layers
    (nfvi.native.gpu.radial_forward)."""
    rows, cols, rmask, mask, p, tiny, z = _start(z0, tiny_ptr, N, P, D, BLOCK_N, BLOCK_D)
    acc = tl.zeros((BLOCK_N,), dtype=z.dtype)
    for k in range(K):
        ck = tl.load(c + k * sck + p[:, None] * scp + cols[None, :], mask=mask, other=0.0)
        a = tl.load(alpha + k * sak + p * sap, mask=rmask, other=1.0)
        bt = tl.load(beta + k * sbk + p * sbp, mask=rmask, other=0.0)
        d = z - ck  # 0 in the padding: z and c both are
        r = tl.sqrt(tl.sum(d * d, axis=1))
        if KEEP:
            tl.store(dsave + (k * N + rows[:, None]) * D + cols[None, :], d, mask=mask)
            tl.store(rsave + k * N + rows, r, mask=rmask)
        h = 1.0 / (a + r)
        bh = bt * h
        z = z + bh[:, None] * d
        acc += (D - 1) * _log_abs(1.0 + bh, tiny) + _log_abs(1.0 + bh - bh * h * r, tiny)
    tl.store(zout + rows[:, None] * D + cols[None, :], z, mask=mask)
    tl.store(ld + rows, acc, mask=rmask)


@triton.jit
def radial_backward_kernel(gz, gld, alpha, beta, dsave, rsave, g0, gc, galpha, gbeta,
                           tiny_ptr, N, P, K, sak, sap, sbk, sbp, D: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program: BLOCK_N rows back through the K radial layers, last to first
    (nfvi.native.gpu.radial_backward)."""
    rows, cols, rmask, mask, p, tiny, g = _start(gz, tiny_ptr, N, P, D, BLOCK_N, BLOCK_D)
    lam = tl.load(gld + rows, mask=rmask, other=0.0)
    for i in range(K):
        k = K - 1 - i
        at = (k * N + rows[:, None]) * D + cols[None, :]
        dk = tl.load(dsave + at, mask=mask, other=0.0)
        r = tl.load(rsave + k * N + rows, mask=rmask, other=1.0)
        a = tl.load(alpha + k * sak + p * sap, mask=rmask, other=1.0)
        bt = tl.load(beta + k * sbk + p * sbp, mask=rmask, other=0.0)
        h = 1.0 / (a + r)
        h2, hr, bh = h * h, h * r, bt * h
        t1 = 1.0 + bh
        e1 = _inv_abs(t1, lam * (D - 1), tiny)
        e2 = _inv_abs(1.0 + bh - bh * hr, lam, tiny)
        l_h = bt * (e1 + e2 * (1.0 - 2.0 * hr))
        l_beta = h * (e1 + e2 * (1.0 - hr))
        r_inv = tl.where(r > 0, 1.0 / r, 0.0)
        gd = tl.sum(g * dk, axis=1)
        coef = (-e2 * bt * h2 - h2 * l_h) * r_inv - h2 * bt * r_inv * gd
        tl.store(gc + at, -(bh[:, None] * g + coef[:, None] * dk), mask=mask)
        tl.store(galpha + k * N + rows, -h2 * (l_h + bt * gd), mask=rmask)
        tl.store(gbeta + k * N + rows, l_beta + h * gd, mask=rmask)
        g = t1[:, None] * g + coef[:, None] * dk
    tl.store(g0 + rows[:, None] * D + cols[None, :], g, mask=mask)


@triton.jit
def householder_forward_kernel(z0, v, nr, zout, ld, zin, asave, tiny_ptr, N, P, K,
                               svk, svp, snk, snp, D: tl.constexpr, BLOCK_N: tl.constexpr,
                               BLOCK_D: tl.constexpr, KEEP: tl.constexpr):
    """One program: BLOCK_N rows of z through the K reflections
    (nfvi.native.gpu.householder_forward); ``nr`` is ``v^T v`` per parameter row."""
    rows, cols, rmask, mask, p, tiny, z = _start(z0, tiny_ptr, N, P, D, BLOCK_N, BLOCK_D)
    for k in range(K):
        vk = tl.load(v + k * svk + p[:, None] * svp + cols[None, :], mask=mask, other=0.0)
        n = tl.maximum(tl.load(nr + k * snk + p * snp, mask=rmask, other=1.0), tiny)
        if KEEP:
            tl.store(zin + (k * N + rows[:, None]) * D + cols[None, :], z, mask=mask)
        a = tl.sum(z * vk, axis=1)
        if KEEP:
            tl.store(asave + k * N + rows, a, mask=rmask)
        z = z - (2.0 * a / n)[:, None] * vk
    tl.store(zout + rows[:, None] * D + cols[None, :], z, mask=mask)
    tl.store(ld + rows, tl.zeros((BLOCK_N,), dtype=z.dtype), mask=rmask)


@triton.jit
def householder_backward_kernel(gz, v, nr, zin, asave, g0, gv, tiny_ptr, N, P, K, svk, svp,
                                snk, snp, D: tl.constexpr, BLOCK_N: tl.constexpr,
                                BLOCK_D: tl.constexpr):
    """One program: BLOCK_N rows back through the K reflections, last to first
    (nfvi.native.gpu.householder_backward)."""
    rows, cols, rmask, mask, p, tiny, g = _start(gz, tiny_ptr, N, P, D, BLOCK_N, BLOCK_D)
    for i in range(K):
        k = K - 1 - i
        vk = tl.load(v + k * svk + p[:, None] * svp + cols[None, :], mask=mask, other=0.0)
        n_raw = tl.load(nr + k * snk + p * snp, mask=rmask, other=1.0)
        n = tl.maximum(n_raw, tiny)
        at = (k * N + rows[:, None]) * D + cols[None, :]
        zi = tl.load(zin + at, mask=mask, other=0.0)
        a = tl.load(asave + k * N + rows, mask=rmask, other=0.0)
        s = tl.sum(g * vk, axis=1)
        cz = -2.0 * s / n
        cv = tl.where(n_raw >= tiny, 4.0 * a * s / (n * n), 0.0)
        tl.store(gv + at, cz[:, None] * zi + (-2.0 * a / n)[:, None] * g + cv[:, None] * vk,
                 mask=mask)
        g = g + cz[:, None] * vk
    tl.store(g0 + rows[:, None] * D + cols[None, :], g, mask=mask)
