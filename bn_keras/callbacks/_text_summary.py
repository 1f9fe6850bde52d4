"""The text summary of `BatchNormMonitor`'s run: one table row per BN layer.

Shown by TensorBoard's Text dashboard (Markdown): each BN layer in forward
order with its tag prefix, its path in the model, where it sits (the
layers around it, before or after the activation), its momentum, ghost
batch size and renorm settings; under the table, the alerts the monitor
found. Written as
a `Summary` proto through `SummaryWriter`, so no TensorFlow is needed on
the other backends.
"""

import numpy as np
from tensorboard.plugins.text.summary_v2 import text_pb

from bn_keras._statistics import DEAD_GAMMA
from bn_keras._statistics import dead_channels
from bn_keras._statistics import nonfinite
from bn_keras.callbacks._figures import clipping
from bn_keras.models._placement import batchnorm_neighbours
from bn_keras.models._placement import describe
from bn_keras.models._placement import position

TAG = "batchnorm/layers"

_HEADER = (
    "| tag | layer | placement | momentum | ghost batch | renorm |\n"
    "|---|---|---|---|---|---|"
)


def placements(model):
    """`{id(bn): (path, placement text)}` for the BN layers of `model`:
    `"Dense -> BN -> relu (before act)"`; `{}` if the graph of a Functional
    model cannot be read (a layer whose `get_config` Keras cannot make)."""
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


def _renorm(layer):
    if not layer.renorm:
        return "-"
    bounds = ", ".join(f"{k} {v:.3g}" for k, v in clipping(layer).items())
    return f"yes ({bounds})" if bounds else "yes"


def layer_alerts(layer, states, constant, probe):
    """What a person should know about one layer, as short sentences.

    Args:
        layer: The BN layer.
        states: Its `read_statistics`.
        constant: Which channels' moving variance counts as constant.
        probe: Its probe figures (`{}` without a probe).
    """
    alerts = [f"non-finite {name}" for name in nonfinite(states)]
    channels = int(np.size(states.get("moving_variance")))
    if "gamma" in states:
        dead = int(np.sum(dead_channels(states["gamma"])))
        if dead:
            alerts.append(
                f"{dead}/{channels} channels dead (|gamma| < {DEAD_GAMMA:g})"
            )
    if np.any(constant):
        alerts.append(
            f"{int(np.sum(constant))}/{channels} channels constant on the "
            "training batches (left out of moving_variance/min)"
        )
    if probe.get("probe/constant_channels"):
        alerts.append(
            f"{int(probe['probe/constant_channels'])}/{channels} channels "
            "constant on the probe batch (left out of the gap)"
        )
    if "moving_variance" in states:
        variance = states["moving_variance"]
        small = int(np.sum(~constant & (variance < layer.epsilon)))
        if small:
            alerts.append(
                f"{small}/{channels} channels not constant, with a moving "
                "variance below epsilon"
            )
    return alerts


def summary_markdown(rows, note):
    """Markdown: `note`, a table of `rows`, then the alerts.

    `rows` are `(tag, layer, placement, alerts)` tuples, `placement` a
    `(path, text)` pair or `None`, `alerts` a list of sentences.
    """
    lines = [note, "", _HEADER]
    listed = []
    for tag, layer, placement, alerts in rows:
        path, where = placement or (layer.name, "?")
        ghost = getattr(layer, "virtual_batch_size", None)
        lines.append(
            f"| {tag} | {path} | {where} | {_momentum(layer)} | "
            f"{ghost or '-'} | {_renorm(layer)} |"
        )
        listed += [f"- {tag} ({path}): {alert}" for alert in alerts]
    lines.append("")
    lines += ["**Alerts**", "", *listed] if listed else ["No alerts."]
    return "\n".join(lines)


def text_summary(markdown):
    """The `Summary` that carries `markdown` under `TAG`."""
    return text_pb(TAG, markdown)
