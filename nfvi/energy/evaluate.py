"""Exact evaluation for the 2D energies: ``ln Z`` by quadrature, ``KL(q || p)`` and the ESS.

**ln Z by quadrature.** :func:`log_partition` sums ``exp(-U)`` at the centres of a uniform grid
of cells of side ``h`` (default ``h = 0.02``) over the target's box
(:meth:`~nfvi.energy.targets.EnergyTarget.quadrature_box`: ``(-6, 6)^2`` for U1 and
``z1 ∈ ±max(6, 9 s), z2 ∈ (-9, 7)`` for U2-U4), in float64 and with a log-sum-exp.
The integrand is smooth and decays like a Gaussian, for which this rule converges faster than
any power of ``h``; the mass outside the box is below 1e-15. The error it leaves is below
1e-11 nats for every target (measured: for U2-U4 against the closed form
``Z = [sum_j sigma_j sqrt(2 pi)] s sqrt(2 pi)``, differences ~1e-15 nats; for U1 the change
from ``h = 0.02`` to ``h = 0.01`` is 2e-13 nats). The result also carries the ``h`` versus
``2h`` difference, ``refinement_delta``, as a computed error bound.

**KL.** With ``z_i ~ q_K``, ``KL(q || p) = E_q[ln q_K(z) + U(z)] + ln Z`` is estimated by the
sample mean over ``n`` samples, with standard error ``std / sqrt(n)``.

**ESS.** The self-normalized importance weights ``w_i = p(z_i) / q_K(z_i)`` give
``ESS = (sum w)^2 / sum w^2``, reported as a percentage of ``n``: 100 % means ``q = p``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from nfvi.energy.model import EnergyModel
from nfvi.energy.targets import EnergyTarget

#: default cell side of the quadrature grid
DEFAULT_SPACING = 0.02


@dataclass
class LogZ:
    """``ln Z`` by quadrature and the grid that gave it."""

    log_z: float
    spacing: float
    box: tuple[tuple[float, float], tuple[float, float]]
    points: int
    #: |ln Z(h) - ln Z(2h)|: a computed bound on the discretisation error
    refinement_delta: float
    #: ln Z in closed form where there is one (U2-U4), else None
    closed_form: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def _riemann_log_sum(
    target: EnergyTarget,
    box: tuple[tuple[float, float], tuple[float, float]],
    h: float,
    device: torch.device,
    chunk_points: int,
) -> tuple[float, int]:
    (a1, b1), (a2, b2) = box
    n1 = max(1, round((b1 - a1) / h))
    n2 = max(1, round((b2 - a2) / h))
    h1 = (b1 - a1) / n1
    h2 = (b2 - a2) / n2
    dt = torch.float64
    x1 = a1 + (torch.arange(n1, device=device, dtype=dt) + 0.5) * h1
    x2 = a2 + (torch.arange(n2, device=device, dtype=dt) + 0.5) * h2
    rows = max(1, chunk_points // n2)
    parts = []
    for start in range(0, n1, rows):
        c1 = x1[start : start + rows]
        z = torch.stack(torch.meshgrid(c1, x2, indexing="ij"), dim=-1).reshape(-1, 2)
        parts.append(torch.logsumexp(-target(z), dim=0))
    total = torch.logsumexp(torch.stack(parts), dim=0).item()
    return total + math.log(h1 * h2), n1 * n2


def log_partition(
    target: EnergyTarget,
    spacing: float = DEFAULT_SPACING,
    device: torch.device | str = "cpu",
    chunk_points: int = 1_000_000,
) -> LogZ:
    """``ln ∫ exp(-U(z)) dz`` by the midpoint rule on a grid of side ``spacing`` (see above)."""
    if spacing <= 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    box = target.quadrature_box()
    device = torch.device(device)
    log_z, points = _riemann_log_sum(target, box, spacing, device, chunk_points)
    coarse, _ = _riemann_log_sum(target, box, 2 * spacing, device, chunk_points)
    return LogZ(
        log_z=log_z,
        spacing=spacing,
        box=box,
        points=points,
        refinement_delta=abs(log_z - coarse),
        closed_form=target.log_z_closed_form(),
    )


def log_partition_importance(
    target: EnergyTarget,
    n: int,
    mean: tuple[float, float] = (0.0, 0.0),
    std: tuple[float, float] = (3.0, 3.0),
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """An independent Monte Carlo ``ln Z``: importance sampling from ``N(mean, diag(std)^2)``.

    Returns ``(ln Z_hat, stderr)``, the standard error by the delta method
    (``se(Z_hat) / Z_hat``). The proposal must have heavier tails than ``p``.
    """
    dt = torch.float64
    m = torch.tensor(mean, dtype=dt)
    s = torch.tensor(std, dtype=dt)
    eps = torch.randn(n, 2, generator=generator, dtype=dt)
    z = m + s * eps
    log_prop = -0.5 * (eps * eps).sum(-1) - s.log().sum() - math.log(2 * math.pi)
    log_w = -target(z) - log_prop
    log_mean = torch.logsumexp(log_w, 0) - math.log(n)
    w = torch.exp(log_w - log_mean)  # w / mean(w)
    rel_se = w.std(unbiased=True).item() / math.sqrt(n)
    return log_mean.item(), rel_se


@dataclass
class KLEstimate:
    """``KL(q || p)`` (nats) with its standard error, and the ESS of ``p / q`` in percent."""

    kl: float
    kl_stderr: float
    ess_percent: float
    n: int
    #: samples where ln q or U was not finite (counted, then excluded)
    nonfinite: int

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def estimate_kl(model: EnergyModel, log_z: float, n: int, chunk: int = 50_000) -> KLEstimate:
    """``KL(q_K || p)`` from ``n`` samples of ``model`` and ``ln Z``; see the module docstring."""
    if n < 2:
        raise ValueError(f"need at least 2 samples, got {n}")
    values: list[Tensor] = []
    left = n
    while left > 0:
        m = min(chunk, left)
        s = model.sample(m)
        u = model.target(s.z_K)
        values.append(s.log_q.cpu().double() + u.cpu().double())
        left -= m
    d = torch.cat(values)  # ln q - ln p_tilde = ln q + U
    finite = torch.isfinite(d)
    nonfinite = int((~finite).sum())
    d = d[finite]
    if d.numel() < 2:
        return KLEstimate(math.nan, math.nan, 0.0, n, nonfinite)
    kl = d.mean().item() + log_z
    stderr = d.std(unbiased=True).item() / math.sqrt(d.numel())
    log_w = -d - log_z  # ln p - ln q
    log_ess = 2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)
    ess_percent = 100.0 * math.exp(log_ess.item()) / n
    return KLEstimate(kl, stderr, ess_percent, n, nonfinite)
