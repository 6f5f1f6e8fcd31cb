"""The annealing schedule of the likelihood term (Rezende & Mohamed 2015, eq. 20) and the
learning-rate schedule."""

from __future__ import annotations

import math


def beta_at(step: int, schedule: str, start: float = 0.01, steps: int = 10000) -> float:
    """Inverse temperature beta_t at parameter update ``step`` (t, counted from 0).

    * ``paper``: ``min(1, start + t / steps)`` (the paper: start 0.01, steps 10,000);
    * ``linear``: ``min(1, t / steps)`` (KL warm-up from zero);
    * ``none``: 1.
    """
    schedule = str(schedule)
    if schedule == "none":
        return 1.0
    if schedule == "paper":
        return min(1.0, start + step / steps)
    if schedule == "linear":
        return min(1.0, step / steps)
    raise ValueError(f"unknown beta schedule {schedule!r}; use paper, linear or none")


def annealing_done(step: int, schedule: str, start: float = 0.01, steps: int = 10000) -> bool:
    return beta_at(step, schedule, start, steps) >= 1.0


def lr_factor(step: int, schedule: str, total: int, final: float = 0.0) -> float:
    """Multiplier of ``optim.lr`` at update ``step`` of ``total``.

    * ``constant``: 1;
    * ``cosine``: ``final + (1 - final) (1 + cos(pi t / total)) / 2``, from 1 at ``t = 0`` to
      ``final`` at ``t = total`` (Loshchilov & Hutter 2017, without restarts).
    """
    schedule = str(schedule)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        t = min(max(step, 0), total) / max(total, 1)
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; use constant or cosine")
