"""End-to-end: ``run_energy`` with the real configs (task=energy trainer=energy), short runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from rich.console import Console

from nfvi.checkpoint import load_checkpoint
from nfvi.config import config_dir, register_configs
from nfvi.energy import TARGETS, EnergyModel, estimate_kl, log_partition
from nfvi.energy import run as run_mod
from nfvi.energy.run import run_energy
from nfvi.errors import CheckpointError
from nfvi.flows import FLOWS, FlowLayer, register_flow

SUMMARY_KEYS = {
    "task", "target", "flow", "K", "steps", "kl", "kl_stderr", "log_z", "ess_percent",
    "wall_seconds",
}


@pytest.fixture(autouse=True)
def _small_histogram(monkeypatch):
    monkeypatch.setattr(run_mod, "HIST_SAMPLES", 100_000)
    monkeypatch.setattr(run_mod, "HIST_BINS", 80)


def _cfg(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return compose(
            "config",
            overrides=[
                "task=energy",
                "trainer=energy",
                "eval.kl_samples=20000",
                "eval.grid=100",
                "trainer.log_interval=25",
                *overrides,
            ],
        )


def _console() -> Console:
    return Console(quiet=True)


def test_energy_trainer_defaults_compose():
    cfg = _cfg()
    assert cfg.trainer.max_steps == 4000 and cfg.optim.lr == pytest.approx(1e-2)
    assert cfg.trainer.mc_samples == 256 and cfg.trainer.beta_steps == 2000


def test_short_run_lowers_the_kl_and_writes_everything(tmp_path: Path):
    cfg = _cfg("target=u1", "flow=planar", "K=4", "trainer.max_steps=300", "seed=5")
    # the KL of the untrained model: same seed, same construction as inside run_energy
    torch.manual_seed(5)
    init = EnergyModel(TARGETS["u1"], "planar", 4)
    torch.manual_seed(99)
    before = estimate_kl(init, log_partition(TARGETS["u1"]).log_z, 20_000)

    summary = run_energy(cfg, tmp_path, torch.device("cpu"), _console())

    assert summary["kl"] < before.kl - 0.3, (before.kl, summary["kl"])
    assert summary["kl"] >= -3 * summary["kl_stderr"]
    assert 0 < summary["kl_stderr"] < 0.05
    assert SUMMARY_KEYS <= set(summary)
    assert summary["task"] == "energy" and summary["steps"] == 300 and summary["K"] == 4
    assert summary["density_method"] == "histogram"  # planar has no inverse
    assert 0 < summary["ess_percent"] <= 100
    assert math.isclose(summary["log_z"], log_partition(TARGETS["u1"]).log_z)

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert set(on_disk) == set(summary) and on_disk["kl"] == summary["kl"]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(25, 301, 25))
    assert {"step", "loss", "beta", "lr", "elapsed"} <= set(lines[0])
    assert lines[0]["beta"] == pytest.approx(0.01 + 24 / 2000)
    assert lines[-1]["loss"] < lines[0]["loss"]
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["step"] == 300 and ckpt["task"] == "energy"
    for png in ("density.png", "samples.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob("*.tmp"))


def test_resume_continues_and_checks_compatibility(tmp_path: Path):
    first = tmp_path / "a"
    run_energy(_cfg("target=u2", "K=2", "trainer.max_steps=50"), first, torch.device("cpu"),
               _console())
    second = tmp_path / "b"
    cfg = _cfg("target=u2", "K=2", "trainer.max_steps=100", f"resume={first}")
    summary = run_energy(cfg, second, torch.device("cpu"), _console())
    assert summary["steps"] == 100
    steps = [json.loads(x)["step"] for x in (second / "metrics.jsonl").read_text().splitlines()]
    assert steps == [75, 100]
    with pytest.raises(CheckpointError, match="flow/K/target"):
        run_energy(_cfg("target=u3", "K=2", "trainer.max_steps=60", f"resume={first}"),
                   tmp_path / "c", torch.device("cpu"), _console())


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_every_registered_flow_runs(tmp_path: Path, flow: str):
    cfg = _cfg("target=u4", f"flow={flow}", "K=2", "trainer.max_steps=30")
    summary = run_energy(cfg, tmp_path, torch.device("cpu"), _console())
    assert summary["flow"] == flow and math.isfinite(summary["kl"])
    assert summary["kl"] >= -3 * summary["kl_stderr"]


class _Affine(FlowLayer):
    """An invertible elementwise affine layer, registered only for this test."""

    has_inverse = True

    def param_shapes(self):
        return {"s": (self.dim,), "t": (self.dim,)}

    def transform(self, z, params, context=None):
        s, t = params["s"], params["t"]
        return z * s.exp() + t, s.sum(-1).expand(z.shape[0])

    def inverse(self, z_next, params, context=None):
        return (z_next - params["t"]) * (-params["s"]).exp()


@pytest.fixture
def affine_flow():
    register_flow("test_affine")(_Affine)
    yield "test_affine"
    FLOWS.pop("test_affine")


def test_invertible_flow_draws_the_exact_density(tmp_path: Path, affine_flow: str):
    # `flow=` only accepts the YAML groups; an added flow is chosen by name
    cfg = _cfg("target=u1", "K=2", "trainer.max_steps=30")
    cfg.flow.name = affine_flow
    summary = run_energy(cfg, tmp_path, torch.device("cpu"), _console())
    assert summary["density_method"] == "exact"
    assert summary["kl"] >= -3 * summary["kl_stderr"]
