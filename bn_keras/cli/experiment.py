"""What the commands train: configurations, models, training and results.

`bn-keras compare` trains one model per `Configuration` through a
`Comparison`; `bn-keras search` builds a hypermodel and a tuner here and
runs the search. The objective of a task (validation accuracy, or
validation loss for regression) is decided by `objective`, and only there.
Nothing here prints or writes summaries: that is `bn_keras.cli.report`.
"""

import dataclasses
import functools
import math
import os
import time

import keras
import numpy as np

from bn_keras import registry
from bn_keras.callbacks import BatchNormMonitor
from bn_keras.cli.common import UsageError
from bn_keras.cli.common import parse_names
from bn_keras.models import insert_batchnorm

#: The architectures of `--model`.
MODELS = ("mlp", "cnn")

#: "Epochs to 95%": the first epoch whose validation accuracy is at least
#: 95% of the best (for a loss: at most the best / 0.95).
FRACTION_OF_BEST = 0.95


def objective(task):
    """The validation metric a task is ranked by: `"val_accuracy"` for
    classification, `"val_loss"` for regression."""
    return "val_accuracy" if task == "classification" else "val_loss"


def higher_is_better(metric):
    """Whether a larger value of an `objective` metric is better."""
    return metric == "val_accuracy"


# -- settings -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """What both commands take, validated (see their `--help`)."""

    model: str
    placements: tuple
    normalizations: tuple
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    quick: bool = False
    verbose: bool = False


# -- configurations -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One model to train: a placement (or none) and a normalization, and
    the input normalization (`insert_batchnorm`'s `input_batchnorm` name)."""

    placement: str  # canonical; "layer-act" is no BN
    normalization: str = None
    input_batchnorm: str = "none"

    @property
    def has_batchnorm(self):
        """Whether the layers get BN (the inputs aside)."""
        return self.placement != "layer-act"

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
        return f"{self.placement} + {normalization}"

    @property
    def slug(self):
        """The configuration's run folder name."""
        slug = "no-bn"
        if self.has_batchnorm:
            slug = f"{self.placement}_{self.normalization}"
        if self.input_batchnorm != "none":
            return f"input-{self.input_batchnorm}_{slug}"
        return slug


def _resolve(names, get, kind, valid):
    """`get(name)` for each name, in order, without duplicates; an unknown
    name is a usage error that lists the `valid` ones."""
    resolved = []
    for name in names:
        try:
            value = get(name)
        except ValueError:
            raise UsageError(
                f"unknown {kind} {name!r}. Valid {kind}s: {valid}"
            ) from None
        if value not in resolved:
            resolved.append(value)
    return resolved


def resolve_placements(names):
    """Canonical placement names, in order, without duplicates."""
    return _resolve(
        names,
        registry.get_placement,
        "placement",
        registry.valid_placement_names(quoted=False),
    )


def resolve_normalizations(names):
    """Registered normalization names, in order, without duplicates."""
    return _resolve(
        names,
        registry.get_normalization_name,
        "normalization",
        ", ".join(registry.normalization_names()),
    )


def resolve_input_normalizations(names):
    """Input normalization names (`--input-batchnorm`, as typed), in order,
    without duplicates; `("none",)` when none is given."""
    return tuple(
        _resolve(
            parse_names(names) or ["none"],
            registry.get_input_normalization_name,
            "input normalization",
            ", ".join(registry.input_normalization_names()),
        )
    )


def resolve_names(placements, normalizations, defaults):
    """`(placements, normalizations)` of `--placements` and
    `--normalizations` as typed (lists of space- or comma-separated names),
    or of `defaults`, a pair of the same; resolved, as tuples."""
    default_placements, default_normalizations = defaults
    return (
        tuple(
            resolve_placements(parse_names(placements) or default_placements)
        ),
        tuple(
            resolve_normalizations(
                parse_names(normalizations) or default_normalizations
            )
        ),
    )


def configurations(placements, normalizations, input_batchnorms=("none",)):
    """'No BN' first, then every (placement, normalization) pair; all of
    them once per input normalization, in the order given."""
    result = []
    for input_batchnorm in input_batchnorms:
        result.append(Configuration("layer-act", None, input_batchnorm))
        for placement in placements:
            if placement == "layer-act":
                continue  # "no BN" is always there
            for normalization in normalizations:
                result.append(
                    Configuration(placement, normalization, input_batchnorm)
                )
    return result


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
                "--model cnn needs image data (the digits dataset, or --data "
                "FILE.npz whose features have shape (N, H, W) or "
                f"(N, H, W, C)); {dataset.name} has {dataset.num_features} "
                "features: use --model mlp"
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
    monitor=True,
    on_epoch=None,
):
    """Fits a compiled model with TensorBoard logs in `run_dir`.

    Args:
        model: A compiled model.
        dataset: A `bn_keras.cli.datasets.Dataset`.
        run_dir: The run's TensorBoard folder.
        epochs, batch_size, seed: As `fit` takes them; the seed is set just
            before `fit`, so that every configuration sees the same batches.
        verbose: Whether Keras prints a line per epoch.
        monitor: Whether a `BatchNormMonitor` logs the BN layers too (in
            `run_dir/batchnorm`, probed on the first validation batch).
        on_epoch: Optional function called with each epoch (from 0) as it
            begins.

    Returns:
        `(history, seconds)`: Keras's history (metric name to a list of
        floats, one per epoch) and the seconds each epoch took.
    """
    callbacks = [
        keras.callbacks.TensorBoard(
            log_dir=run_dir, write_graph=False, profile_batch=0
        )
    ]
    if monitor:
        callbacks.append(
            BatchNormMonitor(run_dir, probe_data=dataset.x_val[:batch_size])
        )
    clock = _EpochClock(on_epoch)
    callbacks.append(clock)
    keras.utils.set_random_seed(seed)
    history = model.fit(
        dataset.x_train,
        dataset.y_train,
        validation_data=(dataset.x_val, dataset.y_val),
        epochs=epochs,
        batch_size=batch_size,
        callbacks=callbacks,
        verbose=2 if verbose else 0,
    )
    values = {
        name: [float(v) for v in curve]
        for name, curve in history.history.items()
    }
    return values, clock.seconds


