"""The one training loop of every task.

A task (:class:`Task`: the VAE in :mod:`nfvi.vae.run`, the 2D energies in
:mod:`nfvi.energy.run`) supplies its model and optimizer, its objective for one step, its
validation, the extra state it needs to resume, and its final summary. The loop owns the
rest: the annealing schedule beta_t, the update (``loss.backward()`` happens here and nowhere
else), gradient clipping, the non-finite guard, the progress bar, metrics.jsonl and the
optional logger, ``last.pt`` / ``best.pt``, resuming, signals (Ctrl-C, SIGTERM, the cluster's
SIGUSR1/2 before a requeue) and early stopping.

Everything a run needs to continue exactly where it stopped (model, optimizer, counters, the
log window, every RNG state and the task's own state) goes into ``checkpoints/last.pt``.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

import nfvi
from nfvi.checkpoint import load_checkpoint, save_checkpoint
from nfvi.config import TrainerConfig
from nfvi.errors import ConfigError, NfviError
from nfvi.loggers import NullLogger
from nfvi.rundir import BEST, LAST, MetricsLog, checkpoint_path
from nfvi.runtime import rng_state, set_rng_state
from nfvi.schedules import annealing_done, beta_at, lr_factor

log = logging.getLogger("nfvi")

#: consecutive non-finite losses after which ``trainer.on_nonfinite=skip`` gives up
MAX_SKIPPED_IN_A_ROW = 20


@dataclass
class StepOutput:
    """What a task's objective returns for one step: the scalar ``loss`` to minimise and
    detached scalar ``stats`` to log (averaged over the steps between two log lines).

    ``backward_done``: the gradients of ``loss`` are already in the parameters' ``.grad``
    (a replayed :class:`CudaGraphStep`); the loop then only clips and steps."""

    loss: Tensor
    stats: dict[str, Tensor]
    backward_done: bool = False


@dataclass
class Validation:
    """A validation: ``score`` (lower is better: best.pt and early stopping follow it) and the
    metrics written to metrics.jsonl with ``split: val``."""

    score: float
    metrics: dict[str, float]


@dataclass
class TaskResult:
    """A task's results (flat JSON-able values for summary.json / eval.json) and the figures
    it drew (name -> PNG path, mirrored to the logger)."""

    results: dict[str, Any]
    figures: dict[str, Path] = field(default_factory=dict)


class Task(Protocol):
    """The pieces a task gives the loop."""

    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    #: updates per epoch (None: the task has no epochs)
    steps_per_epoch: int | None

    def objective(self, beta: float) -> StepOutput: ...

    def validate(self) -> Validation: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def describe(self) -> str: ...

    def finish(self, loop: Loop) -> TaskResult: ...


@dataclass
class LoopState:
    """Counters saved with every checkpoint (plain values only)."""

    step: int = 0
    best_score: float = math.inf
    best_step: int = -1
    bad_validations: int = 0
    skipped_steps: int = 0
    elapsed: float = 0.0
    stopped_early: bool = False


class Interrupted(NfviError):
    """Ctrl-C / SIGTERM / SIGUSR: ``last.pt`` is saved; exit status 128 + signal number."""

    def __init__(self, signum: int, step: int = 0, run_dir: Path | None = None,
                 message: str | None = None) -> None:
        name = signal.Signals(signum).name
        super().__init__(message or (
            f"interrupted ({name}) at step {step}; saved {checkpoint_path(run_dir)}; "
            f"resume with: nfvi train resume={run_dir}"))
        self.exit_code = 128 + signum


class NonFiniteLoss(NfviError):
    """The loss was not finite; the run stopped, keeping its last finite checkpoints."""

    exit_code = 3


class SignalFlag:
    """Turns SIGINT/SIGTERM (and SIGUSR1/2) into a flag the loop checks between steps.

    SIGUSR1/2 are caught only where someone already handles them (submitit's pre-emption and
    time-out signal on SLURM): after ``last.pt`` is written, :meth:`chain` hands the signal on
    to that handler, which requeues the job.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> SignalFlag:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            try:
                if s in (signal.SIGUSR1, signal.SIGUSR2) and not callable(signal.getsignal(s)):
                    continue
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (some launchers): no handler
                pass
        return self

    def chain(self) -> None:
        """Call the handler that was there before ours (submitit's requeue), if any."""
        old = self._old.get(self.signum) if self.signum is not None else None
        if self.signum in (signal.SIGUSR1, signal.SIGUSR2) and callable(old):
            old(self.signum, None)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


