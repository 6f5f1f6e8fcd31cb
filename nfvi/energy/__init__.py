"""The 2D energy task (Rezende & Mohamed 2015, section 6.1).

``from nfvi.energy import TARGETS``; ``TARGETS["u1"](z [B, 2]) -> U [B]`` with ``p ∝ exp(-U)``.
U2-U4 include a Gaussian envelope ``z1^2 / (2 s^2)`` (default ``s = 4``); see
:mod:`nfvi.energy.targets`. :func:`run_energy` is the ``task=energy`` entry point; it is
imported lazily so that importing the targets does not pull in matplotlib or the runner.
"""

from nfvi.energy.evaluate import (
    KLEstimate,
    LogZ,
    estimate_kl,
    log_partition,
    log_partition_importance,
)
from nfvi.energy.model import EnergyLoss, EnergyModel, FlowSample
from nfvi.energy.targets import (
    DEFAULT_ENVELOPE_STD,
    TARGETS,
    EnergyTarget,
    envelope,
    get_target,
    u1_raw,
    u2_raw,
    u3_raw,
    u4_raw,
    w1,
    w2,
    w3,
)


def run_energy(cfg, run_dir, device, console):
    """See :func:`nfvi.energy.run.run_energy`."""
    from nfvi.energy.run import run_energy as _run

    return _run(cfg, run_dir, device, console)


__all__ = [
    "DEFAULT_ENVELOPE_STD",
    "TARGETS",
    "EnergyLoss",
    "EnergyModel",
    "EnergyTarget",
    "FlowSample",
    "KLEstimate",
    "LogZ",
    "envelope",
    "estimate_kl",
    "get_target",
    "log_partition",
    "log_partition_importance",
    "run_energy",
    "u1_raw",
    "u2_raw",
    "u3_raw",
    "u4_raw",
    "w1",
    "w2",
    "w3",
]
