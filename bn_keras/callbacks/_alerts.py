"""The alerts of `BatchNormMonitor`: what is wrong with which layer, and
what to do about it.

An alert is a finding with a stable `code` (what the alert scalar
`alerts/<code>` and its chart in the Overview are named after), a `severity`
(`"error"`, `"warning"` or `"info"`), the `layers` it concerns (their tag
prefixes), a `message` naming them with the evidence, and a `remedy`. The
monitor collects them at every epoch end by running each detector of
`DETECTORS` on the `LayerEvidence` of every layer; a detector is a
function from that list to a list of `Alert`s, so a new one (such as the
`bn_keras.diagnosis` detectors, fed from the probe gap, the drift and the
renorm clipping the monitor measures) is one more entry. The monitor then
writes `alerts/unhealthy_layers` (how many layers have an error or a
warning: 0 for a healthy run), charted first in the Overview of every
run; for every code that has fired in the run, `alerts/<code>` (how many
layers it concerns, 0 once it clears) and a chart of it at the end of the
Overview (where TensorBoard puts the charts that only some runs have when
it merges their layouts); and the text summary's alert table
(`alert_table`).
"""

import collections
import dataclasses

import numpy as np

from bn_keras._statistics import DEAD_GAMMA
from bn_keras._statistics import dead_channels
from bn_keras._statistics import nonfinite

#: Tag prefix of the alert scalars: `alerts/<code>`.
ALERTS = "alerts"

#: How many BN layers have an error or a warning: 0 for a healthy run.
UNHEALTHY = f"{ALERTS}/unhealthy_layers"

SEVERITIES = ("error", "warning", "info")


@dataclasses.dataclass(frozen=True)
class Alert:
    """One finding of the monitor, about one or more BN layers."""

    code: str
    severity: str
    layers: tuple  # tag prefixes
    message: str
    remedy: str


@dataclasses.dataclass(frozen=True)
class LayerEvidence:
    """What the monitor knows about one BN layer at an epoch end.

    `states` are its statistics (`read_statistics`), `constant` which
    channels' moving variance counts as constant (the training batches
    since the previous write had no variance in them), `probe` its probe
    figures (`{}` without `probe_data`), `figures` every figure written
    for it at its last write.
    """

    tag: str
    path: str
    layer: object
    states: dict
    constant: np.ndarray
    probe: dict
    figures: dict

    @property
    def name(self):
        """`tag (path)`, how messages name a layer."""
        return f"{self.tag} ({self.path})"

    @property
    def channels(self):
        return int(np.size(self.states.get("moving_variance")))


#: Per code: (severity, what the chart's title says, the remedy).
CODES = {
    "nonfinite-statistics": (
        "error",
        "layers with NaN or infinite statistics",
        "The inference output of these layers is wrong. Look for NaN or "
        "Inf in the data, or a diverging loss: lower the learning rate, "
        "clip gradients, or stop with stop_on_nonfinite=True.",
    ),
    "collapsed-variance": (
        "warning",
        "layers with a moving variance below epsilon",
        "Inference divides these channels by about sqrt(epsilon): check "
        "the input's scale (standardize it, or use input_batchnorm) and "
        "recalibrate the statistics (bn_keras.recalibrate) on training "
        "data.",
    ),
    "dead-channels": (
        "info",
        "layers with dead channels (gamma near 0)",
        "Dead channels output beta whatever their input; a few cost "
        "nothing. Many of them point at too strong a weight decay on gamma "
        "or too high a learning rate.",
    ),
    "constant-channels": (
        "info",
        "layers with constant channels",
        "Nothing to do when the data holds them (a pixel that is 0 in "
        "every image); they are left out of the gap and of the smallest "
        "moving variance. Dead ReLU units upstream show here too.",
    ),
}


def make_alert(code, items):
    """The `Alert` of `code` from `(LayerEvidence, detail)` pairs, with
    the severity and remedy of `CODES`."""
    severity, _, remedy = CODES[code]
    message = "; ".join(f"{item.name}: {detail}" for item, detail in items)
    return Alert(
        code, severity, tuple(item.tag for item, _ in items), message, remedy
    )


