"""RealNVP: affine coupling (Dinh, Sohl-Dickstein & Bengio 2017) with a bounded scale.

One layer (halves alternate with the layer index, see :mod:`nfvi.flows.coupling`)::

    (r, t) = NN(z_A; b)
    s      = a * tanh(r / a)                      (bounded log-scale, |s| < a)
    y_A    = z_A,   y_B = z_B * exp(s) + t
    log|det df/dz| = sum_i s_i

``b`` is the conditioner's first-layer bias, the layer's outside parameter (amortized: ``b(x)``
from the stack's head on the encoder features ``h(x)``, see :mod:`nfvi.flows.coupling`). The
bounded log-scale is a soft clamp
(``s ~ r`` near 0, slope 1, and ``exp(s)`` stays in ``(e^-a, e^a)`` whatever the raw output),
in the spirit of the paper's ``tanh``-scaled ``s``; ``a = scale_bound``. The inverse is
``z_B = (y_B - t) * exp(-s)``, ``log|det| = -sum_i s_i``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nfvi.flows.base import register_flow
from nfvi.flows.coupling import CouplingLayer


@register_flow("realnvp")
class RealNVP(CouplingLayer):
    """Affine coupling; outside parameter: the conditioner's first-layer ``bias``.

    Hyperparameters: ``hidden`` (conditioner widths), ``activation``, ``scale_bound`` (``a``).
    """

    params_per_dim = 2

    def __init__(self, dim: int, index: int = 0, *, scale_bound: float = 2.0,
                 **conditioner: object) -> None:
        super().__init__(dim, index, **conditioner)  # hidden, activation (see CouplingLayer)
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

    def elementwise_inverse(self, y: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        s = self.log_scale(theta[..., 0])
        return (y - theta[..., 1]) * torch.exp(-s), -s
