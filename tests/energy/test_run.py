"""The energy task end to end through the Python API (the CLI's configs, jobs and loop)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import nfvi
from nfvi.checkpoint import load_checkpoint
from nfvi.config import config_dir, register_configs
from nfvi.energy import TARGETS, EnergyModel, estimate_kl, log_partition
from nfvi.energy import run as run_mod
from nfvi.errors import NfviError
from nfvi.flows import FLOWS, FlowLayer, register_flow

SUMMARY_KEYS = {
    "schema", "task", "target", "flow", "K", "steps", "kl", "kl_stderr", "log_z",
    "ess_percent", "wall_seconds", "seed", "device", "versions",
}
SMALL = ["task=energy", "eval.kl_samples=20000", "eval.grid=100", "trainer.log_interval=25",
         "trainer.progress=false"]


@pytest.fixture(autouse=True)
def _small_histogram(monkeypatch):
    monkeypatch.setattr(run_mod, "HIST_SAMPLES", 100_000)
    monkeypatch.setattr(run_mod, "HIST_BINS", 80)


def train(tmp_path: Path, *overrides: str) -> nfvi.api.RunResult:
    return nfvi.run("train", [*SMALL, f"output_root={tmp_path}", *overrides])


def test_energy_trainer_defaults_compose():
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose("config", overrides=["task=energy"])
    assert cfg.trainer.max_steps == 4000 and cfg.optim.lr == pytest.approx(1e-2)
    assert cfg.trainer.mc_samples == 256 and cfg.trainer.beta_steps == 2000


def test_short_run_lowers_the_kl_and_writes_everything(tmp_path: Path):
    # the KL of the untrained model: same seed, same construction as inside the task
    torch.manual_seed(5)
    init = EnergyModel(TARGETS["u1"], "planar", 4)
    torch.manual_seed(99)
    before = estimate_kl(init, log_partition(TARGETS["u1"]).log_z, 20_000)

    res = train(tmp_path, "target=u1", "flow=planar", "K=4", "trainer.max_steps=300", "seed=5",
                "trainer.val_interval=100")
    summary, run = res.summary, res.run_dir
    assert run.parent.parent.name == "energy_u1" and run.parent.name == "planar_K4"
    assert summary["kl"] < before.kl - 0.3, (before.kl, summary["kl"])
    assert summary["kl"] >= -3 * summary["kl_stderr"]
    assert 0 < summary["kl_stderr"] < 0.05
    assert SUMMARY_KEYS <= set(summary)
    assert summary["task"] == "energy" and summary["steps"] == 300 and summary["K"] == 4
    assert summary["density_method"] == "histogram"  # planar has no inverse
    assert 0 < summary["ess_percent"] <= 100
    assert math.isclose(summary["log_z"], log_partition(TARGETS["u1"]).log_z)

    assert json.loads((run / "summary.json").read_text()) == summary
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in lines if r["split"] == "train"]
    val_rows = [r for r in lines if r["split"] == "val"]
    assert [r["step"] for r in train_rows] == list(range(25, 301, 25))
    assert [r["step"] for r in val_rows] == [100, 200, 300]
    assert {"step", "loss", "free_energy", "beta", "lr", "elapsed"} <= set(train_rows[0])
    assert train_rows[0]["beta"] == pytest.approx(0.01 + 24 / 2000)
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    # best.pt is the state with the lowest validation free energy
    best = min(val_rows, key=lambda r: r["free_energy"])
    assert load_checkpoint(run / "checkpoints" / "best.pt")["state"]["best_step"] == best["step"]
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["state"]["step"] == 300 and ckpt["task"] == "energy"
    for png in ("density.png", "samples.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run.rglob("*.tmp"))


def test_resume_continues_in_its_own_directory_and_refuses_model_changes(tmp_path: Path):
    first = train(tmp_path, "target=u2", "K=2", "trainer.max_steps=50").run_dir
    resumed = nfvi.run("train", [f"resume={first}", "trainer.max_steps=100"])
    assert resumed.run_dir == first and resumed.summary["steps"] == 100
    rows = [json.loads(x) for x in (first / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [25, 50, 75, 100]
    with pytest.raises(NfviError, match="would change the model"):
        nfvi.run("train", [f"resume={first}", "target=u3"])


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_every_registered_flow_runs(tmp_path: Path, flow: str):
    res = train(tmp_path, "target=u4", f"flow={flow}", "K=2", "trainer.max_steps=30")
    assert res.summary["flow"] == flow and math.isfinite(res.summary["kl"])
    assert res.summary["kl"] >= -3 * res.summary["kl_stderr"]


class _Affine(FlowLayer):
    """An invertible elementwise affine layer, registered only for this test."""

    has_inverse = True

    def param_shapes(self):
        return {"s": (self.dim,), "t": (self.dim,)}

    def forward(self, z, context=None):
        s, t = context["s"], context["t"]
        return z * s.exp() + t, s.sum(-1).expand(z.shape[0])

    def inverse(self, z, context=None):
        s, t = context["s"], context["t"]
        return (z - t) * (-s).exp(), -s.sum(-1).expand(z.shape[0])


@pytest.fixture
def affine_flow():
    register_flow("test_affine")(_Affine)
    yield "test_affine"
    FLOWS.pop("test_affine")


def test_invertible_flow_draws_the_exact_density(tmp_path: Path, affine_flow: str):
    # `flow=` only accepts the YAML groups; an added flow is chosen by name
    res = train(tmp_path, "target=u1", "K=2", "trainer.max_steps=30", f"flow.name={affine_flow}",
                "~flow.hparams.centered")
    assert res.summary["density_method"] == "exact"
    assert res.summary["kl"] >= -3 * res.summary["kl_stderr"]
