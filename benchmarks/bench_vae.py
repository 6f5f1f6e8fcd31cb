"""Training throughput and importance-sampling cost of the default flow VAE.

Prints a table: training steps/s and examples/s for the default model (784-400-400 maxout,
40 latents, amortized planar flows) with K = 0, 10, 80 at batch 100, and the seconds per test
point of the importance-weighted NLL at S = 5000. Runs on the CPU, and on CUDA when present.
``--flow NAME`` measures another flow with its shipped config (``nfvi train flow=NAME``).

    python benchmarks/bench_vae.py [--steps 50] [--iw-points 20] [--threads N] [--device cpu]
                                   [--flow planar] [--K 0 10 80]

Figures come from one process, so compare ratios within a run: shared machines are noisy.
"""

from __future__ import annotations

import argparse
import time

import torch

from nfvi.config import OptimConfig, compose_config, typed
from nfvi.optim import build_optimizer
from nfvi.vae.model import FlowVAE


def shipped_model(flow: str, K: int) -> FlowVAE:
    """The default model (``nfvi train flow=FLOW K=K``) on 28 x 28 binary images."""
    cfg = typed(compose_config(f"flow={flow}", f"K={K}"))
    return FlowVAE.from_config(cfg, 784, (1, 28, 28))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(flow: str, K: int, device: torch.device, steps: int, batch: int) -> float:
    torch.manual_seed(0)
    model = shipped_model(flow, K).to(device)
    opt = build_optimizer(model.parameters(), OptimConfig())  # nfvi's Adam (fused)
    x = torch.bernoulli(torch.full((batch, 784), 0.13, device=device))

    def step() -> None:
        loss = model.elbo(x, beta=0.5).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):  # warm-up
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps / (time.perf_counter() - t0)


def iw_seconds_per_point(flow: str, K: int, device: torch.device, points: int,
                         samples: int) -> float:
    torch.manual_seed(0)
    model = shipped_model(flow, K).to(device).eval()
    x = torch.bernoulli(torch.full((points, 784), 0.13, device=device))
    chunk = 500 if device.type == "cpu" else 5000
    model.iw_nll(x[:1], 100, chunk)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for i in range(0, points, 10):
        model.iw_nll(x[i : i + 10], samples, chunk)
    sync(device)
    return (time.perf_counter() - t0) / points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--iw-points", type=int, default=20)
    ap.add_argument("--iw-samples", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", action="append", help="cpu, cuda (default: cpu, and cuda if any)")
    ap.add_argument("--K", type=int, nargs="+", default=[0, 10, 80])
    ap.add_argument("--flow", default="planar", help="a registered flow, its shipped config")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}"
          + (f", GPU {name}" if name else ""))
    print(f"flow={args.flow}")
    header = (f"{'device':<8}{'K':>4}{'steps/s':>10}{'examples/s':>12}"
              f"{'IW s/point (S=' + str(args.iw_samples) + ')':>24}")
    print(header)
    print("-" * len(header))
    for dev_name in devices:
        device = torch.device(dev_name)
        for K in args.K:
            rate = train_rate(args.flow, K, device, args.steps, args.batch)
            iw = iw_seconds_per_point(args.flow, K, device, args.iw_points, args.iw_samples)
            print(f"{dev_name:<8}{K:>4}{rate:>10.1f}{rate * args.batch:>12.0f}{iw:>24.4f}")


if __name__ == "__main__":
    main()
