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
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from nfvi import rundir
from nfvi.config import Config, to_plain, to_yaml, typed, validate
from nfvi.errors import CheckpointError, ConfigError, guard

log = logging.getLogger("nfvi")

#: task name -> the module that defines it: ``build(cfg, device, console)`` returning a
#: :class:`nfvi.training.Task`, and for ``nfvi eval`` optionally ``evaluate_checkpoint``
TASKS = {"vae": "nfvi.vae.run", "energy": "nfvi.energy.run"}
#: config keys a resumed or evaluated run may not change: they define the saved model
FROZEN = ("K", "task", "flow", "model", "dataset.name", "target")
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
    """Range checks, torch threads, and the device (a one-line error if it is missing)."""
    from nfvi.runtime import resolve_device, set_threads

    validate(cfg)
    threads = cfg.trainer.num_threads
    set_threads(threads if threads is not None else launcher_threads())
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
    base = OmegaConf.merge(OmegaConf.structured(Config), saved)
    for ov in overrides:
        key, _, value = ov.lstrip("+~").partition("=")
        if key in ("resume", "checkpoint"):
            continue
        if any(key == f or key.startswith(f + ".") for f in FROZEN):
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


@_job
def train(dcfg: DictConfig) -> tuple[Path, dict]:
    """``nfvi train``: a fresh run, or ``resume=PATH`` continuing a run in its own directory."""
    from nfvi.loggers import make_logger
    from nfvi.runtime import seed_everything
    from nfvi.training import Loop

    run_dir, console = hydra_run_dir(), _console()
    cfg = _train_config(dcfg, run_dir)
    device = prepare(cfg)
    rundir.claim(run_dir, resuming=bool(cfg.resume))
    seed_everything(cfg.seed)
    task = task_module(cfg.task).build(cfg, device, console)
    rundir.write_config(run_dir, to_yaml(cfg))  # after build: it records the data source used
    logger = make_logger(cfg.logger.name, run_dir)
    loop = Loop(task, cfg.trainer, run_dir, console, to_plain(cfg), logger)
    try:
        if cfg.resume:
            loop.resume(Path(cfg.resume))
        import torch

        console.print(f"[bold]nfvi[/] {task.describe()}, device {device}, "
                      f"{torch.get_num_threads()} CPU threads\nrun directory: {run_dir}")
        log.info("device %s, torch threads %d", device, torch.get_num_threads())
        loop.run()
        done = task.finish(loop)
        for name, path in done.figures.items():
            logger.image(name, path, loop.state.step)
    finally:
        logger.close()
    summary = rundir.summary_record(run_info(cfg, device), done.results)
    rundir.write_summary(run_dir, summary)
    print_summary(summary, "summary")
    return run_dir, summary


@_job
def evaluate(dcfg: DictConfig) -> tuple[Path, dict]:
    """``nfvi eval checkpoint=PATH``: evaluate a saved model into ``<run>/eval/<timestamp>/``."""
    from nfvi.checkpoint import load_checkpoint

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
    out_dir = hydra_run_dir()
    rundir.claim(out_dir)
    done = module.evaluate_checkpoint(cfg, ckpt, path, out_dir, device, _console())
    result = rundir.summary_record(run_info(cfg, device), done.results)
    rundir.write_summary(out_dir, result, rundir.EVAL_RESULT)
    print_summary(result, f"eval of {path}")
    return out_dir, result


def print_summary(summary: dict, title: str) -> None:
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if isinstance(value, dict):
            continue
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    _console().print(table)
