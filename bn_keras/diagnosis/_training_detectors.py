"""The detectors of what only `BatchNormMonitor` sees during training.

Pure functions of plain figures, as those of `_detectors` (whose
thresholds, words and remedies they use: one vocabulary for the doctor
and the monitor), for what a saved model cannot show: how the moving
statistics follow the training batches, the train/inference gap on the
monitor's probe batch, renorm's clipping write after write, channels
that are constant on the training batches. The inputs:

- `lagging_statistics(distances, steps)`: `[(layer, figures, momentum,
  clipped)]` with `figures = statistics_distance(moving_mean,
  moving_variance, mean, variance, epsilon)`, where `mean` and `variance`
  are the training batches' over the last `steps` steps, recovered
  exactly from the update of the moving statistics (the monitor's
  `window_statistics`), and `clipped` a renorm layer's last clipped
  fraction (`None` for other layers); reported as `statistics-mismatch`.
- `probe_gap(gaps, rows, explained)`: each layer's probe gap in its
  median channel (`{layer: gap}`; the monitor's `1_probe_gap` is the
  mean, which a few odd channels, such as ReLU units active on one sample,
  can pull up) and the number of values per channel in each batch the
  layer normalizes on the probe (the probe batch, or each of its ghost
  batches), one number or `{layer: rows}`; reported as
  `statistics-mismatch`.
- `probe_batch_noise(gaps, rows, samples)`: the same figures, for the
  gap that batch noise alone explains; reported as
  `noisy-batch-statistics`.
- `renorm_clipping_saturated(fractions, bounds, warmups)`: `{layer:
  [clipped_fraction of each write]}`, oldest first (the monitor's
  `renorm/clipped_fraction`), the bounds in force and the warm-up of a
  `RenormClipping` schedule.
- `constant_channels(layers)`: `{layer: (constant on the training
  batches, constant on the probe, channels)}`.
"""

import numpy as np

from bn_keras.diagnosis._detectors import EVIDENCE_LAYERS
from bn_keras.diagnosis._detectors import MEAN_DISTANCE
from bn_keras.diagnosis._detectors import NAMED_LAYERS
from bn_keras.diagnosis._detectors import PROBE_GAP
from bn_keras.diagnosis._detectors import PROBE_NOISE_FACTOR
from bn_keras.diagnosis._detectors import REMEDY_NOISY
from bn_keras.diagnosis._detectors import REMEDY_RECALIBRATE
from bn_keras.diagnosis._detectors import SATURATED_FRACTION
from bn_keras.diagnosis._detectors import SATURATED_WRITES
from bn_keras.diagnosis._detectors import VARIANCE_FACTOR
from bn_keras.diagnosis._detectors import names
from bn_keras.diagnosis._detectors import share
from bn_keras.diagnosis.finding import Finding

REMEDY_LAGGING = (
    "Lower the momentum so that the moving statistics keep up (a momentum "
    "m averages over about 1 / (1 - m) steps: 0.99 over 100, 0.9 over 10), "
    "or train more steps. Precise statistics need no momentum: "
    "`bn_keras.callbacks.PreciseBN(data)` recomputes them at the end of "
    'training (every epoch with `on="epoch_end"`), '
    "`bn_keras.recalibrate(model, data)` after it."
)
REMEDY_RENORM = (
    "Give r and d room: bounds such as the paper's final ones, "
    '`renorm_clipping={"rmax": 3.0, "dmax": 5.0}`, or a schedule whose '
    "warm-up ends within the run, `renorm_clipping="
    "bn_keras.layers.RenormClipping().scaled(total_steps)` (the paper's "
    "schedule compressed to `total_steps` training steps). If r or d stay "
    "clipped at such bounds, lower `renorm_momentum` (e.g. 0.9) so that the "
    "renorm statistics keep up with the batches."
)


def batch_noise(rows):
    """The probe gap that batch noise alone gives with `rows` values per
    channel in a batch: about `sqrt(1.5 / rows)` (see `PROBE_GAP`).

    >>> bn_keras.diagnosis._training_detectors.batch_noise(6)
    0.5
    """
    return float(np.sqrt(1.5 / max(rows, 1)))


