"""Householder, IAF and Sylvester flows: the properties beyond the generic contract.

(The generic log-det / gradient / dtype tests in ``test_flows.py`` run for these flows too.)
"""

from __future__ import annotations

import math

import pytest
import torch

from nfvi.flows import FLOWS, InverseNotAvailable, make_flow
from nfvi.flows.householder import Householder, reflect
from nfvi.flows.iaf import IAF
from nfvi.flows.sylvester import (
    SylvesterHouseholder,
    SylvesterOrthogonal,
    SylvesterTriangular,
    matvec,
    orthogonalize,
)
from tests.flows.composed import flow_config

DIM, CONTEXT, BATCH, K = 5, 6, 7, 4
MINE = [
    "householder",
    "iaf",
    "sylvester_orthogonal",
    "sylvester_householder",
    "sylvester_triangular",
]
SYLVESTER = ["sylvester_orthogonal", "sylvester_householder", "sylvester_triangular"]


def stack(name, amortized, scale=None, dim=DIM, k=K, seed=0, **hparams):
    """A float64 stack; ``scale``: redraw every parameter from N(0, scale^2)."""
    torch.manual_seed(seed)
    flow = make_flow(name, dim, k, amortized=amortized, context_dim=CONTEXT, **hparams).double()
    if scale is not None:
        with torch.no_grad():
            for p in flow.parameters():
                p.normal_(0.0, scale)
    return flow


def inputs(amortized, dim=DIM, batch=BATCH, seed=1):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, dim, generator=gen, dtype=torch.float64) * 2
    ctx = torch.randn(batch, CONTEXT, generator=gen, dtype=torch.float64) if amortized else None
    return z, ctx


def layer_jacobian(layer, z, params):
    """``d layer(z)/dz`` ``[B, D, D]`` for one layer with fixed per-example raw params."""
    out = []
    for b in range(z.shape[0]):
        p = {n: t[b : b + 1] if t.shape[0] > 1 else t for n, t in params.items()}

        def f(zb, p=p):
            return layer(zb.unsqueeze(0), p)[0].squeeze(0)

        out.append(torch.autograd.functional.jacobian(f, z[b]))
    return torch.stack(out)


def test_registered_with_inverse_flags():
    for name in MINE:
        assert name in FLOWS
    assert FLOWS["householder"].has_inverse and FLOWS["iaf"].has_inverse
    for name in SYLVESTER:
        assert not FLOWS[name].has_inverse


@pytest.mark.parametrize("name", MINE)
def test_configs_build_the_flow_with_their_hparams(name):
    cfg = flow_config(name)
    assert cfg.name == name and cfg.amortized is True
    hparams = dict(cfg.hparams)
    for dim in (2, 4, 40):  # energy task, the CLI tests, the paper's MNIST latent
        flow = make_flow(name, dim, 2, amortized=True, context_dim=CONTEXT, **hparams)
        z_k, ld = flow(torch.randn(3, dim), torch.randn(3, CONTEXT))
        assert z_k.shape == (3, dim) and torch.isfinite(ld).all()


# -- Householder --------------------------------------------------------------------------


@pytest.mark.parametrize("amortized", [False, True])
def test_householder_is_orthogonal_and_volume_preserving(amortized):
    flow = stack("householder", amortized, scale=1.0)
    z, ctx = inputs(amortized)
    z_k, ld = flow(z, ctx)
    torch.testing.assert_close(z_k.norm(dim=-1), z.norm(dim=-1), rtol=1e-13, atol=0)
    assert torch.equal(ld, torch.zeros_like(ld))
    params = flow.layer_params(BATCH, ctx)
    jac = layer_jacobian(flow.layers[0], z, params[0])
    eye = torch.eye(DIM, dtype=torch.float64).expand_as(jac)
    torch.testing.assert_close(jac.transpose(-1, -2) @ jac, eye, rtol=0, atol=1e-13)
    torch.testing.assert_close(jac, jac.transpose(-1, -2), rtol=0, atol=1e-13)  # symmetric
    det = torch.linalg.det(jac)
    torch.testing.assert_close(det, -torch.ones_like(det), rtol=0, atol=1e-12)  # a reflection


