"""Split a trained model's inference gap into its amortization and approximation parts (issue 10).

Cremer, Li & Duvenaud (2018, "Inference suboptimality in variational autoencoders") write the
gap of an amortized posterior q(z|x) on a fixed model as

    -ELBO[q_amortized] - (-ln p(x))
        = (-ELBO[q_amortized] + ELBO[q*])      amortization gap: the encoder's per-point error
        + (-ELBO[q*] - (-ln p(x)))             approximation gap: the best member of the family

where ``q*`` is the member of the same variational family fitted to each data point alone.
A flow can only remove the approximation part; the amortization part is the encoder's (and
the flow head's) error, which a longer flow does not shrink by being longer. This script takes
trained runs (their ``best.pt``), keeps every weight frozen, and on the first ``--examples``
test images (each run's fixed test bits, so pair runs of the same seed) fits per point:

- ``local``: the run's own family with per-point free parameters: q0's ``mu, log_var`` and,
  for an amortized flow, the flow's context ``h`` (the 400 features its head reads), started
  at the encoder's output. This family contains the amortized posterior, so its optimum can
  only be better; for K = 0 it is the diagonal Gaussian q*_FFG.
- ``gauss``: a diagonal Gaussian per point with the flow removed (q*_FFG on this run's
  decoder), started at the mean and variance of the amortized q_K's samples: how far the
  model's true posterior is from Gaussian. For K = 0 it equals ``local``. A decoder trained
  with a flow whose posteriors are *less* Gaussian than K = 0's shows that the generative
  model accommodated the flow (Cremer et al.'s finding).

Each fit is ``--steps`` Adam updates (rate ``--lr``; ``--gauss-steps``, ``--gauss-lr`` for the
flow-free fit; cosine decay to 0) of the ``--train-samples``-sample ELBO, all points at once;
then the S-sample -ELBO with each posterior. ``-ln p(x)`` is the importance-weighted estimate
(``--S`` samples) with the ``local`` fit as proposal: the best proposal here by its bound, so
the tightest of the estimates (the amortized proposal's is printed beside it).

    python benchmarks/gap_decomposition.py K0_RUN K40_RUN --examples 200 --steps 600 --S 1000

Prints one row per run (means over the points, nats) and, against the first run, the paired
differences of each part with their standard errors over the points.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from torch import Tensor

from nfvi.checkpoint import load_checkpoint
from nfvi.config import from_saved, typed
from nfvi.vae.model import FlowVAE, log_normal_diag, log_normal_std
from nfvi.vae.run import build_model, eval_inputs, load_data


@dataclass
class Proposal:
    """Per-point posterior parameters ``mu, log_var [B, D]``, flow context ``h [B, H]``
    (``None``: no flow)."""

    mu: Tensor
    log_var: Tensor
    h: Tensor | None


def log_weights(model: FlowVAE, x: Tensor, q: Proposal, n: int) -> Tensor:
    """``ln p(x, z_s) - ln q(z_s|x)`` ``[n, B]`` for ``n`` reparameterized samples per point:
    the model's own IS pass (:meth:`FlowVAE.iw_log_weights`) with ``h`` as the flow's context,
    or, with ``h`` None, the diagonal Gaussian alone (no flow)."""
    if q.h is not None:
        return model.iw_log_weights(x, q.mu, q.log_var, q.h, n)[0]
    B, D = q.mu.shape
    mu, log_var = q.mu.repeat(n, 1), q.log_var.repeat(n, 1)
    z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
    log_lik = model.log_likelihood(x.repeat(n, 1), z)
    return (log_lik + log_normal_std(z) - log_normal_diag(z, mu, log_var)).view(n, B)


@torch.no_grad()
def estimates(model: FlowVAE, x: Tensor, q: Proposal, S: int, chunk: int) -> tuple[Tensor, Tensor]:
    """Per point ``(-ELBO, NLL)`` ``[B]`` from the same ``S`` samples of ``q``."""
    lw = torch.cat([log_weights(model, x, q, min(chunk, S - s)) for s in range(0, S, chunk)])
    return -lw.mean(0), -(torch.logsumexp(lw, 0) - math.log(S))


def fit(model: FlowVAE, x: Tensor, q: Proposal, steps: int, lr: float, samples: int,
        fit_h: bool = True) -> Proposal:
    """Maximize each point's ``samples``-sample ELBO over its own ``q`` (the model frozen);
    ``fit_h=False`` keeps the flow's context at ``q.h`` and fits q0's ``mu, log_var`` only."""
    params = [t.detach().clone().requires_grad_(True) for t in (q.mu, q.log_var, q.h)
              if t is not None]
    trained = params if fit_h else params[:2]
    opt = torch.optim.Adam(trained, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        p = Proposal(params[0], params[1], params[2] if len(params) > 2 else None)
        # sum over points: each point's parameters get the gradient of its own ELBO
        loss = -log_weights(model, x, p, samples).mean(0).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            params[1].clamp_(min=model.min_log_var)
    done = [t.detach() for t in params]
    return Proposal(done[0], done[1], done[2] if len(done) > 2 else None)


@torch.no_grad()
def moment_match(model: FlowVAE, post, n: int = 256) -> Proposal:
    """A diagonal Gaussian with the mean and variance of ``n`` samples of the amortized
    ``q_K(z|x)``: where the flow-free fit starts (q0's own ``mu, log_var`` live before the
    flow, in z_0's coordinates, and can be far from z_K's)."""
    B, D = post.mu.shape
    rep = type(post)(post.mu.repeat(n, 1), post.log_var.repeat(n, 1), post.features)
    zk = model.sample_posterior(rep, repeat=n).zk.view(n, B, D)
    return Proposal(zk.mean(0), zk.var(0).log().clamp_min(model.min_log_var), None)


def decompose(run: Path, a: argparse.Namespace) -> tuple[str, dict[str, Tensor], float]:
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    cfg = typed(from_saved(ckpt["config"]))
    data = load_data(cfg, Console(quiet=True))
    x = eval_inputs(cfg, data, "test", torch.device("cpu"), a.examples)
    model = build_model(cfg, data)
    model.load_state_dict(ckpt["model"])
    model.eval()
    model.requires_grad_(False)
    start = time.perf_counter()
    torch.manual_seed(a.seed)
    with torch.no_grad():
        post = model.encode(x)
    flow_h = post.features if cfg.K > 0 else None
    amortized = Proposal(post.mu, post.log_var, flow_h)
    out: dict[str, Tensor] = {}
    out["elbo_amortized"], nll_a = estimates(model, x, amortized, a.S, a.chunk)
    local = fit(model, x, amortized, a.steps, a.lr, a.train_samples)
    out["elbo_local"], nll_l = estimates(model, x, local, a.S, a.chunk)
    if a.split and flow_h is not None:
        q0_only = fit(model, x, amortized, a.steps, a.lr, a.train_samples, fit_h=False)
        out["elbo_q0"], _ = estimates(model, x, q0_only, a.S, a.chunk)
    if cfg.K > 0:
        gauss = fit(model, x, moment_match(model, post), a.gauss_steps, a.gauss_lr,
                    a.train_samples)
        out["elbo_gauss"], _ = estimates(model, x, gauss, a.S, a.chunk)
    else:
        out["elbo_gauss"] = out["elbo_local"]
    out["nll"] = nll_l
    out["nll_amortized"] = nll_a
    flow = "none" if cfg.K == 0 else cfg.flow.name
    return f"{flow} K={cfg.K} seed={cfg.seed}", out, time.perf_counter() - start


def parts(v: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per point: the total gap and its split, against the local proposal's NLL estimate."""
    return {
        "gap": v["elbo_amortized"] - v["nll"],
        "amortization": v["elbo_amortized"] - v["elbo_local"],
        "approximation": v["elbo_local"] - v["nll"],
        "gauss approximation": v["elbo_gauss"] - v["nll"],
        # --split: the amortization gap's part that fitting q0 alone (the head's context
        # kept at the encoder's h) removes, and the rest, which needs the context fitted too
        "amortization, q0": v["elbo_amortized"] - v.get("elbo_q0", v["elbo_local"]),
        "amortization, head": v.get("elbo_q0", v["elbo_local"]) - v["elbo_local"],
    }


