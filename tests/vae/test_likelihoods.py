"""Decoder likelihoods against torch.distributions and the bits/dim conversion."""

from __future__ import annotations

import math

import torch

from nfvi.vae.likelihoods import bits_per_dim, make_likelihood
from nfvi.vae.model import FlowVAE


def test_bernoulli_matches_torch():
    out, x = torch.randn(4, 7), torch.bernoulli(torch.full((4, 7), 0.5))
    ref = torch.distributions.Bernoulli(logits=out).log_prob(x).sum(-1)
    torch.testing.assert_close(make_likelihood("bernoulli").log_prob(out, x), ref)


def test_categorical_matches_torch_on_8bit_levels():
    lik = make_likelihood("categorical")
    levels = torch.randint(0, 256, (3, 5))
    out = torch.randn(3, 5 * 256)
    ref = torch.distributions.Categorical(logits=out.view(3, 5, 256)).log_prob(levels).sum(-1)
    torch.testing.assert_close(lik.log_prob(out, levels.float() / 255), ref)
    # uniform logits: exactly 8 bits per pixel
    flat = lik.log_prob(torch.zeros(2, 5 * 256), torch.rand(2, 5))
    torch.testing.assert_close(flat, torch.full((2,), -5 * math.log(256.0)))
    mean = lik.mean(torch.zeros(1, 5 * 256))
    torch.testing.assert_close(mean, torch.full((1, 5), 0.5))


def test_logit_normal_matches_the_transformed_normal():
    lik = make_likelihood("logit_normal")
    x = torch.rand(4, 6).clamp(1e-4, 1 - 1e-4).double()
    out = torch.randn(4, 12, dtype=torch.float64)
    m, log_s = out.view(4, 6, 2).unbind(-1)
    base = torch.distributions.Normal(m, log_s.exp())
    dist = torch.distributions.TransformedDistribution(
        base, [torch.distributions.transforms.SigmoidTransform()])
    torch.testing.assert_close(lik.log_prob(out, x), dist.log_prob(x).sum(-1))


def test_bits_per_dim_is_nats_over_d_ln2():
    assert bits_per_dim(560 * math.log(2.0) * 4.5, 560) == 4.5


def test_categorical_vae_trains_every_parameter_and_bounds_its_nll():
    torch.manual_seed(0)
    model = FlowVAE(20, 3, [16], "tanh", 1, "planar", 2, True, likelihood="categorical")
    assert model.decoder_out.out_features == 20 * 256
    x = torch.randint(0, 256, (8, 20)).float() / 255
    model.elbo(x, beta=0.5).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with torch.no_grad():
        neg_elbo = model.elbo(x.repeat(200, 1)).neg_elbo.view(200, 8).mean(0)
        nll = model.iw_nll(x, samples=500).nll
    assert (nll <= neg_elbo + 0.5).all()  # the IS estimate is the tighter bound
