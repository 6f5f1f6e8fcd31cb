"""Running ``nfvi train`` / ``nfvi eval`` as a Hydra app: argv in, a job of :mod:`nfvi.jobs` out.

Hydra is called through ``hydra.main`` (applied at call time, with the absolute path of the
configs), so run directories, ``-m`` multirun, ``--cfg``, ``--help`` and launcher plugins all
behave as in any Hydra app. Hydra's own error reporting is replaced by
:func:`nfvi.errors.guard`: one line, no traceback.

No torch import here: ``nfvi train --help`` must stay fast.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from nfvi import rundir
from nfvi.errors import fail, guard

EVAL_HELP = ("nfvi eval: evaluate a saved VAE run on its test (or validation) split.\n"
             "Usage: nfvi eval checkpoint=RUN_DIR|RUN_DIR/checkpoints/best.pt [key=value]...\n"
             "  e.g. nfvi eval checkpoint=outputs/default/planar_K10/<stamp> "
             "eval.iw_samples=5000 eval.split=val\n"
             "The model keys (K, flow, model, dataset.name) come from the checkpoint; eval.*, "
             "device and dataset.data_dir may be set. Results: RUN_DIR/eval/<stamp>/eval.json")


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _find(args: list[str], key: str) -> str | None:
    for a in args:
        if a.startswith(key + "="):
            return a.split("=", 1)[1]
    return None


def _stamp() -> str:
    return time.strftime("%Y-%m-%d_%H-%M-%S") + f"-{time.time_ns() // 1000 % 1_000_000:06d}"


def _informational(args: list[str]) -> bool:
    return any(a in ("--help", "-h", "--hydra-help") or a.startswith("--cfg") for a in args)


def _single(args: list[str], what: str) -> None:
    if "-m" in args or "--multirun" in args:
        fail(f"{what} cannot be combined with -m; run one at a time (or loop in the shell)")


def _check_paths(args: list[str]) -> None:
    """Before Hydra creates anything: names that become path parts stay inside output_root,
    and an explicit ``hydra.run.dir`` holding a run is refused untouched."""
    from nfvi.config import SAFE_NAME

    for key in ("name", "flow.name"):
        value = _find(args, key)
        if value is not None and not SAFE_NAME.match(value.strip("'\"")):
            fail(f"{key}={value} would put the run directory outside output_root; use letters, "
                 "digits, '_', '-', '.' (not starting with '.')")
    run_dir = _find(args, "hydra.run.dir")
    if run_dir is not None and (Path(run_dir.strip("'\"")) / rundir.RUN_MARKER).exists():
        fail(f"run directory {run_dir} already holds a run; nfvi never overwrites one: "
             "leave hydra.run.dir alone, pick a new one, or resume=<run dir>")


def train_args(args: list[str]) -> list[str]:
    """``resume=PATH`` continues in that run's own directory: point Hydra's run dir at it."""
    resume = _find(args, "resume")
    if resume is None:
        if not _informational(args):
            _check_paths(args)
        return args
    _single(args, "resume=")
    p = Path(resume).expanduser().resolve()
    ckpt = rundir.checkpoint_path(p) if p.is_dir() else p
    if not ckpt.is_file():
        fail(f"nothing to resume at {resume} (no {ckpt}); pass resume=<run dir> or a last.pt")
    return [
        *[a for a in args if not a.startswith("resume=")],
        f"resume={_quote(str(ckpt))}",
        f"hydra.run.dir={_quote(str(rundir.run_dir_of(ckpt)))}",
        f"hydra.output_subdir=.hydra/resume_{_stamp()}",
    ]


def eval_args(args: list[str]) -> list[str]:
    """``checkpoint=PATH``: write into ``<run>/eval/<timestamp>/`` beside the checkpoint."""
    if _informational(args):
        return [*args, f"hydra.help.header={_quote(EVAL_HELP)}"]
    ckpt_arg = _find(args, "checkpoint")
    if ckpt_arg is None:
        fail("nfvi eval needs checkpoint=PATH (a run directory or its checkpoints/best.pt)")
    _single(args, "nfvi eval")
    if not Path(ckpt_arg).expanduser().exists():
        fail(f"checkpoint {ckpt_arg} not found; pass checkpoint=<run dir> or "
             "<run dir>/checkpoints/best.pt")
    with guard():
        ckpt = rundir.resolve_checkpoint(ckpt_arg)
    return [
        *[a for a in args if not a.startswith("checkpoint=")],
        f"checkpoint={_quote(str(ckpt))}",
        f"hydra.run.dir={_quote(str(rundir.run_dir_of(ckpt) / 'eval' / _stamp()))}",
        "hydra.output_subdir=.hydra",
    ]


def _report(func):
    """Stands in for Hydra's ``run_and_report``: the one error guard."""
    with guard():
        return func()


def run(command: str, args: list[str]) -> None:
    """Run ``nfvi <command> <args>`` as a Hydra app (``command``: ``train`` or ``eval``)."""
    import hydra
    import hydra._internal.utils as hydra_utils

    from nfvi import jobs
    from nfvi.config import config_dir, register_configs

    job, prepare = {"train": (jobs.train, train_args), "eval": (jobs.evaluate, eval_args)}[command]
    args = prepare(list(args))
    with guard():
        cfg_dir = str(config_dir())
    register_configs()
    # one time stamp per command, fixed in the environment: jobs requeued on a cluster (which
    # inherit it) recompose the same run directories instead of new ones
    os.environ["NFVI_RUN_STAMP"] = _stamp()
    hydra_utils.run_and_report = _report
    argv, sys.argv = sys.argv, [f"nfvi {command}", *args]
    try:
        with guard():  # raised by Hydra outside its own reporting, e.g. bad flags
            hydra.main(version_base="1.3", config_path=cfg_dir, config_name="config")(job)()
    finally:
        sys.argv = argv
