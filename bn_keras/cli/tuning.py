"""What `bn-keras search` runs: the hypermodel, the tuner and the search.

`Search` runs a keras-tuner search of BN placements on `compare`'s
architecture (`bn_keras.tuner.BNPlacementHyperModel`) or a ready-made
`BNSearchMLP` / `BNSearchCNN`, each trial logged by the
`bn_keras.cli.experiment.RunMonitor` that `compare` uses, and keeps a
`bn_keras.cli.experiment.Result` per completed trial. With one choice for
every layer (`--shared`), placements that build the same network are
searched once (`shared_placements`). Nothing here prints: that is
`bn_keras.cli.report`.
"""

import os
import time
import warnings

import keras

from bn_keras import registry
from bn_keras.cli.common import UsageError
from bn_keras.cli.experiment import IMAGE_SOURCES
from bn_keras.cli.experiment import Configuration
from bn_keras.cli.experiment import InterruptCheck
from bn_keras.cli.experiment import Result
from bn_keras.cli.experiment import batch_warnings
from bn_keras.cli.experiment import build_base_model
from bn_keras.cli.experiment import compile_model
from bn_keras.cli.experiment import in_target_units
from bn_keras.cli.experiment import is_chain
from bn_keras.cli.experiment import logging_callbacks
from bn_keras.cli.experiment import merge_same_networks
from bn_keras.cli.experiment import objective
from bn_keras.cli.experiment import same_network_note
from bn_keras.models import insert_batchnorm
from bn_keras.models._signature import network_signature


def tuner_class(name):
    """The keras-tuner class of a `--tuner` name."""
    from bn_keras.tuner import get_tuner

    try:
        return get_tuner(name)
    except ImportError as error:
        raise UsageError(f"--tuner {name}: {error}") from None


def shared_placements(base, placements, normalizations):
    """The placements of a search with one choice for every layer, those
    that build the same network on `base` merged.

    Two placements merge when, applied to every layer of `base` by
    `insert_batchnorm`, they build the same network with each of
    `normalizations`, with and without an input BN.

    Returns:
        `(placements, merged)`: the placements to search, in order, and
        the merged ones as `Configuration`s (`same_as` set), for their
        notes.
    """
    with_bn = [
        Configuration(placement)
        for placement in placements
        if registry.has_batchnorm(placement)
    ]

    def signature(configuration):
        return tuple(
            network_signature(
                insert_batchnorm(
                    base,
                    placement=configuration.placement,
                    normalization=normalization,
                    input_batchnorm=input_batchnorm,
                )
            )
            for normalization in normalizations
            for input_batchnorm in (False, True)
        )

    merged = merge_same_networks(with_bn, signature)
    kept = {c.placement for c in merged}
    searched = tuple(
        p for p in placements if p in kept or not registry.has_batchnorm(p)
    )
    return searched, [c for c in merged if c.same_as]


def _placement_hypermodel(settings, dataset):
    """The placement hypermodel on `compare`'s architecture, and the
    placements merged (`shared_placements`; none unless `--shared`)."""
    from bn_keras import tuner

    keras.utils.set_random_seed(settings.seed)
    base = build_base_model(settings.model, dataset, settings.quick)
    compile_model(base, dataset.task, settings.learning_rate)
    placements, merged = settings.placements, []
    if settings.shared:
        placements, merged = shared_placements(
            base, placements, settings.normalizations
        )
    hypermodel = tuner.BNPlacementHyperModel(
        model=base,
        placements=placements,
        normalizations=settings.normalizations,
        per_layer=not settings.shared,
    )
    notes = [
        same_network_note((c.placement, *c.same_as), is_chain(base))
        + f": searched once, as {c.placement}"
        for c in merged
    ]
    return hypermodel, notes


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
            f"--hypermodel cnn needs image data ({IMAGE_SOURCES}); "
            f"{dataset.name} has {dataset.num_features} features: use "
            "--hypermodel placement or mlp"
        )
    if settings.quick:
        space.update(num_blocks=(1, 2), filters=(8, 16))
    return tuner.BNSearchCNN(input_shape=dataset.image_shape, **space)


def build_hypermodel(settings, dataset):
    """The hypermodel of `--hypermodel`: placements on the `compare`
    architecture, or a ready-made `BNSearchMLP` / `BNSearchCNN`.

    Returns:
        `(hypermodel, notes)`: `notes` says which placements build the
        same network with `--shared` and were searched as one.
    """
    if settings.hypermodel == "placement":
        return _placement_hypermodel(settings, dataset)
    return _search_model(settings, dataset), []


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