def mean_se(v: Tensor) -> str:
    return f"{v.mean().item():+.3f} ± {(v.std() / v.numel() ** 0.5).item():.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="run directories; the first is the baseline")
    ap.add_argument("--examples", type=int, default=200)
    ap.add_argument("--steps", type=int, default=500, help="Adam updates of each per-point fit")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--gauss-steps", type=int, default=1000,
                    help="updates of the flow-free fit (it starts further from its optimum)")
    ap.add_argument("--gauss-lr", type=float, default=0.05)
    ap.add_argument("--train-samples", type=int, default=8, help="samples per point per update")
    ap.add_argument("--S", type=int, default=1000, help="importance samples per point")
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--split", action="store_true",
                    help="also fit q0's mu, log_var alone (the flow's context kept at the "
                         "encoder's): splits the amortization gap into q0's part and the head's")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    results = [decompose(r, a) for r in a.runs]
    cols = ["gap", "amortization", "approximation", "gauss approximation"]
    if a.split:
        cols += ["amortization, q0", "amortization, head"]
    head = ["run", "-ELBO amortized", "-ELBO local", "-ELBO gauss", "NLL (local IS)",
            "NLL (amortized IS)"]
    head += [f"{c} gap" if c != "gap" else "gap" for c in cols] + ["s"]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for label, v, sec in results:
        p = parts(v)
        cells = [label] + [f"{v[k].mean():.2f}" for k in
                           ("elbo_amortized", "elbo_local", "elbo_gauss", "nll", "nll_amortized")]
        cells += [f"{p[c].mean():.3f}" for c in cols] + [f"{sec:.0f}"]
        print("| " + " | ".join(cells) + " |")
    base_label, base, _ = results[0]
    pb = parts(base)
    print(f"\npaired against {base_label} (per test point, mean ± standard error):\n")
    print("| run | " + " | ".join(f"{c} diff" for c in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for label, v, _ in results[1:]:
        p = parts(v)
        print("| " + " | ".join([label] + [mean_se(p[c] - pb[c]) for c in cols]) + " |")
    print(f"\n{a.examples} test images; local fits {a.steps} updates at lr {a.lr}, flow-free fits "
          f"{a.gauss_steps} at {a.gauss_lr} (Adam, cosine), {a.train_samples}-sample ELBOs; "
          f"S = {a.S}, seed {a.seed}")


if __name__ == "__main__":
    main()