@dataclasses.dataclass
class Result:
    """A trained configuration: its validation curves and timings."""

    configuration: Configuration
    label: str
    run_dir: str
    history: dict  # Keras's history: metric name -> one float per epoch
    seconds: list  # seconds per epoch
    metric: str  # the `objective` the configurations are ranked by

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
        return self.curve.index(best) + 1

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
        return reached.index(True) + 1

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class ComparisonSettings(Settings):
    """What `bn-keras compare` trains, validated (see its `--help`)."""

    momentum: float
    ghost_batch_size: int
    input_batchnorms: tuple = ("none",)


class Comparison:
    """One model per configuration, from the same initial weights.

    The base model is built (seeded) when the comparison is created, so
    that a usage error (a CNN on tabular data) comes before any output.
    `results` fills as configurations finish: what an interrupted
    comparison has done stays there.

    Args:
        settings: A `ComparisonSettings`.
        dataset: A `bn_keras.cli.datasets.Dataset`.
    """

    def __init__(self, settings, dataset):
        self.settings = settings
        self.dataset = dataset
        keras.utils.set_random_seed(settings.seed)
        self.base = build_base_model(settings.model, dataset, settings.quick)
        self.configurations = configurations(
            settings.placements,
            settings.normalizations,
            settings.input_batchnorms,
        )
        self.metric = objective(dataset.task)
        self.results = []

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
        model = make_model(
            self.base,
            configuration,
            settings.ghost_batch_size,
            self.total_steps,
            settings.momentum,
        )
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
            monitor=not configuration.is_baseline,
            on_epoch=on_epoch,
        )
        return Result(
            configuration,
            configuration.label(settings.ghost_batch_size),
            run_dir,
            history,
            seconds,
            self.metric,
        )


# -- bn-keras search ----------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchSettings(Settings):
    """What `bn-keras search` searches, validated (see its `--help`)."""

    hypermodel: str
    shared: bool
    tuner: str
    trials: int


def tuner_class(name):
    """The keras-tuner class of a `--tuner` name."""
    from bn_keras.tuner import get_tuner

    try:
        return get_tuner(name)
    except ImportError as error:
        raise UsageError(f"--tuner {name}: {error}") from None


def _placement_hypermodel(settings, dataset):
    from bn_keras import tuner

    keras.utils.set_random_seed(settings.seed)
    base = build_base_model(settings.model, dataset, settings.quick)
    compile_model(base, dataset.task, settings.learning_rate)
    return tuner.BNPlacementHyperModel(
        model=base,
        placements=settings.placements,
        normalizations=settings.normalizations,
        per_layer=not settings.shared,
    )


def _search_model(settings, dataset):
    from bn_keras import tuner

    space = {
        "num_classes": (
            dataset.num_classes if dataset.task == "classification" else None
        ),
        "placements": settings.placements,
        "normalizations": settings.normalizations,
    }
    if settings.hypermodel == "mlp":
        if settings.quick:
            space.update(num_layers=(1, 2), units=(16, 32))
        return tuner.BNSearchMLP(input_shape=(dataset.num_features,), **space)
    if dataset.image_shape is None:
        raise UsageError(
            "--hypermodel cnn needs image data (the digits dataset, or --data "
            "FILE.npz whose features have shape (N, H, W) or (N, H, W, C)); "
            f"{dataset.name} has {dataset.num_features} features: use "
            "--hypermodel placement or mlp"
        )
    if settings.quick:
        space.update(num_blocks=(1, 2), filters=(8, 16))
    return tuner.BNSearchCNN(input_shape=dataset.image_shape, **space)


def build_hypermodel(settings, dataset):
    """The hypermodel of `--hypermodel`: placements on the `compare`
    architecture, or a ready-made `BNSearchMLP` / `BNSearchCNN`."""
    if settings.hypermodel == "placement":
        return _placement_hypermodel(settings, dataset)
    return _search_model(settings, dataset)


def make_tuner(settings, hypermodel, task, session):
    """The tuner, with its trials in `session/tuner`."""
    if settings.tuner == "hyperband":
        budget = {"max_epochs": settings.epochs, "factor": 3}
    else:
        budget = {"max_trials": settings.trials}
    return tuner_class(settings.tuner)(
        hypermodel,
        objective=objective(task),
        seed=settings.seed,
        directory=session,
        project_name="tuner",
        overwrite=False,
        **budget,
    )


def search(tuner, settings, dataset, logdir, callbacks=()):
    """Runs the search, one TensorBoard run per trial under `logdir`.

    Every trial is logged by Keras's TensorBoard callback and a
    `BatchNormMonitor`; `callbacks` are added to them.
    """
    epochs = {"epochs": settings.epochs}
    if settings.tuner == "hyperband":
        epochs = {}  # hyperband decides, up to its max_epochs
    keras.utils.set_random_seed(settings.seed)
    tuner.search(
        dataset.x_train,
        dataset.y_train,
        validation_data=(dataset.x_val, dataset.y_val),
        batch_size=settings.batch_size,
        callbacks=[
            keras.callbacks.TensorBoard(
                log_dir=logdir, write_graph=False, profile_batch=0
            ),
            BatchNormMonitor(logdir),
            *callbacks,
        ],
        verbose=2 if settings.verbose else 0,
        **epochs,
    )
