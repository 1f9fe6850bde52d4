"""What the commands train: configurations, models, training and results.

`bn-keras compare` trains one model per `Configuration` through a
`Comparison` (configurations that build the same network merged:
`merge_same_networks`); `bn-keras search` runs a keras-tuner search through
`bn_keras.cli.tuning.Search`, with this module's models, training
callbacks and results. Both keep a `Result` per finished configuration or
trial (an interrupted command keeps what finished), with losses in the
target's units (`in_target_units`). The objective of a task (validation
accuracy, or validation loss for regression) is decided by `objective`,
and only there. Nothing here prints or writes summaries: that is
`bn_keras.cli.report`.
"""

import dataclasses
import functools
import math
import os
import time
import warnings

import keras
import numpy as np

from bn_keras import registry
from bn_keras.callbacks import BatchNormMonitor
from bn_keras.cli import runtime
from bn_keras.cli._comparison_hparams import configuration_hparams
from bn_keras.cli.common import UsageError
from bn_keras.models import insert_batchnorm
from bn_keras.models._signature import network_signature

#: "Epochs to 95%": the first epoch whose validation accuracy is at least
#: 95% of the best (for a loss: at most the best / 0.95).
FRACTION_OF_BEST = 0.95

#: What `--model cnn` trains on, for its error message.
IMAGE_SOURCES = (
    "--dataset digits, mnist, fashion_mnist or cifar10, --data FOLDER of "
    "images, or --data FILE.npz whose features have shape (N, H, W) or "
    "(N, H, W, C)"
)


def objective(task):
    """The validation metric a task is ranked by: `"val_accuracy"` for
    classification, `"val_loss"` for regression."""
    return "val_accuracy" if task == "classification" else "val_loss"


def higher_is_better(metric):
    """Whether a larger value of an `objective` metric is better."""
    return metric == "val_accuracy"


