"""Figures of the energy task, like R&M 2015 Figure 3, on the square ``(-4, 4)^2``.

* ``density.png``: the true density ``exp(-U) / Z`` beside the flow's density ``q_K``. ``q_K``
  is exact on the grid (``ln q_0(f^{-1}(z)) - sum ln|det|``) where every layer of the flow has
  an inverse, and otherwise a fine 2D histogram of many samples; the panel's title says which.
* ``samples.png``: samples of ``q_0`` and of ``q_K`` over the contours of the true density.

matplotlib is imported lazily (Agg backend) so that importing this module stays cheap; files
are written atomically.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from nfvi.energy.model import EnergyModel
from nfvi.rundir import atomic_write_bytes

EXTENT = 4.0


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _grid(n: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Cell centres of an ``n x n`` grid on ``(-4, 4)^2``: ``(z [n*n, 2], cell side)``."""
    h = 2 * EXTENT / n
    x = -EXTENT + (torch.arange(n, device=device, dtype=dtype) + 0.5) * h
    # rows = z2 (image y), columns = z1 (image x)
    z2, z1 = torch.meshgrid(x, x, indexing="ij")
    return torch.stack([z1, z2], dim=-1).reshape(-1, 2), h


@torch.no_grad()
def true_density(target, log_z: float, n: int) -> Tensor:
    """``p(z) = exp(-U(z) - ln Z)`` on an ``n x n`` grid, shape ``[n, n]`` (row = z2); CPU."""
    z, _ = _grid(n, torch.device("cpu"), torch.float64)
    return torch.exp(-target(z) - log_z).reshape(n, n).float().cpu()


@dataclass
class FlowDensity:
    density: Tensor  # [n, n], row = z2
    method: str  # "exact" or "histogram"
    description: str


@torch.no_grad()
def flow_density(
    model: EnergyModel,
    grid: int,
    hist_samples: int,
    hist_bins: int,
    chunk: int = 200_000,
    method: str = "auto",
) -> FlowDensity:
    """``q_K`` on ``(-4, 4)^2``: exact where the flow inverts, else a histogram of samples.

    ``method``: ``"auto"`` (exact if :attr:`EnergyModel.has_inverse`), ``"exact"`` or
    ``"histogram"``. The histogram is normalized as a density: counts / (n * bin area).
    """
    p = model.mean
    if method not in ("auto", "exact", "histogram"):
        raise ValueError(f"method must be auto, exact or histogram, got {method!r}")
    if method == "exact" or (method == "auto" and model.has_inverse):
        z, _ = _grid(grid, p.device, p.dtype)
        logq = torch.cat([model.log_prob(c) for c in z.split(chunk)])
        dens = torch.exp(logq).reshape(grid, grid).float().cpu()
        return FlowDensity(dens, "exact", f"exact (inverse flow), {grid}x{grid} grid")
    counts = torch.zeros(hist_bins * hist_bins, dtype=torch.float64)
    h = 2 * EXTENT / hist_bins
    left = hist_samples
    while left > 0:
        m = min(chunk, left)
        zk = model.sample(m).z_K
        idx = torch.floor((zk + EXTENT) / h).long()
        ok = ((idx >= 0) & (idx < hist_bins)).all(-1) & torch.isfinite(zk).all(-1)
        idx = idx[ok]
        flat = idx[:, 1] * hist_bins + idx[:, 0]  # row = z2
        counts += torch.bincount(flat, minlength=hist_bins * hist_bins).cpu().double()
        left -= m
    dens = (counts / (hist_samples * h * h)).reshape(hist_bins, hist_bins).float().cpu()
    desc = f"histogram of {hist_samples:,} samples, {hist_bins}x{hist_bins} bins"
    return FlowDensity(dens, "histogram", desc)


def plot_density(
    target,
    log_z: float,
    model: EnergyModel,
    path: str | Path,
    title: str = "",
    grid: int = 400,
    hist_samples: int = 1_000_000,
    hist_bins: int = 200,
) -> str:
    """Write ``density.png``; returns how q_K was drawn ("exact" or "histogram")."""
    plt = _plt()
    p_true = true_density(target, log_z, grid)
    q = flow_density(model, grid, hist_samples, hist_bins)
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.8))
    ext = (-EXTENT, EXTENT, -EXTENT, EXTENT)
    for ax, img, name in (
        (axes[0], p_true, f"true density exp(-U)/Z ({target.name})"),
        (axes[1], q.density, f"q_K: {q.description}"),
    ):
        ax.imshow(img.numpy(), origin="lower", extent=ext, cmap="viridis", interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("z1")
        ax.set_ylabel("z2")
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title, fontsize=11)
    _save(fig, path)
    return q.method


@torch.no_grad()
def plot_samples(
    target, log_z: float, model: EnergyModel, path: str | Path, n: int = 2000, title: str = ""
) -> None:
    """Write ``samples.png``: ``n`` samples of ``q_0`` and ``q_K`` over the true density."""
    plt = _plt()
    s = model.sample(n)
    z0 = s.z_0.float().cpu().numpy()
    zk = s.z_K.float().cpu().numpy()
    grid = 200
    p_true = true_density(target, log_z, grid).numpy()
    xs = (-EXTENT + (torch.arange(grid) + 0.5) * (2 * EXTENT / grid)).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.8))
    for ax, pts, name in ((axes[0], z0, "samples of q_0"), (axes[1], zk, "samples of q_K")):
        ax.contour(xs, xs, p_true, levels=6, colors="0.5", linewidths=0.7)
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.4, color="tab:red", rasterized=True)
        ax.set_xlim(-EXTENT, EXTENT)
        ax.set_ylim(-EXTENT, EXTENT)
        ax.set_aspect("equal")
        ax.set_title(f"{name} ({n} points), contours: p", fontsize=9)
        ax.set_xlabel("z1")
        ax.set_ylabel("z2")
    if title:
        fig.suptitle(title, fontsize=11)
    _save(fig, path)


def plot_panels(rows: list[list[tuple[str, Tensor]]], path: str | Path, title: str = "") -> None:
    """A grid of density images on ``(-4, 4)^2``: ``rows[i][j] = (panel title, [n, n])``."""
    plt = _plt()
    nr, nc = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nr, nc, figsize=(2.6 * nc, 2.6 * nr), squeeze=False)
    ext = (-EXTENT, EXTENT, -EXTENT, EXTENT)
    for i, row in enumerate(rows):
        for j in range(nc):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(row):
                ax.axis("off")
                continue
            name, img = row[j]
            ax.imshow(img.numpy(), origin="lower", extent=ext, cmap="viridis",
                      interpolation="nearest")
            ax.set_title(name, fontsize=8)
            ax.set_aspect("equal")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
