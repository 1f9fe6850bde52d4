"""`bn-keras search`: search batch normalization placements with keras-tuner.

Runs `bn_keras.tuner.BNPlacementHyperModel` on the `compare` architecture
(or a ready-made `BNSearchMLP` / `BNSearchCNN`) with a chosen tuner and
trial budget, and prints `bn_keras.tuner.placement_report`.
"""

import argparse
import math
import os
import warnings

import keras

from bn_keras import registry
from bn_keras.callbacks import BatchNormMonitor
from bn_keras.cli import compare
from bn_keras.cli import datasets
from bn_keras.cli.common import UsageError
from bn_keras.cli.common import console
from bn_keras.cli.common import new_session_dir
from bn_keras.cli.common import parse_names
from bn_keras.cli.common import quiet_tensorflow_warnings

HYPERMODELS = ("placement", "mlp", "cnn")
DEFAULT_TRIALS = 10
DEFAULT_EPOCHS = 10
QUICK_TRIALS = 2
QUICK_EPOCHS = 2
BEST_MODEL = "best_model.keras"

HELP = "search BN placements with keras-tuner and print the report"

DESCRIPTION = """\
Search where batch normalization goes, and which, with keras-tuner.

hypermodels:
  placement  bn_keras.tuner.BNPlacementHyperModel on the architecture of
             'bn-keras compare' (--model mlp|cnn): one placement and
             normalization choice per Dense/convolution layer (--shared:
             one choice for all), and whether the inputs get BN
  mlp        bn_keras.tuner.BNSearchMLP: depth, widths, learning rate and BN
             per block
  cnn        bn_keras.tuner.BNSearchCNN: the same for a small CNN (images)

tuners: random, grid, hyperband (--epochs is its max_epochs; --trials is
ignored), bayesian (needs scipy: pip install 'bn-keras[bayesian]').

Writes the tuner's trials, one TensorBoard run per trial (Keras's fit
metrics, bn_keras's BatchNormMonitor and the trial's HParams) and the best
model (best_model.keras, for 'bn-keras inspect') into a new folder under
--logdir.
"""

EPILOG = """\
examples:
  bn-keras search --trials 10                    # digits, random search
  bn-keras search --dataset wine --tuner bayesian --shared
  bn-keras search --hypermodel cnn --tuner hyperband --epochs 9
"""


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "search",
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    datasets.add_data_arguments(parser)
    space = parser.add_argument_group("search space")
    space.add_argument(
        "--hypermodel",
        choices=HYPERMODELS,
        default="placement",
        help="what to search (default: placement)",
    )
    space.add_argument(
        "--model",
        choices=compare.MODELS,
        default="mlp",
        help="with --hypermodel placement: the architecture (default: mlp)",
    )
    space.add_argument(
        "--placements",
        nargs="+",
        metavar="NAME",
        help="placements to choose from (space- or comma-separated; default: "
        f"all four: {' '.join(registry.PLACEMENTS)})",
    )
    space.add_argument(
        "--normalizations",
        nargs="+",
        metavar="NAME",
        help="normalizations to choose from (default: all: "
        f"{' '.join(registry.normalization_names())})",
    )
    space.add_argument(
        "--shared",
        action="store_true",
        help="with --hypermodel placement: one choice for every layer "
        "instead of one per layer",
    )
    tuning = parser.add_argument_group("tuner")
    tuning.add_argument(
        "--tuner", choices=registry.TUNERS, default="random", help="(default: random)"
    )
    tuning.add_argument(
        "--trials",
        type=int,
        metavar="N",
        help=f"trial budget, max_trials (default: {DEFAULT_TRIALS}, "
        f"{QUICK_TRIALS} with --quick)",
    )
    tuning.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help=f"epochs per trial (default: {DEFAULT_EPOCHS}, {QUICK_EPOCHS} "
        "with --quick)",
    )
    tuning.add_argument(
        "--batch-size", type=int, default=32, metavar="N", help="(default: 32)"
    )
    tuning.add_argument(
        "--learning-rate",
        type=float,
        default=1e-3,
        metavar="LR",
        help="with --hypermodel placement: Adam's learning rate (default: "
        "0.001; the mlp and cnn hypermodels search it)",
    )
    tuning.add_argument("--seed", type=int, default=0, help="(default: 0)")
    output = parser.add_argument_group("output")
    output.add_argument(
        "--logdir",
        default="runs",
        metavar="DIR",
        help="each search goes to a new folder DIR/search-<dataset>-<time> "
        "(default: runs)",
    )
    output.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke test: {QUICK_TRIALS} trials of {QUICK_EPOCHS} epochs, "
        "small models",
    )
    output.add_argument(
        "--verbose",
        action="store_true",
        help="show keras-tuner's and Keras's own output",
    )
    parser.set_defaults(run=run)
    return parser


