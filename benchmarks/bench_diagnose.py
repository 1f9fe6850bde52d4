"""The speed of `bn_keras.diagnose`, `report.fix()` and
`bn_keras.recalibrate`, each against one `model.predict` over the same
images.

- `diagnose` on `keras.applications.MobileNetV2(alpha=0.35,
  weights=None, input_shape=(96, 96, 3))` with 512 images (target: at most
  5x one `predict`);
- `report.fix()` on that report;
- `recalibrate` (its default, two passes) on ResNet50 (64x64, 5 classes,
  15 batches of 16: a real fine-tuning job's setting) and on the
  MobileNetV2 above (16 batches of 32), against `predict` over the same
  batches (target: at most 5x).

`diagnose` and `recalibrate` compile their passes on every call (the
compiled function belongs to the call), so each of their timings includes
that tracing. `predict` is timed warm (its function compiled by an earlier
call, as in a program that has predicted before) and cold (the first
`predict` of a fresh copy of the model, as after `load_model`); the ratios
are given against both. Medians over rounds, the tasks interleaved
round-robin (`bench_layers.interleaved`).

`--precision` adds how close `recalibrate`'s algorithms come to the exact
(layer by layer) statistics on a MobileNetV2 trained briefly on digits
(minutes: the exact algorithm is slow).

Run: `python benchmarks/bench_diagnose.py [--rounds N] [--precision]`.
"""

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from bench_layers import interleaved  # noqa: E402
from bench_layers import print_targets  # noqa: E402

import bn_keras  # noqa: E402

TARGET = 5.0


