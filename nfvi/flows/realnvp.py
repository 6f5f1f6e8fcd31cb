"""RealNVP: affine coupling (Dinh, Sohl-Dickstein & Bengio 2017) with a bounded scale.

One layer (halves alternate with the layer index, see :mod:`nfvi.flows.coupling`)::

    (r, t) = NN([z_A, h(x)])
    s      = a * tanh(r / a)                      (bounded log-scale, |s| < a)
    y_A    = z_A,   y_B = z_B * exp(s) + t
    log|det df/dz| = sum_i s_i

``h(x)`` are the encoder features in an amortized stack. The bounded log-scale is a soft clamp
(``s ~ r`` near 0, slope 1, and ``exp(s)`` stays in ``(e^-a, e^a)`` whatever the raw output),
in the spirit of the paper's ``tanh``-scaled ``s``; ``a = scale_bound``. The inverse is
``z_B = (y_B - t) * exp(-s)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nfvi.flows.base import register_flow
from nfvi.flows.coupling import CouplingLayer


@register_flow("realnvp")
class RealNVP(CouplingLayer):
    """Affine coupling; no outside parameters.

    Hyperparameters: ``hidden`` (conditioner widths), ``activation``, ``scale_bound`` (``a``).
    """

    params_per_dim = 2

    def __init__(
        self,
        dim: int,
        index: int = 0,
        context_dim: int | None = None,
        *,
        hidden: Sequence[int] = (256, 256),
        activation: str = "tanh",
        scale_bound: float = 2.0,
    ) -> None:
        super().__init__(dim, index, context_dim, hidden=hidden, activation=activation)
        if not scale_bound > 0:
            raise ValueError(f"realnvp scale_bound must be positive, got {scale_bound}")
        self.scale_bound = float(scale_bound)

    def log_scale(self, raw: Tensor) -> Tensor:
        """``s = a tanh(raw / a)``."""
        a = self.scale_bound
        return a * torch.tanh(raw / a)

    def elementwise(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        s = self.log_scale(theta[..., 0])
        return x * torch.exp(s) + theta[..., 1], s

    def elementwise_inverse(self, y: Tensor, theta: Tensor) -> Tensor:
        s = self.log_scale(theta[..., 0])
        return (y - theta[..., 1]) * torch.exp(-s)

    def cost_macs(self) -> int:
        """Multiply-accumulates per example: conditioner + the affine map (~2 per coordinate)."""
        return self.conditioner_macs() + 2 * self.n_upd
