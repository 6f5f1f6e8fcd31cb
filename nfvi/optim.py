"""Optimizers by name, from the ``optim`` config group."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from nfvi.errors import ConfigError

#: devices where torch's fused Adam kernel exists in every build nfvi supports
_FUSED_DEVICES = ("cpu", "cuda")


def _adam(params, c):
    params = list(params)
    kw = dict(lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay)
    fused = getattr(c, "fused", None)
    if fused is None:  # auto: torch's one-kernel update (about 5x foreach's speed on a CPU)
        fused = all(p.is_floating_point() and p.device.type in _FUSED_DEVICES for p in params)
    return torch.optim.Adam(params, fused=bool(fused), **kw)


def _adamax(params, c):
    return torch.optim.Adamax(params, lr=c.lr, betas=tuple(c.betas), eps=c.eps,
                              weight_decay=c.weight_decay)


def _rmsprop(params, c):
    return torch.optim.RMSprop(params, lr=c.lr, alpha=c.alpha, eps=c.eps, momentum=c.momentum,
                               weight_decay=c.weight_decay)


OPTIMIZERS = {"adam": _adam, "adamax": _adamax, "rmsprop": _rmsprop}
#: the optimizers that take ``optim.fused=true`` (torch has a fused kernel for them)
FUSABLE = frozenset({"adam"})


def check_fused(optim_cfg) -> None:
    """``optim.fused=true`` only where torch has a fused kernel (:data:`FUSABLE`)."""
    name = str(optim_cfg.name)
    if getattr(optim_cfg, "fused", None) and name not in FUSABLE:
        raise ConfigError(f"optim.fused=true: torch has no fused {name}; use optim.fused=null "
                          f"(or optim={', optim='.join(sorted(FUSABLE))})")


def build_optimizer(params: Iterable[torch.nn.Parameter], optim_cfg) -> torch.optim.Optimizer:
    name = str(optim_cfg.name)
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; use optim= one of {', '.join(OPTIMIZERS)}")
    check_fused(optim_cfg)
    return OPTIMIZERS[name](params, optim_cfg)


#: the optimizer settings of each param group that ``optim.*`` sets, by optimizer name
_HYPER = {"adam": ("lr", "betas", "eps", "weight_decay"),
          "adamax": ("lr", "betas", "eps", "weight_decay"),
          "rmsprop": ("lr", "alpha", "eps", "momentum", "weight_decay")}


def set_hyperparameters(optimizer: torch.optim.Optimizer, optim_cfg) -> None:
    """Set ``optim_cfg``'s values on every param group (a resumed run: loading the optimizer's
    state brings the saved values back, and the command's ``optim.*`` must win)."""
    for key in _HYPER[str(optim_cfg.name)]:
        value = getattr(optim_cfg, key)
        for group in optimizer.param_groups:
            group[key] = tuple(value) if key == "betas" else value
