"""``nfvi report``: tables and figures over many run directories.

:func:`nfvi.report.main.report` is the command; :mod:`~nfvi.report.collect` finds and loads
runs, :mod:`~nfvi.report.aggregate` groups them and aggregates seeds,
:mod:`~nfvi.report.figures` draws. Nothing here imports torch.
"""

from nfvi.report.aggregate import Group, Report, Stat, build_report
from nfvi.report.collect import Run, find_runs, load_run

__all__ = ["Group", "Report", "Run", "Stat", "build_report", "find_runs", "load_run"]
