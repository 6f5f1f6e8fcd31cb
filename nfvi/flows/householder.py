"""Householder flow (Tomczak & Welling 2016, "Improving Variational Auto-Encoders using
Householder Flow").

One layer is a Householder reflection

    z' = H z,   H = I - 2 v v^T / ||v||^2,

which is orthogonal and symmetric (``H^T H = H H = I``), so the flow is volume-preserving:
``log|det dz'/dz| = log|det H| = log|-1| = 0``, and it is its own inverse. A stack of K layers
gives ``z_K = H_K ... H_1 z_0``, an orthogonal map that rotates the diagonal Gaussian ``q_0``
into a full-covariance Gaussian ``N(U mu, U diag(sigma^2) U^T)``.

As in the paper, the reflection vectors come from the encoder (amortized: the default), here
through :meth:`param_shapes` (one linear head on the encoder's features produces every layer's
``v``; the paper chains ``v_t = W_t v_{t-1}`` instead); with ``flow.amortized=false`` each
``v_t`` is a learned global vector.

A stack of Householder layers runs fused by default (:meth:`Householder.fused_forward`,
:mod:`nfvi.flows.fused`): all K reflections in one autograd node with a hand-derived backward,
compiled on a CPU (:mod:`nfvi.native`) and a Triton kernel on CUDA; ``flow.fused=false``
runs them layer by layer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nfvi.flows.base import FlowLayer, Params, register_flow
from nfvi.flows.fused import householder_stack, kernels_for


def reflect(z: Tensor, v: Tensor) -> Tensor:
    """``(I - 2 v v^T / ||v||^2) z`` row by row; ``z [B, D]``, ``v [B|1, D]``.

    A zero ``v`` (measure zero) is treated as ``||v||^2 = tiny`` rather than producing NaN.
    """
    v_sq = (v * v).sum(-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    return z - (2.0 * (v * z).sum(-1, keepdim=True) / v_sq) * v


@register_flow("householder")
class Householder(FlowLayer):
    """Raw parameter per example: the reflection vector ``v [D]`` (only its direction matters).

    There is no identity among reflections; ``v`` starts as ``N(0, 1)`` so that its norm (and
    with it the scale of its gradient, which goes as ``1/||v||``) is of order one.
    """

    has_inverse = True

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"v": (self.dim,)}

    def init_global(self, name: str, param: Tensor) -> None:
        torch.nn.init.normal_(param, std=1.0)

    def forward(self, z: Tensor, context: Params | None = None) -> tuple[Tensor, Tensor]:
        return reflect(z, self.raw_params(context)["v"]), z.new_zeros(z.shape[0])

    def fuse_key(self) -> tuple | None:
        # a subclass may change the map: only this class's layers fuse
        return ("householder", self.dim) if type(self) is Householder else None

    def fused_forward(self, z: Tensor, params: Params) -> tuple[Tensor, Tensor]:
        """All K reflections: ``params`` ``v [K, B|1, D]``."""
        return householder_stack(z, params["v"])

    def fused_broadcasts(self, z: Tensor) -> bool:
        # the compiled kernels read parameter row r % B for row r; the torch loop needs B rows
        return not torch.is_grad_enabled() and kernels_for(z) is not None

    def inverse(self, z_next: Tensor, context: Params | None = None) -> tuple[Tensor, Tensor]:
        return self.forward(z_next, context)  # H^{-1} = H, log|det| = 0 both ways
