"""Deterministic networks of the VAE: swappable architectures, found by name in
:data:`ARCHITECTURES`.

An architecture gives an encoder ``x [B, P] -> h [B, H]`` (the features that feed q0's heads
and, amortized, the flow's parameter head) and a decoder ``z [B, D] -> out [B, P * k]`` with
``k`` the likelihood's outputs per pixel, laid out as :mod:`nfvi.vae.likelihoods` reads it
(``out.view(B, P, k)``, pixels in x's order). The decoder comes in two parts: the body, and
``out``, the layer that produces the likelihood's parameters.

* ``mlp``: the DLGM-style MLPs of Rezende & Mohamed 2015, section 6.2 (:class:`MLPNets`).
* ``gated_conv``: the gated convolutional encoder and decoder of van den Berg et al. 2018
  (Sylvester normalizing flows, UAI 2018), :class:`GatedConvNets`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

import nfvi.native as native


def _window_max(v: Tensor) -> Tensor:
    """``max_i v[..., i]``: the compiled kernel where it applies (:mod:`nfvi.native`: one pass
    over memory), else ``pool - 1`` elementwise maxima of strided slices, on a CPU 4-5x faster
    than ``v.max(-1)``, whose reduction over a 4-wide innermost axis does not vectorize."""
    if native.usable(v):
        return native.window_max(v)
    m = v[..., 0]
    for i in range(1, v.shape[-1]):
        m = torch.maximum(m, v[..., i])
    return m


class _WindowMax(torch.autograd.Function):
    """``v [..., H, pool] -> max over the last axis [..., H]``; the backward sends ``g`` to the
    entries equal to their window's max (the argmax; every tied entry, should two be equal),
    one slice at a time so that no broadcast runs over the 4-wide axis."""

    @staticmethod
    def forward(ctx, v: Tensor) -> Tensor:
        m = _window_max(v)
        ctx.save_for_backward(v, m)
        return m

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        v, m = ctx.saved_tensors
        if native.usable(v, g):
            return native.window_max_backward(v, m, g)
        out = torch.empty_like(v)
        for i in range(v.shape[-1]):
            torch.mul(v[..., i] == m, g, out=out[..., i])
        return out


class Maxout(nn.Module):
    """``y_j = max_{i < pool} (W x + b)_{j * pool + i}``: ``[B, in] -> [B, out]``."""

    def __init__(self, in_features: int, out_features: int, pool: int) -> None:
        super().__init__()
        self.out_features, self.pool = out_features, pool
        self.linear = nn.Linear(in_features, out_features * pool)

    def forward(self, x: Tensor) -> Tensor:
        y = self.linear(x)
        v = y.view(*y.shape[:-1], self.out_features, self.pool)
        # not v.max(-1) / amax(-1): both reduce over the 4-wide innermost axis, 2-4x slower
        # (benchmarks/bench_fused.py's IS rows); the same values and, without ties, gradient
        if torch.is_grad_enabled() and v.requires_grad:
            return _WindowMax.apply(v)
        return _window_max(v)


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU}


def mlp(in_features: int, hidden: list[int], activation: str, pool: int) -> nn.Sequential:
    """Hidden layers only: ``[B, in] -> [B, hidden[-1]]`` (``in`` when ``hidden`` is empty)."""
    activation = str(activation)
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        if activation == "maxout":
            layers.append(Maxout(width, h, pool))
        else:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        width = h
    return nn.Sequential(*layers)


class ShapeError(ValueError):
    """An image shape an architecture cannot take (a run module reports it as a ConfigError)."""


@dataclass(frozen=True)
class NetSpec:
    """What an architecture is built from: ``data_dim`` pixels ``P``, ``latent_dim`` ``D``, the
    likelihood's ``per_pixel`` outputs ``k``, the images' ``(C, H, W)`` (conv nets) and the
    MLP's options (``hidden``, ``activation``, ``maxout_pool``; unused by conv nets)."""

    data_dim: int
    latent_dim: int
    per_pixel: int = 1
    image_shape: tuple[int, ...] | None = None
    hidden: tuple[int, ...] = (400, 400)
    activation: str = "maxout"
    maxout_pool: int = 4


