"""Shared machinery of the coupling flows (NICE, RealNVP, rational-quadratic spline).

A coupling layer splits ``z [B, D]`` into a conditioning part ``z_A`` and an updated part
``z_B`` and applies an elementwise bijection to ``z_B`` whose parameters are a function of
``z_A`` and of the layer's outside parameter ``bias`` (``b``)::

    y_A = z_A,    y_B = g(z_B; theta),    theta = NN(z_A; b)

The Jacobian is block triangular, so ``log|det| = sum_i log|g'(z_B,i; theta_i)|``, and the
inverse is ``z_B = g^{-1}(y_B; NN(y_A; b))`` with ``log|det| = -sum_i log|g'|``.

``b`` is the bias of the conditioner's first hidden layer, ``a_1 = act(W_1 z_A + b)``, supplied
by the stack's parameter source like every other flow's raw parameters: a learned global vector
(``flow.amortized=false``) or, amortized, ``b(x) = W_h h(x) + c`` from the stack's head on the
encoder features ``h(x)`` -- exactly a first layer on the concatenation ``[z_A, h(x)]``. With no
hidden layer (``hidden=[]``) ``b`` is the output layer's bias instead.

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
    """MLP ``x [N, in_features], b [N|1, bias_size] -> [N, out_features]`` whose first layer's
    bias ``b`` is given from outside: ``a_1 = act(W_1 x + b)``, ``a_{l+1} = act(W_{l+1} a_l +
    b_{l+1})``, output ``(W_out a_L + b_out) / sqrt(H_L)`` with ``W_out, b_out`` zero at start.
    With no hidden layer the output is ``(W_out x + b) / sqrt(in_features)``.
    """

    def __init__(
        self, in_features: int, out_features: int, hidden: Sequence[int], activation: str
    ) -> None:
        super().__init__()
        activation = str(activation)
        if activation not in ACTIVATIONS:
            known = ", ".join(sorted(ACTIVATIONS))
            raise ValueError(f"unknown conditioner activation {activation!r}; use one of {known}")
        widths = [int(h) for h in hidden]
        self.first = nn.Linear(in_features, widths[0], bias=False) if widths else None
        layers: list[nn.Module] = [ACTIVATIONS[activation]()] if widths else []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
        self.body = nn.Sequential(*layers)
        width = widths[-1] if widths else in_features
        self.out = nn.Linear(width, out_features, bias=bool(widths))
        nn.init.zeros_(self.out.weight)
        if self.out.bias is not None:
            nn.init.zeros_(self.out.bias)
        self.out_gain = width**-0.5
        self.in_features = in_features
        #: length of the outside bias: the first hidden width (the output width if none)
        self.bias_size = widths[0] if widths else out_features

    def init_bias(self, param: Tensor) -> None:
        """The outside bias's global value (and the amortized head's bias): ``nn.Linear``'s
        default ``U(-1/sqrt(in), 1/sqrt(in))`` in a hidden layer; zero on the output layer
        (so that the layer starts as the identity)."""
        if self.first is None:
            nn.init.zeros_(param)
        else:
            bound = self.in_features**-0.5
            nn.init.uniform_(param, -bound, bound)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        if self.first is None:
            return (self.out(x) + bias) * self.out_gain
        return self.out(self.body(self.first(x) + bias)) * self.out_gain


class CouplingLayer(FlowLayer):
    """Base class: splitting, the conditioner, and forward/inverse through an elementwise map.

    Subclasses set :attr:`params_per_dim` (entries of ``theta`` per updated coordinate) and
    implement :meth:`elementwise` (``x_B, theta -> y_B, log|g'| per coordinate``) and
    :meth:`elementwise_inverse` (``y_B, theta -> x_B, log|(g^{-1})'| per coordinate``). The
    one outside parameter is the conditioner's first-layer ``bias [bias_size]``.
    """

    has_inverse = True
    params_per_dim: int = 1

    def __init__(
        self,
        dim: int,
        index: int = 0,
        *,
        hidden: Sequence[int] = (256, 256),
        activation: str = "tanh",
        alternate: bool = True,
    ) -> None:
        super().__init__(dim, index)
        if dim < 2:
            raise ValueError(f"a coupling flow needs dim >= 2, got dim={dim}")
        self.hidden = [int(h) for h in hidden]
        self.split_at = dim // 2
        self.swap = bool(alternate) and index % 2 == 1  # condition on the second half
        n_first, n_second = self.split_at, dim - self.split_at
        self.n_cond, self.n_upd = (n_second, n_first) if self.swap else (n_first, n_second)
        self.conditioner = Conditioner(
            self.n_cond, self.n_upd * self.params_per_dim, self.hidden, activation
        )

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"bias": (self.conditioner.bias_size,)}

    def init_global(self, name: str, param: Tensor) -> None:
        self.conditioner.init_bias(param)

    # -- split / merge -------------------------------------------------------------------------

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``z [B, D] -> (z_A [B, n_cond], z_B [B, n_upd])``."""
        first, second = z[:, : self.split_at], z[:, self.split_at :]
        return (second, first) if self.swap else (first, second)

    def merge(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        return torch.cat([z_b, z_a] if self.swap else [z_a, z_b], dim=-1)

    def theta(self, z_a: Tensor, params: Params) -> Tensor:
        """Conditioner output ``[B, n_upd, params_per_dim]``."""
        return self.conditioner(z_a, params["bias"]).view(
            z_a.shape[0], self.n_upd, self.params_per_dim
        )

    # -- the elementwise bijection -------------------------------------------------------------

    def elementwise(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, n], theta [B, n, p] -> (y [B, n], log|dy/dx| [B, n])``."""
        raise NotImplementedError

    def elementwise_inverse(self, y: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``y [B, n], theta [B, n, p] -> (x [B, n], log|dx/dy| [B, n])``."""
        raise NotImplementedError

    # -- the FlowLayer contract ----------------------------------------------------------------

    def couple(self, z: Tensor, context: Params | None, inverse: bool) -> tuple[Tensor, Tensor]:
        """The coupling map (or its inverse): ``z_A`` kept, ``z_B`` mapped elementwise."""
        z_a, z_b = self.split(z)
        theta = self.theta(z_a, self.raw_params(context))
        y_b, log_d = (self.elementwise_inverse if inverse else self.elementwise)(z_b, theta)
        return self.merge(z_a, y_b), log_d.sum(-1)

    def forward(self, z: Tensor, context: Params | None = None) -> tuple[Tensor, Tensor]:
        return self.couple(z, context, inverse=False)

    def inverse(self, z_next: Tensor, context: Params | None = None) -> tuple[Tensor, Tensor]:
        return self.couple(z_next, context, inverse=True)