def _rows(rows, name):
    return rows[name] if isinstance(rows, dict) else rows


def _more(parts):
    extra = len(parts) - NAMED_LAYERS
    return "; ".join(parts[:NAMED_LAYERS]) + (
        f"; and {extra} more" if extra > 0 else ""
    )


def _median_distance(figures):
    """`(mean distance, variance factor)` of the median finite channel:
    `median(|distance|)` and `exp(median(|log ratio|))`."""
    mean = np.asarray(figures["mean"], dtype=np.float64)
    log_variance = np.abs(np.asarray(figures["log_variance"], np.float64))
    mean = mean[np.isfinite(mean)]
    log_variance = log_variance[np.isfinite(log_variance)]
    return (
        float(np.median(mean)) if mean.size else 0.0,
        float(np.exp(np.median(log_variance))) if log_variance.size else 1.0,
    )


def _whose(name, listed):
    """How a message that names `listed` refers to `name` again."""
    return "its" if len(listed) == 1 else f"{name}'s"


def lagging_statistics(distances, steps, gaps=None):
    """`statistics-mismatch` (a warning) from training: layers whose
    moving statistics lag behind the batches they average.

    A layer lags when, in its median channel, the moving mean is at least
    `MEAN_DISTANCE` of the batches' standard deviation away from the
    batches' mean, or the moving variance at least `VARIANCE_FACTOR` times
    off theirs (the median: a few odd channels, such as ReLU units active
    on a few samples, do not make a layer lag). A renorm layer counts only
    while its `r` or `d` is clipped on at least `SATURATED_FRACTION` of
    the channels: unclipped, its correction trains it on what inference
    computes, however far the batches are. `distances`: `[(layer, figures,
    momentum, clipped)]` (see the module's docstring); `steps`: how many
    training steps the batches' statistics cover; `gaps`: optional
    `{layer: probe gap}`, for the message.
    """
    lagging = []
    for name, figures, momentum, clipped in distances:
        if clipped is not None and not clipped >= SATURATED_FRACTION:
            continue
        mean, factor = _median_distance(figures)
        if mean >= MEAN_DISTANCE or factor >= VARIANCE_FACTOR:
            lagging.append(
                {
                    "layer": name,
                    "mean_distance": mean,
                    "variance_factor": factor,
                    "momentum": float(momentum),
                }
            )
    if not lagging:
        return None
    worst = max(
        lagging,
        key=lambda e: max(
            e["mean_distance"] / MEAN_DISTANCE,
            np.log(e["variance_factor"]) / np.log(VARIANCE_FACTOR),
        ),
    )
    listed = [e["layer"] for e in lagging]
    gap = (gaps or {}).get(worst["layer"])
    probe = ""
    if gap is not None and np.isfinite(gap):
        probe = (
            f" On the probe batch, {_whose(worst['layer'], listed)} output "
            f"in training and in inference differs by {gap:.2g} of its "
            "spread in the median channel."
        )
    return Finding(
        "statistics-mismatch",
        "warning",
        listed,
        f"The moving statistics of {names(listed)} lag behind the training "
        f"batches: over the last {steps} training steps, "
        f"{_whose(worst['layer'], listed)} moving mean was "
        f"{worst['mean_distance']:.2g} of the batches' standard deviation "
        "away from theirs and its moving variance off theirs by a factor "
        f"{worst['variance_factor']:.3g}, in its median channel "
        f"(momentum {worst['momentum']:g}: each step moves the statistics "
        f"{share(1 - worst['momentum'])} of the way to the batch's). "
        f"Inference, validation included, normalizes with them.{probe}",
        {"steps": int(steps), "layers": lagging[:EVIDENCE_LAYERS]},
        REMEDY_LAGGING,
    )


