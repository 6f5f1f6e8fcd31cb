"""Decoder likelihoods against torch.distributions and the bits/dim conversion."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nfvi.vae.likelihoods import bits_per_dim, make_likelihood
from nfvi.vae.model import FlowVAE


def test_bernoulli_matches_torch():
    out, x = torch.randn(4, 7), torch.bernoulli(torch.full((4, 7), 0.5))
    ref = torch.distributions.Bernoulli(logits=out).log_prob(x).sum(-1)
    torch.testing.assert_close(make_likelihood("bernoulli").log_prob(out, x), ref)


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no-grad"])
def test_bernoulli_equals_torch_bce_in_float64_at_extreme_logits_with_its_gradients(grad):
    """The CPU path's softplus by ``log(1 + exp(-|l|))`` (nfvi.vae.likelihoods) against
    torch's ``binary_cross_entropy_with_logits``: values to 1e-12 relative, out to |l| = 1e4,
    for binary and fractional x; gradients in both arguments; gradcheck."""
    gen = torch.Generator().manual_seed(0)
    out = torch.cat([torch.randn(6, 50, generator=gen, dtype=torch.float64) * 30,
                     torch.tensor([[1e4, -1e4, 80.0, -80.0, 0.0] * 10], dtype=torch.float64)])
    x = torch.cat([torch.bernoulli(torch.full((4, 50), 0.3, dtype=torch.float64)),
                   torch.rand(3, 50, generator=gen, dtype=torch.float64)])
    out.requires_grad_(grad)
    x.requires_grad_(grad)
    lik = make_likelihood("bernoulli")
    got = lik.log_prob(out, x)
    want = -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if grad:
        w = torch.randn(7, generator=gen, dtype=torch.float64)
        for a, b in zip(torch.autograd.grad((got * w).sum(), (out, x)),
                        torch.autograd.grad((want * w).sum(), (out, x)), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        small = (out[:2, :5].detach().clone().requires_grad_(),
                 x[4:6, :5].detach().clone().requires_grad_())
        assert torch.autograd.gradcheck(lik.log_prob, small)


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
