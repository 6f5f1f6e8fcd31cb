"""Sylvester normalizing flows (van den Berg, Hasenclever, Tomczak & Welling 2018, "Sylvester
Normalizing Flows for Variational Inference").

One layer is

    z' = z + A h(B z + b),   A = Q R,   B = R~ Q^T,   h = tanh,

with ``Q [D, M]`` having orthonormal columns (``Q^T Q = I_M``), ``R, R~ [M, M]`` upper
triangular and ``b [M]``. Sylvester's determinant identity ``det(I_D + A B) = det(I_M + B A)``
and ``Q^T Q = I`` give (the paper's Theorem 2)

    det dz'/dz = det(I_M + diag(h'(a)) R~ R),   a = R~ Q^T z + b,

and ``R~ R`` is upper triangular with diagonal ``R~_mm R_mm``, so

    log|det dz'/dz| = sum_m log|1 + h'(a_m) R~_mm R_mm|.

**Invertibility.** The map is invertible when ``R_mm R~_mm > -1 / ||h'||_inf`` (the paper's
Theorem 2 / section 3.1); for ``tanh``, ``h' in (0, 1]``, so ``R_mm R~_mm > -1`` suffices. As in
the paper, the diagonals are passed through ``tanh``: ``R_mm = tanh(r_mm)``,
``R~_mm = tanh(r~_mm)``, so ``R_mm R~_mm in (-1, 1)`` and ``1 + h' R~_mm R_mm > 0`` for any raw
parameters. (Constraining only the product to ``> -1`` would allow more, but the bounded
diagonals are the paper's choice and keep each layer well conditioned.) In floating point
``tanh`` saturates, so the product can round to exactly ``-1``; the log-determinant is therefore
computed from ``1 + h' d = (1 + d) - h(a)^2 d`` with ``1 + tanh x tanh y = cosh(x + y) /
(cosh x cosh y)`` evaluated in log space: both terms are non-negative when ``d < 0`` (no
cancellation) and the result is finite for any raw parameters.

Three ways to get ``Q`` (three registered flows):

* ``sylvester_orthogonal`` (O-SNF): ``Q [D, M]`` from a raw matrix by the iterative
  orthogonalization ``Q <- Q (I + (I - Q^T Q) / 2)`` (Bjorck & Bowie 1971; Kovarik 1970),
  started from the raw matrix divided by its Frobenius norm (so every singular value is in
  ``(0, 1]``, where the iteration converges to the orthogonal polar factor), run until
  ``max_batch ||Q^T Q - I||_F <= tolerance`` or ``iterations`` steps. The log-determinant above
  is exact only for ``Q^T Q = I``; its error is of the order of the remaining
  non-orthogonality, so the default tolerance is tied to the dtype (``100 eps``: ``2e-14`` in
  float64, ``1e-5`` in float32). ``M <= D`` is the bottleneck (capped at ``D``).
* ``sylvester_householder`` (H-SNF): ``Q = H_1 ... H_H`` (``D x D``, ``M = D``), a product of
  ``num_householder`` Householder reflections ``H_i = I - 2 v_i v_i^T / ||v_i||^2``, applied
  as reflections without forming ``Q``.
* ``sylvester_triangular`` (T-SNF): ``Q`` a fixed permutation (``M = D``): the identity on even
  layers and the reversal on odd layers (``index``), so that ``Q R Q^T`` alternates between
  upper and lower triangular.

Raw parameters per example (amortized: the encoder's head produces them all, as in the paper):
``r [M, M]`` -- its upper triangle with the diagonal gives ``R`` (diagonal through tanh), its
strictly lower triangle transposed gives ``R~``'s off-diagonal (the packing of the paper's
code: one ``M x M`` block holds both triangles); ``r_tilde_diag [M]`` (``R~``'s diagonal, through
tanh); ``b [M]``; plus ``q [D, M]`` (orthogonal) or ``v [H, D]`` (Householder). ``M^2 + 2M``
numbers before ``Q``'s.

Initialization (global parameters, and the amortized head's bias): ``R ~ 0`` (``r ~ N(0,
0.01^2)``) so that every layer starts near the identity, ``r_tilde_diag = 1`` (``R~_mm ~ 0.76``,
so that the first gradients with respect to ``R`` are not vanishingly small), ``b ~ 0``, and
``q``, ``v`` standard normal (well conditioned for the orthogonalization; a reflection's
direction is all that matters).

There is no closed-form inverse (``has_inverse = False``: :meth:`inverse` raises
:class:`~nfvi.flows.base.InverseNotAvailable`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfvi.flows.base import FlowLayer, Params, register_flow
from nfvi.flows.householder import reflect


def orthogonalize(
    q: Tensor, iterations: int = 100, tolerance: float | None = None
) -> tuple[Tensor, int, float]:
    """Orthonormal columns from ``q [..., D, M]`` (``M <= D``) by ``Q <- Q (3 I - Q^T Q) / 2``.

    Starts from ``q / ||q||_F`` and stops once ``max ||Q^T Q - I||_F <= tolerance`` (default
    ``100 eps`` of the dtype) or after ``iterations`` updates. Differentiable (autograd goes
    through every step). Returns ``(Q, steps taken, final max error)``.
    """
    tol = 100.0 * torch.finfo(q.dtype).eps if tolerance is None else float(tolerance)
    m = q.shape[-1]
    eye = torch.eye(m, dtype=q.dtype, device=q.device)
    norm = q.flatten(-2).norm(dim=-1).clamp_min(torch.finfo(q.dtype).tiny)
    Q = q / norm[..., None, None]
    steps = 0
    while True:
        gram = Q.transpose(-1, -2) @ Q
        err = float((gram.detach() - eye).flatten(-2).norm(dim=-1).max()) if gram.numel() else 0.0
        if err <= tol or steps >= iterations:
            return Q, steps, err
        Q = Q @ (1.5 * eye - 0.5 * gram)
        steps += 1


def matvec(A: Tensor, x: Tensor) -> Tensor:
    """``A x`` per example: ``A [B|1, I, J]``, ``x [..., B, J]`` -> ``[..., B, I]``.

    With extra leading dims (the IS estimate's samples, ``x [n, B, J]``) the samples become
    the columns of one ``[I, J] @ [J, n]`` product per example instead of ``n * B`` batched
    matrix-vector products over an expanded ``A``.
    """
    if x.dim() <= 2:
        return (A @ x.unsqueeze(-1)).squeeze(-1)
    lead, (B, J) = x.shape[:-2], x.shape[-2:]
    cols = x.reshape(-1, B, J).permute(1, 2, 0)  # [B, J, N]
    return (A @ cols).permute(2, 0, 1).reshape(*lead, B, A.shape[-2])


class _Sylvester(FlowLayer):
    """The shared Sylvester layer; subclasses define ``Q`` (``M``, its raw parameters, and how
    to apply ``Q^T`` and ``Q``)."""

    # forward broadcasts over extra leading batch dims (z [n, B, D], Q [B, D, M]): the
    # IS estimate orthogonalizes Q once per context, not once per sample
    broadcasts_batch = True

    def __init__(self, dim: int, index: int = 0) -> None:
        super().__init__(dim, index)
        self.M = dim

    # -- Q: subclasses --------------------------------------------------------------------
    def q_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def prepare_q(self, params: Params) -> object:
        """Whatever :meth:`q_t` and :meth:`q_apply` need, computed once per call."""
        return None

    def q_t(self, z: Tensor, q: object) -> Tensor:
        """``Q^T z``: ``[B, D] -> [B, M]``."""
        raise NotImplementedError

    def q_apply(self, y: Tensor, q: object) -> Tensor:
        """``Q y``: ``[B, M] -> [B, D]``."""
        raise NotImplementedError

    # -- the layer ------------------------------------------------------------------------
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        M = self.M
        return {"r": (M, M), "r_tilde_diag": (M,), "b": (M,), **self.q_shapes()}

    def init_global(self, name: str, param: Tensor) -> None:
        if name == "r_tilde_diag":
            nn.init.ones_(param)
        elif name in ("q", "v"):
            nn.init.normal_(param, std=1.0)
        else:
            nn.init.normal_(param, std=0.01)

    def triangular(self, r: Tensor, r_tilde_diag: Tensor) -> tuple[Tensor, Tensor]:
        """``R, R~ [B|1, M, M]`` (upper triangular, ``tanh`` diagonals) from the raw ``r``."""
        diag = torch.diagonal(r, dim1=-2, dim2=-1)
        R = torch.triu(r, diagonal=1) + torch.diag_embed(torch.tanh(diag))
        R_tilde = torch.tril(r, diagonal=-1).transpose(-1, -2) + torch.diag_embed(
            torch.tanh(r_tilde_diag)
        )
        return R, R_tilde

    def diagonals(self, params: Params) -> tuple[Tensor, Tensor]:
        """``d = R_mm R~_mm`` and ``log(1 + d)`` ``[B|1, M]``, the latter computed without
        rounding ``d`` first: ``1 + tanh x tanh y = cosh(x + y) / (cosh x cosh y) > 0``.

        In floating point ``tanh`` saturates (``tanh(x) == 1`` for ``x > 9`` in float32), so
        ``d`` itself may round to exactly ``-1``; ``log(1 + d)`` stays finite.
        """
        x = torch.diagonal(params["r"], dim1=-2, dim2=-1)
        y = params["r_tilde_diag"]
        d = torch.tanh(x) * torch.tanh(y)
        return d, _log_cosh(x + y) - _log_cosh(x) - _log_cosh(y)

    def forward(self, z: Tensor, context: Params | None = None) -> tuple[Tensor, Tensor]:
        params = self.raw_params(context)
        R, R_tilde = self.triangular(params["r"], params["r_tilde_diag"])
        q = self.prepare_q(params)
        qz = self.q_t(z, q)  # [B, M]
        a = matvec(R_tilde, qz) + params["b"]
        h = torch.tanh(a)
        z_next = z + self.q_apply(matvec(R, h), q)
        # 1 + h'(a) d with h' = 1 - h^2, written as (1 + d) - h^2 d: for d < 0 both terms are
        # >= 0 (no cancellation), for d >= 0 it is >= 1; (1 + d) > 0 from diagonals()
        d, log1p_d = self.diagonals(params)
        det = torch.exp(log1p_d) - h * h * d
        log_abs_det = torch.log(det).sum(-1)
        return z_next, log_abs_det.expand(z.shape[:-1])  # [B] (or [n, B]: FlowStack repeat)


def _log_cosh(x: Tensor) -> Tensor:
    """``log cosh x = |x| + log(1 + exp(-2|x|)) - log 2``, without overflow."""
    ax = x.abs()
    return ax + F.softplus(-2.0 * ax) - math.log(2.0)


@register_flow("sylvester_orthogonal")
class SylvesterOrthogonal(_Sylvester):
    """O-SNF: ``Q [D, M]`` by iterative orthogonalization of a raw ``q [D, M]`` per example.

    Hyperparameters: ``M`` (bottleneck, capped at ``D``; the paper uses 32 with ``D = 64``),
    ``iterations`` (at most; 100), ``tolerance`` (``||Q^T Q - I||_F``; None: ``100 eps``).
    """

    def __init__(
        self,
        dim: int,
        index: int = 0,
        *,
        M: int = 32,
        iterations: int = 100,
        tolerance: float | None = None,
    ) -> None:
        super().__init__(dim, index)
        if int(M) < 1:
            raise ValueError(f"sylvester_orthogonal needs M >= 1, got M={M}")
        self.M = min(int(M), dim)
        self.iterations = int(iterations)
        self.tolerance = None if tolerance is None else float(tolerance)

    def q_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"q": (self.dim, self.M)}

    def prepare_q(self, params: Params) -> Tensor:
        Q, _, _ = orthogonalize(params["q"], self.iterations, self.tolerance)
        return Q

    def q_t(self, z: Tensor, q: Tensor) -> Tensor:
        if z.dim() <= 2:
            return (z.unsqueeze(-2) @ q).squeeze(-2)
        return matvec(q.transpose(-1, -2), z)

    def q_apply(self, y: Tensor, q: Tensor) -> Tensor:
        return matvec(q, y)


@register_flow("sylvester_householder")
class SylvesterHouseholder(_Sylvester):
    """H-SNF: ``Q = H_1 ... H_H`` from ``num_householder`` raw vectors ``v [H, D]``; ``M = D``.

    ``Q^T z = H_H ... H_1 z`` and ``Q y = H_1 ... H_H y`` (each ``H_i`` is symmetric), each
    reflection ``O(D)`` per example. The paper uses ``H = 8``.
    """

    def __init__(
        self,
        dim: int,
        index: int = 0,
        *,
        num_householder: int = 8,
    ) -> None:
        super().__init__(dim, index)
        if int(num_householder) < 1:
            raise ValueError(f"sylvester_householder needs num_householder >= 1, got "
                             f"{num_householder}")
        self.num_householder = int(num_householder)

    def q_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"v": (self.num_householder, self.dim)}

    def prepare_q(self, params: Params) -> Tensor:
        return params["v"]

    def q_t(self, z: Tensor, q: Tensor) -> Tensor:
        for i in range(self.num_householder):
            z = reflect(z, q[:, i])
        return z

    def q_apply(self, y: Tensor, q: Tensor) -> Tensor:
        for i in reversed(range(self.num_householder)):
            y = reflect(y, q[:, i])
        return y


@register_flow("sylvester_triangular")
class SylvesterTriangular(_Sylvester):
    """T-SNF: ``Q`` the identity (even ``index``) or the reversal permutation (odd); ``M = D``.

    No raw parameters for ``Q``; ``Q^T z`` and ``Q y`` are free (a flip).
    """

    def __init__(self, dim: int, index: int = 0) -> None:
        super().__init__(dim, index)
        self.reverse = index % 2 == 1

    def q_t(self, z: Tensor, q: object) -> Tensor:
        return z.flip(-1) if self.reverse else z

    def q_apply(self, y: Tensor, q: object) -> Tensor:
        return y.flip(-1) if self.reverse else y
