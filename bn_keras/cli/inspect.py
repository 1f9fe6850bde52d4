"""`bn-keras inspect`: the batch normalization layers of a saved model.

One row per BN layer: its kind, its neighbours, a summary of its moving
statistics, its dead channels, whether `bn_keras.fold_batchnorm` can fold
it, and warnings; `--fold OUT.keras` writes the folded model. The command's
options are `bn_keras.cli.inspect_command`'s (they need no Keras).
"""

import dataclasses

import keras
import numpy as np

from bn_keras._statistics import dead_channels
from bn_keras._statistics import nonfinite
from bn_keras._statistics import read_statistics
from bn_keras.cli.common import UsageError
from bn_keras.cli.common import check_model_file
from bn_keras.cli.common import console
from bn_keras.cli.common import table
from bn_keras.models import fold_batchnorm
from bn_keras.models._fold_plan import plan_fold
from bn_keras.models._graph import GraphError
from bn_keras.models._placement import batchnorm_neighbours
from bn_keras.models._placement import describe
from bn_keras.models._placement import kind_of
from bn_keras.models._placement import position

# -- reading the model --------------------------------------------------------


@dataclasses.dataclass
class Row:
    """What `inspect` reports about one BN layer."""

    path: str
    kind: str
    before: str
    after: str
    position: str
    channels: int
    mean_range: tuple
    variance_range: tuple
    dead: int  # None without gamma
    foldable: bool
    fold_note: str
    warnings: list

    @property
    def neighbours(self):
        text = f"{self.before} ->\n{self.after}"
        return f"{text}\n({self.position})" if self.position else text

    @property
    def notes(self):
        """The long entries, printed under the table."""
        notes = [] if self.foldable else [f"not foldable: {self.fold_note}"]
        return notes + [f"warning: {warning}" for warning in self.warnings]


def _range(values):
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (np.nan, np.nan)
    return (float(finite.min()), float(finite.max()))


#: The statistics whose non-finite values `inspect` warns about.
_CHECKED = ("moving_mean", "moving_variance", "gamma", "beta")


def _warnings(layer, statistics):
    if not layer.built:
        return ["not built (no statistics)"]
    messages = [
        f"non-finite {name} in {count}/{statistics[name].size} channels"
        for name, count in nonfinite(statistics).items()
        if name in _CHECKED
    ]
    variance = statistics["moving_variance"]
    collapsed = int(np.sum(np.isfinite(variance) & (variance < layer.epsilon)))
    if collapsed:
        messages.append(
            f"collapsed: moving variance < epsilon in {collapsed}/"
            f"{variance.size} channels"
        )
    if np.all(statistics["moving_mean"] == 0) and np.all(variance == 1):
        messages.append("statistics at their initial values (never trained?)")
    return messages


def _fold_notes(model):
    """Why `fold_batchnorm` keeps each BN layer ("" if it folds it), by
    path, and the note for the BN layers it does not reach."""
    try:
        plan = plan_fold(model)
    except GraphError as error:
        return {}, error.reason
    notes = {entry["batchnorm"]: "" for entry in plan.folded}
    notes.update((entry["batchnorm"], entry["reason"]) for entry in plan.kept)
    return notes, "fold_batchnorm does not reach it"


def _row(path, layer, before, after, fold_note):
    statistics = read_statistics(layer)
    if layer.built:
        mean = statistics["moving_mean"]
        variance = statistics["moving_variance"]
        channels = int(mean.size)
    else:
        mean = variance = np.array([np.nan])
        channels = 0
    dead = None
    if layer.built and layer.scale:
        dead = int(np.sum(dead_channels(statistics["gamma"])))
    return Row(
        path=path,
        kind=kind_of(layer),
        before=describe(before),
        after=describe(after) if after is not None else "output",
        position=position(before, after),
        channels=channels,
        mean_range=_range(mean),
        variance_range=_range(variance),
        dead=dead,
        foldable=not fold_note,
        fold_note=fold_note,
        warnings=_warnings(layer, statistics),
    )


def inspect_model(model):
    """One `Row` per BN layer of `model`, in forward order."""
    notes, unreached = _fold_notes(model)
    return [
        _row(path, layer, before, after, notes.get(path, unreached))
        for path, layer, before, after in batchnorm_neighbours(model)
    ]


def _fmt_range(bounds):
    low, high = bounds
    if np.isnan(low):
        return "-"
    return f"{low:.2g}..{high:.2g}"


def print_rows(out, rows):
    """The table, then the reasons and warnings of each layer under it."""
    columns = [
        ("#", "right"),
        ("layer", "left"),
        ("kind", "left"),
        ("neighbours", "left"),
        ("moving mean", "right"),
        ("moving var", "right"),
        ("dead", "right"),
        ("fold", "left"),
        ("warn", "right"),
    ]
    out.print(
        table(
            columns,
            [
                (
                    index,
                    row.path,
                    row.kind,
                    row.neighbours,
                    _fmt_range(row.mean_range),
                    _fmt_range(row.variance_range),
                    "-" if row.dead is None else f"{row.dead}/{row.channels}",
                    "yes" if row.foldable else "no",
                    len(row.warnings) or "-",
                )
                for index, row in enumerate(rows, start=1)
            ],
        )
    )
    for index, row in enumerate(rows, start=1):
        for note in row.notes:
            out.print(f"{index:>3}  {row.path}: {note}")


# -- the command --------------------------------------------------------------


def load(path):
    """Loads a `.keras` model without its optimizer (inspecting needs no
    training state); a `UsageError` names the file and the problem."""
    check_model_file(path)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # anything Keras raises on a bad file
        reason = " ".join(str(error).split())
        raise UsageError(
            f"{path}: cannot load the model: {type(error).__name__}: {reason}"
        ) from None


def max_difference(model, folded):
    """Largest |output difference| on random inputs, or None if unknown."""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        return None
    shape = inputs[0].shape[1:]
    if any(dim is None for dim in shape):
        return None
    x = np.random.default_rng(0).normal(size=(8, *shape)).astype("float32")
    a = keras.ops.convert_to_numpy(model(x, training=False))
    b = keras.ops.convert_to_numpy(folded(x, training=False))
    return float(np.max(np.abs(a - b)))


def run(args):
    model = load(args.model)
    out = console()
    rows = inspect_model(model)
    out.print(
        f"{args.model}: {type(model).__name__} '{model.name}', "
        f"{model.count_params():,} parameters, {len(rows)} batch "
        "normalization layer" + ("" if len(rows) == 1 else "s")
    )
    if rows:
        print_rows(out, rows)
    if args.fold is None:
        return 0
    try:
        folded, report = fold_batchnorm(model, return_report=True)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{args.model}: cannot fold: {error}") from error
    try:
        folded.save(args.fold)
    except OSError as error:
        raise UsageError(
            f"--fold {args.fold}: cannot write: {error.strerror or error}"
        ) from error
    out.print(
        f"folded {len(report['folded'])} of {len(rows)} BN layers "
        f"({len(report['kept'])} kept); wrote {args.fold}"
    )
    difference = max_difference(model, folded)
    if difference is not None and not np.isfinite(difference):
        out.print(
            "outputs on random inputs are not finite (see the warnings); "
            "the folded model was not checked"
        )
    elif difference is not None:
        out.print(
            "largest |output difference| from the original in inference, on "
            f"8 random inputs: {difference:.3g}"
        )
    return 0
