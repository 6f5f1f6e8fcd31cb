"""The gated-conv VAE (van den Berg et al. 2018) and the architecture registry."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from nfvi.config import typed, validate
from nfvi.errors import ConfigError
from nfvi.flows import FLOWS
from nfvi.vae.model import FlowVAE
from nfvi.vae.networks import (
    ARCHITECTURES,
    Gated,
    ShapeError,
    conv_plan,
    gated_conv,
    gated_deconv,
)
from nfvi.vae.run import build_model
from tests.flows.composed import composed_config

SHAPES = [(1, 28, 28), (1, 28, 20), (3, 8, 8)]


def conv_vae(shape=(3, 8, 8), likelihood="bernoulli", flow="planar", K=2, amortized=True,
             latent_dim=64, seed=0) -> FlowVAE:
    torch.manual_seed(seed)
    c, h, w = shape
    return FlowVAE(c * h * w, latent_dim, [], "relu", 1, flow, K, amortized,
                   likelihood=likelihood, architecture="gated_conv", image_shape=shape)


def data(shape, likelihood, n=3, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = shape[0] * shape[1] * shape[2]
    if likelihood == "bernoulli":
        return torch.bernoulli(torch.full((n, p), 0.3), generator=g)
    if likelihood == "categorical":
        return torch.randint(0, 256, (n, p), generator=g).float() / 255
    return torch.rand(n, p, generator=g).clamp(0.01, 0.99)


def test_both_architectures_are_registered():
    assert {"mlp", "gated_conv"} <= set(ARCHITECTURES)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("likelihood", ["bernoulli", "categorical", "logit_normal"])
def test_output_shapes(shape, likelihood):
    model = conv_vae(shape, likelihood)
    p = shape[0] * shape[1] * shape[2]
    x = data(shape, likelihood)
    with torch.no_grad():
        post = model.encode(x)
        assert post.features.shape == (3, 256) and post.mu.shape == (3, 64)
        out = model.decode(post.mu)
        assert out.shape == (3, p * model.likelihood.per_pixel)
        img = model.likelihood.mean(out)
        assert img.shape == (3, p) and 0 <= img.min() and img.max() <= 1
        assert torch.isfinite(model.log_likelihood(x, post.mu)).all()


def test_the_paper_geometry_and_the_small_image_adaptation():
    mnist, frey, patches = (conv_plan(s, s[0] * s[1] * s[2]) for s in SHAPES)
    assert mnist.grid == (7, 7) and mnist.strides == ((2, 2), (2, 2))
    assert frey.grid == (7, 5) and frey.strides == ((2, 2), (2, 2))
    assert patches.grid == (4, 4) and patches.strides == ((2, 2), (1, 1))  # halves once
    model = conv_vae((1, 28, 20))
    assert model.encoder.net[-1].conv.kernel_size == (7, 5)
    assert model.decoder_body.net[0].conv.kernel_size == (7, 5)
    assert [layer.conv.out_channels // 2 for layer in model.encoder.net] == [32, 32, 64, 64,
                                                                             64, 256]


@pytest.mark.parametrize("shape", [(1, 30, 17), (2, 5, 9), (1, 32, 32), (1, 1, 1)], ids=str)
def test_odd_and_edge_shapes_are_restored_exactly(shape):
    model = conv_vae(shape, K=0, latent_dim=4)
    x = data(shape, "bernoulli", n=2)
    with torch.no_grad():
        assert model.decode(model.encode(x).mu).shape == x.shape


@pytest.mark.parametrize("shape", [None, (784,), (1, 28, 27), (1, 64, 64), (3, 33, 8)],
                         ids=str)
def test_shapes_it_cannot_take_are_one_line_errors(shape):
    with pytest.raises(ShapeError) as err:
        conv_plan(shape, 784)
    assert "\n" not in str(err.value)


def test_the_run_module_reports_a_bad_shape_as_a_config_error():
    cfg = typed(composed_config("model=gated_conv"))
    bad = SimpleNamespace(name="big", train=torch.zeros(2, 4096), image_shape=(1, 64, 64))
    with pytest.raises(ConfigError, match="model=gated_conv on big: .*at most 8x8"):
        build_model(cfg, bad)
    good = SimpleNamespace(name="mnist", train=torch.zeros(2, 784), image_shape=(1, 28, 28))
    assert build_model(cfg, good).latent_dim == 64


def test_decoder_layout_is_what_the_likelihoods_read():
    """out.view(B, P, k)[:, p, j] is parameter j of pixel p = (c H + y) W + x: conv channel
    c k + j at (y, x); and the mean image is in x's own (C, H, W) order."""
    model = conv_vae((3, 8, 8), "logit_normal")
    with torch.no_grad():
        z = torch.randn(2, 64)
        y = model.decoder_out.conv(model.decoder_body(z))  # [2, 3 * 2, 8, 8]
        out = model.decode(z).view(2, 3, 8, 8, 2)
        for c in range(3):
            for j in range(2):
                torch.testing.assert_close(out[:, c, :, :, j], y[:, 2 * c + j])
        torch.testing.assert_close(model.likelihood.mean(model.decode(z)).view(2, 3, 8, 8),
                                   torch.sigmoid(y[:, 0::2]))


