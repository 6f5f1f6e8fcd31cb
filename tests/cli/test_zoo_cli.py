"""``nfvi train flow=<name> K=4`` end to end for the Householder, IAF and Sylvester flows.

Real processes on the bundled data (VAE) and on the 2D energy U1, with tiny budgets.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

FLOWS = [
    "householder",
    "iaf",
    "sylvester_orthogonal",
    "sylvester_householder",
    "sylvester_triangular",
]

TINY = [
    "model.hidden=[32]",
    "model.latent_dim=4",
    "trainer.max_steps=20",
    "trainer.val_interval=10",
    "trainer.progress=false",
    "trainer.num_threads=1",
    "eval.iw_samples=5",
    "eval.max_examples=20",
]

ENERGY = [
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


def nfvi(*args: str, env: dict, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-m", "nfvi.cli", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )


def summary(root: Path) -> dict:
    (path,) = [p for p in root.rglob("summary.json") if "eval" not in p.parts]
    return json.loads(path.read_text())


def assert_finite_numbers(s: dict) -> None:
    numbers = {k: v for k, v in s.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    assert numbers
    for key, value in numbers.items():
        assert math.isfinite(value), (key, value)


@pytest.mark.parametrize("name", FLOWS)
def test_train_vae(env, tmp_path, name):
    proc = nfvi("train", f"flow={name}", "K=4", *TINY, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s = summary(tmp_path / "outputs")
    assert s["flow"] == name and s["K"] == 4 and s["amortized"] is True and s["steps"] == 20
    assert_finite_numbers(s)
    for key in ("val_neg_elbo", "test_neg_elbo", "test_nll"):
        assert key in s


@pytest.mark.parametrize("name", ["iaf", "sylvester_orthogonal"])
def test_train_vae_with_global_parameters(env, tmp_path, name):
    proc = nfvi("train", f"flow={name}", "K=4", "flow.amortized=false", *TINY, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s = summary(tmp_path / "outputs")
    assert s["flow"] == name and s["amortized"] is False
    assert_finite_numbers(s)


@pytest.mark.parametrize("name", FLOWS)
def test_train_energy(env, tmp_path, name):
    proc = nfvi("train", f"flow={name}", "K=4", *ENERGY, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s = summary(tmp_path / "outputs")
    assert s["task"] == "energy" and s["flow"] == name and s["K"] == 4 and s["steps"] == 50
    for key in ("kl", "kl_stderr", "log_z", "ess_percent"):
        assert math.isfinite(s[key]), key
    assert s["kl_nonfinite_samples"] == 0
