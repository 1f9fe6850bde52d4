"""The text summary of `BatchNormMonitor`'s run, `batchnorm/layers`.

Shown by TensorBoard's Text dashboard (Markdown): a note on when it was
written and how epochs are counted, the figure the run is ranked by, the
alerts with their remedies, the run's hyperparameters (its HParams
session), then a table of the BN layers in forward order (tag prefix,
path in the model, where it sits in the built graph: the layers around
it, before or after the activation; the kind of BN with its momentum).
Tables keep to a few short columns, so that TensorBoard's default width
breaks no word. Written as a `Summary` proto through `SummaryWriter`, so no
TensorFlow is needed on the other backends.
"""

from tensorboard.plugins.text.summary_v2 import text_pb

from bn_keras.callbacks._alerts import alert_table
from bn_keras.callbacks._figures import clipping
from bn_keras.models._placement import batchnorm_neighbours
from bn_keras.models._placement import describe
from bn_keras.models._placement import kind_of
from bn_keras.models._placement import position

TAG = "batchnorm/layers"


def placements(model):
    """`{id(bn): (path, placement text)}` for the BN layers of `model`,
    read from its graph: `"Dense -> BN -> relu (before act)"`; `{}` if the
    graph of a Functional model cannot be read (a layer whose `get_config`
    Keras cannot make)."""
    try:
        neighbours = batchnorm_neighbours(model)
    except NotImplementedError:
        return {}
    found = {}
    for path, layer, before, after in neighbours:
        text = f"{describe(before)} -> BN -> "
        text += describe(after) if after is not None else "output"
        where = position(before, after)
        found[id(layer)] = (path, f"{text} ({where})" if where else text)
    return found


def _momentum(layer):
    momentum = getattr(layer, "momentum", None)
    return f"{momentum:g}" if isinstance(momentum, float) else str(momentum)


def normalization_text(layer):
    """The kind of BN and its momentum: `"renorm (rmax 3, dmax 5), 0.99"`,
    `"ghost(16), 0.9"`, `"plain, 0.99"`."""
    text = kind_of(layer)
    if layer.renorm:
        bounds = ", ".join(f"{k} {v:.3g}" for k, v in clipping(layer).items())
        if bounds:
            text += f" ({bounds})"
    return f"{text}, {_momentum(layer)}"


def _value(value):
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def summary_markdown(rows, alerts, notes=(), hparams=None, cleared=()):
    """Markdown: the `notes` (paragraphs), the `alerts` (`Finding`s: a
    table, then what to do; then those that fired earlier and `cleared`,
    see `alert_table`), the `hparams` (a dict) as a table, then a table of
    `rows`: what a person needs first comes first, as TensorBoard shows a
    text in a card of limited height.

    `rows` are `(tag, layer, placement)` tuples, `placement` a `(path,
    text)` pair or `None`.
    """
    lines = []
    for note in notes:
        lines += [note, ""]
    lines += ["**Alerts**", "", *alert_table(alerts, cleared), ""]
    if hparams:
        lines += ["| hyperparameter | value |", "|---|---|"]
        lines += [f"| {name} | {_value(v)} |" for name, v in hparams.items()]
        lines.append("")
    if rows:
        lines += [
            "| tag | layer | placement | BN, momentum |",
            "|---|---|---|---|",
        ]
        for tag, layer, placement in rows:
            path, where = placement or (layer.name, "?")
            lines.append(
                f"| {tag} | {path} | {where} | {normalization_text(layer)} |"
            )
    return "\n".join(lines).rstrip()


def text_summary(markdown):
    """The `Summary` that carries `markdown` under `TAG`."""
    return text_pb(TAG, markdown)
