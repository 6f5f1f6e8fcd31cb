"""Fused planar, radial and Householder stacks: K layers (and their summed log-determinant)
in one autograd node.

Rezende & Mohamed 2015, section 4.1, eqs. 10-14; Tomczak & Welling 2016 for the Householder
reflections. A stack of K planar (or radial, or Householder) layers run layer by layer
through autograd records some 5-30 small operations per layer, each saving its inputs and
costing one kernel launch (or one dispatch on a CPU) forward and backward. Here the whole
stack is one :class:`torch.autograd.Function` whose forward is a loop of 2 (Householder), 3
(planar) or 5 (radial) operations per layer and whose backward is derived by hand: the loop
over the layers stays sequential (each layer's gradient depends on the next one's), with 2-5
operations per layer, and everything that does not depend on the running gradient -- the
log-determinants, their derivatives and the parameter gradients -- is done for all layers at
once on ``[K, B, ...]`` tensors.

Shapes: ``z [B, D]``; every parameter stacked over the layers, ``[K, B, ...]`` (amortized: one
set per example) or ``[K, 1, ...]`` (global: shared, broadcast over the batch; its gradient is
summed over the batch). The constraints are applied before, on the stacked tensors: planar's
``u -> u_hat`` as one more node with a backward by hand (:class:`PlanarConstraint`), radial's
``alpha, beta`` in ordinary autograd (:meth:`nfvi.flows.radial.Radial.fused_forward`); the
stack's own backward covers only the maps below.

Planar, layer k (eqs. 10-12), ``a_k = w_k^T z_{k-1} + b_k``, ``h_k = tanh(a_k)``::

    z_k = z_{k-1} + u_k h_k,      det_k = 1 + (1 - h_k^2) s_k,   s_k = w_k^T u_k,

and ``log_det = sum_k log|det_k|``. With ``g_k = dL/dz_k`` (``g_K`` the incoming gradient),
``l = dL/dlog_det [B]``, ``h'_k = 1 - h_k^2`` and ``q_k = l / det_k``::

    dL/da_k     = h'_k (g_k^T u_k) - 2 q_k h_k h'_k s_k
    g_{k-1}     = g_k + (dL/da_k) w_k
    dL/dw_k     = (dL/da_k) z_{k-1} + q_k h'_k u_k
    dL/du_k     = h_k g_k + q_k h'_k w_k
    dL/db_k     = dL/da_k

Radial, layer k (eqs. 13-14), ``d_k = z_{k-1} - c_k`` (``c_k`` the paper's ``z_0``),
``r_k = ||d_k||``, ``h_k = 1 / (alpha_k + r_k)``::

    z_k = z_{k-1} + beta_k h_k d_k,
    log|det_k| = (D - 1) log|t1_k| + log|t2_k|,   t1 = 1 + beta h,  t2 = 1 + beta h - beta h^2 r.

With ``e1 = l (D - 1) / t1``, ``e2 = l / t2`` (per layer) the log-determinant's partials are
``L_h = beta (e1 + e2 (1 - 2 h r))``, ``L_beta = h (e1 + e2 (1 - h r))``,
``L_r = -e2 beta h^2``; then, with ``gd_k = g_k^T d_k`` and ``dh/dr = dh/dalpha = -h^2``::

    dL/dh       = beta gd + L_h
    dL/dr       = -h^2 dL/dh + L_r               (dr/dd = d / r; 0 at r = 0, as torch's norm)
    g_{k-1}     = t1 g_k + (dL/dr / r) d_k
    dL/dc_k     = -(beta h g_k + (dL/dr / r) d_k)
    dL/dalpha_k = -h^2 dL/dh
    dL/dbeta_k  = h gd + L_beta

Householder, layer k, ``a_k = v_k^T z_{k-1}``, ``n_k = max(||v_k||^2, tiny)``::

    z_k = z_{k-1} - (2 a_k / n_k) v_k,     log|det_k| = 0,

and with ``s_k = g_k^T v_k``::

    g_{k-1}     = g_k - (2 s_k / n_k) v_k
    dL/dv_k     = -(2 / n_k) (s_k z_{k-1} + a_k g_k) + (4 a_k s_k / n_k^2) v_k

(the last term only where ``||v_k||^2`` is above the clamp). It saves ``z_{k-1}`` and ``a_k``
like planar saves its inputs and ``h``.

``log|.|`` is clamped at the dtype's ``tiny`` as in the layer-by-layer code, and so is its
gradient (zero below the clamp).

What is saved for the backward, against what is recomputed. Planar saves every layer's input
``z_{k-1}`` (``[K, B, D]``) and ``h_k = tanh(a_k)`` (``[K, B, 1]``); ``h'``, ``s`` and ``det``
are recomputed, for all layers in a few vectorized operations. Radial saves ``d_k`` (``[K, B,
D]``) and ``r_k`` (``[K, B, 1]``) and recomputes ``h, t1, t2``. The ``[K, B, D]`` tensor is the
one real cost in memory (float32, K = 80, B = 100, D = 40: 1.3 MB); the alternative, saving
only ``z_0`` and re-running the forward loop inside the backward, would cut it to ``[B, D]`` at
the price of a second sequential loop of K layers (the forward's cost again), which at these
sizes is not worth it. (Planar's inputs could also be rebuilt without a loop, ``z_{k-1} = z_0 +
cumsum_j<k h_j u_j``, from ``h`` alone, at a rounding drift of its own.) Layer by layer,
autograd saves several ``[B, D]`` tensors per layer instead.

Without a graph to record (``torch.no_grad()``, e.g. the importance-weighted NLL) the same loop
runs in place on one copy of ``z`` and saves nothing; planar's ``u_hat`` is then computed layer
by layer inside it (at S = 5000 samples a ``[K, B, D]`` temporary is tens of MB and slower to
stream than the K small ones). Under ``torch.func`` transforms (vmap, jacrev) the Function is
used (``generate_vmap_rule``), which is why it is written out of place. There is no double
backward (``once_differentiable``: differentiating the gradient raises).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

import nfvi.native as native
import nfvi.native.gpu as gpu


def _functorch_active() -> bool:
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active is not None and active())


def _record(*tensors: Tensor) -> bool:
    """Whether autograd (or a torch.func transform) needs the Function rather than the lean loop."""
    if _functorch_active():
        return True
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def kernels_for(*tensors: Tensor):
    """The compiled kernels that take these tensors -- :mod:`nfvi.native` (C, CPU) or
    :mod:`nfvi.native.gpu` (Triton, CUDA), which share one interface -- or None: the torch
    loop."""
    for kernels in (native, gpu):
        if kernels.usable(*tensors):
            return kernels
    return None


def _like(grad: Tensor, param: Tensor) -> Tensor:
    """``grad [K, B, ...]`` summed over the batch where ``param`` is shared (``[K, 1, ...]``)."""
    if param.shape[1] == 1 and grad.shape[1] != 1:
        return grad.sum(1, keepdim=True)
    return grad


def _dot(x: Tensor, v: Tensor) -> Tensor:
    """Row-wise ``x^T v``: ``x [B, D]``, ``v [B|1, D]`` -> ``[B, 1]`` (a matmul when shared)."""
    if v.shape[0] == 1 and x.shape[0] != 1:
        return torch.mm(x, v.t())
    return (x * v).sum(-1, keepdim=True)


def _log_abs(x: Tensor) -> Tensor:
    return x.abs().clamp_min(torch.finfo(x.dtype).tiny).log()


def _inv_abs(x: Tensor, scale: Tensor) -> Tensor:
    """``scale / x``, the gradient of ``scale * log|x|``; 0 where ``|x|`` is below the clamp."""
    return torch.where(x.abs() >= torch.finfo(x.dtype).tiny, scale / x, x.new_zeros(()))


# ----------------------------------------------------------------------------- planar


@dataclass(frozen=True)
class PlanarConstraint:
    """Planar's invertibility constraint (R&M 2015, appendix A): the raw ``u`` to
    ``u_hat = u + c w`` with ``c = (m(s) - s) / n``, ``s = w^T u``, ``n = max(||w||^2, tiny)``
    and ``m(x) = scale (softplus(x + shift) - 1)``, so ``w^T u_hat = m(s) > -scale``
    (:mod:`nfvi.flows.planar`: ``shift = 0`` the paper's ``m``, ``ln(e - 1)`` centered; ``scale
    = 1 - det_floor``). Shapes ``u, w [..., D]`` -> ``[..., D]``.

    Called, it is the formula in ordinary autograd (the layer-by-layer reference). :meth:`fused`
    is the same map as one autograd node (:class:`PlanarConstraintFunction`) whose backward,
    with ``G = dL/du_hat``, ``m' = scale sigmoid(s + shift)`` and ``a = (G^T w) (m' - 1) / n``,
    is ::

        dL/du = G + a w,       dL/dw = c G + a u - 2 (G^T w) (c / n) w

    (the last term only where ``||w||^2`` is above the clamp): for a K-layer stack some 20
    autograd operations on ``[K, B, D]`` tensors become one pass (a compiled kernel on a CPU).
    """

    shift: float = 0.0
    scale: float = 1.0

    def __call__(self, u: Tensor, w: Tensor) -> Tensor:
        s = (w * u).sum(-1, keepdim=True)
        n = (w * w).sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        m = self.scale * (F.softplus(s + self.shift) - 1.0)
        return u + (m - s) * w / n

    def fused(self, u: Tensor, w: Tensor) -> Tensor:
        """``u_hat`` through :class:`PlanarConstraintFunction` (compiled kernels on a CPU)."""
        return PlanarConstraintFunction.apply(u, w, self.shift, self.scale)


class PlanarConstraintFunction(torch.autograd.Function):
    """``(u [K, P, D], w [K, P, D], shift, scale) -> u_hat [K, P, D]``, the backward by hand
    (:class:`PlanarConstraint`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(u: Tensor, w: Tensor, shift: float, scale: float):  # type: ignore[override]
        if native.usable(u, w):
            return native.planar_constrain(u, w, shift, scale)
        return PlanarConstraint(shift, scale)(u, w)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        u, w, ctx.shift, ctx.scale = inputs
        ctx.save_for_backward(u, w)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):  # type: ignore[override]
        u, w = ctx.saved_tensors
        if native.usable(g, u, w):
            return *native.planar_constrain_backward(u, w, ctx.shift, ctx.scale, g), None, None
        tiny = torch.finfo(w.dtype).tiny
        s = (w * u).sum(-1, keepdim=True)
        n_raw = (w * w).sum(-1, keepdim=True)
        n = n_raw.clamp_min(tiny)
        x = s + ctx.shift
        m = ctx.scale * (F.softplus(x) - 1.0)
        dm = ctx.scale * torch.where(x > 20.0, x.new_ones(()), torch.sigmoid(x))  # softplus'
        c = (m - s) / n
        gdw = (g * w).sum(-1, keepdim=True)
        a = gdw * (dm - 1.0) / n
        bw = torch.where(n_raw >= tiny, -2.0 * gdw * c / n, n.new_zeros(()))
        return torch.addcmul(g, a, w), c * g + a * u + bw * w, None, None


