"""Coupling flows (NICE, RealNVP, rational-quadratic spline): inverses, masks, the spline itself.

The log-determinant, gradient and dtype checks common to every flow are in ``test_flows.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from nfvi.flows import FLOWS, AmortizedParams, FlowStack, GlobalParams, make_flow
from nfvi.flows.coupling import CouplingLayer
from nfvi.flows.nice import NICE
from nfvi.flows.realnvp import RealNVP
from nfvi.flows.spline import RQSpline, rq_spline
from tests.flows.composed import flow_config

COUPLING = ["nice", "realnvp", "spline"]
CONTEXT, BATCH = 6, 7
F64 = torch.float64


def randomized(name: str, dim: int, K: int, amortized: bool, scale: float, seed: int = 0,
               **hparams) -> FlowStack:
    torch.manual_seed(seed)
    flow = make_flow(name, dim, K, amortized=amortized, context_dim=CONTEXT, **hparams).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, scale)
    return flow


def global_params(layer: CouplingLayer, scale: float, seed: int = 2) -> dict[str, torch.Tensor]:
    """The layer's raw parameters as a global source gives them, redrawn from N(0, scale^2)."""
    source = GlobalParams([layer]).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in source.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64) * scale)
    return source(1, None)[0]


def inputs(dim: int, amortized: bool, seed: int = 1, spread: float = 2.0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(BATCH, dim, generator=gen, dtype=F64) * spread
    ctx = torch.randn(BATCH, CONTEXT, generator=gen, dtype=F64) if amortized else None
    return z, ctx


# -- registry, configs ---------------------------------------------------------------------------


def test_coupling_flows_are_registered_with_an_inverse():
    for name in COUPLING:
        assert name in FLOWS
        assert issubclass(FLOWS[name], CouplingLayer)
        assert FLOWS[name].has_inverse
        assert make_flow(name, 4, 2).has_inverse


@pytest.mark.parametrize("name", COUPLING)
@pytest.mark.parametrize("amortized", [False, True])
def test_config_hyperparameters_build_the_flow(name, amortized):
    cfg = flow_config(name)
    assert cfg.name == name and cfg.amortized is True
    hparams = dict(cfg.hparams)  # as the VAE and the energy task pass them (lists stay ListConfig)
    flow = make_flow(name, 5, 3, amortized=amortized, context_dim=CONTEXT, **hparams)
    z = torch.randn(BATCH, 5)
    ctx = torch.randn(BATCH, CONTEXT) if amortized else None
    z_k, ld = flow(z, ctx)
    assert z_k.shape == (BATCH, 5) and ld.shape == (BATCH,)
    # the conditioners' first-layer bias is the one outside parameter, from the stack's source
    assert isinstance(flow.source, AmortizedParams if amortized else GlobalParams)
    for layer in flow.layers:
        assert layer.param_shapes() == {"bias": (int(cfg.hparams.hidden[0]),)}
        assert layer.conditioner.first.bias is None


@pytest.mark.parametrize("name", COUPLING)
@pytest.mark.parametrize("amortized", [False, True])
def test_a_fresh_stack_is_the_identity(name, amortized):
    flow = make_flow(name, 5, 3, amortized=amortized, context_dim=CONTEXT)
    z = torch.randn(BATCH, 5) * 3
    ctx = torch.randn(BATCH, CONTEXT) if amortized else None
    z_k, ld = flow(z, ctx)
    if name == "nice":  # the fixed orthogonal mixing is applied between layers
        z = z @ flow.layers[1].mixing_matrix(z).T @ flow.layers[2].mixing_matrix(z).T
    torch.testing.assert_close(z_k, z)
    torch.testing.assert_close(ld, torch.zeros(BATCH))  # exactly 0 up to float32 rounding


def test_bad_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match="dim >= 2"):
        make_flow("realnvp", 1, 2)
    with pytest.raises(ValueError, match="mixing"):
        make_flow("nice", 4, 2, mixing="rotation")
    with pytest.raises(ValueError, match="activation"):
        make_flow("spline", 4, 2, activation="sine")
    with pytest.raises(ValueError, match="scale_bound"):
        make_flow("realnvp", 4, 2, scale_bound=0.0)
    with pytest.raises(ValueError, match="bins"):
        make_flow("spline", 4, 2, bins=0)
    with pytest.raises(ValueError, match="bound"):
        make_flow("spline", 4, 2, bound=-1.0)


