"""The VAE's objectives against exact values on a model small enough to integrate."""

from __future__ import annotations

import math

import pytest
import torch

from nfvi.vae.model import FlowVAE, log_normal_diag, log_normal_std


def small_model(flow: str = "planar", K: int = 2, amortized: bool = True,
                standardized: bool = False) -> FlowVAE:
    torch.manual_seed(0)
    model = FlowVAE(
        data_dim=6, latent_dim=2, hidden=[16], activation="tanh", maxout_pool=1,
        flow=flow, K=K, amortized=amortized, standardized=standardized,
    ).double()
    with torch.no_grad():
        # a decoder with structure and a flow far from the identity ...
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
        # ... and q0 wider than the prior, so the importance weights stay bounded and the
        # estimator converges at the Monte Carlo rate in a test-sized number of samples
        model.q_mu.weight.mul_(0.1)
        model.q_log_var.weight.mul_(0.1)
        model.q_log_var.bias.fill_(1.5)
    return model


def exact_log_px(model: FlowVAE, x: torch.Tensor, half_width: float = 9.0, n: int = 601):
    """ln p(x) = ln int p(x|z) N(z; 0, I) dz by a Riemann sum on a 2D grid (the latents are 2D)."""
    g = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    zz = torch.cartesian_prod(g, g)  # [n^2, 2]
    log_cell = 2 * math.log(float(g[1] - g[0]))
    out = []
    with torch.no_grad():
        for xi in x:
            log_joint = model.log_likelihood(xi.expand(len(zz), -1), zz) + log_normal_std(zz)
            out.append(torch.logsumexp(log_joint, 0) + log_cell)
    return torch.stack(out)


@pytest.fixture(scope="module")
def setup():
    model = small_model()
    gen = torch.Generator().manual_seed(3)
    x = torch.bernoulli(torch.full((4, 6), 0.4, dtype=torch.float64), generator=gen)
    return model, x, exact_log_px(model, x)


def test_quadrature_is_converged(setup):
    model, x, exact = setup
    coarse = exact_log_px(model, x, n=401)
    torch.testing.assert_close(coarse, exact, atol=1e-6, rtol=0)


def test_importance_weighted_nll_matches_exact_value(setup):
    model, x, exact = setup
    torch.manual_seed(11)
    est = model.iw_nll(x, samples=100_000, chunk=20_000)
    assert est.nll.shape == (4,) and est.samples == 100_000
    # Monte Carlo error here: about 0.015 nats per point (seen over seeds); S = 1: ~5 nats off
    torch.testing.assert_close(est.nll, -exact, atol=0.06, rtol=0)


@pytest.mark.parametrize("flow", ["planar", "radial"])
def test_standardized_flow_density_is_exact(flow):
    """z_K = mu + sigma * f(eps): ln q_K(z_K) is ln q0(z_0) minus the log-determinant of the
    whole map z_0 -> z_K (autograd Jacobian, float64), and the IS estimate under it converges
    to the exact ln p(x)."""
    model = small_model(flow=flow, standardized=True)
    x = torch.bernoulli(torch.full((3, 6), 0.4, dtype=torch.float64),
                        generator=torch.Generator().manual_seed(4))
    post = model.encode(x)
    torch.manual_seed(9)
    s = model.sample_posterior(post)
    sigma = torch.exp(0.5 * post.log_var)
    for i in range(len(x)):
        def z0_to_zk(z0, i=i):
            eps = (z0 - post.mu[i]) / sigma[i]
            p = model.flow.layer_params(1, post.features[i : i + 1])
            e = eps.unsqueeze(0)
            for layer, pk in zip(model.flow.layers, p, strict=True):
                e, _ = layer(e, pk)
            return post.mu[i] + sigma[i] * e.squeeze(0)
        jac = torch.autograd.functional.jacobian(z0_to_zk, s.z0[i].detach())
        torch.testing.assert_close(z0_to_zk(s.z0[i]), s.zk[i])
        torch.testing.assert_close(s.log_det[i], torch.linalg.slogdet(jac).logabsdet)
    assert s.log_det.abs().min() > 1e-3  # the flow is far from the identity here
    torch.manual_seed(10)
    est = model.iw_nll(x, samples=100_000, chunk=20_000)
    torch.testing.assert_close(est.nll, -exact_log_px(model, x), atol=0.06, rtol=0)