@contextmanager
def signals_interrupt(run_dir: Path, what: str, resumable: bool = True) -> Iterator[None]:
    """Ctrl-C / SIGTERM during ``what`` (an evaluation: no step boundary to wait for) stop it
    at once with :class:`Interrupted` (exit 128 + signal number) and say what to do."""
    def handle(signum, frame):
        name = signal.Signals(signum).name
        then = (f"the run's checkpoints are complete: nfvi train resume={run_dir} runs it again"
                if resumable else "nothing was written")
        raise Interrupted(signum, message=f"interrupted ({name}) during {what}; {then}")

    old = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            old[s] = signal.signal(s, handle)
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def versions() -> dict:
    return {
        "nfvi": nfvi.__version__,
        "torch": str(torch.__version__),
        "python": ".".join(map(str, sys.version_info[:3])),
    }


def backward(loss: Tensor) -> None:
    """The one backward pass of nfvi (the loop's update and a CUDA graph's capture)."""
    loss.backward()


class Compiled:
    """``fn`` through ``torch.compile``, falling back to ``fn`` itself (one warning) when the
    compiler is not usable here (no C++ compiler for inductor on the CPU, an unsupported
    Python, an operator it cannot trace).

    Random draws inside ``fn`` stay torch's own (inductor's ``fallback_random``): a compiled
    run draws the same noise from the same generators as an eager one and its checkpoints'
    RNG states resume either. A call that fails is retried eagerly from the RNG state it began
    with, so the fallback changes nothing but the speed. :attr:`seconds` is the wall time of
    the first call (tracing and compilation included), None before it.
    """

    def __init__(self, fn: Callable, what: str, dynamic: bool | None = None) -> None:
        self.fn, self.what, self.seconds = fn, what, None
        self.compiled: Callable | None = torch.compile(
            fn, dynamic=dynamic, options={"fallback_random": True})

    def __call__(self, *args, **kw):
        if self.compiled is None:
            return self.fn(*args, **kw)
        # a compiler fails while tracing, before any draw; the first call also keeps the RNG
        # state to be sure (later calls skip the copy: they are the hot path)
        state = rng_state() if self.seconds is None else None
        start = time.perf_counter()
        try:
            out = self.compiled(*args, **kw)
        except Exception as ex:  # noqa: BLE001 - any compiler failure: eager keeps the run going
            if state is not None:
                set_rng_state(state)
            out = self.fn(*args, **kw)  # a genuine error of fn raises here, uncompiled
            self.compiled = None
            first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
            log.warning("torch.compile of %s failed (%s: %s); running it eagerly", self.what,
                        type(ex).__name__, first[:200])
            return out
        if self.seconds is None:
            self.seconds = time.perf_counter() - start
            log.info("compiled %s in %.1f s (its first call)", self.what, self.seconds)
        return out


def require_cuda(what: str, device: torch.device) -> None:
    """A one-line :class:`ConfigError` when ``what`` (a CUDA-only option) meets another device."""
    if device.type != "cuda":
        raise ConfigError(f"{what}=true needs a CUDA device, but this run is on {device}; set "
                          f"{what}=false or device=cuda")