def _tuner_class(name):
    """The tuner class of a `--tuner` name."""
    from bn_keras.tuner import get_tuner

    try:
        return get_tuner(name)
    except ImportError as error:
        raise UsageError(f"--tuner {name}: {error}") from None


def _objective(task):
    """The metric to optimize; keras-tuner knows its direction."""
    return "val_accuracy" if task == "classification" else "val_loss"


def build_hypermodel(args, dataset, placements, normalizations):
    from bn_keras import tuner

    num_classes = None
    if dataset.task == "classification":
        num_classes = dataset.num_classes
    small = {}
    if args.hypermodel == "placement":
        keras.utils.set_random_seed(args.seed)
        base = compare.build_base_model(args.model, dataset, args.quick)
        compare.compile_model(base, dataset.task, args.learning_rate)
        return tuner.BNPlacementHyperModel(
            base,
            placements=placements,
            normalizations=normalizations,
            per_layer=not args.shared,
        )
    if args.hypermodel == "mlp":
        if args.quick:
            small = {"num_layers": (1, 2), "units": (16, 32)}
        return tuner.BNSearchMLP(
            num_classes,
            input_shape=(dataset.num_features,),
            placements=placements,
            normalizations=normalizations,
            **small,
        )
    if dataset.image_shape is None:
        raise UsageError(
            "--hypermodel cnn needs image data (the digits dataset, or --data "
            "FILE.npz whose features have shape (N, H, W) or (N, H, W, C)); "
            f"{dataset.name} has {dataset.num_features} features: use "
            "--hypermodel placement or mlp"
        )
    if args.quick:
        small = {"num_blocks": (1, 2), "filters": (8, 16)}
    return tuner.BNSearchCNN(
        num_classes,
        input_shape=dataset.image_shape,
        placements=placements,
        normalizations=normalizations,
        **small,
    )


class _TrialProgress(keras.callbacks.Callback):
    """Moves the progress bar once per trial.

    keras-tuner deep-copies the search's callbacks for every trial; the
    copy is this same object, so that the bar is shared.
    """

    def __init__(self, progress, bar, total):
        super().__init__()
        self.progress = progress
        self.bar = bar
        self.total = total
        self.trials = 0

    def __deepcopy__(self, memo):
        return self

    def on_train_begin(self, logs=None):
        self.trials += 1
        of = f"/{self.total}" if self.total else ""
        self.progress.update(self.bar, description=f"trial {self.trials}{of}")

    def on_train_end(self, logs=None):
        self.progress.update(self.bar, completed=self.trials)


