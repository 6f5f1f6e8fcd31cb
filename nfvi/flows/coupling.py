"""Shared machinery of the coupling flows (NICE, RealNVP, rational-quadratic spline).

A coupling layer splits ``z [B, D]`` into a conditioning part ``z_A`` and an updated part
``z_B`` and applies an elementwise bijection to ``z_B`` whose parameters are a function of
``z_A`` (and, in an amortized stack, of the encoder features ``h(x)``)::

    y_A = z_A,    y_B = g(z_B; theta),    theta = NN([z_A, h(x)])

The Jacobian is block triangular, so ``log|det| = sum_i log|g'(z_B,i; theta_i)|``, and the
inverse is ``z_B = g^{-1}(y_B; NN([y_A, h(x)]))``.

The halves are contiguous: ``first = z[:, :D // 2]``, ``second = z[:, D // 2:]``. With
``alternate=True`` a layer with an even ``index`` conditions on ``first`` and updates
``second``, an odd one the reverse, so any ``D >= 2`` (2 in the energy task, odd D too) works.

The conditioner ``NN`` is an MLP (``tanh`` hidden units by default) whose output is
``theta = (W_out a + b_out) / sqrt(H)``, ``H`` the last hidden width, with ``W_out, b_out``
starting at zero, so every layer starts as the identity (each family maps ``theta = 0`` to the
identity). The ``1 / sqrt(H)`` output gain (as NSF's reference code does for the spline's bin
logits) and the saturating ``tanh`` keep ``theta`` and ``d theta / d z_A`` moderate whatever
the weights, so that the flow stays well conditioned (and its log-determinant checkable
against autograd in float64) even for large raw weights; the papers use ReLU networks, which
``activation=relu`` gives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from nfvi.flows.base import FlowLayer, Params

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
}


class Conditioner(nn.Module):
    """MLP ``[N, in_features] -> [N, out_features]``: zero-initialized output layer, output
    scaled by ``1 / sqrt(last width)``."""

    def __init__(
        self, in_features: int, out_features: int, hidden: Sequence[int], activation: str
    ) -> None:
        super().__init__()
        activation = str(getattr(activation, "value", activation))
        if activation not in ACTIVATIONS:
            known = ", ".join(sorted(ACTIVATIONS))
            raise ValueError(f"unknown conditioner activation {activation!r}; use one of {known}")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), ACTIVATIONS[activation]()]
            width = int(h)
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, out_features)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.out_gain = width**-0.5

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x)) * self.out_gain


def conditioner_macs(in_features: int, out_features: int, hidden: Sequence[int]) -> int:
    """Multiply-accumulates of one conditioner call per example (the linear layers)."""
    widths = [in_features, *[int(h) for h in hidden], out_features]
    return sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=False))


class CouplingLayer(FlowLayer):
    """Base class: splitting, the conditioner, and forward/inverse through an elementwise map.

    Subclasses set :attr:`params_per_dim` (entries of ``theta`` per updated coordinate) and
    implement :meth:`elementwise` (``x_B, theta -> y_B, log|g'| per coordinate``) and
    :meth:`elementwise_inverse`. Every parameter lives in the conditioner, so
    :meth:`param_shapes` is empty: global and amortized stacks differ only in whether the
    conditioner also sees the encoder features ``context``.
    """

    has_inverse = True
    params_per_dim: int = 1

    def __init__(
        self,
        dim: int,
        index: int = 0,
        context_dim: int | None = None,
        *,
        hidden: Sequence[int] = (256, 256),
        activation: str = "tanh",
        alternate: bool = True,
    ) -> None:
        super().__init__(dim, index, context_dim)
        if dim < 2:
            raise ValueError(f"a coupling flow needs dim >= 2, got dim={dim}")
        self.hidden = [int(h) for h in hidden]
        self.split_at = dim // 2
        self.swap = bool(alternate) and index % 2 == 1  # condition on the second half
        n_first, n_second = self.split_at, dim - self.split_at
        self.n_cond, self.n_upd = (n_second, n_first) if self.swap else (n_first, n_second)
        self.conditioner = Conditioner(
            self.n_cond + (context_dim or 0),
            self.n_upd * self.params_per_dim,
            self.hidden,
            activation,
        )

    # -- split / merge -------------------------------------------------------------------------

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``z [B, D] -> (z_A [B, n_cond], z_B [B, n_upd])``."""
        first, second = z[:, : self.split_at], z[:, self.split_at :]
        return (second, first) if self.swap else (first, second)

    def merge(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        return torch.cat([z_b, z_a] if self.swap else [z_a, z_b], dim=-1)

    def theta(self, z_a: Tensor, context: Tensor | None) -> Tensor:
        """Conditioner output ``[B, n_upd, params_per_dim]``."""
        inp = z_a
        if self.context_dim is not None:
            if context is None:
                raise ValueError("an amortized coupling layer needs context [B, context_dim]")
            inp = torch.cat([z_a, context.expand(z_a.shape[0], -1)], dim=-1)
        return self.conditioner(inp).view(z_a.shape[0], self.n_upd, self.params_per_dim)

    # -- the elementwise bijection -------------------------------------------------------------

    def elementwise(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, n], theta [B, n, p] -> (y [B, n], log|dy/dx| [B, n])``."""
        raise NotImplementedError

    def elementwise_inverse(self, y: Tensor, theta: Tensor) -> Tensor:
        raise NotImplementedError

    # -- the FlowLayer contract ----------------------------------------------------------------

    def transform(
        self, z: Tensor, params: Params, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        z_a, z_b = self.split(z)
        y_b, log_d = self.elementwise(z_b, self.theta(z_a, context))
        return self.merge(z_a, y_b), log_d.sum(-1)

    def inverse(self, z_next: Tensor, params: Params, context: Tensor | None = None) -> Tensor:
        y_a, y_b = self.split(z_next)
        return self.merge(y_a, self.elementwise_inverse(y_b, self.theta(y_a, context)))

    # -- bookkeeping for the README table ------------------------------------------------------

    def conditioner_macs(self) -> int:
        """Multiply-accumulates of the conditioner per example."""
        return conditioner_macs(
            self.n_cond + (self.context_dim or 0), self.n_upd * self.params_per_dim, self.hidden
        )
