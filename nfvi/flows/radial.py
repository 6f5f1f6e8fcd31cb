"""Radial flow (Rezende & Mohamed 2015, section 4.1).

``f(z) = z + beta h(alpha, r) (z - z0)`` with ``r = ||z - z0||``, ``h = 1 / (alpha + r)``;
``log|det| = (D - 1) log(1 + beta h) + log(1 + beta h + beta h'(alpha, r) r)``,
``h' = -1 / (alpha + r)^2`` (the ICML PDF drops the beta in front of ``h' r``).

Invertible when ``beta >= -alpha``: ``alpha = softplus(a)``, ``beta = -alpha + softplus(b)``;
the inverse has no closed form here (``has_inverse = False``: :meth:`inverse` raises
:class:`~nfvi.flows.base.InverseNotAvailable`).

A stack of radial layers runs fused by default (:meth:`Radial.fused_forward`,
:mod:`nfvi.flows.fused`): ``alpha, beta`` for all layers at once in ordinary autograd, then one
pass with a hand-derived backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nfvi.flows.base import FlowLayer, Params, register_flow
from nfvi.flows.fused import kernels_for, radial_stack


@register_flow("radial")
class Radial(FlowLayer):
    """Raw parameters per example: ``z0 [D]``, ``a [1]``, ``b [1]``."""

    # forward broadcasts over extra leading batch dims: z [n, B, D] with params [B|1, ...]
    broadcasts_batch = True

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"z0": (self.dim,), "a": (1,), "b": (1,)}

    def forward(self, z: Tensor, context: Params | None = None) -> tuple[Tensor, Tensor]:
        params = self.raw_params(context)
        z0, a, b = params["z0"], params["a"], params["b"]
        alpha = F.softplus(a)  # [B|1, 1]
        beta = F.softplus(b) - alpha
        diff = z - z0
        r = diff.norm(dim=-1, keepdim=True)  # [B, 1]
        h = 1.0 / (alpha + r)
        bh = beta * h
        z_next = z + bh * diff
        # 1 + beta h + beta h' r = 1 + beta alpha / (alpha + r)^2 >= 0 when beta >= -alpha
        tiny = torch.finfo(z.dtype).tiny
        term1 = (self.dim - 1) * (1.0 + bh).abs().clamp_min(tiny).log()
        term2 = (1.0 + bh - beta * h * h * r).abs().clamp_min(tiny).log()
        return z_next, (term1 + term2).squeeze(-1).expand(z.shape[:-1])

    def fuse_key(self) -> tuple | None:
        # a subclass may change the map: only this class's layers fuse
        return ("radial", self.dim) if type(self) is Radial else None

    def fused_forward(self, z: Tensor, params: Params) -> tuple[Tensor, Tensor]:
        """All K layers: ``params`` ``z0 [K, B|1, D]``, ``a, b [K, B|1, 1]``."""
        alpha = F.softplus(params["a"])  # all layers, in autograd
        beta = F.softplus(params["b"]) - alpha
        return radial_stack(z, params["z0"], alpha, beta)

    def fused_broadcasts(self, z: Tensor) -> bool:
        # the compiled kernels read parameter row r % B for row r; the torch loop needs B rows
        return not torch.is_grad_enabled() and kernels_for(z) is not None