def test_standardized_is_not_the_same_map():
    """The option changes what the flow acts on (eps, not z_0) for the same parameters."""
    x = torch.bernoulli(torch.full((3, 6), 0.4, dtype=torch.float64))
    out = []
    for standardized in (False, True):
        model = small_model(standardized=standardized)
        torch.manual_seed(2)
        out.append(model.sample_posterior(model.encode(x)).zk)
    assert not torch.allclose(out[0], out[1])


def test_bound_tightens_as_samples_grow(setup):
    model, x, exact = setup
    torch.manual_seed(12)
    gaps = []
    for samples in (1, 10, 100, 1000):
        runs = torch.stack([model.iw_nll(x, samples, chunk=500).nll for _ in range(40)])
        gaps.append((runs.mean(0) + exact).mean().item())  # E[-ln p_S] - (-ln p) >= 0
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    assert gaps[0] > 0.05 and gaps[-1] > -0.01, gaps


def test_elbo_terms_add_up_and_bound_the_nll(setup):
    model, x, exact = setup
    torch.manual_seed(13)
    reps = 4000
    terms = model.elbo(x.repeat(reps, 1))
    torch.testing.assert_close(terms.neg_elbo, terms.recon + terms.kl)
    neg_elbo = terms.neg_elbo.view(reps, -1).mean(0)
    stderr = terms.neg_elbo.view(reps, -1).std(0) / math.sqrt(reps)
    assert (neg_elbo >= -exact - 3 * stderr).all()


def test_iw_estimate_carries_the_s_sample_elbo_of_the_same_samples(setup):
    """IWEstimate.neg_elbo is the ELBO's S-sample estimate: its mean matches the one-sample
    -ELBO of training averaged over many draws (and so do the recon terms), per point it is
    never below the IS bound of the same samples, and it is S times less noisy."""
    model, x, _ = setup
    torch.manual_seed(14)
    reps = 20000
    one = model.elbo(x.repeat(reps, 1))
    one_elbo = one.neg_elbo.view(reps, -1)
    se = one_elbo.std(0) / math.sqrt(reps)
    torch.manual_seed(15)
    est = model.iw_nll(x, samples=reps, chunk=5000)
    assert est.neg_elbo.shape == est.recon.shape == (4,)
    assert ((est.neg_elbo - one_elbo.mean(0)).abs() < 4 * se * math.sqrt(2)).all()
    recon_se = one.recon.view(reps, -1).std(0) / math.sqrt(reps)
    assert ((est.recon - one.recon.view(reps, -1).mean(0)).abs()
            < 4 * recon_se * math.sqrt(2)).all()
    small = [model.iw_nll(x, samples=50, chunk=20) for _ in range(30)]
    assert all((e.neg_elbo >= e.nll).all() for e in small)
    spread = torch.stack([e.neg_elbo for e in small]).std(0)
    # one-sample spread / sqrt(50), within the noise of a 30-draw std
    ratio = spread / (one_elbo.std(0) / math.sqrt(50))
    assert ((ratio > 0.6) & (ratio < 1.5)).all(), ratio


def test_annealed_loss_is_the_papers_free_energy():
    model = small_model(K=0)
    x = torch.bernoulli(torch.full((8, 6), 0.5, dtype=torch.float64))
    torch.manual_seed(5)
    terms = model.elbo(x, beta=0.3)
    torch.manual_seed(5)
    post = model.encode(x)
    s = model.sample_posterior(post)
    expected = (s.log_q0 - s.log_det - 0.3 * (model.log_likelihood(x, s.zk)
                                               + log_normal_std(s.zk))).mean()
    torch.testing.assert_close(terms.loss, expected)
    torch.testing.assert_close(terms.kl.mean(), (s.log_qk - log_normal_std(s.zk)).mean())