# -- configurations -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One model to train: a placement (or none) and a normalization, and
    the input normalization (`insert_batchnorm`'s `input_batchnorm` name).

    `same_as` lists the other placements that build the same network on
    the comparison's model (see `merge_same_networks`): this configuration
    is trained once for all of them, and its label, run folder and HParams
    name them all (`"layer-bn-act = bn-act-layer"`).
    """

    placement: str  # canonical; "layer-act" is no BN
    normalization: str = None
    input_batchnorm: str = "none"
    same_as: tuple = ()

    @property
    def placements(self):
        """`"layer-bn-act"`, or with `same_as`,
        `"layer-bn-act = bn-act-layer"`."""
        return " = ".join((self.placement, *self.same_as))

    @property
    def has_batchnorm(self):
        """Whether the layers get BN (the inputs aside)."""
        return registry.has_batchnorm(self.placement)

    @property
    def is_baseline(self):
        """No BN anywhere: the model as it is."""
        return not self.has_batchnorm and self.input_batchnorm == "none"

    def label(self, ghost_batch_size=None):
        if self.input_batchnorm != "none":
            label = f"input {self.input_batchnorm}"
            if not self.has_batchnorm:
                return label
            return f"{label} + {self._layers_label(ghost_batch_size)}"
        return self._layers_label(ghost_batch_size)

    def _layers_label(self, ghost_batch_size):
        if not self.has_batchnorm:
            return "no BN"
        normalization = self.normalization
        if normalization == "ghost" and ghost_batch_size:
            normalization = f"ghost({ghost_batch_size})"
        return f"{self.placements} + {normalization}"

    @property
    def slug(self):
        """The configuration's run folder name."""
        slug = "no-bn"
        if self.has_batchnorm:
            placements = "=".join((self.placement, *self.same_as))
            slug = f"{placements}_{self.normalization}"
        if self.input_batchnorm != "none":
            return f"input-{self.input_batchnorm}_{slug}"
        return slug


def configurations(placements, normalizations, input_batchnorms=("none",)):
    """'No BN' first, then every (placement, normalization) pair; all of
    them once per input normalization, in the order given."""
    result = []
    for input_batchnorm in input_batchnorms:
        result.append(Configuration("layer-act", None, input_batchnorm))
        for placement in placements:
            if not registry.has_batchnorm(placement):
                continue  # "no BN" is always there
            for normalization in normalizations:
                result.append(
                    Configuration(placement, normalization, input_batchnorm)
                )
    return result


def merge_same_networks(configurations, signature):
    """The configurations, those that build the same network merged.

    Two configurations with the same normalization and input normalization
    whose models have the same `signature` (a function of a configuration:
    `bn_keras.models._signature.network_signature` of its model) are one:
    the first keeps its place, and the others' placements go to its
    `same_as`.

    Args:
        configurations: `Configuration`s, in order.
        signature: A function `Configuration -> str`.

    Returns:
        A list of `Configuration`s, in the order of their first one.
    """
    merged = {}
    for configuration in configurations:
        key = (
            signature(configuration),
            configuration.normalization,
            configuration.input_batchnorm,
        )
        first = merged.get(key)
        if first is None:
            merged[key] = configuration
        else:
            merged[key] = dataclasses.replace(
                first, same_as=(*first.same_as, configuration.placement)
            )
    return list(merged.values())


def is_chain(model):
    """Whether `model` is a chain of layers: a Sequential model without
    nested models (no residual connection, no branch)."""
    return isinstance(model, keras.Sequential) and not any(
        isinstance(layer, keras.Model) for layer in model.layers
    )


def same_network_note(placements, chain):
    """Why `placements` (a tuple, as merged) build one network, as a
    clause; `chain`: whether the model is a chain (`is_chain`)."""
    first, *others = placements
    if chain and set(placements) == {"layer-bn-act", "bn-act-layer"}:
        return (
            "on this model, a chain without residual connections, "
            "pre-activation (bn-act-layer) builds the same network as "
            "layer-bn-act"
        )
    verb = "builds" if len(others) == 1 else "build"
    return (
        f"on this model, {' and '.join(others)} {verb} the same network "
        f"as {first} (the same layers, wiring and initial weights)"
    )


# -- models -------------------------------------------------------------------


def _cnn_body(quick):
    if quick:
        return [
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
        ]
    return [
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
    ]


def _mlp_body(quick, images):
    body = [keras.layers.Flatten()] if images else []
    for units in (32,) if quick else (128, 64):
        body.append(keras.layers.Dense(units, activation="relu"))
    return body


def build_base_model(kind, dataset, quick=False):
    """The architecture without batch normalization (a Sequential model)."""
    if dataset.image_shape is not None:
        inputs = keras.Input(dataset.image_shape)
    else:
        inputs = keras.Input((dataset.num_features,))
    if kind == "cnn":
        if dataset.image_shape is None:
            raise UsageError(
                f"--model cnn needs image data ({IMAGE_SOURCES}); "
                f"{dataset.name} has {dataset.num_features} features: use "
                "--model mlp"
            )
        body = _cnn_body(quick)
    else:
        body = _mlp_body(quick, images=dataset.image_shape is not None)
    outputs = dataset.num_classes if dataset.task == "classification" else 1
    return keras.Sequential(
        [inputs, *body, keras.layers.Dense(outputs)], name=f"{kind}"
    )


def make_model(
    base, configuration, ghost_batch_size, total_steps, momentum=0.99
):
    """A fresh copy of `base` (same initial weights) for a configuration.

    The BN layers are the registry's `normalization_for_run`: the ghost
    batch size and momentum as given, a renorm schedule scaled to
    `total_steps`; the inputs get `insert_batchnorm`'s `input_batchnorm`.
    """
    if configuration.is_baseline:
        model = keras.models.clone_model(base)
        model.set_weights(base.get_weights())
        return model
    normalization = None
    if configuration.has_batchnorm:
        normalization = registry.normalization_for_run(
            configuration.normalization,
            momentum=momentum,
            ghost_batch_size=ghost_batch_size,
            total_steps=total_steps,
        )
    return insert_batchnorm(
        base,
        placement=configuration.placement,
        normalization=normalization,
        input_batchnorm=configuration.input_batchnorm,
    )


def compile_model(model, task, learning_rate):
    """Adam; cross-entropy on logits and accuracy, or mean squared error."""
    if task == "classification":
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    else:
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate), loss="mse"
        )


