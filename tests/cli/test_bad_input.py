"""Bad input, as a table: each case exits non-zero with one line naming the problem, and no
file or directory is created or changed (a finished run beside it included)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from tests.cli.test_cli import TINY, assert_one_line_error, nfvi, run_dirs

NO_GPU = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An output root holding one finished run, a corrupt checkpoint and a random-bytes file."""
    root = tmp_path_factory.mktemp("bad_input")
    env = dict(os.environ, NFVI_OUTPUT_ROOT=str(root / "outputs"),
               NFVI_DATA_DIR=str(root / "no-data"))
    env.pop("NFVI_DEBUG", None)
    env.pop("HYDRA_FULL_ERROR", None)
    proc = nfvi("train", *TINY, "name=done", env=env)
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(root / "outputs")
    (root / "junk.pt").write_bytes(os.urandom(4096))
    trunc = root / "truncated" / "checkpoints" / "best.pt"
    trunc.parent.mkdir(parents=True)
    trunc.write_bytes((run / "checkpoints" / "best.pt").read_bytes()[:5000])
    return root, run, env


def snapshot(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns
        else:
            out[str(p)] = "dir"
    return out


CASES = [
    # (arguments, with {run} / {root} filled in, fragments of the one line, exit code)
    (["train", "flow=nope"], ["flow/nope", "planar", "radial"], 2),
    (["train", "flow.name=nope"], ["unknown flow 'nope'"], 2),
    (["train", "K=abc"], ["K"], 2),
    (["train", "K=-3"], ["K=-3", ">= 0"], 2),
    (["train", "device=tpu"], ["device", "cpu"], 2),
    (["train", "dataset=nope"], ["dataset/nope", "mnist"], 2),
    (["train", "no_such_key=1"], ["no_such_key"], 2),
    (["train", "dataset.source=full"], ["MNIST", "dataset.download=true"], 2),
    (["train", "dataset=fashion_mnist"], ["Fashion"], 2),
    (["train", "optim=nope"], ["optim/nope", "adam"], 2),
    (["train", "optim=adamax", "optim.fused=true"], ["optim.fused=true", "no fused adamax"], 2),
    (["train", "trainer.max_steps=0"], ["trainer.max_steps"], 2),
    (["train", "trainer.grad_clip=-1"], ["trainer.grad_clip=-1.0", "positive"], 2),
    (["train", "trainer.patience=0"], ["trainer.patience=0", "at least 1"], 2),
    (["train", "optim.lr=inf"], ["optim.lr=inf", "finite"], 2),
    (["train", "trainer.beta_start=2"], ["trainer.beta_start"], 2),
    (["train", "name=.."], ["name=..", "outside output_root"], 2),
    (["train", "flow.name=../x"], ["flow.name=../x", "outside output_root"], 2),
    (["train", "+flow.hparams.bogus=1"], ["bogus", "flow.hparams"], 2),
    (["train", "K=3", "seed=5", "hydra.run.dir={run}"], ["already holds a run"], 2),
    (["train", "device=cuda:99"], ["cuda:99"], 2),
    (["train", "resume={root}/nope"], ["resume"], 2),
    (["train", "-m", "resume={run}"], ["-m"], 2),
    (["train", "resume={run}", "K=3"], ["K=3", "would change the model"], 2),
    (["train", "resume={run}", "dataset=fashion_mnist"],
     ["dataset=fashion_mnist", "whole dataset config"], 2),
    (["train", "resume={run}", "trainer=paper"], ["trainer=paper", "trainer.<key>"], 2),
    (["train", "resume={run}", "optim.name=rmsprop"], ["optim.name", "model"], 2),
    (["eval"], ["checkpoint="], 2),
    (["eval", "checkpoint={root}/nope.pt"], ["not found"], 2),
    (["eval", "checkpoint={root}/junk.pt"], ["not a checkpoint file"], 2),
    (["eval", "checkpoint={root}/truncated"], ["is damaged"], 2),
    (["eval", "-m", "checkpoint={run}"], ["-m"], 2),
    (["eval", "checkpoint={run}", "trainer=paper"], ["trainer=paper"], 2),
    (["eval", "checkpoint={run}", "K=7"], ["K=7", "would change the model"], 2),
    (["eval", "checkpoint={run}", "eval.iw_samples=0"], ["eval.iw_samples"], 2),
]
if NO_GPU:
    CASES.append((["train", "device=cuda"], ["CUDA", "device=cpu"], 2))


@pytest.mark.parametrize("args, fragments, code", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input(world, args, fragments, code):
    root, run, env = world
    args = [a.format(run=run, root=root) for a in args]
    extra = TINY if args[0] == "train" and not any(a.startswith("resume=") for a in args) else []
    before = snapshot(root)
    proc = nfvi(args[0], *extra, *args[1:], env=env)
    assert_one_line_error(proc, *fragments)
    assert proc.returncode == code
    assert snapshot(root) == before
