"""The alerts of `BatchNormMonitor`: what is wrong with which layer, and
what to do about it, in the words of `bn-keras doctor`.

An alert is a `bn_keras.diagnosis.Finding` (a stable `code`, a
`severity`, the `layers`, a `message` with the evidence, a `remedy`)
made by the detectors of `bn_keras.diagnosis`: those of
`_detectors` for what a saved model shows too (non-finite statistics,
collapsed variance, dead channels), those of `_training_detectors` for
what only training shows (moving statistics lagging behind the batches,
the probe gap, batch noise on the probe, renorm clipping saturated write
after write, constant channels). The words, codes and thresholds live
there, once; this module is the monitor's side. At every epoch end the
monitor gathers what it measured about each layer in a `LayerEvidence`;
each function of `DETECTORS` feeds one detector from them. The monitor
then writes `alerts/unhealthy_layers` (how many layers have an error or a
warning: 0 for a healthy run), charted first in the Overview of every
run; for every code that has fired in the run, `alerts/<code>` (how many
layers it concerns, 0 once it clears) and a chart of it at the end of the
Overview (where TensorBoard puts the charts that only some runs have when
it merges their layouts); and the text summary's alert table
(`alert_table`). A finding names a layer `"<tag> (<path>)"`.
"""

import collections
import dataclasses

import numpy as np

from bn_keras._statistics import as_float64
from bn_keras._statistics import dead_channels as dead_gamma
from bn_keras._statistics import nonfinite
from bn_keras.callbacks._figures import clipping
from bn_keras.diagnosis import _detectors
from bn_keras.diagnosis import _training_detectors
from bn_keras.diagnosis.finding import CODES
from bn_keras.diagnosis.finding import SEVERITIES

#: Tag prefix of the alert scalars: `alerts/<code>`.
ALERTS = "alerts"

#: How many BN layers have an error or a warning: 0 for a healthy run.
UNHEALTHY = f"{ALERTS}/unhealthy_layers"

#: The codes the monitor can raise, in the order of their charts.
MONITOR_CODES = (
    "nonfinite-statistics",
    "statistics-mismatch",
    "noisy-batch-statistics",
    "renorm-clipping-saturated",
    "collapsed-variance",
    "dead-channels",
    "constant-channels",
)


@dataclasses.dataclass(frozen=True)
class LayerEvidence:
    """What the monitor knows about one BN layer at an epoch end.

    `states` are its statistics (`read_statistics`); `constant`, which
    channels were constant on the training batches since the previous
    write; `probe`, its probe figures of the last write (`{}` without
    `probe_data`) and `batch`, its `ProbeBatch` (the smallest batch it
    normalizes on the probe, the median gap); `window`, the training
    batches' statistics over the epoch (`window_statistics`, or `None`);
    `clipped`, renorm's clipped fraction at each write so far; `bounds`,
    renorm's bounds in force; `warmup`, `(end, last)` while a
    `RenormClipping` schedule keeps `rmax = 1`, `dmax = 0` until step `end`,
    the fit ending at step `last` (`None` when unknown).
    """

    tag: str
    path: str
    layer: object
    states: dict
    constant: np.ndarray
    probe: dict = dataclasses.field(default_factory=dict)
    batch: tuple | None = None
    window: object = None
    clipped: tuple = ()
    bounds: dict = dataclasses.field(default_factory=dict)
    warmup: tuple | None = None

    @property
    def name(self):
        """`tag (path)`, how findings name a layer."""
        return f"{self.tag} ({self.path})"

    @property
    def channels(self):
        return int(np.size(self.states.get("moving_variance")))


def tag_of(name):
    """The tag of a layer named `"<tag> (<path>)"` (tags hold no space)."""
    return name.split(" ", 1)[0]


# -- the detectors, fed from the evidence ---------------------------------


def nonfinite_statistics(layers):
    """NaN or an infinity in a layer's statistics, gamma or beta."""
    return _detectors.nonfinite_statistics(
        {item.name: nonfinite(item.states) for item in layers}
    )


def _lag(item):
    window = item.window
    kept = window.kept
    figures = _detectors.statistics_distance(
        window.moving_mean[kept],
        window.moving_variance[kept],
        window.mean[kept],
        window.variance[kept],
        item.layer.epsilon,
    )
    clipped = None
    if item.layer.renorm:  # a write without room: clipped throughout
        clipped = item.clipped[-1] if item.clipped else float("nan")
        clipped = 1.0 if clipped is None else clipped
    return item.name, figures, item.layer.momentum, clipped


