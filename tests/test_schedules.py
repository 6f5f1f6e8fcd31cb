"""beta_at / annealing_done: the paper, linear and none schedules of the likelihood weight."""

import pytest

from nfvi.config import BetaSchedule
from nfvi.schedules import annealing_done, beta_at


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.01),
        (1, 0.0101),
        (4950, 0.505),
        (9899, 0.9999),
        (9900, 1.0),
        (10000, 1.0),
        (50000, 1.0),
    ],
)
def test_paper_defaults(step, expected):
    # min(1, 0.01 + t / 10000)
    assert beta_at(step, "paper") == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("step", "expected"), [(0, 0.2), (50, 0.7), (79, 0.99), (80, 1.0), (100, 1.0), (1000, 1.0)]
)
def test_paper_custom_start_and_steps(step, expected):
    assert beta_at(step, "paper", start=0.2, steps=100) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("step", "expected"), [(0, 0.0), (1, 0.002), (250, 0.5), (499, 0.998), (500, 1.0), (900, 1.0)]
)
def test_linear_starts_at_zero_and_ignores_start(step, expected):
    assert beta_at(step, "linear", start=0.3, steps=500) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("step", [0, 1, 10, 10**6])
def test_none_is_always_one(step):
    assert beta_at(step, "none", start=0.01, steps=10) == 1.0
    assert annealing_done(step, "none")


@pytest.mark.parametrize("member", list(BetaSchedule))
@pytest.mark.parametrize("step", [0, 37, 100, 250])
def test_enum_members_match_plain_strings(member, step):
    assert beta_at(step, member, 0.05, 200) == beta_at(step, member.value, 0.05, 200)
    assert annealing_done(step, member, 0.05, 200) == annealing_done(step, member.value, 0.05, 200)


def test_enum_members_values():
    assert beta_at(0, BetaSchedule.paper) == pytest.approx(0.01)
    assert beta_at(0, BetaSchedule.linear) == 0.0
    assert beta_at(0, BetaSchedule.none) == 1.0


@pytest.mark.parametrize("name", ["cosine", "Paper", "", "constant"])
def test_unknown_schedule_raises(name):
    with pytest.raises(ValueError, match="unknown beta schedule"):
        beta_at(0, name)
    with pytest.raises(ValueError, match="unknown beta schedule"):
        annealing_done(0, name)


@pytest.mark.parametrize(
    ("schedule", "start", "steps", "first_done"),
    [
        ("paper", 0.01, 10000, 9900),
        ("paper", 0.01, 500, 495),
        ("paper", 0.2, 100, 80),
        ("paper", 0.3, 10, 7),
        ("linear", 0.01, 500, 500),
        ("linear", 0.5, 10, 10),
        ("none", 0.01, 500, 0),
    ],
)
def test_annealing_done_flips_at_first_step_with_beta_one(schedule, start, steps, first_done):
    done = [annealing_done(t, schedule, start, steps) for t in range(first_done + 3)]
    assert done == [False] * first_done + [True] * 3
    assert beta_at(first_done, schedule, start, steps) == 1.0
    if first_done > 0:
        assert beta_at(first_done - 1, schedule, start, steps) < 1.0


def test_cosine_learning_rate_factor():
    from nfvi.schedules import lr_factor

    assert lr_factor(0, "cosine", 100) == pytest.approx(1.0)
    assert lr_factor(50, "cosine", 100) == pytest.approx(0.5)
    assert lr_factor(100, "cosine", 100) == pytest.approx(0.0, abs=1e-15)
    assert lr_factor(100, "cosine", 100, final=0.1) == pytest.approx(0.1)
    assert lr_factor(250, "cosine", 100, final=0.1) == pytest.approx(0.1)  # past the budget
    assert lr_factor(25, "cosine", 100) == pytest.approx(0.5 * (1 + 2**-0.5))
    assert all(lr_factor(t, "constant", 100) == 1.0 for t in (0, 50, 100, 1000))
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        lr_factor(0, "step", 100)
