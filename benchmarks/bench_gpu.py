"""GPU throughput of the default flow VAE: eager, compiled and CUDA-graphed training steps, the
paper's 500k-update run projected, and the full test set's IS NLL at S = 5000.

    python benchmarks/bench_gpu.py [--K 0 80] [--steps 200] [--iw-samples 5000]
        [--iw-chunk 5000] [--modes eager compiled cuda_graph eager_loop cuda_graph_loop]
        [--allow-cpu]
        [--set dataset=fashion_mnist dataset.data_dir=DIR ...]

Prints a markdown table naming the device. Training: the real :class:`nfvi.training.Loop` and
:class:`nfvi.vae.run.VAETask` of ``nfvi train K=<K>`` (784-400-400 maxout, 40 latents, planar
flows fused, batch 100, Adam; validation and checkpoints out of the way) timed over ``--steps``
updates after a warm-up (compilation and graph capture happen there; their seconds are
printed apart); the 500k-update wall time is ``500000 / steps per second`` (R&M 2015's run,
validation excluded). IS NLL: ``eval.iw_samples`` = ``--iw-samples`` importance samples for
every test image (the full 10k MNIST test set when ``dataset.source=full`` data is present,
else the bundled 500 digits, with the seconds projected to 10k images; ``--set`` overrides
pick another 28x28 dataset, e.g. Fashion-MNIST's real 10k test images), untrained weights:
the cost does not depend on them.

Planar stacks run on the Triton kernels (:mod:`nfvi.native.gpu`); the ``*_loop`` modes time
the same with the fused stack's torch loop instead.

Without a GPU it says so and exits 0; ``--allow-cpu`` runs a tiny smoke version on the CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loop import QUIET, default_config  # noqa: E402 (the benchmarks folder itself)

from nfvi.native import gpu  # noqa: E402
from nfvi.training import Loop  # noqa: E402
from nfvi.vae.evaluate import evaluate  # noqa: E402
from nfvi.vae.run import VAETask, eval_inputs  # noqa: E402

PAPER_UPDATES = 500_000
TEST_IMAGES = 10_000
MODES = ("eager", "compiled", "cuda_graph", "eager_loop", "cuda_graph_loop")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def overrides(mode: str) -> list[str]:
    """The config of a mode; ``*_loop``: the same with the flow's Triton kernels off (the
    fused stack's torch loop, for the comparison)."""
    return {"eager": [], "compiled": ["trainer.compile=true"],
            "cuda_graph": ["trainer.cuda_graph=true"]}[mode.removesuffix("_loop")]


@dataclass
class Rate:
    """One mode's training throughput; with a CUDA graph, also its parts alone (ms per call):
    the graph's replay (forward and backward) and the optimizer's step, the rest of the
    loop's ms/step being the batch, the schedule and the bookkeeping."""

    steps_per_s: float
    warmup_s: float
    replay_ms: float | None = None
    optimizer_ms: float | None = None


def timed_ms(fn, device: torch.device, n: int) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3 / n


def train_rate(K: int, mode: str, device: torch.device, steps: int, warmup: int,
               extra: list[str]) -> Rate:
    """Updates per second of the real loop and the seconds of its warm-up updates."""
    cfg = default_config(K, device.type, False, "trainer.val_interval=100000000",
                         "trainer.patience=null", "dataset.source=auto", *overrides(mode),
                         *extra)
    torch.manual_seed(cfg.seed)
    gpu.set_enabled(not mode.endswith("_loop"))
    with tempfile.TemporaryDirectory() as tmp:
        task = VAETask(cfg, device, QUIET)
        loop = Loop(task, cfg.trainer, Path(tmp), QUIET, config={"K": K})
        loop.validate = lambda: False  # noqa: E731 - the one at a round's end: not timed here
        loop.save = lambda name: None  # noqa: E731
        t0 = time.perf_counter()
        loop.t.max_steps = warmup
        loop.run()
        sync(device)
        warm = time.perf_counter() - t0
        loop.t.max_steps = warmup + steps
        t0 = time.perf_counter()
        loop.run()
        sync(device)
        rate = Rate(steps / (time.perf_counter() - t0), warm)
        if task.graph is not None and task.graph.graph is not None:
            rate.replay_ms = timed_ms(task.graph.graph.replay, device, steps)
            rate.optimizer_ms = timed_ms(task.optimizer.step, device, steps)
        gpu.set_enabled(True)
        return rate


