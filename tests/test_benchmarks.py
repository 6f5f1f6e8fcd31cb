"""The benchmark scripts run, as a user runs them, at their smallest settings.

Speed is never asserted here (shared, noisy machines): only that the script runs to the end
and prints the whole table, every cell a number where one is due, so that a refactor of
the code a benchmark drives cannot leave its table broken until someone measures.
"""

from __future__ import annotations

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
