"""The 2D target energies U1-U4 of Rezende & Mohamed 2015, section 6.1: ``p(z) ∝ exp(-U(z))``.

With ``z = (z1, z2)``::

    w1(z) = sin(2 pi z1 / 4)
    w2(z) = 3 exp(-1/2 ((z1 - 1) / 0.6)^2)
    w3(z) = 3 sigmoid((z1 - 1) / 0.3)        # 0.3, not 3 (a common published bug)

    U1(z) = 1/2 ((||z|| - 2) / 0.4)^2
            - ln( exp(-1/2 ((z1 - 2)/0.6)^2) + exp(-1/2 ((z1 + 2)/0.6)^2) )
    U2(z) = 1/2 ((z2 - w1) / 0.4)^2
    U3(z) = -ln( exp(-1/2 ((z2 - w1)/0.35)^2) + exp(-1/2 ((z2 - w1 + w2)/0.35)^2) )
    U4(z) = -ln( exp(-1/2 ((z2 - w1)/0.4)^2)  + exp(-1/2 ((z2 - w1 + w3)/0.35)^2) )

``-ln(exp(a) + exp(b))`` is computed as ``-logaddexp(a, b)`` and the sigmoid by
``torch.sigmoid``, so every energy is finite for every finite ``z``.

**Envelope.** U2, U3 and U4 do not constrain ``z1``: ``exp(-U)`` is not integrable over R^2.
Each of them therefore carries a broad Gaussian envelope on ``z1``, which is *part of U*::

    U_k(z) = U_k^paper(z) + z1^2 / (2 s^2),    s = envelope_std (default 4.0, the config's
                                                 ``target.envelope_std``)

i.e. ``p_k(z) ∝ exp(-U_k^paper(z)) N(z1; 0, s^2)``. U1 is already normalizable and gets no
envelope. The envelope leaves the conditional ``p(z2 | z1)`` exactly as in the paper, so for
U2-U4 the normalizer even has a closed form (:meth:`EnergyTarget.log_z_closed_form`), which is
used to check the quadrature in :mod:`nfvi.energy.evaluate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

#: default standard deviation of the Gaussian envelope on z1 for U2-U4
DEFAULT_ENVELOPE_STD = 4.0


def _check(z: Tensor) -> None:
    if z.dim() != 2 or z.shape[-1] != 2:
        raise ValueError(f"the 2D energies take z of shape [B, 2], got {tuple(z.shape)}")


def w1(z: Tensor) -> Tensor:
    """``sin(2 pi z1 / 4)``, shape ``[B]``."""
    return torch.sin(2.0 * math.pi * z[:, 0] / 4.0)


def w2(z: Tensor) -> Tensor:
    """``3 exp(-1/2 ((z1 - 1) / 0.6)^2)``, shape ``[B]``."""
    return 3.0 * torch.exp(-0.5 * ((z[:, 0] - 1.0) / 0.6) ** 2)


def w3(z: Tensor) -> Tensor:
    """``3 sigmoid((z1 - 1) / 0.3)``, shape ``[B]``."""
    return 3.0 * torch.sigmoid((z[:, 0] - 1.0) / 0.3)


def u1_raw(z: Tensor) -> Tensor:
    """The paper's U1 (a ring with two lobes); normalizable as is."""
    _check(z)
    r = z.norm(dim=-1)
    z1 = z[:, 0]
    ring = 0.5 * ((r - 2.0) / 0.4) ** 2
    lobes = torch.logaddexp(-0.5 * ((z1 - 2.0) / 0.6) ** 2, -0.5 * ((z1 + 2.0) / 0.6) ** 2)
    return ring - lobes


def u2_raw(z: Tensor) -> Tensor:
    """The paper's U2 (a sine wave), *without* the envelope."""
    _check(z)
    return 0.5 * ((z[:, 1] - w1(z)) / 0.4) ** 2


def u3_raw(z: Tensor) -> Tensor:
    """The paper's U3 (a sine wave splitting in two), *without* the envelope."""
    _check(z)
    d = z[:, 1] - w1(z)
    return -torch.logaddexp(-0.5 * (d / 0.35) ** 2, -0.5 * ((d + w2(z)) / 0.35) ** 2)


