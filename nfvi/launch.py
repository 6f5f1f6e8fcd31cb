"""Running a Hydra job from the CLI: argv in, one-line errors out.

Hydra is called through ``hydra.main`` (applied at call time, with the absolute path of the
configs), so run directories, ``-m`` multirun, ``--cfg``, ``--help`` and launcher plugins all
behave as in any Hydra app. Hydra reports errors as several lines (and tracebacks for errors
in the job); :func:`_report` turns every error into one line and exit status 2, unless
``NFVI_DEBUG=1`` or ``HYDRA_FULL_ERROR=1`` asks for the traceback.

No torch import here: ``nfvi train --help`` must stay fast.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from nfvi.errors import NfviError

EXIT_USAGE = 2


def debug_enabled() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("NFVI_DEBUG", "HYDRA_FULL_ERROR"))


def one_line(ex: BaseException) -> str:
    """A single line naming the problem and, where we know it, the fix."""
    if isinstance(ex, NfviError):
        return str(ex).replace("\n", " ")
    cause = ex.__cause__
    lines = [ln.strip() for ln in str(ex).splitlines() if ln.strip()]
    text = lines[0] if lines else type(ex).__name__
    rest = lines[1:]
    m = re.search(r"Could not find '([^']+)'", text)
    if m and rest and rest[0].startswith("Available options"):
        group = m.group(1).split("/")[0]
        opts = []
        for ln in rest[1:]:
            if ln.startswith("Config search path"):
                break
            opts.append(ln)
        opts = ", ".join(opts)
        return f"unknown option '{m.group(1)}'; choose {group}= one of: {opts}"
    if cause is not None and type(cause).__module__.startswith("omegaconf"):
        c_lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
        key = next((ln.split(":", 1)[1].strip() for ln in c_lines if ln.startswith("full_key")), "")
        where = f" (key {key})" if key else ""
        if re.match(r"Key '[^']+' (is )?not in", c_lines[0]):
            return (f"unknown key '{key}'; nfvi train --cfg job lists the keys "
                    "(misspelt? a group is chosen with group=option)")
        return f"{text}: {c_lines[0]}{where}; fix the value (nfvi train --cfg job shows the config)"
    if type(ex).__module__.startswith(("hydra", "omegaconf")):
        return " ".join([text, *rest])
    return f"{type(ex).__name__}: {text} (set NFVI_DEBUG=1 for the traceback)"


def fail(message: str, code: int = EXIT_USAGE) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def _report(func: Callable):
    """Stands in for Hydra's ``run_and_report``: one line, no traceback, exit 2."""
    try:
        return func()
    except Exception as ex:
        if debug_enabled():
            raise
        fail(one_line(ex))


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _find(args: list[str], key: str) -> str | None:
    for a in args:
        if a.startswith(key + "="):
            return a.split("=", 1)[1]
    return None


def _stamp() -> str:
    return time.strftime("%Y-%m-%d_%H-%M-%S") + f"-{time.time_ns() // 1000 % 1_000_000:06d}"


def train_args(args: list[str]) -> list[str]:
    """``resume=PATH`` continues in that run's own directory: point Hydra's run dir at it."""
    resume = _find(args, "resume")
    if resume is None:
        return args
    if "-m" in args or "--multirun" in args:
        fail("resume= cannot be combined with -m; resume one run at a time")
    p = Path(resume).expanduser().resolve()
    ckpt = p / "checkpoints" / "last.pt" if p.is_dir() else p
    if not ckpt.is_file():
        fail(f"nothing to resume at {resume} (no {ckpt}); pass resume=<run dir> or a last.pt")
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return [
        *[a for a in args if not a.startswith("resume=")],
        f"resume={_quote(str(ckpt))}",
        f"hydra.run.dir={_quote(str(run_dir))}",
        f"hydra.output_subdir=.hydra/resume_{_stamp()}",
    ]


def eval_args(args: list[str]) -> list[str]:
    """``checkpoint=PATH``: write into ``<run>/eval/<timestamp>/`` beside the checkpoint."""
    if any(a in ("--help", "-h", "--hydra-help") or a.startswith("--cfg") for a in args):
        return args
    ckpt_arg = _find(args, "checkpoint")
    if ckpt_arg is None:
        fail("nfvi eval needs checkpoint=PATH (a run directory or its checkpoints/best.pt)")
    if "-m" in args or "--multirun" in args:
        fail("nfvi eval evaluates one checkpoint; loop over checkpoints in the shell instead")
    p = Path(ckpt_arg).expanduser().resolve()
    ckpt = p / "checkpoints" / "best.pt" if p.is_dir() else p
    if p.is_dir() and not ckpt.is_file() and (p / "checkpoints" / "last.pt").is_file():
        ckpt = p / "checkpoints" / "last.pt"  # a run without validations (or an energy run)
    if not ckpt.is_file():
        fail(f"checkpoint {ckpt_arg} not found (looked for {ckpt}); pass checkpoint=<run dir> "
             "or <run dir>/checkpoints/best.pt")
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return [
        *[a for a in args if not a.startswith("checkpoint=")],
        f"checkpoint={_quote(str(ckpt))}",
        f"hydra.run.dir={_quote(str(run_dir / 'eval' / _stamp()))}",
        "hydra.output_subdir=.hydra",
    ]


def _train_job(cfg):
    return _guard(lambda: __import__("nfvi.app", fromlist=["train_job"]).train_job(cfg))


def _eval_job(cfg):
    return _guard(lambda: __import__("nfvi.app", fromlist=["eval_job"]).eval_job(cfg))


def _guard(func: Callable):
    """Inside a job: errors become one line and exit 2 before Hydra logs them at length."""
    try:
        return func()
    except Exception as ex:
        if debug_enabled():
            raise
        fail(one_line(ex))


JOBS = {"train": (_train_job, train_args), "eval": (_eval_job, eval_args)}


def run(command: str, args: list[str]) -> None:
    """Run ``nfvi <command> <args>`` as a Hydra app."""
    import hydra
    import hydra._internal.utils as hydra_utils

    from nfvi.config import config_dir, register_configs

    job, prepare = JOBS[command]
    args = prepare(list(args))
    try:
        cfg_dir = str(config_dir())
    except NfviError as ex:
        fail(str(ex))
    register_configs()
    # one time stamp per command, fixed in the environment: jobs requeued on a cluster (which
    # inherit it) recompose the same run directories instead of new ones
    os.environ["NFVI_RUN_STAMP"] = _stamp()
    hydra_utils.run_and_report = _report  # one-line errors (see the module docstring)
    sys.argv = [f"nfvi {command}", *args]
    try:
        hydra.main(version_base="1.3", config_path=cfg_dir, config_name="config")(job)()
    except Exception as ex:  # raised by Hydra outside its own reporting, e.g. bad flags
        if debug_enabled():
            raise
        fail(one_line(ex))