def test_householder_reflects_v_and_fixes_its_orthogonal_complement():
    v = torch.tensor([[1.0, 2.0, -2.0]], dtype=torch.float64)
    w = torch.tensor([[2.0, 1.0, 2.0]], dtype=torch.float64)  # w . v = 0
    torch.testing.assert_close(reflect(v, v), -v)
    torch.testing.assert_close(reflect(w, v), w)
    torch.testing.assert_close(reflect(v, 7.0 * v), -v)  # only the direction of v matters


@pytest.mark.parametrize("amortized", [False, True])
def test_householder_parameters_get_real_gradients(amortized):
    # ||z_K||^2 and log|det| = 0 do not depend on v (the map is orthogonal), so the generic
    # gradient test sees only rounding noise here; a loss that is not rotation-invariant does
    flow = stack("householder", amortized, scale=0.5)
    z, ctx = inputs(amortized)
    z_k, _ = flow(z, ctx)
    (z_k * torch.arange(1.0, DIM + 1, dtype=torch.float64)).sum().backward()
    for pname, p in flow.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 1e-3, pname


# -- IAF ----------------------------------------------------------------------------------


@pytest.mark.parametrize("amortized", [False, True])
@pytest.mark.parametrize("index", [0, 1])
def test_iaf_jacobian_is_triangular_in_the_layer_order(amortized, index):
    flow = stack("iaf", amortized, scale=0.5, k=2, hidden=[16, 16])
    layer = flow.layers[index]
    z, ctx = inputs(amortized)
    params = flow.layer_params(BATCH, ctx)[index]
    assert params["bias"].shape == ((BATCH if amortized else 1), 16)
    jac = layer_jacobian(layer, z, params)  # jac[b, i, j] = d z'_i / d z_j
    order = list(range(DIM)) if index % 2 == 0 else list(reversed(range(DIM)))
    assert layer.order == order
    pos = {v: p for p, v in enumerate(order)}
    for i in range(DIM):
        for j in range(DIM):
            if pos[j] > pos[i]:  # z'_i may depend only on z_j before it in the order
                assert (jac[:, i, j] == 0).all(), (i, j)
            elif pos[j] < pos[i]:
                assert (jac[:, i, j] != 0).any(), (i, j)  # and it does
    _, sigma, log_sigma = layer.gate(z, params["bias"])
    torch.testing.assert_close(torch.diagonal(jac, dim1=-2, dim2=-1), sigma)
    _, ld = layer(z, params)
    torch.testing.assert_close(ld, log_sigma.sum(-1))
    torch.testing.assert_close(ld, torch.linalg.slogdet(jac).logabsdet)


def test_iaf_uses_the_context_and_rejects_a_missing_one():
    flow = stack("iaf", True, scale=0.5)
    z = torch.zeros(2, DIM, dtype=torch.float64)
    ctx = torch.randn(2, CONTEXT, dtype=torch.float64)
    z_k, _ = flow(z, ctx)
    assert not torch.allclose(z_k[0], z_k[1])
    layer = flow.layers[0]
    with pytest.raises(ValueError, match="raw parameters"):
        layer(z, None)
    with pytest.raises(ValueError, match="raw parameters"):
        layer.inverse(z, None)
    # the one outside parameter: the MADE's first-layer bias, which has no bias of its own
    assert all(la.param_shapes() == {"bias": (320,)} for la in flow.layers)
    assert layer.made.hidden[0].bias is None
    bias = flow.layer_params(2, ctx)[0]["bias"]
    assert bias.shape == (2, 320) and not torch.allclose(bias[0], bias[1])