def _planar_loop(z: Tensor, w: Tensor, u: Tensor, b: Tensor, keep: bool,
                 constrain: PlanarConstraint | None = None
                 ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """The forward: ``(z_K, log_det [B], inputs [K, B, D] or None, h [K, B, 1])``.

    ``keep``: return every layer's input (for the backward); else ``z`` is updated in place.
    ``constrain``: ``u`` is raw, each layer's ``u_hat = constrain(u_k, w_k)`` (no graph only).
    On a CPU with the compiled kernels (:mod:`nfvi.native`) the loop runs there."""
    kernels = kernels_for(z, w, u, b)
    if kernels is not None:
        u_hat = u if constrain is None else constrain.fused(u, w)
        return kernels.planar_forward(z, w, u_hat, b, keep)
    inputs: list[Tensor] = []
    hs: list[Tensor] = []
    ss: list[Tensor] = []
    shared = w.shape[1] == 1 and z.shape[0] != 1
    if not keep:
        z = z.clone()  # updated in place: nothing saved, nothing else reads z
    for k in range(w.shape[0]):
        if keep:
            inputs.append(z)
        w_k = w[k]
        u_k = u[k] if constrain is None else constrain(u[k], w_k)
        if constrain is not None:
            ss.append((w_k * u_k).sum(-1, keepdim=True))
        a = torch.addmm(b[k], z, w_k.t()) if shared else (z * w_k).sum(-1, keepdim=True) + b[k]
        h = torch.tanh(a)
        hs.append(h)
        z = torch.addcmul(z, h, u_k) if keep else z.addcmul_(h, u_k)
    h = torch.stack(hs)
    s = (w * u).sum(-1, keepdim=True) if constrain is None else torch.stack(ss)
    log_det = _log_abs(1.0 + (1.0 - h * h) * s).sum(0).squeeze(-1)
    return z, log_det, torch.stack(inputs) if keep else None, h


class PlanarStackFunction(torch.autograd.Function):
    """``(z [B, D], w [K, B|1, D], u_hat [K, B|1, D], b [K, B|1, 1]) -> (z_K, log_det [B],
    inputs, h)``; the last two are saved for the backward (not differentiable). See the module
    docstring for the formulas."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor, w: Tensor, u: Tensor, b: Tensor):  # type: ignore[override]
        return _planar_loop(z, w, u, b, keep=True)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        _, w, u, b = inputs
        _, _, zin, h = output
        ctx.mark_non_differentiable(zin, h)
        ctx.save_for_backward(w, u, b, zin, h)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_z: Tensor, g_ld: Tensor, _g_in: Tensor, _g_h: Tensor):  # type: ignore[override]
        w, u, b, zin, h = ctx.saved_tensors
        kernels = kernels_for(g_z, w, u, zin)
        if kernels is not None:
            return kernels.planar_backward(g_z, g_ld, w, u, zin, h)
        K = w.shape[0]
        hp = 1.0 - h * h  # h'(a) [K, B, 1]
        s = (w * u).sum(-1, keepdim=True)  # w^T u_hat [K, B|1, 1]
        q_hp = _inv_abs(1.0 + hp * s, g_ld.unsqueeze(-1)) * hp  # dL/ds_k = q_k h'_k
        da_det = -2.0 * q_hp * h * s  # dL/da_k through det_k, for all layers at once
        shared = u.shape[1] == 1 and g_z.shape[0] != 1
        grads: list[Tensor] = [g_z] * K
        das: list[Tensor] = [g_z] * K
        g = g_z
        for k in range(K - 1, -1, -1):  # sequential: g_{k-1} needs g_k
            grads[k] = g
            gu = torch.mm(g, u[k].t()) if shared else (g * u[k]).sum(-1, keepdim=True)
            da = torch.addcmul(da_det[k], gu, hp[k])
            das[k] = da
            g = torch.addcmul(g, da, w[k])
        da = torch.stack(das)
        g_w = torch.addcmul(da * zin, q_hp, u)
        g_u = torch.addcmul(torch.stack(grads) * h, q_hp, w)
        return g, _like(g_w, w), _like(g_u, u), _like(da, b)


def planar_stack(z: Tensor, w: Tensor, u: Tensor, b: Tensor,
                 constrain: PlanarConstraint | None = None) -> tuple[Tensor, Tensor]:
    """K planar layers: ``z [B, D]``, ``w, u [K, B|1, D]``, ``b [K, B|1, 1]`` ->
    ``(z_K [B, D], sum_k log|det_k| [B])``.

    ``constrain``: ``u`` is raw and constrained here, for all layers at once before the fused
    pass (one autograd node, :meth:`PlanarConstraint.fused`); without a graph to record, the
    torch loop does it layer by layer inside (at evaluation batch sizes a ``[K, B, D]``
    temporary falls out of the cache, one layer's does not) and the compiled kernels for all
    layers at once (``[K, P, D]``, P the parameter rows). None: ``u`` is ``u_hat`` already."""
    if _record(z, w, u, b):
        u_hat = u if constrain is None else constrain.fused(u, w)
        z_k, log_det, _, _ = PlanarStackFunction.apply(z, w, u_hat, b)
        return z_k, log_det
    z_k, log_det, _, _ = _planar_loop(z, w, u, b, keep=False, constrain=constrain)
    return z_k, log_det


# ----------------------------------------------------------------------------- radial


def _radial_loop(z: Tensor, c: Tensor, alpha: Tensor, beta: Tensor, keep: bool
                 ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """The forward: ``(z_K, log_det [B], d [K, B, D] or None, r [K, B, 1])``; compiled where
    :mod:`nfvi.native` can take it."""
    kernels = kernels_for(z, c, alpha, beta)
    if kernels is not None:
        return kernels.radial_forward(z, c, alpha, beta, keep)
    diffs: list[Tensor] = []
    rs: list[Tensor] = []
    if not keep:
        z = z.clone()  # updated in place: nothing saved, nothing else reads z
    for k in range(c.shape[0]):
        d = z - c[k]
        r = torch.linalg.vector_norm(d, dim=-1, keepdim=True)
        rs.append(r)
        bh = beta[k] / (alpha[k] + r)
        if keep:
            diffs.append(d)
            z = torch.addcmul(z, bh, d)
        else:
            z.addcmul_(bh, d)
    r = torch.stack(rs)
    h = 1.0 / (alpha + r)
    bh = beta * h
    log_det = ((z.shape[-1] - 1) * _log_abs(1.0 + bh) + _log_abs(1.0 + bh - bh * h * r))
    return z, log_det.sum(0).squeeze(-1), torch.stack(diffs) if keep else None, r


class RadialStackFunction(torch.autograd.Function):
    """``(z [B, D], c [K, B|1, D], alpha [K, B|1, 1], beta [K, B|1, 1]) -> (z_K,
    log_det [B], d, r)``; ``alpha > 0``, ``beta >= -alpha`` already constrained; the last two
    are saved for the backward (not differentiable). See the module docstring."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor, c: Tensor, alpha: Tensor, beta: Tensor):  # type: ignore[override]
        return _radial_loop(z, c, alpha, beta, keep=True)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        _, c, alpha, beta = inputs
        _, _, d, r = output
        ctx.mark_non_differentiable(d, r)
        ctx.save_for_backward(c, alpha, beta, d, r)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_z: Tensor, g_ld: Tensor, _g_d: Tensor, _g_r: Tensor):  # type: ignore[override]
        c, alpha, beta, d, r = ctx.saved_tensors
        kernels = kernels_for(g_z, c, alpha, d)
        if kernels is not None:
            return kernels.radial_backward(g_z, g_ld, alpha, beta, d, r)
        K = c.shape[0]
        h = 1.0 / (alpha + r)  # [K, B, 1]
        hh, hr, bh = h * h, h * r, beta * h
        t1 = 1.0 + bh
        l = g_ld.unsqueeze(-1)  # noqa: E741  (the docstring's name)
        e1 = _inv_abs(t1, l * (d.shape[-1] - 1))
        e2 = _inv_abs(1.0 + bh - bh * hr, l)
        l_h = beta * (e1 + e2 * (1.0 - 2.0 * hr))
        l_beta = h * (e1 + e2 * (1.0 - hr))
        r_inv = torch.where(r > 0, 1.0 / r, r.new_zeros(()))
        # (dL/dr) / r = gd * p + q, gd = g^T d the only part that needs the running gradient
        p = -hh * beta * r_inv
        q = (-e2 * beta * hh - hh * l_h) * r_inv
        grads: list[Tensor] = [g_z] * K
        gds: list[Tensor] = [g_z] * K
        coefs: list[Tensor] = [g_z] * K
        g = g_z
        for k in range(K - 1, -1, -1):  # sequential: g_{k-1} needs g_k
            grads[k] = g
            gd = (g * d[k]).sum(-1, keepdim=True)
            gds[k] = gd
            coef = torch.addcmul(q[k], gd, p[k])
            coefs[k] = coef
            g = torch.addcmul(t1[k] * g, coef, d[k])
        gd = torch.stack(gds)
        g_c = -torch.addcmul(bh * torch.stack(grads), torch.stack(coefs), d)
        g_alpha = -hh * torch.addcmul(l_h, beta, gd)
        g_beta = torch.addcmul(l_beta, h, gd)
        return g, _like(g_c, c), _like(g_alpha, alpha), _like(g_beta, beta)


def radial_stack(z: Tensor, c: Tensor, alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """K radial layers: ``z [B, D]``, centres ``c [K, B|1, D]``, ``alpha, beta [K, B|1, 1]``
    (constrained) -> ``(z_K [B, D], sum_k log|det_k| [B])``."""
    if _record(z, c, alpha, beta):
        z_k, log_det, _, _ = RadialStackFunction.apply(z, c, alpha, beta)
        return z_k, log_det
    z_k, log_det, _, _ = _radial_loop(z, c, alpha, beta, keep=False)
    return z_k, log_det


# ----------------------------------------------------------------------------- Householder


def _householder_loop(z: Tensor, v: Tensor, keep: bool
                      ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The forward: ``(z_K, inputs [K, B, D] or None, a [K, B, 1] or None)``, ``a_k = v_k^T
    z_{k-1}``; compiled where :mod:`nfvi.native` can take it."""
    n_raw = (v * v).sum(-1, keepdim=True)  # [K, P, 1]
    kernels = kernels_for(z, v)
    if kernels is not None:
        z_k, _, zin, a = kernels.householder_forward(z, v, n_raw, keep)
        return z_k, zin, a
    two_over_n = 2.0 / n_raw.clamp_min(torch.finfo(v.dtype).tiny)
    inputs: list[Tensor] = []
    dots: list[Tensor] = []
    if not keep:
        z = z.clone()  # updated in place: nothing saved, nothing else reads z
    for k in range(v.shape[0]):
        a = _dot(z, v[k])
        if keep:
            inputs.append(z)
            dots.append(a)
            z = torch.addcmul(z, a * two_over_n[k], v[k], value=-1.0)
        else:
            z.addcmul_(a * two_over_n[k], v[k], value=-1.0)
    if not keep:
        return z, None, None
    return z, torch.stack(inputs), torch.stack(dots)


class HouseholderStackFunction(torch.autograd.Function):
    """``(z [B, D], v [K, B|1, D]) -> (z_K, inputs, a)``; the last two are saved for the
    backward (not differentiable). See the module docstring for the formulas."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor, v: Tensor):  # type: ignore[override]
        return _householder_loop(z, v, keep=True)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        _, v = inputs
        _, zin, a = output
        ctx.mark_non_differentiable(zin, a)
        ctx.save_for_backward(v, zin, a)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_z: Tensor, _g_in: Tensor, _g_a: Tensor):  # type: ignore[override]
        v, zin, a = ctx.saved_tensors
        n_raw = (v * v).sum(-1, keepdim=True)
        kernels = kernels_for(g_z, v, zin)
        if kernels is not None:
            return kernels.householder_backward(g_z, v, n_raw, zin, a)
        tiny = torch.finfo(v.dtype).tiny
        n = n_raw.clamp_min(tiny)
        K = v.shape[0]
        grads: list[Tensor] = [g_z] * K
        dots: list[Tensor] = [g_z] * K
        g = g_z
        for k in range(K - 1, -1, -1):  # sequential: g_{k-1} needs g_k
            grads[k] = g
            s = _dot(g, v[k])
            dots[k] = s
            g = torch.addcmul(g, s * (2.0 / n[k]), v[k], value=-1.0)
        s = torch.stack(dots)
        c_v = torch.where(n_raw >= tiny, 4.0 * a * s / (n * n), n.new_zeros(()))
        g_v = torch.addcmul(c_v * v, s * zin + a * torch.stack(grads), -2.0 / n)
        return g, _like(g_v, v)


def householder_stack(z: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """K Householder reflections: ``z [B, D]``, ``v [K, B|1, D]`` -> ``(z_K [B, D], zeros [B])``
    (volume-preserving: every layer's ``log|det|`` is 0)."""
    if _record(z, v):
        z_k, _, _ = HouseholderStackFunction.apply(z, v)
    else:
        z_k, _, _ = _householder_loop(z, v, keep=False)
    return z_k, z.new_zeros(z.shape[0])
