"""The annealing schedule of the likelihood term (Rezende & Mohamed 2015, eq. 20)."""

from __future__ import annotations


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
