"""Optimizers by name, from the ``optim`` config group."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from nfvi.errors import ConfigError


def _adam(params, c):
    return torch.optim.Adam(params, lr=c.lr, betas=tuple(c.betas), eps=c.eps,
                            weight_decay=c.weight_decay)


def _adamax(params, c):
    return torch.optim.Adamax(params, lr=c.lr, betas=tuple(c.betas), eps=c.eps,
                              weight_decay=c.weight_decay)


def _rmsprop(params, c):
    return torch.optim.RMSprop(params, lr=c.lr, alpha=c.alpha, eps=c.eps, momentum=c.momentum,
                               weight_decay=c.weight_decay)


OPTIMIZERS = {"adam": _adam, "adamax": _adamax, "rmsprop": _rmsprop}


def build_optimizer(params: Iterable[torch.nn.Parameter], optim_cfg) -> torch.optim.Optimizer:
    name = str(optim_cfg.name)
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; use optim= one of {', '.join(OPTIMIZERS)}")
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