def run(args):
    from rich.progress import BarColumn
    from rich.progress import Progress
    from rich.progress import TextColumn
    from rich.progress import TimeElapsedColumn

    from bn_keras.tuner import placement_report

    if args.data is not None and args.dataset is not None:
        raise UsageError("give either --dataset or --data, not both")
    if args.target is not None and args.data is None:
        raise UsageError("--target goes with --data FILE")
    placements = compare.resolve_placements(
        parse_names(args.placements) or registry.PLACEMENTS
    )
    normalizations = compare.resolve_normalizations(
        parse_names(args.normalizations) or registry.normalization_names()
    )
    trials, epochs = args.trials, args.epochs
    if trials is None:
        trials = QUICK_TRIALS if args.quick else DEFAULT_TRIALS
    if epochs is None:
        epochs = QUICK_EPOCHS if args.quick else DEFAULT_EPOCHS
    for value, option in (
        (trials, "--trials"),
        (epochs, "--epochs"),
        (args.batch_size, "--batch-size"),
    ):
        if value < 1:
            raise UsageError(
                f"{option} must be a positive integer; got {value}"
            )
    if args.tuner == "hyperband" and epochs < 2:
        raise UsageError("--tuner hyperband needs --epochs of at least 2")
    tuner_class = _tuner_class(args.tuner)

    dataset = datasets.load(
        args.dataset, args.data, args.target, args.task, args.seed
    )
    if args.hypermodel == "mlp" and dataset.image_shape is not None:
        dataset.x_train = dataset.x_train.reshape(len(dataset.x_train), -1)
        dataset.x_val = dataset.x_val.reshape(len(dataset.x_val), -1)
        dataset.image_shape = None
    hypermodel = build_hypermodel(args, dataset, placements, normalizations)
    session = new_session_dir(args.logdir, f"search-{dataset.name}")
    logs = os.path.join(session, "logs")
    options = {}
    if args.tuner == "hyperband":
        options = {"max_epochs": epochs, "factor": 3}
    else:
        options = {"max_trials": trials}
    tuner = tuner_class(
        hypermodel,
        objective=_objective(dataset.task),
        seed=args.seed,
        directory=session,
        project_name="tuner",
        overwrite=False,
        **options,
    )

    out = console()
    out.print(dataset.describe())
    budget = (
        f"hyperband up to {epochs} epochs per trial"
        if args.tuner == "hyperband"
        else f"{args.tuner} search, {trials} trials x {epochs} epochs"
    )
    out.print(
        f"hypermodel {args.hypermodel}"
        + (f" on {args.model}" if args.hypermodel == "placement" else "")
        + f", {budget}, batch {args.batch_size}, seed {args.seed}"
    )
    total = None if args.tuner == "hyperband" else trials
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed} trials"),
        TimeElapsedColumn(),
        console=console(stderr=True),
    )
    keras.utils.set_random_seed(args.seed)
    with progress, quiet_tensorflow_warnings(args.verbose):
        bar = progress.add_task("searching", total=total)
        search_kwargs = {}
        if args.tuner != "hyperband":
            search_kwargs["epochs"] = epochs
        tuner.search(
            dataset.x_train,
            dataset.y_train,
            validation_data=(dataset.x_val, dataset.y_val),
            batch_size=args.batch_size,
            callbacks=[
                keras.callbacks.TensorBoard(
                    log_dir=logs, write_graph=False, profile_batch=0
                ),
                BatchNormMonitor(logs),
                _TrialProgress(progress, bar, total),
            ],
            verbose=2 if args.verbose else 0,
            **search_kwargs,
        )
        done = progress.tasks[0].completed
        progress.update(bar, description="done", total=done)

    out.print()
    rows = placement_report(tuner, console=out)
    best_path = os.path.join(session, BEST_MODEL)
    if rows:
        with warnings.catch_warnings():
            # keras-tuner's checkpoints hold the optimizer's state too.
            warnings.filterwarnings("ignore", message="Skipping variable")
            best = tuner.get_best_models(1)[0]
        best.save(best_path)
        score = rows[0]["score"]
        out.print(
            f"best trial {rows[0]['trial_id']}: "
            f"{_objective(dataset.task)} "
            f"{'-' if score is None or math.isnan(score) else f'{score:.4f}'}"
        )
        out.print(f"best model:   {best_path}")
    else:
        out.print("no trial completed")
    out.print(f"tuner:        {os.path.join(session, 'tuner')}")
    out.print(f"TensorBoard:  {logs} (one run per trial)")
    out.print()
    out.print(f"  tensorboard --logdir {logs}")
    return 0 if rows else 1