def test_iaf_starts_with_the_forget_gate():
    # the MADE's output layer starts at zero: m = s = 0, sigma = sigmoid(forget_bias)
    flow = make_flow("iaf", DIM, 2, amortized=True, context_dim=CONTEXT, forget_bias=2.0)
    z = torch.randn(BATCH, DIM)
    z_k, ld = flow(z, torch.randn(BATCH, CONTEXT))
    s = torch.sigmoid(torch.tensor(2.0))
    torch.testing.assert_close(z_k, s * s * z)
    torch.testing.assert_close(ld, torch.full((BATCH,), 2 * DIM * math.log(s)))


@pytest.mark.parametrize("K", [1, 4, 16])
def test_the_shipped_iaf_stack_starts_as_one_gate_whatever_its_length(K):
    """flow=iaf's forget_bias=null: the K initial gates multiply to sigmoid(2), so a 16-layer
    stack starts at z_K = 0.88 z, not 0.88^16 z (issue 10: it trained far behind K = 4)."""
    from tests.flows.composed import flow_config

    cfg = flow_config("iaf")
    assert cfg.hparams.forget_bias is None
    flow = make_flow("iaf", DIM, K, amortized=True, context_dim=CONTEXT,
                     **{k: v for k, v in cfg.hparams.items()})
    z = torch.randn(BATCH, DIM, dtype=torch.float64)
    z_k, ld = flow.double()(z, torch.randn(BATCH, CONTEXT, dtype=torch.float64))
    gate = torch.sigmoid(torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(z_k, gate * z)
    torch.testing.assert_close(ld, torch.full((BATCH,), DIM * math.log(gate),
                                              dtype=torch.float64))
    # outside a stack, a lone layer takes Kingma et al.'s +2
    assert IAF(DIM).forget_bias == 2.0


def test_iaf_bounds_hold_for_extreme_weights():
    layer = IAF(DIM, hidden=[64], forget_bias=2.0, s_bound=4.0, m_bound=10.0).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 20.0)
    z = torch.randn(500, DIM, dtype=torch.float64) * 10
    m, sigma, log_sigma = layer.gate(z, torch.randn(500, 64, dtype=torch.float64) * 20)
    assert (m.abs() <= 10.0).all()
    lo, hi = torch.sigmoid(torch.tensor(-2.0)), torch.sigmoid(torch.tensor(6.0))
    assert (sigma >= lo - 1e-12).all() and (sigma <= hi + 1e-12).all()
    assert torch.isfinite(log_sigma).all()
    unbounded = IAF(DIM, hidden=[8], s_bound=None, m_bound=None)
    assert unbounded.s_bound is None and unbounded.m_bound is None
    with pytest.raises(ValueError, match="s_bound"):
        IAF(DIM, s_bound=0.0)


