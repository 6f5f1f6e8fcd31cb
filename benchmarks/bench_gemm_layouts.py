"""The amortized planar head's matmul in every layout tried, against its gradients and the square.

The planar K = 80 head maps the features ``x [100, 400]`` to ``[100, 6480]`` (80 layers x 81
parameters) through ``W [6480, 400]``. In bench_fused.py its forward runs slower than its
two gradients and the large square that sets the roofline's rate. This script asks whether
another operand layout or a split of the product does better. It times the forward as
``F.linear`` computes it (``x W^T``) and against a contiguous ``W^T``, as ``(W x^T)^T``,
split into column blocks and into row blocks. It also times the two gradients (``g W`` and
``g^T x``) and one ``n^3`` square. All are timed in alternating rounds in one process, the
fastest round of each, and printed as GFLOP/s (a markdown table).

    python benchmarks/bench_gemm_layouts.py [--threads 1] [--rows 100] [--features 400]
        [--out 6480] [--square 2048] [--rounds 5] [--reps 20]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fused import paired  # noqa: E402 (the benchmarks folder itself)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--features", type=int, default=400)
    ap.add_argument("--out", type=int, default=6480)
    ap.add_argument("--square", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    M, C, N = args.rows, args.features, args.out
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(M, C, generator=gen), torch.randn(N, C, generator=gen),
               torch.randn(N, generator=gen))
    g = torch.randn(M, N, generator=gen)
    w_t = w.t().contiguous()
    a, a2 = (torch.randn(args.square, args.square, generator=gen) for _ in range(2))

    def columns(n: int) -> Callable[[], None]:
        return lambda: [torch.addmm(b[j : j + n], x, w[j : j + n].t()) for j in range(0, N, n)]

    def rows(n: int) -> Callable[[], None]:
        return lambda: [torch.addmm(b, x[i : i + n], w.t()) for i in range(0, M, n)]

    product = 2.0 * M * C * N
    fns = {"forward x W^T (F.linear)": (lambda: torch.addmm(b, x, w.t()), product),
           "forward x (W^T contiguous)": (lambda: torch.addmm(b, x, w_t), product),
           "forward (W x^T)^T": (lambda: torch.mm(w, x.t()), product)}
    for n in (N // 16, N // 8, N // 4, N // 2):
        if n > 0:
            fns[f"forward in column blocks of {n}"] = (columns(n), product)
    for n in (M // 4, M // 2):
        if n > 0:
            fns[f"forward in row blocks of {n}"] = (rows(n), product)
    fns["gradient of x: g W"] = (lambda: torch.mm(g, w), product)
    fns["gradient of W: g^T x"] = (lambda: torch.mm(g.t(), x), product)
    fns[f"square {args.square}^3"] = (lambda: torch.mm(a, a2), 2.0 * args.square**3)
    seconds = paired({k: f for k, (f, _) in fns.items()}, torch.device("cpu"), args.rounds,
                     args.reps)
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads; "
          f"x [{M}, {C}], W [{N}, {C}]; fastest of {args.rounds} alternating rounds\n")
    print("| product | ms | GFLOP/s | of the square's rate |")
    print("|:---|---:|---:|---:|")
    square = fns[f"square {args.square}^3"][1] / seconds[f"square {args.square}^3"]
    for name, (_, flops) in fns.items():
        rate = flops / seconds[name]
        print(f"| {name} | {seconds[name] * 1e3:.2f} | {rate / 1e9:.1f} | {rate / square:.2f} |")


if __name__ == "__main__":
    main()