def _probe_figures(layers):
    """`{name: median gap}`, and `{name: values per channel}` and `{name:
    (samples, ghost)}` of the smallest batch each layer normalizes on the
    probe."""
    probed = [item for item in layers if item.batch is not None]
    return (
        {item.name: item.batch.median_gap for item in probed},
        {item.name: item.batch.rows for item in probed},
        {item.name: (item.batch.samples, item.batch.ghost) for item in probed},
    )


def statistics_mismatch(layers):
    """Moving statistics lagging behind the training batches; a probe gap
    beyond batch noise in the other layers."""
    windowed = [item for item in layers if item.window is not None]
    steps = max((item.window.steps for item in windowed), default=0)
    gaps, rows, _ = _probe_figures(layers)
    lagging = _training_detectors.lagging_statistics(
        [_lag(item) for item in windowed], steps, gaps
    )
    explained = lagging.layers if lagging is not None else ()
    return [lagging, _training_detectors.probe_gap(gaps, rows, explained)]


def noisy_batch_statistics(layers):
    """A probe gap that the noise of small batches explains."""
    return _training_detectors.probe_batch_noise(*_probe_figures(layers))


def renorm_clipping_saturated(layers):
    """Renorm's r or d clipped on nearly every channel, write after write."""
    renorm = [item for item in layers if item.clipped]
    return _training_detectors.renorm_clipping_saturated(
        {item.name: list(item.clipped) for item in renorm},
        {item.name: item.bounds for item in renorm},
        {item.name: item.warmup for item in renorm if item.warmup},
    )


def collapsed_variance(layers):
    """A moving variance below epsilon in channels whose training batches'
    variance is above it (or, before an epoch has ended, that are not
    constant)."""
    found = {}
    for item in layers:
        variance = item.states.get("moving_variance")
        if variance is None:
            continue
        varies = ~item.constant
        if item.window is not None:
            varies = item.window.kept & (
                item.window.variance > item.layer.epsilon
            )
        found[item.name] = (variance, varies, item.layer.epsilon)
    return _detectors.collapsed_variance(found)


def dead_channels(layers):
    """Channels whose `|gamma|` is about 0."""
    return _detectors.dead_channels(
        {
            item.name: (
                int(np.sum(dead_gamma(item.states["gamma"]))),
                item.channels,
            )
            for item in layers
            if "gamma" in item.states
        }
    )


def constant_channels(layers):
    """Channels constant on the training batches or on the probe batch."""
    return _training_detectors.constant_channels(
        {
            item.name: (
                int(np.sum(item.constant)),
                int(item.probe.get("probe/constant_channels", 0)),
                item.channels,
            )
            for item in layers
        }
    )


#: The detectors the monitor runs at every epoch end, in this order; each
#: returns a `Finding`, `None` or a list of them.
DETECTORS = (
    nonfinite_statistics,
    statistics_mismatch,
    noisy_batch_statistics,
    renorm_clipping_saturated,
    collapsed_variance,
    dead_channels,
    constant_channels,
)


def collect(layers, detectors=DETECTORS):
    """Every finding of `detectors` on `layers` (`LayerEvidence`s), errors
    first, then warnings, then notes, each kind in detector order."""
    findings = []
    for detector in detectors:
        found = detector(layers)
        found = found if isinstance(found, list) else [found]
        findings += [finding for finding in found if finding is not None]
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


