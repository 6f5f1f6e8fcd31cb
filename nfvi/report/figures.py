"""The report's figures, drawn with matplotlib's object API (Agg; no pyplot, no global backend)
and written atomically. matplotlib is imported inside the functions: importing this module is
cheap.

* ``nll_vs_K.png``: test NLL, test -ELBO and their gap against K, one line per flow (and per
  other group key), mean +- sample std over seeds (R&M 2015, Figure 4).
* ``learning_curves.png``: validation -ELBO against the step, one line per group (mean over
  seeds, band +- std), overlaid.
* ``energy_grid.png``: each energy run's ``density.png`` (true density | q_K), rows
  ``flow / target``, columns K (R&M 2015, Figure 3).
* ``kl_vs_K.png``: KL(q || p) against K, one panel per target, one line per flow (Figure 3d).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from nfvi.report.aggregate import (
    Report,
    format_value,
    group_label,
    metric_values,
    partition,
    sort_value,
    stat,
)
from nfvi.report.collect import Run
from nfvi.rundir import atomic_write_bytes


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _lines(runs: list[Run], keys: list[str], x: str = "K") -> dict[tuple, dict[Any, list[Run]]]:
    """``{line key values: {x value: runs}}`` with ``x`` taken out of ``keys``."""
    line_keys = [k for k in keys if k != x]
    out: dict[tuple, dict[Any, list[Run]]] = {}
    for values, members in partition(runs, line_keys).items():
        out[values] = partition(members, [x])
    return {
        k: {xv[0]: rs for xv, rs in sorted(v.items(), key=lambda kv: sort_value(kv[0][0]))}
        for k, v in sorted(out.items(), key=lambda kv: tuple(sort_value(x) for x in kv[0]))
    }


def _errorbar_panel(ax, runs: list[Run], keys: list[str], metric: str, ylabel: str,
                    x: str = "K") -> None:
    line_keys = [k for k in keys if k != x]
    for values, by_x in _lines(runs, keys, x).items():
        xs, ys, es = [], [], []
        for xv, members in by_x.items():
            s = stat(metric_values(members, metric))
            if s.n == 0 or not isinstance(xv, int | float):
                continue
            xs.append(xv)
            ys.append(s.mean)
            es.append(0.0 if s.std != s.std else s.std)  # NaN (n = 1): no bar
        if xs:
            label = group_label(zip(line_keys, values, strict=True))
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def nll_figure(report: Report):
    """Figure 4 of Rezende & Mohamed as three panels against K, mean ± std over seeds: test
    NLL, test -ELBO (the bound) and the gap -ELBO - NLL; ``None`` without VAE runs."""
    runs = [r for g in report.groups_of("vae") for r in g.runs]
    if not runs:
        return None
    keys = report.by["vae"]
    fig = _figure(15, 4.2)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    _errorbar_panel(ax1, runs, keys, "test_nll", "test NLL (nats)")
    _errorbar_panel(ax2, runs, keys, "test_neg_elbo", "test -ELBO (nats)")
    _errorbar_panel(ax3, runs, keys, "test_gap", "test -ELBO - NLL (nats)")
    ax1.set_title("test NLL vs flow length")
    ax2.set_title("test -ELBO vs flow length")
    ax3.set_title("gap -ELBO - NLL vs flow length")
    fig.suptitle("mean ± std over seeds")
    return fig


def nll_vs_k(report: Report, out_dir: Path) -> Path | None:
    fig = nll_figure(report)
    if fig is None:
        return None
    return _save(fig, out_dir / "nll_vs_K.png")


def learning_curves(report: Report, out_dir: Path) -> Path | None:
    groups = [g for g in report.groups_of("vae") if any(r.curve("val") for r in g.runs)]
    if not groups:
        return None
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(groups) <= 10 else "tab20"]
    fig = _figure(8, 5)
    ax = fig.subplots()
    for i, g in enumerate(groups):
        at: dict[int, list[float]] = {}
        for r in g.runs:
            for step, v in r.curve("val"):
                at.setdefault(step, []).append(v)
        steps = sorted(at)
        stats = [stat(at[s]) for s in steps]
        means = [s.mean for s in stats]
        color = cmap(i % cmap.N)
        ax.plot(steps, means, marker=".", color=color, label=f"{g.label} (n={g.n})")
        if any(s.n > 1 for s in stats):
            sd = [0.0 if s.std != s.std else s.std for s in stats]
            ax.fill_between(steps, [m - d for m, d in zip(means, sd, strict=True)],
                            [m + d for m, d in zip(means, sd, strict=True)], color=color,
                            alpha=0.15, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel("validation -ELBO (nats)")
    ax.set_title("learning curves (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(groups) > 8 else 1)
    return _save(fig, out_dir / "learning_curves.png")


def energy_grid(report: Report, out_dir: Path) -> Path | None:
    runs = [r for g in report.groups_of("energy") for r in g.runs
            if (r.path / "density.png").is_file()]
    if not runs:
        return None
    from matplotlib.image import imread

    keys = report.by["energy"]
    rows = _lines(runs, keys)
    ks = sorted({r.config.get("K") for r in runs}, key=sort_value)
    line_keys = [k for k in keys if k != "K"]
    fig = _figure(5.0 * len(ks) + 0.4, 2.7 * len(rows) + 0.5)
    axes = fig.subplots(len(rows), len(ks), squeeze=False)
    for i, (values, by_k) in enumerate(rows.items()):
        for j, k in enumerate(ks):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            members = by_k.get(k, [])
            if j == 0:
                ax.set_ylabel(" / ".join(format_value(v) for v in values), fontsize=10)
            if i == 0:
                ax.set_title(f"K={format_value(k)}", fontsize=11)
            if not members:
                ax.text(0.5, 0.5, "no run", ha="center", va="center", transform=ax.transAxes)
                continue
            run = members[0]  # the lowest seed
            try:
                ax.imshow(imread(run.path / "density.png"))
            except (OSError, ValueError, SyntaxError):
                ax.text(0.5, 0.5, "unreadable density.png", ha="center", va="center",
                        transform=ax.transAxes, fontsize=7)
            for side in ax.spines.values():
                side.set_visible(False)
    fig.suptitle("energy runs: true density | q_K  (rows: " +
                 " / ".join(k.removesuffix(".name") for k in line_keys) + ")", fontsize=11)
    return _save(fig, out_dir / "energy_grid.png")


def kl_vs_k(report: Report, out_dir: Path) -> Path | None:
    runs = [r for g in report.groups_of("energy") for r in g.runs]
    if not runs:
        return None
    keys = report.by["energy"]
    panel_key = "target.name" if "target.name" in keys else None
    panels = partition(runs, [panel_key]) if panel_key else {(None,): runs}
    order = sorted(panels, key=lambda v: sort_value(v[0]))
    fig = _figure(4.5 * len(order), 4)
    axes = fig.subplots(1, len(order), squeeze=False)[0]
    for ax, pv in zip(axes, order, strict=True):
        _errorbar_panel(ax, panels[pv], [k for k in keys if k != panel_key], "kl",
                        "KL(q_K || p) (nats)")
        ax.set_title(f"target {format_value(pv[0])}" if panel_key else "KL vs flow length")
    fig.suptitle("KL vs flow length, mean ± std over seeds")
    return _save(fig, out_dir / "kl_vs_K.png")


def draw_all(report: Report, out_dir: Path) -> list[Path]:
    """Every figure the report's runs allow; returns the files written."""
    out = []
    for draw in (nll_vs_k, learning_curves, energy_grid, kl_vs_k):
        path = draw(report, out_dir)
        if path is not None:
            out.append(path)
    return out
