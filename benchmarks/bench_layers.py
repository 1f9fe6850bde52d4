"""Training-step time of bn-keras's BatchNormalization against Keras's own.

Every figure is a ratio to Keras's `BatchNormalization` measured in the same
process, on the same model, data and optimizer: medians over several rounds
(variants interleaved round-robin, so that slow drifts of the machine hit all
of them alike), with the min and max over the rounds.

Models (from the project's issues):
- conv: input 32x32x16, [Conv2D(32, 3) - BN - ReLU] x 2, global average
  pooling, Dense(10); batch 256; SGD.
- mlp: 256 -> [Dense(512) - BN - ReLU] x 2 -> Dense(10); batch 1024; SGD.

Run: `make bench`, or `python benchmarks/bench_layers.py --help`.
"""

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import bn_keras  # noqa: E402

MODELS = {
    # name: (input shape, batch size, number of batches per timed round)
    "conv": ((32, 32, 16), 256, 8),
    "mlp": ((256,), 1024, 20),
}


def _keras_bn(**kwargs):
    return lambda: keras.layers.BatchNormalization(**kwargs)


def _ours(**kwargs):
    return lambda: bn_keras.layers.BatchNormalization(**kwargs)


# name: (factory or None for no BN, name of the Keras baseline it is compared
# with). Renorm is compared with Keras's renorm.
VARIANTS = {
    "no BN": (None, "keras BN"),
    "keras BN": (_keras_bn(), "keras BN"),
    "bn_keras plain": (_ours(), "keras BN"),
    "bn_keras ghost m=32": (_ours(virtual_batch_size=32), "keras BN"),
    "keras renorm": (_keras_bn(renorm=True), "keras BN"),
    "bn_keras renorm": (
        _ours(renorm=True, renorm_clipping=bn_keras.layers.RenormClipping()),
        "keras renorm",
    ),
}


def build_model(model_name, make_bn):
    input_shape, _, _ = MODELS[model_name]
    inputs = keras.Input(input_shape)
    x = inputs
    for _ in range(2):
        if model_name == "conv":
            x = keras.layers.Conv2D(32, 3, padding="same", use_bias=make_bn is None)(x)
        else:
            x = keras.layers.Dense(512, use_bias=make_bn is None)(x)
        if make_bn is not None:
            x = make_bn()(x)
        x = keras.layers.ReLU()(x)
    if model_name == "conv":
        x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10)(x)
    return keras.Model(inputs, outputs)


def make_data(model_name, seed=0):
    input_shape, batch_size, steps = MODELS[model_name]
    rng = np.random.default_rng(seed)
    n = batch_size * steps
    x = rng.normal(size=(n, *input_shape)).astype("float32")
    y = rng.integers(0, 10, size=(n,))
    return x, y


def time_variants(model_name, variants, jit_compile, rounds):
    """Returns {variant: [seconds per step, one per round]}."""
    x, y = make_data(model_name)
    _, batch_size, steps = MODELS[model_name]
    models = {}
    batches = [
        (x[i * batch_size:(i + 1) * batch_size], y[i * batch_size:(i + 1) * batch_size])
        for i in range(steps)
    ]
    for name in variants:
        keras.utils.set_random_seed(0)
        model = build_model(model_name, VARIANTS[name][0])
        model.compile(
            optimizer=keras.optimizers.SGD(0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
        # Warm up: trace and compile, then one pass over the batches.
        for xb, yb in batches:
            model.train_on_batch(xb, yb)
        models[name] = model
    # train_on_batch times the training step itself, without fit's
    # per-epoch set-up (iterators, callbacks), which is the same for all.
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for xb, yb in batches:
                model.train_on_batch(xb, yb)
            times[name].append((time.perf_counter() - start) / steps)
    return times


def summarize(times):
    """Ratios of each variant to its baseline: (median, min, max) per round."""
    rows = {}
    for name, per_round in times.items():
        base = VARIANTS[name][1]
        ratios = [t / b for t, b in zip(per_round, times[base])]
        rows[name] = {
            "ms": 1000 * statistics.median(per_round),
            "ratio": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
            "baseline": base,
        }
    return rows


def bn_overhead_ratio(times, ours="bn_keras plain", theirs="keras BN"):
    """(our step - no-BN step) / (Keras step - no-BN step), median of rounds."""
    ratios = [
        (o - n) / (k - n)
        for o, k, n in zip(times[ours], times[theirs], times["no BN"])
    ]
    return statistics.median(ratios)


def print_table(model_name, jit_compile, rows):
    print(
        f"\n{model_name} model, jit_compile={jit_compile} "
        "(ratio = median over rounds of step time / baseline's step time)"
    )
    print(f"{'variant':<22}{'ms/step':>9}  {'baseline':<13}{'ratio':>7}"
          f"{'min':>7}{'max':>7}")
    for name, row in rows.items():
        print(
            f"{name:<22}{row['ms']:>9.2f}  {row['baseline']:<13}"
            f"{row['ratio']:>7.3f}{row['min']:>7.3f}{row['max']:>7.3f}"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="conv,mlp",
                        help="comma-separated: conv, mlp (default: both)")
    parser.add_argument("--jit", choices=["off", "on", "both"], default="both",
                        help="jit_compile setting(s) to measure")
    parser.add_argument("--rounds", type=int, default=5,
                        help="timed rounds per variant (default 5)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated variant names")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1. Received: --rounds={args.rounds}")
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; valid: {list(VARIANTS)}")
    needed = {VARIANTS[v][1] for v in variants} | {"no BN"}
    variants = [v for v in VARIANTS if v in set(variants) | needed]
    jits = {"off": [False], "on": [True], "both": [False, True]}[args.jit]

    print(
        f"bn_keras {bn_keras.__version__}, keras {keras.__version__}, "
        f"backend {keras.backend.backend()}, python {platform.python_version()}, "
        f"{os.cpu_count()} CPU cores, {platform.machine()}"
    )
    for model_name in args.models.split(","):
        if model_name not in MODELS:
            parser.error(f"unknown model {model_name!r}; valid: {list(MODELS)}")
        for jit_compile in jits:
            times = time_variants(model_name, variants, jit_compile, args.rounds)
            rows = summarize(times)
            print_table(model_name, jit_compile, rows)
            if "bn_keras plain" in times:
                print(
                    "BN overhead (step - no-BN step), ours / Keras's: "
                    f"{bn_overhead_ratio(times):.3f}"
                )
            sys.stdout.flush()


if __name__ == "__main__":
    main()
