"""Planar specifics: the invertibility constraint, and its centered variant (m(0) = 0)."""

from __future__ import annotations

import math

import pytest
import torch

from nfvi.flows import make_flow
from nfvi.flows.planar import Planar
from tests.flows.test_flows import jacobian_logdet


@pytest.mark.parametrize("centered", [False, True])
def test_constraint_holds_and_logdet_matches_autograd(centered):
    torch.manual_seed(0)
    layer = Planar(5, centered=centered).double()
    u, w = torch.randn(64, 5, dtype=torch.float64) * 3, torch.randn(64, 5, dtype=torch.float64)
    wu_hat = (w * layer.constrained_u(u, w)).sum(-1)
    assert (wu_hat > -1).all()
    flow = make_flow("planar", 5, 3, centered=centered).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, 2.0)
    z = torch.randn(6, 5, dtype=torch.float64)
    _, ld = flow(z)
    torch.testing.assert_close(ld, jacobian_logdet(flow, z, None), rtol=1e-9, atol=1e-9)


def test_centered_zero_parameters_are_the_identity():
    layer = Planar(4, centered=True).double()
    z = torch.randn(3, 4, dtype=torch.float64)
    zeros = {n: torch.zeros(1, d, dtype=torch.float64) for n, d in (("u", 4), ("w", 4), ("b", 1))}
    out, ld = layer(z, zeros)
    assert torch.equal(out, z) and torch.equal(ld, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("scale", [1e-2, 1e-3, 1e-6])
def test_the_correction_stays_bounded_as_w_vanishes_only_when_centered(scale):
    u = torch.tensor([[0.3, -0.2, 0.1, 0.0]], dtype=torch.float64)
    w = torch.tensor([[1.0, 2.0, -1.0, 0.5]], dtype=torch.float64) * scale
    paper = float(Planar(4).constrained_u(u, w).norm())
    centered = float(Planar(4, centered=True).constrained_u(u, w).norm())
    assert centered < 2 * float(u.norm())  # bounded: about |u - (w_hat.u) w_hat / e|
    # the paper's m(0) = -0.31: a correction of norm 0.31 / ||w|| that grows without bound
    assert paper == pytest.approx((1 - math.log(2)) / float(w.norm()), rel=0.05)


def test_det_floor_keeps_every_determinant_above_it():
    torch.manual_seed(0)
    layer = Planar(3, det_floor=0.2).double()
    u, w = torch.randn(500, 3, dtype=torch.float64) * 5, torch.randn(500, 3, dtype=torch.float64)
    assert ((w * layer.constrained_u(u, w)).sum(-1) > -0.8).all()
    with pytest.raises(ValueError, match="det_floor"):
        Planar(3, det_floor=1.0)


def test_context_norm_makes_the_parameters_independent_of_the_context_scale():
    torch.manual_seed(0)
    flow = make_flow("planar", 4, 2, amortized=True, context_dim=6, context_norm=True).double()
    h = torch.randn(5, 6, dtype=torch.float64)
    a = flow.layer_params(5, h)
    b = flow.layer_params(5, 1000.0 * h)
    for pa, pb in zip(a, b, strict=True):
        for name in pa:
            torch.testing.assert_close(pa[name], pb[name], rtol=1e-4, atol=1e-6)  # LN eps
    plain = make_flow("planar", 4, 2, amortized=True, context_dim=6).double()
    assert not torch.allclose(plain.layer_params(5, h)[0]["u"],
                              plain.layer_params(5, 1000.0 * h)[0]["u"])


def test_the_shipped_amortized_planar_is_exact_and_every_parameter_learns():
    """flow=planar's defaults: centered m, unit-scale w, a head of gain 1/sqrt(C)."""
    torch.manual_seed(0)
    flow = make_flow("planar", 4, 3, amortized=True, context_dim=9, head_gain=None,
                     centered=True).double()
    assert flow.source.gain == pytest.approx(1 / 3)
    h = torch.randn(5, 9, dtype=torch.float64)
    z = torch.randn(5, 4, dtype=torch.float64)
    zk, ld = flow(z, h)
    torch.testing.assert_close(ld, jacobian_logdet(flow, z, h), rtol=1e-9, atol=1e-9)
    ((zk * torch.randn_like(zk)).sum() + ld.sum()).backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_head_gain_leaves_the_initial_parameters_alike_and_scales_the_head():
    h = torch.randn(7, 10)
    out = {}
    for gain in (1.0, 0.1):
        torch.manual_seed(3)
        flow = make_flow("planar", 4, 2, amortized=True, context_dim=10, head_gain=gain)
        out[gain] = flow.layer_params(7, h)[0]["u"]
        assert flow.source.head.weight.std().item() == pytest.approx(0.01 / gain, rel=0.2)
    torch.testing.assert_close(out[1.0], out[0.1], rtol=1e-5, atol=1e-6)


def test_the_shipped_planar_head_reads_its_own_hidden_layer():
    """flow=planar (the default) ships a head with a 400-wide hidden layer (issue 10: the
    linear head's share of the amortization gap); null gives the paper's linear head."""
    from nfvi.vae.model import FlowVAE
    from tests.flows.composed import composed_config

    cfg = composed_config("K=3")
    assert cfg.flow.name == "planar" and cfg.flow.context_hidden == 400
    model = FlowVAE.from_config(cfg, 784, (1, 28, 28))
    body = model.flow.source.body
    assert body[0].in_features == 400 and body[0].out_features == 400
    assert model.flow.source.head.in_features == 400
    linear = FlowVAE.from_config(composed_config("K=3", "flow.context_hidden=null"), 784,
                                 (1, 28, 28))
    assert linear.flow.source.body is None
