"""Multi-device and multi-process scenarios for `tests/distribute`.

TensorFlow fixes its logical devices the first time it initializes them, and
by the time these tests run pytest has long done so (other test modules
import TensorFlow). So every scenario that needs several devices or several
processes runs this file in a fresh interpreter and reads back what it
writes (JSON). The tests themselves import the shared pieces (data, model,
single-device references) from here.

    python scenario.py mirrored --devices 2 --out results.json
    python scenario.py train --devices 2 --out DIR [--backup --kill-after 7]
    python scenario.py train --ports P,Q --index I --out DIR [...]

Every process arms an alarm (`--lifetime`, seconds) so that it ends by itself
even if its peers or the test that started it are gone.
"""

import argparse
import json
import os
import signal
import sys
import time
from contextlib import nullcontext

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

FEATURES = 4  # input features
TIME = 3  # a middle axis, so that BN reduces over two axes
UNITS = 6  # channels seen by the BN layer
OUTPUTS = 2
MOMENTUM = 0.5  # moving statistics move visibly in a few steps
LEARNING_RATE = 0.1
# A short renorm warm-up: clipping is tight at first, then relaxes within
# the few steps the tests run.
SCHEDULE = dict(rmax=1.5, dmax=0.5, warmup_steps=1, rmax_steps=10, dmax_steps=8)


# -- data, model and weights ---------------------------------------------------


def make_data(n, seed=0):
    """Inputs `(n, TIME, FEATURES)` with non-trivial statistics, targets."""
    rng = np.random.default_rng(seed)
    shift = rng.normal(size=FEATURES)
    scale = rng.uniform(0.5, 2.0, size=FEATURES)
    x = rng.normal(size=(n, TIME, FEATURES)) * scale + shift
    y = rng.normal(size=(n, TIME, OUTPUTS))
    return x.astype("float32"), y.astype("float32")


def bn_options(mode, synchronized, virtual_batch_size=None):
    """Arguments of `bn_keras.layers.BatchNormalization` for a mode."""
    import bn_keras

    options = dict(synchronized=synchronized, momentum=MOMENTUM)
    if "ghost" in mode:
        options["virtual_batch_size"] = virtual_batch_size
    if "cumulative" in mode:  # the input normalizer: unclipped renorm
        options.update(momentum=None, renorm=True, renorm_momentum=None)
    if "renorm" in mode:
        options.update(
            renorm=True,
            renorm_momentum=MOMENTUM,
            renorm_clipping=bn_keras.layers.RenormClipping(**SCHEDULE),
        )
    return options


def build_model(bn_layers):
    """Dense -> BN -> ... -> Dense, with deterministic initial weights.

    `bn_layers` is a list of option dicts, one BN layer per entry (with
    tanh and Dense layers between them). Trainable weights are drawn from
    a fixed NumPy generator, so every process builds exactly the same
    model whatever its Keras seed state or distribution strategy.
    """
    import keras

    import bn_keras

    inputs = keras.Input((TIME, FEATURES))
    h = keras.layers.Dense(UNITS)(inputs)
    for i, options in enumerate(bn_layers):
        if i:
            h = keras.layers.Activation("tanh")(h)
            h = keras.layers.Dense(UNITS)(h)
        h = bn_keras.layers.BatchNormalization(name=f"bn{i}", **options)(h)
    model = keras.Model(inputs, keras.layers.Dense(OUTPUTS)(h))
    rng = np.random.default_rng(42)
    values = []
    for w in model.weights:
        value = w.numpy()
        if w.trainable:
            name = w.path.split("/")[-1]
            if name == "gamma":
                value = 1.0 + 0.2 * rng.normal(size=value.shape)
            else:
                value = 0.5 * rng.normal(size=value.shape)
        values.append(np.asarray(value, dtype=w.dtype))
    model.set_weights(values)
    return model


def bn_layers_of(model):
    import bn_keras

    return [
        layer
        for layer in model.layers
        if isinstance(layer, bn_keras.layers.BatchNormalization)
    ]


