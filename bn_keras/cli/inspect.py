"""`bn-keras inspect`: the batch normalization layers of a saved model.

One row per BN layer: its kind, its neighbours, a summary of its moving
statistics, its dead channels, whether `bn_keras.fold_batchnorm` can fold
it, and warnings; `--fold OUT.keras` writes the folded model. The command's
options are `bn_keras.cli.inspect_command`'s (they need no Keras).
"""

import dataclasses
import re
import textwrap

import keras
import numpy as np
from rich.console import Console

from bn_keras._channels_first import channels_first_message
from bn_keras._channels_first import is_channels_first_error
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
    momentum: float  # None: cumulative averages
    epsilon: float

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
        momentum=layer.momentum,
        epsilon=layer.epsilon,
    )


def inspect_model(model):
    """One `Row` per BN layer of `model`, in forward order."""
    notes, unreached = _fold_notes(model)
    return [
        _row(path, layer, before, after, notes.get(path, unreached))
        for path, layer, before, after in batchnorm_neighbours(model)
    ]


# -- the report ---------------------------------------------------------------

#: The widest the table gets without `--details`: a 120-column terminal.
WIDTH = 120

#: The columns without `--details`: one line per layer.
COLUMNS = (
    ("#", "right"),
    ("layer", "left"),
    ("kind", "left"),
    ("neighbours", "left"),
    ("moving mean", "right"),
    ("moving var", "right"),
    ("dead", "right"),
    ("fold", "left"),
    ("warn", "right"),
)

#: The columns with `--details`.
DETAIL_COLUMNS = (
    ("#", "right"),
    ("layer", "left"),
    ("kind", "left"),
    ("before", "left"),
    ("after", "left"),
    ("position", "left"),
    ("momentum", "right"),
    ("epsilon", "right"),
    ("moving mean", "right"),
    ("moving var", "right"),
    ("dead", "right"),
    ("fold", "left"),
    ("warn", "right"),
)

#: Cells cut short, in this order, until the table fits: (column, which
#: end is kept, the narrowest they get). Numbers are never cut: a table
#: still too wide is printed whole, for the terminal to wrap.
_SHORTENED = (("neighbours", "start", 14), ("layer", "end", 12))


def _fmt_range(bounds):
    low, high = bounds
    if np.isnan(low):
        return "-"
    return f"{low:.2g}..{high:.2g}"


def _fmt_setting(value):
    return "none" if value is None else f"{value:g}"


def _cells(index, row, details):
    """The row's cells, as strings, in the order of the columns."""
    if details:
        neighbours = [
            row.before,
            row.after,
            row.position or "-",
            _fmt_setting(row.momentum),
            _fmt_setting(row.epsilon),
        ]
    else:
        neighbours = [f"{row.before} -> {row.after}"]
    return [
        str(index),
        row.path,
        row.kind,
        *neighbours,
        _fmt_range(row.mean_range),
        _fmt_range(row.variance_range),
        "-" if row.dead is None else f"{row.dead}/{row.channels}",
        "yes" if row.foldable else "no",
        str(len(row.warnings) or "-"),
    ]


def shorten(text, width, keep="start"):
    """`text` cut to `width` characters with an ellipsis where it is cut:
    its end (`keep="start"`) or its start (`keep="end"`).

    >>> bn_keras.cli.inspect.shorten("conv2_block1_1_bn", 8, keep="end")
    '…k1_1_bn'
    """
    if len(text) <= width:
        return text
    if keep == "end":
        return "…" + text[len(text) - width + 1 :]
    return text[: width - 1] + "…"


def _fit(columns, cells, excess):
    """Cuts the `_SHORTENED` columns' cells of `cells` (lists, changed in
    place) by up to `excess` characters of table width in all."""
    headers = [header for header, _ in columns]
    for header, keep, narrowest in _SHORTENED:
        index = headers.index(header)
        widest = max(len(row[index]) for row in cells)
        width = max(widest - excess, narrowest, len(header))
        if excess <= 0 or width >= widest:
            continue
        for row in cells:
            row[index] = shorten(row[index], width, keep)
        excess -= widest - width


def _width(out, rendered):
    """The width `rendered` takes when nothing limits it."""
    return out.measure(rendered, options=out.options.update_width(10_000))


def rows_table(out, rows, details=False):
    """`(table, width)`: the table of `rows`, one line per layer, and the
    width to print it at.

    Cut to `out`'s width (the neighbours, then the layer paths) where it
    can be; with `details`, more columns and whole cells, however wide.
    """
    columns = DETAIL_COLUMNS if details else COLUMNS
    cells = [_cells(i, row, details) for i, row in enumerate(rows, start=1)]
    if not details:
        natural = _width(out, table(columns, cells, wrap=False)).maximum
        _fit(columns, cells, natural - out.width)
    result = table(columns, cells, wrap=False)
    return result, max(out.width, _width(out, result).maximum)


#: A note that counts channels: "collapsed: ... in 1/8 channels".
_COUNTED = re.compile(r"^(?P<text>.*) in (?P<count>\d+)/(?P<of>\d+) channels$")
#: A layer's name in a note, as "'dense'".
_QUOTED = re.compile(r"'[^']*'")


