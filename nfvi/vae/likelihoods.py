"""Decoder output distributions p(x|z): a swappable piece of the VAE, found by name.

Each likelihood says how many decoder outputs it needs per pixel, turns the decoder's output
``out [N, P * k]`` and data ``x [N, P]`` into ``ln p(x|z) [N]`` (summed over pixels), and gives
the image to draw. Data are always float tensors with values in [0, 1]:

* ``bernoulli`` (k = 1, logits): binary pixels ``x in {0, 1}``;
  ``ln p = sum_i x_i l_i - softplus(l_i)``.
* ``categorical`` (k = 256, logits over the 256 grey levels): 8-bit pixels ``x = v / 255``,
  ``v in {0, ..., 255}``; ``ln p = sum_i log_softmax(l_i)[v_i]`` (van den Berg et al. 2018's
  Frey Faces likelihood). Its NLL is also reported in bits per dimension,
  ``-ln p(x) / (P ln 2)``.
* ``logit_normal`` (k = 2, mean and log-std of ``logit(x)``): continuous ``x in (0, 1)``
  (Rezende & Mohamed 2015, Table 3's CIFAR-10 patches, levels mapped into
  ``[eps, 1 - eps]``); ``ln p = sum_i ln N(logit x_i; m_i, s_i^2) - ln x_i - ln(1 - x_i)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


class Likelihood:
    """``per_pixel`` decoder outputs per pixel; ``eight_bit``: x takes 256 levels (bits/dim)."""

    name = "likelihood"
    per_pixel = 1
    eight_bit = False

    def log_prob(self, out: Tensor, x: Tensor) -> Tensor:
        """``ln p(x|z)`` ``[N]`` for decoder output ``out [N, P * per_pixel]``, ``x [N, P]``."""
        raise NotImplementedError

    def mean(self, out: Tensor) -> Tensor:
        """An image ``[N, P]`` in [0, 1] to draw for ``out``."""
        raise NotImplementedError


def _softplus_via_log(logits: Tensor) -> Tensor:
    """``softplus(l) = max(l, 0) + log(1 + exp(-|l|))``, with ``log`` where ``log1p`` would
    be exact: torch's CPU ``log1p`` (and so ``softplus``, ``binary_cross_entropy_with_logits``)
    does not vectorize and costs about 8x ``exp`` + ``log`` per element (benchmarks/
    bench_fused.py's IS rows: half of a K = 0 point's time went there). ``exp(-|l|)`` is in
    ``(0, 1]``, so ``log(1 + t)`` is off by at most half an ulp of 1 in absolute terms (6e-8
    nats per pixel in float32, 1e-16 in float64); summed over a 784-pixel image, well inside
    the float32 sum's own rounding."""
    t = logits.abs().neg_().exp_().add_(1.0).log_()
    return t.add_(logits.clamp_min(0.0))


class _BernoulliLogProb(torch.autograd.Function):
    """``ln p(x|l) = sum_i x_i l_i - softplus(l_i)`` ``[N]``; backward ``d/dl = x - sigmoid(l)``,
    ``d/dx = l``."""

    @staticmethod
    def forward(ctx, logits: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(logits, x)
        return torch.addcmul(_softplus_via_log(logits).neg_(), x, logits).sum(-1)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        logits, x = ctx.saved_tensors
        g = g.unsqueeze(-1)
        g_l = (x - torch.sigmoid(logits)).mul_(g) if ctx.needs_input_grad[0] else None
        g_x = logits * g if ctx.needs_input_grad[1] else None
        return g_l, g_x


class Bernoulli(Likelihood):
    name = "bernoulli"

    def log_prob(self, out: Tensor, x: Tensor) -> Tensor:
        if out.device.type != "cpu":  # fused and vectorized on GPUs already
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
        if torch.is_grad_enabled() and (out.requires_grad or x.requires_grad):
            return _BernoulliLogProb.apply(out, x)
        return torch.addcmul(_softplus_via_log(out).neg_(), x, out).sum(-1)

    def mean(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out)


class Categorical256(Likelihood):
    name = "categorical"
    per_pixel = 256
    eight_bit = True

    def log_prob(self, out: Tensor, x: Tensor) -> Tensor:
        logits = out.view(*x.shape, 256)
        levels = (x * 255.0).round().long().clamp_(0, 255)
        return logits.log_softmax(-1).gather(-1, levels.unsqueeze(-1)).squeeze(-1).sum(-1)

    def mean(self, out: Tensor) -> Tensor:
        probs = out.view(out.shape[0], -1, 256).softmax(-1)
        grid = torch.arange(256, device=out.device, dtype=probs.dtype) / 255.0
        return probs @ grid


class LogitNormal(Likelihood):
    name = "logit_normal"
    per_pixel = 2

    def log_prob(self, out: Tensor, x: Tensor) -> Tensor:
        m, log_s = out.view(*x.shape, 2).unbind(-1)
        y = torch.logit(x)
        log_n = -0.5 * (LOG_2PI + ((y - m) * torch.exp(-log_s)) ** 2) - log_s
        return (log_n - torch.log(x) - torch.log1p(-x)).sum(-1)

    def mean(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out.view(out.shape[0], -1, 2)[..., 0])  # the median


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls for cls in (Bernoulli, Categorical256, LogitNormal)
}


def make_likelihood(name: str) -> Likelihood:
    if name not in LIKELIHOODS:
        raise KeyError(f"unknown likelihood {name!r}; known: {', '.join(sorted(LIKELIHOODS))}")
    return LIKELIHOODS[name]()


def bits_per_dim(nats: float, pixels: int) -> float:
    """``nats / (P ln 2)``: a per-example ``-ln p`` in bits per pixel."""
    return nats / (pixels * math.log(2.0))