def local_values(variable):
    """The per-replica copies of a (possibly mirrored) variable."""
    import tensorflow as tf

    value = getattr(variable, "value", variable)
    if isinstance(value, tf.distribute.DistributedValues):
        return [np.asarray(v.numpy()) for v in value.values]
    return [np.asarray(value.numpy())]


def bn_state(model):
    """`{path: [copy per replica]}` for every non-trainable BN weight."""
    state = {}
    for layer in bn_layers_of(model):
        for w in layer.non_trainable_weights:
            state[w.path] = [v.tolist() for v in local_values(w)]
    return state


def to_list(values):
    return [np.asarray(v).tolist() for v in values]


# -- custom training steps -----------------------------------------------------


def squared_error(outputs, targets, global_batch):
    """Sum of squared errors over the batch divided by the global batch."""
    import tensorflow as tf

    return tf.reduce_sum(tf.square(outputs - targets)) / global_batch


def reference_steps(models, optimizer, batches, global_batch):
    """Single-device training steps, one model per shard.

    `batches` is a list of steps, each a list of `(x, y)` shards. Model `i`
    sees shard `i` (with its own BN statistics and moving statistics); the
    gradients of all shards are summed and applied to model 0, whose
    trainable weights are then copied to the others. With one shard (the
    global batch) this is plain single-device training; with one shard per
    replica it is what `synchronized=False` means under a strategy.

    Returns one record per step: concatenated outputs, summed gradients and
    the BN state of each model after the step.
    """
    import tensorflow as tf

    records = []
    for shards in batches:
        outputs, total = [], None
        for model, (x, y) in zip(models, shards):
            with tf.GradientTape() as tape:
                out = model(x, training=True)
                loss = squared_error(out, y, global_batch)
            grads = tape.gradient(loss, model.trainable_variables)
            outputs.append(out.numpy())
            grads = [g.numpy() for g in grads]
            total = grads if total is None else [
                a + b for a, b in zip(total, grads)
            ]
        optimizer.apply(total, models[0].trainable_variables)
        for model in models[1:]:
            for src, dst in zip(
                models[0].trainable_variables, model.trainable_variables
            ):
                dst.assign(src)
        states = [bn_state(model) for model in models]
        records.append(
            {
                "outputs": np.concatenate(outputs).tolist(),
                "grads": to_list(total),
                # {weight: [value per model]}, like a mirrored variable.
                "state": {
                    k: [s[k][0] for s in states] for k in states[0]
                },
            }
        )
    return records


def distributed_steps(strategy, model, optimizer, batches, global_batch):
    """The same steps under `strategy`, shard `i` on replica `i`.

    Returns one record per step: the replicas' outputs concatenated in
    replica order, their local gradients summed (what the optimizer
    applies), and every replica's copy of the BN state after the step.
    """
    import tensorflow as tf

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = squared_error(out, y, global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return out, grads

    @tf.function
    def step(x, y):
        return strategy.run(replica_step, args=(x, y))

    def per_replica(arrays):
        return strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(
                arrays[context.replica_id_in_sync_group]
            )
        )

    records = []
    for shards in batches:
        xs, ys = zip(*shards)
        out, grads = step(per_replica(xs), per_replica(ys))
        outputs = [o.numpy() for o in strategy.experimental_local_results(out)]
        total = [
            np.sum(
                [g.numpy() for g in strategy.experimental_local_results(grad)],
                axis=0,
            )
            for grad in grads
        ]
        records.append(
            {
                "outputs": np.concatenate(outputs).tolist(),
                "grads": to_list(total),
                "state": bn_state(model),
            }
        )
    return records


# -- mirrored strategy on logical CPU devices ----------------------------------

GLOBAL_BATCH = 16
STEPS = 3


