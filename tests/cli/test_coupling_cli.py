"""``nfvi train flow=<coupling flow> K=4`` end to end (VAE and 2D energy task) as processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

COUPLING = ["nice", "realnvp", "spline"]

# a tiny model so that each run takes seconds; the flows keep their configs' hyperparameters
TINY_VAE = [
    "model.hidden=[32]",
    "model.latent_dim=4",
    "trainer.max_steps=20",
    "trainer.val_interval=10",
    "trainer.progress=false",
    "trainer.num_threads=1",
    "eval.iw_samples=5",
    "eval.max_examples=20",
]
TINY_ENERGY = [
    "task=energy",
    "target=u1",
    "trainer.max_steps=50",
    "trainer.progress=false",
    "trainer.num_threads=1",
    "eval.kl_samples=2000",
    "eval.grid=50",
]


@pytest.fixture()
def env(tmp_path):
    e = dict(os.environ)
    e["NFVI_OUTPUT_ROOT"] = str(tmp_path / "outputs")
    e["NFVI_DATA_DIR"] = str(tmp_path / "no-data")  # empty: auto falls back to the bundled set
    e.pop("NFVI_DEBUG", None)
    e.pop("HYDRA_FULL_ERROR", None)
    return e


def train(*args: str, env: dict) -> dict:
    """Run ``nfvi train`` and return its ``summary.json`` (asserting success)."""
    proc = subprocess.run(
        [sys.executable, "-m", "nfvi.cli", "train", *args],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = Path(env["NFVI_OUTPUT_ROOT"])
    (summary,) = [p for p in root.rglob("summary.json") if "eval" not in p.parts]
    return json.loads(summary.read_text())


def assert_finite(summary: dict, *keys: str) -> None:
    for key in keys:
        value = summary[key]
        assert isinstance(value, int | float) and math.isfinite(value), (key, value)


@pytest.mark.parametrize("name", COUPLING)
def test_vae_trains_with_an_amortized_coupling_flow(name, env):
    s = train(f"flow={name}", "K=4", *TINY_VAE, env=env)
    assert s["flow"] == name and s["K"] == 4 and s["amortized"] is True
    assert_finite(s, "val_neg_elbo", "test_neg_elbo", "test_nll", "test_recon", "test_kl")


def test_vae_trains_with_a_global_coupling_flow(env):
    s = train(
        "flow=nice", "K=4", "flow.amortized=false", "flow.hparams.mixing=permutation",
        *TINY_VAE, env=env,
    )
    assert s["flow"] == "nice" and s["amortized"] is False
    assert_finite(s, "val_neg_elbo", "test_neg_elbo", "test_nll")


@pytest.mark.parametrize("name", COUPLING)
def test_energy_task_trains_a_coupling_flow(name, env):
    s = train(f"flow={name}", "K=4", *TINY_ENERGY, env=env)
    assert s["flow"] == name and s["K"] == 4
    assert_finite(s, "kl", "log_z", "ess_percent")
    assert s["density_method"] == "exact"  # the coupling flows are invertible