@pytest.mark.parametrize("dim", [1, 2])
def test_iaf_small_dimensions(dim):
    flow = stack("iaf", False, scale=0.5, dim=dim, k=3, hidden=[8])
    z, _ = inputs(False, dim=dim)
    z_k, ld = flow(z)
    assert z_k.shape == z.shape and torch.isfinite(ld).all()
    z_back, ld_inv = flow.inverse(z_k)
    torch.testing.assert_close(z_back, z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld_inv, -ld, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("amortized", [False, True])
def test_iaf_without_hidden_layers_takes_the_bias_at_its_output(amortized):
    fresh = make_flow("iaf", DIM, 2, amortized=amortized, context_dim=CONTEXT, hidden=[])
    assert fresh.layers[0].param_shapes() == {"bias": (2 * DIM,)}
    z, ctx = inputs(amortized)
    if not amortized:  # m = s = 0 at start; the two gates multiply to sigmoid(2)
        s = torch.sigmoid(torch.tensor(2.0))
        torch.testing.assert_close(fresh(z.float())[0], s * z.float())
    flow = stack("iaf", amortized, scale=0.5, hidden=[])
    z_k, ld = flow(z, ctx)
    z_back, ld_inv = flow.inverse(z_k, ctx)
    torch.testing.assert_close(z_back, z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld_inv, -ld, rtol=1e-10, atol=1e-10)
    params = flow.layer_params(BATCH, ctx)[1]
    jac = layer_jacobian(flow.layers[1], z, params)
    _, ld1 = flow.layers[1](z, params)
    torch.testing.assert_close(ld1, torch.linalg.slogdet(jac).logabsdet, rtol=1e-9, atol=1e-9)


# -- inverses -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["householder", "iaf"])
@pytest.mark.parametrize("amortized", [False, True])
@pytest.mark.parametrize("scale", [None, 0.5])
def test_forward_then_inverse_is_the_identity(name, amortized, scale):
    flow = stack(name, amortized, scale=scale)
    assert flow.has_inverse
    z, ctx = inputs(amortized)
    z_k, ld = flow(z, ctx)
    assert not torch.allclose(z_k, z)
    z_back, ld_inv = flow.inverse(z_k, ctx)
    torch.testing.assert_close(z_back, z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld_inv, -ld, rtol=1e-10, atol=1e-10)
    z_prev, ld_inv = flow.inverse(z, ctx)
    z_again, ld = flow(z_prev, ctx)
    torch.testing.assert_close(z_again, z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld_inv, -ld, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", SYLVESTER)
def test_sylvester_has_no_inverse(name):
    flow = stack(name, False)
    assert not flow.has_inverse
    with pytest.raises(InverseNotAvailable, match="no inverse"):
        flow.inverse(torch.zeros(2, DIM, dtype=torch.float64))
    layer, z = flow.layers[0], torch.zeros(2, DIM, dtype=torch.float64)
    with pytest.raises(InverseNotAvailable, match="no inverse"):
        layer.inverse(z, flow.layer_params(2, None)[0])


# -- Sylvester ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-13), (torch.float32, 2e-5)])
@pytest.mark.parametrize("shape", [(4, 4), (5, 3), (40, 32), (40, 40), (64, 32)])
def test_orthogonalization_converges(dtype, atol, shape):
    gen = torch.Generator().manual_seed(0)
    for scale in (0.01, 1.0, 3.0, 100.0):
        q = torch.randn(20, *shape, generator=gen, dtype=torch.float64).to(dtype) * scale
        Q, steps, err = orthogonalize(q, iterations=100)
        assert steps < 100 and err <= 100 * torch.finfo(dtype).eps
        gram = Q.transpose(-1, -2) @ Q
        eye = torch.eye(shape[1], dtype=dtype).expand_as(gram)
        torch.testing.assert_close(gram, eye, rtol=0, atol=atol)
    # Q is the orthogonal polar factor of q: Q^T q is symmetric positive definite
    q = torch.randn(3, *shape, generator=gen, dtype=torch.float64)
    Q, _, _ = orthogonalize(q)
    s = Q.transpose(-1, -2) @ q
    torch.testing.assert_close(s, s.transpose(-1, -2), rtol=0, atol=1e-10)
    assert (torch.linalg.eigvalsh(s) > 0).all()


def test_orthogonalization_respects_iterations_and_tolerance():
    q = torch.randn(2, 10, 6, dtype=torch.float64)
    _, steps, err = orthogonalize(q, iterations=2)
    assert steps == 2 and err > 1e-3
    _, loose_steps, loose_err = orthogonalize(q, tolerance=1e-3)
    _, tight_steps, tight_err = orthogonalize(q)
    assert loose_err <= 1e-3 and tight_err <= 100 * torch.finfo(torch.float64).eps
    assert loose_steps < tight_steps


def householder_q(layer, v):
    """Build ``Q`` of an H-SNF layer densely by applying it to the identity."""
    eye = torch.eye(layer.dim, dtype=v.dtype)
    cols = [layer.q_apply(eye[i : i + 1].expand(v.shape[0], -1), v) for i in range(layer.dim)]
    return torch.stack(cols, dim=-1)  # [B, D, D]: Q e_i as columns


def test_sylvester_q_is_orthogonal_for_every_variant():
    gen = torch.Generator().manual_seed(0)
    d = 40
    orth = SylvesterOrthogonal(d, M=32)
    q = torch.randn(6, d, 32, generator=gen, dtype=torch.float64) * 3
    Q = orth.prepare_q({"q": q})
    eye32 = torch.eye(32, dtype=torch.float64)
    torch.testing.assert_close(Q.transpose(-1, -2) @ Q, eye32.expand(6, 32, 32), rtol=0, atol=1e-13)
    z = torch.randn(6, d, dtype=torch.float64)
    torch.testing.assert_close(orth.q_t(z, Q), (z.unsqueeze(1) @ Q).squeeze(1))

    hh = SylvesterHouseholder(d, num_householder=8)
    v = torch.randn(6, 8, d, generator=gen, dtype=torch.float64) * 3
    Qh = householder_q(hh, v)
    eye = torch.eye(d, dtype=torch.float64).expand(6, d, d)
    torch.testing.assert_close(Qh.transpose(-1, -2) @ Qh, eye, rtol=0, atol=1e-13)
    torch.testing.assert_close(hh.q_t(z, v), (Qh.transpose(-1, -2) @ z.unsqueeze(-1)).squeeze(-1))

    for index, flipped in ((0, False), (1, True), (2, False)):
        tri = SylvesterTriangular(d, index=index)
        expected = z.flip(-1) if flipped else z
        assert torch.equal(tri.q_t(z, None), expected)
        assert torch.equal(tri.q_apply(z, None), expected)


@pytest.mark.parametrize("name", SYLVESTER)
def test_constrained_diagonals_keep_every_layer_invertible(name):
    layer = FLOWS[name](DIM)
    gen = torch.Generator().manual_seed(0)
    shapes = layer.param_shapes()
    params = {
        n: torch.randn(1000, *s, generator=gen, dtype=torch.float64) * 30 for n, s in shapes.items()
    }
    # the raw diagonals pushed far to opposite signs: products as close to -1 as tanh allows
    params["r"][:500].diagonal(dim1=-2, dim2=-1).copy_(torch.full((500, layer.M), 25.0))
    params["r_tilde_diag"][:500] = -25.0
    d, log1p_d = layer.diagonals(params)
    # R_mm R~_mm > -1 (= -1 / sup tanh'): in exact arithmetic always; in float64 the product
    # of two saturated tanh rounds to -1, but log(1 + R_mm R~_mm) is computed without rounding
    assert (d >= -1).all() and (d <= 1).all()
    assert torch.isfinite(log1p_d).all()
    ok = d > -0.99  # where rounding d first loses little
    assert ok.sum() > 1000
    torch.testing.assert_close(log1p_d[ok], torch.log1p(d[ok]), rtol=1e-12, atol=1e-12)
    x = params["r"][:500].diagonal(dim1=-2, dim2=-1)
    y = params["r_tilde_diag"][:500]
    # x + y = 0: log(1 + d) = log cosh 0 - 2 log cosh 25
    expected = -2 * torch.log(torch.cosh(torch.tensor(25.0, dtype=torch.float64)))
    torch.testing.assert_close(log1p_d[:500], expected.expand(500, layer.M))
    assert (d[:500] == -1).all() and (x == 25).all() and (y == -25).all()
    R, R_tilde = layer.triangular(params["r"], params["r_tilde_diag"])
    assert torch.equal(R, torch.triu(R)) and torch.equal(R_tilde, torch.triu(R_tilde))
    torch.testing.assert_close(
        torch.diagonal(R, dim1=-2, dim2=-1) * torch.diagonal(R_tilde, dim1=-2, dim2=-1), d
    )
    z = torch.randn(1000, DIM, generator=gen, dtype=torch.float64) * 3
    z_next, ld = layer(z, params)
    assert torch.isfinite(z_next).all() and torch.isfinite(ld).all()


@pytest.mark.parametrize("name", SYLVESTER)
def test_sylvester_log_det_at_paper_size(name):
    # D = 40 (the VAE's latent) and M = 32: the determinant lemma needs Q^T Q = I, checked here
    # against autograd with realistic sizes (the generic test uses D = 4)
    d = 40
    layer = FLOWS[name](d, index=1).double()
    gen = torch.Generator().manual_seed(3)
    params = {
        n: torch.randn(3, *s, generator=gen, dtype=torch.float64) * 0.5
        for n, s in layer.param_shapes().items()
    }
    z = torch.randn(3, d, generator=gen, dtype=torch.float64)
    _, ld = layer(z, params)
    jac = layer_jacobian(layer, z, params)
    torch.testing.assert_close(ld, torch.linalg.slogdet(jac).logabsdet, rtol=1e-10, atol=1e-10)


def test_sylvester_bottleneck_and_parameter_counts():
    d = 40
    assert SylvesterOrthogonal(d, M=32).num_params() == 32 * 32 + 2 * 32 + d * 32
    assert SylvesterOrthogonal(d, M=64).M == d  # capped at D
    assert SylvesterOrthogonal(4, M=32).M == 4
    assert SylvesterHouseholder(d, num_householder=8).num_params() == d * d + 2 * d + 8 * d
    assert SylvesterTriangular(d).num_params() == d * d + 2 * d
    assert Householder(d).num_params() == d
    assert IAF(d).num_params() == 320  # the MADE's first-layer bias
    assert IAF(d, hidden=[]).num_params() == 2 * d
    with pytest.raises(ValueError, match="M >= 1"):
        SylvesterOrthogonal(d, M=0)
    with pytest.raises(ValueError, match="num_householder"):
        SylvesterHouseholder(d, num_householder=0)


@pytest.mark.parametrize("name", SYLVESTER)
def test_sylvester_starts_near_the_identity(name):
    # R ~ 0 at init; amortized, the head's small random weights add ~0.01 |context| per entry
    torch.manual_seed(0)
    for amortized, tol in ((False, 0.15), (True, 0.3)):
        flow = make_flow(name, DIM, K, amortized=amortized, context_dim=CONTEXT)
        z = torch.randn(BATCH, DIM)
        ctx = torch.randn(BATCH, CONTEXT) if amortized else None
        z_k, ld = flow(z, ctx)
        assert (z_k - z).abs().max() < tol and ld.abs().max() < tol


@pytest.mark.parametrize(
    "name", ["sylvester_orthogonal", "sylvester_householder", "sylvester_triangular"]
)
def test_sylvester_configs_ship_the_slow_head_and_no_clipping(name):
    from tests.flows.composed import composed_config

    cfg = composed_config(f"flow={name}")
    assert cfg.trainer.grad_clip is None and cfg.flow.head_gain is None
    assert composed_config(f"flow={name}", "trainer.grad_clip=100").trainer.grad_clip == 100.0


@pytest.mark.parametrize("a_batch", [3, 1])
def test_matvec_with_sample_dims_is_the_per_sample_product(a_batch):
    """The IS path's ``A [B|1, I, J] x [n, m, B, J]`` equals one product per sample."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(a_batch, 4, 5, generator=g, dtype=torch.float64)
    x = torch.randn(2, 6, 3, 5, generator=g, dtype=torch.float64)
    want = (A @ x.unsqueeze(-1)).squeeze(-1)  # broadcast: n * m * B matrix-vector products
    got = matvec(A, x)
    assert got.shape == (2, 6, 3, 4)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(matvec(A, x[0, 0]), want[0, 0], rtol=0, atol=0)