def processor():
    """The CPU's model name (Linux), or what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mobilenet():
    return keras.applications.MobileNetV2(
        alpha=0.35, weights=None, input_shape=(96, 96, 3)
    )


def resnet():
    return keras.applications.ResNet50(
        weights=None, input_shape=(64, 64, 3), classes=5
    )


def images(n, shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, size=(n, *shape)).astype("float32")


def fresh_copy(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def first_predict_times(model, x, batch_size, rounds):
    """Seconds of the first `predict` of a fresh copy of `model` (the copy
    made before the clock starts), once per round."""
    times = []
    for _ in range(rounds):
        copy = fresh_copy(model)
        start = time.perf_counter()
        copy.predict(x, batch_size=batch_size, verbose=0)
        times.append(time.perf_counter() - start)
    return times


def diagnose_case(rounds):
    model = mobilenet()
    x = images(512, (96, 96, 3))
    y = np.random.default_rng(1).integers(0, 1000, size=512)
    reports = []
    tasks = {
        "predict (warm)": lambda: model.predict(x, batch_size=32, verbose=0),
        "diagnose": lambda: reports.append(bn_keras.diagnose(model, (x, y))),
        "fix": lambda: reports[-1].fix(),
    }
    times = interleaved(tasks, rounds)
    times["predict (first)"] = first_predict_times(model, x, 32, rounds)
    return times, reports[-1]


def recalibrate_case(name, build, shape, batch_size, steps, rounds):
    model = build()
    x = images(batch_size * steps, shape)
    target = fresh_copy(model)
    tasks = {
        "predict (warm)": lambda: model.predict(
            x, batch_size=batch_size, verbose=0
        ),
        "recalibrate": lambda: bn_keras.recalibrate(
            target, x, steps=steps, batch_size=batch_size
        ),
    }
    times = interleaved(tasks, rounds)
    times["predict (first)"] = first_predict_times(model, x, batch_size, rounds)
    return name, times


def ratios(times, name, base):
    return [t / b for t, b in zip(times[name], times[base])]


def print_times(title, times):
    print(f"\n{title}: seconds, median [min-max] over rounds")
    for name, values in times.items():
        print(
            f"  {name:<18}{statistics.median(values):8.2f} "
            f"[{min(values):.2f}-{max(values):.2f}]"
        )


def precision(epochs=4):
    """`recalibrate`'s algorithms against the exact statistics on a
    MobileNetV2 trained briefly on digits (32x32)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.repeat(np.repeat(digits.data.reshape(-1, 8, 8, 1), 4, 1), 4, 2)
    x = np.repeat(x / 16.0, 3, axis=3).astype("float32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], digits.target[order]
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        alpha=0.35,
        weights=None,
        input_shape=(32, 32, 3),
        classes=10,
        classifier_activation=None,
    )
    model.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x[:1400], y[:1400], batch_size=32, epochs=epochs, verbose=0)
    weights = model.get_weights()
    results = {}
    for method in ("layerwise", "two-pass", "one-pass"):
        model.set_weights(weights)
        start = time.perf_counter()
        bn_keras.recalibrate(model, x[:512], batch_size=32, method=method)
        seconds = time.perf_counter() - start
        predictions = model.predict(x[1400:], verbose=0).argmax(-1)
        statistics_ = [
            (np.asarray(b.moving_mean), np.asarray(b.moving_variance))
            for b in bn_keras.find_batchnorm(model)
        ]
        results[method] = (seconds, predictions, statistics_)
    exact = results["layerwise"]
    print(
        "\nrecalibrate on MobileNetV2 (alpha 0.35, 32x32) trained "
        f"{epochs} epochs on digits; 512 images, batch 32"
    )
    print(
        f"  {'method':<11}{'seconds':>8}{'test acc':>10}{'agree':>8}"
        f"{'max mean dist':>15}{'max |log var|':>15}"
    )
    for method, (seconds, predictions, stats) in results.items():
        distance = max(
            np.max(np.abs(m - me) / np.sqrt(ve + 1e-3))
            for (m, _), (me, ve) in zip(stats, exact[2])
        )
        log_variance = max(
            np.max(np.abs(np.log((v + 1e-3) / (ve + 1e-3))))
            for (_, v), (_, ve) in zip(stats, exact[2])
        )
        print(
            f"  {method:<11}{seconds:8.1f}"
            f"{np.mean(predictions == y[1400:]):10.3f}"
            f"{np.mean(predictions == exact[1]):8.3f}"
            f"{distance:15.3f}{log_variance:15.3f}"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--precision",
        action="store_true",
        help="also compare recalibrate's algorithms with the exact one",
    )
    args = parser.parse_args(argv)
    print(
        f"bn-keras diagnose/recalibrate speed: {processor()}, "
        f"{os.cpu_count()} CPUs, Keras {keras.__version__} on "
        f"{keras.backend.backend()}"
    )
    times, report = diagnose_case(args.rounds)
    print_times("MobileNetV2 (alpha 0.35, 96x96), 512 images", times)
    cases = [
        recalibrate_case(
            "ResNet50 (64x64), 15 batches of 16",
            resnet,
            (64, 64, 3),
            16,
            15,
            args.rounds,
        ),
        recalibrate_case(
            "MobileNetV2 (alpha 0.35, 96x96), 16 batches of 32",
            mobilenet,
            (96, 96, 3),
            32,
            16,
            args.rounds,
        ),
    ]
    for name, case_times in cases:
        print_times(name, case_times)
    measured = [("MobileNetV2 diagnose", times, "diagnose")] + [
        (f"{name.split(' (')[0]} recalibrate", case_times, "recalibrate")
        for name, case_times in cases
    ]
    print_targets(
        [
            (f"{label} / {base}", ratios(of, task, base), TARGET, True)
            for label, of, task in measured
            for base in ("predict (warm)", "predict (first)")
        ]
    )
    print(
        "\nfix() / diagnose: "
        f"{statistics.median(ratios(times, 'fix', 'diagnose')):.3f} "
        f"(a copy of the model with the measured statistics set; findings: "
        f"{[f.code for f in report.findings]})"
    )
    if args.precision:
        precision()


if __name__ == "__main__":
    main()
