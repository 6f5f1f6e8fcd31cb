"""Group finished runs by the config values that differ, and aggregate their summaries.

Grouping rule (per task, ``vae`` and ``energy`` separately, finished runs only):

* Per-run noise never groups: :data:`NOISE_KEYS` (``seed`` first of all: seeds are what a group
  aggregates over; also where outputs and data live, the device, thread counts, labels such as
  ``name``) and everything under ``hydra.``.
* The task's primary keys always label a group: ``flow.name, K`` (VAE) and
  ``target.name, flow.name, K`` (energy). A constant key does not change the grouping, it only
  shows in the table.
* Every other key whose value differs between runs joins them, unless it is implied by the keys
  already chosen (``optim=rmsprop`` changes ``optim.name``, ``optim.lr`` and
  ``optim.momentum`` together: only ``optim.name`` is shown). ``*.name`` keys are tried first,
  then the rest in alphabetical order.
* ``--by`` replaces all of that with exactly the keys given. Keys still varying inside a group
  (and a seed seen twice in a group) are reported as notes, never merged silently.

Statistics over the runs of a group: mean, sample standard deviation (``n - 1`` in the
denominator; **NaN when n = 1**) and n, per metric, over the runs whose summary has it.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nfvi.errors import ConfigError
from nfvi.report.collect import Run

NOISE_KEYS = frozenset({
    "seed", "output_root", "resume", "checkpoint", "name", "device",
    "dataset.source", "dataset.data_dir", "dataset.download",
    "trainer.num_threads", "trainer.progress", "eval.chunk",
})
NOISE_PREFIXES = ("hydra.",)

PRIMARY_KEYS = {"vae": ("flow.name", "K"), "energy": ("target.name", "flow.name", "K")}

#: (summary key, column title) per task
METRICS = {
    "vae": (
        ("test_nll", "test NLL"),
        ("test_neg_elbo", "test -ELBO"),
        ("test_gap", "gap -ELBO - NLL"),
        ("test_nll_bpd", "test NLL bits/dim"),
        ("test_neg_elbo_bpd", "test -ELBO bits/dim"),
        ("paired_d_nll", "NLL - NLL(K=0), paired ± se"),
        ("paired_d_gap", "gap - gap(K=0), paired ± se"),
        ("val_neg_elbo", "val -ELBO"),
        ("wall_seconds", "wall s"),
    ),
    "energy": (
        ("kl", "KL"),
        ("ess_percent", "ESS %"),
        ("log_z", "ln Z"),
        ("wall_seconds", "wall s"),
    ),
}
#: columns shown only when a run has them (bits/dim: 8-bit data only)
OPTIONAL_METRICS = frozenset({"test_nll_bpd", "test_neg_elbo_bpd"})
TASK_ORDER = ("vae", "energy")

#: short names accepted by ``--by``
ALIASES = {"flow": "flow.name", "target": "target.name", "dataset": "dataset.name",
           "optim": "optim.name", "model": "model.name", "amortized": "flow.amortized",
           "data": "dataset.resolved_source"}


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # sample std (ddof=1); NaN when n == 1
    n: int
    values: tuple[float, ...] = ()


@dataclass
class Group:
    task: str
    keys: tuple[tuple[str, Any], ...]
    runs: list[Run]
    stats: dict[str, Stat] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.runs)

    def value(self, key: str) -> Any:
        return dict(self.keys).get(key)

    @property
    def label(self) -> str:
        return group_label(self.keys)

    @property
    def seeds(self) -> list[Any]:
        return [r.config.get("seed", (r.summary or {}).get("seed")) for r in self.runs]


@dataclass
class Report:
    runs: list[Run]
    groups: list[Group]
    by: dict[str, list[str]]  # task -> group keys
    incomplete: list[Run]
    notes: list[str] = field(default_factory=list)

    def tasks(self) -> list[str]:
        present = {g.task for g in self.groups}
        return [t for t in TASK_ORDER if t in present] + sorted(present - set(TASK_ORDER))

    def groups_of(self, task: str) -> list[Group]:
        return [g for g in self.groups if g.task == task]

    def metrics(self, task: str) -> tuple[tuple[str, str], ...]:
        """The (key, title) columns of ``task``: an optional one only when a group has it."""
        groups = self.groups_of(task)
        return tuple((m, title) for m, title in METRICS.get(task, ())
                     if m not in OPTIONAL_METRICS
                     or any(m in g.stats and g.stats[m].n for g in groups))


# -- values ---------------------------------------------------------------------------------
def is_noise(key: str) -> bool:
    return key in NOISE_KEYS or key.startswith(NOISE_PREFIXES)


def key_title(key: str) -> str:
    """``flow.name`` -> ``flow``; other keys unchanged."""
    return key[: -len(".name")] if key.endswith(".name") else key


def format_value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    return str(v)


def group_label(keys: Iterable[tuple[str, Any]]) -> str:
    return " ".join(f"{key_title(k)}={format_value(v)}" for k, v in keys) or "all runs"


def sort_value(v: Any) -> tuple:
    if v is None:
        return (2, "")
    if isinstance(v, int | float) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, format_value(v))


def stat(values: Iterable[float]) -> Stat:
    xs = tuple(float(x) for x in values)
    n = len(xs)
    if n == 0:
        return Stat(math.nan, math.nan, 0, xs)
    mean = math.fsum(xs) / n
    if n == 1 or not math.isfinite(mean):
        return Stat(mean, math.nan, n, xs)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    return Stat(mean, std, n, xs)


def metric_values(runs: Iterable[Run], key: str) -> list[float]:
    out = []
    for r in runs:
        s = r.summary or {}
        v = s.get(key)
        if v is None and key.endswith("_gap"):  # summaries of older runs: derive it
            split = key[: -len("_gap")]
            elbo, nll = s.get(f"{split}_neg_elbo"), s.get(f"{split}_nll")
            v = elbo - nll if isinstance(elbo, float) and isinstance(nll, float) else None
        if isinstance(v, int | float) and not isinstance(v, bool):
            out.append(float(v))
    return out


# -- grouping -------------------------------------------------------------------------------
def partition(runs: list[Run], keys: list[str]) -> dict[tuple, list[Run]]:
    parts: dict[tuple, list[Run]] = {}
    for r in runs:
        parts.setdefault(tuple(r.config.get(k) for k in keys), []).append(r)
    return parts


def differing_keys(runs: list[Run]) -> list[str]:
    """Non-noise keys with more than one value among the runs that have them (a run without a
    config file only knows the keys its summary holds: a key it lacks is unknown, not a
    difference)."""
    all_keys = set().union(*(r.config for r in runs)) if runs else set()
    out = []
    for k in all_keys:
        if is_noise(k):
            continue
        if len({r.config[k] for r in runs if k in r.config}) > 1:
            out.append(k)
    return sorted(out, key=lambda k: (not k.endswith(".name"), k))


def auto_keys(task: str, runs: list[Run]) -> list[str]:
    """The group keys of one task's runs (see the module docstring)."""
    keys = list(PRIMARY_KEYS.get(task, ("flow.name", "K")))
    n_parts = len(partition(runs, keys))
    for k in differing_keys(runs):
        if k in keys:
            continue
        n = len(partition(runs, [*keys, k]))
        if n > n_parts:
            keys.append(k)
            n_parts = n
    return keys