def test_gaussian_kl_estimate_is_unbiased_without_flow():
    model = small_model(K=0)
    x = torch.bernoulli(torch.full((1, 6), 0.5, dtype=torch.float64)).repeat(20000, 1)
    torch.manual_seed(6)
    terms = model.elbo(x)
    post = model.encode(x[:1])
    mu, log_var = post.mu, post.log_var
    analytic = 0.5 * (mu.pow(2) + log_var.exp() - 1 - log_var).sum()
    assert abs(terms.kl.mean().item() - analytic.item()) < 4 * terms.kl.std().item() / math.sqrt(
        20000
    )


def test_log_normal_helpers_match_torch_distributions():
    z = torch.randn(7, 3, dtype=torch.float64)
    mu, log_var = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    ref = torch.distributions.Normal(mu, (0.5 * log_var).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(log_normal_diag(z, mu, log_var), ref)
    std = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(log_normal_std(z), std.double())


@pytest.mark.parametrize("flow", ["planar", "radial"])
@pytest.mark.parametrize("amortized", [True, False])
@pytest.mark.parametrize("standardized", [False, True])
def test_every_model_parameter_gets_a_gradient(flow, amortized, standardized):
    model = FlowVAE(12, 3, [8, 8], "maxout", 2, flow, 2, amortized, standardized=standardized)
    x = torch.bernoulli(torch.full((5, 12), 0.5))
    model.elbo(x, beta=0.5).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_kl_annealing_anneals_only_the_kl_term():
    torch.manual_seed(0)
    model = FlowVAE(20, 3, [8], "tanh", 1, "planar", 2, True)
    x = torch.bernoulli(torch.full((16, 20), 0.4))
    torch.manual_seed(1)
    joint = model.elbo(x, beta=0.3)
    torch.manual_seed(1)
    kl = model.elbo(x, beta=0.3, anneal="kl")
    assert torch.equal(joint.neg_elbo, kl.neg_elbo)  # the same sample, the same bound
    torch.testing.assert_close(kl.loss, (kl.recon + 0.3 * kl.kl).mean())
    assert not torch.equal(joint.loss, kl.loss)  # R&M's eq. 20 tempers ln p(z) as well
    torch.manual_seed(1)
    at_one = model.elbo(x, beta=1.0, anneal="kl")
    torch.testing.assert_close(at_one.loss, at_one.neg_elbo.mean())


@pytest.mark.parametrize("standardized", [False, True])
def test_detached_context_stops_the_heads_gradient_at_the_features(standardized):
    """``detach_context``: the head still learns, the features h(x) get no gradient through
    it (only through q0's mu and log_var), and the sample is the same map."""
    x = torch.bernoulli(torch.full((5, 12), 0.5), generator=torch.Generator().manual_seed(3))
    grads, zk = {}, {}
    for detach in (False, True):
        torch.manual_seed(0)
        model = FlowVAE(12, 3, [8, 8], "maxout", 2, "planar", 2, True,
                        standardized=standardized, detach_context=detach)
        post = model.encode(x)
        h = post.features.detach().requires_grad_(True)  # a leaf: its gradient comes from the flow
        post = type(post)(post.mu, post.log_var, h)
        torch.manual_seed(1)
        s = model.sample_posterior(post)
        (s.log_det.sum() + s.zk.square().sum()).backward()
        head = [p.grad for n, p in model.flow.named_parameters() if p.requires_grad]
        assert head and all(g is not None and g.abs().sum() > 0 for g in head)
        grads[detach], zk[detach] = h.grad, s.zk.detach()
    assert grads[False] is not None and grads[False].abs().sum() > 0
    assert grads[True] is None
    torch.testing.assert_close(zk[False], zk[True], rtol=0, atol=0)
