"""Overhead of `bn_keras.callbacks.BatchNormMonitor` on `model.fit`.

`keras.applications.MobileNetV2(alpha=0.35, weights=None)` (52 batch
normalization layers) on random 64x64x3 images in 10 classes, batch 32,
`--steps` batches an epoch, `--epochs` epochs. Each round times `fit`
without the monitor, with it at `update_freq="epoch"` and with it every 50
batches (histograms on, as by default; `--probe` adds a run every 50
batches with a probe batch of 32 images), in an order that rotates from
round to round, in the same process, each monitored `fit` with a new
monitor writing to a new folder, as a user's would. The overhead is the
ratio of each monitored time to the unmonitored one of the same round,
in wall-clock time and in the process's CPU time (less disturbed by other
processes on a shared machine). Prints the median ratios over the rounds
with their min and max, and, least sensitive to a busy machine, the share
of each monitored `fit` spent inside the monitor's hooks (which misses
only what the monitor costs outside them: Keras dispatching batch ends
synchronously when a callback has a batch-end hook), then each target of
issue #12 with PASS or MISS on the three figures.

    python benchmarks/bench_callbacks.py [--rounds 7] [--epochs 2]
"""

import argparse
import functools
import itertools
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _timing import interleaved_timings  # noqa: E402
from _timing import spread  # noqa: E402

import bn_keras  # noqa: E402

IMAGE_SIZE = 64
BATCH_SIZE = 32
EVERY = 50

#: The targets of issue #12: the monitor's share of `fit`.
TARGETS = {'update_freq="epoch"': 0.02, f"every {EVERY} batches": 0.05}


def build_model():
    model = keras.applications.MobileNetV2(
        alpha=0.35,
        weights=None,
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
        classes=10,
        classifier_activation=None,
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def timed_hooks(callback, spent):
    """Adds the time spent in the callback's hooks to `spent[0]`.

    Hooks left at Keras's default are not wrapped, so that `fit` still
    sees them as defaults (and may dispatch batch ends asynchronously).
    """
    for hook in (
        "on_train_begin",
        "on_train_batch_begin",
        "on_train_batch_end",
        "on_epoch_end",
        "on_train_end",
    ):
        method = getattr(callback, hook)
        if getattr(method, "_is_default", False):
            continue

        def timed(*args, _method=method, **kwargs):
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start

        setattr(callback, hook, timed)


def configurations(probe):
    """`{name: BatchNormMonitor keyword arguments or None}`."""
    configs = {
        "no monitor": None,
        'update_freq="epoch"': {"update_freq": "epoch"},
        f"every {EVERY} batches": {"update_freq": EVERY},
    }
    if probe is not None:
        configs[f"every {EVERY} batches, probe"] = {
            "update_freq": EVERY,
            "probe_data": probe,
        }
    return configs


def measure(rounds=7, epochs=2, steps=100, probe=False, names=None):
    """Times `fit` with and without the monitor, interleaved in rounds.

    Returns `{config: {"fit": [s per round], "cpu": [CPU s per round],
    "hooks": [share per round]}}` for the configurations of
    `configurations` (those in `names` only, when given); "hooks" is the
    share of each `fit` spent in the monitor's hooks. A timed call makes
    the monitor, then fits: making it takes microseconds and writes
    nothing (its files open when `fit` starts).
    """
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * BATCH_SIZE, IMAGE_SIZE, IMAGE_SIZE, 3))
    x = x.astype("float32")
    y = rng.integers(0, 10, size=len(x))
    model = build_model()
    log_root = tempfile.mkdtemp(prefix="bench_callbacks_")
    configs = configurations(x[:BATCH_SIZE] if probe else None)
    if names is not None:
        configs = {name: configs[name] for name in names}
    runs = itertools.count()

    def timed_fit(name):
        """`fit` with a new monitor of configuration `name` (writing to a
        new folder), or with none; returns the seconds spent in its
        hooks."""
        callbacks, spent = [], [0.0]
        if configs[name] is not None:
            monitor = bn_keras.callbacks.BatchNormMonitor(
                os.path.join(log_root, f"run_{next(runs)}"), **configs[name]
            )
            timed_hooks(monitor, spent)
            callbacks.append(monitor)
        model.fit(
            x,
            y,
            batch_size=BATCH_SIZE,
            epochs=epochs,
            verbose=0,
            callbacks=callbacks,
        )
        return spent[0]

    timings = interleaved_timings(
        {name: functools.partial(timed_fit, name) for name in configs},
        rounds,
        rotate=True,
    )
    return {
        name: {
            "fit": [timing.wall for timing in of_config],
            "cpu": [timing.cpu for timing in of_config],
            "hooks": [timing.value / timing.wall for timing in of_config],
        }
        for name, of_config in timings.items()
    }


def report(results):
    """Prints the figures and the targets; returns the lines printed."""
    base, base_cpu = results["no monitor"]["fit"], results["no monitor"]["cpu"]
    lines = [
        f"{'no monitor':28s} fit {spread(base, digits=2)} s, CPU "
        f"{spread(base_cpu, digits=2)} s"
    ]
    verdicts = []
    for name, result in list(results.items())[1:]:
        ratios = [t / b for t, b in zip(result["fit"], base)]
        cpu = [t / b for t, b in zip(result["cpu"], base_cpu)]
        hooks = result["hooks"]
        lines.append(
            f"{name:28s} fit {spread(result['fit'], digits=2)} s, ratio "
            f"{spread(ratios)}; CPU ratio {spread(cpu)}; in its hooks "
            f"{spread(hooks, 100, 2)}% of fit"
        )
        if name in TARGETS:
            limit = TARGETS[name]
            figures = (
                ("hooks", statistics.median(hooks)),
                ("CPU time", statistics.median(cpu) - 1),
                ("fit time", statistics.median(ratios) - 1),
            )
            verdicts.append(
                f"{name}: <= {100 * limit:.0f}% of fit: "
                + ", ".join(
                    f"{label} {100 * value:+.2f}% "
                    f"{'PASS' if value <= limit else 'MISS'}"
                    for label, value in figures
                )
            )
    for line in lines + verdicts:
        print(line)
    return lines + verdicts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument(
        "--probe", action="store_true", help="also time a probe batch"
    )
    args = parser.parse_args()
    print(
        f"backend={keras.backend.backend()} MobileNetV2(alpha=0.35) "
        f"{IMAGE_SIZE}x{IMAGE_SIZE}, batch {BATCH_SIZE}, {args.steps} steps "
        f"x {args.epochs} epochs, {args.rounds} rounds"
    )
    report(measure(args.rounds, args.epochs, args.steps, args.probe))


if __name__ == "__main__":
    main()
