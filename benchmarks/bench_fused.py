"""Fused against layer-by-layer flow stacks in the default flow VAE, and the matmul roofline.

Prints a markdown table: the training step time (forward + backward + Adam step, batch 100,
random binary data of the bundled size, 784 pixels) of the default model (784-400-400 maxout,
40 latents, amortized planar flows with ``flow=planar``'s shipped settings; ``--flow radial``
or ``householder``: that flow's shipped config, the other fused stacks) for K = 0, 10, 80,
fused (``flow.fused=true``, the default) and not, with torch's fused Adam (``optim.fused``,
nfvi's default) and its for-each Adam (the default before); the importance-weighted NLL's
seconds per test point at S = 5000 for K = 0 and 80; and each against its matmul roofline: the
time the model's matmul FLOPs would take at the matmul rate of one large square matmul timed
in the same alternating rounds. FLOPs are counted by hooks on every ``nn.Linear``
(``2 * rows * in * out`` forward; a training step is forward + backward = 3x that, the
backward being twice the forward); all else -- the flow's own layers, activations, the
optimizer -- counts as zero, so step/roofline is how far a step is from being all matmul at
the machine's best rate. The "matmuls alone" columns replay the same matmuls (same shapes and
operand layouts) by themselves: step/matmuls is what the rest of the step (the flow,
activations, optimizer, autograd) adds on top of the BLAS at these shapes, which run below the
large-square rate. "optimizer alone" is the Adam step by itself on the same parameters
(memory-bound: it reads and writes each parameter and its two moments). "floor" is the
matmuls and the optimizer step replayed back to back: what any implementation of this model
pays with this BLAS and this Adam before its flow, activations, losses and autograd do
anything, so floor/roofline is the lowest step/roofline this machine allows, and "rest" is
step - floor.

    python benchmarks/bench_fused.py [--device cpu|cuda] [--threads N] [--steps 20]
        [--iw-points 10] [--iw-samples 5000] [--K 0 10 80] [--iw-K 0 80] [--flow planar]

The paths: layer by layer with the for-each Adam (the first implementation); layer by layer
with everything else as the default has it (``flow.fused=false`` today: maxout's compiled
kernel, the fused Adam), so that against the last row the fused stack's own gain shows; the
fused stack run by its torch loop with torch's fused Adam; and nfvi's default, the fused
stack run by its compiled CPU kernels (:mod:`nfvi.native`; on CUDA, or where no C compiler
could build them, that row is the torch loop again and says so). Like every nfvi job the
script first lets malloc keep freed memory (:func:`nfvi.runtime.keep_freed_memory`;
``--default-malloc`` leaves glibc's defaults, to measure what that does): "faults/step" is
the minor page faults per training step of the default path.

One process, one device: compare ratios within a run (shared machines are noisy). For each K,
the paths' models (same seed, same weights), the matmul replay, the optimizer, the floor and
the large square are timed in alternating rounds, the fastest round of each; the IS NLL
alternates every K's and path's model (and each K's matmul replay, and the square) per group
of 5 points, the fastest group of each, and the last line is its K = 80 / K = 0 ratio.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nfvi import native
from nfvi.config import OptimConfig, compose_config, typed
from nfvi.optim import build_optimizer
from nfvi.runtime import keep_freed_memory
from nfvi.vae.model import FlowVAE

BATCH, PIXELS, P_ON = 100, 784, 0.13


def shipped_model(K: int, fused: bool, flow: str = "planar") -> FlowVAE:
    """The default model, ``nfvi train flow=FLOW K=K`` (planar: centered, head gain 0.2, the
    head's own 400-wide hidden layer), on 28 x 28 binary images."""
    cfg = typed(compose_config(f"flow={flow}", f"K={K}"))
    model = FlowVAE.from_config(cfg, PIXELS, (1, 28, 28))
    model.flow.fused = fused
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 3) -> float:
    """Seconds per call of ``fn``, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / reps


def paired(fns: dict, device: torch.device, rounds: int, reps: int) -> dict:
    """Seconds per call of each ``fns[key]``, all timed in alternating rounds of ``reps``
    calls (so a shared machine's drifts hit them alike); the fastest round of each."""
    best = {k: float("inf") for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(rounds):
        for k, fn in fns.items():
            best[k] = min(best[k], timed(fn, device, reps, warmup=0))
    return best


def square_matmul(device: torch.device, n: int) -> tuple[Callable[[], object], float]:
    """One ``[n, n] @ [n, n]`` float32 matmul and its FLOPs (2 n^3): timed in the same
    alternating rounds as the steps, its fastest round is the machine's matmul rate for them."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return (lambda: torch.mm(a, b)), 2.0 * n**3


def linear_shapes(model: FlowVAE, fn: Callable[[], object]) -> list[tuple[int, int, int, bool]]:
    """The matmuls of one call of ``fn``: ``(rows, in, out, input needs a gradient)`` per
    ``nn.Linear`` call, the flow's parameter head included (it runs as an ``addmm`` of its
    weight, not a call, once per context row: per sample in training, per test point in the
    IS estimate, ``repeat=S``)."""
    shapes: list[tuple[int, int, int, bool]] = []
    head = getattr(model.flow.source, "head", None)

    def linear(mod: nn.Linear, inputs, _output) -> None:
        x = inputs[0]
        shapes.append((x.numel() // mod.in_features, mod.in_features, mod.out_features,
                       x.requires_grad))

    def flow(_mod: nn.Module, inputs, kwargs) -> None:
        context = inputs[1] if len(inputs) > 1 else kwargs.get("context")
        if head is not None and context is not None:
            shapes.append((context.shape[0], head.in_features, head.out_features,
                           context.requires_grad))

    handles = [m.register_forward_hook(linear) for m in model.modules()
               if isinstance(m, nn.Linear) and m is not head]
    handles.append(model.flow.register_forward_pre_hook(flow, with_kwargs=True))
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return shapes


def gemm_replay(shapes: list[tuple[int, int, int, bool]], device: torch.device,
                backward: bool) -> Callable[[], None]:
    """The matmuls of ``shapes`` by themselves, at their own shapes, with the operand layouts
    ``F.linear`` and its backward use: forward ``x @ W^T``; backward ``g @ W`` (only where
    the input needs a gradient) and ``g^T @ x``. Its time is what this BLAS allows at these
    shapes, a tighter floor than the large-square rate (small row counts and thin inner
    dimensions run below it)."""
    ops = []
    for rows, n_in, n_out, input_grad in shapes:
        x = torch.randn(rows, n_in, device=device)
        w = torch.randn(n_out, n_in, device=device)
        b = torch.randn(n_out, device=device)
        ops.append(lambda x=x, w=w, b=b: torch.addmm(b, x, w.t()))
        if backward:
            g = torch.randn(rows, n_out, device=device)
            if input_grad:
                ops.append(lambda g=g, w=w: torch.mm(g, w))
            ops.append(lambda g=g, x=x: torch.mm(g.t(), x))

    def all_ops() -> None:
        for op in ops:
            op()

    return all_ops


#: the paths timed: (fused stack, its compiled kernels, fused Adam); the last is nfvi's default
PATHS = {(False, False, False): "layer by layer, for-each Adam",
         (False, True, True): "layer by layer (flow.fused=false), fused Adam",
         (True, False, True): "fused torch loop, fused Adam",
         (True, True, True): "fused native kernels, fused Adam (default)"}
DEFAULT = (True, True, True)


def on_path(path: tuple[bool, bool, bool], fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with the compiled kernels switched as ``path`` says, for each call."""
    def call() -> object:
        native.set_enabled(path[1])
        return fn()
    return call


def optimizer_replay(model: FlowVAE, fused_adam: bool) -> Callable[[], object]:
    """One ``opt.step()`` of nfvi's Adam on ``model``'s parameters alone (random gradients,
    on a copy of the model): the optimizer's share of a step. Adam reads and
    writes every parameter and its two moments, so this grows with the parameter count (the
    amortized head's ``features x K (2D + 1)`` weight at large K) at memory speed, not at the
    matmul rate; the roofline counts it as zero."""
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = build_optimizer(params, OptimConfig(fused=fused_adam))
    opt.step()
    return opt.step


@dataclass
class StepTimes:
    """One K's training-step timings, all from the same alternating rounds (seconds)."""

    steps: dict[tuple, float]  # per path: one training step
    flops: float  # the step's matmul FLOPs: 3x the forward's
    rate: float  # FLOP/s of the large square matmul in these rounds
    matmuls: float  # the step's matmuls alone, at their shapes
    optimizer: dict[bool, float]  # per Adam (fused or not): its step alone
    floor: dict[bool, float]  # per Adam: the matmuls and that optimizer step, back to back
    faults: float  # minor page faults per step of the default path

    @property
    def roofline(self) -> float:
        return self.flops / self.rate


def train_steps(K: int, device: torch.device, steps: int, matmul_n: int, flow: str = "planar"
                ) -> StepTimes:
    """Every path's training step, the step's matmuls alone, the optimizer alone, the two
    together (the floor: what any implementation of this model pays with this BLAS and
    this Adam before the flow, activations, losses and autograd do anything) and the large
    square matmul (the rate), timed in alternating rounds: each one's fastest round, so
    that the ratios compare the same machine state. The optimizer is nfvi's
    (``build_optimizer``, ``optim=adam``)."""
    x = torch.bernoulli(torch.full((BATCH, PIXELS), P_ON, device=device))
    fns: dict[object, Callable[[], object]] = {}
    for path in PATHS:
        fused, _, fused_adam = path
        torch.manual_seed(0)
        model = shipped_model(K, fused, flow).to(device)
        assert model.flow.uses_fused == (fused and K > 0)
        opt = build_optimizer(model.parameters(), OptimConfig(fused=fused_adam))

        def step(model: FlowVAE = model, opt: torch.optim.Optimizer = opt) -> None:
            loss = model.elbo(x, beta=0.5).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        fns[path] = on_path(path, step)
        for _ in range(3):
            fns[path]()
    shapes = linear_shapes(model, lambda: model.elbo(x, beta=0.5))
    flops = 3.0 * sum(2.0 * r * i * o for r, i, o, _ in shapes)
    gemm = gemm_replay(shapes, device, backward=True)
    fns["matmuls"] = gemm
    for fused_adam in (False, True):
        adam = optimizer_replay(model, fused_adam)
        fns[("adam", fused_adam)] = adam
        fns[("floor", fused_adam)] = lambda adam=adam: (gemm(), adam())
    fns["square"], square_flops = square_matmul(device, matmul_n)
    rounds = 4
    best = paired(fns, device, rounds, max(1, steps // rounds))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        fns[DEFAULT]()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
    return StepTimes({path: best[path] for path in PATHS}, flops, square_flops / best["square"],
                     best["matmuls"], {f: best[("adam", f)] for f in (False, True)},
                     {f: best[("floor", f)] for f in (False, True)}, faults)


@dataclass
class ISTimes:
    """The importance-weighted NLL's timings, per test point (seconds), all from the same
    groups of points."""

    seconds: dict[tuple[int, tuple], float]  # per (K, path)
    flops: dict[int, float]  # per K: matmul FLOPs
    matmuls: dict[int, float]  # per K: its matmuls alone, at their shapes
    rate: float  # FLOP/s of the large square matmul in these groups


def iw_points(Ks: list[int], device: torch.device, points: int, samples: int, matmul_n: int,
              flow: str = "planar") -> ISTimes:
    """``iw_nll`` at ``samples`` samples for every K and path, in groups of (up to) 5
    points: per group every (K, path) model in turn, each K's matmuls alone (replayed at
    their shapes) and the large square, so that K = 80 against K = 0 and each against its
    roofline compare the same stretches of time on a drifting machine. Each one's fastest
    group, per point (the optimizer plays no part)."""
    x = torch.bernoulli(torch.full((points, PIXELS), P_ON, device=device))
    chunk = 500 if device.type == "cpu" else 5000
    group = min(points, 5)
    models, flops, replays = {}, {}, {}
    for K in Ks:
        for path in PATHS:
            torch.manual_seed(0)
            models[K, path] = shipped_model(K, path[0], flow).to(device).eval()
            on_path(path, lambda m=models[K, path]: m.iw_nll(x[:1], 100, chunk))()  # warm-up
        model = models[K, DEFAULT]
        native.set_enabled(True)
        with torch.inference_mode():
            shapes = linear_shapes(model, lambda m=model: m.iw_nll(x[:group], samples, chunk))
        flops[K] = sum(2.0 * r * i * o for r, i, o, _ in shapes) / group
        replays[K] = gemm_replay(shapes, device, backward=False)
        replays[K]()  # warm-up
    square, square_flops = square_matmul(device, matmul_n)
    square()  # warm-up
    best = dict.fromkeys(models, float("inf"))
    gemm = dict.fromkeys(Ks, float("inf"))
    fastest_square = float("inf")
    for i in range(0, points - group + 1, group):
        for (K, path), model in models.items():
            best[K, path] = min(best[K, path], timed(on_path(path, lambda m=model, i=i: m.iw_nll(
                x[i : i + group], samples, chunk)), device, 1, warmup=0) / group)
        for K in Ks:
            gemm[K] = min(gemm[K], timed(replays[K], device, 1, warmup=0) / group)
        fastest_square = min(fastest_square, *(timed(square, device, 1, warmup=0)
                                               for _ in range(3)))
    return ISTimes(best, flops, gemm, square_flops / fastest_square)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--iw-points", type=int, default=10)
    ap.add_argument("--iw-samples", type=int, default=5000)
    ap.add_argument("--K", type=int, nargs="+", default=[0, 10, 80])
    ap.add_argument("--iw-K", type=int, nargs="*", default=[0, 80])
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--flow", default="planar", choices=["planar", "radial", "householder"],
                    help="the flow of the model, with its shipped config")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's malloc thresholds as they are (nfvi's jobs raise them)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = False if args.default_malloc else keep_freed_memory()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")

    what = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {what}; flow={args.flow}; float32 matmul rate: the "
          f"{args.matmul_n}^3 square in each K's rounds; batch {BATCH}, {args.steps} steps, "
          f"IS S={args.iw_samples} over {args.iw_points} points; "
          f"malloc keeps freed memory: {kept}; flow stacks: {native.status()}\n")
    print("| K | path | step ms | matmul GFLOP/s | step roofline ms | step/roofline "
          "| step matmuls alone ms | step/matmuls | optimizer alone ms | floor ms "
          "| floor/roofline | step/floor | rest ms | speed-up | faults/step | IS s/point "
          "| IS roofline s/point | IS/roofline | IS matmuls alone s/point | IS/matmuls "
          "| IS speed-up |")
    print("|---:|:---|" + "---:|" * 19)
    base = next(iter(PATHS))
    iw = iw_points(args.iw_K, device, args.iw_points, args.iw_samples, args.matmul_n,
                   args.flow) \
        if args.iw_K else None
    for K in args.K:
        t = train_steps(K, device, args.steps, args.matmul_n, args.flow)
        for path, label in PATHS.items():
            step, opt, floor = t.steps[path], t.optimizer[path[2]], t.floor[path[2]]
            speed = f"{t.steps[base] / step:.2f}x" if path != base else ""
            iw_cells = [""] * 6
            if iw is not None and K in args.iw_K:
                sec, roof, alone = iw.seconds[K, path], iw.flops[K] / iw.rate, iw.matmuls[K]
                iw_cells = [f"{sec:.3f}", f"{roof:.3f}", f"{sec / roof:.2f}", f"{alone:.3f}",
                            f"{sec / alone:.2f}",
                            f"{iw.seconds[K, base] / sec:.2f}x" if path != base else ""]
            print(f"| {K} | {label} | {step * 1e3:.1f} | {t.rate / 1e9:.1f} "
                  f"| {t.roofline * 1e3:.1f} | {step / t.roofline:.2f} "
                  f"| {t.matmuls * 1e3:.1f} | {step / t.matmuls:.2f} | {opt * 1e3:.1f} "
                  f"| {floor * 1e3:.1f} | {floor / t.roofline:.2f} | {step / floor:.2f} "
                  f"| {(step - floor) * 1e3:.1f} | {speed} "
                  f"| {f'{t.faults:.0f}' if path == DEFAULT else ''} | "
                  + " | ".join(iw_cells) + " |", flush=True)
    if iw is not None and len(args.iw_K) > 1:
        lo, hi = min(args.iw_K), max(args.iw_K)
        print(f"\nIS s/point, K = {hi} / K = {lo} (default path, the same groups of points): "
              f"{iw.seconds[hi, DEFAULT] / iw.seconds[lo, DEFAULT]:.2f}; the IS groups' "
              f"matmul rate {iw.rate / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
