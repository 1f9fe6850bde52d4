"""A table of the completed trials of a search and their BN choices."""

from __future__ import annotations

import textwrap
from typing import Any

import keras_tuner

from bn_keras import registry
from bn_keras.tuner._trial_runs import SHORT_SETTINGS
from bn_keras.tuner._trial_runs import run_name
from bn_keras.tuner._trial_runs import slot_names
from bn_keras.tuner.bn_hyperparameters import NORMALIZATION
from bn_keras.tuner.bn_hyperparameters import PLACEMENT
from bn_keras.tuner.bn_hyperparameters import SETTINGS

# The per-slot keys, in the order they are shown.
_SLOT_KEYS = (PLACEMENT, NORMALIZATION, *SETTINGS)
_SHORT = SHORT_SETTINGS
_COMPLETED = "COMPLETED"

#: A slot cell's normalization and settings are wrapped, between words,
#: into lines of at most this many characters (a placement name's 12).
_SLOT_LINE = 14


def _slots(space_names, trials):
    """Slot prefixes (names with a `"/placement"`), in declaration order."""
    names = list(space_names)
    for trial in trials:
        names.extend(n for n in trial.hyperparameters.values if n not in names)
    return slot_names(names)


def _completed_trials(oracle):
    """The completed trials, best first (as `get_best_trials` sorts)."""
    trials = getattr(oracle, "trials", None)
    count = len(trials) if isinstance(trials, dict) else 1_000_000
    if count == 0:
        return []
    return [
        trial
        for trial in oracle.get_best_trials(count)
        if str(trial.status) == _COMPLETED
    ]


