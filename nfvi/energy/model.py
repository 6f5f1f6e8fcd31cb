"""A flow-based approximation ``q_K`` of a 2D energy target.

``q_0 = N(mean, diag(exp(log_std))^2)`` with learnable ``mean`` and ``log_std``; ``z_K`` is
``z_0`` pushed through a global (non-amortized) :class:`~nfvi.flows.FlowStack` of any flow in
the registry, so ``ln q_K(z_K) = ln q_0(z_0) - sum_k ln|det df_k/dz_{k-1}|``.

The training objective is the annealed free energy (R&M 2015, eq. 20, with ``p`` the target)::

    F_beta = E_{q0}[ ln q0(z0) - sum_k ln|det_k| + beta U(z_K) ]

which at ``beta = 1`` equals ``KL(q_K || p) - ln Z``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from nfvi.flows import InverseNotAvailable, make_flow

_LOG_2PI = math.log(2 * math.pi)


@dataclass
class FlowSample:
    """``n`` samples of ``q_K``: ``z_K [n, D]`` and ``log_q = ln q_K(z_K) [n]``."""

    z_K: Tensor
    log_q: Tensor
    z_0: Tensor
    log_q0: Tensor
    log_det: Tensor


@dataclass
class EnergyLoss:
    """One Monte Carlo estimate of the annealed free energy.

    ``loss`` (scalar, to minimise) is ``mean(log_q + beta * energy)``; ``free_energy`` is the
    same at ``beta = 1`` (detached), i.e. ``KL(q || p) - ln Z``; ``log_q`` and ``energy`` are
    the per-sample ``[n]`` values (detached).
    """

    loss: Tensor
    free_energy: Tensor
    beta: float
    log_q: Tensor
    energy: Tensor


class EnergyModel(nn.Module):
    """Learnable diagonal Gaussian ``q_0`` followed by ``K`` layers of flow ``flow_name``.

    Args:
        target: ``U``: a callable ``z [B, D] -> U [B]`` (``p ∝ exp(-U)``); not a parameter.
        flow_name: a name in :data:`nfvi.flows.FLOWS`.
        K: the number of flow layers (0: plain diagonal Gaussian).
        dim: the dimension (2 for U1-U4).
        hparams: extra keyword arguments for the flow layer class.
        fused: run a planar or radial stack as one fused pass (:attr:`FlowStack.fused`).
    """

    def __init__(
        self,
        target: Callable[[Tensor], Tensor],
        flow_name: str,
        K: int,
        dim: int = 2,
        hparams: Mapping[str, Any] | None = None,
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.target = target
        self.dim = dim
        self.mean = nn.Parameter(torch.zeros(dim))
        self.log_std = nn.Parameter(torch.zeros(dim))
        self.flow = make_flow(flow_name, dim, K, amortized=False, fused=fused,
                              **dict(hparams or {}))

    @property
    def has_inverse(self) -> bool:
        """Whether :meth:`log_prob` can evaluate ``q_K`` exactly at given points."""
        return self.flow.has_inverse

    def base_log_prob(self, z0: Tensor) -> Tensor:
        """``ln q_0(z0)``, shape ``[B]``."""
        eps = (z0 - self.mean) * torch.exp(-self.log_std)
        return -0.5 * (eps * eps).sum(-1) - self.log_std.sum() - 0.5 * self.dim * _LOG_2PI

    def sample(self, n: int, generator: torch.Generator | None = None) -> FlowSample:
        """Draw ``n`` samples (reparameterized: gradients flow into every parameter)."""
        eps = torch.randn(
            n, self.dim, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        z0 = self.mean + torch.exp(self.log_std) * eps
        log_q0 = -0.5 * (eps * eps).sum(-1) - self.log_std.sum() - 0.5 * self.dim * _LOG_2PI
        zk, log_det = self.flow(z0)
        return FlowSample(z_K=zk, log_q=log_q0 - log_det, z_0=z0, log_q0=log_q0, log_det=log_det)

    def loss(self, n: int, beta: float = 1.0) -> EnergyLoss:
        """The annealed free energy on ``n`` fresh samples of ``q_0``."""
        s = self.sample(n)
        energy = self.target(s.z_K)
        loss = (s.log_q + beta * energy).mean()
        free_energy = (s.log_q + energy).mean().detach()
        return EnergyLoss(
            loss=loss,
            free_energy=free_energy,
            beta=float(beta),
            log_q=s.log_q.detach(),
            energy=energy.detach(),
        )

    def log_prob(self, z: Tensor) -> Tensor:
        """Exact ``ln q_K(z) = ln q_0(z_0) + ln|det dz_0/dz|``, ``z_0 = f^{-1}(z)``, in one
        inverse pass (the inverse reports its own log-determinant); only when
        :attr:`has_inverse`, else :class:`~nfvi.flows.InverseNotAvailable`."""
        if not self.has_inverse:
            raise InverseNotAvailable("this flow has no inverse; sample q_K instead")
        z0, log_det_inverse = self.flow.inverse(z)
        return self.base_log_prob(z0) + log_det_inverse
