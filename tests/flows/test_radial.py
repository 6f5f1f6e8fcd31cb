"""Radial specifics: the shipped amortized head (its own hidden layer), exact and trainable."""

from __future__ import annotations

import torch

from nfvi.flows import make_flow
from tests.flows.composed import composed_config
from tests.flows.test_flows import jacobian_logdet


def test_the_shipped_radial_head_reads_its_own_hidden_layer():
    """flow=radial ships planar's 400-wide head (docs/flow_length.md); null is the linear head."""
    from nfvi.vae.model import FlowVAE

    cfg = composed_config("flow=radial", "K=3")
    assert cfg.flow.context_hidden == 400
    model = FlowVAE.from_config(cfg, 784, (1, 28, 28))
    body = model.flow.source.body
    assert body[0].in_features == 400 and body[0].out_features == 400
    linear = FlowVAE.from_config(
        composed_config("flow=radial", "K=3", "flow.context_hidden=null"), 784, (1, 28, 28)
    )
    assert linear.flow.source.body is None


def test_radial_with_a_hidden_layer_head_is_exact_and_every_parameter_learns():
    torch.manual_seed(0)
    for fused in (True, False):
        flow = make_flow("radial", 4, 3, amortized=True, context_dim=9, context_hidden=6,
                         fused=fused).double()
        h = torch.randn(5, 9, dtype=torch.float64)
        z = torch.randn(5, 4, dtype=torch.float64)
        zk, ld = flow(z, h)
        torch.testing.assert_close(ld, jacobian_logdet(flow, z, h), rtol=1e-9, atol=1e-9)
        ((zk * torch.randn_like(zk)).sum() + ld.sum()).backward()
        for name, p in flow.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (fused, name)