def probe_gap(gaps, rows, explained=()):
    """`statistics-mismatch` (a warning) from the monitor's probe: layers
    whose probe gap is at least `PROBE_GAP` and `PROBE_NOISE_FACTOR` times
    the gap batch noise alone gives with `rows` values per channel
    (`batch_noise`). Layers in `explained` (reported as lagging) are left
    out."""
    off = {}
    for name, gap in gaps.items():
        noise = batch_noise(_rows(rows, name))
        limit = max(PROBE_GAP, PROBE_NOISE_FACTOR * noise)
        if name not in explained and np.isfinite(gap) and gap >= limit:
            off[name] = (float(gap), noise)
    if not off:
        return None
    worst = max(off, key=lambda name: off[name][0])
    gap, noise = off[worst]
    return Finding(
        "statistics-mismatch",
        "warning",
        list(off),
        f"On the probe batch, {names(list(off))} "
        f"normalize{'s' if len(off) == 1 else ''} far from how inference "
        "does: normalized with the batch's statistics (as in training) and "
        "with the moving ones (as in inference), "
        f"{_whose(worst, list(off))} output differs by {gap:.2g} of its "
        "spread in the median channel, where batch noise alone gives "
        f"about {noise:.2g}. The "
        "moving statistics do not match the batch: they lag behind the "
        "weights (too few steps for the momentum), or the probe comes from "
        "other data than training.",
        {
            "probe_gap": {name: g for name, (g, _) in off.items()},
            "batch_noise": {name: e for name, (_, e) in off.items()},
        },
        REMEDY_RECALIBRATE,
    )


def probe_batch_noise(gaps, rows, batches=None):
    """`noisy-batch-statistics` (a warning) from the monitor's probe:
    layers whose batches on the probe hold so few values per channel
    (`rows`) that batch noise alone gives a gap of at least `PROBE_GAP`,
    and whose gap is at least that but under `PROBE_NOISE_FACTOR` times
    the noise (beyond, `probe_gap` reports a mismatch). `batches`:
    optional `{layer: (samples, ghost)}`, the samples in each batch it
    normalizes and whether those are ghost batches."""
    noisy = {}
    for name, gap in gaps.items():
        count = _rows(rows, name)
        noise = batch_noise(count)
        if noise >= PROBE_GAP and PROBE_GAP <= gap < PROBE_NOISE_FACTOR * noise:
            noisy[name] = (float(gap), noise, int(count))
    if not noisy:
        return None
    listed = list(noisy)
    worst = max(listed, key=lambda name: noisy[name][0])
    gap, noise, count = noisy[worst]
    size, ghost = (batches or {}).get(worst, (None, False))
    kind = "ghost batches" if ghost else "batches"
    return Finding(
        "noisy-batch-statistics",
        "warning",
        listed,
        f"On the probe batch, {names(listed)} "
        f"normalize{'s' if len(listed) == 1 else ''} {kind} of only {count} "
        "values per channel"
        + (f" ({size} samples)" if size else "")
        + f": normalized so, as in training, {_whose(worst, listed)} output "
        f"differs from inference's by {gap:.2g} of its spread in the median "
        f"channel, about what batch noise alone gives ({noise:.2g}). "
        "The statistics of such small batches are too noisy for what "
        "inference uses.",
        {
            "probe_gap": {name: g for name, (g, _, _) in noisy.items()},
            "batch_noise": {name: e for name, (_, e, _) in noisy.items()},
            "rows": {name: n for name, (_, _, n) in noisy.items()},
        },
        REMEDY_NOISY,
    )


def _clipping_words(name, bounds, warmup):
    """Why `name`'s r and d stay clipped, from its bounds and warm-up."""
    if warmup is not None:
        end, last = warmup
        return (
            f": the RenormClipping schedule of {name} keeps rmax 1 and dmax "
            f"0 until step {end}, after this fit's last step ({last}), so "
            "the layer trains as plain batch normalization throughout."
        )
    if _no_room(bounds):
        return (
            f": rmax {bounds['rmax']:g} and dmax {bounds['dmax']:g} allow no "
            f"correction, so {name} trains as plain batch normalization."
        )
    shown = ", ".join(f"{k} {v:g}" for k, v in bounds.items())
    return (
        (f" ({shown} in {name})" if shown else "")
        + ": the correction stays at its bounds, so the layer trains as "
        "plain batch normalization with a bounded correction; its renorm "
        "statistics are far from the batches' (a renorm momentum too high "
        "for the run, or batches that differ that much)."
    )


