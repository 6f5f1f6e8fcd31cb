"""The flow contract, parameter sources and the stack that ties them together.

A flow maps base -> target, ``z_k = f_k(z_{k-1})``, and reports ``log|det df_k/dz_{k-1}|``
per example, so that ``ln q_K(z_K) = ln q_0(z_0) - sum_k ln|det df_k/dz_{k-1}|``
(Rezende & Mohamed 2015, eq. 7).

Layers (:class:`FlowLayer`) say which raw parameters they need from outside
(:meth:`FlowLayer.param_shapes`) and apply themselves given those parameters. Where the
parameters come from is a separate, swappable piece (:class:`ParamSource`):

* :class:`GlobalParams` -- learned parameters shared by every example (2D energies,
  ``flow.amortized=false``);
* :class:`AmortizedParams` -- a linear head on the encoder's features that produces every
  layer's parameters for each example (the paper's MNIST setup).

:class:`FlowStack` holds K layers and one source and implements the public contract
``forward(z, context=None) -> (z_K, log_abs_det[B])``.

Flows whose parameters are functions of ``z`` itself (coupling and autoregressive layers) own
their conditioner networks; such a layer declares no (or few) outside parameters, and when the
stack is amortized it is built with ``context_dim`` and receives the encoder's features as
``context`` in :meth:`FlowLayer.transform`, which its conditioner takes as an extra input.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]


class FlowLayer(nn.Module):
    """One flow layer ``f: R^D -> R^D`` whose raw parameters are supplied from outside.

    Subclasses implement :meth:`param_shapes` and :meth:`transform`. Parameters that do not
    depend on ``z`` come from the stack's source; conditioner networks of ``z`` (coupling,
    autoregressive layers) are modules of the layer, and take ``context`` when
    ``context_dim`` is set (amortized stacks).
    """

    #: name in the registry; set by :func:`register_flow`
    name: str = ""
    #: whether :meth:`inverse` is implemented
    has_inverse: bool = False

    def __init__(self, dim: int, index: int = 0, context_dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.index = index  # position in the stack: lets layers alternate masks or orders
        self.context_dim = context_dim  # set for amortized stacks

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-example shapes of the raw (unconstrained) outside parameters, by name."""
        return {}

    def init_global(self, name: str, param: Tensor) -> None:
        """Initialize a global (non-amortized) raw parameter in place. Default: N(0, 0.01^2)."""
        nn.init.normal_(param, std=0.01)

    def transform(
        self, z: Tensor, params: Params, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Apply the layer.

        Args:
            z: ``[B, D]``.
            params: name -> raw parameter of shape ``[B, *shape]`` or ``[1, *shape]``.
            context: ``[B, context_dim]`` encoder features in an amortized stack, else None.

        Returns:
            ``(z_next [B, D], log_abs_det [B])``.
        """
        raise NotImplementedError

    def inverse(self, z_next: Tensor, params: Params, context: Tensor | None = None) -> Tensor:
        """The inverse map, where the flow has a closed or iterative inverse."""
        raise NotImplementedError(f"flow {self.name!r} has no inverse")

    def forward(
        self, z: Tensor, params: Params, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self.transform(z, params, context)

    def num_params(self) -> int:
        """Number of raw parameters one example needs for this layer."""
        return sum(math.prod(s) for s in self.param_shapes().values())


class ParamSource(nn.Module):
    """Produces the raw parameters of every layer of a stack."""

    def __init__(self, layers: list[FlowLayer]) -> None:
        super().__init__()
        self.shapes = [layer.param_shapes() for layer in layers]

    def forward(self, batch_size: int, context: Tensor | None) -> list[Params]:
        """One dict per layer; each tensor ``[B, *shape]`` or ``[1, *shape]``."""
        raise NotImplementedError


class GlobalParams(ParamSource):
    """Learned parameters shared by all examples (each returned with a leading dim of 1)."""

    def __init__(self, layers: list[FlowLayer]) -> None:
        super().__init__(layers)
        self.params = nn.ModuleList()
        for layer, shapes in zip(layers, self.shapes, strict=True):
            pd = nn.ParameterDict()
            for name, shape in shapes.items():
                p = nn.Parameter(torch.empty(shape))
                layer.init_global(name, p.data)
                pd[name] = p
            self.params.append(pd)

    def forward(self, batch_size: int, context: Tensor | None) -> list[Params]:
        return [{n: p.unsqueeze(0) for n, p in pd.items()} for pd in self.params]


class AmortizedParams(ParamSource):
    """Per-example parameters from the encoder's features: ``theta(x) = W h(x) + c``.

    One linear head produces all K layers' raw parameters at once (shape
    ``[B, sum_k num_params_k]``), which are split and reshaped per layer and name.
    The head's weights start small so that the stack starts close to the identity.
    """

    def __init__(self, layers: list[FlowLayer], context_dim: int) -> None:
        super().__init__(layers)
        self.sizes = [math.prod(s) for shapes in self.shapes for s in shapes.values()]
        self.head = nn.Linear(context_dim, max(sum(self.sizes), 1))
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        # the bias starts where a global parameter would, so both variants begin alike
        with torch.no_grad():
            offset = 0
            for layer, shapes in zip(layers, self.shapes, strict=True):
                for name, shape in shapes.items():
                    n = math.prod(shape)
                    chunk = torch.empty(shape)
                    layer.init_global(name, chunk)
                    self.head.bias[offset : offset + n] = chunk.reshape(-1)
                    offset += n

    def forward(self, batch_size: int, context: Tensor | None) -> list[Params]:
        if context is None:
            raise ValueError("an amortized flow needs context of shape [B, context_dim]")
        flat = self.head(context)
        chunks = iter(flat.split(self.sizes, dim=-1)) if self.sizes else iter(())
        out: list[Params] = []
        for shapes in self.shapes:
            out.append({n: next(chunks).reshape(-1, *s) for n, s in shapes.items()})
        return out


class FlowStack(nn.Module):
    """K flow layers and the source of their parameters.

    ``forward(z [B, D], context [B, C] | None) -> (z_K [B, D], sum_k log|det J_k| [B])``.
    With K = 0 it is the identity with a zero log-determinant.
    """

    def __init__(
        self,
        layers: list[FlowLayer],
        source: ParamSource | None,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.source = source
        self.context_dim = context_dim  # set: amortized, forward needs context [B, context_dim]

    @property
    def amortized(self) -> bool:
        return self.context_dim is not None

    def layer_params(self, batch_size: int, context: Tensor | None) -> list[Params]:
        if self.amortized and len(self.layers) > 0 and context is None:
            raise ValueError("an amortized flow needs context of shape [B, context_dim]")
        if self.source is None or len(self.layers) == 0:
            return [{} for _ in self.layers]
        return self.source(batch_size, context)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        params = self.layer_params(z.shape[0], context)
        log_abs_det = z.new_zeros(z.shape[0])
        ctx = context if self.amortized else None
        for layer, p in zip(self.layers, params, strict=True):
            z, ld = layer(z, p, ctx)
            log_abs_det = log_abs_det + ld
        return z, log_abs_det

    def inverse(self, z_k: Tensor, context: Tensor | None = None) -> Tensor:
        """Invert the whole stack (only for layers with ``has_inverse``)."""
        params = self.layer_params(z_k.shape[0], context)
        ctx = context if self.amortized else None
        for layer, p in zip(reversed(self.layers), reversed(params), strict=True):
            z_k = layer.inverse(z_k, p, ctx)
        return z_k

    @property
    def has_inverse(self) -> bool:
        return all(layer.has_inverse for layer in self.layers)


FLOWS: dict[str, type[FlowLayer]] = {}


def register_flow(name: str) -> Callable[[type[FlowLayer]], type[FlowLayer]]:
    """Class decorator adding a layer class to :data:`FLOWS` under ``name``."""

    def deco(cls: type[FlowLayer]) -> type[FlowLayer]:
        if name in FLOWS:
            raise ValueError(f"flow {name!r} is registered twice")
        cls.name = name
        FLOWS[name] = cls
        return cls

    return deco


def make_flow(
    name: str,
    dim: int,
    K: int,
    amortized: bool = False,
    context_dim: int | None = None,
    **hparams: object,
) -> FlowStack:
    """Build a stack of ``K`` layers of flow ``name`` acting on ``dim`` dimensions.

    ``amortized=True`` needs ``context_dim``: the stack then takes ``context [B, context_dim]``
    and produces every parameter from it. Extra keyword arguments go to the layer class.
    """
    if name not in FLOWS:
        known = ", ".join(sorted(FLOWS))
        raise KeyError(f"unknown flow {name!r}; known flows: {known}")
    if K < 0:
        raise ValueError(f"flow length K must be >= 0, got {K}")
    if amortized and context_dim is None:
        raise ValueError("an amortized flow needs context_dim")
    cls = FLOWS[name]
    ctx_dim = context_dim if amortized else None
    layers = [cls(dim, index=k, context_dim=ctx_dim, **hparams) for k in range(K)]
    if K == 0:
        return FlowStack(layers, None, ctx_dim)
    if not any(layer.param_shapes() for layer in layers):
        return FlowStack(layers, None, ctx_dim)  # every parameter lives in the layers
    if amortized:
        return FlowStack(layers, AmortizedParams(layers, context_dim), ctx_dim)
    return FlowStack(layers, GlobalParams(layers), ctx_dim)
