"""`RenormClipping.scaled`: the paper's schedule fitted to a run's length."""

import re

import pytest

import bn_keras

RenormClipping = bn_keras.layers.RenormClipping

# The paper's schedule scaled to 800 steps, by hand: every step count times
# 800 / 40000 = 1/50, so plain BN for 5000 / 50 = 100 steps, dmax final at
# 25000 / 50 = 500 and rmax final at 40000 / 50 = 800. In between:
# rmax = 1 + 2 * (step - 100) / 700 and dmax = 5 * (step - 100) / 400.
SCALED_800 = {
    0: (1.0, 0.0),
    100: (1.0, 0.0),
    300: (1.0 + 2.0 * 200 / 700, 2.5),
    450: (2.0, 5.0 * 350 / 400),
    500: (1.0 + 2.0 * 400 / 700, 5.0),
    800: (3.0, 5.0),
    5000: (3.0, 5.0),
}


def steps(schedule):
    return schedule.warmup_steps, schedule.dmax_steps, schedule.rmax_steps


def test_paper_schedule_scaled_to_800_steps():
    scaled = RenormClipping().scaled(800)
    assert steps(scaled) == (100, 500, 800)
    assert (scaled.rmax, scaled.dmax) == (3.0, 5.0)
    for step, (rmax, dmax) in SCALED_800.items():
        bounds = scaled(step)
        assert bounds["rmax"] == pytest.approx(rmax, rel=1e-12), step
        assert bounds["dmax"] == pytest.approx(dmax, rel=1e-12), step
        assert bounds["rmin"] == pytest.approx(1.0 / rmax, rel=1e-12), step


@pytest.mark.parametrize("total", [1, 2, 5, 7, 8, 9, 43, 86, 129, 999, 10**6])
def test_paper_schedule_in_eighths(total):
    """The rule `bn-keras compare` used: warm-up for the first eighth,
    dmax final at five eighths, rmax final at the end, whole steps."""
    warmup = max(1, total // 8)
    assert steps(RenormClipping().scaled(total)) == (
        warmup,
        max(warmup, 5 * total // 8),
        max(warmup, total),
    )


def test_own_schedule_keeps_its_proportions_and_bounds():
    # End 6: doubling moves every step count, shrinking rounds down.
    schedule = RenormClipping(
        rmax=2.0, dmax=1.0, warmup_steps=2, rmax_steps=6, dmax_steps=4
    )
    assert steps(schedule.scaled(12)) == (4, 8, 12)
    assert steps(schedule.scaled(3)) == (1, 2, 3)
    assert steps(schedule.scaled(6)) == (2, 4, 6)
    assert (schedule.scaled(3).rmax, schedule.scaled(3).dmax) == (2.0, 1.0)
    # The original is left alone.
    assert steps(schedule) == (2, 4, 6)


def test_no_warmup_stays_without_one():
    schedule = RenormClipping(warmup_steps=0, rmax_steps=10, dmax_steps=5)
    assert steps(schedule.scaled(4)) == (0, 2, 4)
    assert schedule.scaled(4)(0) == {"rmin": 1.0, "rmax": 1.0, "dmax": 0.0}
    assert schedule.scaled(4)(1) == pytest.approx(
        {"rmin": 1 / 1.5, "rmax": 1.5, "dmax": 2.5}
    )


def test_a_schedule_without_steps_is_copied():
    schedule = RenormClipping(
        rmax=2.0, warmup_steps=0, rmax_steps=0, dmax_steps=0
    )
    scaled = schedule.scaled(100)
    assert scaled == schedule and scaled is not schedule


@pytest.mark.parametrize(
    "total, text", [(0, "0"), (-5, "-5"), (2.5, "2.5"), (None, "None")]
)
def test_total_steps_must_be_a_positive_integer(total, text):
    with pytest.raises(
        ValueError, match=re.escape(f"Received: total_steps={text}") + "$"
    ):
        RenormClipping().scaled(total)
