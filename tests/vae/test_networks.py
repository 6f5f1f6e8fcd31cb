"""nfvi.vae.networks: the maxout layer, with its compiled kernels and with torch's slices."""

from __future__ import annotations

import pytest
import torch

from nfvi import native
from nfvi.vae.networks import Maxout, _WindowMax


@pytest.fixture(autouse=True, params=["torch-slices", "native"])
def backend(request):
    """Maxout's window max on the CPU: torch's strided slices or the compiled kernel."""
    if request.param == "native" and native.library() is None:
        pytest.skip(native.status())
    was = native.enabled()
    native.set_enabled(request.param == "native")
    yield request.param
    native.set_enabled(was)


def test_maxout_is_the_max_over_each_window_and_routes_the_gradient_to_it():
    """``y_j = max_i (W x + b)_{j pool + i}``; the gradient reaches only each window's argmax,
    as the elementwise definition (``amax``) gives it when there are no ties."""
    torch.manual_seed(0)
    layer = Maxout(5, 3, 4).double()
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(7, 3, dtype=torch.float64)
    y = layer(x)
    pre = layer.linear(x).view(7, 3, 4)
    torch.testing.assert_close(y, pre.amax(-1), rtol=0, atol=0)
    grads = torch.autograd.grad(y, (x, layer.linear.weight), g)
    want = torch.autograd.grad(pre.amax(-1), (x, layer.linear.weight), g)
    for got, ref in zip(grads, want, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    # only the rows of W that won a window for some example get a gradient
    won = {j * 4 + int(i) for j in range(3) for i in pre.argmax(-1)[:, j]}
    assert {int(r) for r in torch.nonzero(grads[1].abs().sum(1))} == won


def test_maxout_without_grad_gives_the_same_values():
    """The evaluation path (no autograd) and the training path agree with the reduction."""
    torch.manual_seed(1)
    layer = Maxout(6, 5, 3)
    x = torch.randn(4, 2, 6)
    with torch.inference_mode():
        y = layer(x)
        ref = layer.linear(x).view(4, 2, 5, 3).max(-1).values
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    torch.testing.assert_close(layer(x), ref, rtol=0, atol=0)


def test_maxout_with_pool_one_is_the_linear_layer():
    """pool = 1 is a plain linear layer, values and gradients."""
    torch.manual_seed(2)
    layer = Maxout(3, 2, 1).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(layer(x), layer.linear(x), rtol=0, atol=0)
    assert torch.autograd.gradcheck(layer, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_and_nans_as_torch_maximum_gives_them(dtype):
    """Every entry tied for its window's max gets the gradient; a NaN in a window is its max
    (and routes no gradient), as torch.maximum and ``==`` make it on the slice path."""
    v = torch.tensor([[[1.0, 3.0, 3.0, 0.0], [float("nan"), 1.0, 2.0, 0.0],
                       [-1.0, -2.0, float("nan"), -1.0], [2.0, 2.0, 2.0, 2.0]]],
                     dtype=dtype, requires_grad=True)
    y = _WindowMax.apply(v)
    assert y[0, 0] == 3 and y[0, 1].isnan() and y[0, 2].isnan() and y[0, 3] == 2
    (g,) = torch.autograd.grad(y, v, torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=dtype))
    want = torch.tensor([[[0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [4, 4, 4, 4]]], dtype=dtype)
    torch.testing.assert_close(g, want, rtol=0, atol=0)


@pytest.mark.parametrize("pool", [2, 3, 4, 5])
def test_a_nan_anywhere_in_a_window_is_its_max(pool):
    """NaN wins wherever it sits (the kernels special-case pool 4); other windows untouched."""
    torch.manual_seed(pool)
    v = torch.randn(3, pool, pool)
    for i in range(pool):
        v[1, i, i] = float("nan")
    y = _WindowMax.apply(v.clone().requires_grad_())
    assert y[1].isnan().all() and not y[[0, 2]].isnan().any()
    torch.testing.assert_close(y[[0, 2]], v[[0, 2]].amax(-1), rtol=0, atol=0)
