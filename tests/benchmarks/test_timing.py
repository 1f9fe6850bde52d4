"""`benchmarks/_timing.py`: the benchmarks' interleaved timing."""

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _timing  # noqa: E402


def _tasks(calls, sleeps=None):
    """Tasks that record their calls and return their name."""

    def task(name):
        def run():
            calls.append(name)
            time.sleep((sleeps or {}).get(name, 0.0))
            return name

        return run

    return {name: task(name) for name in "abc"}


def test_each_task_runs_once_untimed_then_once_a_round():
    calls = []
    timings = _timing.interleaved_timings(_tasks(calls), rounds=2)
    assert calls == list("abc" + "abc" + "abc")
    assert {name: [t.value for t in ts] for name, ts in timings.items()} == {
        "a": ["a", "a"],
        "b": ["b", "b"],
        "c": ["c", "c"],
    }


def test_rotate_starts_each_round_one_task_later():
    calls = []
    _timing.interleaved_timings(_tasks(calls), rounds=4, rotate=True)
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab" + "abc"


def test_times_are_the_calls_wall_clock_and_cpu_time():
    sleeps = {"a": 0.0, "b": 0.05, "c": 0.0}
    timings = _timing.interleaved_timings(_tasks([], sleeps), rounds=1)
    (b,) = timings["b"]
    assert 0.05 <= b.wall < 0.5
    assert b.cpu < 0.5 * b.wall  # sleeping takes no CPU time
    assert timings["a"][0].wall < b.wall
    walls = _timing.interleaved(_tasks([], sleeps), rounds=3)
    assert [len(seconds) for seconds in walls.values()] == [3, 3, 3]
    assert all(0.05 <= s < 0.5 for s in walls["b"])


@pytest.mark.parametrize(
    "values, kwargs, text",
    [
        ([1.0, 1.02, 0.98], {}, "1.000 [0.980-1.020]"),
        ([0.012, 0.01, 0.03], {"scale": 100, "digits": 2},
         "1.20 [1.00-3.00]"),
        ([2.5], {"digits": 1}, "2.5 [2.5-2.5]"),
    ],
)
def test_spread_is_median_min_and_max(values, kwargs, text):
    assert _timing.spread(values, **kwargs) == text
