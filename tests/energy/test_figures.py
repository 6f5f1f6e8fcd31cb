"""The density figure: exact and histogram q_K agree and are oriented alike."""

from __future__ import annotations

import torch

from nfvi.energy import TARGETS, EnergyModel
from nfvi.energy.figures import flow_density, plot_density, plot_samples, true_density


def test_exact_and_histogram_densities_agree():
    torch.manual_seed(0)
    model = EnergyModel(TARGETS["u1"], "planar", K=0)
    with torch.no_grad():
        model.mean.copy_(torch.tensor([1.5, -1.1]))
        model.log_std.copy_(torch.tensor([-0.3, -0.9]))
    exact = flow_density(model, 40, 0, 0, method="exact")
    hist = flow_density(model, 40, 400_000, 40, method="histogram")
    assert exact.method == "exact" and hist.method == "histogram"
    # both are densities on (-4, 4)^2 with cell area 0.04; q0 is well inside the square
    assert abs(exact.density.sum().item() * 0.04 - 1) < 0.02
    assert abs(hist.density.sum().item() * 0.04 - 1) < 0.02
    # row = z2, column = z1: the mode (1.5, -1.1) is the centre of column 27 and row 14
    row, col = divmod(int(exact.density.argmax()), 40)
    assert (row, col) == (14, 27)
    assert (hist.density - exact.density).abs().sum().item() * 0.04 < 0.05


def test_true_density_normalized_and_figures_written(tmp_path):
    from nfvi.energy import log_partition

    lz = log_partition(TARGETS["u1"]).log_z
    p = true_density(TARGETS["u1"], lz, 200)
    assert abs(p.sum().item() * 0.04**2 - 1) < 1e-3  # U1 lies inside (-4, 4)^2
    model = EnergyModel(TARGETS["u1"], "radial", K=2)
    assert plot_density(TARGETS["u1"], lz, model, tmp_path / "d.png", grid=50,
                        hist_samples=10_000, hist_bins=50) == "histogram"
    plot_samples(TARGETS["u1"], lz, model, tmp_path / "s.png", n=200)
    assert (tmp_path / "d.png").stat().st_size > 1000
    assert (tmp_path / "s.png").stat().st_size > 1000
