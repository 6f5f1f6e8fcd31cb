"""The one flow contract, for every registered flow, global and amortized, stack and layer.

* ``forward(z, context) -> (z_next [B, D], log_abs_det [B])`` in the input's dtype;
* ``inverse(z, context) -> (z_prev [B, D], log_abs_det [B])`` round-trips, with the inverse's
  log-determinant minus the forward one, or raises :class:`InverseNotAvailable`;
* a layer's ``context`` is its raw parameter dict from the stack's source: a layer refuses
  None, and every parameter comes from the source (global or one amortized head);
* K = 0 is the identity with a zero log-determinant.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nfvi.flows import (
    FLOWS,
    AmortizedParams,
    FlowStack,
    GlobalParams,
    InverseNotAvailable,
    make_flow,
)

DIM, CONTEXT, BATCH, K = 4, 6, 5, 3
F64 = torch.float64
NAMES = sorted(FLOWS)
MODES = [pytest.param(False, id="global"), pytest.param(True, id="amortized")]


def randomized(name: str, amortized: bool, k: int = K, scale: float = 0.5) -> FlowStack:
    """A float64 stack with every parameter redrawn from ``N(0, scale^2)`` (a non-trivial map)."""
    torch.manual_seed(0)
    flow = make_flow(name, DIM, k, amortized=amortized, context_dim=CONTEXT).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, scale)
    return flow


def inputs(amortized: bool, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(BATCH, DIM, generator=gen, dtype=F64) * 2
    ctx = torch.randn(BATCH, CONTEXT, generator=gen, dtype=F64) if amortized else None
    return z, ctx


def check_round_trip(forward, inverse, z: torch.Tensor) -> None:
    """``forward`` then ``inverse`` (and the other way round) is the identity, and the inverse's
    log-determinant is minus the forward one at the recovered point; or no inverse at all."""
    z_next, ld = forward(z)
    assert z_next.shape == z.shape and z_next.dtype == z.dtype
    assert ld.shape == (z.shape[0],) and ld.dtype == z.dtype
    assert (z_next - z).abs().max() > 1e-3  # a non-trivial map
    try:
        z_back, ld_inv = inverse(z_next)
    except InverseNotAvailable:
        return
    assert z_back.shape == z.shape and ld_inv.shape == (z.shape[0],)
    torch.testing.assert_close(z_back, z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld_inv, -ld, rtol=1e-10, atol=1e-10)
    y = torch.randn_like(z)
    z_prev, ld_inv = inverse(y)
    y_again, ld_fwd = forward(z_prev)
    torch.testing.assert_close(y_again, y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld_inv, -ld_fwd, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("amortized", MODES)
def test_stack_contract(name, amortized):
    flow = randomized(name, amortized)
    z, ctx = inputs(amortized)
    check_round_trip(lambda v: flow(v, ctx), lambda v: flow.inverse(v, ctx), z)
    if not flow.has_inverse:
        with pytest.raises(InverseNotAvailable, match="no inverse"):
            flow.inverse(z, ctx)
        assert issubclass(InverseNotAvailable, NotImplementedError)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("amortized", MODES)
def test_layer_contract(name, amortized):
    flow = randomized(name, amortized)
    z, ctx = inputs(amortized)
    params = flow.layer_params(BATCH, ctx)
    for layer, p in zip(flow.layers, params, strict=True):
        lead = BATCH if amortized else 1
        assert {n: tuple(t.shape) for n, t in p.items()} == {
            n: (lead, *s) for n, s in layer.param_shapes().items()
        }
        check_round_trip(
            lambda v, p=p, la=layer: la(v, p), lambda v, p=p, la=layer: la.inverse(v, p), z
        )
        assert layer.has_inverse == type(layer).has_inverse
        if not layer.has_inverse:
            with pytest.raises(InverseNotAvailable):
                layer.inverse(z, p)


@pytest.mark.parametrize("name", NAMES)
def test_a_layer_refuses_a_missing_context(name):
    layer = FLOWS[name](DIM)
    assert layer.param_shapes(), "every registered layer declares its outside parameters"
    z = torch.randn(BATCH, DIM)
    with pytest.raises(ValueError, match="raw parameters"):
        layer(z, None)
    with pytest.raises(ValueError, match="raw parameters"):
        layer(z)
    if layer.has_inverse:
        with pytest.raises(ValueError, match="raw parameters"):
            layer.inverse(z, None)
    with pytest.raises(TypeError, match="raw parameter dict"):
        layer(z, torch.randn(BATCH, CONTEXT))  # encoder features belong to the stack


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("amortized", MODES)
def test_every_outside_parameter_comes_from_the_source(name, amortized):
    flow = make_flow(name, DIM, K, amortized=amortized, context_dim=CONTEXT)
    flat = make_flow(name, DIM, K)
    total = sum(layer.num_params() for layer in flow.layers)
    if amortized:
        assert isinstance(flow.source, AmortizedParams)
        head = [m for m in flow.modules() if isinstance(m, nn.Linear) and m.in_features == CONTEXT]
        assert head == [flow.source.head]  # one head, the only thing that sees the features
        assert tuple(flow.source.head.weight.shape) == (total, CONTEXT)
    else:
        assert isinstance(flow.source, GlobalParams)
        assert sum(p.numel() for p in flow.source.parameters()) == total
    # the layers themselves are the same in both modes: they know nothing of the encoder
    n_layer = sum(p.numel() for p in flow.layers.parameters())
    assert n_layer == sum(p.numel() for p in flat.layers.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_amortized_parameters_depend_on_the_context(name):
    flow = randomized(name, True, scale=1.0)
    z = torch.randn(1, DIM, dtype=F64).expand(2, -1)
    ctx = torch.randn(2, CONTEXT, dtype=F64)
    z_k, _ = flow(z, ctx)  # the same point, two contexts
    assert not torch.allclose(z_k[0], z_k[1])
    with pytest.raises(ValueError, match="context"):
        flow(z)


@pytest.mark.parametrize("name", NAMES)
def test_the_head_is_split_into_every_layers_parameters(name):
    # with its weights at zero the head gives every example its bias, split in layer order:
    # the same stack as a global one holding those values
    amort = randomized(name, True)
    glob = randomized(name, False)
    glob.layers.load_state_dict(amort.layers.state_dict())
    with torch.no_grad():
        amort.source.head.weight.zero_()
    z, ctx = inputs(True)
    params = amort.layer_params(BATCH, ctx)
    offset = 0
    with torch.no_grad():
        for pd, p, layer in zip(glob.source.params, params, amort.layers, strict=True):
            for n, shape in layer.param_shapes().items():
                size = torch.Size(shape).numel()
                chunk = amort.source.head.bias[offset : offset + size].reshape(shape)
                torch.testing.assert_close(p[n], chunk.expand(BATCH, *shape))
                pd[n].copy_(chunk)
                offset += size
    assert offset == amort.source.head.bias.numel()
    z_a, ld_a = amort(z, ctx)
    z_g, ld_g = glob(z)
    torch.testing.assert_close(z_a, z_g, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ld_a, ld_g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("amortized", MODES)
def test_zero_length_stack_is_the_identity(name, amortized):
    flow = make_flow(name, DIM, 0, amortized=amortized, context_dim=CONTEXT)
    z, ctx = inputs(amortized)
    for out, ld in (flow(z, ctx), flow.inverse(z, ctx)):
        assert torch.equal(out, z)
        assert torch.equal(ld, torch.zeros(BATCH, dtype=F64))
    assert flow.has_inverse and len(flow.layers) == 0


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "layers"])
@pytest.mark.parametrize("amortized", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_repeat_tiles_the_parameters_instead_of_recomputing_them(name, amortized, fused):
    """``forward(z, context, repeat=n)`` is ``forward(z, context.repeat(n, 1))``: the same
    values, log-determinants and gradients (the IS estimate's S samples per context)."""
    flow = randomized(name, amortized)
    flow.fused = fused
    n = 3
    z = torch.randn(n * BATCH, DIM, dtype=F64)
    ctx = torch.randn(BATCH, CONTEXT, dtype=F64, requires_grad=True) if amortized else None
    tiled, ld_tiled = flow(z, None if ctx is None else ctx.repeat(n, 1))
    once, ld_once = flow(z, ctx, repeat=n)
    torch.testing.assert_close(once, tiled, rtol=0, atol=1e-12)
    torch.testing.assert_close(ld_once, ld_tiled, rtol=0, atol=1e-12)
    params = [p for p in flow.parameters()] + ([ctx] if amortized else [])
    g_tiled = torch.autograd.grad((tiled.sum() + ld_tiled.sum()), params, allow_unused=True)
    once, ld_once = flow(z, ctx, repeat=n)
    g_once = torch.autograd.grad((once.sum() + ld_once.sum()), params, allow_unused=True)
    for a, b in zip(g_once, g_tiled, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "layers"])
