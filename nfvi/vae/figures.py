"""Image grids of the VAE task, drawn with torchvision.utils and written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import Tensor

from nfvi.rundir import atomic_write_bytes
from nfvi.runtime import seeded_eval


def save_grid(images: Tensor, path: str | Path, nrow: int = 8) -> None:
    """``images [N, C, H, W]`` in [0, 1] -> a PNG grid at ``path``."""
    from torchvision.utils import save_image

    buf = io.BytesIO()
    save_image(images.detach().float().cpu().clamp(0, 1), buf, nrow=nrow, padding=2,
               pad_value=1.0, format="png")
    atomic_write_bytes(path, buf.getvalue())


def draw_samples(model, image_shape: tuple[int, ...], path: str | Path, n: int = 64,
                 seed: int = 0) -> None:
    """``n`` samples from the prior, shown as Bernoulli means."""
    p = next(model.parameters())
    gen = torch.Generator(device=p.device).manual_seed(seed)
    means = model.sample_prior(n, generator=gen)
    save_grid(means.view(n, *image_shape), path)


def draw_reconstructions(model, x: Tensor, image_shape: tuple[int, ...], path: str | Path,
                         seed: int = 0) -> None:
    """Test digits (odd columns) beside their reconstructions (even columns), 32 pairs."""
    x = x[:32]
    with seeded_eval(model, x.device, seed):
        rec = model.reconstruct(x)
    pairs = torch.stack([x, rec], dim=1).reshape(-1, *image_shape)
    save_grid(pairs, path, nrow=8)
