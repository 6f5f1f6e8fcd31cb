"""Turning grey levels in [0, 1] into binary pixels for a Bernoulli likelihood.

* ``dynamic``: each pixel is ~ Bernoulli(grey level), re-drawn every time it is called
  (a fresh binarization per epoch for training; Salakhutdinov & Murray 2008).
* ``threshold``: pixel > threshold, deterministic.
* ``none``: the grey levels unchanged (for 8-bit or continuous likelihoods).

For validation and test, :func:`fixed_binarization` draws one binarization from a fixed seed so
that evaluation numbers are comparable between runs and epochs.
"""

from __future__ import annotations

import torch

from nfvi.errors import ConfigError

MODES = ("dynamic", "threshold", "none")


def binarize(
    x: torch.Tensor,
    mode: str,
    generator: torch.Generator | None = None,
    threshold: float = 0.5,
) -> torch.Tensor:
    """Binarize grey levels ``x`` (any shape, values in [0, 1]) to {0, 1}.

    Returns a tensor of the same shape, dtype and device as ``x``. ``generator`` (dynamic mode
    only) must live on ``x``'s device; None uses torch's global generator.
    """
    if mode == "dynamic":
        return torch.bernoulli(x, generator=generator)
    if mode == "threshold":
        return (x > threshold).to(x.dtype)
    if mode == "none":
        return x
    raise ConfigError(f"unknown binarization mode '{mode}'; use one of {', '.join(MODES)}")


def fixed_binarization(
    x: torch.Tensor, mode: str, seed: int, threshold: float = 0.5
) -> torch.Tensor:
    """A deterministic binarization of ``x`` for evaluation (same shape, dtype and device).

    Dynamic mode draws on the CPU from a generator seeded with ``seed``, so the result is the
    same whatever device ``x`` is on; threshold mode ignores ``seed``.
    """
    if mode == "dynamic":
        gen = torch.Generator().manual_seed(seed)
        return torch.bernoulli(x.detach().cpu(), generator=gen).to(x.device)
    return binarize(x, mode, threshold=threshold)
