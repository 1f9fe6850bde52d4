"""How the benchmarks time: tasks interleaved in rounds, and their spread.

`bench_layers.py` and `bench_callbacks.py` both time several tasks (a
model per variant, `fit` with and without the monitor) in the same
process: each task once untimed first (tracing, compiling, first files),
then once per round, in turn, so that slow drifts of a shared machine hit
all of them alike. Each figure is then printed as its median over the
rounds with its min and max.
"""

import statistics
import time
from typing import NamedTuple


class Timing(NamedTuple):
    """One timed call of a task."""

    wall: float  # wall-clock seconds, `time.perf_counter`
    cpu: float  # the process's CPU seconds, `time.process_time`
    value: object  # what the task returned


def interleaved_timings(tasks, rounds, rotate=False):
    """Times each task (a callable without arguments) once per round.

    Each task runs once first, untimed. Each round then runs every task
    once, in the order of `tasks`; with `rotate`, round `r` starts at the
    `r`-th task (modulo their number), so that no task always follows the
    same one.

    Returns:
        `{name: [Timing, one per round]}`.
    """
    for task in tasks.values():
        task()
    names = list(tasks)
    timings = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            start, cpu = time.perf_counter(), time.process_time()
            value = tasks[name]()
            timings[name].append(
                Timing(
                    time.perf_counter() - start,
                    time.process_time() - cpu,
                    value,
                )
            )
    return timings


def interleaved(tasks, rounds, rotate=False):
    """`{name: [wall-clock seconds, one per round]}`, timed as
    `interleaved_timings` does."""
    return {
        name: [timing.wall for timing in timings]
        for name, timings in interleaved_timings(tasks, rounds, rotate).items()
    }


def spread(values, scale=1.0, digits=3):
    """`'median [min-max]'` of `values` times `scale`, with `digits`
    decimals."""
    values = [scale * value for value in values]
    return (
        f"{statistics.median(values):.{digits}f} "
        f"[{min(values):.{digits}f}-{max(values):.{digits}f}]"
    )
