"""The benchmark scripts run, as a user runs them, at their smallest settings.

Speed is never asserted here (shared, noisy machines): only that the script runs to the end
and prints the whole table, every cell a number where one is due, so that a refactor of
the code a benchmark drives cannot leave its table broken until someone measures.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, tmp_path: Path) -> str:
    env = dict(os.environ, NFVI_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("flow", ["planar", "householder"])
def test_bench_fused_prints_every_path_floor_and_the_is_ratio(flow, tmp_path):
    out = run_script("bench_fused.py", "--threads", "1", "--K", "0", "3", "--iw-K", "0", "3",
                     "--steps", "4", "--iw-points", "2", "--iw-samples", "20",
                     "--matmul-n", "128", "--flow", flow, tmp_path=tmp_path)
    lines = out.splitlines()
    assert f"flow={flow};" in lines[0]
    header = next(line for line in lines if line.startswith("| K |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert {"floor ms", "floor/roofline", "step/floor", "matmul GFLOP/s"} <= set(columns)
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in lines if line.startswith(("| 0 |", "| 3 |"))]
    assert [(r[0], r[1]) for r in rows] == [
        (K, path) for K in ("0", "3") for path in (
            "layer by layer, for-each Adam", "layer by layer (flow.fused=false), fused Adam",
            "fused torch loop, fused Adam",
            "fused native kernels, fused Adam (default)")]
    numeric = [i for i, c in enumerate(columns)
               if c not in ("K", "path", "speed-up", "faults/step", "IS speed-up")]
    for row in rows:
        assert len(row) == len(columns)
        values = {columns[i]: float(row[i]) for i in numeric}
        assert all(v > 0 for k, v in values.items() if k != "rest ms"), row
        # the floor replays the same matmuls plus the optimizer: never below the matmuls
        # by more than timing noise can explain at these tiny sizes
        assert values["floor ms"] > 0.5 * values["step matmuls alone ms"], row
    ratio = next(line for line in lines if line.startswith("IS s/point, K = 3 / K = 0"))
    assert float(ratio.split(":")[1].split(";")[0]) > 0


def test_bench_gemm_layouts_prints_every_layout_and_the_square(tmp_path):
    out = run_script("bench_gemm_layouts.py", "--rows", "20", "--features", "16", "--out", "64",
                     "--square", "64", "--rounds", "2", "--reps", "2", tmp_path=tmp_path)
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    names = [r[0] for r in rows[1:]]
    assert names[:3] == ["forward x W^T (F.linear)", "forward x (W^T contiguous)",
                         "forward (W x^T)^T"]
    assert {"gradient of x: g W", "gradient of W: g^T x", "square 64^3"} <= set(names)
    assert any(n.startswith("forward in column blocks") for n in names)
    for r in rows[1:]:
        assert len(r) == 4 and float(r[1]) >= 0 and float(r[2]) > 0, r
    assert rows[-1][3] == "1.00"  # the square against itself


def test_bench_gpu_smoke_runs_on_the_cpu(tmp_path):
    """The GPU benchmark's own code path on the CPU (``--allow-cpu``: tiny sizes, no CUDA-graph
    modes), so that it has not rotted when a GPU is finally lent; without the flag and without
    a GPU it says so and exits 0."""
    out = run_script("bench_gpu.py", "--allow-cpu", tmp_path=tmp_path)
    assert "CPU smoke run" in out.splitlines()[0]
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in out.splitlines() if line.startswith(("| 0 |", "| 2 |"))]
    assert [(r[0], r[1]) for r in rows] == [(K, m) for K in ("0", "2")
                                            for m in ("eager", "compiled")]
    for r in rows:
        steps_per_s, ms, hours, is_seconds = float(r[2]), float(r[3]), float(r[5]), float(r[8])
        assert steps_per_s > 0 and ms > 0 and hours > 0 and is_seconds > 0, r
        assert abs(ms * steps_per_s - 1e3) < 1e3 * 0.02, r  # ms/step is 1000 / steps/s
        assert r[9].startswith("20 (")  # 20 test images measured
    if not torch.cuda.is_available():
        plain = run_script("bench_gpu.py", tmp_path=tmp_path)
        assert plain.startswith("no CUDA GPU here")


def markdown_rows(out: str, first: tuple[str, ...]) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")]
            for line in out.splitlines() if line.startswith(first)]


def test_bench_vae_prints_each_K(tmp_path):
    out = run_script("bench_vae.py", "--steps", "3", "--iw-points", "1", "--iw-samples", "20",
                     "--K", "0", "2", "--threads", "1", "--device", "cpu", tmp_path=tmp_path)
    rows = [line.split() for line in out.splitlines() if line.startswith("cpu ")]
    assert [r[1] for r in rows] == ["0", "2"]
    for r in rows:
        steps, examples, iw = float(r[2]), float(r[3]), float(r[4])
        assert steps > 0 and iw > 0 and abs(examples - 100 * steps) <= 0.01 * examples + 1, r


def test_bench_loop_prints_the_loop_against_the_bare_step(tmp_path):
    out = run_script("bench_loop.py", "--K", "0", "--steps", "4", "--rounds", "1",
                     "--probe-steps", "4", "--threads", "1", tmp_path=tmp_path)
    (row,) = markdown_rows(out, ("| 0 |",))
    assert row[1] == "no" and float(row[2]) > 0 and float(row[3]) > 0
    assert abs(float(row[4]) - float(row[3]) / float(row[2])) < 0.01  # loop/bare
    assert row[7].endswith("%") and row[8].endswith("%")


def test_flow_table_prints_every_registered_flow(tmp_path):
    from nfvi.flows import FLOWS

    out = run_script("flow_table.py", "--repeats", "1", "--K", "1", tmp_path=tmp_path)
    rows = markdown_rows(out, ("| `",))
    assert sorted(r[0].strip("`") for r in rows) == sorted(FLOWS)
    for r in rows:
        assert r[1] in ("yes", "no")
        amortized, global_ = (int(x.replace(",", "")) for x in r[2].split(" / "))
        assert amortized > global_ > 0, r  # the amortized head adds parameters
        assert r[3].endswith(" ms") and all(float(x) > 0 for x in r[3][:-3].split(" / ")), r


def test_bench_gated_conv_prints_a_row(tmp_path):
    out = run_script("bench_gated_conv.py", "--steps", "2", "--iw-points", "1",
                     "--iw-samples", "10", "--K", "0", "--threads", "1", "--device", "cpu",
                     tmp_path=tmp_path)
    (row,) = markdown_rows(out, ("| cpu |",))
    assert row[1] == "none" and row[2] == "0"
    assert int(row[3].replace(",", "")) > 0 and all(float(x) > 0 for x in row[4:7]), row


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """A K = 0 and a planar K = 2 run of 5 updates each, trained by ``nfvi train`` processes
    on the bundled digits: what the analysis scripts read (checkpoints, config, summary)."""
    root = tmp_path_factory.mktemp("runs")
    env = dict(os.environ, NFVI_OUTPUT_ROOT=str(root), NFVI_CACHE_DIR=str(root / "cache"))
    for K in (0, 2):
        subprocess.run([sys.executable, "-m", "nfvi.cli", "train", f"K={K}", "name=t",
                        "trainer.max_steps=5", "eval.iw_samples=10", "trainer.num_threads=1"],
                       env=env, cwd=root, capture_output=True, timeout=300, check=True)
    (k0,), (k2,) = (list((root / "t" / f"planar_K{K}").iterdir()) for K in (0, 2))
    return k0, k2


def test_val_curves_reports_each_runs_test_numbers(two_runs, tmp_path):
    out = run_script("val_curves.py", *map(str, two_runs), tmp_path=tmp_path)
    rows = markdown_rows(out, ("| t / ",))
    assert [r[0] for r in rows] == ["t / planar_K0", "t / planar_K2"]
    for run, row in zip(two_runs, rows, strict=True):
        summary = json.loads((run / "summary.json").read_text())
        assert float(row[5]) == pytest.approx(summary["test_neg_elbo"], abs=0.006)
        assert float(row[6]) == pytest.approx(summary["test_nll"], abs=0.006)


@pytest.mark.parametrize("script, args, gap, diff", [
    ("gap_vs_S.py", ["--S", "2", "10", "--examples", "5", "--threads", "1"], "gap S=2",
     "gap diff S=2"),
    ("gap_decomposition.py", ["--examples", "3", "--steps", "3", "--gauss-steps", "3",
                              "--S", "10", "--train-samples", "2", "--threads", "1"], "gap",
     "gap diff"),
])
def test_the_gap_scripts_pair_the_flow_run_with_k0(script, args, gap, diff, two_runs,
                                                   tmp_path):
    """Both tables: each run's numbers, then the flow run paired against K = 0 per test point;
    the paired mean of the gap difference is the difference of the two runs' mean gaps."""
    out = run_script(script, *map(str, two_runs), *args, tmp_path=tmp_path)
    runs, paired = out.split("paired against none K=0 seed=0")

    def table(text: str) -> dict[str, dict[str, str]]:
        lines = [line for line in text.splitlines() if line.startswith("| ")]
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        return {r[0]: dict(zip(header, r, strict=True))
                for r in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])}

    each, pairs = table(runs), table(paired)
    assert list(each) == ["none K=0 seed=0", "planar K=2 seed=0"]
    assert list(pairs) == ["planar K=2 seed=0"]
    for name, cell in pairs["planar K=2 seed=0"].items():
        if name != "run":
            mean, se = cell.split(" ± ")
            assert math.isfinite(float(mean)) and float(se) >= 0, cell
    want = float(each["planar K=2 seed=0"][gap]) - float(each["none K=0 seed=0"][gap])
    got = float(pairs["planar K=2 seed=0"][diff].split(" ± ")[0])
    assert got == pytest.approx(want, abs=2e-3)


