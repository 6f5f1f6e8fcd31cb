"""``trainer.compile`` and ``trainer.cuda_graph``: the same losses as an eager run, the
fallback when the compiler is not usable, and the CUDA-only check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from nfvi.config import typed, validate
from nfvi.errors import ConfigError
from nfvi.training import Loop
from nfvi.vae.run import VAETask
from tests.flows.composed import composed_config

QUIET = Console(quiet=True)


def config(*overrides: str):
    """A small VAE (K=2 planar, one hidden layer of 16, 2 latents) on the bundled digits."""
    return typed(composed_config(
        "dataset.source=bundled", "model.hidden=[16]", "model.latent_dim=2", "K=2",
        "trainer.batch_size=20", "trainer.max_steps=6", "trainer.log_interval=1",
        "trainer.val_interval=1000", "trainer.progress=false", *overrides))


def train(tmp_path: Path, device: str = "cpu", *overrides: str) -> tuple[list[dict], Loop]:
    """The train records of a seeded run of :func:`config` and its loop."""
    cfg = config(f"device={device}", *overrides)
    validate(cfg)
    torch.manual_seed(cfg.seed)
    task = VAETask(cfg, torch.device(device), QUIET)
    loop = Loop(task, cfg.trainer, tmp_path, QUIET, config={})
    loop.run()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "train"], loop


def assert_same_losses(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for key in ("loss", "neg_elbo", "recon", "kl"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-4, abs=1e-4), key


def test_compiled_training_matches_eager(tmp_path):
    eager, _ = train(tmp_path / "eager")
    compiled, loop = train(tmp_path / "compiled", "cpu", "trainer.compile=true")
    assert_same_losses(compiled, eager)
    assert loop.compile_seconds is not None and loop.compile_seconds > 0
    assert loop.task.compiled.compiled is not None  # compiled, not fallen back
    # the IS pass through its compiled chunk function gives the eager estimate
    model = loop.task.model
    x = loop.task.val_x[:5]
    torch.manual_seed(3)
    nll_c = model.iw_nll(x, 30, chunk=20).nll
    fn, model.iw_chunk_fn = model.iw_chunk_fn, None
    torch.manual_seed(3)
    nll_e = model.iw_nll(x, 30, chunk=20).nll
    torch.testing.assert_close(nll_c, nll_e, rtol=1e-5, atol=1e-4)
    assert fn.compiled is not None and fn.seconds is not None  # it did compile


def test_an_unusable_compiler_falls_back_to_eager_with_one_warning(tmp_path, monkeypatch,
                                                                      caplog):
    def broken(fn, **kw):
        def call(*args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    eager, _ = train(tmp_path / "eager")
    with caplog.at_level("WARNING", logger="nfvi"):
        fallback, loop = train(tmp_path / "fallback", "cpu", "trainer.compile=true")
    assert fallback == [{**r, "elapsed": f["elapsed"]} for r, f in zip(eager, fallback,
                                                                        strict=True)]
    warnings = [r for r in caplog.records if "torch.compile" in r.getMessage()]
    assert len(warnings) == 1 and "running it eagerly" in warnings[0].getMessage()
    assert loop.task.compiled.compiled is None


def test_cuda_graph_needs_a_cuda_device():
    cfg = config("device=cpu", "trainer.cuda_graph=true")
    with pytest.raises(ConfigError, match=r"trainer.cuda_graph=true needs a CUDA device"):
        VAETask(cfg, torch.device("cpu"), QUIET)


def test_compile_and_cuda_graph_are_exclusive():
    cfg = config("trainer.compile=true", "trainer.cuda_graph=true")
    with pytest.raises(ConfigError, match="exclusive"):
        validate(cfg)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_steps_match_eager_steps(tmp_path):
    eager, _ = train(tmp_path / "eager", "cuda")
    graphed, loop = train(tmp_path / "graphed", "cuda", "trainer.cuda_graph=true")
    assert loop.task.graph is not None and loop.task.graph.graph is not None
    assert_same_losses(graphed, eager)