class Architecture:
    """The encoder and decoder of a VAE for one :class:`NetSpec`.

    :class:`nfvi.vae.model.FlowVAE` calls :meth:`encoder`, builds q0's heads and the flow,
    then calls :meth:`decoder`: that order fixes the initial parameters drawn for a seed.
    """

    #: name in the registry; set by subclasses registered with :func:`register_architecture`
    name: ClassVar[str] = ""

    def __init__(self, spec: NetSpec) -> None:
        self.spec = spec

    @property
    def features(self) -> int:
        """``H``, the encoder's output width."""
        raise NotImplementedError

    @property
    def decode_rows(self) -> int | None:
        """At most this many latents per decoder call in long evaluations (the IS NLL), so that
        memory stays bounded; None: no limit."""
        return None

    def encoder(self) -> nn.Module:
        """``x [B, P] -> h [B, features]``."""
        raise NotImplementedError

    def decoder(self) -> tuple[nn.Module, nn.Module]:
        """``(body, out)`` with ``out(body(z [B, D])) = [B, P * per_pixel]``."""
        raise NotImplementedError


ARCHITECTURES: dict[str, type[Architecture]] = {}


def register_architecture(cls: type[Architecture]) -> type[Architecture]:
    """Class decorator: make ``cls`` available as ``model.name=cls.name``."""
    ARCHITECTURES[cls.name] = cls
    return cls


def make_architecture(name: str, spec: NetSpec) -> Architecture:
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown model architecture {name!r}; known: "
                       f"{', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name](spec)


@register_architecture
class MLPNets(Architecture):
    """Encoder ``mlp(P, hidden)``; decoder body ``mlp(D, reversed(hidden))`` and a linear
    layer to ``P * k`` outputs (``hidden`` empty: both are the identity)."""

    name = "mlp"

    @property
    def features(self) -> int:
        s = self.spec
        return s.hidden[-1] if s.hidden else s.data_dim

    def encoder(self) -> nn.Module:
        s = self.spec
        return mlp(s.data_dim, list(s.hidden), s.activation, s.maxout_pool)

    def decoder(self) -> tuple[nn.Module, nn.Module]:
        s = self.spec
        body = mlp(s.latent_dim, list(reversed(s.hidden)), s.activation, s.maxout_pool)
        out = nn.Linear(s.hidden[0] if s.hidden else s.latent_dim, s.data_dim * s.per_pixel)
        return body, out


class Gated(nn.Module):
    """A gated convolution, ``h = (W * x + b) . sigmoid(V * x + c)`` (van den Berg et al.
    2018, after Dauphin et al. 2017), ``*`` a (transposed) convolution, ``.`` elementwise.

    ``conv`` has ``2 C`` output channels: the first ``C`` are ``W * x + b``, the last ``C``
    are ``V * x + c`` (one kernel call for both): ``[B, C_in, H, W] -> [B, C, H', W']``.
    """

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d) -> None:
        super().__init__()
        self.conv = conv
        if isinstance(conv, nn.ConvTranspose2d):
            # torch takes a transposed conv's fan-in from its output channels: rescale so that
            # each half starts as a layer of C outputs would (W and V are separate maps)
            with torch.no_grad():
                conv.weight.mul_(math.sqrt(2.0))
                conv.bias.mul_(math.sqrt(2.0))

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.conv(x).chunk(2, dim=1)
        return value * torch.sigmoid(gate)


def gated_conv(c_in: int, c_out: int, kernel, stride=1, padding=0) -> Gated:
    return Gated(nn.Conv2d(c_in, 2 * c_out, kernel, stride, padding))


