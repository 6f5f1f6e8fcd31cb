"""What the posterior flow of a trained VAE run does, layer by layer (issue: why amortized
flows hurt).

For ``--examples`` validation images (the run's fixed bits) it encodes, samples ``z_0`` and
pushes it through the K layers, and prints per run: the median and maximum over examples of
``||z_K - z_0||``, of the summed log-determinant, of the largest single-layer step
``max_k ||z_k - z_(k-1)||``; for planar flows also the smallest ``||w_k(x)||`` and the largest
``||u_hat_k(x)||`` (the ``1 / ||w||^2`` term of the invertibility constraint) and the smallest
``w_k^T u_hat_k`` (``-1`` is the edge of invertibility: the log-determinant's singularity); and
the norm of
the encoder features ``h(x)`` that the amortized head reads.

    python benchmarks/flow_diagnostics.py RUN_DIR [RUN_DIR ...] [--checkpoint last.pt]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.console import Console

from nfvi.checkpoint import load_checkpoint
from nfvi.config import from_saved, typed
from nfvi.flows.planar import Planar
from nfvi.vae.model import FlowVAE
from nfvi.vae.run import eval_inputs, load_data


def stats(run: Path, checkpoint: str, n: int) -> dict:
    ckpt = load_checkpoint(run / "checkpoints" / checkpoint)
    cfg = typed(from_saved(ckpt["config"]))
    data = load_data(cfg, Console(quiet=True))
    x = eval_inputs(cfg, data, "val", torch.device("cpu"), n)
    model = FlowVAE.from_config(cfg, x.shape[1], data.image_shape)
    model.load_state_dict(ckpt["model"])
    torch.manual_seed(0)
    with torch.no_grad():
        post = model.encode(x)
        z = post.mu + torch.exp(0.5 * post.log_var) * torch.randn_like(post.mu)
        z0, total, steps = z, z.new_zeros(len(z)), [z.new_zeros(len(z))]
        w_min, u_max = z.new_full((len(z),), float("inf")), z.new_zeros(len(z))
        wu_min = z.new_full((len(z),), float("inf"))
        flow = model.flow
        params = flow.layer_params(len(z), post.features) if len(flow.layers) else []
        for layer, p in zip(flow.layers, params, strict=True):
            if isinstance(layer, Planar):
                w = p["w"].expand_as(z)
                w_min = torch.minimum(w_min, w.norm(dim=-1))
                u_hat = layer.constrained_u(p["u"].expand_as(z), w)
                u_max = torch.maximum(u_max, u_hat.norm(dim=-1))
                wu_min = torch.minimum(wu_min, (w * u_hat).sum(-1))
            z_next, ld = layer(z, p)
            steps.append((z_next - z).norm(dim=-1))
            total, z = total + ld, z_next
    step = torch.stack(steps).amax(0)
    out = {"run": f"{cfg.flow.name} K={cfg.K} step {ckpt['state']['step']}",
           "|z_K - z_0|": (z - z0).norm(dim=-1), "sum log-det": total, "max layer step": step,
           "|h(x)|": post.features.norm(dim=-1)}
    if torch.isfinite(w_min).any():
        out |= {"min |w|": w_min, "max |u_hat|": u_max, "min w.u_hat": wu_min}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--checkpoint", default="last.pt")
    ap.add_argument("--examples", type=int, default=1000)
    args = ap.parse_args()
    for run in args.runs:
        s = stats(run, args.checkpoint, args.examples)
        print(f"\n{s.pop('run')}  ({run})")
        print(f"{'':>16} {'median':>10} {'max':>10} {'min':>10}")
        for key, v in s.items():
            print(f"{key:>16} {v.median().item():>10.3g} {v.max().item():>10.3g} "
                  f"{v.min().item():>10.3g}")


if __name__ == "__main__":
    main()
