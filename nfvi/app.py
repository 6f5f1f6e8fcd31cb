"""The Hydra jobs behind ``nfvi train`` and ``nfvi eval``.

Each job receives the composed config, claims its run directory, resolves the device and calls
the task's runner from :data:`TASKS` (``task=vae`` or ``task=energy``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from nfvi.config import validate
from nfvi.errors import CheckpointError, ConfigError

log = logging.getLogger("nfvi")
RUN_MARKER = ".nfvi-run"


def _run_vae(cfg, run_dir, device, console):
    from nfvi.train import run_vae

    return run_vae(cfg, run_dir, device, console)


def _run_energy(cfg, run_dir, device, console):
    from nfvi.energy.run import run_energy

    return run_energy(cfg, run_dir, device, console)


TASKS: dict[str, Callable] = {"vae": _run_vae, "energy": _run_energy}


def hydra_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)


def claim_run_dir(run_dir: Path, resuming: bool) -> None:
    """Mark ``run_dir`` as this run's; refuse a directory that already holds another run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / RUN_MARKER
    if resuming:
        if not marker.exists():
            raise ConfigError(f"{run_dir} is not an nfvi run directory; pass resume=<run dir>")
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        raise ConfigError(
            f"run directory {run_dir} already holds a run; nfvi never overwrites one: "
            "leave hydra.run.dir alone or pick a new one"
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(f"pid {os.getpid()} started {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)  # paths and commands stay copyable


def _prepare(cfg: DictConfig):
    from nfvi.runtime import resolve_device, set_threads

    validate(cfg)
    threads = cfg.trainer.num_threads
    set_threads(threads if threads is not None else launcher_threads())
    return resolve_device(cfg.device)


def _launcher() -> DictConfig:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().launcher


def launcher_threads() -> int | None:
    """Torch threads per job when a launcher runs jobs side by side on this machine.

    joblib: ``cores // n_jobs`` (at least 1), so jobs x threads does not exceed the cores;
    submitit: the job's ``cpus_per_task``. None (torch's default) otherwise.
    """
    launcher = _launcher()
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
    return "submitit" in str(_launcher().get("_target_", "")) and (run_dir / RUN_MARKER).exists()


def train_job(cfg: DictConfig) -> dict:
    """``nfvi train``: a fresh run, or ``resume=PATH`` continuing a run in its own directory."""
    run_dir = hydra_run_dir()
    if not cfg.resume and requeued(run_dir):
        if (run_dir / "checkpoints" / "last.pt").exists():
            cfg.resume = str(run_dir)
        else:  # stopped before its first checkpoint: start over in the same directory
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            (run_dir / RUN_MARKER).unlink()
    if cfg.resume:
        cfg = _resume_config(cfg)
    device = _prepare(cfg)
    claim_run_dir(run_dir, resuming=bool(cfg.resume))
    from nfvi.checkpoint import atomic_write_text

    # the resolved config beside the run's files (a task may rewrite it with what it resolved)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    task = str(getattr(cfg.task, "value", cfg.task))
    summary = TASKS[task](cfg, run_dir, device, _console())
    print_summary(summary, "summary")
    return summary


def _resume_config(cfg: DictConfig) -> DictConfig:
    """The saved run's config, with this command's explicit overrides applied on top."""
    from nfvi.checkpoint import load_checkpoint
    from nfvi.train import resolve_resume

    ckpt = load_checkpoint(resolve_resume(cfg.resume))
    return _apply_overrides(ckpt["config"], task_overrides(), keep={"resume": cfg.resume})


def _apply_overrides(saved: dict, overrides: list[str], keep: dict) -> DictConfig:
    from nfvi.config import Config

    base = OmegaConf.merge(OmegaConf.structured(Config), saved)
    skip = {"resume", "checkpoint"}
    frozen = ("K", "task", "flow", "model", "dataset.name")  # they define the saved model
    for ov in overrides:
        key, _, value = ov.lstrip("+~").partition("=")
        if key in skip:
            continue
        if any(key == f or key.startswith(f + ".") for f in frozen):
            raise ConfigError(
                f"{ov} would change the model of a saved run; only settings such as eval.*, "
                "device, dataset.data_dir or trainer.max_steps can be overridden here"
            )
        merged = OmegaConf.from_dotlist([f"{key}={value}"])
        base = OmegaConf.merge(base, merged)
    for k, v in keep.items():
        base[k] = v
    return base


def eval_job(cfg: DictConfig) -> dict:
    """``nfvi eval checkpoint=PATH``: evaluate a saved model into ``<run>/eval/<timestamp>/``."""
    from nfvi.checkpoint import load_checkpoint

    if not cfg.checkpoint:
        raise ConfigError("nfvi eval needs checkpoint=PATH (a run directory or a .pt file)")
    path = resolve_checkpoint(cfg.checkpoint)
    ckpt = load_checkpoint(path)
    saved_task = ckpt["config"].get("task", "vae")
    if saved_task != "vae":
        raise CheckpointError(
            f"{path} is from a task={saved_task} run, and nfvi eval evaluates VAE runs; "
            "its summary.json, density.png and samples.png already hold the evaluation"
        )
    run_cfg = _apply_overrides(ckpt["config"], task_overrides(), keep={"checkpoint": str(path)})
    device = _prepare(run_cfg)
    out_dir = hydra_run_dir()
    claim_run_dir(out_dir, resuming=False)
    from nfvi.evaluate_run import run_eval

    result = run_eval(run_cfg, ckpt, path, out_dir, device, _console())
    print_summary(result, f"eval of {path}")
    return result


def resolve_checkpoint(path: str) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "checkpoints" / "best.pt"
    return p


def print_summary(summary: dict, title: str) -> None:
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if isinstance(value, dict):
            continue
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    _console().print(table)
