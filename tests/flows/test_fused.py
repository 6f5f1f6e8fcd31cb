"""The fused planar, radial and Householder stacks (nfvi.flows.fused) against the
layer-by-layer ones.

Same stack, same parameters, ``fused`` switched: outputs, log-determinants and every gradient
(z, each flow parameter, the amortized head and its context) agree to 1e-10 in float64; the
Functions pass gradcheck; the fused path is the default, in the VAE and the energy task too.
Every test runs four times: with the fused stacks' torch loops and with their compiled CPU
kernels (:mod:`nfvi.native`; skipped, saying why, where no C compiler could build them), and on
a CUDA device (every tensor made there; skipped without one) with the torch loops and with the
Triton kernels (:mod:`nfvi.native.gpu`).
"""

from __future__ import annotations

import math

import pytest
import torch

from nfvi import native
from nfvi.config import Config
from nfvi.energy import TARGETS, EnergyModel
from nfvi.flows import FlowStack, GlobalParams, make_flow
from nfvi.flows.fused import (
    HouseholderStackFunction,
    PlanarConstraint,
    PlanarConstraintFunction,
    PlanarStackFunction,
    RadialStackFunction,
)
from nfvi.flows.planar import Planar
from nfvi.flows.radial import Radial
from nfvi.native import gpu
from nfvi.vae.model import FlowVAE

F64 = torch.float64
DIM, CONTEXT, BATCH = 4, 6, 7
TOL = dict(rtol=1e-10, atol=1e-10)
KINDS = [
    pytest.param("planar", {}, id="planar"),
    pytest.param("planar", {"centered": True}, id="planar-centered"),
    pytest.param("planar", {"centered": True, "det_floor": 0.3, "w_init_std": 0.5},
                 id="planar-floor"),
    pytest.param("radial", {}, id="radial"),
    pytest.param("householder", {}, id="householder"),
]
#: one of each family (planar's variants share its code)
FAMILIES = [KINDS[0], KINDS[3], KINDS[4]]
MODES = [pytest.param(False, id="global"), pytest.param(True, id="amortized")]


@pytest.fixture(autouse=True, params=["torch-loop", "native", "cuda-loop", "cuda-kernels"])
def backend(request):
    """The fused stacks' implementation: torch's loop or the compiled C kernels on the CPU;
    torch's loop or the Triton kernels (:mod:`nfvi.native.gpu`) on a CUDA device, the
    default device for the test then (every tensor is made there)."""
    cuda = request.param.startswith("cuda")
    if request.param == "native" and native.library() is None:
        pytest.skip(native.status())
    if cuda and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if request.param == "cuda-kernels" and not gpu.available():
        pytest.skip("needs Triton")
    was, was_gpu, device = native.enabled(), gpu.enabled(), torch.get_default_device()
    native.set_enabled(request.param == "native")
    gpu.set_enabled(request.param == "cuda-kernels")
    torch.set_default_device("cuda" if cuda else device)
    yield request.param
    native.set_enabled(was)
    gpu.set_enabled(was_gpu)
    torch.set_default_device(device)


def generator(seed: int) -> torch.Generator:
    """A seeded generator on the device the tensors are made on."""
    return torch.Generator(device=torch.get_default_device()).manual_seed(seed)


def randomized(name: str, K: int, amortized: bool, scale: float, **hparams) -> FlowStack:
    torch.manual_seed(0)
    flow = make_flow(name, DIM, K, amortized=amortized, context_dim=CONTEXT, **hparams).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, scale)
    return flow


