"""binarize / fixed_binarization: values, statistics, reproducibility, dtype and device."""

import pytest
import torch

from nfvi.data import binarize, fixed_binarization
from nfvi.errors import ConfigError


@pytest.fixture
def grey():
    return torch.rand(500, 784, generator=torch.Generator().manual_seed(0))


def test_dynamic_is_binary_with_the_grey_mean(grey):
    b = binarize(grey, "dynamic", generator=torch.Generator().manual_seed(1))
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    # 392,000 draws: the std of the mean is ~0.0005
    assert abs(b.mean().item() - grey.mean().item()) < 0.005
    # per-pixel: bright pixels are on more often than dark ones
    assert b[grey > 0.9].mean() > 0.85
    assert b[grey < 0.1].mean() < 0.15


def test_dynamic_extremes_are_exact():
    x = torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert torch.equal(binarize(x, "dynamic"), x)


def test_dynamic_seeded_generator_reproducible(grey):
    a = binarize(grey, "dynamic", generator=torch.Generator().manual_seed(7))
    b = binarize(grey, "dynamic", generator=torch.Generator().manual_seed(7))
    c = binarize(grey, "dynamic", generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_dynamic_redraws_each_call(grey):
    gen = torch.Generator().manual_seed(0)
    assert not torch.equal(binarize(grey, "dynamic", gen), binarize(grey, "dynamic", gen))


def test_threshold_is_deterministic():
    x = torch.tensor([[0.0, 0.3, 0.5, 0.51, 1.0]])
    assert torch.equal(binarize(x, "threshold"), torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0]]))
    assert torch.equal(
        binarize(x, "threshold", threshold=0.2), torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0]])
    )


@pytest.mark.parametrize("mode", ["dynamic", "threshold"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_shape_follow_input(mode, dtype):
    x = torch.rand(3, 1, 28, 28, dtype=dtype)
    for out in (binarize(x, mode), fixed_binarization(x, mode, seed=0)):
        assert out.dtype == dtype
        assert out.shape == x.shape
        assert out.device == x.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["dynamic", "threshold"])
def test_device_follows_input(mode):
    x = torch.rand(4, 784, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0) if mode == "dynamic" else None
    assert binarize(x, mode, generator=gen).device == x.device
    fixed = fixed_binarization(x, mode, seed=3)
    assert fixed.device == x.device
    # the fixed binarization does not depend on the device
    assert torch.equal(fixed.cpu(), fixed_binarization(x.cpu(), mode, seed=3))


def test_fixed_binarization_depends_only_on_seed(grey):
    torch.manual_seed(123)
    a = fixed_binarization(grey, "dynamic", seed=5)
    torch.manual_seed(456)  # the global RNG state must not matter
    assert torch.equal(a, fixed_binarization(grey, "dynamic", seed=5))
    assert not torch.equal(a, fixed_binarization(grey, "dynamic", seed=6))
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(fixed_binarization(grey, "threshold", seed=5), binarize(grey, "threshold"))


def test_fixed_binarization_leaves_global_rng_alone(grey):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    fixed_binarization(grey, "dynamic", seed=1)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    "fn", [lambda x: binarize(x, "stochastic"), lambda x: fixed_binarization(x, "sto", seed=0)]
)
def test_unknown_mode(fn):
    with pytest.raises(ConfigError, match="unknown binarization mode"):
        fn(torch.rand(2))


def test_none_keeps_the_grey_levels():
    x = torch.rand(3, 5)
    assert binarize(x, "none") is x
    assert torch.equal(fixed_binarization(x, "none", seed=0), x)


def test_threshold_argument_is_used_not_the_default():
    # 0.35, 0.4 and 0.5 lie between 0.3 and 0.5: on at threshold 0.3, off at the default 0.5
    x = torch.tensor([[0.0, 0.2, 0.3, 0.35, 0.4, 0.5, 0.6, 1.0]])
    at_03 = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    at_05 = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]])
    assert torch.equal(binarize(x, "threshold", threshold=0.3), at_03)
    assert torch.equal(binarize(x, "threshold"), at_05)
    for seed in (0, 1, 99):
        assert torch.equal(fixed_binarization(x, "threshold", seed, threshold=0.3), at_03)
        assert torch.equal(fixed_binarization(x, "threshold", seed), at_05)
