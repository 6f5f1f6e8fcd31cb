"""``nfvi report``: real run directories (one tiny multirun per module) and synthetic ones written
in the exact format of ``summary.json`` / ``config.yaml`` / ``metrics.jsonl``."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nfvi.errors import ConfigError
from nfvi.report.aggregate import build_report, stat
from nfvi.report.collect import find_runs
from nfvi.report.main import report

PNG = b"\x89PNG\r\n\x1a\n"
VAE_FIGURES = ("nll_vs_K.png", "learning_curves.png")
ENERGY_FIGURES = ("energy_grid.png", "kl_vs_K.png")

TINY = [
    "model.hidden=[32]", "model.latent_dim=4", "trainer.max_steps=20", "trainer.val_interval=10",
    "trainer.progress=false", "trainer.num_threads=1", "eval.iw_samples=5",
    "eval.max_examples=50",
]


def nfvi(*args: str, env: dict | None = None, cwd: Path | None = None):
    return subprocess.run([sys.executable, "-m", "nfvi.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


# -- real runs --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    """A 2 x 2 x 2 (K x flow x seed) tiny multirun, one unfinished copy and one evaluation."""
    root = tmp_path_factory.mktemp("report") / "outputs"
    env = dict(os.environ, NFVI_OUTPUT_ROOT=str(root), NFVI_DATA_DIR=str(root / "no-data"))
    env.pop("NFVI_DEBUG", None)
    proc = nfvi("train", "-m", "K=0,2", "flow=planar,radial", "seed=0,1", *TINY, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in root.rglob(".nfvi-run"))
    assert len(runs) == 8
    # an unfinished run: marker, config and metrics, no summary
    unfinished = runs[0].parent / "9_planar_K2_killed"
    unfinished.mkdir()
    for name in (".nfvi-run", "config.yaml"):
        shutil.copy(runs[0] / name, unfinished / name)
    lines = (runs[0] / "metrics.jsonl").read_text().splitlines()
    (unfinished / "metrics.jsonl").write_text(lines[0] + "\n" + '{"step": 1')  # torn last line
    # an evaluation inside a run: not a run
    ev = runs[1] / "eval" / "2026-01-01_00-00-00"
    ev.mkdir(parents=True)
    (ev / ".nfvi-run").write_text("pid 1\n")
    (ev / "eval.json").write_text("{}")
    return root


def summaries(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("summary.json"))]


def by_hand(root: Path, metric: str, group=lambda s: (s["flow"], s["K"])) -> dict:
    groups: dict = {}
    for s in summaries(root):
        groups.setdefault(group(s), []).append(s[metric])
    return groups


def test_means_std_n_equal_the_summaries(real, tmp_path, capsys):
    assert report([str(real)], None, "json", str(tmp_path)) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["group_keys"]["vae"] == ["flow.name", "K"]  # seeds aggregated, noise ignored
    assert len(doc["groups"]) == 4
    for metric in ("test_nll", "test_neg_elbo", "val_neg_elbo", "wall_seconds"):
        expect = by_hand(real, metric)
        for g in doc["groups"]:
            values = expect[(g["keys"]["flow.name"], g["keys"]["K"])]
            m = g["metrics"][metric]
            assert m["n"] == g["n"] == len(values) == 2
            assert m["mean"] == pytest.approx(statistics.fmean(values), rel=1e-12)
            assert m["std"] == pytest.approx(statistics.stdev(values), rel=1e-9)
    assert sorted(g["seeds"] for g in doc["groups"]) == [[0, 1]] * 4


def test_unfinished_run_is_named_in_every_output(real, tmp_path, capsys):
    report([str(real)], None, "table", str(tmp_path))
    out = capsys.readouterr().out
    assert "9_planar_K2_killed" in out
    assert "unfinished (last step 10)" in out
    assert "4 groups" in out and "1 unfinished or failed" in out
    assert "eval" not in out.replace("val -ELBO", "")  # the evaluation is not a run
    md = (tmp_path / "report.md").read_text()
    assert "9_planar_K2_killed" in md and "unfinished (last step 10)" in md
    rows = list(csv.DictReader(io.StringIO((tmp_path / "report.csv").read_text())))
    killed = [r for r in rows if "9_planar_K2_killed" in r["runs"]]
    assert len(killed) == 1 and killed[0]["status"].startswith("unfinished")
    for fmt in ("csv", "markdown", "json"):
        report([str(real)], None, fmt, str(tmp_path))
        captured = capsys.readouterr()
        assert "9_planar_K2_killed" in captured.out
        assert "9_planar_K2_killed" in captured.err  # and a line on stderr


def test_figures_are_written(real, tmp_path, capsys):
    report([str(real)], None, "table", str(tmp_path))
    for name in VAE_FIGURES:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    assert not any((tmp_path / n).exists() for n in ENERGY_FIGURES)  # no energy runs
    assert "![nll_vs_K](nll_vs_K.png)" in (tmp_path / "report.md").read_text()


def test_nll_figure_has_the_gap_panel_of_figure_4(real):
    from nfvi.report.figures import nll_figure

    runs = [r for r in find_runs([str(real)]) if r.summary]
    fig = nll_figure(build_report(runs, ["flow", "K"]))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["test NLL vs flow length", "test -ELBO vs flow length",
                      "gap -ELBO - NLL vs flow length"]
    # the gap panel plots, per flow and K, the seeds' mean of -ELBO - NLL
    expected = {}
    for r in runs:
        s = r.summary
        expected.setdefault(s["flow"], {}).setdefault(s["K"], []).append(
            s["test_neg_elbo"] - s["test_nll"])
    lines = fig.axes[2].get_lines()
    plotted = sorted(tuple(line.get_ydata()) for line in lines if line.get_marker() == "o")
    want = sorted(tuple(statistics.mean(v[k]) for k in sorted(v)) for v in expected.values())
    assert len(plotted) == len(want) == 2
    for got, exp in zip(plotted, want, strict=True):
        assert got == pytest.approx(exp, abs=1e-4)


def test_formats_parse_and_agree(real, tmp_path, capsys):
    report([str(real)], None, "csv", str(tmp_path))
    out = capsys.readouterr().out
    assert out == (tmp_path / "report.csv").read_text()
    rows = [r for r in csv.DictReader(io.StringIO(out)) if r["status"] == "finished"]
    expect = by_hand(real, "test_nll")
    assert len(rows) == 4
    for r in rows:
        values = expect[(r["flow.name"], int(r["K"]))]
        assert float(r["test_nll_mean"]) == pytest.approx(statistics.fmean(values), rel=1e-12)
        assert int(r["test_nll_n"]) == 2
    report([str(real)], None, "markdown", str(tmp_path))
    md = capsys.readouterr().out
    assert md == (tmp_path / "report.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert table[0].startswith("| flow | K | n | test NLL")
    assert len(table) == 2 + 4 and all(ln.count("|") == table[0].count("|") for ln in table)


def test_by_overrides_the_grouping(real, tmp_path, capsys):
    report([str(real)], ["flow"], "json", str(tmp_path))
    doc = json.loads(capsys.readouterr().out)
    assert doc["group_keys"]["vae"] == ["flow.name"]
    expect = by_hand(real, "test_nll", group=lambda s: s["flow"])
    for g in doc["groups"]:
        values = expect[g["keys"]["flow.name"]]
        assert g["n"] == 4
        assert g["metrics"]["test_nll"]["mean"] == pytest.approx(statistics.fmean(values))
    assert any("mixes K = 0, 2" in n for n in doc["notes"])  # never merged silently


def test_cli_end_to_end(real, tmp_path):
    proc = nfvi("report", str(real), "--by", "K,flow", "-o", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "9_planar_K2_killed" in proc.stdout and "test NLL" in proc.stdout
    assert (tmp_path / "report.csv").is_file() and (tmp_path / "nll_vs_K.png").is_file()
    proc = nfvi("report", str(tmp_path / "nope"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [
        f"error: {tmp_path / 'nope'} does not exist; pass a run directory or a folder of runs "
        "(e.g. outputs)"]


# -- synthetic runs ---------------------------------------------------------------------------
BASE = {
    "task": "vae", "K": 0, "device": "auto", "seed": 0, "name": "default",
    "output_root": "/x/outputs", "resume": None, "checkpoint": None,
    "dataset": {"name": "mnist", "source": "auto", "data_dir": "data", "download": False,
                "binarize": "dynamic", "threshold": 0.5, "val_size": 10000, "split_seed": 0,
                "resolved_source": "bundled"},
    "flow": {"name": "planar", "amortized": True, "hparams": {}},
    "model": {"name": "mlp", "latent_dim": 40, "hidden": [400, 400], "activation": "maxout",
              "maxout_pool": 4, "min_log_var": -12.0},
    "optim": {"name": "adam", "lr": 0.001, "momentum": 0.0, "weight_decay": 0.0,
              "betas": [0.9, 0.999], "eps": 1e-08, "alpha": 0.99},
    "trainer": {"batch_size": 100, "max_steps": 1500, "max_epochs": None, "val_interval": 250,
                "log_interval": 50, "patience": 10, "beta_schedule": "paper",
                "beta_start": 0.01, "beta_steps": 500, "grad_clip": None, "num_threads": None,
                "progress": True, "mc_samples": 256},
    "eval": {"iw_samples": 200, "chunk": 500, "batch_size": 100, "split": "test",
             "max_examples": None, "seed": 1234, "kl_samples": 100000, "grid": 400},
    "target": {"name": "u1", "envelope_std": 4.0},
}


def config(**over) -> dict:
    cfg = json.loads(json.dumps(BASE))
    for dotted, value in over.items():
        *parents, last = dotted.split("__")
        node = cfg
        for p in parents:
            node = node[p]
        node[last] = value
    return cfg


def vae_summary(cfg: dict, nll: float, elbo: float) -> dict:
    return {
        "task": "vae", "dataset": "mnist", "data_source": "bundled",
        "flow": cfg["flow"]["name"], "K": cfg["K"], "amortized": True, "seed": cfg["seed"],
        "steps": 1500, "epochs": 37, "best_step": 1500, "stopped_early": False,
        "wall_seconds": 12.5, "val_neg_elbo": elbo + 1.0, "test_neg_elbo": elbo,
        "test_neg_elbo_stderr": 0.5, "test_nll": nll, "test_nll_stderr": 0.4,
        "test_gap": elbo - nll,
        "test_recon": 80.0, "test_kl": 20.0, "test_examples": 500, "iw_samples": 200,
        "eval_seconds": 1.0, "device": "cpu",
        "versions": {"nfvi": "0.1.0", "torch": "2.4.0", "python": "3.11.7"},
    }


def write_run(d: Path, cfg: dict | None, summary: dict | None, metrics: list[dict],
              hydra_only: bool = False) -> Path:
    d.mkdir(parents=True)
    (d / ".nfvi-run").write_text("pid 1 started 2026-01-01T00:00:00\n")
    if cfg is not None:
        target = d / ".hydra" / "config.yaml" if hydra_only else d / "config.yaml"
        target.parent.mkdir(exist_ok=True)
        target.write_text(yaml.safe_dump(cfg, sort_keys=False))
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary, indent=2))
    return d


def val_curve(start: float) -> list[dict]:
    return [{"step": s, "epoch": 0, "split": "val", "neg_elbo": start - s / 10, "recon": 1.0,
             "kl": 1.0, "beta": 1.0, "lr": 0.001, "elapsed": s / 100} for s in (250, 500, 750)]


@pytest.fixture()
def synthetic(tmp_path) -> Path:
    root = tmp_path / "runs"
    nll = {("planar", 2): [90.0, 92.0, 94.0], ("planar", 8): [88.0], ("radial", 2): [91.0, 95.0]}
    for (flow, k), values in nll.items():
        for seed, v in enumerate(values):
            cfg = config(K=k, seed=seed, flow__name=flow,
                         output_root=f"/elsewhere/{seed}", dataset__data_dir=f"/d{seed}")
            write_run(root / f"{flow}_K{k}" / f"s{seed}", cfg, vae_summary(cfg, v, v + 5),
                      val_curve(v + 20))
    write_run(root / "planar_K8" / "crashed", config(K=8), None, [])
    return root


def test_synthetic_means_by_hand(synthetic, tmp_path, capsys):
    rep = build_report(find_runs([str(synthetic)]))
    assert rep.by["vae"] == ["flow.name", "K"]  # output_root, data_dir, seed: noise
    got = {(g.value("flow.name"), g.value("K")): g.stats["test_nll"] for g in rep.groups}
    assert got[("planar", 2)].mean == 92.0 and got[("planar", 2)].std == 2.0
    assert got[("planar", 2)].n == 3
    assert got[("radial", 2)].mean == 93.0
    assert got[("radial", 2)].std == pytest.approx(math.sqrt(8.0))
    assert got[("planar", 8)].mean == 88.0 and got[("planar", 8)].n == 1
    assert math.isnan(got[("planar", 8)].std)  # n = 1: NaN, shown as the mean alone
    assert [r.status for r in rep.incomplete] == ["failed: no metrics"]
    # a run directory itself, a file inside it, and overlapping paths: each run once
    one = synthetic / "planar_K2" / "s1"
    assert [r.path for r in find_runs([str(one), str(one / "summary.json")])] == [one]
    assert len(find_runs([str(synthetic), str(synthetic / "planar_K2")])) == 7

    report([str(synthetic)], None, "table", str(tmp_path))
    out = capsys.readouterr().out
    assert "92.00 ± 2.00" in out and "93.00 ± 2.83" in out and "88.00 " in out
    assert "planar_K8/crashed: failed: no metrics" in out
    report([str(synthetic)], None, "json", str(tmp_path))
    doc = json.loads(capsys.readouterr().out)
    single = next(g for g in doc["groups"] if g["n"] == 1)
    assert single["metrics"]["test_nll"] == {"mean": 88.0, "std": None, "n": 1}


def test_stat():
    s = stat([1.0, 2.0, 3.0, 4.0])
    assert (s.mean, s.n) == (2.5, 4) and s.std == pytest.approx(statistics.stdev([1, 2, 3, 4]))
    assert stat([]).n == 0 and math.isnan(stat([]).mean)


def test_differing_keys_group_and_implied_keys_do_not(tmp_path):
    root = tmp_path / "runs"
    i = 0
    for opt, lr, mom in (("adam", 1e-3, 0.0), ("rmsprop", 1e-5, 0.9)):
        for hidden in ([32], [64]):
            for seed in (0, 1):
                cfg = config(K=2, seed=seed, optim__name=opt, optim__lr=lr, optim__momentum=mom,
                             model__hidden=hidden, name=f"e{seed}")
                write_run(root / f"r{i}", cfg, vae_summary(cfg, 90.0 + i, 95.0), val_curve(99))
                i += 1
    rep = build_report(find_runs([str(root)]))
    assert rep.by["vae"] == ["flow.name", "K", "optim.name", "model.hidden"]
    assert len(rep.groups) == 4 and all(g.n == 2 for g in rep.groups)
    assert rep.notes == []
    rep = build_report(find_runs([str(root)]), ["lr"])  # a unique suffix of optim.lr
    assert rep.by["vae"] == ["optim.lr"]
    assert any("mixes model.hidden = [32], [64]" in n for n in rep.notes)


def energy_summary(target: str, flow: str, k: int, kl: float, seed: int) -> dict:
    return {
        "task": "energy", "target": target, "flow": flow, "K": k, "steps": 4000, "kl": kl,
        "kl_stderr": 0.01, "log_z": 1.8775, "ess_percent": 50.0, "wall_seconds": 3.0,
        "train_seconds": 2.0, "kl_samples": 100000, "kl_nonfinite_samples": 0,
        "envelope": None, "envelope_std": None,
        "log_z_quadrature": {"rule": "midpoint, uniform grid", "spacing": 0.02,
                             "box": [[-6.0, 6.0], [-6.0, 6.0]], "points": 360000,
                             "refinement_delta": 1e-13, "closed_form": None},
        "density_method": "histogram", "mc_samples": 256, "seed": seed, "device": "cpu",
    }


def tiny_png(path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1))
    fig.subplots().imshow([[0, 1], [1, 0]])
    fig.savefig(path, format="png")


def test_energy_runs(tmp_path, capsys):
    root = tmp_path / "energy"
    kls = {}
    for target in ("u1", "u2"):
        for k in (2, 8):
            for seed in (0, 1):
                kl = 1.0 / k + seed * 0.1 + (target == "u2")
                kls.setdefault((target, k), []).append(kl)
                cfg = config(task="energy", K=k, seed=seed, target__name=target)
                d = write_run(root / f"{target}_K{k}_s{seed}",
                              # the energy task's config: Hydra's copy only, or none at all
                              cfg if seed == 0 else None,
                              energy_summary(target, "planar", k, kl, seed),
                              [{"step": 50, "loss": 1.0, "free_energy": 2.0, "beta": 0.1,
                                "lr": 0.01, "elapsed": 1.0}], hydra_only=True)
                tiny_png(d / "density.png")
    write_run(root / "u1_K32_running", config(task="energy", K=32), None,
              [{"step": s, "loss": 1.0, "free_energy": 2.0, "beta": 0.1, "lr": 0.01,
                "elapsed": 1.0} for s in (50, 100)])
    out_dir = tmp_path / "out"
    assert report([str(root)], None, "json", str(out_dir)) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["group_keys"]["energy"] == ["target.name", "flow.name", "K"]
    for g in doc["groups"]:
        values = kls[(g["keys"]["target.name"], g["keys"]["K"])]
        assert g["metrics"]["kl"]["mean"] == pytest.approx(statistics.fmean(values))
        assert g["metrics"]["kl"]["std"] == pytest.approx(statistics.stdev(values))
        assert g["metrics"]["kl"]["n"] == 2
    assert [(r["status"], r["task"]) for r in doc["incomplete"]] == [
        ("unfinished (last step 100)", "energy")]
    for name in ENERGY_FIGURES:
        assert (out_dir / name).read_bytes().startswith(PNG)
    assert not (out_dir / "nll_vs_K.png").exists()


def test_mixed_tasks_get_one_table_each(synthetic, tmp_path, capsys):
    write_run(synthetic / "energy", config(task="energy", K=2),
              energy_summary("u1", "planar", 2, 0.5, 0), [])
    report([str(synthetic)], None, "markdown", str(synthetic))  # default out: the first path
    md = capsys.readouterr().out
    assert "## VAE runs" in md and "## energy runs" in md
    assert "| u1 | planar | 2 | 1 | 0.5000 |" in md
    assert (synthetic / "report.md").read_text() == md
    assert (synthetic / "kl_vs_K.png").is_file() and (synthetic / "nll_vs_K.png").is_file()


@pytest.mark.parametrize(
    ("paths", "by", "fmt", "fragment"),
    [
        (["missing"], None, "table", "missing does not exist; pass a run directory"),
        (["empty"], None, "table", "no runs found below"),
        (["runs"], ["nope"], "table", "unknown --by key 'nope'"),
        (["runs"], ["K", "flowname"], "table", "did you mean flow.name"),
        (["runs"], None, "xml", "unknown --format 'xml'; use one of table, csv"),
    ],
)
def test_bad_input_is_one_line(synthetic, tmp_path, paths, by, fmt, fragment):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as err:
        report([str(tmp_path / p) for p in paths], by, fmt, str(tmp_path / "out"))
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg and "; " in msg


def test_k0_groups_under_two_flow_names_are_called_the_same_model(tmp_path):
    for flow in ("planar", "radial"):
        for K in (0, 4):
            cfg = config(K=K, flow__name=flow)
            write_run(tmp_path / f"{flow}_{K}", cfg, vae_summary(cfg, 100.0 - K, 110.0 - K),
                      val_curve(120.0))
    rep = build_report(find_runs([str(tmp_path)]))
    same = [n for n in rep.notes if "same model" in n]
    assert len(same) == 1, rep.notes
    assert "K=0" in same[0] and "planar" in same[0] and "radial" in same[0]
    # K=4 under two flows is two models: no note about those
    assert "K=4" not in same[0].split("are the same model")[0]


def test_paired_differences_to_k0_match_a_hand_computation(tmp_path):
    import math

    gen = {0: [100.0, 90.0, 80.0], 1: [101.0, 91.0, 79.0]}  # K=0 NLL per point, by seed
    shift = {0: [-1.0, -2.0, -0.5], 1: [-1.5, -1.0, -0.5]}  # K=8 minus K=0, by seed
    for seed in (0, 1):
        for K in (0, 8):
            cfg = config(K=K, seed=seed)
            nll = [v + (shift[seed][i] if K else 0.0) for i, v in enumerate(gen[seed])]
            elbo = [v + (4.0 if K else 5.0) for v in nll]  # the gap shrinks by 1 nat
            d = write_run(tmp_path / f"s{seed}_K{K}", cfg,
                          vae_summary(cfg, sum(nll) / 3, sum(elbo) / 3), val_curve(120.0))
            (d / "test_per_example.json").write_text(json.dumps(
                {"split": "test", "iw_samples": 200, "nll": nll, "neg_elbo": elbo}))
    rep = build_report(find_runs([str(tmp_path)]))
    (k8,) = [g for g in rep.groups if g.value("K") == 8]
    per_point = [(shift[0][i] + shift[1][i]) / 2 for i in range(3)]
    mean = sum(per_point) / 3
    se = math.sqrt(sum((v - mean) ** 2 for v in per_point) / 2 / 3)
    s = k8.stats["paired_d_nll"]
    assert s.mean == pytest.approx(mean) and s.std == pytest.approx(se) and s.n == 2
    assert k8.stats["paired_d_gap"].mean == pytest.approx(-1.0)
    (k0,) = [g for g in rep.groups if g.value("K") == 0]
    assert k0.stats["paired_d_nll"].n == 0  # the baseline itself is not paired
    assert k8.stats["test_gap"].mean == pytest.approx(4.0)


def test_eval_flag_uses_the_newest_test_evaluation(tmp_path, capsys):
    """``--eval``: a run's newest ``eval/<stamp>/`` of the test split replaces its test
    results and per-point values (for the paired columns); a newer validation-split
    evaluation, or an unreadable one, does not; runs without one keep their own."""
    runs = tmp_path / "runs"
    for K in (0, 8):
        cfg = config(K=K, seed=0)
        d = write_run(runs / f"K{K}", cfg, vae_summary(cfg, 90.0, 95.0), val_curve(120.0))
        (d / "test_per_example.json").write_text(json.dumps(
            {"split": "test", "iw_samples": 200, "nll": [90.0, 90.0], "neg_elbo": [95.0, 95.0]}))
    k8 = runs / "K8"

    def evaluation(stamp: str, split: str, nll: float, per_point: list[float] | None) -> None:
        ev = k8 / "eval" / stamp
        ev.mkdir(parents=True)
        (ev / ".nfvi-run").write_text("pid 1\n")
        result = {"split": split, f"{split}_nll": nll, f"{split}_neg_elbo": nll + 3.0,
                  f"{split}_gap": 3.0, "iw_samples": 5000, "elbo_samples": 5000}
        (ev / "eval.json").write_text(json.dumps(result))
        if per_point is not None:
            (ev / f"{split}_per_example.json").write_text(json.dumps(
                {"split": split, "nll": per_point, "neg_elbo": [v + 3.0 for v in per_point]}))

    evaluation("2026-01-01_00-00-00", "test", 70.0, [70.0, 70.0])
    evaluation("2026-01-02_00-00-00", "test", 88.0, [87.0, 89.0])  # the newest of the test split
    evaluation("2026-01-03_00-00-00", "val", 10.0, None)
    (k8 / "eval" / "2026-01-04_00-00-00").mkdir()  # unreadable: no eval.json

    def k8_group(evaluations: bool):
        rep = build_report(find_runs([str(runs)], evaluations))
        return next(g for g in rep.groups if g.value("K") == 8)

    own, new = k8_group(False), k8_group(True)
    assert own.stats["test_nll"].mean == 90.0 and own.stats["paired_d_nll"].mean == 0.0
    assert new.stats["test_nll"].mean == 88.0 and new.stats["test_gap"].mean == 3.0
    assert new.stats["paired_d_nll"].mean == pytest.approx(-2.0)
    assert new.stats["paired_d_gap"].mean == pytest.approx(-2.0)
    (run,) = [r for r in find_runs([str(runs)], True) if r.path == k8]
    assert run.summary["iw_samples"] == 5000 and run.evaluation.name == "2026-01-02_00-00-00"
    report([str(runs)], None, "markdown", str(tmp_path / "out"), evaluations=True)
    assert "Test results of 1 runs are their newest `nfvi eval`" in capsys.readouterr().out


def test_bits_per_dim_columns_appear_only_for_runs_that_have_them(tmp_path, capsys):
    root = tmp_path / "runs"
    for seed, nll in enumerate((3000.0, 3010.0)):  # 8-bit data: summaries carry bits/dim
        cfg = config(K=0, seed=seed, dataset__name="frey_faces")
        s = vae_summary(cfg, nll, nll + 40)
        s.update(test_nll_bpd=nll / (560 * math.log(2)),
                 test_neg_elbo_bpd=(nll + 40) / (560 * math.log(2)))
        write_run(root / f"frey{seed}", cfg, s, val_curve(nll))
    report([str(root)], None, "markdown", str(tmp_path))
    out = capsys.readouterr().out
    assert "test NLL bits/dim" in out and "test -ELBO bits/dim" in out
    bpd = [3000.0 / (560 * math.log(2)), 3010.0 / (560 * math.log(2))]
    assert f"{statistics.mean(bpd):.4f} ± {statistics.stdev(bpd):.4f}" in out
    binary = tmp_path / "binary"
    cfg = config(K=0)
    write_run(binary / "r", cfg, vae_summary(cfg, 90.0, 95.0), val_curve(90.0))
    report([str(binary)], None, "markdown", str(tmp_path))
    assert "bits/dim" not in capsys.readouterr().out