# -- inverses ------------------------------------------------------------------------------------

CASES = [
    ("nice", {"mixing": "orthogonal"}),
    ("nice", {"mixing": "permutation"}),
    ("nice", {"mixing": "none"}),
    ("realnvp", {}),
    ("spline", {}),
    ("spline", {"raw_bound": None, "bins": 5, "bound": 2.0}),
]


@pytest.mark.parametrize(("name", "hparams"), CASES)
@pytest.mark.parametrize("amortized", [False, True])
@pytest.mark.parametrize("dim", [2, 5, 40])
def test_forward_then_inverse_is_the_identity(name, hparams, amortized, dim):
    flow = randomized(name, dim, 4, amortized, 0.5, hidden=[16, 16], **hparams)
    z, ctx = inputs(dim, amortized)
    z_k, ld = flow(z, ctx)
    assert (z_k - z).abs().max() > 1e-3  # a non-trivial map
    z_back, ld_inv = flow.inverse(z_k, ctx)
    torch.testing.assert_close(z_back, z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld_inv, -ld, rtol=1e-10, atol=1e-10)
    # and the other way round
    y = torch.randn(BATCH, dim, dtype=F64) * 2
    y_prev, ld_inv = flow.inverse(y, ctx)
    y_again, ld = flow(y_prev, ctx)
    torch.testing.assert_close(y_again, y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld_inv, -ld, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("name", "hparams"), CASES)
