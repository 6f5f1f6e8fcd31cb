"""The Python API: the CLI's runs from a notebook or a script.

>>> import nfvi
>>> result = nfvi.run("train", ["flow=planar", "K=10", "trainer.max_steps=100"])
>>> result.run_dir, result.summary["test_nll"]

The same configs, overrides, run directories and checks as ``nfvi train`` / ``nfvi eval``;
an error is raised as :class:`nfvi.errors.NfviError` with the CLI's one-line message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunResult:
    """A finished job: its directory and what it wrote to summary.json (or eval.json)."""

    run_dir: Path
    summary: dict


def run(command: str, overrides: Sequence[str] = ()) -> RunResult | list[RunResult]:
    """Run ``nfvi <command> <overrides...>`` in this process.

    ``command`` is ``"train"`` or ``"eval"``; ``overrides`` are the CLI's tokens
    (``"K=10"``, ``"flow=radial"``, ``"checkpoint=RUN_DIR"``, ``"-m"``, ...). Returns the
    job's :class:`RunResult`, or one per job for a multirun (``-m``) in this process.
    """
    from nfvi import jobs
    from nfvi.errors import RAISE, NfviError
    from nfvi.launch import run as launch

    if command not in ("train", "eval"):
        raise NfviError(f"unknown command {command!r}; use 'train' or 'eval'")
    token = RAISE.set(True)
    start = len(jobs.RESULTS)
    try:
        launch(command, list(overrides))
    except SystemExit as e:  # --help or --cfg: Hydra printed and exited
        if e.code not in (0, None):
            raise NfviError(f"nfvi {command} exited with status {e.code}") from None
    finally:
        RAISE.reset(token)
    results = [RunResult(d, s) for d, s in jobs.RESULTS[start:]]
    multirun = "-m" in overrides or "--multirun" in overrides
    if multirun:
        return results
    if not results:
        raise NfviError(f"nfvi {command} ran no job (--help or --cfg only?)")
    return results[-1]