@pytest.mark.parametrize("transposed", [False, True])
def test_a_gated_layer_is_the_value_times_the_sigmoid_gate(transposed):
    torch.manual_seed(0)
    layer = (gated_deconv(3, 4, 5, 2, 2, 1) if transposed else gated_conv(3, 4, 5, 2, 2))
    assert isinstance(layer, Gated)
    x = torch.randn(2, 3, 6, 6)
    w, b = layer.conv.weight, layer.conv.bias
    if transposed:  # weight [C_in, 2 C, k, k]
        (W, V), (bw, bv) = w.chunk(2, dim=1), b.chunk(2)

        def op(weight, bias):
            return F.conv_transpose2d(x, weight, bias, 2, 2, 1)
    else:  # weight [2 C, C_in, k, k]
        (W, V), (bw, bv) = w.chunk(2, dim=0), b.chunk(2)

        def op(weight, bias):
            return F.conv2d(x, weight, bias, 2, 2)
    expected = op(W, bw) * torch.sigmoid(op(V, bv))
    torch.testing.assert_close(layer(x), expected)
    # multiplicative: a closed gate (very negative c) silences the layer whatever W * x is
    with torch.no_grad():
        b[4:] = -1e4
    assert layer(x).abs().max() == 0
    # each half starts as a layer of 4 outputs would: torch's bound 1 / sqrt(fan_in)
    fan_in = (4 if transposed else 3) * 25
    assert 0.9 < W.abs().max().item() * fan_in**0.5 <= 1.0 + 1e-6


@pytest.mark.parametrize("flow", ["planar", "sylvester_orthogonal"])
def test_every_parameter_gets_a_gradient(flow):
    model = conv_vae((1, 28, 28), flow=flow)
    x = data((1, 28, 28), "bernoulli", n=4)
    model.elbo(x, beta=0.5).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.flow.context_dim == 256


@pytest.mark.parametrize("amortized", [True, False], ids=["amortized", "global"])
@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_every_flow_gives_a_finite_bound_and_nll(flow, amortized):
    model = conv_vae((3, 8, 8), "logit_normal", flow=flow, amortized=amortized, latent_dim=8)
    x = data((3, 8, 8), "logit_normal")
    t = model.elbo(x)
    assert torch.isfinite(t.loss) and torch.isfinite(t.neg_elbo).all()
    est = model.iw_nll(x, samples=6, chunk=4)
    assert est.nll.shape == (3,) and torch.isfinite(est.nll).all()


