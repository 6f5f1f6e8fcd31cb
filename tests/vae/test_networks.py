"""nfvi.vae.networks: the maxout layer."""

from __future__ import annotations

import torch

from nfvi.vae.networks import Maxout


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
