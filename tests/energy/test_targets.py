"""U1-U4 against the formulas of R&M 2015 section 6.1, at hand-computed points."""

from __future__ import annotations

import math

import pytest
import torch

from nfvi.energy import TARGETS, envelope, get_target, u1_raw, u2_raw, u3_raw, u4_raw


def _u(name: str, z1: float, z2: float, dtype=torch.float64) -> float:
    return TARGETS[name](torch.tensor([[z1, z2]], dtype=dtype)).item()


LN2 = math.log(2.0)
ENV = 1.0 / (2 * 4.0**2)  # z1^2 / (2 s^2) per unit z1^2, default s = 4


def test_u1_hand_points():
    # on the ring at a lobe centre: ring term 0, lobes ln(1 + exp(-(4/0.6)^2 / 2))
    assert _u("u1", 2.0, 0.0) == pytest.approx(-math.log1p(math.exp(-0.5 * (4 / 0.6) ** 2)))
    # origin: ring 0.5 (2/0.4)^2 = 12.5; both lobes exp(-50/9) -> + 50/9 - ln 2
    assert _u("u1", 0.0, 0.0) == pytest.approx(12.5 + 50 / 9 - LN2, abs=1e-12)
    # top of the ring: ring term 0, lobes as at the origin
    assert _u("u1", 0.0, 2.0) == pytest.approx(50 / 9 - LN2, abs=1e-12)
    # (3, 4): r = 5 -> ring 0.5 (3/0.4)^2 = 28.125; lobes exp(-(1/0.6)^2/2) + exp(-(5/0.6)^2/2)
    lobes = math.log(math.exp(-0.5 * (1 / 0.6) ** 2) + math.exp(-0.5 * (5 / 0.6) ** 2))
    assert _u("u1", 3.0, 4.0) == pytest.approx(28.125 - lobes, abs=1e-12)
    # U1 has no envelope
    assert TARGETS["u1"].envelope_std is None


def test_u2_hand_points():
    # w1(1) = sin(pi/2) = 1: on the wave, only the envelope 1/32 is left
    assert _u("u2", 1.0, 1.0) == pytest.approx(ENV, abs=1e-12)
    # w1(0) = 0: 0.5 (0.4/0.4)^2 = 0.5
    assert _u("u2", 0.0, 0.4) == pytest.approx(0.5, abs=1e-12)
    # w1(-1) = -1, z = (-1, 0): 0.5 (1/0.4)^2 = 3.125, envelope 1/32
    assert _u("u2", -1.0, 0.0) == pytest.approx(3.125 + ENV, abs=1e-12)
    # periodic in z1 with period 4, apart from the envelope
    assert _u("u2", 5.0, 1.0) == pytest.approx(25 * ENV, abs=1e-12)


def test_u3_hand_points():
    # z1 = 1: w1 = 1, w2 = 3. z2 = 1 sits on the first branch, z2 = -2 on the second
    other = -0.5 * (3 / 0.35) ** 2
    assert _u("u3", 1.0, 1.0) == pytest.approx(-math.log1p(math.exp(other)) + ENV, abs=1e-12)
    assert _u("u3", 1.0, -2.0) == pytest.approx(-math.log1p(math.exp(other)) + ENV, abs=1e-12)
    # halfway (z2 = -0.5): both branches 1.5 away -> 0.5 (1.5/0.35)^2 - ln 2
    assert _u("u3", 1.0, -0.5) == pytest.approx(0.5 * (1.5 / 0.35) ** 2 - LN2 + ENV, abs=1e-12)
    # far from z1 = 1, w2 ~ 0 and the two branches coincide: 0.5 (d/0.35)^2 - ln 2 (+ tiny)
    z1 = -3.0  # w1(-3) = sin(-3 pi / 2) = 1, w2 = 3 exp(-0.5 (4/0.6)^2)
    w2 = 3 * math.exp(-0.5 * (4 / 0.6) ** 2)
    a, b = -0.5 * (0.5 / 0.35) ** 2, -0.5 * ((0.5 + w2) / 0.35) ** 2
    want = -math.log(math.exp(a) + math.exp(b)) + 9 * ENV
    assert _u("u3", z1, 1.5) == pytest.approx(want, abs=1e-12)


def test_u4_hand_points_and_w3_divides_by_0_3():
    # z1 = 1: w3 = 3 sigmoid(0) = 1.5; z2 = w1 = 1 -> second branch at distance 1.5
    want = -math.log(1.0 + math.exp(-0.5 * (1.5 / 0.35) ** 2)) + ENV
    assert _u("u4", 1.0, 1.0) == pytest.approx(want, abs=1e-12)
    # z1 = 1.3: w3 = 3 sigmoid(0.3 / 0.3) = 3 / (1 + e^-1) (3 sigmoid(0.1) with the /3 bug)
    z1 = 1.3
    w1 = math.sin(2 * math.pi * z1 / 4)
    w3 = 3 / (1 + math.exp(-1.0))
    z2 = w1 - w3  # on the second branch
    want = -math.log(math.exp(-0.5 * (w3 / 0.4) ** 2) + 1.0) + z1 * z1 * ENV
    assert _u("u4", z1, z2) == pytest.approx(want, abs=1e-12)
    buggy_w3 = 3 / (1 + math.exp(-0.1))
    assert abs(_u("u4", z1, w1 - buggy_w3) - want) > 0.1


def test_envelope_is_part_of_u2_u4():
    z = torch.randn(64, 2, dtype=torch.float64) * 3
    for name, raw in (("u2", u2_raw), ("u3", u3_raw), ("u4", u4_raw)):
        torch.testing.assert_close(TARGETS[name](z), raw(z) + z[:, 0] ** 2 / 32.0)
        wide = get_target(name, 10.0)
        torch.testing.assert_close(wide(z), raw(z) + envelope(z, 10.0))
    torch.testing.assert_close(TARGETS["u1"](z), u1_raw(z))
    assert get_target("u1", 2.0)(z).equal(u1_raw(z))


def test_shapes_dtypes_and_stability():
    far = torch.tensor([[0.0, 30.0], [50.0, -50.0], [-1e3, 1e3], [0.0, 0.0]])
    for name, target in TARGETS.items():
        u = target(far)
        assert u.shape == (4,), name
        assert u.dtype == torch.float32
        assert torch.isfinite(u).all(), name
        assert target(far.double()).dtype == torch.float64
    # U1 at (40, 0): the naive -ln(exp(a) + exp(b)) is -ln(0 + 0) = inf; logaddexp is exact
    u = TARGETS["u1"](torch.tensor([[40.0, 0.0]])).item()
    assert u == pytest.approx(0.5 * (38 / 0.4) ** 2 + 0.5 * (38 / 0.6) ** 2, rel=1e-6)


def test_gradients_are_finite():
    z = (torch.randn(128, 2, dtype=torch.float64) * 4).requires_grad_()
    for target in TARGETS.values():
        (g,) = torch.autograd.grad(target(z).sum(), z)
        assert torch.isfinite(g).all()


def test_get_target_errors():
    with pytest.raises(KeyError, match="unknown target"):
        get_target("u9")
    with pytest.raises(ValueError):
        get_target("u2", 0.0)
    with pytest.raises(ValueError):
        TARGETS["u1"](torch.zeros(3, 3))