def resolve_by(by: list[str], runs: list[Run]) -> list[str]:
    """The user's ``--by`` keys as flat config keys (aliases and unique suffixes allowed)."""
    known = set().union(*(r.config for r in runs)) if runs else set()
    out: list[str] = []
    for raw in by:
        k = raw.strip()
        if not k:
            continue
        if k in known:
            key = k
        elif ALIASES.get(k) in known:
            key = ALIASES[k]
        elif f"{k}.name" in known:
            key = f"{k}.name"
        else:
            matches = sorted(c for c in known if c.endswith("." + k))
            if len(matches) == 1:
                key = matches[0]
            elif matches:
                raise ConfigError(f"--by key {k!r} is ambiguous ({', '.join(matches)}); "
                                  "give the full dotted key")
            else:
                close = difflib.get_close_matches(k, sorted(known), n=3)
                hint = f"did you mean {', '.join(close)}?" if close else \
                    "use config keys such as K, flow, optim.lr, model.latent_dim"
                raise ConfigError(f"unknown --by key {k!r}, no run has it in its config; {hint}")
        if key not in out:
            out.append(key)
    if not out:
        raise ConfigError("--by is empty; give comma-separated config keys, e.g. --by K,flow")
    return out


def build_report(runs: list[Run], by: list[str] | None = None) -> Report:
    """Group the finished runs, aggregate their metrics, list the others."""
    finished = [r for r in runs if r.finished]
    incomplete = [r for r in runs if not r.finished]
    user_keys = resolve_by(by, runs) if by is not None else None
    report = Report(runs=runs, groups=[], by={}, incomplete=incomplete)
    tasks = {r.task for r in runs}
    for task in [t for t in TASK_ORDER if t in tasks] + sorted(tasks - set(TASK_ORDER)):
        mine = [r for r in finished if r.task == task]
        keys = user_keys or auto_keys(task, mine)
        report.by[task] = keys
        parts = partition(mine, keys)
        for values in sorted(parts, key=lambda vs: tuple(sort_value(v) for v in vs)):
            members = sorted(parts[values], key=lambda r: (sort_value(r.config.get("seed")),
                                                           r.name))
            g = Group(task=task, keys=tuple(zip(keys, values, strict=True)), runs=members)
            for metric, _ in METRICS.get(task, ()):
                g.stats[metric] = stat(metric_values(members, metric))
            report.groups.append(g)
            report.notes.extend(_group_notes(g))
        report.notes.extend(_same_model_notes(report.groups_of(task)))
    report.notes.extend(_paired_to_k0(report.groups_of("vae")))
    return report


