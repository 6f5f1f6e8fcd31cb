"""Rational-quadratic spline coupling (Durkan, Bekasov, Murray & Papamakarios 2019, "Neural
Spline Flows"), with identity (linear, slope 1) tails outside ``[-B, B]``.

One layer (halves alternate with the layer index, see :mod:`nfvi.flows.coupling`): every
updated coordinate ``z_B,i`` goes through its own monotone spline ``g_i`` whose ``3K - 1``
parameters come from ``NN(z_A; b)``; ``log|det| = sum_i log g_i'(z_B,i)``. ``b`` is the
conditioner's first-layer bias, the layer's outside parameter (amortized: ``b(x)`` from the
stack's head on the encoder features, see :mod:`nfvi.flows.coupling`).

The spline (Gregory & Delbourgo 1982; NSF section 3.1) on ``K`` bins with knots
``(x^k, y^k)``, ``k = 0..K``, ``x^0 = y^0 = -B``, ``x^K = y^K = B``, and knot derivatives
``delta^k > 0`` with ``delta^0 = delta^K = 1`` (so it joins the identity tails with a
continuous derivative). In bin ``k``, with ``w = x^{k+1} - x^k``, ``h = y^{k+1} - y^k``,
``s = h / w``, ``xi = (x - x^k) / w`` in ``[0, 1]``::

    g(x)  = y^k + h [s xi^2 + delta^k xi (1 - xi)] / [s + (delta^{k+1} + delta^k - 2 s) xi (1 - xi)]
    g'(x) = s^2 [delta^{k+1} xi^2 + 2 s xi (1 - xi) + delta^k (1 - xi)^2]
            / [s + (delta^{k+1} + delta^k - 2 s) xi (1 - xi)]^2

The inverse solves ``a xi^2 + b xi + c = 0`` for ``y`` in bin ``k`` (from clearing the
denominator of ``g``), with ``r = y - y^k`` and ``Delta = delta^{k+1} + delta^k - 2 s``::

    a = h (s - delta^k) + r Delta,   b = h delta^k - r Delta,   c = -s r
    xi = 2c / (-b - sqrt(b^2 - 4ac))          (the root in [0, 1], in a cancellation-free form)

Parameterization of the raw ``theta = (theta_w [K], theta_h [K], theta_d [K - 1])``: bin widths
``2B (m_w + (1 - K m_w) softmax(theta_w))`` (heights alike), interior derivatives
``m_d + softplus(theta_d + c)`` with ``c = log(e^{1 - m_d} - 1)``, so ``theta = 0`` gives equal
bins, unit derivatives and the identity map.

Bounded parameters (this implementation): before that map the raw ``theta`` from the
conditioner is soft-clamped, ``theta <- b tanh(theta / b)`` with ``b = raw_bound`` (default 1;
``null`` turns it off, giving NSF's unbounded parameterization). With ``K = 8`` and ``b = 1``
a bin is 0.15-4.1 times the uniform width (heights alike) and interior knot derivatives lie in
``(0.49, 1.73)``, so every layer's log-slopes stay bounded (within about ``[-7, 4]``): like
RealNVP's bounded scale, this keeps long stacks and large conditioner outputs well conditioned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nfvi.flows.base import register_flow
from nfvi.flows.coupling import CouplingLayer


def _knots(raw: Tensor, bound: float, min_size: float) -> tuple[Tensor, Tensor]:
    """Knot positions ``[..., K + 1]`` from ``-B`` to ``B`` and bin sizes ``[..., K]``."""
    bins = raw.shape[-1]
    frac = min_size + (1.0 - min_size * bins) * torch.softmax(raw, dim=-1)
    inner = 2.0 * bound * torch.cumsum(frac[..., :-1], dim=-1) - bound
    ends = raw.new_full((*raw.shape[:-1], 1), bound)
    knots = torch.cat([-ends, inner, ends], dim=-1)
    return knots, knots[..., 1:] - knots[..., :-1]


def _derivatives(raw: Tensor, min_derivative: float) -> Tensor:
    """Knot derivatives ``[..., K + 1]``: 1 at both ends, ``m_d + softplus(raw + c)`` inside."""
    shift = math.log(math.expm1(1.0 - min_derivative))
    inner = min_derivative + F.softplus(raw + shift)
    one = raw.new_ones((*raw.shape[:-1], 1))
    return torch.cat([one, inner, one], dim=-1)


def _bin_index(knots: Tensor, v: Tensor) -> Tensor:
    """Bin ``k [..., 1]`` with ``knots[k] <= v < knots[k + 1]`` (the last bin includes ``B``)."""
    return (v.unsqueeze(-1) >= knots[..., 1:-1]).sum(-1, keepdim=True)


def rq_spline(
    x: Tensor,
    theta: Tensor,
    bound: float,
    inverse: bool = False,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """The spline (or its inverse) elementwise, with identity tails outside ``[-B, B]``.

    (A numeric kernel: kept in one piece, a little over 60 lines, so that the forward and
    inverse formulas can be read against the module docstring side by side.)

    Args:
        x: ``[...]`` inputs (outputs of the forward map when ``inverse``).
        theta: ``[..., 3K - 1]`` raw parameters ``(theta_w, theta_h, theta_d)``.
        bound: ``B``.
        inverse: evaluate ``g^{-1}`` instead of ``g``.

    Returns:
        ``(g(x), log g'(x))`` or, when ``inverse``, ``(g^{-1}(x), log (g^{-1})'(x))``.
    """
    bins = (theta.shape[-1] + 1) // 3
    if theta.shape[-1] != 3 * bins - 1:
        raise ValueError(f"spline parameters need 3K - 1 entries, got {theta.shape[-1]}")
    xs, widths = _knots(theta[..., :bins], bound, min_bin_width)
    ys, heights = _knots(theta[..., bins : 2 * bins], bound, min_bin_height)
    deltas = _derivatives(theta[..., 2 * bins :], min_derivative)

    inside = (x >= -bound) & (x <= bound)
    v = x.clamp(-bound, bound)  # keeps the unused branch finite (and its gradient zero)
    k = _bin_index(ys if inverse else xs, v)

    def at(t: Tensor, idx: Tensor = k) -> Tensor:
        return t.gather(-1, idx).squeeze(-1)

    x_k, w, y_k, h = at(xs), at(widths), at(ys), at(heights)
    d_k, d_k1 = at(deltas), at(deltas, k + 1)
    s = h / w
    slack = d_k1 + d_k - 2.0 * s

    if inverse:
        r = v - y_k
        a = h * (s - d_k) + r * slack
        b = h * d_k - r * slack
        c = -s * r
        disc = (b * b - 4.0 * a * c).clamp_min(0.0)
        xi = (2.0 * c / (-b - torch.sqrt(disc))).clamp(0.0, 1.0)
        out = x_k + xi * w
    else:
        xi = ((v - x_k) / w).clamp(0.0, 1.0)
        t = xi * (1.0 - xi)
        out = y_k + h * (s * xi * xi + d_k * t) / (s + slack * t)

    t = xi * (1.0 - xi)
    denom = s + slack * t
    numer = d_k1 * xi * xi + 2.0 * s * t + d_k * (1.0 - xi) ** 2
    log_deriv = 2.0 * torch.log(s) + torch.log(numer) - 2.0 * torch.log(denom)
    if inverse:
        log_deriv = -log_deriv
    out = torch.where(inside, out, x)
    log_deriv = torch.where(inside, log_deriv, torch.zeros_like(log_deriv))
    return out, log_deriv


@register_flow("spline")
class RQSpline(CouplingLayer):
    """Rational-quadratic spline coupling; outside parameter: the conditioner's first-layer
    ``bias``.

    Hyperparameters: ``bins`` (``K``), ``bound`` (``B``), ``hidden`` (conditioner widths),
    ``activation``, ``min_bin_width``, ``min_bin_height``, ``min_derivative``, ``raw_bound``.
    """

    def __init__(
        self,
        dim: int,
        index: int = 0,
        *,
        bins: int = 8,
        bound: float = 3.0,
        hidden: Sequence[int] = (256, 256),
        activation: str = "tanh",
        min_bin_width: float = 1e-3,
        min_bin_height: float = 1e-3,
        min_derivative: float = 1e-3,
        raw_bound: float | None = 1.0,
    ) -> None:
        bins = int(bins)
        if bins < 1:
            raise ValueError(f"spline bins must be >= 1, got {bins}")
        if not bound > 0:
            raise ValueError(f"spline bound must be positive, got {bound}")
        if not (0 <= min_bin_width * bins < 1 and 0 <= min_bin_height * bins < 1):
            raise ValueError("spline min_bin_width * bins and min_bin_height * bins must be < 1")
        if not 0 <= min_derivative < 1:
            raise ValueError("spline min_derivative must be in [0, 1)")
        if raw_bound is not None and not raw_bound > 0:
            raise ValueError(f"spline raw_bound must be positive or null, got {raw_bound}")
        self.params_per_dim = 3 * bins - 1  # instance attribute, read by the base constructor
        super().__init__(dim, index, hidden=hidden, activation=activation)
        self.bins, self.bound = bins, float(bound)
        self.min_bin_width, self.min_bin_height = float(min_bin_width), float(min_bin_height)
        self.min_derivative = float(min_derivative)
        self.raw_bound = None if raw_bound is None else float(raw_bound)

    def _spline(self, x: Tensor, theta: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        if self.raw_bound is not None:
            theta = self.raw_bound * torch.tanh(theta / self.raw_bound)
        return rq_spline(
            x, theta, self.bound, inverse, self.min_bin_width, self.min_bin_height,
            self.min_derivative,
        )

    def elementwise(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        return self._spline(x, theta, inverse=False)

    def elementwise_inverse(self, y: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        return self._spline(y, theta, inverse=True)
