"""``nfvi.run``: the CLI's jobs from Python, with the same run directories and errors."""

from __future__ import annotations

import json

import pytest

import nfvi
from nfvi.errors import NfviError
from tests.cli.test_cli import TINY


@pytest.fixture
def roots(tmp_path, monkeypatch):
    monkeypatch.setenv("NFVI_OUTPUT_ROOT", str(tmp_path / "outputs"))
    monkeypatch.setenv("NFVI_DATA_DIR", str(tmp_path / "no-data"))
    return tmp_path / "outputs"


def test_train_then_eval_return_the_summary_and_the_directory(roots):
    res = nfvi.run("train", [*TINY, "name=api"])
    assert res.run_dir.parent.parent == roots / "api"
    assert res.summary == json.loads((res.run_dir / "summary.json").read_text())
    assert res.summary["K"] == 2 and res.summary["steps"] == 30
    ev = nfvi.run("eval", [f"checkpoint={res.run_dir}", "eval.iw_samples=10",
                           "eval.max_examples=50"])
    assert ev.run_dir.parent == res.run_dir / "eval"
    assert ev.summary["test_nll"] == pytest.approx(res.summary["test_nll"], abs=1e-4)


def test_multirun_returns_one_result_per_job(roots):
    results = nfvi.run("train", ["-m", *TINY, "trainer.max_steps=5", "K=0,1"])
    assert sorted(r.summary["K"] for r in results) == [0, 1]
    assert len({r.run_dir for r in results}) == 2


@pytest.mark.parametrize("args, fragment", [
    (["K=-1"], "K=-1"),
    (["flow=nope"], "flow/nope"),
    (["K=abc"], "K"),
])
def test_errors_are_raised_with_the_cli_message(roots, args, fragment):
    with pytest.raises(NfviError, match=fragment) as info:
        nfvi.run("train", [*TINY, *args])
    assert "\n" not in str(info.value)


def test_unknown_command_and_missing_checkpoint(roots, tmp_path):
    with pytest.raises(NfviError, match="unknown command"):
        nfvi.run("fit", [])
    with pytest.raises(NfviError, match="not found"):
        nfvi.run("eval", [f"checkpoint={tmp_path / 'nope'}"])