def _number(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _slot_cell(info):
    """The placement, then the normalization and its settings, in lines
    of at most `_SLOT_LINE` characters (a longer word keeps a line of its
    own)."""
    if not info:
        return "-"
    lines = [info[PLACEMENT]]
    if NORMALIZATION in info:
        words = [info[NORMALIZATION]] + [
            f"{_SHORT[k]}={_number(info[k])}"
            for k in _SLOT_KEYS[2:]
            if k in info
        ]
        lines += textwrap.wrap(
            " ".join(words), _SLOT_LINE, break_long_words=False
        )
    return "\n".join(lines)


def placement_report(
    tuner: keras_tuner.Tuner, print_table: bool = True, console: Any = None
) -> list[dict[str, Any]]:
    """Returns, and prints as a table, the completed trials of a search.

    For every completed trial of `tuner`, best first (by the tuner's
    objective), the report gives its score and, for each slot (each prefix
    `name` with a `"{name}/placement"` hyperparameter, as
    `bn_keras.tuner.bn_hyperparameters` declares them), the placement and,
    when it has BN, the normalization and its settings. The other
    hyperparameters (depth, widths, learning rate, ...) come apart. Failed
    and running trials are left out; the printed caption counts the failed
    ones. It works on a tuner that a search has ended, one reloaded with
    `overwrite=False`, and a worker of a distributed search (which asks the
    chief).

    Args:
        tuner: A keras-tuner tuner (`RandomSearch`, `GridSearch`,
            `Hyperband`, `BayesianOptimization`, ...).
        print_table: Whether to print the table (with `rich`). Defaults to
            `True`.
        console: Optional `rich.console.Console` to print to. Defaults to a
            new console on standard output (120 columns wide when that is
            not a terminal).

    Returns:
        A list with one dict per completed trial, best first, with keys
        `"rank"` (from 1), `"trial_id"`, `"run_name"` (the name of the
        trial's TensorBoard run, as `bn_keras.tuner.BNHyperModel` gives it,
        such as `"trial_03-layer-bn-act.batch"`), `"score"`, `"slots"` (a
        dict from slot name to a dict with `"placement"` and, with BN,
        `"normalization"`, `"momentum"` and the normalization's settings;
        slots absent from the trial, such as the blocks beyond its depth,
        are left out) and `"hyperparameters"` (the trial's other values).

    Example:

    ```python
    tuner.search(x, y, validation_split=0.2, epochs=5)
    rows = bn_keras.tuner.placement_report(tuner)
    rows[0]["slots"]  # the best trial's placements
    # {'dense': {'placement': 'layer-bn-act', 'normalization': 'batch',
    #            'momentum': 0.9}, ...}
    ```
    """
    oracle = tuner.oracle
    trials = _completed_trials(oracle)
    slots = _slots((hp.name for hp in oracle.get_space().space), trials)
    rows = []
    for rank, trial in enumerate(trials, start=1):
        values = dict(trial.hyperparameters.values)
        slot_values = {}
        for slot in slots:
            placement = values.pop(f"{slot}/{PLACEMENT}", None)
            info = {}
            for key in _SLOT_KEYS[1:]:
                value = values.pop(f"{slot}/{key}", None)
                if value is not None:
                    info[key] = value
            if placement is None:
                continue
            info = {PLACEMENT: registry.get_placement(placement), **info}
            if not registry.has_batchnorm(placement):
                info = {PLACEMENT: info[PLACEMENT]}
            slot_values[slot] = info
        rows.append(
            {
                "rank": rank,
                "trial_id": trial.trial_id,
                "run_name": run_name(
                    trial.trial_id, trial.hyperparameters.values
                ),
                "score": (
                    None if trial.score is None else float(trial.score)
                ),
                "slots": slot_values,
                "hyperparameters": values,
            }
        )
    if print_table:
        _print(rows, slots, oracle, console)
    return rows


def _constant_values(others):
    """The values that no trial changed (none with a single trial)."""
    if len(others) < 2:
        return {}
    return {
        name: value
        for name, value in others[0].items()
        if all(other.get(name, object()) == value for other in others)
    }


def _caption(oracle, count, constant):
    """How many trials completed and failed, and the constant values."""
    caption = f"{count} completed trial(s), best first"
    trials = getattr(oracle, "trials", None)
    if isinstance(trials, dict):
        failed = sum(str(t.status) == "FAILED" for t in trials.values())
        if failed:
            caption += f"; {failed} failed"
    if constant:
        caption += "; in every trial: " + ", ".join(
            f"{k}={_number(v)}" for k, v in constant.items()
        )
    return caption


def _table(rows, slots, oracle):
    """The rich `Table` of `rows`: a line per trial's run name (cut short
    with an ellipsis where the column is made narrower), its score, a
    column per slot, and the hyperparameters that varied."""
    from rich.table import Table

    objective = getattr(oracle.objective, "name", "score")
    direction = getattr(oracle.objective, "direction", None)
    # Values that no trial changed go to the caption, not to every row.
    others = [row["hyperparameters"] for row in rows]
    constant = _constant_values(others)
    table = Table(
        title="Batch normalization placements",
        caption=_caption(oracle, len(rows), constant),
        show_lines=True,
    )
    table.add_column("#", justify="right")
    table.add_column("TensorBoard\nrun", overflow="ellipsis", no_wrap=True)
    table.add_column(
        objective + (f"\n({direction})" if direction else ""), justify="right"
    )
    for slot in slots:
        table.add_column(slot)
    varied = [
        "\n".join(
            f"{k}={_number(v)}"
            for k, v in other.items()
            if k not in constant
        )
        for other in others
    ]
    if any(varied):
        table.add_column("other hyperparameters", overflow="fold")
    for row, other in zip(rows, varied):
        score = row["score"]
        cells = [
            str(row["rank"]),
            row["run_name"],
            "-" if score is None else f"{score:.4f}",
            *[_slot_cell(row["slots"].get(slot)) for slot in slots],
        ]
        if any(varied):
            cells.append(other or "-")
        table.add_row(*cells)
    return table


def _fit(console, table, rows):
    """Narrows the run column until `table` fits `console`, down to the
    trial ids (`trial_03-…`); a table still too wide has its other columns
    wrapped by rich."""
    unlimited = console.options.update_width(10_000)
    excess = console.measure(table, options=unlimited).maximum - console.width
    names = [row["run_name"] for row in rows]
    widest = max([len(name) for name in names] + [len("TensorBoard")])
    narrowest = max(
        [len(name.partition("-")[0]) + 2 for name in names]
        + [len("TensorBoard")]
    )
    if excess > 0:
        table.columns[1].max_width = max(widest - excess, narrowest)


def _print(rows, slots, oracle, console):
    from rich.console import Console

    if console is None:
        console = Console()
        if not console.is_terminal:
            console.width = 120
    table = _table(rows, slots, oracle)
    _fit(console, table, rows)
    console.print(table)