def mirrored_cases(devices):
    """`(name, mode, synchronized, virtual_batch_size, references)` cases.

    Ghost arithmetic: the global batch of 16 is split into `devices` local
    batches of `b = 16 / devices` consecutive samples; `m = b / 2`, so each
    replica forms 2 ghost batches and ghost `j` of replica `r` holds global
    samples `[r*b + j*m, r*b + (j+1)*m)`: exactly ghost `2r + j` of
    single-device ghost BN on the global batch. `ghost_uneven` uses `m = 3`,
    which does not divide `b`: its ghosts (per replica, with a smaller last
    one) differ from single-device ghosts on the global batch.
    """
    local = GLOBAL_BATCH // devices
    m = local // 2
    return [
        ("plain", "plain", True, None, ["global"]),
        ("ghost", "ghost", True, m, ["global"]),
        ("renorm", "renorm", True, None, ["global"]),
        ("ghost_renorm", "ghost_renorm", True, m, ["global"]),
        ("ghost_uneven", "ghost", True, 3, ["global", "shards"]),
        ("plain_unsync", "plain", False, None, ["shards"]),
        ("ghost_renorm_unsync", "ghost_renorm", False, m, ["shards"]),
        ("cumulative", "cumulative", True, None, ["global"]),
        ("ghost_cumulative", "ghost_cumulative", True, m, ["global"]),
    ]


