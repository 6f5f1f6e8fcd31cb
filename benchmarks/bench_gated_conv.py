"""Training throughput and importance-sampling cost of the gated-conv VAE (model=gated_conv).

Prints a markdown table: training steps/s and examples/s (forward, backward and an Adamax step,
the paper's optimizer, at batch 100) for K = 0 and for a flow (sylvester_orthogonal by default,
with its shipped config), and the seconds per test point of the importance-weighted NLL at
S = 5000 (``model.iw_nll``). The model is van den Berg et al. 2018's for 1x28x28 binary images
(64 latents, 256 encoder features), built from the composed config as ``nfvi train
model=gated_conv flow=... K=...`` builds it. Runs on the CPU, and on CUDA when present.

    python benchmarks/bench_gated_conv.py [--steps 10] [--iw-points 2] [--flow planar]
        [--K 0 4] [--shape 1 28 28] [--threads N] [--device cpu]

Figures come from one process, so compare ratios within a run: shared machines are noisy.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from nfvi.config import compose_config, typed
from nfvi.vae.model import FlowVAE


def build(flow: str, K: int, shape: tuple[int, int, int], device: torch.device) -> FlowVAE:
    cfg = typed(compose_config("model=gated_conv", f"flow={flow}", f"K={K}"))
    torch.manual_seed(0)
    return FlowVAE.from_config(cfg, math.prod(shape), shape).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(model: FlowVAE, device: torch.device, steps: int, batch: int) -> float:
    """Optimizer steps per second on one fixed binary batch."""
    opt = torch.optim.Adamax(model.parameters(), lr=5e-4, eps=1e-7)  # the paper's settings
    x = torch.bernoulli(torch.full((batch, model.data_dim), 0.13, device=device))

    def step() -> None:
        loss = model.elbo(x, beta=0.5).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up (cuDNN picks its algorithms here)
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps / (time.perf_counter() - t0)


@torch.no_grad()
def iw_seconds_per_point(model: FlowVAE, device: torch.device, points: int, samples: int,
                         chunk: int, per_call: int) -> float:
    """Seconds per test point of ``iw_nll(x, samples, chunk)`` on ``per_call`` points a call."""
    model.eval()
    x = torch.bernoulli(torch.full((points, model.data_dim), 0.13, device=device))
    model.iw_nll(x[:1], min(samples, chunk), chunk)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for i in range(0, points, per_call):
        model.iw_nll(x[i : i + per_call], samples, chunk)
    sync(device)
    model.train()
    return (time.perf_counter() - t0) / points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--iw-points", type=int, default=2)
    ap.add_argument("--iw-samples", type=int, default=5000)
    ap.add_argument("--iw-per-call", type=int, default=10, help="test points per iw_nll call")
    ap.add_argument("--chunk", type=int, default=None,
                    help="samples per example per chunk (default: 500 on CPU, 5000 on CUDA)")
    ap.add_argument("--flow", default="sylvester_orthogonal")
    ap.add_argument("--K", type=int, nargs="+", default=[0, 4])
    ap.add_argument("--shape", type=int, nargs=3, default=[1, 28, 28], metavar=("C", "H", "W"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", action="append", help="cpu, cuda (default: cpu, and cuda if any)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    shape = tuple(args.shape)

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}"
          + (f", GPU {name}" if name else ""))
    print(f"model=gated_conv on {shape[0]}x{shape[1]}x{shape[2]} binary images, batch "
          f"{args.batch}, Adamax; IS NLL with S={args.iw_samples}\n")
    print("| device | flow | K | parameters | steps/s | examples/s | IS NLL s/point |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for dev_name in devices:
        device = torch.device(dev_name)
        chunk = args.chunk or (500 if device.type == "cpu" else 5000)
        label = dev_name if device.type == "cpu" else f"{dev_name} ({name})"
        for K in args.K:
            flow = args.flow if K > 0 else "planar"  # K = 0: no flow layers at all
            model = build(flow, K, shape, device)
            n = sum(p.numel() for p in model.parameters())
            rate = train_rate(model, device, args.steps, args.batch)
            iw = iw_seconds_per_point(model, device, args.iw_points, args.iw_samples, chunk,
                                      args.iw_per_call)
            shown = flow if K > 0 else "none"
            print(f"| {label} | {shown} | {K} | {n:,} | {rate:.2f} | {rate * args.batch:.0f} "
                  f"| {iw:.3f} |")


if __name__ == "__main__":
    main()