def iw_seconds(K: int, compiled: bool, device: torch.device, samples: int, chunk: int,
               limit: int | None, extra: list[str]) -> tuple[float, int, str]:
    """(seconds of the IS NLL over the test images, how many, the data source)."""
    cfg = default_config(K, device.type, False, "dataset.source=auto",
                         *(["trainer.compile=true"] if compiled else []), *extra)
    torch.manual_seed(cfg.seed)
    task = VAETask(cfg, device, QUIET)
    model = task.model.eval()
    x = eval_inputs(cfg, task.data, "test", device, limit)
    evaluate(model, x[:100], samples, chunk, 100, seed=0)  # warm-up (compilation: here)
    sync(device)
    t0 = time.perf_counter()
    evaluate(model, x, samples, chunk, 100, seed=0)
    sync(device)
    return time.perf_counter() - t0, x.shape[0], task.data.source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--K", type=int, nargs="+", default=[0, 80])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iw-samples", type=int, default=5000)
    ap.add_argument("--iw-chunk", type=int, default=5000)
    ap.add_argument("--iw-limit", type=int, default=None, help="test images (default: all)")
    ap.add_argument("--modes", nargs="+", default=list(MODES[:3]), choices=MODES,
                    help="*_loop: the mode with the flow's Triton kernels off")
    ap.add_argument("--set", nargs="*", default=[], metavar="OVERRIDE",
                    help="more config overrides for every run (e.g. dataset=fashion_mnist)")
    ap.add_argument("--allow-cpu", action="store_true",
                    help="no GPU: a tiny smoke run on the CPU instead of exiting")
    args = ap.parse_args()
    if torch.cuda.is_available():
        device = torch.device("cuda")
        what = torch.cuda.get_device_name(device)
    elif args.allow_cpu:
        device, what = torch.device("cpu"), "CPU smoke run (tiny sizes, not a measurement)"
        torch.set_num_threads(1)
        args.steps, args.warmup, args.iw_samples, args.iw_chunk = 3, 2, 10, 10
        args.iw_limit, args.K = 20, [0, 2]
        args.modes = [m for m in args.modes if not m.startswith("cuda_graph")]
    else:
        print(f"no CUDA GPU here (torch {torch.__version__}): nothing to measure; run this on "
              "a GPU machine, or pass --allow-cpu for a tiny smoke run")
        return
    print(f"torch {torch.__version__}, {what}; batch 100, {args.steps} timed updates after "
          f"{args.warmup} warm-up; IS S={args.iw_samples}, chunk {args.iw_chunk}; "
          f"overrides: {' '.join(args.set) or 'none'}\n")
    print("| K | mode | steps/s | ms/step | warm-up s (compile/capture) | 500k updates h "
          "| graph replay ms | optimizer ms | IS NLL s (10k images) | IS images measured |")
    print("|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for K in args.K:
        for mode in args.modes:
            r = train_rate(K, mode, device, args.steps, args.warmup, args.set)
            iw = ["", ""]
            if not mode.startswith("cuda_graph"):  # the IS pass has no graph mode
                gpu.set_enabled(not mode.endswith("_loop"))
                secs, n, source = iw_seconds(K, mode == "compiled", device, args.iw_samples,
                                             args.iw_chunk, args.iw_limit, args.set)
                gpu.set_enabled(True)
                iw = [f"{secs * TEST_IMAGES / n:.1f}", f"{n} ({source})"]
            parts = [f"{v:.3f}" if v is not None else "" for v in (r.replay_ms, r.optimizer_ms)]
            print(f"| {K} | {mode} | {r.steps_per_s:.1f} | {1e3 / r.steps_per_s:.2f} | "
                  f"{r.warmup_s:.1f} | {PAPER_UPDATES / r.steps_per_s / 3600:.2f} | "
                  f"{parts[0]} | {parts[1]} | {iw[0]} | {iw[1]} |", flush=True)


if __name__ == "__main__":
    main()
