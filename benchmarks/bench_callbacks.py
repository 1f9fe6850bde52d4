"""Overhead of `bn_keras.callbacks.BatchNormMonitor` on `model.fit`.

The MLP benchmark model (256 -> 512 -> 512 -> 10, Keras's batch
normalization after each hidden Dense), batch 1024, 20,000 generated
samples, 5 epochs. Each round times `fit` without the monitor, with it at
`update_freq="epoch"` and with it every 10 batches, in an order that
rotates from round to round, in the same process; the overhead is the
ratio of each monitored time to the unmonitored one of the same round.
Prints the median ratio over the rounds with its min and max, the ratio of
the best (least disturbed) times, and, least sensitive to a busy machine,
the share of each monitored `fit` spent inside the monitor's hooks.

    python benchmarks/bench_callbacks.py [--rounds 7] [--epochs 5]
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import bn_keras  # noqa: E402


def build_model():
    model = keras.Sequential(
        [
            keras.Input((256,)),
            keras.layers.Dense(512),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dense(512),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dense(10),
        ]
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


def measure(rounds=7, epochs=5, samples=20_000, batch_size=1024):
    """Times `fit` with and without the monitor, interleaved in rounds.

    Returns `{config: {"fit": [s per round], "hooks": [share per round]}}`
    for the configs `"no monitor"`, `'monitor, update_freq="epoch"'` and
    `"monitor, every 10 batches"`; "hooks" is the share of each `fit` spent
    in the monitor's hooks.
    """
    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, 256)).astype("float32")
    y = rng.integers(0, 10, size=samples)
    model = build_model()
    log_root = tempfile.mkdtemp(prefix="bench_callbacks_")
    configs = {
        "no monitor": None,
        'monitor, update_freq="epoch"': "epoch",
        "monitor, every 10 batches": 10,
    }
    names = list(configs)
    results = {name: {"fit": [], "hooks": []} for name in names}

    def timed_fit(name, run):
        callbacks, spent = [], [0.0]
        if configs[name] is not None:
            monitor = bn_keras.callbacks.BatchNormMonitor(
                os.path.join(log_root, run), update_freq=configs[name]
            )
            timed_hooks(monitor, spent)
            callbacks.append(monitor)
        start = time.perf_counter()
        model.fit(
            x,
            y,
            batch_size=batch_size,
            epochs=epochs,
            verbose=0,
            callbacks=callbacks,
        )
        total = time.perf_counter() - start
        return total, spent[0] / total

    for name in names:  # warm-up: tracing, first event files
        timed_fit(name, f"warmup_{names.index(name)}")
    for round_index in range(rounds):
        order = names[round_index % 3 :] + names[: round_index % 3]
        for name in order:
            total, share = timed_fit(name, f"r{round_index}_{names.index(name)}")
            results[name]["fit"].append(total)
            results[name]["hooks"].append(share)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    results = measure(args.rounds, args.epochs, args.samples, args.batch_size)
    print(
        f"backend={keras.backend.backend()} samples={args.samples} "
        f"batch={args.batch_size} epochs={args.epochs} rounds={args.rounds}"
    )
    base = results["no monitor"]["fit"]
    print(
        f"{'no monitor':32s} fit {statistics.median(base):.3f} s "
        f"(min {min(base):.3f}, max {max(base):.3f})"
    )
    for name, result in list(results.items())[1:]:
        times, hooks = result["fit"], result["hooks"]
        ratios = [t / b for t, b in zip(times, base)]
        print(
            f"{name:32s} fit {statistics.median(times):.3f} s, "
            f"ratio median {statistics.median(ratios):.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f}), "
            f"best-of-rounds ratio {min(times) / min(base):.3f}; "
            f"time in its hooks {100 * statistics.median(hooks):.2f}%"
            f" of fit (max {100 * max(hooks):.2f}%)"
        )


if __name__ == "__main__":
    main()
