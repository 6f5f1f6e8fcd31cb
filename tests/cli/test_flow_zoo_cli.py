"""``nfvi train flow=<name> K=4`` end to end for every registered flow: VAE and 2D energy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nfvi.flows import FLOWS
from tests.cli.test_cli import nfvi

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
ZOO = sorted(set(FLOWS) - {"planar", "radial"})  # planar/radial: tests/cli/test_cli.py


def train(*args: str, env: dict) -> dict:
    """Run ``nfvi train`` and return its ``summary.json`` (asserting success)."""
    proc = nfvi("train", *args, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = [p for p in Path(env["NFVI_OUTPUT_ROOT"]).rglob("summary.json")
               if "eval" not in p.parts]
    return json.loads(path.read_text())


def assert_finite_numbers(s: dict) -> None:
    numbers = {k: v for k, v in s.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    assert numbers
    for key, value in numbers.items():
        assert math.isfinite(value), (key, value)


@pytest.mark.parametrize("name", ZOO)
def test_vae_with_an_amortized_flow(env, name):
    s = train(f"flow={name}", "K=4", *TINY_VAE, env=env)
    assert s["flow"] == name and s["K"] == 4 and s["amortized"] is True and s["steps"] == 20
    assert_finite_numbers(s)
    for key in ("val_neg_elbo", "test_neg_elbo", "test_nll"):
        assert key in s


@pytest.mark.parametrize(
    "name, extra",
    [("iaf", []), ("sylvester_orthogonal", []), ("nice", ["flow.hparams.mixing=permutation"])],
)
def test_vae_with_global_parameters(env, name, extra):
    s = train(f"flow={name}", "K=4", "flow.amortized=false", *extra, *TINY_VAE, env=env)
    assert s["flow"] == name and s["amortized"] is False
    assert_finite_numbers(s)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_energy_task_with_every_flow(env, name):
    s = train(f"flow={name}", "K=4", *TINY_ENERGY, env=env)
    assert s["task"] == "energy" and s["flow"] == name and s["K"] == 4 and s["steps"] == 50
    for key in ("kl", "kl_stderr", "log_z", "ess_percent"):
        assert math.isfinite(s[key]), key
    assert s["kl_nonfinite_samples"] == 0
    # the flow's density is drawn exactly where it can be inverted, else from samples
    assert s["density_method"] == ("exact" if FLOWS[name].has_inverse else "histogram")
