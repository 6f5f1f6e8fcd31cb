"""Deterministic networks of the DLGM-style VAE (Rezende & Mohamed 2015, section 6.2)."""

from __future__ import annotations

from torch import Tensor, nn


class Maxout(nn.Module):
    """``y_j = max_{i < pool} (W x + b)_{j * pool + i}``: ``[B, in] -> [B, out]``."""

    def __init__(self, in_features: int, out_features: int, pool: int) -> None:
        super().__init__()
        self.out_features, self.pool = out_features, pool
        self.linear = nn.Linear(in_features, out_features * pool)

    def forward(self, x: Tensor) -> Tensor:
        y = self.linear(x)
        return y.view(*y.shape[:-1], self.out_features, self.pool).amax(-1)


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU}


def mlp(in_features: int, hidden: list[int], activation: str, pool: int) -> nn.Sequential:
    """Hidden layers only: ``[B, in] -> [B, hidden[-1]]`` (``in`` when ``hidden`` is empty)."""
    activation = str(activation)
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        if activation == "maxout":
            layers.append(Maxout(width, h, pool))
        else:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        width = h
    return nn.Sequential(*layers)
