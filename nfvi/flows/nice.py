"""NICE: additive coupling (Dinh, Krueger & Bengio 2014), with mixing between layers.

One layer (index ``k``)::

    u   = M_k z                       (k > 0; M_0 = I)
    y_A = u_A,   y_B = u_B + m(u_A; b),   log|det df/dz| = 0

``m`` is an MLP (the conditioner, see :mod:`nfvi.flows.coupling`) whose first-layer bias ``b``
is the layer's outside parameter (amortized: ``b(x)`` from the stack's head on the encoder
features). The inverse is ``u_B = y_B - m(y_A; b)``, ``z = M_k^T u``. The map is volume
preserving (the NICE paper's final diagonal scaling layer is not used: Rezende & Mohamed 2015
treat NICE as a volume-preserving flow).

``mixing`` chooses ``M_k``, the NICE-orth / NICE-perm variants of R&M 2015 (Table 2):

* ``orthogonal``: a fixed random orthogonal matrix, ``log|det M_k| = 0``. It is stored as
  ``D`` Householder reflectors of a Gaussian matrix (QR of ``N(0, 1)^{D x D}`` drawn from a
  fixed seed per layer index); ``M_k = H_1 ... H_D`` is rebuilt in the input's dtype, so it is
  orthogonal to working precision in float32 and float64 alike;
* ``permutation``: a fixed random permutation (seeded per layer index), drawn among those that
  move at least half of this layer's conditioning coordinates into the updated half, so every
  coordinate keeps being transformed (for ``D = 2`` it is the swap);
* ``none``: no mixing; the halves alternate with the layer index instead (the NICE paper).

With ``orthogonal`` or ``permutation`` the split is fixed (condition on ``z[:, :D//2]``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nfvi.flows.base import Params, register_flow
from nfvi.flows.coupling import CouplingLayer

MIXINGS = ("orthogonal", "permutation", "none")


def _generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * int(seed) + int(index))


def random_reflectors(dim: int, generator: torch.Generator) -> Tensor:
    """Householder reflectors ``[D, D]`` (below the diagonal; the diagonal is implicitly 1)."""
    a = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    reflectors, _ = torch.geqrf(a)
    return torch.tril(reflectors, diagonal=-1)


def orthogonal_from_reflectors(reflectors: Tensor) -> Tensor:
    """``Q = H_1 ... H_D`` with ``H_i = I - tau_i v_i v_i^T``, ``tau_i = 2 / |v_i|^2``.

    ``tau`` is recomputed from the stored vectors, so ``Q`` is exactly orthogonal up to the
    rounding of the product, whatever precision the vectors were stored in.
    """
    eye = torch.eye(reflectors.shape[-1], dtype=reflectors.dtype, device=reflectors.device)
    v = torch.tril(reflectors, diagonal=-1) + eye
    tau = 2.0 / (v * v).sum(0)
    return torch.linalg.householder_product(v, tau)


def random_permutation(dim: int, generator: torch.Generator) -> Tensor:
    """A permutation ``p`` (``u = z[:, p]``) sending >= half of ``z[:, :D//2]`` past ``D//2``."""
    split = dim // 2
    need = math.ceil(split / 2)
    while True:
        perm = torch.randperm(dim, generator=generator)
        if int((perm[split:] < split).sum()) >= need:
            return perm


@register_flow("nice")
class NICE(CouplingLayer):
    """Additive coupling ``y_B = z_B + m(z_A; b)``; outside parameter: ``bias`` (``b``).

    Hyperparameters: ``hidden`` (conditioner widths), ``activation``, ``mixing``
    (``orthogonal | permutation | none``), ``mixing_seed``.
    """

    params_per_dim = 1

    def __init__(self, dim: int, index: int = 0, *, mixing: str = "orthogonal",
                 mixing_seed: int = 0, **conditioner: object) -> None:
        # conditioner: hidden, activation (see CouplingLayer)
        mixing = str(mixing)
        if mixing not in MIXINGS:
            raise ValueError(f"unknown NICE mixing {mixing!r}; use one of {', '.join(MIXINGS)}")
        super().__init__(dim, index, alternate=mixing == "none", **conditioner)
        self.mixing = mixing if index > 0 else "none"  # mixing happens *between* layers
        if self.mixing == "orthogonal":
            refl = random_reflectors(dim, _generator(mixing_seed, index))
            self.register_buffer("reflectors", refl.to(torch.get_default_dtype()))
        elif self.mixing == "permutation":
            perm = random_permutation(dim, _generator(mixing_seed, index))
            self.register_buffer("perm", perm)
            self.register_buffer("inv_perm", torch.argsort(perm))

    def mixing_matrix(self, like: Tensor) -> Tensor:
        """The orthogonal ``M_k [D, D]`` in ``like``'s dtype and device."""
        return orthogonal_from_reflectors(self.reflectors.to(like.device, like.dtype))

    def mix(self, z: Tensor) -> Tensor:
        if self.mixing == "orthogonal":
            return z @ self.mixing_matrix(z).T
        if self.mixing == "permutation":
            return z[:, self.perm]
        return z

    def unmix(self, u: Tensor) -> Tensor:
        if self.mixing == "orthogonal":
            return u @ self.mixing_matrix(u)
        if self.mixing == "permutation":
            return u[:, self.inv_perm]
        return u

    def elementwise(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        return x + theta[..., 0], torch.zeros_like(x)

    def elementwise_inverse(self, y: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        return y - theta[..., 0], torch.zeros_like(y)

    def forward(self, z: Tensor, context: Params | None = None) -> tuple[Tensor, Tensor]:
        return self.couple(self.mix(z), context, inverse=False)  # log|det M_k| = 0

    def inverse(self, z_next: Tensor, context: Params | None = None) -> tuple[Tensor, Tensor]:
        u, log_abs_det = self.couple(z_next, context, inverse=True)
        return self.unmix(u), log_abs_det
