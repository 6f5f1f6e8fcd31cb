"""The README's KL table: planar and radial flows, K = 2, 8, 32, on U1-U4 (24 runs).

Each run is ``nfvi train task=energy target=<u> flow=<f> K=<K>`` with the default seed and
trainer (``trainer=energy``), run through the Python API (:func:`nfvi.run`); the run
directories go under ``--out`` (default ``/tmp/nfvi_energy_table``). A run whose
``summary.json`` already exists is not repeated, so an interrupted table can be finished by
running the script again.
Prints the table of KL(q || p) in nats (± one standard error) as Markdown, and the ESS table.

    python benchmarks/energy_table.py --jobs 2 [--figure docs/energy_planar_radial_K32.png]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

TARGETS = ["u1", "u2", "u3", "u4"]
FLOWS = ["planar", "radial"]
KS = [2, 8, 32]


def _run_one(target: str, flow: str, K: int, out: str, extra: list[str]) -> dict:
    import nfvi

    run_dir = Path(out) / f"{target}_{flow}_K{K}"
    done = run_dir / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    if run_dir.exists():  # an interrupted run: start it again from scratch
        shutil.rmtree(run_dir)
    overrides = ["task=energy", f"target={target}", f"flow={flow}", f"K={K}",
                 "trainer.progress=false", f"hydra.run.dir={run_dir}"]
    return nfvi.run("train", overrides + extra).summary


def _figure(out: str, path: str, K: int, targets: list[str], flows: list[str]) -> None:
    """Figure 3-like panel: true densities, then q_K of each flow at length K (histograms)."""
    import torch

    from nfvi.checkpoint import load_checkpoint
    from nfvi.energy import EnergyModel, get_target, log_partition
    from nfvi.energy.figures import flow_density, plot_panels, true_density

    torch.manual_seed(0)
    rows = [[]] + [[] for _ in flows]
    for t in targets:
        ckpt = None
        for i, f in enumerate(flows):
            ck = Path(out) / f"{t}_{f}_K{K}" / "checkpoints" / "last.pt"
            if not ck.is_file():
                continue
            ckpt = load_checkpoint(ck)
            target = get_target(t, float(ckpt["config"]["target"]["envelope_std"]))
            model = EnergyModel(target, f, K)
            model.load_state_dict(ckpt["model"])
            q = flow_density(model, 400, 1_000_000, 200)
            kl = json.loads((ck.parent.parent / "summary.json").read_text())["kl"]
            rows[i + 1].append((f"{f} K={K}, KL {kl:.2f}", q.density))
        if ckpt is not None:
            rows[0].append((f"{t.upper()}: exp(-U)/Z", true_density(
                target, log_partition(target).log_z, 400)))
    title = (f"top: exp(-U)/Z on (-4, 4)^2; below: q_K at K={K}, "
             "histograms of 1,000,000 samples (200x200 bins)")
    plot_panels(rows, path, title=title)


def _table(results: dict, targets: list[str], flows: list[str], Ks: list[int], fmt) -> str:
    """One row per target, one column per (flow, K) asked for; "n/a" where a run failed."""
    cols = [(f, K) for f in flows for K in sorted(Ks)]
    head = "| target | " + " | ".join(f"{f} K={K}" for f, K in cols) + " |"
    sep = "|---|" + "---|" * len(cols)
    rows = [head, sep]
    for t in targets:
        cells = []
        for f, K in cols:
            r = results.get((t, f, K))
            cells.append(fmt(r) if r is not None else "n/a")
        rows.append(f"| {t.upper()} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/nfvi_energy_table")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (each uses one thread)")
    ap.add_argument("--targets", nargs="+", default=TARGETS)
    ap.add_argument("--flows", nargs="+", default=FLOWS)
    ap.add_argument("--Ks", nargs="+", type=int, default=KS)
    ap.add_argument("--figure", default=None,
                    help="also draw the true densities and each flow's q_K at --figure-K here")
    ap.add_argument("--figure-K", type=int, default=32)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. seed=1")
    args = ap.parse_args()

    jobs = [(t, f, K) for f in args.flows for K in sorted(args.Ks, reverse=True)
            for t in args.targets]
    results: dict = {}
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futs = {pool.submit(_run_one, t, f, K, args.out, args.overrides): (t, f, K)
                for t, f, K in jobs}
        for fut in as_completed(futs):
            key = futs[fut]
            try:
                s = fut.result()
            except Exception as e:  # report and go on: the other runs still count
                print(f"{key[0]} {key[1]} K={key[2]}: FAILED: {type(e).__name__}: {e}",
                      flush=True)
                continue
            results[key] = s
            print(f"{key[0]} {key[1]} K={key[2]}: KL {s['kl']:.4f} ± {s['kl_stderr']:.4f}  "
                  f"ESS {s['ess_percent']:.1f}%  {s['wall_seconds']:.0f}s", flush=True)
    print(f"\n{len(results)} runs, {time.perf_counter() - t0:.0f}s for this invocation\n")
    print("KL(q || p) in nats, ± one standard error (100,000 samples):\n")
    grid = (args.targets, args.flows, args.Ks)
    print(_table(results, *grid, lambda r: f"{r['kl']:.3f} ± {r['kl_stderr']:.3f}"))
    print("\nEffective sample size of p/q (%):\n")
    print(_table(results, *grid, lambda r: f"{r['ess_percent']:.1f}"))
    print("\nTraining seconds per run:\n")
    print(_table(results, *grid, lambda r: f"{r['wall_seconds']:.0f}"))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    flat = [dict(v) for v in results.values()]
    (Path(args.out) / "table.json").write_text(json.dumps(flat, indent=1) + "\n")
    if args.figure:
        _figure(args.out, args.figure, args.figure_K, args.targets, args.flows)
        print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
