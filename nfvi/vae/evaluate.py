"""Evaluation of a trained flow VAE: -ELBO and the importance-weighted NLL, with errors."""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

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
    #: samples per point behind ``neg_elbo``, ``recon``, ``kl`` (the IS samples)
    elbo_samples: int = 1
    chunk: int = 0  # samples per example per pass of the IS estimate
    #: peak memory of the evaluation in MiB: CUDA memory allocated on a GPU, else the
    #: process's peak resident set (which includes everything loaded before)
    peak_memory_mb: float = math.nan
    memory_kind: str = ""
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


def activation_bytes(model: FlowVAE, x: Tensor) -> int:
    """Bytes of the outputs of every module below ``model`` (containers aside) in one
    ``-ELBO`` pass of the single example ``x [1, P]``: an upper bound on what one more
    importance sample per example adds to a pass (inference frees most as it goes)."""
    total = 0

    def hook(module, args, out) -> None:
        nonlocal total
        outs = out if isinstance(out, tuple | list) else (out,)
        total += sum(o.numel() * o.element_size() for o in outs if isinstance(o, Tensor))

    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if m is not model and not isinstance(m, containers)]
    devices = [x.device] if x.device.type == "cuda" else []
    try:  # on a forked RNG: the probe's noise leaves the evaluation's draws as they were
        with torch.inference_mode(), torch.random.fork_rng(devices=devices):
            model.elbo(x)
    finally:
        for h in handles:
            h.remove()
    return total


def choose_chunk(model: FlowVAE, x: Tensor, batch_size: int, samples: int,
                 memory_gb: float) -> int:
    """Samples per example per pass so that ``batch_size`` examples fit ``memory_gb`` GiB:
    ``floor(memory_gb 2^30 / (batch_size * activation_bytes))``, within ``[1, samples]``."""
    per_sample = max(1, activation_bytes(model, x[:1]))
    return int(min(samples, max(1, (memory_gb * 2**30) // (batch_size * per_sample))))


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process_peak_rss"


@torch.no_grad()
def evaluate(
    model: FlowVAE,
    x: Tensor,
    iw_samples: int,
    chunk: int,
    batch_size: int,
    seed: int,
    memory_gb: float | None = None,
) -> EvalResult:
    """-ELBO and ``-ln p(x)`` over data ``x [N, P]``, both from the same ``iw_samples``
    samples of q_K per point (:meth:`FlowVAE.iw_nll`): the IS bound, and the ELBO as the mean
    log-weight (recorded as ``elbo_samples``; before, -ELBO came from one sample per point).

    Runs under :func:`seeded_eval` and ``torch.inference_mode``; with ``memory_gb`` the IS
    passes take :func:`choose_chunk` samples per example instead of ``chunk``.
    """
    start = time.perf_counter()
    if x.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(x.device)
    with seeded_eval(model, x.device, seed), torch.inference_mode():
        if memory_gb is not None:
            chunk = choose_chunk(model, x, batch_size, iw_samples, memory_gb)
        est = [model.iw_nll(x[i : i + batch_size], iw_samples, chunk)
               for i in range(0, x.shape[0], batch_size)]
        nll = torch.cat([e.nll for e in est])
        # -ELBO and its terms from the IS samples: the same expectation as one sample per
        # point, with S times less variance (the paired gap's standard error is then the
        # spread of the gap over points, not the noise of a one-sample ELBO)
        neg_elbo = torch.cat([e.neg_elbo for e in est])
        recon = torch.cat([e.recon for e in est])
        kl = neg_elbo - recon
    peak, kind = _peak_memory(x.device)
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
        elbo_samples=iw_samples,
        seconds=time.perf_counter() - start,
        chunk=min(chunk, iw_samples),
        peak_memory_mb=peak,
        memory_kind=kind,
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