def _shared(note):
    """What `note` says of any layer: without its channel count, its
    layer names as '…'."""
    counted = _COUNTED.match(note)
    if counted:
        return counted["text"]
    return _QUOTED.sub("'…'", note)


def _numbers(indices, shown=6):
    """`#1-3, #7`: row numbers as ranges, the first `shown` of them."""
    ranges = []
    for index in indices:
        if ranges and ranges[-1][1] == index - 1:
            ranges[-1][1] = index
        else:
            ranges.append([index, index])
    parts = [f"#{a}" if a == b else f"#{a}-{b}" for a, b in ranges]
    more = ", …" if len(parts) > shown else ""
    return ", ".join(parts[:shown]) + more


def _channels(notes):
    """` in 3/72 channels` for notes that count channels, summed."""
    counted = [_COUNTED.match(note) for note in notes]
    if not all(counted):
        return ""
    count = sum(int(match["count"]) for match in counted)
    return f" in {count}/{sum(int(match['of']) for match in counted)} channels"


def grouped_notes(rows):
    """One line per note that several layers share (`53 layers (#1-53):
    warning: ...`), one per note of a single layer (`#2 ghost_bn:
    warning: ...`), in the order of the rows."""
    groups = {}  # shared note -> [(row number, path, note)]
    for index, row in enumerate(rows, start=1):
        for note in row.notes:
            groups.setdefault(_shared(note), []).append((index, row.path, note))
    lines = []
    for shared, members in groups.items():
        if len(members) == 1:
            index, path, note = members[0]
            lines.append(f"#{index} {path}: {note}")
            continue
        where = _numbers([index for index, _, _ in members])
        notes = [note for _, _, note in members]
        lines.append(
            f"{len(members)} layers ({where}): {shared}{_channels(notes)}"
        )
    return lines


def note_lines(rows, details=False):
    """The reasons and warnings under the table: grouped, or with
    `details` one line per layer and note."""
    if not details:
        return grouped_notes(rows)
    return [
        f"{index:>3}  {row.path}: {note}"
        for index, row in enumerate(rows, start=1)
        for note in row.notes
    ]


def print_rows(out, rows, details=False):
    """The table, then the reasons and warnings under it, each wrapped to
    the console's width with an indent."""
    rendered, width = rows_table(out, rows, details)
    printer = out
    if width > out.width:  # wider than the terminal: the terminal wraps
        printer = Console(
            file=out.file, width=width, highlight=False, markup=False
        )
    printer.print(rendered)
    lines = note_lines(rows, details)
    for line in lines:
        out.print(
            textwrap.fill(
                line,
                width=out.width,
                subsequent_indent="      ",
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    if not details and len(lines) < sum(len(row.notes) for row in rows):
        out.print(
            "(--details: one line per layer and note, and each layer's "
            "position, momentum and epsilon)"
        )


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


def max_difference(model, new):
    """Largest |output difference| of two models in inference on 8 random
    inputs, or None where the input shape is unknown."""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        return None
    shape = inputs[0].shape[1:]
    if any(dim is None for dim in shape):
        return None
    x = np.random.default_rng(0).normal(size=(8, *shape)).astype("float32")
    pairs = zip(
        keras.tree.flatten(model(x, training=False)),
        keras.tree.flatten(new(x, training=False)),
    )
    return max(
        float(np.max(np.abs(keras.ops.convert_to_numpy(a - b))))
        for a, b in pairs
    )


def print_difference(out, model, new, noun):
    """Prints how far the `noun` ("folded") model's inference outputs are
    from the original's, or why they were not compared."""
    try:
        difference = max_difference(model, new)
    except Exception as error:  # TensorFlow's, for a channels-first model
        if not is_channels_first_error(error, model):
            raise
        out.print(
            f"the {noun} model was not checked: running it here fails: "
            f"{channels_first_message(model)}"
        )
        return
    if difference is None:
        return
    if not np.isfinite(difference):
        out.print(
            "outputs on random inputs are not finite (non-finite weights or "
            f"statistics); the {noun} model was not checked"
        )
        return
    out.print(
        "largest |output difference| from the original in inference, on "
        f"8 random inputs: {difference:.3g}"
    )


def _header(path, model, rows):
    return (
        f"{path}: {type(model).__name__} '{model.name}', "
        f"{model.count_params():,} parameters, {len(rows)} batch "
        "normalization layer" + ("" if len(rows) == 1 else "s")
    )


def fold(out, model, path, out_path, count):
    """`--fold`: writes the folded model, says what it folded and checks
    its outputs."""
    try:
        folded, report = fold_batchnorm(model, return_report=True)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{path}: cannot fold: {error}") from error
    try:
        folded.save(out_path)
    except OSError as error:
        raise UsageError(
            f"--fold {out_path}: cannot write: {error.strerror or error}"
        ) from error
    out.print(
        f"folded {len(report['folded'])} of {count} BN layers "
        f"({len(report['kept'])} kept); wrote {out_path}"
    )
    print_difference(out, model, folded, "folded")


def run(args):
    model = load(args.model)
    out = console(max_width=None if args.details else WIDTH)
    rows = inspect_model(model)
    out.print(_header(args.model, model, rows))
    if rows:
        print_rows(out, rows, args.details)
    if args.fold is not None:
        fold(out, model, args.model, args.fold, len(rows))
    return 0
