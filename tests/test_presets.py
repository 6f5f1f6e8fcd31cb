"""The presets of published protocols (``configs/experiment/``, ``+experiment=NAME``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nfvi.config import config_dir, typed, validate
from tests.flows.composed import composed_config

PRESETS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


def test_the_three_published_protocols_are_presets():
    assert PRESETS == ["berg2018", "rezende2015_cifar_patches", "rezende2015_table2"]


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_composes_validates_and_names_its_runs(name):
    cfg = typed(composed_config(f"+experiment={name}"))
    validate(cfg)
    assert cfg.name == name
    # the command line still wins over the preset
    assert typed(composed_config(f"+experiment={name}", "name=mine", "K=4")).name == "mine"


def test_berg2018_is_the_sylvester_paper_protocol():
    cfg = typed(composed_config("+experiment=berg2018", "dataset=frey_faces", "flow=planar"))
    assert (cfg.model.name, cfg.model.latent_dim) == ("gated_conv", 64)
    assert (str(cfg.optim.name), cfg.optim.lr) == ("adamax", 5e-4)
    t = cfg.trainer
    assert (t.batch_size, t.max_epochs, str(t.anneal), str(t.beta_schedule)) == (
        100, 2000, "kl", "linear")
    assert (t.beta_epochs, t.patience_epochs, t.val_epochs) == (100, 100, 1)
    assert str(t.lr_schedule) == "constant" and t.grad_clip is None
    assert cfg.eval.iw_samples == 5000
    assert str(cfg.dataset.likelihood) == "categorical"  # the dataset keeps its likelihood


def test_rezende2015_table2_is_the_paper_protocol():
    cfg = typed(composed_config("+experiment=rezende2015_table2", "K=40"))
    assert (cfg.model.name, cfg.model.latent_dim, list(cfg.model.hidden)) == ("mlp", 40,
                                                                               [400, 400])
    assert str(cfg.model.activation) == "maxout" and cfg.model.maxout_pool == 4
    assert (str(cfg.optim.name), cfg.optim.lr, cfg.optim.momentum) == ("rmsprop", 1e-5, 0.9)
    t = cfg.trainer
    assert (t.max_steps, t.batch_size, str(t.anneal), str(t.beta_schedule)) == (
        500000, 100, "joint", "paper")
    assert (t.beta_start, t.beta_steps) == (0.01, 10000)
    assert cfg.eval.iw_samples == 200 and cfg.K == 40


def test_rezende2015_cifar_patches_uses_the_logit_normal_patches():
    cfg = typed(composed_config("+experiment=rezende2015_cifar_patches"))
    assert cfg.dataset.name == "cifar10_patches"
    assert str(cfg.dataset.likelihood) == "logit_normal" and cfg.model.latent_dim == 30
    assert (str(cfg.optim.name), cfg.trainer.max_steps) == ("rmsprop", 500000)


def test_train_help_lists_the_presets():
    out = subprocess.run([sys.executable, "-m", "nfvi.cli", "train", "--help"],
                         capture_output=True, text=True, timeout=120).stdout
    group = next(line for line in out.splitlines() if line.startswith("experiment:"))
    assert [p.strip() for p in group.split(":", 1)[1].split(",")] == PRESETS
    assert all(f"+experiment={p}" in out or f"| {p}" in out for p in PRESETS)


def test_berg2018_counts_warm_up_in_epochs_in_a_real_run(tmp_path):
    """20 updates of the preset on the bundled subset at batch 10 (4,000 training digits = 400
    updates per epoch): the KL warm-up over 100 epochs is 40,000 updates, so beta after update
    t is t/40000."""
    import os

    env = {**os.environ, "NFVI_OUTPUT_ROOT": str(tmp_path), "NFVI_DATA_DIR": str(tmp_path)}
    env.pop("NFVI_DEBUG", None)
    args = ["+experiment=berg2018", "K=2", "trainer.max_steps=20", "trainer.batch_size=10",
            "trainer.log_interval=10", "trainer.progress=false", "trainer.num_threads=1",
            "eval.iw_samples=4", "eval.max_examples=10", "eval.chunk=4", "eval.batch_size=10"]
    proc = subprocess.run([sys.executable, "-m", "nfvi.cli", "train", *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = [p.parent for p in tmp_path.rglob(".nfvi-run")]
    assert run.relative_to(tmp_path).parts[0] == "berg2018"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["beta"] for r in train] == pytest.approx([9 / 40000, 19 / 40000])
    assert "name: gated_conv" in (run / "config.yaml").read_text()