def test_flow_diagnostics_and_fit_posterior_read_a_run(two_runs, tmp_path):
    out = run_script("flow_diagnostics.py", str(two_runs[1]), "--examples", "5",
                     tmp_path=tmp_path)
    assert "min w.u_hat" in out and "|h(x)|" in out
    out = run_script("fit_posterior.py", str(two_runs[1]), "--steps", "3", "--examples", "5",
                     "--iw", "10", tmp_path=tmp_path)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["run"] == str(two_runs[1]) and result["steps"] == 3
    assert result["gap"] == pytest.approx(result["neg_elbo"] - result["nll"], abs=1e-3)


def test_energy_table_prints_the_flows_and_lengths_asked_for(tmp_path):
    """The tables' columns are the ``--flows`` x ``--Ks`` of the command (not the README's
    defaults), every cell the run's own summary."""
    out_dir = tmp_path / "energy"
    out = run_script("energy_table.py", "--out", str(out_dir), "--targets", "u1", "--flows",
                     "planar", "householder", "--Ks", "2", "--", "trainer.max_steps=20",
                     tmp_path=tmp_path)
    kl_table = out.split("KL(q || p)")[1].split("Effective sample size")[0]
    header = next(line for line in kl_table.splitlines() if line.startswith("| target |"))
    assert header == "| target | planar K=2 | householder K=2 |"
    (row,) = markdown_rows(kl_table, ("| U1 |",))
    for flow, cell in zip(("planar", "householder"), row[1:], strict=True):
        summary = json.loads((out_dir / f"u1_{flow}_K2" / "summary.json").read_text())
        assert cell == f"{summary['kl']:.3f} ± {summary['kl_stderr']:.3f}"
    assert len(json.loads((out_dir / "table.json").read_text())) == 2
