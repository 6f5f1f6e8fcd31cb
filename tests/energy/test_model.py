"""The q0 + flow model: density bookkeeping, the loss, dtype following."""

from __future__ import annotations

import pytest
import torch
from torch.func import jacrev, vmap

from nfvi.energy import TARGETS, EnergyModel
from nfvi.flows import FLOWS, InverseNotAvailable


def _randomize(model: EnergyModel, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.7)


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_log_q_is_the_change_of_variables(flow):
    """ln q_K(z_K) = ln q0(z0) - ln|det dz_K/dz0|, with the Jacobian from autograd."""
    torch.manual_seed(0)
    model = EnergyModel(TARGETS["u1"], flow, K=3).double()
    _randomize(model)
    s = model.sample(16)

    def f(z0: torch.Tensor) -> torch.Tensor:
        return model.flow(z0.unsqueeze(0))[0].squeeze(0)

    jac = vmap(jacrev(f))(s.z_0.detach())
    want = model.base_log_prob(s.z_0) - torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(s.log_q, want)
    torch.testing.assert_close(s.log_q0, model.base_log_prob(s.z_0))


@pytest.mark.parametrize("flow", sorted(f for f, cls in FLOWS.items() if cls.has_inverse))
def test_exact_density_of_invertible_flows_matches_sampling(flow):
    """Where the flow inverts, log_prob(z_K) (used for density.png) equals ln q_K from sampling."""
    torch.manual_seed(0)
    model = EnergyModel(TARGETS["u2"], flow, K=3).double()
    _randomize(model, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
        s = model.sample(64)
        torch.testing.assert_close(model.log_prob(s.z_K), s.log_q, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("flow", sorted(f for f, cls in FLOWS.items() if cls.has_inverse))
def test_exact_density_is_one_inverse_pass(flow, monkeypatch):
    """log_prob takes the log-determinant from the inverse: the flow never runs forward."""
    torch.manual_seed(0)
    model = EnergyModel(TARGETS["u2"], flow, K=3).double()
    _randomize(model, seed=2)
    with torch.no_grad():
        s = model.sample(32)
    calls = []
    inverse = type(model.flow).inverse

    def counted(self, z, context=None):
        calls.append(z.shape)
        return inverse(self, z, context)

    def no_forward(self, z, context=None):
        raise AssertionError("log_prob ran the flow forward")

    monkeypatch.setattr(type(model.flow), "inverse", counted)
    monkeypatch.setattr(type(model.flow), "forward", no_forward)
    with torch.no_grad():
        logq = model.log_prob(s.z_K)
    assert calls == [s.z_K.shape]
    torch.testing.assert_close(logq, s.log_q, atol=1e-8, rtol=1e-8)


def test_base_is_a_diagonal_gaussian():
    model = EnergyModel(TARGETS["u1"], "planar", K=0).double()
    with torch.no_grad():
        model.mean.copy_(torch.tensor([0.5, -1.0]))
        model.log_std.copy_(torch.tensor([0.3, -0.2]))
    z = torch.tensor([[0.1, 0.2], [2.0, -3.0]], dtype=torch.float64)
    dist = torch.distributions.Normal(model.mean, model.log_std.exp())
    torch.testing.assert_close(model.base_log_prob(z), dist.log_prob(z).sum(-1))
    # K = 0 is invertible: the exact density equals the base density
    assert model.has_inverse
    torch.testing.assert_close(model.log_prob(z), model.base_log_prob(z))


def test_loss_is_the_annealed_free_energy_and_trains_every_parameter():
    torch.manual_seed(0)
    model = EnergyModel(TARGETS["u2"], "planar", K=2)
    torch.manual_seed(1)
    out = model.loss(512, beta=0.25)
    torch.manual_seed(1)
    s = model.sample(512)
    u = TARGETS["u2"](s.z_K)
    torch.testing.assert_close(out.loss, (s.log_q + 0.25 * u).mean())
    torch.testing.assert_close(out.free_energy, (s.log_q + u).mean())
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_dtype_follows_the_model():
    model = EnergyModel(TARGETS["u3"], "radial", K=2).double()
    s = model.sample(8)
    assert s.z_K.dtype == torch.float64 and s.log_q.dtype == torch.float64
    assert model.loss(8).loss.dtype == torch.float64


@pytest.mark.parametrize("flow", sorted(f for f, cls in FLOWS.items() if not cls.has_inverse))
def test_no_inverse_raises(flow):
    model = EnergyModel(TARGETS["u1"], flow, K=2)
    assert not model.has_inverse
    with pytest.raises(InverseNotAvailable, match="no inverse"):
        model.log_prob(torch.zeros(3, 2))
