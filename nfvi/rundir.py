"""The run directory: its layout, its marker, and every file nfvi writes or reads in it.

One run, one directory::

    RUN/.nfvi-run              the marker: created exclusively when the run claims RUN
    RUN/config.yaml            the resolved config of what ran
    RUN/metrics.jsonl          one JSON object per logged step and per validation
    RUN/checkpoints/last.pt    the latest state (resume from it)
    RUN/checkpoints/best.pt    the model with the best validation score
    RUN/summary.json           the result (schema below), written when the run finishes
    RUN/eval/<stamp>/          each later ``nfvi eval``: eval.json and figures

Every file is written atomically (a temporary file in the same folder, flushed, fsync'ed and
renamed over the target), so a crash leaves the old file or the new one, never half of one.

No torch and no Hydra here: ``nfvi report`` imports this module and must start fast.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from nfvi.errors import CheckpointError, ConfigError, NfviError

RUN_MARKER = ".nfvi-run"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
EVAL_RESULT = "eval.json"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
#: version of the summary.json / eval.json layout that :func:`summary_record` writes
SUMMARY_SCHEMA = 1


class DiskFull(NfviError):
    """A write ran out of space; the file it was replacing is intact."""


# -- atomic files ---------------------------------------------------------------------------
def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600: follow the umask instead
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if disk_full(e):
            raise DiskFull(
                f"no space left on the device holding {path.parent} while writing {path.name}; "
                f"the previous {path.name} is intact: free space there (or set output_root "
                "elsewhere) and resume"
            ) from e
        raise


def disk_full(e: BaseException) -> bool:
    """An error of a write that ran out of space (torch reports it as 'unexpected pos')."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "unexpected pos" in str(seen) or "No space left" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# -- claiming a directory ---------------------------------------------------------------------
def is_run_dir(path: Path) -> bool:
    """A directory claimed by a run (an evaluation directory, which holds eval.json, is not)."""
    return (path / RUN_MARKER).is_file() and not (path / EVAL_RESULT).exists()


def claim(run_dir: Path, resuming: bool = False) -> None:
    """Mark ``run_dir`` as this process's run; refuse a directory that holds another run.

    A resumed run must find the marker of the run it continues.
    """
    marker = run_dir / RUN_MARKER
    if resuming:
        if not marker.exists():
            raise ConfigError(f"{run_dir} is not an nfvi run directory; pass resume=<run dir>")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        raise ConfigError(
            f"run directory {run_dir} already holds a run; nfvi never overwrites one: "
            "leave hydra.run.dir alone or pick a new one"
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(f"pid {os.getpid()} started {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")


def release(run_dir: Path) -> None:
    """Give up a claim (a job that must start over in the same directory)."""
    (run_dir / RUN_MARKER).unlink(missing_ok=True)


# -- cleaning up ----------------------------------------------------------------------------
def clean_temporaries(run_dir: Path) -> int:
    """Remove the temporaries of atomic writes that a kill interrupted; returns how many."""
    n = 0
    for folder in (run_dir, run_dir / CHECKPOINTS):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            n += 1
    return n


def remove_unstarted(run_dir: Path, stop_at: Path | None = None) -> None:
    """Remove what a run that failed before its first update left in ``run_dir`` (Hydra's
    record, the log, the marker, config.yaml, an empty logger folder), then ``run_dir`` and its
    parents up to ``stop_at`` where they are empty. Nothing else is touched."""
    for name in (".hydra", "tensorboard"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in ("nfvi.log", RUN_MARKER, CONFIG, METRICS):
        (run_dir / name).unlink(missing_ok=True)
    remove_empty_dirs(run_dir, stop_at)


def remove_empty_dirs(path: Path, stop_at: Path | None = None) -> None:
    """``rmdir`` ``path`` and then its parents while they are empty, never ``stop_at`` or above."""
    stop = stop_at.resolve() if stop_at is not None else None
    path = path.resolve()
    while path != stop and (stop is None or stop in path.parents):
        try:
            path.rmdir()
        except OSError:  # not empty (or gone): stop here
            return
        path = path.parent


# -- checkpoints ----------------------------------------------------------------------------
def checkpoint_path(run_dir: Path, name: str = LAST) -> Path:
    return run_dir / CHECKPOINTS / name


def resolve_checkpoint(path: str | Path, prefer: str = BEST) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file.

    For a directory: ``checkpoints/<prefer>``, else the other of last.pt / best.pt (a run that
    never validated has only last.pt). Raises :class:`CheckpointError` when there is none.
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        if not p.is_file():
            raise CheckpointError(
                f"checkpoint {path} does not exist; pass a run directory or "
                "<run dir>/checkpoints/last.pt or best.pt"
            )
        return p.resolve()
    order = [prefer, LAST if prefer == BEST else BEST]
    for name in order:
        candidate = checkpoint_path(p, name)
        if candidate.is_file():
            return candidate.resolve()
    raise CheckpointError(
        f"no checkpoint in {path} (looked for {CHECKPOINTS}/{order[0]} and {order[1]}); "
        "pass a run directory of a run that saved one"
    )


def per_example_file(split: str) -> str:
    """``<split>_per_example.json``: the per-point -ELBO and NLL of a run's evaluation."""
    return f"{split}_per_example.json"


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint file belongs to."""
    parent = checkpoint.parent
    return parent.parent if parent.name == CHECKPOINTS else parent


# -- metrics --------------------------------------------------------------------------------
def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; an unparsable line (a kill mid-append) is skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


class MetricsLog:
    """Appends one JSON object per line to ``RUN/metrics.jsonl``, flushed at each write."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / METRICS

    def write(self, record: dict) -> None:
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            if disk_full(e):
                raise DiskFull(f"no space left on the device holding {self.path}; the run's "
                               "checkpoints are intact: free space there and resume") from e
            raise

    def truncate_after(self, step: int) -> int:
        """Drop records past ``step`` (logged after the checkpoint a resumed run starts from)
        and torn lines; returns how many lines were dropped."""
        if not self.path.exists():
            return 0
        lines = self.path.read_text(encoding="utf-8").splitlines()
        keep = [json.dumps(r) for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in keep))
        return len(lines) - len(keep)


# -- results --------------------------------------------------------------------------------
def summary_record(run: dict, results: dict) -> dict:
    """The one layout of summary.json and eval.json: ``schema``, then what identifies the run
    (``task``, ``flow``, ``K``, ``seed``, ... from :func:`nfvi.jobs.run_info`), then the
    task's results (nats per example; energy: KL in nats). A key in both is a bug."""
    clash = ({"schema"} | set(run)) & set(results) | ({"schema"} & set(run))
    if clash:
        raise ValueError(f"summary keys given twice: {sorted(clash)}")
    return {"schema": SUMMARY_SCHEMA, **run, **results}


def write_summary(run_dir: Path, record: dict, name: str = SUMMARY) -> Path:
    path = run_dir / name
    atomic_write_json(path, record)
    return path


def read_summary(path: Path) -> tuple[dict | None, str | None]:
    """``(summary, None)``, or ``(None, problem)`` for an unreadable or corrupt file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        return None, f"unreadable {path.name} ({e.strerror})"
    except json.JSONDecodeError as e:
        return None, f"corrupt {path.name} ({e.msg}, line {e.lineno})"
    except UnicodeDecodeError:
        return None, f"corrupt {path.name} (not UTF-8 text)"
    if not isinstance(data, dict):
        return None, f"corrupt {path.name} (not an object)"
    return data, None


def write_config(run_dir: Path, yaml_text: str) -> None:
    atomic_write_text(run_dir / CONFIG, yaml_text)
