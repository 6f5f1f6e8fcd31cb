"""Evaluation of a trained flow VAE: -ELBO and the importance-weighted NLL, with errors."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nfvi.runtime import seeded_eval
from nfvi.vae.model import FlowVAE


@dataclass
class EvalResult:
    """Means over examples (nats per example) and their standard errors."""

    neg_elbo: float
    neg_elbo_stderr: float
    nll: float
    nll_stderr: float
    recon: float
    kl: float
    examples: int
    iw_samples: int
    seconds: float
    #: per test point, in the order of the split: "neg_elbo" and "nll" (for paired comparisons)
    per_example: dict[str, list[float]] = field(default_factory=dict)


def _mean_stderr(v: Tensor) -> tuple[float, float]:
    n = v.numel()
    mean = v.mean().item()
    stderr = (v.std(unbiased=True) / math.sqrt(n)).item() if n > 1 else float("nan")
    return mean, stderr


@torch.no_grad()
def negative_elbo(model: FlowVAE, x: Tensor, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-example ``(-ELBO, recon, kl)`` at beta = 1, one z sample each; ``x [N, P]``."""
    out = [model.elbo(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return (
        torch.cat([o.neg_elbo for o in out]),
        torch.cat([o.recon for o in out]),
        torch.cat([o.kl for o in out]),
    )


@torch.no_grad()
def evaluate(
    model: FlowVAE,
    x: Tensor,
    iw_samples: int,
    chunk: int,
    batch_size: int,
    seed: int,
) -> EvalResult:
    """-ELBO and ``-ln p(x)`` (``iw_samples`` importance samples) over binary data ``x [N, P]``.

    Runs under :func:`seeded_eval`.
    """
    start = time.perf_counter()
    with seeded_eval(model, x.device, seed):
        neg_elbo, recon, kl = negative_elbo(model, x, batch_size)
        nll = torch.cat(
            [
                model.iw_nll(x[i : i + batch_size], iw_samples, chunk).nll
                for i in range(0, x.shape[0], batch_size)
            ]
        )
    elbo_m, elbo_se = _mean_stderr(neg_elbo)
    nll_m, nll_se = _mean_stderr(nll)
    return EvalResult(
        neg_elbo=elbo_m,
        neg_elbo_stderr=elbo_se,
        nll=nll_m,
        nll_stderr=nll_se,
        recon=recon.mean().item(),
        kl=kl.mean().item(),
        examples=x.shape[0],
        iw_samples=iw_samples,
        seconds=time.perf_counter() - start,
        per_example={"neg_elbo": neg_elbo.double().tolist(), "nll": nll.double().tolist()},
    )


@torch.no_grad()
def validation_neg_elbo(model: FlowVAE, x: Tensor, batch_size: int, seed: int) -> dict:
    """Mean ``-ELBO``, recon and KL over ``x`` under :func:`seeded_eval`."""
    with seeded_eval(model, x.device, seed):
        neg_elbo, recon, kl = negative_elbo(model, x, batch_size)
    return {
        "neg_elbo": neg_elbo.mean().item(),
        "recon": recon.mean().item(),
        "kl": kl.mean().item(),
    }
