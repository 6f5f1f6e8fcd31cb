"""Inverse autoregressive flow (Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling 2016,
"Improved Variational Inference with Inverse Autoregressive Flow"), with MADE conditioners
(Germain et al. 2015).

One layer computes, with an autoregressive network of ``z`` and the layer's outside parameter
``b`` (the bias of the MADE's first hidden layer; in an amortized stack ``b(x) = W_h h(x) + c``
from the stack's head on the encoder's features ``h``, which makes ``h`` an extra input of every
autoregressive network as in the paper)

    [m, s] = MADE(z; b),    sigma = sigmoid(s + forget_bias),
    z' = sigma * z + (1 - sigma) * m,
    log|det dz'/dz| = sum_i log sigma_i      (computed with logsigmoid),

the paper's numerically stable "gated" update (section 4 / Algorithm 1). Outputs ``m_i, s_i``
depend only on the ``z_j`` before ``i`` in the layer's order, so ``dz'/dz`` is triangular (in
that order) with diagonal ``sigma``. The order is ``0..D-1`` on even layers and reversed on odd
layers (``index``), so that consecutive layers condition in opposite directions.

Kingma et al. initialize the network so that ``s`` is "sufficiently positive, such as close to
+1 or +2", so that each step starts by updating ``z`` only slightly; here ``forget_bias`` is
added to ``s`` and the MADE's output layer starts at zero (``m = s = 0``), so a fresh layer is
``z' = sigmoid(forget_bias) z``. Stacked, those gates multiply: K layers of bias 2 start as
``z_K = 0.88^K z`` (0.13 at K = 16, log-det ``K D log 0.88`` = -82 nats at D = 40), which
left 16-layer stacks far behind 4-layer ones in training (docs/flow_length.md, "IAF's gate
at initialization"). So by default (``forget_bias=None``) the bias is chosen per stack:
``forget_bias = logit(sigmoid(2)^(1/K))`` (2.0 at K = 1, 3.44 at K = 4, 4.83 at K = 16), and
the whole stack starts as one of Kingma's layers, ``z_K = sigmoid(2) z``, whatever K is. A
number gives every layer that bias (2.0: the paper's per-step choice).

The MADE: masked, weight-normalized linear layers (weight normalization as in the paper)
``D -> hidden[0] -> ... -> 2D`` with ELU activations; hidden unit ``k`` has a degree ``d_k``
cycling through ``1..D-1``, takes input ``j`` if ``deg(j) <= d_k``, and output ``i`` takes unit
``k`` if ``deg(i) > d_k`` (``deg`` = 1 + position in the order). The first hidden layer has
no bias of its own: the outside ``b [hidden[0]]`` is added there (it does not depend on ``z``);
with no hidden layer, ``b [2D]`` is the output layer's bias.

Robustness (a choice of this implementation, not in the paper): ``s`` and ``m`` pass through
soft bounds ``c tanh(x / c)`` (``s_bound = 4``, ``m_bound = 10`` by default; ``null`` turns
them off), so that ``sigma`` is in ``(sigmoid(forget_bias - 4), sigmoid(forget_bias + 4))``
(``(0.12, 0.998)`` at bias 2, ``(0.70, 0.9998)`` at K = 16's 4.83) and ``|m| < 10``. Each
layer's Jacobian then stays well conditioned whatever the weights, which keeps training in
float32 and exact log-determinant checks in float64 sound; at the scale of a VAE's latents
(and the 2D energies) the bounds are rarely approached.

The inverse is sequential: ``z_i = (z'_i - (1 - sigma_i) m_i) / sigma_i`` in the layer's order,
re-running the MADE once per dimension (D passes); its log-determinant is
``-sum_i log sigma_i`` at the recovered ``z`` (the last pass already has every ``sigma_i``
exact, since no output depends on the last variable in the order).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfvi.flows.base import FlowLayer, Params, register_flow


class MaskedLinear(nn.Module):
    """A weight-normalized masked linear map ``y = x W^T + c`` (``c`` optional).

    ``W = g * (V * mask) / ||V * mask||_row`` (Salimans & Kingma 2016, as in Kingma et al.
    2016): each row has norm ``|g|``, whatever the scale of ``V``, so that the MADE's outputs do
    not grow with the layer widths. ``mask [out, in]`` is a fixed 0/1 buffer (None: dense); a
    row whose mask is empty is zero.
    """

    def __init__(
        self, in_features: int, out_features: int, mask: Tensor | None = None, bias: bool = True
    ) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.randn(out_features, in_features) * 0.05)
        self.g = nn.Parameter(torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        if mask is None:
            mask = torch.ones(out_features, in_features)
        self.register_buffer("mask", mask.to(self.v.dtype))

    def weight(self) -> Tensor:
        v = self.v * self.mask
        sq = (v * v).sum(-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
        return self.g[:, None] * v * torch.rsqrt(sq)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight(), self.bias)


class MADE(nn.Module):
    """``z [B, D], b [B|1, bias_size] -> (m [B, D], s [B, D])``, autoregressive in ``order``.

    ``order[p]`` is the variable at position ``p``; outputs ``m_i, s_i`` depend on ``z_j`` only
    for ``j`` before ``i`` in ``order`` (the first variable's depend on ``b`` only). ELU between
    layers; ``b`` is the first hidden layer's bias (the output layer's with no hidden layer).
    """

    def __init__(self, dim: int, hidden: list[int], order: list[int]) -> None:
        super().__init__()
        self.dim = dim
        deg_in = torch.empty(dim, dtype=torch.long)
        deg_in[torch.tensor(order, dtype=torch.long)] = torch.arange(1, dim + 1)  # 1 + position
        layers: list[MaskedLinear] = []
        prev = deg_in
        for k, width in enumerate(hidden):
            # hidden degrees cycle through 1..D-1 (D = 1: degree 0, the units see no z)
            deg = torch.arange(width) % max(dim - 1, 1) + (1 if dim > 1 else 0)
            mask = deg[:, None] >= prev[None, :]
            layers.append(MaskedLinear(prev.numel(), width, mask, bias=k > 0))
            prev = deg
        out_deg = deg_in.repeat(2)  # [m, s]
        self.hidden = nn.ModuleList(layers)
        out_mask = out_deg[:, None] > prev[None, :]
        self.out = MaskedLinear(prev.numel(), 2 * dim, out_mask, bias=bool(hidden))
        #: length of the outside bias: the first hidden width (2D with no hidden layer)
        self.bias_size = hidden[0] if hidden else 2 * dim

    def forward(self, z: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        if not self.hidden:
            out = self.out(z) + bias
        else:
            x = z
            for k, layer in enumerate(self.hidden):
                x = layer(x)
                x = F.elu(x + bias if k == 0 else x)
            out = self.out(x)
        m, s = out.chunk(2, dim=-1)
        return m, s


#: the initial gate of a whole stack (and of a lone layer), as a logit: Kingma et al.'s +2
STACK_GATE_LOGIT = 2.0


@register_flow("iaf")
class IAF(FlowLayer):
    """An IAF step with its own MADE; outside parameter: ``bias`` (the MADE's first-layer bias,
    zero at start), through which an amortized stack feeds the encoder's features.

    Hyperparameters: ``hidden`` (widths of the MADE's hidden layers), ``forget_bias`` (added to
    ``s`` before the sigmoid; None: chosen per stack length, see the module docstring),
    ``s_bound`` and ``m_bound`` (soft bounds ``c tanh(x / c)`` on the MADE's ``s`` and ``m``;
    None: no bound).
    """

    has_inverse = True

    def __init__(
        self,
        dim: int,
        index: int = 0,
        *,
        hidden: list[int] | tuple[int, ...] = (320,),
        forget_bias: float | None = None,
        s_bound: float | None = 4.0,
        m_bound: float | None = 10.0,
    ) -> None:
        super().__init__(dim, index)
        # None outside a stack (make_flow resolves it per K): one layer, Kingma's +2
        self.forget_bias = STACK_GATE_LOGIT if forget_bias is None else float(forget_bias)
        self.s_bound = None if s_bound is None else float(s_bound)
        self.m_bound = None if m_bound is None else float(m_bound)
        for name, bound in (("s_bound", self.s_bound), ("m_bound", self.m_bound)):
            if bound is not None and bound <= 0:
                raise ValueError(f"iaf needs {name} > 0 (or null for no bound), got {bound}")
        order = list(range(dim))
        if index % 2 == 1:
            order.reverse()
        self.order = order
        self.made = MADE(dim, [int(h) for h in hidden], order)
        # start with m = 0 and s = 0 exactly: sigma = sigmoid(forget_bias) everywhere
        nn.init.zeros_(self.made.out.g)

    @classmethod
    def stack_hparams(cls, K: int, hparams: dict[str, object]) -> dict[str, object]:
        """``forget_bias=None``: ``logit(sigmoid(2)^(1/K))`` on every layer, so that the
        product of the K initial gates is ``sigmoid(2)``."""
        if hparams.get("forget_bias") is None and K > 0:
            log_gate = -math.log1p(math.exp(-STACK_GATE_LOGIT)) / K  # log sigmoid(2) / K
            # logit(p) = log p - log(1 - p), with log p = log_gate < 0
            hparams = {**hparams, "forget_bias": log_gate - math.log(-math.expm1(log_gate))}
        return hparams

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"bias": (self.made.bias_size,)}

    def init_global(self, name: str, param: Tensor) -> None:
        nn.init.zeros_(param)

    def gate(self, z: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``m``, ``sigma`` and ``log sigma`` ``[B, D]`` at ``z`` (each ``i`` from ``z_<i``)."""
        m, s = self.made(z, bias)
        if self.s_bound is not None:
            s = self.s_bound * torch.tanh(s / self.s_bound)
        if self.m_bound is not None:
            m = self.m_bound * torch.tanh(m / self.m_bound)
        s = s + self.forget_bias
        return m, torch.sigmoid(s), F.logsigmoid(s)

    def forward(self, z: Tensor, context: Params | None = None) -> tuple[Tensor, Tensor]:
        m, sigma, log_sigma = self.gate(z, self.raw_params(context)["bias"])
        z_next = sigma * z + (1.0 - sigma) * m
        return z_next, log_sigma.sum(-1)

    def inverse(self, z_next: Tensor, context: Params | None = None) -> tuple[Tensor, Tensor]:
        """Solve ``z_next = sigma(z) z + (1 - sigma(z)) m(z)`` one variable at a time."""
        bias = self.raw_params(context)["bias"]
        z = torch.zeros_like(z_next)
        for i in self.order:  # m_i, sigma_i need only the z_j before i, already recovered
            m, sigma, log_sigma = self.gate(z, bias)
            zi = (z_next[:, i] - (1.0 - sigma[:, i]) * m[:, i]) / sigma[:, i]
            z = torch.cat([z[:, :i], zi.unsqueeze(-1), z[:, i + 1 :]], dim=-1)
        # the last pass saw every z_j but the last in the order, which no output depends on
        return z, -log_sigma.sum(-1)