def gated_deconv(c_in: int, c_out: int, kernel, stride=1, padding=0, output_padding=0) -> Gated:
    return Gated(nn.ConvTranspose2d(c_in, 2 * c_out, kernel, stride, padding, output_padding))


#: a stride-2 layer halves a side only where at least this many rows / columns remain
MIN_GRID = 4
#: the last encoder layer's kernel spans the grid left after the halvings: at most this wide
MAX_GRID = 8


@dataclass(frozen=True)
class ConvPlan:
    """The gated-conv VAE's geometry for images ``(C, H, W)``.

    ``strides[i]`` is the (height, width) stride of the ``i``-th halving layer (the paper's 2nd
    and 4th encoder layers), ``sizes[i]`` the (height, width) it reads, and ``grid`` what is
    left after both, the last encoder layer's kernel (the first decoder layer's).
    """

    channels: int
    strides: tuple[tuple[int, int], tuple[int, int]]
    sizes: tuple[tuple[int, int], tuple[int, int]]
    grid: tuple[int, int]

    def output_padding(self, i: int) -> tuple[int, int]:
        """The transposed layer mirroring halving ``i`` gives back ``sizes[i]`` exactly:
        ``out = 2 n - 1 + output_padding`` for ``n = ceil(side / 2)``."""
        after = self.sizes[i + 1] if i == 0 else self.grid
        return tuple(side - s * (n - 1) - 1 if s == 2 else 0
                     for side, n, s in zip(self.sizes[i], after, self.strides[i], strict=True))