#: metrics computed from the runs' per-point values, not read from their summaries
PAIRED = ("paired_d_nll", "paired_d_gap")


def _paired_to_k0(groups: list[Group]) -> list[str]:
    """Fill ``paired_d_nll`` and ``paired_d_gap`` of every K > 0 group that has a K = 0 group
    with the same other keys (flow.* aside): per test point, the difference to the K = 0 run of
    the same seed (same test bits), averaged over the seeds both have; mean over points and its
    standard error (``std / sqrt(points)``). Returns notes on what could not be paired."""
    notes = []
    base = {_rest(g): g for g in groups if {r.config.get("K") for r in g.runs} == {0}}
    for g in groups:
        ref = base.get(_rest(g))
        if ref is None or ref is g:
            continue
        d_nll, d_gap, seeds = _paired_differences(g, ref)
        if d_nll is None:
            notes.append(f"vae {g.label}: no per-point results of the same seeds at K=0 to "
                         "pair with (runs of an older nfvi, or other seeds)")
            continue
        g.stats["paired_d_nll"] = _mean_se(d_nll, seeds)
        g.stats["paired_d_gap"] = _mean_se(d_gap, seeds)
    return notes


def _rest(g: Group) -> tuple:
    return tuple((k, v) for k, v in g.keys if k != "K" and not k.startswith("flow."))


def _paired_differences(g: Group, ref: Group) -> tuple[list[float] | None,
                                                      list[float] | None, int]:
    """Per point, seed-averaged ``nll - nll_ref`` and ``gap - gap_ref``; the seeds paired."""
    ref_by_seed = {r.config.get("seed"): r for r in ref.runs}
    sums_nll: list[float] | None = None
    sums_gap: list[float] | None = None
    n = 0
    for run in g.runs:
        other = ref_by_seed.get(run.config.get("seed"))
        a, b = run.per_example(), other.per_example() if other else None
        if not a or not b or len(a["nll"]) != len(b["nll"]):
            continue
        nll = [x - y for x, y in zip(a["nll"], b["nll"], strict=True)]
        gap = [(e1 - n1) - (e0 - n0) for e1, n1, e0, n0 in
               zip(a["neg_elbo"], a["nll"], b["neg_elbo"], b["nll"], strict=True)]
        sums_nll = nll if sums_nll is None else [s + v for s, v in zip(sums_nll, nll, strict=True)]
        sums_gap = gap if sums_gap is None else [s + v for s, v in zip(sums_gap, gap, strict=True)]
        n += 1
    if not n:
        return None, None, 0
    return [v / n for v in sums_nll], [v / n for v in sums_gap], n


def _mean_se(values: list[float], seeds: int) -> Stat:
    """Mean and standard error (in ``std``) of per-point differences; ``n`` = seeds paired."""
    m = sum(values) / len(values)
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else math.nan
    return Stat(m, math.sqrt(var / len(values)), seeds, ())


def _same_model_notes(groups: list[Group]) -> list[str]:
    """Groups at K = 0 that differ only in flow.* are one model (there are no flow layers)."""
    by_rest: dict[tuple, list[Group]] = {}
    for g in groups:
        ks = {r.config.get("K") for r in g.runs}
        if ks == {0}:
            rest = tuple((k, v) for k, v in g.keys if not k.startswith("flow."))
            by_rest.setdefault(rest, []).append(g)
    return [f"{same[0].task} groups {' and '.join(g.label for g in same)} are the same model: "
            "with K=0 there are no flow layers, so the flow settings do not change it (train "
            "K=0 once)" for same in by_rest.values() if len(same) > 1]


def _group_notes(g: Group) -> list[str]:
    notes = []
    seeds = [s for s in g.seeds if s is not None]
    dup = sorted({s for s in seeds if seeds.count(s) > 1}, key=sort_value)
    if dup:
        notes.append(f"{g.task} {g.label}: seed {', '.join(map(format_value, dup))} appears "
                     "more than once (the same run repeated?)")
    inner = [k for k in differing_keys(g.runs) if k not in dict(g.keys)]
    for k in inner:
        vals = sorted({r.config[k] for r in g.runs if k in r.config}, key=sort_value)
        shown = ", ".join(format_value(v) for v in vals)
        notes.append(f"{g.task} {g.label}: mixes {key_title(k)} = {shown} (add it to --by to "
                     "split)")
    return notes


def run_label(run: Run, report: Report) -> str:
    """The group label an incomplete run would have."""
    keys = report.by.get(run.task) or list(PRIMARY_KEYS.get(run.task, ("flow.name", "K")))
    return group_label((k, run.config.get(k)) for k in keys)
