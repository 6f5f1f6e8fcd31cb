"""The flow contract, parameter sources and the stack that ties them together.

A flow maps base -> target, ``z_k = f_k(z_{k-1})``, and reports ``log|det df_k/dz_{k-1}|``
per example, so that ``ln q_K(z_K) = ln q_0(z_0) - sum_k ln|det df_k/dz_{k-1}|``
(Rezende & Mohamed 2015, eq. 7). Where the flow inverts, the inverse reports the
log-determinant of the inverse map, ``log|det df_k^{-1}/dz_k| = -log|det df_k/dz_{k-1}|`` at
the recovered point, so that ``ln q_K(z_K) = ln q_0(z_0) + sum_k ln|det df_k^{-1}/dz_k|`` in one
pass.

One rule for parameters. A layer (:class:`FlowLayer`) declares every raw parameter it needs
from outside in :meth:`FlowLayer.param_shapes` (per-example shapes) and applies itself given
them; where they come from is one swappable piece of the stack (:class:`ParamSource`):

* :class:`GlobalParams` -- learned parameters shared by every example (2D energies,
  ``flow.amortized=false``);
* :class:`AmortizedParams` -- one linear head on the encoder's features ``h(x)`` that produces
  every layer's raw parameters for each example in one batched matmul (the paper's MNIST
  setup), ``theta(x) = W h(x) + c``.

Parameters that are functions of ``z`` itself (the conditioners of coupling layers, IAF's MADE)
are modules of the layer; their dependence on ``x`` is the outside parameter ``bias``, the
first hidden layer's bias: ``W_1 [z_A; h(x)] + b_1 = W_1' z_A + (W_1'' h(x) + b_1)``, i.e. the
old concatenated-input architecture with ``W_1'' h(x) + b_1`` produced by the head.

:class:`FlowStack` holds K layers and one source and implements the public contract
``forward(z, context=None) -> (z_K, log_abs_det [B])`` and
``inverse(z_K, context=None) -> (z_0, log_abs_det_of_inverse [B])``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]


class InverseNotAvailable(NotImplementedError):
    """Raised by :meth:`FlowLayer.inverse` (and :meth:`FlowStack.inverse`) for flows that have
    no inverse (``has_inverse = False``: planar, radial, the Sylvester flows)."""


class FlowLayer(nn.Module):
    """One flow layer ``f: R^D -> R^D`` whose raw parameters are supplied from outside.

    Built as ``cls(dim, index=0, **hparams)``: ``index`` is the layer's position in the stack
    (lets layers alternate masks or orders), ``hparams`` the family's hyperparameters.

    The contract, for every layer:

    * ``forward(z, context=None) -> (z_next [B, D], log|det df/dz| [B])``;
    * ``inverse(z_next, context=None) -> (z [B, D], log|det df^{-1}/dz_next| [B])``, the
      latter ``= -log|det df/dz|`` at the recovered ``z``; layers without an inverse
      (``has_inverse = False``) raise :class:`InverseNotAvailable`.

    For a layer, ``context`` is the layer's raw parameter dict, name -> tensor
    ``[B, *shape]`` (amortized) or ``[1, *shape]`` (global), with the names and shapes of
    :meth:`param_shapes`, as produced by the stack's :class:`ParamSource`. A layer that
    declares parameters raises ``ValueError`` when given None. (At the stack level,
    :class:`FlowStack`, ``context`` is the encoder's features instead.)

    Subclasses implement :meth:`param_shapes`, :meth:`forward` and, where the map inverts,
    :meth:`inverse` (with ``has_inverse = True``); they read their parameters with
    :meth:`raw_params`.
    """

    #: name in the registry; set by :func:`register_flow`
    name: str = ""
    #: whether :meth:`inverse` is implemented
    has_inverse: bool = False

    def __init__(self, dim: int, index: int = 0, **hparams: object) -> None:
        super().__init__()
        if hparams:
            unknown = ", ".join(sorted(hparams))
            raise TypeError(f"flow {self.name!r} got unknown hyperparameters: {unknown}")
        self.dim = dim
        self.index = index  # position in the stack: lets layers alternate masks or orders

    @classmethod
    def stack_hparams(cls, K: int, hparams: dict[str, object]) -> dict[str, object]:
        """The hyperparameters each layer of a ``K``-layer stack is built with, from the
        family's configured ``hparams`` (for a family whose initialization should depend on
        the stack's length). Default: ``hparams`` unchanged."""
        return hparams

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-example shapes of the raw (unconstrained) outside parameters, by name."""
        return {}

    def init_global(self, name: str, param: Tensor) -> None:
        """Initialize a global raw parameter in place (also the amortized head's bias).
        Default: ``N(0, 0.01^2)``."""
        nn.init.normal_(param, std=0.01)

    def raw_params(self, context: Params | None) -> Params:
        """The layer's raw parameter dict, checked: a layer that declares parameters needs one."""
        if context is None:
            if self.param_shapes():
                raise ValueError(
                    f"flow layer {self.name!r} needs its raw parameters "
                    f"{sorted(self.param_shapes())} as context (a dict from the stack's "
                    "ParamSource), got None"
                )
            return {}
        if not isinstance(context, dict):
            raise TypeError(
                f"a flow layer's context is its raw parameter dict, got {type(context).__name__}"
                " (encoder features go to the FlowStack, not to its layers)"
            )
        return context

    def forward(self, z: Tensor, context: Params | None = None) -> tuple[Tensor, Tensor]:
        """``z [B, D] -> (z_next [B, D], log|det df/dz| [B])``; ``context``: raw parameters."""
        raise NotImplementedError

    def inverse(self, z_next: Tensor, context: Params | None = None) -> tuple[Tensor, Tensor]:
        """``z_next [B, D] -> (z [B, D], log|det df^{-1}/dz_next| [B])`` where the flow has a
        closed or iterative inverse; otherwise :class:`InverseNotAvailable`."""
        raise InverseNotAvailable(f"flow {self.name!r} has no inverse")

    def num_params(self) -> int:
        """Number of raw outside parameters one example needs for this layer."""
        return sum(math.prod(s) for s in self.param_shapes().values())

    def fuse_key(self) -> Hashable | None:
        """Layers whose keys are equal (and not None) run as one fused stack,
        :meth:`fused_forward`; None (the default): this layer runs on its own."""
        return None

    def fused_forward(self, z: Tensor, params: Params) -> tuple[Tensor, Tensor]:
        """A whole stack of layers sharing this layer's :meth:`fuse_key` in one pass:
        ``params`` every layer's raw parameters stacked by name, ``[K, B|1, *shape]``;
        returns ``(z_K [B, D], sum_k log|det df_k/dz_{k-1}| [B])``."""
        raise NotImplementedError(f"flow {self.name!r} has no fused stack")

    def fused_broadcasts(self, z: Tensor) -> bool:
        """Whether :meth:`fused_forward` takes ``z [n B, D]`` (sample-major, row ``s B + b``)
        with parameters for the ``B`` contexts, ``[K, B, ...]``, untiled (False: the default;
        planar, radial and Householder where their compiled kernels run, :mod:`nfvi.native`)."""
        return False


class ParamSource(nn.Module):
    """Produces the raw outside parameters of every layer of a stack."""

    def __init__(self, layers: list[FlowLayer]) -> None:
        super().__init__()
        self.shapes = [layer.param_shapes() for layer in layers]

    def forward(self, batch_size: int, context: Tensor | None) -> list[Params]:
        """One dict per layer; each tensor ``[B, *shape]`` or ``[1, *shape]``."""
        raise NotImplementedError

    def stacked(self, batch_size: int, context: Tensor | None) -> Params:
        """Every layer's parameters stacked by name, ``[K, B|1, *shape]`` (for layers of one
        :meth:`~FlowLayer.param_shapes`: a fused stack)."""
        per_layer = self(batch_size, context)
        return {n: torch.stack([p[n] for p in per_layer]) for n in self.shapes[0]}


class GlobalParams(ParamSource):
    """Learned parameters shared by all examples (each returned with a leading dim of 1).

    Each starts as the layer's :meth:`FlowLayer.init_global` makes it.
    """

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

    def stacked(self, batch_size: int, context: Tensor | None) -> Params:
        return {n: torch.stack([pd[n] for pd in self.params]).unsqueeze(1) for n in self.shapes[0]}


class AmortizedParams(ParamSource):
    """Per-example parameters from the encoder's features: ``theta(x) = W h(x) + c``.

    One linear head ``[C] -> [sum_k num_params_k]`` produces all K layers' raw parameters in
    one batched matmul (``[B, C] -> [B, sum_k num_params_k]``), which are split and reshaped
    per layer and name. The head's weights start small (``N(0, 0.01^2)``) and its bias where
    a global parameter would (:meth:`FlowLayer.init_global`), so both variants begin alike and
    close to the identity.
    """

    def __init__(self, layers: list[FlowLayer], context_dim: int,
                 normalize: bool = False, gain: float | None = 1.0,
                 hidden: int | None = None) -> None:
        super().__init__(layers)
        # normalize: the head reads LayerNorm(h) (no learned scale), so the flow's parameters
        # stay bounded for every x however large the encoder's features grow
        self.norm = nn.LayerNorm(context_dim, elementwise_affine=False) if normalize else None
        # hidden: the head reads its own features ELU(V h + a) [B, hidden] instead of h, so the
        # flow's parameters need not be linear in the features that also give q0's mu, log_var
        self.body = None
        if hidden is not None:
            self.body = nn.Sequential(nn.Linear(context_dim, hidden), nn.ELU())
            context_dim = hidden
        # gain g: theta = c + g W h with W drawn at 0.01 / g, so theta starts alike for every g
        # while an optimizer step on W (of a size set by the learning rate, as Adam's is)
        # moves theta g times as far: the head learns g times slower than the rest
        self.gain = context_dim**-0.5 if gain is None else float(gain)  # None: 1/sqrt(C)
        self.sizes = [math.prod(s) for shapes in self.shapes for s in shapes.values()]
        self.head = nn.Linear(context_dim, max(sum(self.sizes), 1))
        nn.init.normal_(self.head.weight, std=0.01 / self.gain)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            offset = 0
            for layer, shapes in zip(layers, self.shapes, strict=True):
                for name, shape in shapes.items():
                    n = math.prod(shape)
                    chunk = torch.empty(shape)
                    layer.init_global(name, chunk)
                    self.head.bias[offset : offset + n] = chunk.reshape(-1)
                    offset += n

    def flat(self, context: Tensor | None) -> Tensor:
        """The head's output ``[B, sum_k num_params_k]``, layer after layer."""
        if context is None:
            raise ValueError("an amortized flow needs context of shape [B, context_dim]")
        h = context if self.norm is None else self.norm(context)
        if self.body is not None:
            h = self.body(h)
        # the gain scales h (a [B, C] product) rather than the matmul (addmm's alpha), whose
        # backward would scale the whole [C, sum_k num_params_k] weight gradient
        return self.head(h) if self.gain == 1.0 else torch.addmm(
            self.head.bias, h * self.gain, self.head.weight.t())

    def stacked(self, batch_size: int, context: Tensor | None) -> Params:
        # layers of one shape lie side by side in the head's output: [B, K, n] views, no copies
        flat = self.flat(context)
        shapes = self.shapes[0]
        per_layer = flat.reshape(flat.shape[0], len(self.shapes), -1).transpose(0, 1)
        parts = per_layer.split([math.prod(s) for s in shapes.values()], dim=-1)
        return {n: t.reshape(*t.shape[:2], *s)
                for (n, s), t in zip(shapes.items(), parts, strict=True)}

    def forward(self, batch_size: int, context: Tensor | None) -> list[Params]:
        flat = self.flat(context)
        chunks = iter(flat.split(self.sizes, dim=-1)) if self.sizes else iter(())
        out: list[Params] = []
        for shapes in self.shapes:
            out.append({n: next(chunks).reshape(-1, *s) for n, s in shapes.items()})
        return out


class FlowStack(nn.Module):
    """K flow layers and the source of their parameters.

    * ``forward(z [B, D], context) -> (z_K [B, D], sum_k log|det df_k/dz_{k-1}| [B])``;
    * ``inverse(z_K [B, D], context) -> (z_0 [B, D], sum_k log|det df_k^{-1}/dz_k| [B])``,
      the second ``= -`` the forward log-determinant at ``z_0`` (raises
      :class:`InverseNotAvailable` unless every layer has an inverse).

    ``context`` is the encoder's features ``[B, context_dim]`` in an amortized stack (then
    required), else None. With K = 0 the stack is the identity with a zero log-determinant.

    ``fused`` (default True): where every layer is of one fusable kind (planar, radial,
    Householder: equal :meth:`FlowLayer.fuse_key`), :meth:`forward` runs the whole stack as
    one fused pass with a hand-derived backward (:mod:`nfvi.flows.fused`), the same map to
    rounding; :attr:`uses_fused` says whether it does. False: always layer by layer.
    """

    def __init__(
        self,
        layers: list[FlowLayer],
        source: ParamSource | None,
        context_dim: int | None = None,
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.source = source
        self.context_dim = context_dim  # set: amortized, forward needs context [B, context_dim]
        self.fused = bool(fused)

    @property
    def amortized(self) -> bool:
        return self.context_dim is not None

    def layer_params(self, batch_size: int, context: Tensor | None) -> list[Params | None]:
        """Every layer's raw parameter dict from the source (None where there is no source)."""
        if self.amortized and len(self.layers) > 0 and context is None:
            raise ValueError("an amortized flow needs context of shape [B, context_dim]")
        if self.source is None or len(self.layers) == 0:
            return [None for _ in self.layers]
        return self.source(batch_size, context)

    @property
    def fusable(self) -> bool:
        """Whether the layers can run as one fused stack: K > 0, one parameter source and every
        layer's :meth:`FlowLayer.fuse_key` equal and not None."""
        if len(self.layers) == 0 or self.source is None:
            return False
        key = self.layers[0].fuse_key()
        return key is not None and all(layer.fuse_key() == key for layer in self.layers)

    @property
    def uses_fused(self) -> bool:
        """Whether :meth:`forward` takes the fused path (:attr:`fused` and :attr:`fusable`)."""
        return self.fused and self.fusable

    def forward(self, z: Tensor, context: Tensor | None = None,
                repeat: int = 1) -> tuple[Tensor, Tensor]:
        """``repeat = n > 1``: ``z`` holds ``n`` samples of each of the ``B`` contexts,
        sample-major (row ``s B + b`` belongs to ``context[b]``, as ``context.repeat(n, 1)``
        would lay it out). The amortized parameters are then computed once per context and
        tiled, not recomputed per sample: the same map, without ``n`` times the head's
        matmul (the importance-weighted NLL's ``S`` samples)."""
        if repeat > 1 and self.amortized and not torch.is_grad_enabled():
            if self.uses_fused and self.layers[0].fused_broadcasts(z):
                if context is None:
                    raise ValueError("an amortized flow needs context of shape [B, context_dim]")
                return self.layers[0].fused_forward(z, self.source.stacked(z.shape[0] // repeat,
                                                                           context))
            if all(getattr(layer, "broadcasts_batch", False) for layer in self.layers):
                return self._broadcast_forward(z, context, repeat)
        if self.uses_fused:
            if self.amortized and context is None:
                raise ValueError("an amortized flow needs context of shape [B, context_dim]")
            stacked = self.source.stacked(z.shape[0] // repeat, context)
            if repeat > 1 and self.amortized:
                stacked = {n: t.repeat(1, repeat, *([1] * (t.dim() - 2)))
                           for n, t in stacked.items()}
            return self.layers[0].fused_forward(z, stacked)
        params = self.layer_params(z.shape[0] // repeat, context)
        if repeat > 1 and self.amortized:
            params = [None if p is None else
                      {n: t.repeat(repeat, *([1] * (t.dim() - 1))) for n, t in p.items()}
                      for p in params]
        log_abs_det = z.new_zeros(z.shape[0])
        for layer, p in zip(self.layers, params, strict=True):
            z, ld = layer(z, p)
            log_abs_det = log_abs_det + ld
        return z, log_abs_det

    def _broadcast_forward(self, z: Tensor, context: Tensor | None,
                           repeat: int) -> tuple[Tensor, Tensor]:
        """Without a graph, layers that broadcast (planar, radial) take ``z`` as ``[n, B, D]``
        and each layer's ``[B, ...]`` parameters as they are: no tiled copies, and per-layer
        work such as planar's ``u_hat`` done once per context, not once per sample."""
        batch = z.shape[0] // repeat
        params = self.layer_params(batch, context)
        zz = z.reshape(repeat, batch, *z.shape[1:])
        log_abs_det = z.new_zeros(repeat, batch)
        for layer, p in zip(self.layers, params, strict=True):
            zz, ld = layer(zz, p)
            log_abs_det = log_abs_det + ld
        return zz.reshape(z.shape), log_abs_det.reshape(-1)

    def inverse(self, z_k: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Invert the whole stack, last layer first (only when :attr:`has_inverse`)."""
        for layer in self.layers:
            if not layer.has_inverse:
                raise InverseNotAvailable(f"flow {layer.name!r} has no inverse")
        params = self.layer_params(z_k.shape[0], context)
        log_abs_det = z_k.new_zeros(z_k.shape[0])
        for layer, p in zip(reversed(self.layers), reversed(params), strict=True):
            z_k, ld = layer.inverse(z_k, p)
            log_abs_det = log_abs_det + ld
        return z_k, log_abs_det

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
    context_norm: bool = False,
    head_gain: float | None = 1.0,
    fused: bool = True,
    context_hidden: int | None = None,
    **hparams: object,
) -> FlowStack:
    """Build a stack of ``K`` layers of flow ``name`` acting on ``dim`` dimensions.

    ``amortized=True`` needs ``context_dim``: the stack then takes ``context [B, context_dim]``
    and an :class:`AmortizedParams` head produces every layer's raw parameters from it;
    otherwise they are :class:`GlobalParams`. ``context_norm``: the head reads the layer-normed
    context and ``head_gain`` (None: ``1/sqrt(context_dim)``) scales how fast the head learns
    (see :class:`AmortizedParams`). ``fused``: run planar, radial and Householder stacks as one pass
    (:attr:`FlowStack.fused`). Extra keyword arguments go to the layer class.
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
    hparams = cls.stack_hparams(K, dict(hparams))
    layers = [cls(dim, index=k, **hparams) for k in range(K)]
    if K == 0:
        return FlowStack(layers, None, ctx_dim, fused)
    if amortized:
        source = AmortizedParams(layers, context_dim, context_norm, head_gain, context_hidden)
        return FlowStack(layers, source, ctx_dim, fused)
    return FlowStack(layers, GlobalParams(layers), ctx_dim, fused)
