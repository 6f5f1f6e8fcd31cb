"""The flow contract for every registered flow: exact log-determinants, gradients, dtypes."""

from __future__ import annotations

import pytest
import torch

from nfvi.flows import FLOWS, FlowStack, make_flow
from nfvi.flows.planar import Planar

DIM, CONTEXT, BATCH, K = 4, 6, 5, 3
NAMES = sorted(FLOWS)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def randomized_stack(name: str, amortized: bool, scale: float, seed: int = 0) -> FlowStack:
    """A float64 stack whose raw parameters are drawn at ``scale`` (large: violates raw limits)."""
    torch.manual_seed(seed)
    flow = make_flow(name, DIM, K, amortized=amortized, context_dim=CONTEXT).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, scale)
    return flow


def jacobian_logdet(flow: FlowStack, z: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """log|det dz_K/dz_0| per example from the autograd Jacobian."""
    out = []
    for b in range(z.shape[0]):
        ctx = None if context is None else context[b : b + 1]

        def f(zb, ctx=ctx):
            return flow(zb.unsqueeze(0), ctx)[0].squeeze(0)

        jac = torch.autograd.functional.jacobian(f, z[b])
        out.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("amortized", [False, True])
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_log_abs_det_matches_autograd_jacobian(name, amortized, scale):
    flow = randomized_stack(name, amortized, scale)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(BATCH, DIM, generator=gen, dtype=torch.float64) * 2
    context = torch.randn(BATCH, CONTEXT, generator=gen, dtype=torch.float64) if amortized else None
    z_k, log_abs_det = flow(z, context)
    assert z_k.shape == (BATCH, DIM)
    assert log_abs_det.shape == (BATCH,)
    expected = jacobian_logdet(flow, z, context)
    torch.testing.assert_close(log_abs_det, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("amortized", [False, True])
def test_every_parameter_gets_a_gradient(name, amortized):
    flow = randomized_stack(name, amortized, 0.5)
    z = torch.randn(BATCH, DIM, dtype=torch.float64)
    context = torch.randn(BATCH, CONTEXT, dtype=torch.float64) if amortized else None
    z_k, log_abs_det = flow(z, context)
    # a loss that no rotation leaves unchanged (||z_k||^2 would give Householder no gradient)
    gen = torch.Generator().manual_seed(7)
    weights = torch.randn(BATCH, DIM, dtype=torch.float64, generator=gen)
    ((z_k * weights).sum() + z_k.pow(2).sum() + log_abs_det.sum()).backward()
    params = list(flow.named_parameters())
    assert params, "a flow with K > 0 must have parameters"
    for pname, p in params:
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 1e-8, f"{pname} got a (numerically) zero gradient"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("amortized", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_device_and_dtype_follow_the_input(name, amortized, dtype, device):
    flow = make_flow(name, DIM, K, amortized=amortized, context_dim=CONTEXT).to(device, dtype)
    z = torch.randn(BATCH, DIM, dtype=dtype, device=device)
    context = torch.randn(BATCH, CONTEXT, dtype=dtype, device=device) if amortized else None
    z_k, log_abs_det = flow(z, context)
    assert z_k.dtype == dtype and log_abs_det.dtype == dtype
    assert z_k.device.type == device and log_abs_det.device.type == device
    if flow.has_inverse:
        z_0, ld_inv = flow.inverse(z_k, context)
        assert z_0.dtype == dtype and ld_inv.dtype == dtype
        assert z_0.device.type == device and ld_inv.device.type == device


def test_planar_constraint_holds_for_any_raw_parameters():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1000, DIM, generator=gen, dtype=torch.float64) * 5
    u = torch.randn(1000, DIM, generator=gen, dtype=torch.float64) * 5
    u[:500] = -10.0 * w[:500]  # raw u deliberately far on the wrong side: w^T u << -1
    assert ((w * u).sum(-1) < -1).sum() >= 500
    u_hat = Planar(DIM).constrained_u(u, w)
    wu_hat = (w * u_hat).sum(-1)
    assert (wu_hat >= -1.0 - 1e-12).all()  # -1 + softplus(.) rounds to -1 far out
    torch.testing.assert_close(wu_hat, -1.0 + torch.nn.functional.softplus((w * u).sum(-1)))


def test_planar_u_hat_uses_squared_norm():
    # for w^T u = 0, u_hat = u + (softplus(0) - 1) w / ||w||^2 exactly
    w = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    u = torch.tensor([[4.0, -3.0]], dtype=torch.float64)
    expected = u + (torch.log(torch.tensor(2.0, dtype=torch.float64)) - 1.0) * w / 25.0
    torch.testing.assert_close(Planar(DIM).constrained_u(u, w), expected)


def test_radial_stays_invertible_for_extreme_raw_parameters():
    flow = randomized_stack("radial", False, 20.0)
    z = torch.randn(256, DIM, dtype=torch.float64) * 3
    _, log_abs_det = flow(z)
    assert torch.isfinite(log_abs_det).all()


def test_radial_matches_hand_computed_value():
    # d = 2, z0 = 0, alpha = softplus(a) = 1, beta = -alpha + softplus(b) = 1, z = (3, 4): r = 5
    a = torch.log(torch.expm1(torch.tensor([[1.0]], dtype=torch.float64)))
    b = torch.log(torch.expm1(torch.tensor([[2.0]], dtype=torch.float64)))
    layer = FLOWS["radial"](2)
    z = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    z_next, ld = layer(z, {"z0": torch.zeros(1, 2, dtype=torch.float64), "a": a, "b": b})
    h = 1.0 / 6.0  # 1 / (alpha + r)
    torch.testing.assert_close(z_next, z * (1 + h))
    expected = torch.log(torch.tensor(1 + h)) + torch.log(torch.tensor(1 + h - 5 / 36))
    torch.testing.assert_close(ld, expected.reshape(1).double())


def test_zero_length_stack_is_the_identity():
    flow = make_flow("planar", DIM, 0, amortized=True, context_dim=CONTEXT)
    z = torch.randn(BATCH, DIM)
    z_k, ld = flow(z, torch.randn(BATCH, CONTEXT))
    assert torch.equal(z_k, z) and torch.equal(ld, torch.zeros(BATCH))


def test_registry_and_factory_errors():
    assert {"planar", "radial"} <= set(FLOWS)
    with pytest.raises(KeyError, match="unknown flow"):
        make_flow("nope", DIM, 2)
    with pytest.raises(ValueError, match="K must be"):
        make_flow("planar", DIM, -1)
    with pytest.raises(ValueError, match="context_dim"):
        make_flow("planar", DIM, 2, amortized=True)
    amortized = make_flow("planar", DIM, 2, amortized=True, context_dim=CONTEXT)
    with pytest.raises(ValueError, match="context"):
        amortized(torch.randn(BATCH, DIM))


def test_amortized_parameters_differ_per_example():
    flow = randomized_stack("planar", True, 1.0)
    z = torch.zeros(2, DIM, dtype=torch.float64)
    context = torch.randn(2, CONTEXT, dtype=torch.float64)
    z_k, _ = flow(z, context)
    # same input point, different contexts -> different outputs
    assert not torch.allclose(z_k[0], z_k[1])
