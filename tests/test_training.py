"""The one training loop, driven by a small task written here (a noisy quadratic)."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from rich.console import Console

from nfvi.checkpoint import load_checkpoint
from nfvi.config import TrainerConfig
from nfvi.errors import ConfigError
from nfvi.training import (
    Interrupted,
    Loop,
    NonFiniteLoss,
    StepOutput,
    TaskResult,
    Validation,
)


class Quadratic:
    """Minimise E||w - target + noise||^2 with SGD; ``nan_at`` makes the loss NaN at those
    steps (counted from 1); the validation score follows ``val_scores`` when given."""

    name = "quadratic"

    def __init__(self, nan_at=(), val_scores=None, steps_per_epoch=None, lr=0.05) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Linear(3, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.steps_per_epoch = steps_per_epoch
        self.nan_at, self.val_scores, self.calls, self.validations = set(nan_at), val_scores, 0, 0
        self.target = torch.tensor([1.0, -2.0, 0.5])

    def describe(self) -> str:
        return "quadratic"

    def objective(self, beta: float) -> StepOutput:
        self.calls += 1
        noise = 0.1 * torch.randn(3)
        loss = ((self.model.weight[0] - self.target + noise) ** 2).sum() * beta
        if self.calls in self.nan_at:
            loss = loss * float("nan")
        return StepOutput(loss, {"loss": loss.detach(), "w0": self.model.weight[0, 0].detach()})

    def validate(self) -> Validation:
        self.validations += 1
        if self.val_scores is not None:
            score = self.val_scores[min(self.validations, len(self.val_scores)) - 1]
        else:
            score = float(((self.model.weight[0].detach() - self.target) ** 2).sum())
        return Validation(score, {"score": score})

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = state["calls"]

    def finish(self, loop: Loop) -> TaskResult:
        return TaskResult({"steps": loop.state.step})


def trainer(**kw) -> TrainerConfig:
    base = dict(max_steps=40, val_interval=10, log_interval=5, patience=None, progress=False,
                beta_schedule="none")
    return TrainerConfig(**{**base, **kw})


def make_loop(tmp_path: Path, task=None, **kw) -> Loop:
    return Loop(task or Quadratic(), trainer(**kw), tmp_path, Console(quiet=True),
                config={"K": 0})


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_trains_logs_and_checkpoints(tmp_path):
    loop = make_loop(tmp_path)
    state = loop.run()
    assert state.step == 40 and not state.stopped_early
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(5, 41, 5))
    assert [r["step"] for r in rows if r["split"] == "val"] == [10, 20, 30, 40]
    assert {"loss", "w0", "beta", "lr", "elapsed", "epoch"} <= set(rows[0])
    assert rows[-1]["score"] < 0.2  # w has moved to the target
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["state"]["step"] == 40 and last["task"] == "quadratic"
    assert last["task_state"] == {"calls": 40} and last["config"] == {"K": 0}
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["state"]["best_step"] == state.best_step


def test_the_logged_loss_is_the_mean_over_the_window(tmp_path):
    task = Quadratic()
    losses = []
    original = task.objective

    def recording(beta):
        out = original(beta)
        losses.append(float(out.loss.detach()))
        return out

    task.objective = recording
    make_loop(tmp_path, task, max_steps=10, val_interval=10).run()
    train = [r for r in metrics(tmp_path) if r["split"] == "train"]
    assert train[0]["loss"] == pytest.approx(sum(losses[:5]) / 5, rel=1e-6)
    assert train[1]["loss"] == pytest.approx(sum(losses[5:]) / 5, rel=1e-6)


def test_beta_follows_the_schedule(tmp_path):
    make_loop(tmp_path, beta_schedule="paper", beta_start=0.1, beta_steps=20).run()
    train = [r for r in metrics(tmp_path) if r["split"] == "train"]
    # the record of step s carries the beta used by its last update, t = s - 1
    assert [r["beta"] for r in train[:5]] == pytest.approx([0.3, 0.55, 0.8, 1.0, 1.0])


def test_early_stopping_counts_validations_without_improvement(tmp_path):
    task = Quadratic(val_scores=[5.0, 4.0, 4.5, 4.2, 4.1, 3.0])
    state = make_loop(tmp_path, task, max_steps=100, patience=3).run()
    assert state.stopped_early and state.step == 50  # best at 20, then 3 worse validations
    assert state.best_step == 20 and state.best_score == 4.0


def test_patience_waits_for_the_end_of_annealing(tmp_path):
    task = Quadratic(val_scores=[5.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0])
    state = make_loop(tmp_path, task, max_steps=80, patience=2, beta_schedule="linear",
                      beta_steps=50).run()
    # validations at 20, 30, 40 fall during annealing; 50 and 60 count: stop at 60
    assert state.stopped_early and state.step == 60


def test_max_epochs_limits_the_steps(tmp_path):
    state = make_loop(tmp_path, Quadratic(steps_per_epoch=7), max_epochs=3).run()
    assert state.step == 21
    assert metrics(tmp_path)[-1]["epoch"] == 3


def test_epoch_keys_set_warm_up_validation_and_patience_in_epochs(tmp_path):
    # 5 updates per epoch: warm-up over 2 epochs = 10 updates, validation every epoch,
    # patience 2 epochs = 2 validations once annealing is done
    task = Quadratic(steps_per_epoch=5, val_scores=[5.0, 4.0, 6.0, 6.0, 6.0, 6.0, 6.0])
    loop = make_loop(tmp_path, task, max_steps=100, beta_schedule="linear", beta_steps=999,
                     beta_epochs=2, val_epochs=1, patience=99, patience_epochs=2)
    assert (loop.beta_steps, loop.val_interval, loop.patience) == (10, 5, 2)
    state = loop.run()
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows if r["split"] == "val"] == [5, 10, 15, 20]
    assert [r["beta"] for r in rows if r["split"] == "train"][:2] == pytest.approx([0.4, 0.9])
    assert state.stopped_early and state.step == 20 and state.best_step == 10


def test_epoch_keys_refuse_a_task_without_epochs():
    from nfvi.config import Config, validate

    cfg = Config()
    cfg.task, cfg.trainer.beta_epochs = "energy", 2.0
    with pytest.raises(ConfigError, match="beta_epochs.*energy task"):
        validate(cfg)
    cfg.task, cfg.trainer.beta_epochs, cfg.trainer.patience_epochs = "vae", None, -1.0
    with pytest.raises(ConfigError, match="patience_epochs=-1.0 must be a positive"):
        validate(cfg)


def test_a_nonfinite_loss_stops_and_keeps_finite_checkpoints(tmp_path):
    loop = make_loop(tmp_path, Quadratic(nan_at={13}))
    with pytest.raises(NonFiniteLoss, match="not finite at step 13") as info:
        loop.run()
    assert info.value.exit_code != 0
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(tmp_path / "checkpoints" / name)
        assert ckpt["state"]["step"] <= 10
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert max(r["step"] for r in metrics(tmp_path)) == 10  # nothing logged after the NaN


def test_a_nonfinite_loss_at_the_first_step_leaves_the_initial_state(tmp_path):
    with pytest.raises(NonFiniteLoss, match="at step 1;"):
        make_loop(tmp_path, Quadratic(nan_at={1, 2, 3})).run()
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["state"]["step"] == 0
    assert not (tmp_path / "checkpoints" / "best.pt").exists()


def test_skip_mode_skips_the_update_and_counts_it(tmp_path):
    loop = make_loop(tmp_path, Quadratic(nan_at={3, 17}), on_nonfinite="skip")
    state = loop.run()
    assert state.step == 40 and state.skipped_steps == 2
    assert all(math.isfinite(r["loss"]) for r in metrics(tmp_path) if r["split"] == "train")


def test_skip_mode_gives_up_after_many_in_a_row(tmp_path):
    with pytest.raises(NonFiniteLoss, match="20 steps in a row"):
        make_loop(tmp_path, Quadratic(nan_at=set(range(5, 100))), on_nonfinite="skip").run()


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    torch.manual_seed(1)
    make_loop(full_dir, max_steps=40).run()

    torch.manual_seed(1)
    first = make_loop(cut_dir, max_steps=20)
    first.run()
    with (cut_dir / "metrics.jsonl").open("a") as f:  # a record after the checkpoint, torn
        f.write('{"step": 25, "split": "train", "loss": 1.0}\n{"step": 3')
    second = make_loop(cut_dir, max_steps=40)
    second.resume(cut_dir / "checkpoints" / "last.pt")
    assert second.task.calls == 20
    second.run()

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "elapsed"} for r in rows]

    assert strip(metrics(cut_dir)) == strip(metrics(full_dir))
    a = load_checkpoint(cut_dir / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(full_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_signal_saves_last_and_raises_with_the_exit_status(tmp_path):
    task = Quadratic()
    original = task.objective

    def objective(beta):
        if task.calls == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(beta)

    task.objective = objective
    with pytest.raises(Interrupted, match="resume with: nfvi train resume=") as info:
        make_loop(tmp_path, task).run()
    assert info.value.exit_code == 128 + signal.SIGTERM
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["state"]["step"] == 8
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler was restored


def test_cosine_schedule_sets_the_learning_rate_each_step(tmp_path):
    make_loop(tmp_path, lr_schedule="cosine", lr_final=0.1).run()
    train = [r for r in metrics(tmp_path) if r["split"] == "train"]
    # the record of step s carries the lr of its last update, t = s - 1, of 40
    expected = [0.05 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 1) / 40)))
                for s in range(5, 41, 5)]
    assert [r["lr"] for r in train] == pytest.approx(expected, rel=1e-12)


def test_resume_keeps_the_cosine_schedule(tmp_path):
    from nfvi.rundir import LAST

    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    torch.manual_seed(1)
    make_loop(full_dir, lr_schedule="cosine").run()
    torch.manual_seed(1)
    first = make_loop(cut_dir, lr_schedule="cosine")
    for _ in range(17):
        first.step()
    first.save(LAST)
    second = make_loop(cut_dir, lr_schedule="cosine")
    second.resume(cut_dir / "checkpoints" / "last.pt")
    second.run()
    a = load_checkpoint(cut_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(full_dir / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]
