"""Find the run directories below some paths and load what each holds.

A run directory is one with a ``.nfvi-run`` marker (written when the run starts). It is
*finished* when it holds ``summary.json``; otherwise it is unfinished (it logged metrics) or
failed (it logged nothing). Evaluations (``<run>/eval/<timestamp>/``, which hold ``eval.json``)
are not runs: the walk never descends into a run directory, and a marked directory holding
``eval.json`` is skipped. With ``evaluations=True`` (``nfvi report --eval``) a run's newest
evaluation of the test split stands in for the test results of its training.

No torch, no Hydra here: ``nfvi report`` must start fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfvi.errors import ConfigError
from nfvi.rundir import (
    CONFIG,
    EVAL_RESULT,
    METRICS,
    RUN_MARKER,
    SUMMARY,
    is_run_dir,
    per_example_file,
    read_metrics,
    read_summary,
)

#: summary keys copied into the flat config (over config.yaml: the run's own record of what it
#: was; and the only source when the config file is missing)
_SUMMARY_CONFIG = {
    "task": "task",
    "K": "K",
    "seed": "seed",
    "flow": "flow.name",
    "amortized": "flow.amortized",
    "dataset": "dataset.name",
    "data_source": "dataset.resolved_source",
    "target": "target.name",
}


@dataclass
class Run:
    """One run directory: its flat config, its summary (``None`` unless finished), its metrics."""

    path: Path
    name: str
    config: dict[str, Any]
    summary: dict[str, Any] | None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    #: "finished", "unfinished (last step N)" or "failed: ..."
    status: str = "finished"
    #: the ``nfvi eval`` directory whose test results replace the training-time ones
    evaluation: Path | None = None

    def per_example(self, split: str = "test") -> dict[str, list[float]] | None:
        """The per-point values of the run's evaluation (``<split>_per_example.json``)."""
        where = self.evaluation if self.evaluation is not None and split == "test" else self.path
        data, _ = read_summary(where / per_example_file(split))
        return data

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def task(self) -> str:
        return str(self.config.get("task") or (self.summary or {}).get("task") or "vae")

    @property
    def last_step(self) -> int | None:
        steps = [m["step"] for m in self.metrics if isinstance(m.get("step"), int)]
        return max(steps) if steps else None

    def curve(self, split: str = "val", metric: str = "neg_elbo") -> list[tuple[int, float]]:
        """``(step, value)`` of the records of one split (energy records have no split)."""
        out = []
        for m in self.metrics:
            if m.get("split", split) == split and isinstance(m.get(metric), int | float):
                out.append((int(m["step"]), float(m[metric])))
        return out


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": 1, "c": (1, 2)}`` (lists become tuples,
    so that every value is hashable)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                out.update(flatten(v, key))
            else:
                out[key] = _hashable(v)
    return out


def _hashable(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((str(k), _hashable(x)) for k, x in v.items()))
    return v


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


#: eval.json keys that replace the summary's: the test results and how they were measured
_EVAL_KEYS = ("iw_samples", "elbo_samples", "eval_seconds", "eval_chunk", "eval_peak_memory_mb",
              "eval_memory_kind")


def newest_test_evaluation(path: Path) -> tuple[Path, dict] | None:
    """``(dir, eval.json)`` of the newest readable ``<run>/eval/<stamp>/`` of the test split
    (stamps sort by time), or ``None``."""
    root = path / "eval"
    if not root.is_dir():
        return None
    for d in sorted((p for p in root.iterdir() if p.is_dir()), reverse=True):
        data, _ = read_summary(d / EVAL_RESULT)
        if data is not None and data.get("split") == "test" and "test_nll" in data:
            return d, data
    return None


def load_run(path: Path, name: str | None = None, evaluations: bool = False) -> Run:
    """Load one run directory (which must hold the marker); with ``evaluations`` the test
    results (``test_*`` and how they were measured) come from the run's newest ``nfvi eval``
    of the test split, when it has one."""
    path = Path(path)
    raw = {}
    for candidate in (path / CONFIG, path / ".hydra" / "config.yaml"):
        if candidate.is_file():
            raw = _read_yaml(candidate)
            if raw:
                break
    config = flatten(raw)
    summary, problem = None, None
    if (path / SUMMARY).is_file():
        summary, problem = read_summary(path / SUMMARY)
    if summary is not None:  # what the run recorded at its end wins (and fills a missing config)
        for skey, ckey in _SUMMARY_CONFIG.items():
            if summary.get(skey) is not None:
                config[ckey] = _hashable(summary[skey])
    metrics = read_metrics(path / METRICS)
    run = Run(path=path, name=name or str(path), config=config, summary=summary,
              metrics=metrics)
    found = newest_test_evaluation(path) if evaluations and summary is not None else None
    if found is not None:
        run.evaluation, result = found
        summary = dict(summary)
        for key in [k for k in summary if k.startswith("test_") or k in _EVAL_KEYS]:
            del summary[key]
        summary.update({k: v for k, v in result.items()
                        if k.startswith("test_") or k in _EVAL_KEYS})
        run.summary = summary
    if summary is not None:
        run.status = "finished"
    elif problem is not None:
        run.status = f"failed: {problem}"
    elif run.last_step is not None:
        run.status = f"unfinished (last step {run.last_step})"
    elif metrics:
        run.status = "unfinished (no step logged)"
    else:
        run.status = "failed: no metrics"
    return run


def _display_name(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def find_run_dirs(root: Path) -> list[Path]:
    """Every run directory at or below ``root`` (never looking inside a run directory)."""
    if is_run_dir(root):
        return [root]
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            sub = here / d
            if (sub / RUN_MARKER).is_file():
                if is_run_dir(sub):
                    found.append(sub)
                continue  # a run (or an evaluation): do not descend
            keep.append(d)
        dirnames[:] = keep
    return found


def find_runs(paths: list[str], evaluations: bool = False) -> list[Run]:
    """Load every run below ``paths`` (each run once, sorted by path); ``evaluations``: see
    :func:`load_run`.

    Raises :class:`ConfigError` for a path that does not exist or is not a directory.
    """
    if not paths:
        raise ConfigError("no path given; pass one or more run directories or output folders, "
                          "e.g. nfvi report outputs")
    seen: dict[Path, None] = {}
    for p in paths:
        root = Path(p).expanduser()
        if not root.exists():
            raise ConfigError(f"{p} does not exist; pass a run directory or a folder of runs "
                              "(e.g. outputs)")
        if not root.is_dir():
            if root.parent.is_dir() and is_run_dir(root.parent):
                root = root.parent  # a file inside a run directory: that run
            else:
                raise ConfigError(f"{p} is a file, not a folder; pass a run directory or a "
                                  "folder of runs (e.g. outputs)")
        for d in find_run_dirs(root.resolve()):
            seen.setdefault(d, None)
    return [load_run(d, _display_name(d), evaluations) for d in sorted(seen)]
