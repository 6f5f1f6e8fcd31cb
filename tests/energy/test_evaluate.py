"""ln Z by quadrature vs independent estimates; the KL and ESS estimators on known cases."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from nfvi.energy import (
    TARGETS,
    EnergyModel,
    estimate_kl,
    get_target,
    log_partition,
    log_partition_importance,
)

# importance-sampling proposals with heavier tails than each target (U2-U4: std > s / sqrt 2)
PROPOSALS = {
    "u1": ((0.0, 0.0), (2.5, 2.5)),
    "u2": ((0.0, -1.0), (6.0, 2.5)),
    "u3": ((0.0, -1.5), (6.0, 3.0)),
    "u4": ((0.0, -1.5), (6.0, 3.0)),
}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_log_z_quadrature_agrees_with_importance_sampling(name):
    target = TARGETS[name]
    quad = log_partition(target)
    gen = torch.Generator().manual_seed(1234 + int(name[1]))
    mean, std = PROPOSALS[name]
    mc, se = log_partition_importance(target, 400_000, mean, std, generator=gen)
    assert 0 < se < 0.02
    assert abs(quad.log_z - mc) < 4 * se, (quad.log_z, mc, se)


@pytest.mark.parametrize("name", ["u2", "u3", "u4"])
@pytest.mark.parametrize("s", [2.0, 4.0])
def test_log_z_quadrature_matches_closed_form(name, s):
    target = get_target(name, s)
    quad = log_partition(target)
    # by hand: sum_j sigma_j sqrt(2 pi) times s sqrt(2 pi)
    sig = {"u2": 0.4, "u3": 0.7, "u4": 0.75}[name]
    want = math.log(sig * math.sqrt(2 * math.pi)) + math.log(s * math.sqrt(2 * math.pi))
    assert quad.closed_form == pytest.approx(want, abs=1e-14)
    assert quad.log_z == pytest.approx(want, abs=1e-9)
    assert quad.refinement_delta < 1e-9


def test_log_z_u1_is_converged():
    fine = log_partition(TARGETS["u1"], spacing=0.01)
    default = log_partition(TARGETS["u1"])
    assert default.log_z == pytest.approx(fine.log_z, abs=1e-9)
    assert default.refinement_delta < 1e-9
    assert default.closed_form is None


def _gaussian_energy(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (z * z).sum(-1)


def test_kl_and_ess_exact_when_q_equals_p():
    torch.manual_seed(0)
    model = EnergyModel(_gaussian_energy, "planar", K=0).double()
    est = estimate_kl(model, math.log(2 * math.pi), 20_000)
    assert est.kl == pytest.approx(0.0, abs=1e-9)
    assert est.kl_stderr == pytest.approx(0.0, abs=1e-9)
    assert est.ess_percent == pytest.approx(100.0, abs=1e-6)


def test_kl_of_shifted_and_scaled_gaussian():
    # KL(N(m, diag s^2) || N(0, I)) = 0.5 sum(s^2 + m^2 - 1 - ln s^2)
    torch.manual_seed(0)
    model = EnergyModel(_gaussian_energy, "radial", K=0)
    with torch.no_grad():
        model.mean.copy_(torch.tensor([1.0, -0.5]))
        model.log_std.copy_(torch.tensor([0.2, -0.3]))
    s2 = torch.exp(2 * model.log_std.detach())
    m2 = model.mean.detach() ** 2
    want = 0.5 * (s2 + m2 - 1 - s2.log()).sum().item()
    est = estimate_kl(model, math.log(2 * math.pi), 200_000)
    assert abs(est.kl - want) < 4 * est.kl_stderr
    assert 0 < est.ess_percent < 100


@functools.cache
def _log_z(name: str) -> float:
    return log_partition(TARGETS[name]).log_z


@pytest.mark.parametrize("flow", ["planar", "radial"])
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_kl_of_untrained_flow_is_not_negative(flow, name):
    torch.manual_seed(3)
    model = EnergyModel(TARGETS[name], flow, K=4)
    est = estimate_kl(model, _log_z(name), 20_000)
    assert est.kl >= -3 * est.kl_stderr
    assert est.nonfinite == 0
    assert 0.0 <= est.ess_percent <= 100.0