def run_mirrored(devices):
    import keras
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(devices)]
    )
    assert strategy.num_replicas_in_sync == devices
    x, y = make_data(GLOBAL_BATCH * STEPS)
    local = GLOBAL_BATCH // devices

    def steps(num_shards):
        size = GLOBAL_BATCH // num_shards
        batches = []
        for k in range(STEPS):
            start = k * GLOBAL_BATCH
            batches.append(
                [
                    (
                        x[start + i * size : start + (i + 1) * size],
                        y[start + i * size : start + (i + 1) * size],
                    )
                    for i in range(num_shards)
                ]
            )
        return batches

    results = {"devices": devices, "local_batch": local, "cases": {}}
    for name, mode, sync, m, references in mirrored_cases(devices):
        options = bn_options(mode, sync, m)
        case = {"virtual_batch_size": m, "synchronized": sync}
        with strategy.scope():
            model = build_model([options])
            optimizer = keras.optimizers.SGD(LEARNING_RATE)
        case["distributed"] = distributed_steps(
            strategy, model, optimizer, steps(devices), GLOBAL_BATCH
        )
        for reference in references:
            shards = 1 if reference == "global" else devices
            models = [build_model([options]) for _ in range(shards)]
            optimizer = keras.optimizers.SGD(LEARNING_RATE)
            case[reference] = reference_steps(
                models, optimizer, steps(shards), GLOBAL_BATCH
            )
        results["cases"][name] = case

    # model.fit with a partial last batch: 2 full global batches and one of
    # 2 samples, split [1, 1] over 2 replicas and [1, 1, 0, 0] over 4. Two
    # synchronized BN layers: plain, then ghost batches with renorm.
    x, y = make_data(2 * GLOBAL_BATCH + 2, seed=1)
    layers = [
        bn_options("plain", True),
        bn_options("ghost_renorm", True, local // 2),
    ]
    unsynchronized = [dict(options, synchronized=False) for options in layers]
    runs = [
        ("fit", "distributed", layers),
        ("fit", "global", layers),
        ("fit_unsync", "distributed", unsynchronized),
    ]
    for key, where, model_layers in runs:
        scope = strategy.scope() if where == "distributed" else nullcontext()
        with scope:
            model = build_model(model_layers)
            model.compile(keras.optimizers.SGD(LEARNING_RATE), "mse")
        recorder = state_recorder()
        history = model.fit(
            x,
            y,
            batch_size=GLOBAL_BATCH,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[recorder],
        )
        results.setdefault(key, {})[where] = {
            "steps": recorder.records,
            "loss": history.history["loss"],
        }
    return results


# -- BackupAndRestore, on one process and on two workers -----------------------

EPOCHS = 2
STEPS_PER_EPOCH = 4
TRAIN_BATCH = 16  # global batch
GHOST = 4  # ghost batches of 4 within every local batch of 8 (2 replicas)


def train_model(synchronized=True):
    """Two BN layers: ghost batches, then renorm with a schedule."""
    import keras

    model = build_model(
        [
            bn_options("ghost", synchronized, GHOST),
            bn_options("renorm", synchronized),
        ]
    )
    model.compile(keras.optimizers.SGD(LEARNING_RATE), "mse")
    return model


def train_data():
    """`EPOCHS` x `STEPS_PER_EPOCH` global batches, in order."""
    return make_data(STEPS_PER_EPOCH * TRAIN_BATCH, seed=2)


def training_state(model, when=""):
    """All the state a restart must bring back, as JSON-ready values."""
    renorm = [
        layer for layer in bn_layers_of(model) if layer.renorm_step is not None
    ]
    return {
        "when": when,
        "iterations": int(model.optimizer.iterations.numpy()),
        # Every replica's copy of every layer's counter.
        "renorm_step": [
            [int(v) for v in local_values(layer.renorm_step)]
            for layer in renorm
        ],
        "clipping": [
            {k: float(v) for k, v in layer.current_renorm_clipping().items()}
            for layer in renorm
        ],
        "bn": bn_state(model),
        "weights": to_list(model.get_weights()),
    }


def state_recorder():
    """A callback recording `training_state` when training begins (after
    `BackupAndRestore` has restored, when it comes first) and after every
    batch, in `.records`."""
    import keras

    class StateRecorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.records = []

        def on_train_begin(self, logs=None):
            self.records.append(training_state(self.model, "begin"))

        def on_train_batch_end(self, batch, logs=None):
            self.records.append(training_state(self.model, f"batch {batch}"))

    return StateRecorder()


def kill_marker(path, after, wait):
    """A callback that, after its `after`-th batch, writes `path` and then
    blocks, so that the test kills the process at a known point in the
    middle of an epoch. If nobody does, the process exits with status 3
    rather than finish training."""
    import keras

    class KillMarker(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.batches = 0

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            if self.batches == after:
                with open(path + ".tmp", "w") as f:
                    json.dump(training_state(self.model, "marker"), f)
                os.replace(path + ".tmp", path)
                time.sleep(wait)
                os._exit(3)

    return KillMarker()


def fit_on_one_process(model, x, y, callbacks, epochs=EPOCHS):
    """`model.fit`, the way users train on one process."""
    history = model.fit(
        x,
        y,
        batch_size=TRAIN_BATCH,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    return len(history.history["loss"])


def custom_loop(strategy, model, x, y, callbacks):
    """A custom training loop (`strategy.run`) for several workers.

    Keras 3.15's `model.fit` does not run under
    `MultiWorkerMirroredStrategy` (keras-team/keras#20585: it calls
    `strategy.reduce` on nested and scalar values, which the collective
    strategy rejects), so the workers train as TensorFlow's multi-worker
    guide does, with a custom loop, and drive the Keras callbacks
    (`BackupAndRestore` included) through `keras.callbacks.CallbackList`.

    The loop starts where `optimizer.iterations` says: after a restore it
    skips the batches of the epoch that the backup already covers, so
    nothing is trained twice. Returns the number of epochs run.
    """
    import keras
    import tensorflow as tf

    workers = strategy.num_replicas_in_sync
    local = TRAIN_BATCH // workers
    optimizer = model.optimizer
    elements = float(TRAIN_BATCH * TIME * OUTPUTS)  # as Keras's "mse"

    def worker_data(context):
        # Worker i takes samples [i*b, (i+1)*b) of every global batch, so
        # global batch k is exactly x[k*B:(k+1)*B], as on one process.
        i = context.input_pipeline_id
        starts = np.arange(STEPS_PER_EPOCH) * TRAIN_BATCH + i * local
        rows = (starts[:, None] + np.arange(local)).ravel()
        return tf.data.Dataset.from_tensor_slices((x[rows], y[rows])).batch(
            local
        )

    dataset = strategy.distribute_datasets_from_function(worker_data)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            outputs = model(x, training=True)
            loss = tf.reduce_sum(tf.square(outputs - y)) / elements
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)

    @tf.function
    def train_step(x, y):
        strategy.run(replica_step, args=(x, y))

    callbacks = keras.callbacks.CallbackList(callbacks, model=model)
    callbacks.on_train_begin()
    first_epoch, done = divmod(
        int(optimizer.iterations.numpy()), STEPS_PER_EPOCH
    )
    for epoch in range(first_epoch, EPOCHS):
        callbacks.on_epoch_begin(epoch)
        for batch, (xb, yb) in enumerate(dataset):
            if epoch == first_epoch and batch < done:
                continue  # trained before the backup
            callbacks.on_train_batch_begin(batch)
            train_step(xb, yb)
            callbacks.on_train_batch_end(batch)
        callbacks.on_epoch_end(epoch)
    callbacks.on_train_end()
    return EPOCHS - first_epoch


def run_train(args):
    """Trains `train_model` on `train_data`, then writes the result.

    On one process (`--devices N`: `model.fit`, under a MirroredStrategy
    when N > 1) or as worker `--index` of a MultiWorkerMirroredStrategy
    cluster on 127.0.0.1 (`--ports`, one per worker: a custom loop). With
    `--backup`, a `BackupAndRestore` callback (first in the list) backs up
    every `--save-freq` batches; with `--kill-after K` the process writes a
    marker after its K-th batch and waits to be killed. Writes
    `result-<phase>[-<index>].json`: epochs run, the states recorded at the
    start and after every batch, and the final state.
    """
    import keras
    import tensorflow as tf

    suffix = ""
    if args.ports:
        ports = args.ports.split(",")
        suffix = f"-{args.index}"
        os.environ["TF_CONFIG"] = json.dumps(
            {
                "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                "task": {"type": "worker", "index": args.index},
            }
        )
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=args.lifetime
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=options
        )
        if strategy.num_replicas_in_sync != len(ports):
            raise RuntimeError(f"{strategy.num_replicas_in_sync} replicas")
    elif args.devices > 1:
        configure_devices(args.devices)
        strategy = tf.distribute.MirroredStrategy(
            [f"/cpu:{i}" for i in range(args.devices)]
        )
    else:
        strategy = tf.distribute.get_strategy()

    with strategy.scope():
        model = train_model()
        # Under a strategy, the optimizer's variables must exist before the
        # first (replica-context) step.
        model.optimizer.build(model.trainable_variables)

    callbacks = []
    if args.backup:
        # One backup directory per worker: Keras 3's BackupAndRestore has
        # no notion of a chief, and workers writing the same file would
        # race.
        callbacks.append(
            keras.callbacks.BackupAndRestore(
                os.path.join(args.out, f"backup{suffix}"),
                save_freq=args.save_freq,
            )
        )
    recorder = state_recorder()
    callbacks.append(recorder)
    if args.kill_after:
        marker = os.path.join(args.out, f"marker{suffix}.json")
        callbacks.append(kill_marker(marker, args.kill_after, args.lifetime))

    x, y = train_data()
    if args.ports:
        epochs_run = custom_loop(strategy, model, x, y, callbacks)
    else:
        epochs_run = fit_on_one_process(model, x, y, callbacks)
    result = {
        "epochs_run": epochs_run,
        "states": recorder.records,
        "final": training_state(model, "end"),
    }
    path = os.path.join(args.out, f"result-{args.phase}{suffix}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)


# -- entry point -------------------------------------------------------------


def configure_devices(count):
    """Splits the CPU into `count` logical devices (before TF uses it)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * count
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=["mirrored", "train"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--lifetime", type=int, default=150)
    parser.add_argument("--phase", default="run")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--ports", default="")
    parser.add_argument("--backup", action="store_true")
    parser.add_argument("--save-freq", type=int, default=2)
    parser.add_argument("--kill-after", type=int, default=0)
    args = parser.parse_args(argv)
    # Whatever happens (a peer that never comes, a test that is gone), this
    # process ends by itself: SIGALRM's default action terminates it.
    signal.alarm(args.lifetime)

    if args.scenario == "mirrored":
        configure_devices(args.devices)
        results = run_mirrored(args.devices)
        with open(args.out, "w") as f:
            json.dump(results, f)
    else:
        run_train(args)


if __name__ == "__main__":
    sys.exit(main())