def run(flow: FlowStack, fused: bool, amortized: bool, use_ld: bool = True, use_z: bool = True):
    """Outputs and the gradients of a loss using both (or one) of them."""
    gen = generator(1)
    z = (torch.randn(BATCH, DIM, generator=gen, dtype=F64) * 2).requires_grad_()
    ctx = torch.randn(BATCH, CONTEXT, generator=gen, dtype=F64).requires_grad_() if amortized \
        else None
    wz = torch.randn(BATCH, DIM, generator=gen, dtype=F64)
    wl = torch.randn(BATCH, generator=gen, dtype=F64)
    flow.fused = fused
    assert flow.uses_fused == fused
    z_k, ld = flow(z, ctx)
    loss = z.new_zeros(())
    if use_z:
        loss = loss + (z_k * wz).sum() + 0.1 * (z_k * z_k).sum()
    if use_ld:
        loss = loss + (ld * wl).sum()
    inputs = [z] + ([ctx] if amortized else []) + list(flow.parameters())
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True)]
    names = ["z"] + (["context"] if amortized else []) + [n for n, _ in flow.named_parameters()]
    return z_k.detach(), ld.detach(), dict(zip(names, grads, strict=True)), z_k.grad_fn.name()


@pytest.mark.parametrize("name, hparams", KINDS)
@pytest.mark.parametrize("amortized", MODES)
@pytest.mark.parametrize("K", [1, 3, 10])
@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_fused_equals_layer_by_layer(backend, name, hparams, amortized, K, scale):
    flow = randomized(name, K, amortized, scale, **hparams)
    zf, ldf, gf, fn_fused = run(flow, True, amortized)
    zu, ldu, gu, fn_plain = run(flow, False, amortized)
    assert zf.device.type == ("cuda" if backend.startswith("cuda") else "cpu")
    assert fn_fused == f"{name.capitalize()}StackFunctionBackward"
    assert "StackFunction" not in fn_plain
    torch.testing.assert_close(zf, zu, **TOL)
    torch.testing.assert_close(ldf, ldu, **TOL)
    assert gf.keys() == gu.keys() and len(gf) > 1
    if amortized:
        assert "source.head.weight" in gf and "context" in gf
    for key in gf:
        torch.testing.assert_close(gf[key], gu[key], **TOL, msg=lambda m, key=key: f"{key}: {m}")
        if scale < 1.0:  # at scale 2 a saturated tanh leaves some gradients exactly zero
            assert gf[key].abs().sum() > 0, key


@pytest.mark.parametrize("name, hparams", KINDS[::3])
@pytest.mark.parametrize("amortized", MODES)
@pytest.mark.parametrize("use", ["z", "log_det"])
def test_one_output_unused(name, hparams, amortized, use):
    """The backward gets a zero (materialized) gradient for the output the loss ignores."""
    flow = randomized(name, 3, amortized, 0.7, **hparams)
    kw = dict(use_z=use == "z", use_ld=use == "log_det")
    _, _, gf, _ = run(flow, True, amortized, **kw)
    _, _, gu, _ = run(flow, False, amortized, **kw)
    for key in gf:
        torch.testing.assert_close(gf[key], gu[key], **TOL)


@pytest.mark.parametrize("name, hparams", FAMILIES)
@pytest.mark.parametrize("amortized", MODES)
def test_without_a_graph_the_lean_loop_gives_the_same_values(name, hparams, amortized):
    flow = randomized(name, 10, amortized, 1.0, **hparams)
    z = torch.randn(50, DIM, dtype=F64)
    ctx = torch.randn(50, CONTEXT, dtype=F64) if amortized else None
    with torch.no_grad():
        fused = flow(z, ctx)
        flow.fused = False
        plain = flow(z, ctx)
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    assert fused[0].grad_fn is None


@pytest.mark.parametrize("shift, scale", [(0.0, 1.0), (math.log(math.e - 1.0), 0.7)],
                         ids=["paper", "centered-floor"])