@pytest.mark.parametrize("amortized", [False, True])
@pytest.mark.parametrize("dim", [2, 5])
def test_log_abs_det_matches_autograd_for_every_variant(name, hparams, amortized, dim):
    flow = randomized(name, dim, 4, amortized, 0.5, hidden=[16, 16], **hparams)
    z, ctx = inputs(dim, amortized)
    _, ld = flow(z, ctx)
    for b in range(BATCH):
        c = None if ctx is None else ctx[b : b + 1]
        jac = torch.autograd.functional.jacobian(lambda v, c=c: flow(v[None], c)[0][0], z[b])
        expected = torch.linalg.slogdet(jac).logabsdet
        torch.testing.assert_close(ld[b], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", COUPLING)
def test_inverse_holds_for_large_raw_parameters(name):
    flow = randomized(name, 4, 3, True, 3.0)
    z, ctx = inputs(4, True)
    z_k, ld = flow(z, ctx)
    assert torch.isfinite(z_k).all() and torch.isfinite(ld).all()
    z_back, ld_inv = flow.inverse(z_k, ctx)
    torch.testing.assert_close(z_back, z, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(ld_inv, -ld, rtol=1e-7, atol=1e-7)


def test_inverse_in_float32():
    for name in COUPLING:
        torch.manual_seed(0)
        flow = make_flow(name, 6, 4, amortized=True, context_dim=CONTEXT)
        with torch.no_grad():
            for p in flow.parameters():
                p.normal_(0.0, 0.3)
        z, ctx = torch.randn(BATCH, 6), torch.randn(BATCH, CONTEXT)
        z_k, ld = flow(z, ctx)
        z_back, ld_inv = flow.inverse(z_k, ctx)
        assert z_back.dtype == ld_inv.dtype == torch.float32
        torch.testing.assert_close(z_back, z, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ld_inv, -ld, rtol=1e-4, atol=1e-4)


# -- masks and context ---------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 5, 6])
def test_halves_alternate_with_the_layer_index(dim):
    half = dim // 2
    for name in ("realnvp", "spline"):
        for index in (0, 1, 2, 3):
            layer = FLOWS[name](dim, index=index).double()
            with torch.no_grad():
                for p in layer.parameters():
                    p.normal_(0.0, 0.5)
            z = torch.randn(BATCH, dim, dtype=F64)
            y, _ = layer(z, global_params(layer, 0.5))
            kept, moved = (slice(0, half), slice(half, dim))
            if index % 2:
                kept, moved = moved, kept
            assert torch.equal(y[:, kept], z[:, kept]), (name, index)
            assert not torch.allclose(y[:, moved], z[:, moved]), (name, index)


@pytest.mark.parametrize("name", COUPLING)
def test_the_amortized_conditioner_uses_the_context(name):
    flow = randomized(name, 4, 2, True, 1.0)
    z = torch.zeros(2, 4, dtype=F64)
    ctx = torch.randn(2, CONTEXT, dtype=F64)
    z_k, _ = flow(z, ctx)
    assert not torch.allclose(z_k[0], z_k[1])
    with pytest.raises(ValueError, match="raw parameters"):
        flow.layers[0](z, None)
    # the context reaches the conditioner as its first hidden layer's bias, per example
    bias = flow.layer_params(2, ctx)[0]["bias"]
    assert bias.shape == (2, 256) and not torch.allclose(bias[0], bias[1])


@pytest.mark.parametrize("name", COUPLING)
@pytest.mark.parametrize("amortized", [False, True])
def test_a_conditioner_without_hidden_layers_takes_the_bias_at_its_output(name, amortized):
    fresh = make_flow(name, 5, 2, amortized=amortized, context_dim=CONTEXT, hidden=[]).double()
    layer = fresh.layers[0]
    assert layer.param_shapes() == {"bias": (layer.n_upd * layer.params_per_dim,)}
    z, ctx = inputs(5, amortized)
    if not amortized:  # a zero output bias: the identity at start
        z_k, ld = fresh(z)
        mixed = z @ fresh.layers[1].mixing_matrix(z).T if name == "nice" else z
        torch.testing.assert_close(z_k, mixed)
        torch.testing.assert_close(ld, torch.zeros(BATCH, dtype=F64))
    flow = randomized(name, 5, 3, amortized, 0.5, hidden=[])
    z_k, ld = flow(z, ctx)
    z_back, ld_inv = flow.inverse(z_k, ctx)
    torch.testing.assert_close(z_back, z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld_inv, -ld, rtol=1e-10, atol=1e-10)
    c = None if ctx is None else ctx[:1]
    jac = torch.autograd.functional.jacobian(lambda v: flow(v[None], c)[0][0], z[0])
    torch.testing.assert_close(ld[0], torch.linalg.slogdet(jac).logabsdet, rtol=1e-9, atol=1e-9)


# -- NICE ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_nice_orthogonal_mixing_is_orthogonal_and_fixed(dtype):
    a = NICE(7, index=3).to(dtype)
    b = NICE(7, index=3).to(dtype)
    c = NICE(7, index=4).to(dtype)
    z = torch.zeros(1, 7, dtype=dtype)
    q = a.mixing_matrix(z)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(q.T @ q, torch.eye(7, dtype=dtype), rtol=0, atol=50 * eps)
    assert abs(abs(torch.linalg.det(q).item()) - 1) < 50 * eps
    assert torch.equal(q, b.mixing_matrix(z))  # seeded per layer index
    assert not torch.allclose(q, c.mixing_matrix(z))
    assert "reflectors" in dict(a.named_buffers())  # saved with checkpoints
    assert NICE(7, index=0).mixing == "none"  # mixing happens between layers


def test_nice_permutation_mixing():
    for dim in (2, 3, 40):
        layer = NICE(dim, index=1, mixing="permutation")
        perm = layer.perm
        assert sorted(perm.tolist()) == list(range(dim))
        split = dim // 2
        assert int((perm[split:] < split).sum()) >= math.ceil(split / 2)
        assert torch.equal(perm[layer.inv_perm], torch.arange(dim))
    assert NICE(2, index=1, mixing="permutation").perm.tolist() == [1, 0]


@pytest.mark.parametrize("mixing", ["orthogonal", "permutation", "none"])
def test_nice_is_volume_preserving(mixing):
    flow = randomized("nice", 5, 3, True, 0.5, mixing=mixing)
    z, ctx = inputs(5, True)
    _, ld = flow(z, ctx)
    assert torch.equal(ld, torch.zeros(BATCH, dtype=F64))
    jac = torch.autograd.functional.jacobian(lambda v: flow(v[None], ctx[:1])[0][0], z[0])
    assert abs(torch.linalg.slogdet(jac).logabsdet.item()) < 1e-10


# -- RealNVP -------------------------------------------------------------------------------------


def test_realnvp_hand_computed_layer():
    layer = RealNVP(3, index=0, hidden=[4]).double()
    out = layer.conditioner.out
    with torch.no_grad():  # theta = bias / sqrt(4): r = (0.4, -0.6), t = (1, -2)
        out.bias.copy_(torch.tensor([0.4, 1.0, -0.6, -2.0], dtype=F64) * 2.0)
    z = torch.tensor([[0.3, 1.5, -2.0]], dtype=F64)
    assert layer.param_shapes() == {"bias": (4,)}
    y, ld = layer(z, {"bias": torch.randn(1, 4, dtype=F64)})  # any bias: W_out = 0
    s = 2.0 * torch.tanh(torch.tensor([0.4, -0.6], dtype=F64) / 2.0)
    expected = torch.tensor([1.5, -2.0], dtype=F64) * torch.exp(s) + torch.tensor([1.0, -2.0])
    torch.testing.assert_close(y, torch.cat([z[:, :1], expected[None]], dim=1))
    torch.testing.assert_close(ld, s.sum().reshape(1))


def test_realnvp_scale_is_bounded():
    flow = randomized("realnvp", 4, 1, False, 50.0, scale_bound=1.5)
    z, _ = inputs(4, False, spread=10.0)
    _, ld = flow(z)
    assert torch.isfinite(ld).all()
    assert (ld.abs() <= 2 * 1.5 + 1e-12).all()  # two updated coordinates, |s| <= a each


# -- the rational-quadratic spline ---------------------------------------------------------------

KB, B = 6, 2.5


def spline_params(n: int, scale: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3 * KB - 1, generator=gen, dtype=F64) * scale


def knots_of(theta: torch.Tensor) -> torch.Tensor:
    """Interior knot positions x^1..x^{K-1} (as the spline computes them)."""
    frac = 1e-3 + (1 - 1e-3 * KB) * torch.softmax(theta[..., :KB], -1)
    return 2 * B * torch.cumsum(frac[..., :-1], -1) - B


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_spline_is_monotone_and_maps_the_interval_onto_itself(scale):
    theta = spline_params(1, scale).expand(4001, -1)
    x = torch.linspace(-B - 1, B + 1, 4001, dtype=F64)
    y, ld = rq_spline(x, theta, B)
    assert (y[1:] > y[:-1]).all()
    assert torch.isfinite(ld).all()
    ends = torch.tensor([-B, B], dtype=F64)
    torch.testing.assert_close(rq_spline(ends, theta[:2], B)[0], ends)


def test_spline_tails_are_the_identity():
    theta = spline_params(6, 2.0)
    x = torch.tensor([-B - 3.0, -B - 1e-9, -50.0, B + 1e-9, B + 0.5, 1e3], dtype=F64)
    y, ld = rq_spline(x, theta, B)
    assert torch.equal(y, x) and torch.equal(ld, torch.zeros(6, dtype=F64))
    x_req = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(rq_spline(x_req, theta, B)[0].sum(), x_req)
    assert torch.equal(grad, torch.ones(6, dtype=F64))  # slope 1 outside


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_spline_is_continuous_with_a_continuous_derivative(scale):
    theta = spline_params(1, scale, seed=3)
    points = torch.cat([knots_of(theta)[0], torch.tensor([-B, B], dtype=F64)])
    h = 1e-13  # tiny: in narrow bins log g' moves by up to ~1e7 per unit of x
    for p in points:
        xs = torch.stack([p - h, p, p + h])
        y, ld = rq_spline(xs, theta.expand(3, -1), B)
        assert (y[2] - y[0]).abs() <= 4 * h * ld.exp().max(), p  # no jump at the knot
        torch.testing.assert_close(ld[0], ld[2], rtol=0, atol=1e-5)  # derivative matches too
    # at +-B the derivative is 1: the spline joins its identity tails smoothly
    ends = torch.tensor([-B, B], dtype=F64)
    _, ld_ends = rq_spline(ends, theta.expand(2, -1), B)
    torch.testing.assert_close(ld_ends, torch.zeros(2, dtype=F64))


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_spline_derivative_matches_finite_differences(scale):
    theta = spline_params(500, scale, seed=5)
    gen = torch.Generator().manual_seed(6)
    x = (torch.rand(500, generator=gen, dtype=F64) * 2 - 1) * (B + 0.5)
    # stay away from the knots, where a central difference straddles two pieces
    h = 1e-6
    near = (knots_of(theta) - x[:, None]).abs().min(-1).values < 10 * h
    x, theta = x[~near], theta[~near]
    _, ld = rq_spline(x, theta, B)
    fd = (rq_spline(x + h, theta, B)[0] - rq_spline(x - h, theta, B)[0]) / (2 * h)
    torch.testing.assert_close(torch.exp(ld), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_spline_inverse(scale):
    theta = spline_params(3000, scale, seed=7)
    x = torch.linspace(-B - 1, B + 1, 3000, dtype=F64)
    y, ld = rq_spline(x, theta, B)
    x_back, ld_inv = rq_spline(y, theta, B, inverse=True)
    tol = 1e-10 if scale < 1 else 1e-7
    torch.testing.assert_close(x_back, x, rtol=tol, atol=tol)
    torch.testing.assert_close(ld_inv, -ld, rtol=tol, atol=tol)


def test_spline_hand_computed_single_bin():
    # K = 1 bin on [-1, 1]: slope s = 1, end derivatives 1 -> the identity, whatever theta_w/h
    theta = torch.tensor([[0.7, -0.3]], dtype=F64)  # 3K - 1 = 2: one width, one height logit
    x = torch.tensor([-0.4, 0.25], dtype=F64)
    y, ld = rq_spline(x, theta.expand(2, -1), 1.0, min_bin_width=0.0, min_bin_height=0.0)
    torch.testing.assert_close(y, x)
    torch.testing.assert_close(ld, torch.zeros(2, dtype=F64))


def test_spline_zero_parameters_give_the_identity():
    theta = torch.zeros(9, 3 * KB - 1, dtype=F64)
    x = torch.linspace(-4, 4, 9, dtype=F64)
    y, ld = rq_spline(x, theta, B)
    torch.testing.assert_close(y, x)
    torch.testing.assert_close(ld, torch.zeros(9, dtype=F64))


def test_spline_raw_bound_limits_the_slopes():
    layer = RQSpline(2, hidden=[8], raw_bound=1.0).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 100.0)  # saturates every raw parameter at +-1
    z = torch.stack([torch.zeros(2001, dtype=F64), torch.linspace(-3, 3, 2001, dtype=F64)], 1)
    _, ld = layer(z, global_params(layer, 100.0))
    assert torch.isfinite(ld).all()
    assert ld.min() > -7.5 and ld.max() < 4.5  # the documented range of log-slopes
