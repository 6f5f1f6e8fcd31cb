"""The evaluation of a trained VAE: chunk sizes from a memory budget, peak memory, the result."""

from __future__ import annotations

import math

import torch

from nfvi.vae.evaluate import activation_bytes, choose_chunk, evaluate
from tests.vae.test_model import small_model


def data(n: int = 8) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 6), 0.4, dtype=torch.float64),
                           generator=torch.Generator().manual_seed(0))


def test_activation_bytes_grow_with_the_flow_and_count_the_dtype():
    x = data(1)
    k2, k8 = activation_bytes(small_model(K=2), x), activation_bytes(small_model(K=8), x)
    assert k8 > k2 > 0
    # each extra planar layer outputs at least z [1, 2] and log|det| [1] in float64
    assert k8 - k2 >= 6 * 3 * 8
    assert activation_bytes(small_model(K=2).float(), x.float()) * 2 == k2


def test_chunk_follows_the_budget_within_one_and_the_sample_count():
    model, x = small_model(K=4), data()
    per = activation_bytes(model, x[:1])
    budget_gb = 37 * 5 * per / 2**30  # room for exactly 37 samples of 5 examples
    assert choose_chunk(model, x, 5, 1000, budget_gb) == 37
    assert choose_chunk(model, x, 5, 1000, 1e-12) == 1
    assert choose_chunk(model, x, 5, 20, 100.0) == 20


def test_a_budget_that_fits_every_sample_gives_the_one_pass_estimate():
    model, x = small_model(K=3), data()
    one_pass = evaluate(model, x, iw_samples=64, chunk=64, batch_size=4, seed=3)
    budget = evaluate(model, x, iw_samples=64, chunk=1, batch_size=4, seed=3, memory_gb=8.0)
    assert budget.chunk == 64 and one_pass.chunk == 64
    assert budget.nll == one_pass.nll and budget.neg_elbo == one_pass.neg_elbo
    small = evaluate(model, x, iw_samples=64, chunk=64, batch_size=4, seed=3,
                     memory_gb=16 * 4 * activation_bytes(model, x[:1]) / 2**30)
    assert small.chunk == 16 and math.isfinite(small.nll)
    assert abs(small.nll - one_pass.nll) < 0.5  # another draw of the same estimator


def test_peak_memory_is_reported():
    res = evaluate(small_model(), data(), iw_samples=8, chunk=8, batch_size=4, seed=0)
    assert res.memory_kind == "process_peak_rss" and res.peak_memory_mb > 1.0


def test_elbo_comes_from_the_importance_samples():
    """The evaluation's -ELBO, recon and KL are the S-sample estimates of the IS pass: every
    point's gap -ELBO - NLL is >= 0, recon + KL = -ELBO, and elbo_samples records S."""
    res = evaluate(small_model(K=2), data(), iw_samples=40, chunk=16, batch_size=4, seed=1)
    assert res.elbo_samples == 40
    gaps = torch.tensor(res.per_example["neg_elbo"]) - torch.tensor(res.per_example["nll"])
    assert (gaps >= 0).all() and gaps.max() > 0
    assert math.isclose(res.recon + res.kl, res.neg_elbo, rel_tol=0, abs_tol=1e-9)