# -- training -----------------------------------------------------------------


class InterruptCheck(keras.callbacks.Callback):
    """Raises, after every batch, a Ctrl-C that Python could not raise
    when it came (`bn_keras.cli.runtime.check_interrupt`).

    keras-tuner deep-copies the search's callbacks for every trial; the
    copy is this same object.
    """

    def __deepcopy__(self, memo):
        return self

    def on_train_batch_end(self, batch, logs=None):
        runtime.check_interrupt()

    def on_test_batch_end(self, batch, logs=None):
        runtime.check_interrupt()


class _EpochClock(keras.callbacks.Callback):
    """Times every epoch and reports each epoch's start."""

    def __init__(self, on_epoch=None):
        super().__init__()
        self.seconds = []
        self._on_epoch = on_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        if self._on_epoch is not None:
            self._on_epoch(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def train(
    model,
    dataset,
    run_dir,
    *,
    epochs,
    batch_size,
    seed,
    verbose=False,
    on_epoch=None,
    hparams=None,
    note=None,
):
    """Fits a compiled model with its TensorBoard run in `run_dir`.

    A `RunMonitor` (probed on the first validation batch) writes the run:
    the BN layers' figures, Keras's epoch metrics (in the target's units)
    and the objective's best value, the dashboards' layout and the run's
    HParams session, a model without BN's too. One run per configuration:
    Keras's own `TensorBoard` callback, whose `train` and `validation`
    subfolders would be two more runs, is not used.

    Args:
        model: A compiled model.
        dataset: A `bn_keras.cli.datasets.Dataset`.
        run_dir: The run's TensorBoard folder.
        epochs, batch_size, seed: As `fit` takes them; the seed is set just
            before `fit`, so that every configuration sees the same batches.
        verbose: Whether Keras prints a line per epoch.
        on_epoch: Optional function called with each epoch (from 0) as it
            begins.
        hparams: Optional dict of the run's HParams values.
        note: Optional paragraph for the run's text summary.

    Returns:
        `(history, seconds)`: Keras's history (metric name to a list of
        floats, one per epoch; losses in the target's units, see
        `in_target_units`) and the seconds each epoch took.
    """
    clock = _EpochClock(on_epoch)
    callbacks = [
        *logging_callbacks(run_dir, dataset, batch_size, hparams, note),
        clock,
        InterruptCheck(),
    ]
    keras.utils.set_random_seed(seed)
    with warnings.catch_warnings():
        # The baseline without BN: the monitor logs its epoch metrics only,
        # as it should; its warning that there is no BN says nothing here.
        warnings.filterwarnings(
            "ignore", message="BatchNormMonitor: the model has no batch"
        )
        history = _fit(model, dataset, epochs, batch_size, callbacks, verbose)
    return in_target_units(history.history, dataset), clock.seconds


class RunMonitor(BatchNormMonitor):
    """The `BatchNormMonitor` of a `compare` configuration or a `search`
    trial: losses written in the target's units (times `loss_scale`), as
    the leaderboard and the plot show them, and a note of the command's
    in the run's text summary.

    Args:
        log_dir: As `BatchNormMonitor`'s.
        loss_scale: What a loss is multiplied by (`Dataset.loss_scale`).
        note: Optional paragraph for the text summary, after the
            monitor's own (when it was written).
        **kwargs: `BatchNormMonitor`'s other arguments.
    """

    def __init__(self, log_dir, loss_scale=1.0, note=None, **kwargs):
        super().__init__(log_dir, **kwargs)
        self.loss_scale = float(loss_scale)
        self.note = note

    def _settings(self):
        return {
            **super()._settings(),
            "loss_scale": self.loss_scale,
            "note": self.note,
        }

    def _notes(self, note):
        notes = super()._notes(note)
        if self.note:
            notes.insert(1, self.note)
        return notes

    def _epoch_values(self, logs):
        values = super()._epoch_values(logs)
        return {
            name: value * (self.loss_scale if _is_loss(name) else 1.0)
            for name, value in values.items()
        }


def logging_callbacks(log_dir, dataset, batch_size, hparams=None, note=None):
    """The `RunMonitor` writing the run in `log_dir`: probed on the first
    validation batch (the train/inference gap is a metric of the HParams
    dashboard), ranked by the task's `objective`, with `hparams` as its
    HParams session (by default, its model's BN described) and `note` in
    its text summary."""
    return [
        RunMonitor(
            log_dir,
            loss_scale=dataset.loss_scale,
            probe_data=dataset.x_val[:batch_size],
            objective=objective(dataset.task),
            hparams=hparams,
            note=note,
        ),
    ]


def _fit(model, dataset, epochs, batch_size, callbacks, verbose):
    return model.fit(
        dataset.x_train,
        dataset.y_train,
        validation_data=(dataset.x_val, dataset.y_val),
        epochs=epochs,
        batch_size=batch_size,
        callbacks=callbacks,
        verbose=2 if verbose else 0,
    )


def in_target_units(history, dataset):
    """A Keras history as floats, its losses converted from the
    standardized regression target to the target's units (mean squared
    errors times `dataset.loss_scale`; classification is unchanged)."""
    return {
        name: [
            float(v) * (dataset.loss_scale if _is_loss(name) else 1.0)
            for v in curve
        ]
        for name, curve in history.items()
    }


def _is_loss(name):
    return name in ("loss", "val_loss")


def batch_warnings(dataset, batch_size, ghost_batch_size=None):
    """What is wrong with the batch sizes for this training set, as
    messages: a batch larger than the training set, ghost batches not
    smaller than the real batch (then 'ghost' is plain BN)."""
    messages = []
    samples = len(dataset.x_train)
    batch = min(batch_size, samples)
    if batch_size > samples:
        messages.append(
            f"--batch-size {batch_size} is larger than the {samples} "
            "training samples: every step trains on all of them (one step "
            f"per epoch, a batch of {samples}); give a --batch-size smaller "
            f"than {samples} for several steps per epoch"
        )
    if ghost_batch_size is not None and ghost_batch_size >= batch:
        messages.append(
            f"ghost batches of {ghost_batch_size} samples are not smaller "
            f"than the real batch of {batch}: 'ghost' trains as plain batch "
            f"normalization; give a --ghost-batch-size smaller than {batch}"
        )
    return messages


@dataclasses.dataclass
class Result:
    """A trained configuration, or a search's trial: its validation curves
    and timings."""

    label: str
    run_dir: str
    history: dict  # Keras's history: metric name -> one float per epoch
    seconds: list  # seconds per epoch
    metric: str  # the `objective` the results are ranked by
    configuration: Configuration = None  # None for a search's trial
    first_epoch: int = 1  # a trial that hyperband continues starts later
    trial_id: str = None  # a search's trial

    @property
    def is_baseline(self):
        """Whether this is `compare`'s configuration without BN (on the
        inputs neither)."""
        return (
            self.configuration is not None and self.configuration.is_baseline
        )

    @property
    def curve(self):
        """The ranking metric per epoch."""
        return self.history[self.metric]

    @property
    def higher_is_better(self):
        return higher_is_better(self.metric)

    @property
    def best(self):
        finite = [v for v in self.curve if math.isfinite(v)]
        if not finite:
            return math.nan
        return max(finite) if self.higher_is_better else min(finite)

    @property
    def best_epoch(self):
        """1-based epoch of the best value (the first one, on ties)."""
        best = self.best
        if math.isnan(best):
            return None
        return self.first_epoch + self.curve.index(best)

    @property
    def epochs_to_fraction(self):
        """First epoch within `FRACTION_OF_BEST` of the best value."""
        best = self.best
        if math.isnan(best):
            return None
        if self.higher_is_better:
            threshold = FRACTION_OF_BEST * best
            reached = [v >= threshold for v in self.curve]
        else:
            threshold = best / FRACTION_OF_BEST if best >= 0 else best
            reached = [v <= threshold for v in self.curve]
        return self.first_epoch + reached.index(True)

    @property
    def seconds_per_epoch(self):
        """Median over epochs (the first one includes tracing)."""
        return float(np.median(self.seconds)) if self.seconds else math.nan

    def sort_key(self):
        best = self.best
        if math.isnan(best):
            best = -math.inf if self.higher_is_better else math.inf
        return (
            -best if self.higher_is_better else best,
            self.epochs_to_fraction or math.inf,
            self.seconds_per_epoch,
        )


# -- bn-keras compare ---------------------------------------------------------


class Comparison:
    """One model per configuration, from the same initial weights.

    The base model is built (seeded) when the comparison is created, so
    that a usage error (a CNN on tabular data) comes before any output,
    and so is each configuration's model, once, to find those that build
    the same network (`merge_same_networks`): `configurations` are the
    ones trained, `requested` counts those asked for. `results` fills as
    configurations finish: what an interrupted comparison has done stays
    there.

    Args:
        settings: A `ComparisonSettings`.
        dataset: A `bn_keras.cli.datasets.Dataset`.
    """

    def __init__(self, settings, dataset):
        self.settings = settings
        self.dataset = dataset
        keras.utils.set_random_seed(settings.seed)
        self.base = build_base_model(settings.model, dataset, settings.quick)
        requested = configurations(
            settings.placements,
            settings.normalizations,
            settings.input_batchnorms,
        )
        self.requested = len(requested)
        self.configurations = merge_same_networks(requested, self._signature)
        self.metric = objective(dataset.task)
        self.results = []

    def _model(self, configuration):
        settings = self.settings
        return make_model(
            self.base,
            configuration,
            settings.ghost_batch_size,
            self.total_steps,
            settings.momentum,
        )

    def _signature(self, configuration):
        return network_signature(self._model(configuration))

    def same_network_notes(self):
        """Why configurations were merged: a clause per set of placements
        that build one network (`same_network_note`), in order."""
        chain = is_chain(self.base)
        merged = dict.fromkeys(
            (c.placement, *c.same_as) for c in self.configurations if c.same_as
        )
        return [same_network_note(group, chain) for group in merged]

    def setup_warnings(self):
        """What is wrong with the batch sizes here, as messages."""
        settings = self.settings
        ghost = "ghost" in settings.normalizations
        return batch_warnings(
            self.dataset,
            settings.batch_size,
            settings.ghost_batch_size if ghost else None,
        )

    @property
    def steps_per_epoch(self):
        return math.ceil(len(self.dataset.x_train) / self.settings.batch_size)

    @property
    def total_steps(self):
        """Training steps of one configuration (renorm schedules span it)."""
        return self.settings.epochs * self.steps_per_epoch

    def run(self, session, progress=None):
        """Trains every configuration into a run folder under `session`.

        Args:
            session: The comparison's folder.
            progress: Optional object told of the progress: its
                `epoch(index, label, epoch)` at the start of every epoch
                of configuration `index`, its `finished(count)` after each
                configuration.

        Returns:
            `results`, one `Result` per configuration, in order.
        """
        for index, configuration in enumerate(self.configurations):
            on_epoch = None
            if progress is not None:
                label = configuration.label(self.settings.ghost_batch_size)
                on_epoch = functools.partial(progress.epoch, index, label)
            self.results.append(
                self.train_one(configuration, session, on_epoch)
            )
            if progress is not None:
                progress.finished(len(self.results))
        return self.results

    def train_one(self, configuration, session, on_epoch=None):
        """Trains one configuration into `session/<its slug>`."""
        settings = self.settings
        model = self._model(configuration)
        compile_model(model, self.dataset.task, settings.learning_rate)
        run_dir = os.path.join(session, configuration.slug)
        history, seconds = train(
            model,
            self.dataset,
            run_dir,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            seed=settings.seed,
            verbose=settings.verbose,
            on_epoch=on_epoch,
            hparams=configuration_hparams(configuration, settings),
            note=self._run_note(configuration),
        )
        return Result(
            configuration.label(settings.ghost_batch_size),
            run_dir,
            history,
            seconds,
            self.metric,
            configuration,
        )

    def _run_note(self, configuration):
        """The text summary's sentence on a merged configuration."""
        if not configuration.same_as:
            return None
        placements = (configuration.placement, *configuration.same_as)
        note = same_network_note(placements, is_chain(self.base))
        return f"Trained once for {' and '.join(placements)}: {note}."