def _fired(code, items):
    return [make_alert(code, items)] if items else []


def nonfinite_statistics(layers):
    """Layers with a NaN or an infinity in their statistics."""
    items = []
    for item in layers:
        bad = nonfinite(item.states)
        if bad:
            items.append((item, f"non-finite {', '.join(bad)}"))
    return _fired("nonfinite-statistics", items)


def collapsed_variance(layers):
    """Layers whose moving variance is below epsilon in channels that are
    not constant."""
    items = []
    for item in layers:
        variance = item.states.get("moving_variance")
        if variance is None:
            continue
        small = int(np.sum(~item.constant & (variance < item.layer.epsilon)))
        if small:
            items.append(
                (
                    item,
                    f"{small}/{item.channels} channels not constant, with a "
                    f"moving variance below epsilon ({item.layer.epsilon:g})",
                )
            )
    return _fired("collapsed-variance", items)


def dead_gamma(layers):
    """Layers with channels whose `|gamma|` is below `DEAD_GAMMA`."""
    items = []
    for item in layers:
        if "gamma" not in item.states:
            continue
        dead = int(np.sum(dead_channels(item.states["gamma"])))
        if dead:
            items.append(
                (
                    item,
                    f"{dead}/{item.channels} channels dead (abs(gamma) < "
                    f"{DEAD_GAMMA:g})",
                )
            )
    return _fired("dead-channels", items)


def constant_channels(layers):
    """Layers with channels constant on the training batches or on the
    probe batch."""
    items = []
    for item in layers:
        parts = []
        if np.any(item.constant):
            parts.append(
                f"{int(np.sum(item.constant))}/{item.channels} constant on "
                "the training batches"
            )
        on_probe = int(item.probe.get("probe/constant_channels", 0))
        if on_probe:
            parts.append(f"{on_probe}/{item.channels} on the probe batch")
        if parts:
            items.append((item, "channels " + ", ".join(parts)))
    return _fired("constant-channels", items)


#: The detectors the monitor runs at every epoch end, in this order.
DETECTORS = (
    nonfinite_statistics,
    collapsed_variance,
    dead_gamma,
    constant_channels,
)


def collect(layers, detectors=DETECTORS):
    """Every alert of `detectors` on `layers` (`LayerEvidence`s), errors
    first, then warnings, then notes, each kind in detector order."""
    alerts = [alert for detector in detectors for alert in detector(layers)]
    return sorted(alerts, key=lambda alert: SEVERITIES.index(alert.severity))


def unhealthy_layers(alerts):
    """How many layers an error or a warning of `alerts` concerns."""
    return len(
        {
            tag
            for alert in alerts
            if alert.severity in ("error", "warning")
            for tag in alert.layers
        }
    )


def counts(alerts):
    """`{code: number of layers}` of `alerts`."""
    result = collections.Counter()
    for alert in alerts:
        result[alert.code] += len(alert.layers)
    return dict(result)


def chart_title(code):
    """The title of an alert's chart in the Overview: its severity, what
    it counts, its code, and where the remedy is."""
    severity, title, _ = CODES.get(code, ("warning", code, ""))
    return f"{severity.upper()}: {title} ({code}; what to do: Text)"


#: How many layers the alert table names before it counts the rest.
_LAYERS_NAMED = 3


def _layers_cell(layers):
    named = ", ".join(layers[:_LAYERS_NAMED])
    rest = len(layers) - _LAYERS_NAMED
    return f"{named} and {rest} more" if rest > 0 else named


def alert_table(alerts):
    """Markdown lines: `"No alerts."`, or a table of `alerts` (severity,
    code, layers: short cells, so that TensorBoard's narrowest text card
    breaks no word), then a list with each alert's evidence and remedy."""
    if not alerts:
        return ["No alerts."]
    lines = ["| severity | alert | layers |", "|---|---|---|"]
    lines += [
        f"| {a.severity} | {a.code} | {_layers_cell(a.layers)} |"
        for a in alerts
    ]
    lines.append("")
    lines += [
        f"- **{a.code}**: {a.message}. *What to do:* {a.remedy}" for a in alerts
    ]
    return lines
