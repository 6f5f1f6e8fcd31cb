"""Fault injection through the real CLI: SIGKILL at random points (inside checkpoint and
metrics writes too), a torn metrics line, a full disk, SIGTERM during the evaluation. After
each: the last checkpoint loads, a resume reaches the uninterrupted run's final metrics, and
no temporary file is left once the run has started again."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.cli.test_cli import TINY, nfvi, run_dirs

# checkpoints of a few MB (so that writes take a while) written every 4 steps
FAULTY = [a for a in TINY if not a.startswith(("model.hidden", "trainer.max_steps",
                                                "trainer.val_interval", "trainer.log_interval"))]
FAULTY += ["model.hidden=[400]", "trainer.max_steps=48", "trainer.val_interval=4",
           "trainer.log_interval=2"]


def rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(ln).items() if k != "elapsed"}
            for ln in (run / "metrics.jsonl").read_text().splitlines()]


def finals(run: Path) -> dict:
    s = json.loads((run / "summary.json").read_text())
    return {k: s[k] for k in ("steps", "val_neg_elbo", "test_neg_elbo", "test_nll")}


def temporaries(run: Path) -> list[Path]:
    return list(run.rglob("*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    env = dict(os.environ, NFVI_OUTPUT_ROOT=str(root), NFVI_DATA_DIR=str(root / "no-data"))
    proc = nfvi("train", *FAULTY, env=env)
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(root)
    return run


def start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nfvi.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_at_random(proc: subprocess.Popen, run_root: Path, rng: random.Random) -> str:
    """SIGKILL once a checkpoint exists: preferably while a checkpoint's temporary file is
    being written, else after a random delay. Returns where it struck."""
    deadline = time.time() + 60
    while time.time() < deadline and not list(run_root.rglob("last.pt")):
        time.sleep(0.002)
    until = time.time() + rng.uniform(0.05, 1.5)
    where = "random"
    while time.time() < until and proc.poll() is None:
        if any(run_root.rglob(".*.tmp")):
            where = "checkpoint write"
            break
    proc.kill()
    proc.wait(timeout=60)
    return where


def test_sigkill_at_random_points_then_resume(env, tmp_path, reference):
    rng = random.Random(1234)
    root = tmp_path / "outputs"
    proc = start(["train", *FAULTY], env)
    strikes = [kill_at_random(proc, root, rng)]
    (run,) = run_dirs(root)
    for _ in range(3):  # killed again while resuming, three times
        assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["state"]
        proc = start(["train", f"resume={run}"], env)
        strikes.append(kill_at_random(proc, root, rng))
        if proc.returncode == 0:
            break
    done = nfvi("train", f"resume={run}", env=env)
    assert done.returncode == 0, done.stderr
    assert rows(run) == rows(reference)
    assert finals(run) == finals(reference)
    assert not temporaries(run), strikes


def test_a_torn_metrics_line_is_dropped_on_resume(env, tmp_path, reference):
    root = tmp_path / "outputs"
    proc = start(["train", *FAULTY], env)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(root.rglob("*.pt"))) < 2:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    (run,) = run_dirs(root)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 999, "split": "tra')  # a kill in the middle of an append
    done = nfvi("train", f"resume={run}", env=env)
    assert done.returncode == 0, done.stderr
    assert "dropped" in done.stdout
    assert rows(run) == rows(reference) and finals(run) == finals(reference)


def _mount_tmpfs(path: Path, size_mb: int) -> bool:
    path.mkdir(parents=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


def test_a_full_disk_stops_in_one_line_and_resumes_after_space_is_freed(env, tmp_path,
                                                                         reference):
    disk = tmp_path / "small"
    if not _mount_tmpfs(disk, 160):
        pytest.skip("cannot mount a size-limited tmpfs here (needs root); see the in-process "
                    "ENOSPC test in tests/test_rundir.py")
    try:
        env = dict(env, NFVI_OUTPUT_ROOT=str(disk / "outputs"))
        # leave room for a few checkpoints only
        free = shutil.disk_usage(disk).free
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (free - 25 * 2**20))
        proc = nfvi("train", *FAULTY, env=env)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        line = proc.stderr.strip()
        assert "\n" not in line and "no space left on the device" in line and "intact" in line
        (run,) = run_dirs(disk / "outputs")
        last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        assert 0 <= last["state"]["step"] < 48
        filler.unlink()
        done = nfvi("train", f"resume={run}", env=env)
        assert done.returncode == 0, done.stderr
        assert rows(run) == rows(reference) and finals(run) == finals(reference)
        assert not temporaries(run)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_sigterm_during_the_evaluation(env, tmp_path):
    args = [*TINY, "eval.iw_samples=1000", "eval.max_examples=200"]
    ref = nfvi("train", *args, "name=ref", env=env)
    assert ref.returncode == 0, ref.stderr
    root = tmp_path / "outputs" / "cut"
    proc = start(["train", *args, "name=cut"], env)
    deadline = time.time() + 120
    while time.time() < deadline:  # the last validation is logged: the evaluation runs now
        m = list(root.rglob("metrics.jsonl"))
        if m and '"step": 30, "epoch": 0, "split": "val"' in m[0].read_text():
            break
        time.sleep(0.005)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "during the evaluation" in err and len(err.strip().splitlines()) == 1
    (run,) = run_dirs(root)
    assert not (run / "summary.json").exists()
    torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    done = nfvi("train", f"resume={run}", env=env)
    assert done.returncode == 0, done.stderr
    (reference,) = run_dirs(tmp_path / "outputs" / "ref")
    assert finals(run) == finals(reference)
