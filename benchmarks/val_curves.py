"""A Markdown table of training runs side by side: validation -ELBO at chosen steps and the
test results, one row per run directory (for comparing variants of a run, e.g. docs/).

    python benchmarks/val_curves.py RUN_DIR... [--steps 2000 4000 6000]

A run that stopped early (a non-finite loss, an interrupt) shows '-' after its last
validation; 'diverged' marks a validation -ELBO above 1e4 nats, and "diverged at" names the
first such validation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nfvi.rundir import read_metrics, read_summary


def row(run: Path, steps: list[int]) -> list[str]:
    val = {r["step"]: r["neg_elbo"] for r in read_metrics(run / "metrics.jsonl")
           if r.get("split") == "val" and "neg_elbo" in r}
    label = f"{run.parent.parent.name} / {run.parent.name}"
    cells = [label]
    for s in steps:
        v = val.get(s)
        cells.append("-" if v is None else ("diverged" if v > 1e4 else f"{v:.2f}"))
    bad = [s for s in sorted(val) if not val[s] < 1e4]  # NaN counts too
    cells.append(str(bad[0]) if bad else "no")
    summary, _ = read_summary(run / "summary.json")
    if summary:
        cells += [f"{summary['test_neg_elbo']:.2f}", f"{summary['test_nll']:.2f}",
                  f"{summary['test_neg_elbo'] - summary['test_nll']:.2f}"]
    else:
        last = max(val) if val else 0
        cells += [f"stopped after step {last}", "", ""]
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--steps", nargs="+", type=int, default=[2000, 4000, 6000])
    args = ap.parse_args()
    head = ["run", *[f"val -ELBO @{s}" for s in args.steps], "diverged at", "test -ELBO",
            "test NLL", "gap"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for run in args.runs:
        print("| " + " | ".join(row(run, args.steps)) + " |")


if __name__ == "__main__":
    main()