def _no_room(bounds):
    """Whether `bounds` clip every `r` to 1 and every `d` to 0."""
    return bounds.get("rmax", np.inf) <= 1 and bounds.get("dmax", np.inf) <= 0


def _saturated(values, permanent):
    """The last `SATURATED_WRITES` clipped fractions if all are at least
    `SATURATED_FRACTION`, else `None`; a write without room (`None`)
    counts as clipped only when the layer has no room for good."""
    recent = [
        (1.0 if permanent else 0.0) if value is None else float(value)
        for value in values[-SATURATED_WRITES:]
    ]
    if len(recent) < SATURATED_WRITES or min(recent) < SATURATED_FRACTION:
        return None
    return recent


def renorm_clipping_saturated(fractions, bounds=None, warmups=None):
    """`renorm-clipping-saturated` (a warning): renorm layers whose `r` or
    `d` was clipped on at least `SATURATED_FRACTION` of the channels in
    each of the last `SATURATED_WRITES` writes.

    `fractions`: `{layer: [clipped fraction of each write]}`, `None` for a
    write whose bounds allowed no correction (`rmax` 1 and `dmax` 0: all
    clipped by construction); `bounds`: optional `{layer: {"rmax": r,
    "dmax": d}}`, the bounds in force; `warmups`: optional `{layer: (end,
    last)}` for the layers whose `RenormClipping` schedule is still in its
    warm-up until step `end`, the fit ending at step `last` (`None` when
    unknown). Bounds without room count only when they stay so: fixed
    ones, or a warm-up that lasts past the fit (one that ends within it, or
    may, is what the schedule intends).
    """
    bounds, warmups = bounds or {}, warmups or {}
    saturated = {}
    for name, values in fractions.items():
        end, last = warmups.get(name, (None, None))
        relaxes = end is not None and (last is None or end <= last)
        permanent = _no_room(bounds.get(name, {})) and not relaxes
        recent = _saturated(values, permanent)
        if recent is not None:
            saturated[name] = recent
    if not saturated:
        return None
    listed = list(saturated)
    first = listed[0]
    return Finding(
        "renorm-clipping-saturated",
        "warning",
        listed,
        f"Batch renormalization in {names(listed)} had r or d clipped on "
        f"nearly every channel in each of the last {SATURATED_WRITES} writes"
        + _clipping_words(first, bounds.get(first, {}), warmups.get(first)),
        {
            "clipped_fraction": saturated,
            "bounds": {name: bounds[name] for name in listed if name in bounds},
            "warmup": {
                name: list(warmups[name]) for name in listed if name in warmups
            },
        },
        REMEDY_RENORM,
    )


def constant_channels(layers):
    """`constant-channels` (info): `{layer: (constant on the training
    batches, constant on the probe batch, channels)}`."""
    parts = []
    found = {}
    for name, (training, probe, channels) in layers.items():
        if not (training or probe):
            continue
        found[name] = [int(training), int(probe), int(channels)]
        where = [
            f"{count}/{channels} on the {data}"
            for count, data in (
                (training, "training batches"),
                (probe, "probe batch"),
            )
            if count
        ]
        parts.append(f"{name}: {', '.join(where)}")
    if not found:
        return None
    return Finding(
        "constant-channels",
        "info",
        list(found),
        "Channels whose input holds one value, with no variance to "
        f"normalize: {_more(parts)}. They are left out of the probe gap and "
        "of the smallest moving variance.",
        {"constant_channels": found},
        "Nothing to do when the data holds them (a pixel that is 0 in every "
        "image). A ReLU unit upstream that is 0 on every input (a dead unit) "
        "shows here too.",
    )