class AlertLog:
    """The alerts of one `fit`: the findings of the last epoch end, the
    codes that have fired (with their severity, for the Overview's
    charts), each renorm layer's clipped fraction write after write, and
    what fired during training, for the text summary.

    Args:
        layers: The BN layers, `[(tag, layer)]`.
        params: The callbacks' `params` of `fit` (`epochs`, `steps`).
    """

    def __init__(self, layers, params):
        self.findings = []
        self.fired = {}  # code: severity
        self.clipped = {}  # tag: [clipped fraction of each write]
        self.seen = {}  # (code, remedy): [finding, first, last, tags]
        steps, epochs = (
            (params or {}).get("steps"),
            (params or {}).get("epochs"),
        )
        self._fit_end = {}  # id(layer): the renorm step at the fit's end
        for _, layer in layers:
            if getattr(layer, "renorm_schedule", None) is not None:
                start = _renorm_step(layer)
                known = steps and epochs and start is not None
                self._fit_end[id(layer)] = (
                    start + int(steps) * int(epochs) if known else None
                )

    def record_write(self, tag, figures, layer):
        """Keeps renorm's clipped fraction of a write: of the training
        batch (with the bounds of that batch, the step before the layer's),
        else of the probe (ghost-batch renorm; the bounds now); `None` when
        those bounds allow no correction (`rmax` 1, `dmax` 0)."""
        for key, back in (
            ("renorm/clipped_fraction", 1),
            ("probe/clipped_fraction", 0),
        ):
            if key in figures:
                step = _renorm_step(layer)
                if step is not None:
                    step = max(step - back, 0)
                bounds = clipping(layer, step)
                fraction = float(figures[key])
                if bounds.get("rmax", np.inf) <= 1:
                    if bounds.get("dmax", np.inf) <= 0:
                        fraction = None
                self.clipped.setdefault(tag, []).append(fraction)
                return

    def warmup(self, layer):
        """`(end, last)` while `layer`'s `RenormClipping` schedule keeps
        `rmax = 1`, `dmax = 0` (until step `end`; the fit ends at `last`)."""
        end = getattr(
            getattr(layer, "renorm_schedule", None), "warmup_steps", None
        )
        step = _renorm_step(layer)
        if end is None or step is None or step >= end:
            return None
        return end, self._fit_end.get(id(layer))

    def update(self, findings, epoch=None):
        """Takes the findings of an epoch end (`epoch` counted from 1; `None`
        as training begins); returns whether a code fired for the first
        time."""
        self.findings = findings
        new = {
            f.code: f.severity
            for f in reversed(findings)
            if f.code not in self.fired
        }
        self.fired.update(new)
        if epoch is not None:
            for finding in findings:
                key = (finding.code, finding.remedy)
                entry = self.seen.setdefault(key, [finding, epoch, epoch, []])
                entry[0], entry[2] = finding, epoch
                entry[3] += [
                    t for t in map(tag_of, finding.layers) if t not in entry[3]
                ]
        return bool(new)

    def cleared(self):
        """`[(finding, first, last, tags)]`: what fired during training and
        not at the last epoch end, in the order it first fired."""
        current = {(f.code, f.remedy) for f in self.findings}
        return [tuple(e) for key, e in self.seen.items() if key not in current]


def _renorm_step(layer):
    step = getattr(layer, "renorm_step", None)
    return None if step is None else int(as_float64(step))


def unhealthy_layers(findings):
    """How many layers an error or a warning of `findings` concerns."""
    return len(
        {
            tag_of(name)
            for finding in findings
            if finding.severity in ("error", "warning")
            for name in finding.layers
        }
    )


def counts(findings):
    """`{code: number of layers}` of `findings`, in `MONITOR_CODES`
    order."""
    layers = collections.defaultdict(set)
    for finding in findings:
        layers[finding.code].update(tag_of(name) for name in finding.layers)
    order = {code: i for i, code in enumerate(MONITOR_CODES)}
    return {
        code: len(layers[code])
        for code in sorted(layers, key=lambda c: order.get(c, len(order)))
    }


def chart_title(code, severity):
    """The title of an alert's chart in the Overview: its severity, code,
    what it counts, and where the remedy is."""
    return (
        f"{severity.upper()} {code}, how many BN layers: {CODES[code]} "
        "(what to do: Text)"
    )


#: How many layers the alert table names before it counts the rest.
_LAYERS_NAMED = 3


def _layers_cell(names):
    tags = [tag_of(name) for name in names]
    named = ", ".join(tags[:_LAYERS_NAMED])
    rest = len(tags) - _LAYERS_NAMED
    return f"{named} and {rest} more" if rest > 0 else named


def _epochs(first, last):
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def alert_table(findings, cleared=()):
    """Markdown lines: `"No alerts."`, or a table of `findings` (severity,
    code, layers' tags: short cells, so that TensorBoard's narrowest text
    card breaks no word), then a list with each finding's message, with
    its evidence, and remedy. Then, if any, the alerts that fired earlier
    in training and cleared (`AlertLog.cleared`), with the epochs they
    fired at and their last message."""
    lines = ["No alerts."] if not findings else []
    if findings:
        lines = ["| severity | alert | layers |", "|---|---|---|"]
        lines += [
            f"| {f.severity} | {f.code} | {_layers_cell(f.layers)} |"
            for f in findings
        ]
        lines.append("")
        lines += [
            f"- **{f.code}** ({f.severity}): {f.message} *What to do:* "
            f"{f.remedy}"
            for f in findings
        ]
    if cleared:
        lines += ["", "Earlier in training, cleared since:", ""]
        lines += ["| epochs | severity | alert | layers |", "|---|---|---|---|"]
        lines += [
            f"| {_epochs(first, last)} | {f.severity} | {f.code} | "
            f"{_layers_cell(tags)} |"
            for f, first, last, tags in cleared
        ]
        lines.append("")
        lines += [
            f"- **{f.code}** ({f.severity}, {_epochs(first, last)}"
            f"{'' if first == last else f'; as at epoch {last}'}): "
            f"{f.message} *What to do:* {f.remedy}"
            for f, first, last, _ in cleared
        ]
    return lines
