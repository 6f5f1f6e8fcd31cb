"""``nfvi report PATH... [--by K,flow] [--format table|csv|markdown|json] [-o DIR]``.

Finds every run below the paths, groups the finished ones by the config values that differ
(:mod:`nfvi.report.aggregate`), aggregates seeds (mean, sample std, n), prints the result and
always writes ``report.csv``, ``report.md`` and the figures (:mod:`nfvi.report.figures`) into
``DIR`` (default: the first PATH). Unfinished and failed runs are listed by name in every
output. With ``--format csv|markdown|json`` stdout holds only that document (parsable); the
lines about files written go to stderr.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from nfvi.errors import ConfigError
from nfvi.report.aggregate import (
    Group,
    Report,
    build_report,
    format_value,
    key_title,
    run_label,
)
from nfvi.report.collect import find_runs

FORMATS = ("table", "csv", "markdown", "json")
TASK_TITLES = {
    "vae": "VAE runs (nats per example)",
    "energy": "energy runs (KL and ln Z in nats)",
}


# -- numbers ----------------------------------------------------------------------------------
def _num(x: float, digits: int) -> str:
    if x != x:
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}f}"


def _cell(g: Group, metric: str) -> str:
    """``mean ± std`` (both with the mean's decimals: 2 from 10 up, else 4); the mean alone
    for n = 1."""
    s = g.stats.get(metric)
    if s is None or s.n == 0:
        return "-"
    digits = 2 if math.isfinite(s.mean) and abs(s.mean) >= 10 else 4
    text = _num(s.mean, digits)
    if s.std == s.std:
        text += f" ± {_num(s.std, digits)}"
    if s.n != g.n:
        text += f" (n={s.n})"
    return text


def _plain(v: Any) -> Any:
    """JSON-safe: tuples -> lists, NaN/inf -> None."""
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _csv_value(v: Any) -> str:
    return "" if v is None else format_value(v)


def _csv_num(x: float) -> str:
    return "" if x != x else repr(float(x))


# -- documents --------------------------------------------------------------------------------
def _all_keys(report: Report) -> list[str]:
    keys: list[str] = []
    for task in report.by:
        for k in report.by[task]:
            if k not in keys:
                keys.append(k)
    return keys


def _all_metrics(report: Report) -> list[str]:
    out: list[str] = []
    for task in report.by:
        out.extend(m for m, _ in report.metrics(task) if m not in out)
    return out


def to_csv(report: Report) -> str:
    keys, metrics = _all_keys(report), _all_metrics(report)
    header = ["task", "status", *keys, "n"]
    for m in metrics:
        header += [f"{m}_mean", f"{m}_std", f"{m}_n"]
    header += ["seeds", "runs"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for g in report.groups:
        row = [g.task, "finished", *(_csv_value(g.value(k)) for k in keys), g.n]
        for m in metrics:
            s = g.stats.get(m)
            row += ["", "", ""] if s is None else [_csv_num(s.mean), _csv_num(s.std), s.n]
        row += [";".join(_csv_value(s) for s in g.seeds), ";".join(r.name for r in g.runs)]
        w.writerow(row)
    for r in report.incomplete:
        mine = report.by.get(r.task, [])
        row = [r.task, r.status, *(_csv_value(r.config.get(k)) if k in mine else ""
                                   for k in keys), 0]
        row += ["", "", ""] * len(metrics)
        row += [_csv_value(r.config.get("seed")), r.name]
        w.writerow(row)
    return buf.getvalue()


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def to_markdown(report: Report, paths: list[str], figures: list[Path]) -> str:
    n_fin = sum(g.n for g in report.groups)
    lines = [
        "# nfvi report",
        "",
        f"{len(report.runs)} runs below {', '.join(f'`{p}`' for p in paths)}: {n_fin} finished "
        f"in {len(report.groups)} groups, {len(report.incomplete)} unfinished or failed.",
        "Cells are mean ± sample std over the runs (seeds) of a group; a single run shows its "
        "value alone.",
    ]
    n_eval = sum(r.evaluation is not None for r in report.runs)
    if n_eval:
        lines.append(f"Test results of {n_eval} runs are their newest `nfvi eval` of the test "
                     "split (`--eval`), not the evaluation at the end of training.")
    for task in report.tasks():
        keys = report.by[task]
        metrics = report.metrics(task)
        lines += ["", f"## {TASK_TITLES.get(task, task)}", ""]
        head = [key_title(k) for k in keys] + ["n"] + [title for _, title in metrics]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---" if i < len(keys) else "---:"
                                    for i in range(len(head))) + "|")
        for g in report.groups_of(task):
            cells = [format_value(v) for _, v in g.keys] + [str(g.n)]
            cells += [_cell(g, m) for m, _ in metrics]
            lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    lines += ["", "## Unfinished or failed runs", ""]
    if report.incomplete:
        for r in report.incomplete:
            lines.append(f"- `{r.name}`: {r.status} ({run_label(r, report)})")
    else:
        lines.append("none")
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{f.stem}]({f.name})" for f in figures]
    lines += ["", "## Runs per group", ""]
    for g in report.groups:
        lines.append(f"- {g.task} {g.label}: " + ", ".join(f"`{r.name}`" for r in g.runs))
    return "\n".join(lines) + "\n"


def to_json(report: Report, paths: list[str], files: list[Path]) -> str:
    doc = {
        "paths": paths,
        "group_keys": report.by,
        "groups": [
            {
                "task": g.task,
                "label": g.label,
                "keys": {k: _plain(v) for k, v in g.keys},
                "n": g.n,
                "seeds": _plain(g.seeds),
                "runs": [r.name for r in g.runs],
                "metrics": {m: {"mean": _plain(s.mean), "std": _plain(s.std), "n": s.n}
                            for m, s in g.stats.items()},
            }
            for g in report.groups
        ],
        "incomplete": [
            {"name": r.name, "path": str(r.path), "task": r.task, "status": r.status,
             "last_step": r.last_step, "label": run_label(r, report)}
            for r in report.incomplete
        ],
        "notes": report.notes,
        "files": [str(f) for f in files],
    }
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def _print_table(report: Report, paths: list[str], files: list[Path]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    width = None if sys.stdout.isatty() else 160
    console = Console(file=sys.stdout, highlight=False, width=width)
    n_fin = sum(g.n for g in report.groups)
    console.print(f"{len(report.runs)} runs below {', '.join(paths)}: {n_fin} finished in "
                  f"{len(report.groups)} groups, {len(report.incomplete)} unfinished or failed; "
                  "cells: mean ± sample std over seeds",
                  markup=False, soft_wrap=True)
    for task in report.tasks():
        metrics = report.metrics(task)
        table = Table(title=TASK_TITLES.get(task, task))
        for k in report.by[task]:
            numeric = all(_is_number(g.value(k)) for g in report.groups_of(task))
            table.add_column(key_title(k), justify="right" if numeric else "left")
        table.add_column("n", justify="right")
        for _, title in metrics:
            table.add_column(title, justify="right")
        for g in report.groups_of(task):
            cells = [format_value(v) for _, v in g.keys] + [str(g.n)]
            cells += [_cell(g, m) for m, _ in metrics]
            table.add_row(*(Text(c) for c in cells))
        console.print(table)
    if report.incomplete:
        console.print(f"unfinished or failed runs ({len(report.incomplete)}):", style="bold red")
        for r in report.incomplete:
            console.print(f"  {r.name}: {r.status} ({run_label(r, report)})", markup=False,
                          soft_wrap=True)
    for n in report.notes:
        console.print(f"note: {n}", markup=False, soft_wrap=True)
    console.print("wrote " + ", ".join(str(f) for f in files), markup=False, soft_wrap=True)


# -- the command ------------------------------------------------------------------------------
def _out_dir(paths: list[str], out_dir: str | None) -> Path:
    if out_dir:
        out = Path(out_dir).expanduser()
    else:
        out = Path(paths[0]).expanduser()
        if out.is_file():
            out = out.parent
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {out} is a file; pass -o DIR with a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the output folder {out} ({e.strerror}); "
                          "pass -o DIR with a writable folder") from None
    return out


def report(paths: list[str], by: list[str] | None, fmt: str, out_dir: str | None,
           evaluations: bool = False) -> int:
    """Run ``nfvi report``; returns the exit code (0). Bad input raises :class:`ConfigError`.
    ``evaluations``: each run's newest ``nfvi eval`` of the test split replaces its
    training-time test results (``nfvi report --eval``)."""
    from nfvi.report.figures import draw_all
    from nfvi.rundir import atomic_write_text

    fmt = (fmt or "table").strip().lower()
    fmt = {"md": "markdown"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; use one of {', '.join(FORMATS)}")
    paths = [str(p) for p in paths]
    runs = find_runs(paths, evaluations)
    if not runs:
        raise ConfigError(f"no runs found below {', '.join(paths)}; a run directory holds a "
                          ".nfvi-run file: pass outputs/ or a run directory")
    rep = build_report(runs, by)
    out = _out_dir(paths, out_dir)

    figures = draw_all(rep, out)
    csv_text = to_csv(rep)
    md_text = to_markdown(rep, paths, figures)
    atomic_write_text(out / "report.csv", csv_text)
    atomic_write_text(out / "report.md", md_text)
    files = [out / "report.csv", out / "report.md", *figures]

    if fmt == "table":
        _print_table(rep, paths, files)
        return 0
    text = {"csv": csv_text, "markdown": md_text,
            "json": to_json(rep, paths, files)}[fmt]
    sys.stdout.write(text)
    sys.stdout.flush()
    for r in rep.incomplete:
        print(f"unfinished or failed: {r.name}: {r.status}", file=sys.stderr)
    print("wrote " + ", ".join(str(f) for f in files), file=sys.stderr)
    return 0