def u4_raw(z: Tensor) -> Tensor:
    """The paper's U4 (a sine wave and a step), *without* the envelope."""
    _check(z)
    d = z[:, 1] - w1(z)
    return -torch.logaddexp(-0.5 * (d / 0.4) ** 2, -0.5 * ((d + w3(z)) / 0.35) ** 2)


def envelope(z: Tensor, std: float) -> Tensor:
    """The envelope energy ``z1^2 / (2 std^2)``, shape ``[B]``."""
    return 0.5 * (z[:, 0] / std) ** 2


# For U2-U4, integrating exp(-U_raw) over z2 gives a constant (a sum of Gaussian integrals
# sigma sqrt(2 pi)), whatever z1 is; the envelope integrates to std sqrt(2 pi).
_Z2_INTEGRAL = {
    "u2": 0.4 * math.sqrt(2 * math.pi),
    "u3": 2 * 0.35 * math.sqrt(2 * math.pi),
    "u4": (0.4 + 0.35) * math.sqrt(2 * math.pi),
}

_RAW: dict[str, Callable[[Tensor], Tensor]] = {
    "u1": u1_raw,
    "u2": u2_raw,
    "u3": u3_raw,
    "u4": u4_raw,
}


@dataclass(frozen=True)
class EnergyTarget:
    """A proper 2D target: ``U(z) = U_raw(z) [+ z1^2 / (2 envelope_std^2)]``.

    Calling it on ``z [B, 2]`` returns ``U(z)`` of shape ``[B]`` (``p ∝ exp(-U)``), in the
    dtype and on the device of ``z``. ``envelope_std`` is ``None`` for U1 (no envelope).
    """

    name: str
    envelope_std: float | None

    def __call__(self, z: Tensor) -> Tensor:
        u = _RAW[self.name](z)
        if self.envelope_std is not None:
            u = u + envelope(z, self.envelope_std)
        return u

    def with_envelope(self, std: float) -> EnergyTarget:
        """The same target with another envelope width (U1: unchanged, it has none)."""
        if self.envelope_std is None:
            return self
        if not (std > 0 and math.isfinite(std)):
            raise ValueError(f"envelope_std must be positive and finite, got {std}")
        return EnergyTarget(self.name, float(std))

    def quadrature_box(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """A box outside which ``exp(-U)`` carries less than ~1e-15 of the mass.

        U1: ``(-6, 6)^2`` (the ring ``||z|| = 2``, width 0.4, is 10 widths inside). U2-U4:
        ``z1`` within ``± max(6, 9 s)`` (9 sigma of the envelope), ``z2`` within ``(-9, 7)``:
        the wave centres ``w1`` and ``w1 - w2`` / ``w1 - w3`` lie in ``[-4, 1]``, so the
        bounds are at least 12 widths (0.4) away.
        """
        if self.envelope_std is None:
            return (-6.0, 6.0), (-6.0, 6.0)
        half = max(6.0, 9.0 * self.envelope_std)
        return (-half, half), (-9.0, 7.0)

    def log_z_closed_form(self) -> float | None:
        """``ln ∫ exp(-U)`` in closed form where there is one (U2-U4), else ``None``.

        ``∫ exp(-U_raw(z1, z2)) dz2`` does not depend on ``z1`` for U2-U4 (a sum of Gaussian
        integrals), so ``Z = [sum_j sigma_j sqrt(2 pi)] * s sqrt(2 pi)``.
        """
        if self.envelope_std is None:
            return None
        return math.log(_Z2_INTEGRAL[self.name]) + math.log(
            self.envelope_std * math.sqrt(2 * math.pi)
        )


#: name -> target with the default envelope: ``TARGETS["u2"](z) -> U [B]``
TARGETS: dict[str, EnergyTarget] = {
    "u1": EnergyTarget("u1", None),
    "u2": EnergyTarget("u2", DEFAULT_ENVELOPE_STD),
    "u3": EnergyTarget("u3", DEFAULT_ENVELOPE_STD),
    "u4": EnergyTarget("u4", DEFAULT_ENVELOPE_STD),
}


def get_target(name: str, envelope_std: float = DEFAULT_ENVELOPE_STD) -> EnergyTarget:
    """The target ``name`` (``u1``..``u4``) with an envelope of width ``envelope_std``."""
    key = str(name).lower()
    if key not in TARGETS:
        raise KeyError(f"unknown target {name!r}; known targets: {', '.join(sorted(TARGETS))}")
    return TARGETS[key].with_envelope(envelope_std)