def conv_plan(image_shape: tuple[int, ...] | None, data_dim: int) -> ConvPlan:
    """The :class:`ConvPlan` for ``image_shape``; raises :class:`ShapeError` (one line) for a
    shape the architecture cannot take."""
    if image_shape is None or len(image_shape) != 3:
        raise ShapeError(f"the gated-conv VAE needs images of shape (C, H, W), got "
                         f"{image_shape}; use model=mlp for data without an image shape")
    c, h, w = (int(s) for s in image_shape)
    if c * h * w != data_dim or min(c, h, w) < 1:
        raise ShapeError(f"image shape {c}x{h}x{w} does not match {data_dim} pixels per "
                         "example; the data set's image_shape must be (C, H, W) of its rows")
    size, sizes, strides = (h, w), [], []
    for _ in range(2):
        # halve (ceil, the 5x5 stride-2 pad-2 layer) only where enough of the side remains
        stride = tuple(2 if -(-n // 2) >= MIN_GRID else 1 for n in size)
        sizes.append(size)
        strides.append(stride)
        size = tuple(-(-n // s) for n, s in zip(size, stride, strict=True))
    if max(size) > MAX_GRID:
        raise ShapeError(f"the gated-conv VAE halves images twice and its last kernel spans "
                         f"the rest, at most {MAX_GRID}x{MAX_GRID}; {c}x{h}x{w} leaves "
                         f"{size[0]}x{size[1]} (sides up to {4 * MAX_GRID} fit): crop or "
                         "downsample the images, or use model=mlp")
    return ConvPlan(c, (strides[0], strides[1]), (sizes[0], sizes[1]), size)


class GatedConvEncoder(nn.Module):
    """``x [B, C H W] -> h [B, 256]``: six gated convolutions, ``C -> 32 -> 32 -> 64 -> 64 ->
    64`` (5x5, padding 2; layers 2 and 4 with the plan's strides) and ``64 -> 256`` with the
    grid as its kernel (no padding), leaving one position per image."""

    def __init__(self, plan: ConvPlan, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.image_shape = image_shape
        s1, s2 = plan.strides
        self.net = nn.Sequential(
            gated_conv(plan.channels, 32, 5, 1, 2),
            gated_conv(32, 32, 5, s1, 2),
            gated_conv(32, 64, 5, 1, 2),
            gated_conv(64, 64, 5, s2, 2),
            gated_conv(64, 64, 5, 1, 2),
            gated_conv(64, 256, plan.grid, 1, 0),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.reshape(-1, *self.image_shape)).flatten(1)


class GatedConvDecoder(nn.Module):
    """``z [B, D] -> [B, 32, H, W]``: ``z`` as a 1x1 map of ``D`` channels, then six gated
    transposed convolutions mirroring the encoder, ``D -> 64`` (grid kernel), ``64 -> 64``,
    ``64 -> 32`` (halving 2 undone), ``32 -> 32``, ``32 -> 32`` (halving 1 undone), ``32 -> 32``
    (5x5, padding 2, the output padding that restores each side exactly)."""

    def __init__(self, plan: ConvPlan, latent_dim: int) -> None:
        super().__init__()
        s1, s2 = plan.strides
        self.net = nn.Sequential(
            gated_deconv(latent_dim, 64, plan.grid, 1, 0),
            gated_deconv(64, 64, 5, 1, 2),
            gated_deconv(64, 32, 5, s2, 2, plan.output_padding(1)),
            gated_deconv(32, 32, 5, 1, 2),
            gated_deconv(32, 32, 5, s1, 2, plan.output_padding(0)),
            gated_deconv(32, 32, 5, 1, 2),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z[..., None, None])


class PixelParams(nn.Module):
    """``h [B, C_h, H, W] -> out [B, P k]``: a 1x1 convolution to ``C k`` channels, channel
    ``c k + j`` holding parameter ``j`` of channel ``c``'s pixels, laid out pixel-major as the
    likelihoods read it: ``out.view(B, P, k)[:, (c H + y) W + x, j]``."""

    def __init__(self, c_in: int, channels: int, per_pixel: int) -> None:
        super().__init__()
        self.channels, self.per_pixel = channels, per_pixel
        self.conv = nn.Conv2d(c_in, channels * per_pixel, 1)

    def forward(self, h: Tensor) -> Tensor:
        y = self.conv(h)
        n, _, height, width = y.shape
        y = y.view(n, self.channels, self.per_pixel, height, width)
        return y.permute(0, 1, 3, 4, 2).reshape(n, -1)


@register_architecture
class GatedConvNets(Architecture):
    """The gated-conv VAE of van den Berg et al. 2018, generalised from ``image_shape``.

    For 1x28x28 (MNIST) and 1x28x20 (Frey Faces) it is the paper's: two stride-2 layers leave
    a 7x7 / 7x5 grid, the last kernel's size. A stride-2 layer halves a side only while at least
    :data:`MIN_GRID` remains, so 3x8x8 (CIFAR-10 patches) halves once, to a 4x4 grid, rather
    than to 2x2, where the 5x5 kernels would read mostly padding. Sides up to 32 fit (grid at
    most :data:`MAX_GRID`); others raise :class:`ShapeError`. Features: 256 per image.
    """

    name = "gated_conv"
    #: activations held per decoder call in long evaluations (float32: 256 MB)
    ROW_BUDGET = 2**26

    def __init__(self, spec: NetSpec) -> None:
        super().__init__(spec)
        self.plan = conv_plan(spec.image_shape, spec.data_dim)

    @property
    def features(self) -> int:
        return 256

    @property
    def decode_rows(self) -> int:
        # the widest map per latent: a full-size gated layer (2 x 32 channels) or the output
        widest = max(64, self.plan.channels * self.spec.per_pixel) * (
            self.spec.data_dim // self.plan.channels)
        return max(1, self.ROW_BUDGET // widest)

    def encoder(self) -> nn.Module:
        c, h, w = (int(s) for s in self.spec.image_shape)
        return GatedConvEncoder(self.plan, (c, h, w))

    def decoder(self) -> tuple[nn.Module, nn.Module]:
        body = GatedConvDecoder(self.plan, self.spec.latent_dim)
        return body, PixelParams(32, self.plan.channels, self.spec.per_pixel)
