"""Radial specifics: the shipped amortized head has its own hidden layer (the head's
exactness and gradients, for every flow, are in test_contract.py)."""

from __future__ import annotations

from tests.flows.composed import composed_config


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

