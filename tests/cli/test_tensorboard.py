"""``logger=tensorboard`` mirrors metrics.jsonl and the figures."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_cli import TINY, nfvi, run_dirs

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def test_tensorboard_mirrors_the_metrics(env, tmp_path):
    proc = nfvi("train", *TINY, "logger=tensorboard", env=env)
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(tmp_path / "outputs")
    acc = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"]
    events = acc.Scalars("val/neg_elbo")
    assert [e.step for e in events] == [r["step"] for r in val]
    assert [e.value for e in events] == pytest.approx([r["neg_elbo"] for r in val], rel=1e-6)
    assert len(acc.Scalars("train/loss")) == sum(r["split"] == "train" for r in records)
    assert {"samples", "reconstructions"} <= set(acc.Tags()["images"])
