"""The Hydra jobs behind ``nfvi train`` and ``nfvi eval``.

A job receives the composed config, turns it into the typed :class:`~nfvi.config.Config`,
claims its run directory, picks the device and threads, and hands the task (``task=vae`` or
``task=energy``, found in :data:`TASKS`) to the one training loop. Every job runs under
:func:`nfvi.errors.guard`. No torch import at module level: ``nfvi train --help`` stays fast.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from nfvi import rundir
from nfvi.config import Config, from_saved, to_plain, to_yaml, typed, validate
from nfvi.errors import CheckpointError, ConfigError, guard

log = logging.getLogger("nfvi")

#: task name -> the module that defines it: ``build(cfg, device, console)`` returning a
#: :class:`nfvi.training.Task`, and for ``nfvi eval`` optionally ``evaluate_checkpoint``
TASKS = {"vae": "nfvi.vae.run", "energy": "nfvi.energy.run"}
#: config keys a resumed or evaluated run may not change: they define the saved model
FROZEN = ("K", "task", "flow", "model", "dataset.name", "target", "optim.name")
#: keys under a frozen one that change how, not what, is computed (the same map to rounding)
UNFROZEN = ("flow.fused",)
#: config groups: ``group=option`` on a saved run would replace a whole node of its config
GROUPS = ("dataset", "flow", "model", "optim", "trainer", "eval", "target", "logger", "task")
#: (run directory, summary) of every job this process ran: what the Python API returns
RESULTS: list[tuple[Path, dict]] = []


def task_module(name: str) -> ModuleType:
    return importlib.import_module(TASKS[str(name)])


def hydra_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get()


def launcher_threads() -> int | None:
    """Torch threads per job when a launcher runs jobs side by side on this machine.

    joblib: ``cores // n_jobs`` (at least 1), so jobs x threads does not exceed the cores;
    submitit: the job's ``cpus_per_task``. None (torch's default) otherwise.
    """
    launcher = _hydra().launcher
    target = str(launcher.get("_target_", ""))
    cores = os.cpu_count() or 1
    if "joblib" in target:
        n = launcher.get("n_jobs", -1)
        n = cores + 1 + n if n is None or n < 0 else n  # joblib: -1 = all cores, -2 = all but one
        return max(1, cores // max(1, min(n, cores)))
    if "submitit" in target and launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    return None


def requeued(run_dir: Path) -> bool:
    """A cluster job started again in its own directory (SLURM preemption or time-out)."""
    target = str(_hydra().launcher.get("_target_", ""))
    return "submitit" in target and (run_dir / rundir.RUN_MARKER).exists()


def prepare(cfg: Config):
    """Range checks, torch threads, malloc's reuse of freed memory, and the device (a
    one-line error if it is missing)."""
    from nfvi.runtime import keep_freed_memory, resolve_device, set_threads

    validate(cfg)
    threads = cfg.trainer.num_threads
    set_threads(threads if threads is not None else launcher_threads())
    if cfg.trainer.keep_freed_memory:
        keep_freed_memory()
    return resolve_device(cfg.device)


def run_info(cfg: Config, device) -> dict:
    """What identifies a run in summary.json and eval.json (see :func:`rundir.summary_record`)."""
    from nfvi.training import versions

    info = {"task": str(cfg.task), "flow": cfg.flow.name, "K": cfg.K, "seed": cfg.seed}
    if str(cfg.task) == "energy":
        info["target"] = cfg.target.name
    else:
        info.update(dataset=cfg.dataset.name, amortized=cfg.flow.amortized)
    return {**info, "device": str(device), "versions": versions()}


def apply_overrides(saved: dict, overrides: list[str], keep: dict) -> Config:
    """A saved run's config with this command's overrides on top; model-defining keys refused."""
    base = from_saved(saved)
    for ov in overrides:
        key, _, value = ov.lstrip("+~").partition("=")
        if key in ("resume", "checkpoint"):
            continue
        if key in GROUPS and key not in FROZEN:
            raise ConfigError(
                f"{ov} would replace the saved run's whole {key} config, which a resumed or "
                f"evaluated run keeps; set single keys instead (e.g. {key}.<key>=...; "
                f"nfvi train --cfg job lists them)"
            )
        if key not in UNFROZEN and any(key == f or key.startswith(f + ".") for f in FROZEN):
            raise ConfigError(
                f"{ov} would change the model of a saved run; only settings such as eval.*, "
                "device, dataset.data_dir or trainer.max_steps can be overridden here"
            )
        base = OmegaConf.merge(base, OmegaConf.from_dotlist([f"{key}={value}"]))
    for k, v in keep.items():
        base[k] = v
    return typed(base)


def _job(func: Callable) -> Callable:
    """A Hydra job: under the one error guard, its result recorded for the Python API."""

    @functools.wraps(func)
    def job(cfg: DictConfig):
        with guard():
            run_dir, summary = func(cfg)
        RESULTS.append((run_dir, summary))
        return summary

    return job


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)  # paths and commands stay copyable


def _train_config(cfg: DictConfig, run_dir: Path) -> Config:
    """The typed config of a fresh run, of ``resume=`` (the saved config plus this command's
    overrides), or of a requeued cluster job (which resumes from its own last.pt)."""
    from nfvi.checkpoint import load_checkpoint

    if not cfg.resume and requeued(run_dir):
        if rundir.checkpoint_path(run_dir).exists():
            cfg.resume = str(run_dir)
        else:  # stopped before its first checkpoint: start over in the same directory
            (run_dir / rundir.METRICS).unlink(missing_ok=True)
            rundir.release(run_dir)
    if not cfg.resume:
        return typed(cfg)
    path = rundir.resolve_checkpoint(cfg.resume, prefer=rundir.LAST)
    saved = load_checkpoint(path)["config"]
    return apply_overrides(saved, list(_hydra().overrides.task), keep={"resume": str(path)})


@dataclass
class _Start:
    """What a fresh or resumed run has once it is set up (before its first update)."""

    cfg: Config
    device: Any
    task: Any
    loop: Any


def _start(dcfg: DictConfig, run_dir: Path, console: Console) -> _Start:
    """Set a run up; if that fails, remove what this command left (nothing else)."""
    from nfvi.loggers import make_logger
    from nfvi.optim import set_hyperparameters
    from nfvi.runtime import seed_everything
    from nfvi.training import Loop

    claimed = False
    try:
        cfg = _train_config(dcfg, run_dir)
        device = prepare(cfg)
        rundir.claim(run_dir, resuming=bool(cfg.resume))
        claimed = not cfg.resume
        if cfg.resume and rundir.clean_temporaries(run_dir):
            console.print("removed the temporary files of an interrupted checkpoint write")
        seed_everything(cfg.seed)
        task = _build(cfg, device, console)
        loop = Loop(task, cfg.trainer, run_dir, console, to_plain(cfg),
                    make_logger(cfg.logger.name, run_dir))
        if cfg.resume:
            loop.resume(Path(cfg.resume))
            set_hyperparameters(task.optimizer, cfg.optim)  # this command's optim.* win
            applied = [o for o in _hydra().overrides.task if not o.startswith("resume=")]
            if applied:
                console.print(f"on top of the saved config: {' '.join(applied)}")
                log.info("resumed with overrides %s", applied)
        rundir.write_config(run_dir, to_yaml(cfg))  # after build: it records the data used
        return _Start(cfg, device, task, loop)
    except BaseException:
        _undo_start(dcfg, run_dir, claimed)
        raise


def _build(cfg: Config, device, console: Console):
    try:
        return task_module(cfg.task).build(cfg, device, console)
    except TypeError as e:
        if "hyperparameters" not in str(e) and "unexpected keyword" not in str(e):
            raise
        raise ConfigError(f"{e}; flow.hparams must hold {cfg.flow.name}'s hyperparameters "
                          f"(configs/flow/<name>.yaml; choose a flow with flow=<name>)") from e


def _undo_start(dcfg: DictConfig, run_dir: Path, claimed: bool) -> None:
    if dcfg.resume:  # the run is someone's: only this command's Hydra record goes
        shutil.rmtree(run_dir / _hydra().output_subdir, ignore_errors=True)
    elif claimed or not (run_dir / rundir.RUN_MARKER).exists():
        rundir.remove_unstarted(run_dir, stop_at=Path(str(dcfg.output_root)))


@_job
def train(dcfg: DictConfig) -> tuple[Path, dict]:
    """``nfvi train``: a fresh run, or ``resume=PATH`` continuing a run in its own directory."""
    import torch

    from nfvi.training import signals_interrupt

    run_dir, console = hydra_run_dir(), _console()
    s = _start(dcfg, run_dir, console)
    loop = s.loop
    console.print(f"[bold]nfvi[/] {s.task.describe()}, device {s.device}, "
                  f"{torch.get_num_threads()} CPU threads\nrun directory: {run_dir}")
    log.info("device %s, torch threads %d", s.device, torch.get_num_threads())
    try:
        loop.run()
        with signals_interrupt(run_dir, "the evaluation"):
            done = s.task.finish(loop)
        for name, path in done.figures.items():
            loop.logger.image(name, path, loop.state.step)
    finally:
        loop.logger.close()
    summary = rundir.summary_record(run_info(s.cfg, s.device), done.results)
    rundir.write_summary(run_dir, summary)
    print_summary(summary, "summary")
    return run_dir, summary


@_job
def evaluate(dcfg: DictConfig) -> tuple[Path, dict]:
    """``nfvi eval checkpoint=PATH``: evaluate a saved model into ``<run>/eval/<timestamp>/``;
    a failed evaluation leaves nothing behind."""
    out_dir = hydra_run_dir()
    try:
        return out_dir, _evaluate(dcfg, out_dir)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        rundir.remove_empty_dirs(out_dir.parent, stop_at=out_dir.parent.parent)
        raise


def _evaluate(dcfg: DictConfig, out_dir: Path) -> dict:
    from nfvi.checkpoint import load_checkpoint
    from nfvi.training import signals_interrupt

    if not dcfg.checkpoint:
        raise ConfigError("nfvi eval needs checkpoint=PATH (a run directory or a .pt file)")
    path = rundir.resolve_checkpoint(dcfg.checkpoint, prefer=rundir.BEST)
    ckpt = load_checkpoint(path)
    module = task_module(ckpt["config"].get("task", "vae"))
    if not hasattr(module, "evaluate_checkpoint"):
        raise CheckpointError(
            f"{path} is from a task={ckpt['config'].get('task')} run, and nfvi eval evaluates "
            "VAE runs; its summary.json, density.png and samples.png already hold the evaluation"
        )
    cfg = apply_overrides(ckpt["config"], list(_hydra().overrides.task),
                          keep={"checkpoint": str(path)})
    device = prepare(cfg)
    rundir.claim(out_dir)
    with signals_interrupt(out_dir, "the evaluation", resumable=False):
        done = module.evaluate_checkpoint(cfg, ckpt, path, out_dir, device, _console())
    result = rundir.summary_record(run_info(cfg, device), done.results)
    rundir.write_summary(out_dir, result, rundir.EVAL_RESULT)
    print_summary(result, f"eval of {path}")
    return result


def print_summary(summary: dict, title: str) -> None:
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if isinstance(value, dict):
            continue
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    _console().print(table)