def test_long_evaluations_decode_in_slices_with_the_same_result():
    model = conv_vae((1, 28, 20), "categorical", latent_dim=8)
    assert model.decode_rows == 2**26 // (256 * 560)
    x = data((1, 28, 20), "categorical", n=2)
    torch.manual_seed(3)
    whole = model.iw_nll(x, samples=12, chunk=12).nll
    model.decode_rows = 5  # 24 rows per chunk: five slices
    torch.manual_seed(3)
    torch.testing.assert_close(model.iw_nll(x, samples=12, chunk=12).nll, whole)


def test_state_dict_round_trip():
    a = conv_vae((1, 28, 20), "categorical", flow="sylvester_orthogonal", seed=0)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = conv_vae((1, 28, 20), "categorical", flow="sylvester_orthogonal", seed=1)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    x = data((1, 28, 20), "categorical", n=2)
    with torch.no_grad():
        torch.manual_seed(4)
        ea = a.elbo(x).neg_elbo
        torch.manual_seed(4)
        assert torch.equal(ea, b.elbo(x).neg_elbo)


def test_the_mlp_keeps_its_parameter_names():
    """Checkpoints of the MLP model from before the registry still load."""
    model = FlowVAE(784, 40, [400, 400], "maxout", 4, "planar", 2, True)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {
        "encoder.0.linear.weight": (1600, 784), "encoder.0.linear.bias": (1600,),
        "encoder.1.linear.weight": (1600, 400), "encoder.1.linear.bias": (1600,),
        "q_mu.weight": (40, 400), "q_mu.bias": (40,),
        "q_log_var.weight": (40, 400), "q_log_var.bias": (40,),
        "flow.source.head.weight": (162, 400), "flow.source.head.bias": (162,),
        "decoder_body.0.linear.weight": (1600, 40), "decoder_body.0.linear.bias": (1600,),
        "decoder_body.1.linear.weight": (1600, 400), "decoder_body.1.linear.bias": (1600,),
        "decoder_out.weight": (784, 400), "decoder_out.bias": (784,),
    }
    assert model.architecture == "mlp" and model.decode_rows is None


def test_config_composes_and_validates_the_name():
    cfg = typed(composed_config("model=gated_conv"))
    assert cfg.model.name == "gated_conv" and cfg.model.latent_dim == 64
    validate(cfg)
    with pytest.raises(ConfigError, match="unknown model 'resnet'; choose model= one of "
                                          "gated_conv, mlp"):
        validate(typed(composed_config("model.name=resnet")))


def test_train_then_eval_through_the_cli(tmp_path):
    env = dict(os.environ, NFVI_OUTPUT_ROOT=str(tmp_path / "out"),
               NFVI_DATA_DIR=str(tmp_path / "no-data"))
    env.pop("NFVI_DEBUG", None)
    args = ["model=gated_conv", "dataset.source=bundled", "K=2", "flow=sylvester_orthogonal",
            "trainer.max_steps=20", "trainer.batch_size=8", "trainer.val_interval=20",
            "trainer.log_interval=10", "trainer.progress=false", "trainer.num_threads=1",
            "eval.iw_samples=4", "eval.max_examples=16", "name=gated"]

    def nfvi(*a):
        return subprocess.run([sys.executable, "-m", "nfvi.cli", *a], env=env,
                              capture_output=True, text=True, timeout=600)

    proc = nfvi("train", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = [p.parent for p in (tmp_path / "out").rglob(".nfvi-run")]
    s = json.loads((run / "summary.json").read_text())
    assert s["steps"] == 20 and s["test_examples"] == 16
    assert math.isfinite(s["test_nll"]) and math.isfinite(s["test_neg_elbo"])
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["config"]["model"]["name"] == "gated_conv"
    assert any(k.startswith("decoder_body.net.") for k in ckpt["model"])
    proc = nfvi("eval", f"checkpoint={run}", "eval.iw_samples=4", "eval.max_examples=16",
                "trainer.num_threads=1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (out,) = (run / "eval").iterdir()
    assert json.loads((out / "eval.json").read_text())["test_nll"] == pytest.approx(
        s["test_nll"], abs=1e-3)
