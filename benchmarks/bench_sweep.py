"""The same 8 short training jobs, run sequentially and through joblib with 2 workers.

    python benchmarks/bench_sweep.py [--steps 200] [--workers 2]

Prints the wall-clock seconds of each way and their ratio. Each way is one
``nfvi train -m`` command (one process for the sequential basic launcher; joblib workers
limit their torch threads to cores // workers). Runs go to a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

JOBS = ["K=0,2", "flow=planar,radial", "seed=0,1"]  # 2 x 2 x 2 = 8 jobs


def run(args: list[str], root: str) -> float:
    env = dict(os.environ, NFVI_OUTPUT_ROOT=root)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nfvi.cli", "train", "-m", *args], env=env,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"sweep failed:\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    common = [*JOBS, f"trainer.max_steps={args.steps}", "trainer.val_interval=100",
              "trainer.progress=false", "eval.iw_samples=20", "eval.max_examples=100",
              "dataset.source=bundled"]
    with tempfile.TemporaryDirectory() as root:
        seq_all = run(common, root)  # torch's default: all cores for the one job
        seq = run([*common, "trainer.num_threads=1"], root)
        par = run(["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.workers}", *common],
                  root)
    cores = os.cpu_count()
    print(f"8 jobs x {args.steps} steps (default model, K in 0/2, planar/radial, 2 seeds), "
          f"{cores} cores")
    print(f"{'launcher':<30}{'wall s':>10}")
    print(f"{'basic (sequential, all cores)':<30}{seq_all:>10.1f}")
    print(f"{'basic (sequential, 1 thread)':<30}{seq:>10.1f}")
    print(f"{'joblib, ' + str(args.workers) + ' workers':<30}{par:>10.1f}")
    print(f"{'ratio seq all cores / joblib':<30}{seq_all / par:>10.2f}")
    print(f"{'ratio seq 1 thread / joblib':<30}{seq / par:>10.2f}")


if __name__ == "__main__":
    main()