class CudaGraphStep:
    """The forward and backward of ``fn(*inputs) -> (loss, stats)`` captured in one CUDA graph
    and replayed for every update (CUDA only).

    ``inputs`` are the static device buffers the graph reads (e.g. the batch ``x [B, P]`` and
    ``beta []``): each call copies its arguments into them, replays, and returns the static
    ``(loss, stats)`` the graph overwrites, with every parameter's ``.grad`` holding the new
    gradient (the graph writes, not accumulates: the grads were None at capture). So nobody
    may set the grads to None afterwards (``zero_grad(set_to_none=True)`` would detach the
    optimizer from the graph's gradient buffers); the optimizer step and clipping stay eager.

    The capture happens at the first call: three warm-up passes on a side stream (PyTorch's
    rule before a capture; their gradients are dropped and the RNG states put back, so they
    change nothing), then the capture itself, which draws no noise: the default CUDA generator
    hands each replay the offset an eager call would have had, so the graphed noise is the
    eager noise.
    """

    def __init__(self, fn: Callable[..., tuple[Tensor, dict[str, Tensor]]],
                 params: list[torch.nn.Parameter], inputs: tuple[Tensor, ...]) -> None:
        self.fn, self.params, self.inputs = fn, list(params), inputs
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: tuple[Tensor, dict[str, Tensor]] | None = None
        self.seconds: float | None = None  # wall time of the warm-up and capture

    def __call__(self, *values: Tensor | float) -> tuple[Tensor, dict[str, Tensor]]:
        for buf, v in zip(self.inputs, values, strict=True):
            if isinstance(v, Tensor):
                buf.copy_(v, non_blocking=True)
            else:
                buf.fill_(v)
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.outputs

    def _capture(self) -> None:
        start = time.perf_counter()
        device = self.inputs[0].device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.random.fork_rng(devices=[device]), torch.cuda.stream(side):
            for _ in range(3):
                for p in self.params:
                    p.grad = None
                loss, _ = self.fn(*self.inputs)
                backward(loss)
        torch.cuda.current_stream(device).wait_stream(side)
        for p in self.params:
            p.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss, stats = self.fn(*self.inputs)
            backward(loss)
        self.graph, self.outputs = graph, (loss.detach(), stats)
        torch.cuda.synchronize(device)
        self.seconds = time.perf_counter() - start
        log.info("captured the training step in a CUDA graph in %.1f s", self.seconds)


@dataclass
class _Window:
    """Running sums of the logged stats since the last log line, kept on the device (one sync
    per log line, not per step) and saved with the state, so a resumed run logs the same
    averages as an uninterrupted one."""

    keys: list[str] = field(default_factory=list)
    sums: Tensor | None = None
    n: int = 0

    def add(self, stats: dict[str, Tensor]) -> None:
        values = torch.stack([v.detach().float() for v in stats.values()])
        if self.sums is None or not self.keys:
            self.keys, self.sums = list(stats), torch.zeros_like(values)
        self.sums += values
        self.n += 1

    def mean_and_reset(self) -> dict[str, float]:
        means = (self.sums / max(self.n, 1)).tolist() if self.sums is not None else []
        if self.sums is not None:
            self.sums.zero_()
        self.n = 0
        return dict(zip(self.keys, means, strict=True))


def _in_steps(epochs: float | None, per_epoch: int, steps: int) -> int:
    """``epochs`` epochs of ``per_epoch`` updates (at least 1), or ``steps`` when not set."""
    return steps if epochs is None or not per_epoch else max(1, round(epochs * per_epoch))