def test_the_planar_constraint_node_equals_autograd(shift, scale):
    """u_hat and its gradients through the hand-written node against the formula in autograd,
    on strided [K, B, D] views (as the amortized head makes them), with some ``w^T u`` past
    softplus' threshold (20) and one ``w = 0`` row (the clamp of ``||w||^2``)."""
    gen = generator(3)
    K, P = 4, 6
    raw = torch.randn(P, K, 2 * DIM, generator=gen, dtype=F64) * 2.0
    raw[0, 0, DIM:] = 0.0  # w = 0
    raw[1, 2, :DIM] = raw[1, 2, DIM:] * 6.0  # s = 6 ||w||^2: past the threshold
    weights = torch.randn(K, P, DIM, generator=gen, dtype=F64)
    constraint = PlanarConstraint(shift, scale)
    outs = []
    for fn in (constraint.fused, constraint):
        leaf = raw.clone().requires_grad_()
        u, w = leaf[..., :DIM].transpose(0, 1), leaf[..., DIM:].transpose(0, 1)
        u_hat = fn(u, w)
        (g,) = torch.autograd.grad((u_hat * weights).sum() + (u_hat**2).sum(), leaf)
        outs.append((u_hat.detach(), g, u_hat.grad_fn.name()))
    s = (raw[..., :DIM] * raw[..., DIM:]).sum(-1) + shift
    assert (s > 20).any() and (s < 20).any()
    assert outs[0][2] == "PlanarConstraintFunctionBackward" != outs[1][2]
    torch.testing.assert_close(outs[0][0], outs[1][0], **TOL)
    torch.testing.assert_close(outs[0][1], outs[1][1], **TOL)
    assert torch.isfinite(outs[0][1]).all() and outs[0][1].abs().sum() > 0


def test_planar_constraint_function_gradcheck():
    gen = generator(4)
    u = torch.randn(3, 4, DIM, generator=gen, dtype=F64).requires_grad_()
    w = torch.randn(3, 4, DIM, generator=gen, dtype=F64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda u, w: PlanarConstraintFunction.apply(u, w, math.log(math.e - 1.0), 0.8), (u, w))


@pytest.mark.parametrize("shared", [False, True], ids=["per-example", "shared"])
def test_planar_function_gradcheck(shared):
    gen = generator(0)
    K, B, D = 3, 4, 3
    P = 1 if shared else B

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=F64) * scale).requires_grad_()

    args = (rnd(B, D), rnd(K, P, D), rnd(K, P, D, scale=0.4), rnd(K, P, 1))
    assert torch.autograd.gradcheck(lambda *a: PlanarStackFunction.apply(*a)[:2], args)


@pytest.mark.parametrize("shared", [False, True], ids=["per-example", "shared"])
def test_radial_function_gradcheck(shared):
    gen = generator(0)
    K, B, D = 3, 4, 3
    P = 1 if shared else B
    z = torch.randn(B, D, generator=gen, dtype=F64).requires_grad_()
    c = torch.randn(K, P, D, generator=gen, dtype=F64).requires_grad_()
    alpha = (torch.rand(K, P, 1, generator=gen, dtype=F64) + 0.2).requires_grad_()
    beta = (torch.rand(K, P, 1, generator=gen, dtype=F64) * 2 - 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: RadialStackFunction.apply(*a)[:2],
                                    (z, c, alpha, beta))


@pytest.mark.parametrize("shared", [False, True], ids=["per-example", "shared"])
def test_householder_function_gradcheck(shared):
    gen = generator(0)
    K, B, D = 3, 4, 3
    P = 1 if shared else B
    z = torch.randn(B, D, generator=gen, dtype=F64).requires_grad_()
    v = torch.randn(K, P, D, generator=gen, dtype=F64).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: HouseholderStackFunction.apply(*a)[0], (z, v))


def test_a_zero_householder_vector_is_the_identity_with_zero_gradient():
    """``v = 0`` (the clamp of ``||v||^2``) in the middle layer: both paths reflect by the
    other two only and give that ``v`` a zero gradient, finite, as the layer-by-layer
    reflection does."""
    flow = randomized("householder", 3, False, 1.0)
    with torch.no_grad():
        flow.source.params[1]["v"].zero_()
    z = torch.randn(BATCH, DIM, generator=generator(5), dtype=F64).requires_grad_()
    outs = []
    for fused in (True, False):
        flow.fused = fused
        z_k, _ = flow(z)
        outs.append((z_k.detach(), torch.autograd.grad((z_k * z_k).sum() + z_k.sum(),
                                                       [z, *flow.parameters()])))
    torch.testing.assert_close(outs[0][0], outs[1][0], **TOL)
    for a, b in zip(outs[0][1], outs[1][1], strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, **TOL)
    assert torch.equal(outs[0][1][2], torch.zeros(DIM, dtype=F64))
    assert outs[0][1][1].abs().sum() > 0 and outs[0][1][3].abs().sum() > 0


