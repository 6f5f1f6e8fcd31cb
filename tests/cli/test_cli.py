"""The ``nfvi`` command end to end, as real processes on the bundled data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# a tiny model so that each run takes seconds; everything else is the real pipeline
TINY = [
    "model.hidden=[32]",
    "model.latent_dim=4",
    "K=2",
    "trainer.max_steps=30",
    "trainer.val_interval=10",
    "trainer.log_interval=5",
    "trainer.progress=false",
    "trainer.num_threads=1",
    "eval.iw_samples=10",
    "eval.max_examples=50",
]


def nfvi(*args: str, env: dict, cwd: Path | None = None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-m", "nfvi.cli", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob(".nfvi-run") if "eval" not in p.parts)


def assert_one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for frag in fragments:
        assert frag in lines[0], lines[0]


def interrupted(*args: str, root: Path, lines: int, env: dict, sig=signal.SIGTERM):
    """Start ``nfvi ARGS``; once a metrics.jsonl under ``root`` has ``lines`` lines, send
    ``sig``; return the finished process and its output."""
    proc = subprocess.Popen([sys.executable, "-m", "nfvi.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = list(root.rglob("metrics.jsonl"))
        if metrics and len(metrics[0].read_text().splitlines()) >= lines:
            break
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short training run shared by the tests that only read it."""
    tmp = tmp_path_factory.mktemp("trained")
    e = dict(os.environ, NFVI_OUTPUT_ROOT=str(tmp / "outputs"), NFVI_DATA_DIR=str(tmp / "nodata"))
    proc = nfvi("train", *TINY, "name=shared", env=e)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = run_dirs(tmp / "outputs")
    return run, e, proc


def test_train_writes_a_complete_run_directory(trained):
    run, _, proc = trained
    assert "BUNDLED" in proc.stdout  # the fallback is said loudly
    assert run.parent.name == "planar_K2" and run.parent.parent.name == "shared"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "samples.png",
                 "reconstructions.png", "checkpoints/last.pt", "checkpoints/best.pt",
                 ".hydra/config.yaml", "nfvi.log"):
        assert (run / name).is_file(), name
    s = json.loads((run / "summary.json").read_text())
    for key in ("dataset", "data_source", "flow", "K", "amortized", "seed", "steps", "epochs",
                "wall_seconds", "val_neg_elbo", "test_neg_elbo", "test_nll", "test_nll_stderr",
                "iw_samples", "device", "versions"):
        assert key in s, key
    assert s["data_source"] == "bundled" and s["steps"] == 30 and s["K"] == 2
    assert s["iw_samples"] == 10 and s["test_examples"] == 50
    assert s["test_nll"] <= s["test_neg_elbo"] + 3 * s["test_neg_elbo_stderr"]
    assert "resolved_source: bundled" in (run / "config.yaml").read_text()
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in val] == [10, 20, 30]
    for r in records:
        assert {"step", "epoch", "split", "neg_elbo", "recon", "kl", "beta", "lr",
                "elapsed"} <= set(r)


def test_checkpoint_loads_with_weights_only(trained):
    run, _, _ = trained
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "schedule", "state", "rng", "config"} <= set(ckpt)
    assert ckpt["state"]["step"] == 30
    assert ckpt["config"]["K"] == 2 and ckpt["config"]["flow"]["name"] == "planar"


def test_eval_from_checkpoint(trained):
    run, e, _ = trained
    proc = nfvi("eval", f"checkpoint={run / 'checkpoints' / 'best.pt'}", "eval.iw_samples=7",
                "eval.max_examples=20", "eval.split=val", env=e)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (out,) = (run / "eval").iterdir()
    result = json.loads((out / "eval.json").read_text())
    assert result["iw_samples"] == 7 and result["val_examples"] == 20
    assert result["split"] == "val"
    assert result["val_nll"] <= result["val_neg_elbo"] + 3 * result["val_neg_elbo_stderr"]
    assert (out / "samples.png").is_file() and (out / "reconstructions.png").is_file()
    assert "val_nll" in proc.stdout


