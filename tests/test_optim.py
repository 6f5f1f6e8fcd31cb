"""build_optimizer / OPTIMIZERS: the optim config group as torch optimizers."""

import pytest
import torch

from nfvi.config import OptimConfig, OptimName
from nfvi.optim import OPTIMIZERS, build_optimizer


def _param():
    return torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))


def test_registry_names():
    assert set(OPTIMIZERS) == {"adam", "adamax", "rmsprop"}
    assert set(OPTIMIZERS) == {m.value for m in OptimName}


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        (OptimName.adam, torch.optim.Adam),
        (OptimName.adamax, torch.optim.Adamax),
        (OptimName.rmsprop, torch.optim.RMSprop),
        ("adam", torch.optim.Adam),
        ("adamax", torch.optim.Adamax),
        ("rmsprop", torch.optim.RMSprop),
    ],
)
def test_builds_the_right_class(name, cls):
    opt = build_optimizer([_param()], OptimConfig(name=name))
    assert type(opt) is cls


@pytest.mark.parametrize("name", [OptimName.adam, OptimName.adamax])
def test_adam_family_hyperparameters(name):
    cfg = OptimConfig(name=name, lr=3e-4, betas=[0.8, 0.95], eps=1e-6, weight_decay=0.01)
    group = build_optimizer([_param()], cfg).param_groups[0]
    assert group["lr"] == 3e-4
    assert tuple(group["betas"]) == (0.8, 0.95)
    assert group["eps"] == 1e-6
    assert group["weight_decay"] == 0.01


def test_rmsprop_hyperparameters():
    cfg = OptimConfig(
        name=OptimName.rmsprop, lr=0.05, alpha=0.9, eps=1e-5, momentum=0.7, weight_decay=0.001
    )
    group = build_optimizer([_param()], cfg).param_groups[0]
    assert group["lr"] == 0.05
    assert group["alpha"] == 0.9
    assert group["eps"] == 1e-5
    assert group["momentum"] == 0.7
    assert group["weight_decay"] == 0.001


def test_defaults_come_from_the_config():
    group = build_optimizer([_param()], OptimConfig()).param_groups[0]
    assert group["lr"] == 1e-3
    assert tuple(group["betas"]) == (0.9, 0.999)
    assert group["eps"] == 1e-8
    assert group["weight_decay"] == 0.0


def test_all_parameters_are_registered():
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model.parameters(), OptimConfig(name=OptimName.adamax))
    params = opt.param_groups[0]["params"]
    assert len(params) == 2
    assert {id(p) for p in params} == {id(model.weight), id(model.bias)}


@pytest.mark.parametrize("name", list(OptimName))
def test_one_step_moves_the_parameter_downhill(name):
    p = _param()
    before = p.detach().clone()
    opt = build_optimizer([p], OptimConfig(name=name, lr=0.1))
    loss = (p**2).sum()  # gradient 2p: every coordinate must move towards 0
    loss.backward()
    opt.step()
    after = p.detach()
    assert not torch.equal(after, before)
    assert torch.all(after.abs() < before.abs())
    if name in (OptimName.adam, OptimName.adamax):
        # the first Adam/Adamax step is lr * sign(grad) (bias-corrected, eps ~ 0)
        torch.testing.assert_close(after, before - 0.1 * before.sign(), atol=1e-6, rtol=0)


def test_unknown_name_raises():
    # today a bare KeyError (Hydra's enum check normally catches this first)
    with pytest.raises(Exception, match="sgd"):
        build_optimizer([_param()], OptimConfig(name="sgd"))


def test_adam_is_fused_by_default_and_steps_like_the_unfused_update():
    """``optim.fused=null`` picks torch's fused Adam on the CPU; it updates like the
    for-each implementation (to rounding) over several steps."""
    torch.manual_seed(0)
    w = torch.randn(50, 7, dtype=torch.float64)
    grads = [torch.randn(50, 7, dtype=torch.float64) for _ in range(5)]
    out = {}
    for fused in (None, False):
        p = torch.nn.Parameter(w.clone())
        opt = build_optimizer([p], OptimConfig(fused=fused, weight_decay=0.01))
        assert opt.param_groups[0]["fused"] is (fused is None)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        out[fused] = p.detach()
    assert not torch.equal(out[None], w)
    torch.testing.assert_close(out[None], out[False], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", [OptimName.adamax, OptimName.rmsprop])
def test_fused_is_refused_where_torch_has_no_fused_kernel(name):
    from nfvi.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"optim.fused=true: torch has no fused {name}"):
        build_optimizer([_param()], OptimConfig(name=name, fused=True))