class Loop:
    """Runs a :class:`Task` for ``trainer.max_steps`` updates in ``run_dir``."""

    def __init__(self, task: Task, trainer: TrainerConfig, run_dir: Path, console: Console,
                 config: dict, logger: NullLogger | None = None) -> None:
        self.task, self.t, self.run_dir, self.console = task, trainer, run_dir, console
        self.config = config  # the resolved config as a plain dict, saved in every checkpoint
        self.logger = logger or NullLogger()
        self.metrics = MetricsLog(run_dir)
        self.state = LoopState()
        self.window = _Window()
        self.device = next(task.model.parameters()).device
        # isfinite(loss) of each update since the last check_finite, on the device (one small
        # op a step, no sync); the first False names the step check_finite reports
        self.finite: list[Tensor] = []
        self.finite_from = 0  # the step of finite[0]
        #: wall seconds of this process's first update with trainer.compile (compilation
        #: included), None otherwise
        self.compile_seconds: float | None = None
        self.clock = time.perf_counter()
        self.skipped_in_a_row = 0
        # optim.lr as built; the schedule scales it each step (resume sets it from the config)
        self.base_lrs = [g["lr"] for g in task.optimizer.param_groups]
        # warm-up, validation interval and patience in updates (epoch-based keys converted)
        per_epoch = task.steps_per_epoch or 0
        self.beta_steps = _in_steps(trainer.beta_epochs, per_epoch, trainer.beta_steps)
        self.val_interval = _in_steps(trainer.val_epochs, per_epoch, trainer.val_interval)
        self.patience = trainer.patience
        if trainer.patience_epochs is not None and per_epoch:
            self.patience = math.ceil(trainer.patience_epochs * per_epoch / self.val_interval)

    # -- schedule and limits --------------------------------------------------------------
    def beta(self, step: int) -> float:
        return beta_at(step, self.t.beta_schedule, self.t.beta_start, self.beta_steps)

    def set_lr(self, step: int) -> None:
        f = lr_factor(step, self.t.lr_schedule, self.max_steps, self.t.lr_final)
        for group, base in zip(self.task.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * f

    @property
    def max_steps(self) -> int:
        limit, per_epoch = self.t.max_steps, self.task.steps_per_epoch
        if self.t.max_epochs is not None and per_epoch:
            limit = min(limit, self.t.max_epochs * per_epoch)
        return limit

    @property
    def epoch(self) -> int:
        per_epoch = self.task.steps_per_epoch
        return self.state.step // per_epoch if per_epoch else 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.clock

    # -- checkpoints ----------------------------------------------------------------------
    def checkpoint(self) -> dict:
        return {
            "task": self.task.name,
            "model": self.task.model.state_dict(),
            "optimizer": self.task.optimizer.state_dict(),
            "schedule": {"name": str(self.t.beta_schedule), "start": self.t.beta_start,
                         "steps": self.beta_steps, "beta": self.beta(self.state.step)},
            "state": asdict(self.state),
            "rng": rng_state(),
            "task_state": self.task.state_dict(),
            "log_window": {"keys": self.window.keys, "sum": self.window.sums,
                           "n": self.window.n},
            "config": self.config,
            "versions": versions(),
        }

    def save(self, name: str) -> Path:
        self.state.elapsed = self.elapsed()
        path = checkpoint_path(self.run_dir, name)
        save_checkpoint(path, self.checkpoint())
        return path

    def resume(self, path: Path) -> None:
        """Continue from ``path`` (a last.pt of this task): every state, and metrics.jsonl cut
        back to the checkpoint's step."""
        ckpt = load_checkpoint(path, map_location=self.device)
        self.task.model.load_state_dict(ckpt["model"])
        self.task.optimizer.load_state_dict(ckpt["optimizer"])
        self.task.load_state_dict(ckpt.get("task_state", {}))
        self.state = LoopState(**ckpt["state"])
        set_rng_state(ckpt["rng"])
        w = ckpt.get("log_window") or {}
        sums = w.get("sum")
        self.window = _Window(list(w.get("keys", [])),
                              None if sums is None else sums.to(self.device), int(w.get("n", 0)))
        self.clock = time.perf_counter() - self.state.elapsed
        dropped = self.metrics.truncate_after(self.state.step)
        if dropped:
            self.console.print(f"metrics.jsonl: dropped {dropped} line(s) logged after step "
                               f"{self.state.step} or torn by a kill")
        saved = (ckpt.get("config") or {}).get("trainer", {}).get("max_steps")
        if self.t.lr_schedule != "constant" and saved not in (None, self.t.max_steps):
            f = lr_factor(self.state.step, self.t.lr_schedule, self.max_steps, self.t.lr_final)
            self.console.print(
                f"note: trainer.max_steps {saved} -> {self.t.max_steps}: the {self.t.lr_schedule} "
                f"learning-rate schedule now runs over {self.max_steps} updates (lr "
                f"{self.base_lrs[0] * f:.3g} from here)")
        self.console.print(f"resuming {self.run_dir} from step {self.state.step}")

    # -- one step -------------------------------------------------------------------------
    def step(self) -> float:
        """One update; returns the beta it used."""
        first = self.t.compile and self.compile_seconds is None
        if first:
            start = time.perf_counter()
        beta = self.beta(self.state.step)
        if self.t.lr_schedule != "constant":
            self.set_lr(self.state.step)
        out = self.task.objective(beta)
        self.state.step += 1
        if self.t.on_nonfinite == "skip":
            if not bool(torch.isfinite(out.loss)):
                self._skip()
                return beta
        else:
            if not self.finite:
                self.finite_from = self.state.step
            self.finite.append(torch.isfinite(out.loss.detach()))
        if not out.backward_done:
            self.task.optimizer.zero_grad(set_to_none=True)
            backward(out.loss)
        if self.t.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.task.model.parameters(), self.t.grad_clip)
        self.task.optimizer.step()
        self.skipped_in_a_row = 0
        self.window.add(out.stats)
        if first:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.compile_seconds = time.perf_counter() - start
            log.info("trainer.compile: the first update took %.1f s, compilation included",
                     self.compile_seconds)
            self.console.print(f"trainer.compile: first update {self.compile_seconds:.1f} s "
                               "(compilation included)")
        return beta

    def _skip(self) -> None:
        self.state.skipped_steps += 1
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise NonFiniteLoss(
                f"the loss was not finite for {self.skipped_in_a_row} steps in a row (up to step "
                f"{self.state.step}); stopped, {checkpoint_path(self.run_dir)} holds the last "
                "finite state: lower optim.lr or set trainer.grad_clip"
            )

    def check_finite(self) -> None:
        """Stop (``trainer.on_nonfinite=stop``) once a loss was not finite: the checkpoints on
        disk were all written before that step, so they stay finite and loadable."""
        if not self.finite:
            return
        ok = torch.stack(self.finite)
        if bool(ok.all()):  # the one sync of the check
            self.finite.clear()
            return
        first = self.finite_from + int((~ok).nonzero()[0, 0])
        have = [n for n in (LAST, BEST) if checkpoint_path(self.run_dir, n).is_file()]
        raise NonFiniteLoss(
            f"the loss was not finite at step {first}; stopped at step {self.state.step} "
            f"without saving; {' and '.join(have) or 'no checkpoint'} in "
            f"{self.run_dir / 'checkpoints'} hold(s) the last finite state: lower optim.lr, "
            "set trainer.grad_clip, or trainer.on_nonfinite=skip"
        )

    # -- logging and validation -----------------------------------------------------------
    def record(self, split: str, values: dict[str, float], beta: float) -> None:
        rec = {"step": self.state.step, "epoch": self.epoch, "split": split, **values,
               "beta": beta, "lr": self.task.optimizer.param_groups[0]["lr"],
               "elapsed": self.elapsed()}
        self.metrics.write(rec)
        self.logger.write(rec)

    def validate(self) -> bool:
        """Validate, keep best.pt, count patience; True when early stopping says stop."""
        val = self.task.validate()
        s = self.state
        if val.score < s.best_score:
            s.best_score, s.best_step, s.bad_validations = val.score, s.step, 0
            self.save(BEST)
        elif annealing_done(s.step, self.t.beta_schedule, self.t.beta_start, self.beta_steps):
            s.bad_validations += 1  # patience only counts once the objective is the true bound
        self.record("val", val.metrics, 1.0)
        log.info("step %d: validation score %.4f (best %.4f at step %d)", s.step, val.score,
                 s.best_score, s.best_step)
        self.save(LAST)  # a job killed without a signal loses at most one interval
        if self.patience is not None and s.bad_validations >= self.patience:
            s.stopped_early = True
            self.console.print(f"early stop at step {s.step}: no validation improvement in "
                               f"{self.patience} validations")
            return True
        return False

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> LoopState:
        """Train to ``max_steps`` (or early stopping); raises :class:`Interrupted` after saving
        last.pt on a signal and :class:`NonFiniteLoss` on a non-finite loss."""
        max_steps, t = self.max_steps, self.t
        if self.state.step == 0:
            self.save(LAST)  # a run that fails at its first steps still has a finite state
        progress = Progress(TextColumn("[bold]train"), BarColumn(),
                            TextColumn("{task.completed}/{task.total}"),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                            console=self.console, disable=not t.progress)
        with progress, SignalFlag() as flag:
            bar = progress.add_task("train", total=max_steps, completed=self.state.step,
                                    info="")
            while self.state.step < max_steps:
                beta = self.step()
                step, last = self.state.step, self.state.step == max_steps
                if step % t.log_interval == 0 or last:
                    self.check_finite()
                    values = self.window.mean_and_reset()
                    self.record("train", values, beta)
                    info = "  ".join(f"{k} {v:.3f}" for k, v in values.items())
                    progress.update(bar, completed=step, info=f"{info}  beta {beta:.3f}")
                if step % self.val_interval == 0 or last:
                    self.check_finite()
                    if self.validate():
                        break
                if flag.signum is not None:
                    self.check_finite()
                    self.save(LAST)
                    flag.chain()  # on SLURM: submitit requeues the job, which resumes here
                    raise Interrupted(flag.signum, step, self.run_dir)
        self.state.elapsed = self.elapsed()
        return self.state