@pytest.mark.parametrize("name", NAMES)
def test_repeat_without_a_graph_gives_the_tiled_values(name, fused):
    """Under ``no_grad`` (the IS estimate) planar and radial broadcast ``z [n, B, D]``
    against the per-context parameters; every flow still gives the tiled stack's values."""
    flow = randomized(name, amortized=True)
    flow.fused = fused
    n = 4
    z = torch.randn(n * BATCH, DIM, dtype=F64)
    ctx = torch.randn(BATCH, CONTEXT, dtype=F64)
    with torch.no_grad():
        tiled, ld_tiled = flow(z, ctx.repeat(n, 1))
        once, ld_once = flow(z, ctx, repeat=n)
    torch.testing.assert_close(once, tiled, rtol=0, atol=1e-12)
    torch.testing.assert_close(ld_once, ld_tiled, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_a_head_with_its_own_hidden_layer_keeps_the_contract(name):
    """``context_hidden``: theta = c + g W ELU(V h + a). The log-determinant is the autograd
    Jacobian's (float64), fused and layer-by-layer stacks agree, the repeat path tiles, every
    parameter (the hidden layer's too) gets a gradient, and theta is not affine in h."""
    from tests.flows.test_flows import jacobian_logdet

    torch.manual_seed(0)
    flow = make_flow(name, DIM, K, amortized=True, context_dim=CONTEXT, context_hidden=7,
                     head_gain=0.2).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, 0.5)
    z, ctx = inputs(True)
    zk, ld = flow(z, ctx)
    torch.testing.assert_close(ld, jacobian_logdet(flow, z, ctx), rtol=1e-9, atol=1e-9)
    flow.fused = not flow.fused
    zk2, ld2 = flow(z, ctx)
    torch.testing.assert_close(zk2, zk, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld2, ld, rtol=1e-10, atol=1e-10)
    once, ld_once = flow(z.repeat(2, 1), ctx, repeat=2)
    torch.testing.assert_close(once, zk.repeat(2, 1), rtol=0, atol=1e-12)
    torch.testing.assert_close(ld_once, ld.repeat(2), rtol=0, atol=1e-12)
    ((zk * torch.randn_like(zk)).sum() + ld.sum()).backward()
    body = dict(flow.source.body.named_parameters())
    assert set(body) == {"0.weight", "0.bias"}
    for pname, p in flow.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    flat = flow.source.flat
    mid = flat(0.5 * (ctx[:1] + ctx[1:2]))
    assert (mid - 0.5 * (flat(ctx[:1]) + flat(ctx[1:2]))).abs().max() > 1e-6