def test_eval_of_a_run_directory_repeats_the_training_evaluation(trained):
    run, e, _ = trained
    proc = nfvi("eval", f"checkpoint={run}", "eval.iw_samples=10", "eval.max_examples=50", env=e)
    assert proc.returncode == 0, proc.stderr
    evals = sorted((run / "eval").iterdir())
    result = json.loads((evals[-1] / "eval.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert result["test_nll"] == pytest.approx(summary["test_nll"], abs=1e-4)
    assert result["test_neg_elbo"] == pytest.approx(summary["test_neg_elbo"], abs=1e-4)


def test_multirun_gives_one_directory_per_job(env, tmp_path):
    proc = nfvi("train", "-m", *TINY, "trainer.max_steps=10", "K=0,1", "name=sweep",
                env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = run_dirs(tmp_path / "outputs")
    assert len(runs) == 2
    assert all(r.parent.parent.name == "multirun" for r in runs)
    ks = sorted(json.loads((r / "summary.json").read_text())["K"] for r in runs)
    assert ks == [0, 1]


def test_interrupted_then_resumed_run_matches_an_uninterrupted_one(env, tmp_path):
    args = [*TINY, "trainer.max_steps=400", "trainer.val_interval=50", "trainer.log_interval=10"]
    full = nfvi("train", *args, "name=full", env=env)
    assert full.returncode == 0, full.stderr

    root = tmp_path / "outputs" / "cut"
    proc, out, err = interrupted("train", *args, "name=cut", root=root, lines=6, env=env)
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert "resume with: nfvi train resume=" in err
    (cut,) = run_dirs(root)
    stopped_at = torch.load(cut / "checkpoints" / "last.pt", weights_only=True)["state"]["step"]
    assert 0 < stopped_at < 400

    resumed = nfvi("train", f"resume={cut}", env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert run_dirs(root) == [cut]  # continued in its own directory

    (ref,) = run_dirs(tmp_path / "outputs" / "full")

    def metrics(run):
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "elapsed"} for r in rows]

    assert metrics(cut) == metrics(ref)
    a, b = (json.loads((r / "summary.json").read_text()) for r in (cut, ref))
    for key in ("steps", "val_neg_elbo", "test_neg_elbo", "test_nll"):
        assert a[key] == b[key], key


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["flow=nope"], ["flow/nope", "planar", "radial"]),
        (["flow.name=nope"], ["unknown flow 'nope'"]),
        (["K=abc"], ["K"]),
        (["K=-3"], ["K=-3", ">= 0"]),
        (["device=tpu"], ["device", "cpu"]),
        (["dataset=nope"], ["dataset/nope", "mnist"]),
        (["no_such_key=1"], ["no_such_key"]),
        (["dataset.source=full"], ["MNIST", "dataset.download=true"]),
        (["dataset=fashion_mnist"], ["Fashion"]),
        (["optim=nope"], ["optim/nope", "adam"]),
        (["trainer.max_steps=0"], ["trainer.max_steps"]),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(env, tmp_path, args, fragments):
    proc = nfvi("train", *TINY, *args, env=env)
    assert_one_line_error(proc, *fragments)
    assert not run_dirs(tmp_path / "outputs") or not any(
        (r / "summary.json").exists() for r in run_dirs(tmp_path / "outputs"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a missing GPU")
def test_missing_cuda_device_is_one_line(env):
    assert_one_line_error(nfvi("train", *TINY, "device=cuda", env=env), "CUDA", "device=cpu")


def test_missing_cuda_index_is_one_line(env):
    proc = nfvi("train", *TINY, "device=cuda:99", env=env)
    assert_one_line_error(proc, "cuda:99")


def test_missing_and_corrupt_checkpoints(env, tmp_path):
    assert_one_line_error(nfvi("eval", f"checkpoint={tmp_path / 'nope.pt'}", env=env),
                          "not found")
    bad = tmp_path / "run" / "checkpoints" / "best.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not a checkpoint")
    assert_one_line_error(nfvi("eval", f"checkpoint={bad}", env=env), "corrupt")
    assert_one_line_error(nfvi("eval", env=env), "checkpoint=")
    assert_one_line_error(nfvi("train", f"resume={tmp_path / 'nope'}", env=env), "resume")


def test_debug_shows_the_traceback(env):
    env = dict(env, NFVI_DEBUG="1")
    proc = nfvi("train", *TINY, "K=-3", env=env)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_a_run_directory_is_never_reused(env, tmp_path):
    fixed = tmp_path / "fixed"
    first = nfvi("train", *TINY, "trainer.max_steps=5", f"hydra.run.dir={fixed}", env=env)
    assert first.returncode == 0, first.stderr
    before = (fixed / "summary.json").read_bytes()
    second = nfvi("train", *TINY, "trainer.max_steps=5", f"hydra.run.dir={fixed}", env=env)
    assert_one_line_error(second, "already holds a run")
    assert (fixed / "summary.json").read_bytes() == before


def test_help_lists_groups_without_importing_torch(env):
    code = (
        "import sys\n"
        "sys.argv = ['nfvi', 'train', '--help']\n"
        "from nfvi.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for group in ("dataset:", "flow:", "model:", "optim:", "trainer:", "eval:"):
        assert group in proc.stdout
    assert "planar, radial" in proc.stdout
    assert proc.stdout.strip().endswith("NO_TORCH")


def test_cfg_job_and_version(env):
    proc = nfvi("train", "--cfg", "job", "flow=radial", "K=7", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "K: 7" in proc.stdout and "name: radial" in proc.stdout
    version = nfvi("--version", env=env)
    assert version.returncode == 0 and version.stdout.startswith("nfvi ")


def test_results_follow_the_umask(trained):
    run, _, _ = trained
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("config.yaml", "summary.json", "metrics.jsonl", "samples.png",
                 "reconstructions.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
