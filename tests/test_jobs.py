"""The jobs: overrides on a saved config (frozen keys refused), what identifies a run."""

from __future__ import annotations

import pytest
import torch

from nfvi.config import Config, to_plain, typed
from nfvi.errors import ConfigError
from nfvi.jobs import FROZEN, TASKS, apply_overrides, run_info, task_module
from tests.flows.composed import composed_config


def saved(*overrides: str) -> dict:
    return to_plain(typed(composed_config(*overrides)))


def test_allowed_overrides_apply_on_top_of_the_saved_config():
    cfg = apply_overrides(saved("K=3", "flow=radial"),
                          ["trainer.max_steps=77", "device=cpu", "eval.iw_samples=9"],
                          keep={"resume": "/x/last.pt"})
    assert isinstance(cfg, Config)
    assert (cfg.K, cfg.flow.name, cfg.trainer.max_steps, cfg.device) == (3, "radial", 77, "cpu")
    assert cfg.eval.iw_samples == 9 and cfg.resume == "/x/last.pt"


def test_a_config_saved_before_the_rename_of_experiment_to_name_still_loads():
    old = saved("K=3")
    old["experiment"] = old.pop("name")
    old["experiment"] = "i10_final"
    cfg = apply_overrides(old, ["eval.iw_samples=9"], keep={})
    assert cfg.name == "i10_final" and cfg.K == 3


@pytest.mark.parametrize("override", ["K=4", "flow=planar", "flow.amortized=false",
                                      "model.latent_dim=8", "+model.hidden=[1]",
                                      "dataset.name=fashion_mnist", "task=energy",
                                      "target.name=u2"])
def test_model_defining_keys_are_refused(override):
    with pytest.raises(ConfigError, match="would change the model of a saved run"):
        apply_overrides(saved("K=3"), [override], keep={})


def test_the_fused_switch_may_change_on_a_saved_run():
    cfg = apply_overrides(saved("K=3"), ["flow.fused=false"], keep={})
    assert cfg.flow.fused is False and cfg.K == 3


def test_frozen_keys_cover_the_model():
    assert {"K", "flow", "model", "task"} <= set(FROZEN)


def test_run_info_names_the_run_for_each_task():
    vae = run_info(typed(composed_config("K=5")), torch.device("cpu"))
    assert {k: vae[k] for k in ("task", "flow", "K", "dataset", "amortized", "device")} == {
        "task": "vae", "flow": "planar", "K": 5, "dataset": "mnist", "amortized": True,
        "device": "cpu"}
    energy = run_info(typed(composed_config("task=energy", "target=u3")), torch.device("cpu"))
    assert energy["task"] == "energy" and energy["target"] == "u3" and "dataset" not in energy
    assert set(energy["versions"]) == {"nfvi", "torch", "python"}


def test_every_task_module_builds_a_task():
    for name in TASKS:
        module = task_module(name)
        assert callable(module.build)
    assert hasattr(task_module("vae"), "evaluate_checkpoint")