def test_the_fused_path_is_the_default_and_can_be_switched_off():
    for name in ("planar", "radial", "householder"):
        flow = make_flow(name, DIM, 3)
        assert flow.fused and flow.fusable and flow.uses_fused
        z_k, _ = flow(torch.randn(2, DIM))
        assert z_k.grad_fn.name() == f"{name.capitalize()}StackFunctionBackward"
        off = make_flow(name, DIM, 3, fused=False)
        assert off.fusable and not off.uses_fused
        assert "StackFunction" not in off(torch.randn(2, DIM))[0].grad_fn.name()


def test_only_stacks_of_one_fusable_kind_fuse():
    assert not make_flow("nice", DIM, 3).uses_fused  # no fused stack
    assert not make_flow("planar", DIM, 0).uses_fused  # K = 0: the identity, nothing to fuse
    mixed = [Planar(DIM, 0), Radial(DIM, 1)]
    assert not FlowStack(mixed, GlobalParams(mixed)).uses_fused
    unequal = [Planar(DIM, 0), Planar(DIM, 1, centered=True)]
    assert not FlowStack(unequal, GlobalParams(unequal)).uses_fused
    same = [Planar(DIM, 0, centered=True), Planar(DIM, 1, centered=True)]
    assert FlowStack(same, GlobalParams(same)).uses_fused

    class Custom(Planar):  # a subclass may change the map: it runs layer by layer
        pass

    custom = [Custom(DIM, 0), Custom(DIM, 1)]
    assert not FlowStack(custom, GlobalParams(custom)).uses_fused


@pytest.mark.parametrize("name", ["planar", "radial", "householder"])
def test_the_energy_task_uses_the_fused_path(name):
    model = EnergyModel(TARGETS["u2"], name, K=4).double()
    assert model.flow.uses_fused
    s = model.sample(8)
    assert s.z_K.grad_fn.name() == f"{name.capitalize()}StackFunctionBackward"
    assert not EnergyModel(TARGETS["u2"], name, K=4, fused=False).flow.uses_fused


@pytest.mark.parametrize("fused", [True, False])
def test_the_vae_reads_flow_fused_from_the_config(fused):
    cfg = Config()
    cfg.K = 2
    cfg.flow.fused = fused
    model = FlowVAE.from_config(cfg, 12)
    assert model.flow.uses_fused == fused
    post = model.encode(torch.rand(3, 12))
    name = model.sample_posterior(post).zk.grad_fn.name()
    assert ("PlanarStackFunction" in name) == fused


def test_float32_gradients_stay_close():
    """float32 (training's dtype): the two paths agree to float32 rounding."""
    flow = randomized("planar", 10, True, 0.5, centered=True).float()
    z = torch.randn(BATCH, DIM, requires_grad=True)
    ctx = torch.randn(BATCH, CONTEXT)
    outs = []
    for fused in (True, False):
        flow.fused = fused
        z_k, ld = flow(z, ctx)
        outs.append(torch.autograd.grad(z_k.sum() + ld.sum(), [z, *flow.parameters()]))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_config_refuses_fused_as_a_layer_hyperparameter():
    from nfvi.config import validate
    from nfvi.errors import ConfigError

    cfg = Config()
    validate(cfg)
    cfg.flow.hparams = {"fused": False}
    with pytest.raises(ConfigError, match="flow.fused"):
        validate(cfg)


def test_no_silent_double_backward():
    flow = make_flow("planar", DIM, 2).double()
    z = torch.randn(3, DIM, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(flow(z)[1].sum(), z, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()
