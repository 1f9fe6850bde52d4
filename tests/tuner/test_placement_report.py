"""`placement_report`'s printed table fits the console: run names cut
short (the trial id kept), no word broken, at 100 and 120 columns."""

import io
import re

import keras_tuner
import pytest
from keras_tuner.engine.trial import Trial
from rich.console import Console

from bn_keras.tuner import placement_report
from bn_keras.tuner._trial_runs import run_name

#: Three trials of a per-layer search of an MLP: renorm's settings make
#: the longest cells.
TRIALS = [
    (
        0.9311,
        {
            "dense/placement": "layer-bn-act",
            "dense/normalization": "renorm",
            "dense/momentum": 0.99,
            "dense/rmax": 3.0,
            "dense/dmax": 5.0,
            "dense/warmup_steps": 1000,
            "dense/ramp_steps": 1000,
            "dense_1/placement": "bn-act-layer",
            "dense_1/normalization": "ghost",
            "dense_1/momentum": 0.9,
            "dense_1/virtual_batch_size": 8,
            "dense_2/placement": "bn-act-layer",
            "dense_2/normalization": "batch",
            "dense_2/momentum": 0.99,
            "input_batchnorm": True,
        },
    ),
    (
        0.9022,
        {
            "dense/placement": "layer-act-bn",
            "dense/normalization": "batch",
            "dense/momentum": 0.9,
            "dense_1/placement": "layer-act",
            "dense_2/placement": "layer-act",
            "input_batchnorm": False,
        },
    ),
    (
        0.5133,
        {
            "dense/placement": "layer-act",
            "dense_1/placement": "layer-bn-act",
            "dense_1/normalization": "renorm",
            "dense_1/momentum": 0.99,
            "dense_1/rmax": 3.0,
            "dense_1/dmax": 5.0,
            "dense_1/warmup_steps": 100,
            "dense_1/ramp_steps": 1000,
            "dense_2/placement": "layer-act",
            "input_batchnorm": False,
        },
    ),
]


class _Oracle:
    """What `placement_report` reads of an oracle: its trials, the best
    of them, its search space and objective."""

    def __init__(self, trials):
        self.objective = keras_tuner.Objective("val_accuracy", "max")
        self.trials = {trial.trial_id: trial for trial in trials}
        self._space = keras_tuner.HyperParameters()
        for trial in trials:
            for name, value in trial.hyperparameters.values.items():
                if name not in self._space:
                    self._space.Fixed(name, value)

    def get_space(self):
        return self._space

    def get_best_trials(self, count):
        ranked = sorted(self.trials.values(), key=lambda t: -t.score)
        return ranked[:count]


class _Tuner:
    def __init__(self, trials):
        self.oracle = _Oracle(trials)


def _tuner():
    trials = []
    for index, (score, values) in enumerate(TRIALS):
        hp = keras_tuner.HyperParameters()
        for name, value in values.items():
            hp.values[name] = value
        trial = Trial(hp, trial_id=str(index), status="COMPLETED")
        trial.score = score
        trials.append(trial)
    return _Tuner(trials)


def _printed(width):
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None)
    rows = placement_report(_tuner(), console=console)
    return rows, out.getvalue()


def _run_cells(printed):
    """The run column's text in each row's first line."""
    cells = []
    for line in printed.splitlines():
        match = re.match(r"^│\s+\d+ │ (\S+)\s+│", line)
        if match:
            cells.append(match.group(1))
    return cells


@pytest.mark.parametrize("width", [100, 120])
def test_the_report_fits_the_console_with_whole_words(width):
    rows, printed = _printed(width)
    lines = printed.splitlines()
    assert max(len(line) for line in lines) <= width
    names = [row["run_name"] for row in rows]
    assert names[0] == (
        "trial_0-input-bn_layer-bn-act.renorm_bn-act-layer.ghost_"
        "bn-act-layer.batch"
    )
    # One line per run name: whole, or its start with an ellipsis.
    cells = _run_cells(printed)
    assert len(cells) == 3
    for cell, name in zip(cells, names):
        assert cell == name or (
            cell.endswith("…") and name.startswith(cell[:-1])
        ), (cell, name)
        assert cell.startswith(name.split("-")[0] + "-")  # the trial id
    assert any(cell.endswith("…") for cell in cells)
    # Settings whole, each on a line of the slot's cell; the objective's
    # direction under its name.
    for word in ("warmup=1000", "ramp=1000", "rmax=3 dmax=5", "vbs=8"):
        assert word in printed
    header = [line for line in lines if line.startswith("┃")]
    assert "val_accuracy" in header[-2] and "(max)" in header[-1]


def test_a_wide_console_shows_whole_run_names():
    rows, printed = _printed(200)
    assert _run_cells(printed) == [row["run_name"] for row in rows]
    assert [row["run_name"] for row in rows] == [
        run_name(str(i), values) for i, (_, values) in enumerate(TRIALS)
    ]


def test_slot_cells_in_short_lines():
    _, printed = _printed(120)
    # dense of trial 0: the placement, then renorm's settings in lines of
    # at most 14 characters, between words.
    column = []
    for line in printed.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) > 4:
            column.append(cells[4])
    first = column[column.index("layer-bn-act") :][:5]
    assert first == [
        "layer-bn-act",
        "renorm m=0.99",
        "rmax=3 dmax=5",
        "warmup=1000",
        "ramp=1000",
    ]
