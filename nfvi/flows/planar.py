"""Planar flow (Rezende & Mohamed 2015, section 4.1).

``f(z) = z + u_hat h(w^T z + b)`` with ``h = tanh`` and
``log|det df/dz| = log|1 + u_hat^T psi(z)|``, ``psi(z) = h'(w^T z + b) w``.

Invertibility needs ``w^T u_hat >= -1``; the raw ``u`` is mapped to
``u_hat = u + [m(w^T u) - w^T u] w / ||w||^2`` with ``m(x) = -1 + softplus(x)``,
so ``w^T u_hat = m(w^T u) > -1`` for every raw parameter.

``centered=True`` (an option of this implementation) uses ``m(x) = -1 + softplus(x + ln(e - 1))``
instead, the same constraint shifted so that ``m(0) = 0``: zero raw parameters are then the
identity, and the correction ``[m(s) - s] w / ||w||^2`` (``s = w^T u``) stays bounded,
``~ -(w_hat^T u) w_hat / e``, as ``||w|| -> 0``, where the paper's ``m`` gives a correction of
norm ``0.31 / ||w||`` that grows without bound. With per-example (amortized) parameters some
examples' ``w(x)`` come close to zero, and that term then throws ``z`` far away.

There is no closed-form inverse (``has_inverse = False``: :meth:`inverse` raises
:class:`~nfvi.flows.base.InverseNotAvailable`).

A stack of planar layers of one set of hyperparameters runs fused by default
(:meth:`Planar.fused_forward`, :mod:`nfvi.flows.fused`): ``u_hat`` for all layers at once, then
one pass over the layers, each with a hand-derived backward. ``det_floor`` and ``centered``
only change ``u_hat``, so every option fuses.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nfvi.flows.base import FlowLayer, Params, register_flow
from nfvi.flows.fused import PlanarConstraint, kernels_for, planar_stack


@register_flow("planar")
class Planar(FlowLayer):
    """Raw parameters per example: ``u [D]``, ``w [D]``, ``b [1]``.

    Hyperparameters: ``centered`` (``m(0) = 0``, see the module docstring), ``w_init_std``
    (None: ``1/sqrt(D)`` when centered, else 0.01),
    ``det_floor`` ``d``: ``m`` scaled by ``1 - d``, so ``w^T u_hat > -1 + d`` and every layer's
    ``det = 1 + h'(a) w^T u_hat > d`` (no log-determinant singularity to fall into).
    """

    # forward broadcasts over extra leading batch dims: z [n, B, D] with params [B|1, ...]
    broadcasts_batch = True

    def __init__(self, dim: int, index: int = 0, *, centered: bool = False,
                 w_init_std: float | None = None, det_floor: float = 0.0) -> None:
        super().__init__(dim, index)
        if not 0.0 <= float(det_floor) < 1.0:
            raise ValueError(f"planar det_floor must be in [0, 1), got {det_floor}")
        self.shift = math.log(math.e - 1.0) if centered else 0.0
        if w_init_std is None:  # centered: a unit-norm w; the paper's m: small like the rest
            w_init_std = dim**-0.5 if centered else 0.01
        self.w_init_std = float(w_init_std)
        self.floor = float(det_floor)
        self.constraint = PlanarConstraint(self.shift, 1.0 - self.floor)

    def init_global(self, name: str, param: Tensor) -> None:
        """``N(0, 0.01^2)``; ``w`` with ``w_init_std`` (a unit-scale ``w``, ``1/sqrt(D)``, gives
        the centered layer a slope to learn from at the identity)."""
        torch.nn.init.normal_(param, std=self.w_init_std if name == "w" else 0.01)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"u": (self.dim,), "w": (self.dim,), "b": (1,)}

    def constrained_u(self, u: Tensor, w: Tensor) -> Tensor:
        """``u_hat`` with ``w^T u_hat = m(w^T u) > -1``; shapes ``[..., D]`` (``[B, D]``, or
        ``[K, B, D]`` for a fused stack)."""
        return self.constraint(u, w)

    def forward(self, z: Tensor, context: Params | None = None) -> tuple[Tensor, Tensor]:
        params = self.raw_params(context)
        u, w, b = params["u"], params["w"], params["b"]
        u_hat = self.constrained_u(u, w)
        a = (w * z).sum(-1, keepdim=True) + b  # [B, 1]
        h = torch.tanh(a)
        z_next = z + u_hat * h
        # h'(a) = 1 - tanh(a)^2; det = 1 + h'(a) w^T u_hat >= 0 by construction
        det = 1.0 + (1.0 - h * h) * (w * u_hat).sum(-1, keepdim=True)
        log_abs_det = det.abs().clamp_min(torch.finfo(z.dtype).tiny).log().squeeze(-1)
        return z_next, log_abs_det.expand(z.shape[:-1])  # [B] (or [n, B]: FlowStack repeat)

    def fuse_key(self) -> tuple | None:
        # a subclass may change the map: only this class's layers fuse, of equal hparams
        if type(self) is not Planar:
            return None
        return ("planar", self.dim, self.shift, self.floor)

    def fused_forward(self, z: Tensor, params: Params) -> tuple[Tensor, Tensor]:
        """All K layers: ``params`` ``u, w [K, B|1, D]``, ``b [K, B|1, 1]``."""
        return planar_stack(z, params["w"], params["u"], params["b"], self.constraint)

    def fused_broadcasts(self, z: Tensor) -> bool:
        # the compiled kernels read parameter row r % B for row r; the torch loop needs B rows
        return not torch.is_grad_enabled() and kernels_for(z) is not None
