"""The 2D energy task (Rezende & Mohamed 2015, section 6.1).

``from nfvi.energy import TARGETS``; ``TARGETS["u1"](z [B, 2]) -> U [B]`` with ``p ∝ exp(-U)``.
U2-U4 include a Gaussian envelope ``z1^2 / (2 s^2)`` (default ``s = 4``); see
:mod:`nfvi.energy.targets`. The ``task=energy`` task itself is :mod:`nfvi.energy.run`, not
imported here, so that importing the targets does not pull in matplotlib or the loop.
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
    "u1_raw",
    "u2_raw",
    "u3_raw",
    "u4_raw",
    "w1",
    "w2",
    "w3",
]