class TrialRecorder(keras.callbacks.Callback):
    """Records each trial's Keras history and epoch times, by trial id.

    keras-tuner deep-copies the search's callbacks for every trial; the
    copy is this same object, so that it sees every trial.

    Args:
        tuner: The tuner whose running trial each `fit` belongs to.
    """

    def __init__(self, tuner):
        super().__init__()
        self.tuner = tuner
        self.histories = {}  # trial id -> metric name -> one float per epoch
        self.seconds = {}  # trial id -> seconds per epoch
        self.first_epochs = {}  # trial id -> its first epoch, from 1

    def __deepcopy__(self, memo):
        return self

    def on_train_begin(self, logs=None):
        trial = self.tuner.oracle.ongoing_trials.get(self.tuner.tuner_id)
        self._trial = trial.trial_id if trial else str(len(self.histories))
        self.histories[self._trial] = {}
        self.seconds[self._trial] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self.first_epochs.setdefault(self._trial, epoch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self.seconds[self._trial].append(time.perf_counter() - self._start)
        history = self.histories[self._trial]
        for name, value in (logs or {}).items():
            history.setdefault(name, []).append(float(value))


class Search:
    """A keras-tuner search of BN placements, and its completed trials.

    The hypermodel is built (seeded) when the search is created, so that a
    usage error (a CNN on tabular data) comes before any output; with
    `--shared`, placements that build the same network are searched once
    (`shared_placements`), which `notes` says. `results` lists the trials
    completed so far: what an interrupted search has done.

    Args:
        settings: A `SearchSettings`.
        dataset: A `bn_keras.cli.datasets.Dataset`.
    """

    def __init__(self, settings, dataset):
        self.settings = settings
        self.dataset = dataset
        self.metric = objective(dataset.task)
        self.hypermodel, self.notes = build_hypermodel(settings, dataset)
        self.tuner = None
        self.logdir = None

    def setup_warnings(self):
        """What is wrong with the batch size here, as messages."""
        return batch_warnings(self.dataset, self.settings.batch_size)

    def run(self, session, callbacks=()):
        """Searches, with the tuner's trials in `session/tuner` and one
        TensorBoard run per trial under `session/logs`.

        Every trial is logged by a `RunMonitor` (its HParams session, the
        trial's values, set by `BNHyperModel`); `callbacks` are added to
        it.
        """
        settings = self.settings
        self.tuner = make_tuner(
            settings, self.hypermodel, self.dataset.task, session
        )
        self.recorder = TrialRecorder(self.tuner)
        self.logdir = os.path.join(session, "logs")
        epochs = {"epochs": settings.epochs}
        if settings.tuner == "hyperband":
            epochs = {}  # hyperband decides, up to its max_epochs
        keras.utils.set_random_seed(settings.seed)
        self.tuner.search(
            self.dataset.x_train,
            self.dataset.y_train,
            validation_data=(self.dataset.x_val, self.dataset.y_val),
            batch_size=settings.batch_size,
            callbacks=[
                *logging_callbacks(
                    self.logdir, self.dataset, settings.batch_size
                ),
                self.recorder,
                InterruptCheck(),
                *callbacks,
            ],
            verbose=2 if settings.verbose else 0,
            **epochs,
        )

    def results(self):
        """A `Result` per completed trial (losses in the target's units)."""
        from bn_keras.tuner._trial_runs import run_name

        if self.tuner is None:
            return []
        results = []
        for trial_id, history in self.recorder.histories.items():
            trial = self.tuner.oracle.trials.get(trial_id)
            done = trial is not None and str(trial.status) == "COMPLETED"
            if not done or self.metric not in history:
                continue
            values = trial.hyperparameters.values
            results.append(
                Result(
                    f"trial {trial_id}",
                    os.path.join(self.logdir, run_name(trial_id, values)),
                    in_target_units(history, self.dataset),
                    self.recorder.seconds[trial_id],
                    self.metric,
                    first_epoch=self.recorder.first_epochs[trial_id],
                    trial_id=trial_id,
                )
            )
        return results

    def best_model(self):
        """The best trial's model at its best epoch, without its optimizer;
        for regression, with a last layer that turns its standardized
        outputs back into the target's units."""
        with warnings.catch_warnings():
            # keras-tuner's checkpoints hold the optimizer's state too.
            warnings.filterwarnings("ignore", message="Skipping variable")
            best = self.tuner.get_best_models(1)[0]
        dataset = self.dataset
        if dataset.task != "regression":
            return best
        outputs = keras.layers.Rescaling(
            dataset.target_scale, offset=dataset.target_mean, name="to_target"
        )(best.outputs[0])
        return keras.Model(best.inputs, outputs, name=best.name)
