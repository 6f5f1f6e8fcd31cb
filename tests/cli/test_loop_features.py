"""Every loop feature in both tasks, through the real CLI: signals and resume, the non-finite
guard, the logger."""

from __future__ import annotations

import json

import pytest
import torch

from tests.cli.test_cli import TINY, assert_one_line_error, interrupted, nfvi, run_dirs

ENERGY = ["task=energy", "target=u1", "K=8", "trainer.max_steps=1500", "trainer.log_interval=10",
          "trainer.val_interval=250", "trainer.progress=false", "eval.kl_samples=20000",
          "eval.grid=50"]


def summary(run) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_energy_run_interrupted_with_sigterm_resumes_to_the_same_kl(env, tmp_path):
    full = nfvi("train", *ENERGY, "name=full", env=env)
    assert full.returncode == 0, full.stderr
    root = tmp_path / "outputs" / "cut"
    proc, out, err = interrupted("train", *ENERGY, "name=cut", root=root, lines=30,
                                 env=env)
    assert proc.returncode == 143, out + err
    assert "resume with: nfvi train resume=" in err and len(err.strip().splitlines()) == 1
    (cut,) = run_dirs(root)
    last = torch.load(cut / "checkpoints" / "last.pt", weights_only=True)
    assert 0 < last["state"]["step"] < 1500 and last["task"] == "energy"
    assert not (cut / "summary.json").exists()

    resumed = nfvi("train", f"resume={cut}", env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    (ref,) = run_dirs(tmp_path / "outputs" / "full")
    a, b = summary(cut), summary(ref)
    assert a["steps"] == b["steps"] == 1500
    assert a["kl"] == b["kl"] and a["kl_stderr"] == b["kl_stderr"]


def test_a_diverging_vae_stops_in_one_line_and_stays_evaluable(env, tmp_path):
    proc = nfvi("train", *TINY, "optim.lr=1e6", "trainer.max_steps=300", env=env)
    assert_one_line_error(proc, "not finite at step", "optim.lr")
    assert proc.returncode == 3
    (run,) = run_dirs(tmp_path / "outputs")
    assert not (run / "summary.json").exists()
    ev = nfvi("eval", f"checkpoint={run}", "eval.iw_samples=5", "eval.max_examples=20", env=env)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    (out,) = (run / "eval").iterdir()
    result = json.loads((out / "eval.json").read_text())
    assert result["step"] == 0  # the last finite state: before the first update
    assert all(abs(result[k]) < 1e6 for k in ("test_nll", "test_neg_elbo"))


def test_a_diverging_energy_run_stops_too(env):
    proc = nfvi("train", "task=energy", "K=2", "optim.lr=1e8", "trainer.max_steps=200",
                "trainer.progress=false", env=env)
    assert_one_line_error(proc, "not finite at step")


@pytest.mark.parametrize("task", ["vae", "energy"])
def test_tensorboard_in_both_tasks(env, tmp_path, task):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    args = TINY if task == "vae" else ["task=energy", "K=2", "trainer.max_steps=60",
                                       "trainer.val_interval=20", "trainer.log_interval=10",
                                       "trainer.progress=false", "eval.kl_samples=2000",
                                       "eval.grid=40"]
    proc = nfvi("train", *args, "logger=tensorboard", env=env)
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(tmp_path / "outputs")
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    acc = ea.EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert acc.Scalars("train/loss")
    images = {"vae": {"samples", "reconstructions"}, "energy": {"density", "samples"}}[task]
    assert images <= set(acc.Tags()["images"])


def test_resume_applies_optimizer_overrides_for_real(env, tmp_path):
    # a constant rate, so the logged lr is optim.lr itself (the default decays it)
    first = nfvi("train", *TINY, "trainer.max_steps=20", "trainer.lr_schedule=constant", env=env)
    assert first.returncode == 0, first.stderr
    (run,) = run_dirs(tmp_path / "outputs")
    resumed = nfvi("train", f"resume={run}", "trainer.max_steps=40", "optim.lr=0.0005", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "optim.lr=0.0005" in resumed.stdout  # said, and recorded
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text()
                                           .splitlines())}
    assert lrs[20] == 0.001 and lrs[25] == 0.0005 and lrs[40] == 0.0005
    assert "lr: 0.0005" in (run / "config.yaml").read_text()
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["optimizer"]["param_groups"][0]["lr"] == 0.0005


def test_eval_help_explains_eval(env):
    proc = nfvi("eval", "--help", env=env)
    assert proc.returncode == 0 and "checkpoint=" in proc.stdout
    assert "nfvi eval" in proc.stdout.splitlines()[0]
