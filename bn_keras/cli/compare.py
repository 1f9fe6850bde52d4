"""`bn-keras compare`: does batch normalization help this model, and where?

Trains the same architecture, from the same initial weights, on the same
split, once without batch normalization and once per (placement,
normalization) pair, then ranks the configurations by their best
validation accuracy (validation loss for regression).
"""

import argparse
import csv
import dataclasses
import math
import os
import time

import keras
import numpy as np

from bn_keras import registry
from bn_keras.callbacks import BatchNormMonitor
from bn_keras.cli import datasets
from bn_keras.cli.common import UsageError
from bn_keras.cli.common import console
from bn_keras.cli.common import new_session_dir
from bn_keras.cli.common import parse_names
from bn_keras.cli.common import quiet_tensorflow_warnings
from bn_keras.cli.common import table
from bn_keras.layers import BatchRenormalization
from bn_keras.layers import GhostBatchNormalization
from bn_keras.layers import RenormClipping
from bn_keras.models import insert_batchnorm

DEFAULT_PLACEMENTS = ("layer-bn-act", "layer-act-bn", "bn-act-layer")
DEFAULT_NORMALIZATIONS = ("batch",)
MODELS = ("mlp", "cnn")
QUICK_EPOCHS = 3
DEFAULT_EPOCHS = 20
LEADERBOARD = "leaderboard.csv"
PLOT = "validation_curves.png"
#: "Epochs to 95%": the first epoch whose validation accuracy is at least
#: 95% of the best (for a loss: at most the best / 0.95).
FRACTION_OF_BEST = 0.95

HELP = "train one model per BN configuration and rank them"

DESCRIPTION = """\
Train the same model once without batch normalization and once per
(placement, normalization) pair, from the same initial weights on the same
train/validation split, and rank the configurations by best validation
accuracy (validation loss for regression). Writes one TensorBoard run per
configuration (Keras's fit metrics and bn_keras's BatchNormMonitor),
leaderboard.csv and a PNG of the validation curves into a new folder under
--logdir (earlier runs are never overwritten).

placements (aliases in parentheses):
{placements}
normalizations:
  batch    bn_keras.layers.BatchNormalization
  ghost    ghost batches of --ghost-batch-size samples
  renorm   batch renormalization, with the paper's r/d schedule compressed
           to the length of the run
"""

EPILOG = """\
examples:
  bn-keras compare                                  # digits, MLP, 20 epochs
  bn-keras compare --dataset wine --normalizations batch renorm
  bn-keras compare --model cnn --placements layer-bn-act --epochs 10
  bn-keras compare --data my.csv --target label --quick
"""


_ORDERS = {
    "layer-bn-act": "layer, BN, activation",
    "layer-act-bn": "layer, activation, BN",
    "bn-act-layer": "BN, activation, layer",
    "layer-act": "no BN (always trained, as 'no BN')",
}


def _placements_help():
    lines = []
    for name in registry.PLACEMENTS:
        aliases = [
            alias
            for alias, canonical in registry.PLACEMENT_ALIASES.items()
            if canonical == name and alias != name
        ]
        label = f"{name} ({', '.join(aliases)})" if aliases else name
        lines.append(f"  {label:<34} {_ORDERS.get(name, '')}".rstrip())
    return "\n".join(lines)


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "compare",
        help=HELP,
        description=DESCRIPTION.format(placements=_placements_help()),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    datasets.add_data_arguments(parser)
    runs = parser.add_argument_group("configurations")
    runs.add_argument(
        "--model",
        default="mlp",
        choices=MODELS,
        help="architecture: a multilayer perceptron, or a small CNN for "
        "image data (digits, or an NPZ of images) (default: mlp)",
    )
    runs.add_argument(
        "--placements",
        nargs="+",
        metavar="NAME",
        help="where BN goes (space- or comma-separated; default: "
        f"{' '.join(DEFAULT_PLACEMENTS)}). 'no BN' is always trained too",
    )
    runs.add_argument(
        "--normalizations",
        nargs="+",
        metavar="NAME",
        help="which BN (default: batch); each placement is trained with each "
        f"normalization. Valid: {', '.join(registry.normalization_names())}",
    )
    runs.add_argument(
        "--momentum",
        type=float,
        default=0.99,
        metavar="M",
        help="momentum of BN's moving statistics (default: 0.99, Keras's); "
        "on a short run, 0.9 lets them keep up",
    )
    runs.add_argument(
        "--ghost-batch-size",
        type=int,
        metavar="N",
        help="ghost batch size for 'ghost' (default: a quarter of the batch "
        "size)",
    )
    training = parser.add_argument_group("training")
    training.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help=f"epochs per configuration (default: {DEFAULT_EPOCHS}, "
        f"{QUICK_EPOCHS} with --quick)",
    )
    training.add_argument(
        "--batch-size", type=int, default=32, metavar="N", help="(default: 32)"
    )
    training.add_argument(
        "--learning-rate",
        type=float,
        default=1e-3,
        metavar="LR",
        help="Adam's learning rate (default: 0.001)",
    )
    training.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the split, the initial weights and the shuffling "
        "(default: 0)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--logdir",
        default="runs",
        metavar="DIR",
        help="each comparison goes to a new folder "
        "DIR/compare-<dataset>-<time> (default: runs)",
    )
    output.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke test in seconds: {QUICK_EPOCHS} epochs, a small model",
    )
    output.add_argument(
        "--verbose",
        action="store_true",
        help="show Keras's own output for every epoch",
    )
    parser.set_defaults(run=run)
    return parser


# -- configurations -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One model to train: a placement (or none) and a normalization."""

    placement: str  # canonical; "layer-act" is no BN
    normalization: str = None

    @property
    def has_batchnorm(self):
        return self.placement != "layer-act"

    def label(self, ghost_batch_size=None):
        if not self.has_batchnorm:
            return "no BN"
        normalization = self.normalization
        if normalization == "ghost" and ghost_batch_size:
            normalization = f"ghost({ghost_batch_size})"
        return f"{self.placement} + {normalization}"

    @property
    def slug(self):
        """The configuration's run folder name."""
        if not self.has_batchnorm:
            return "no-bn"
        return f"{self.placement}_{self.normalization}"


def _valid_placement_names():
    return ", ".join(
        f"{name} (or {', '.join(aliases)})" if aliases else name
        for name, aliases in (
            (
                name,
                [
                    a
                    for a, c in registry.PLACEMENT_ALIASES.items()
                    if c == name and a != name
                ],
            )
            for name in registry.PLACEMENTS
        )
    )


def resolve_placements(names):
    """Canonical placement names, in order, without duplicates."""
    placements = []
    for name in names:
        try:
            placement = registry.get_placement(name)
        except ValueError:
            raise UsageError(
                f"unknown placement {name!r}. Valid placements: "
                f"{_valid_placement_names()}"
            ) from None
        if placement not in placements:
            placements.append(placement)
    return placements


def resolve_normalizations(names):
    """Registered normalization names, in order, without duplicates."""
    valid = registry.normalization_names()
    normalizations = []
    for name in names:
        key = name.strip().lower()
        if key not in valid:
            raise UsageError(
                f"unknown normalization {name!r}. Valid normalizations: "
                f"{', '.join(valid)}"
            )
        if key not in normalizations:
            normalizations.append(key)
    return normalizations


def configurations(placements, normalizations):
    """'No BN' first, then every (placement, normalization) pair."""
    result = [Configuration("layer-act")]
    for placement in placements:
        if placement == "layer-act":
            continue  # "no BN" is always there
        for normalization in normalizations:
            result.append(Configuration(placement, normalization))
    return result


# -- models -------------------------------------------------------------------


def build_base_model(kind, dataset, quick=False):
    """The architecture without batch normalization (a Sequential model)."""
    if dataset.image_shape is not None:
        inputs = [keras.Input(dataset.image_shape)]
    else:
        inputs = [keras.Input((dataset.num_features,))]
    if kind == "cnn":
        if dataset.image_shape is None:
            raise UsageError(
                "--model cnn needs image data (the digits dataset, or --data "
                "FILE.npz whose features have shape (N, H, W) or "
                f"(N, H, W, C)); {dataset.name} has {dataset.num_features} "
                "features: use --model mlp"
            )
        if quick:
            body = [
                keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Flatten(),
            ]
        else:
            body = [
                keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
                keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
                keras.layers.GlobalAveragePooling2D(),
            ]
    else:
        body = [keras.layers.Flatten()] if dataset.image_shape else []
        for units in (32,) if quick else (128, 64):
            body.append(keras.layers.Dense(units, activation="relu"))
    outputs = dataset.num_classes if dataset.task == "classification" else 1
    return keras.Sequential(
        [*inputs, *body, keras.layers.Dense(outputs)], name=f"{kind}"
    )


def normalization_layer(name, ghost_batch_size, total_steps, momentum=0.99):
    """The template layer `insert_batchnorm` copies for a normalization."""
    if name == "ghost":
        return GhostBatchNormalization(
            virtual_batch_size=ghost_batch_size, momentum=momentum
        )
    if name == "renorm":
        # The paper's schedule (r_max = 1, d_max = 0 for the first 1/8 of
        # 40k steps, d_max at its final value at 5/8, r_max at the end),
        # compressed to this run's number of steps.
        warmup = max(1, total_steps // 8)
        return BatchRenormalization(
            renorm_clipping=RenormClipping(
                warmup_steps=warmup,
                rmax_steps=max(warmup, total_steps),
                dmax_steps=max(warmup, (5 * total_steps) // 8),
            ),
            momentum=momentum,
            renorm_momentum=momentum,
        )
    return registry.get_normalization(name, momentum=momentum)


def make_model(
    base, configuration, ghost_batch_size, total_steps, momentum=0.99
):
    """A fresh copy of `base` (same initial weights) for a configuration."""
    if not configuration.has_batchnorm:
        model = keras.models.clone_model(base)
        model.set_weights(base.get_weights())
        return model
    return insert_batchnorm(
        base,
        placement=configuration.placement,
        normalization=normalization_layer(
            configuration.normalization, ghost_batch_size, total_steps, momentum
        ),
    )


def compile_model(model, task, learning_rate):
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
    """Times every epoch and moves the progress bar."""

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


@dataclasses.dataclass
class Result:
    configuration: Configuration
    label: str
    run_dir: str
    curve: list  # validation metric per epoch
    seconds: list  # seconds per epoch
    higher_is_better: bool

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


def train(model, dataset, configuration, run_dir, epochs, batch_size, args, on):
    """Fits one configuration with TensorBoard and BN monitoring."""
    callbacks = [
        keras.callbacks.TensorBoard(
            log_dir=run_dir, write_graph=False, profile_batch=0
        )
    ]
    if configuration.has_batchnorm:
        callbacks.append(
            BatchNormMonitor(run_dir, probe_data=dataset.x_val[:batch_size])
        )
    clock = _EpochClock(on)
    callbacks.append(clock)
    keras.utils.set_random_seed(args.seed)
    history = model.fit(
        dataset.x_train,
        dataset.y_train,
        validation_data=(dataset.x_val, dataset.y_val),
        epochs=epochs,
        batch_size=batch_size,
        callbacks=callbacks,
        verbose=2 if args.verbose else 0,
    )
    key = "val_accuracy" if dataset.task == "classification" else "val_loss"
    return [float(v) for v in history.history[key]], clock.seconds


# -- output -------------------------------------------------------------------


def _fmt(value, digits=4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000 or (value != 0 and abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return str(value)


def leaderboard_rows(results):
    """Results in leaderboard order with their rank."""
    return list(enumerate(sorted(results, key=Result.sort_key), start=1))


def write_csv(path, results, metric):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            [
                "rank",
                "configuration",
                "placement",
                "normalization",
                f"best_{metric}",
                "best_epoch",
                "epochs_to_95pct_of_best",
                f"final_{metric}",
                "seconds_per_epoch",
                "epochs",
                "run_dir",
            ]
        )
        for rank, result in leaderboard_rows(results):
            configuration = result.configuration
            writer.writerow(
                [
                    rank,
                    result.label,
                    configuration.placement
                    if configuration.has_batchnorm
                    else "none",
                    configuration.normalization or "none",
                    f"{result.best:.6g}",
                    result.best_epoch or "",
                    result.epochs_to_fraction or "",
                    f"{result.curve[-1]:.6g}" if result.curve else "",
                    f"{result.seconds_per_epoch:.4f}",
                    len(result.curve),
                    os.path.basename(result.run_dir),
                ]
            )


def write_plot(path, results, metric, title):
    """Validation curves, one line per configuration, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for _, result in leaderboard_rows(results):
        epochs = np.arange(1, len(result.curve) + 1)
        style = {"marker": ".", "label": result.label}
        if not result.configuration.has_batchnorm:
            style.update(linestyle="--", color="black")
        (line,) = axes.plot(epochs, result.curve, **style)
        if result.best_epoch:
            axes.plot(
                result.best_epoch,
                result.best,
                "o",
                color=line.get_color(),
                markersize=7,
                markerfacecolor="none",
            )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric.replace("_", " "))
    if metric == "val_loss":
        finite = [
            v for r in results for v in r.curve if math.isfinite(v) and v > 0
        ]
        if finite and max(finite) / min(finite) > 50:
            axes.set_yscale("log")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)


def print_leaderboard(out, results, metric):
    name = "val acc" if metric == "val_accuracy" else "val loss"
    columns = [
        ("#", "right"),
        ("configuration", "left"),
        (f"best {name}", "right"),
        ("best epoch", "right"),
        ("epochs to 95%", "right"),
        (f"final {name}", "right"),
        ("s/epoch", "right"),
    ]
    rows = [
        (
            rank,
            result.label,
            _fmt(result.best),
            result.best_epoch or "-",
            result.epochs_to_fraction or "-",
            _fmt(result.curve[-1] if result.curve else math.nan),
            _fmt(result.seconds_per_epoch, 2),
        )
        for rank, result in leaderboard_rows(results)
    ]
    out.print(table(columns, rows))


# -- the command --------------------------------------------------------------


def _positive(value, option):
    if value is not None and value < 1:
        raise UsageError(f"{option} must be a positive integer; got {value}")


def run(args):
    from rich.progress import BarColumn
    from rich.progress import MofNCompleteColumn
    from rich.progress import Progress
    from rich.progress import TextColumn
    from rich.progress import TimeElapsedColumn

    if args.data is not None and args.dataset is not None:
        raise UsageError("give either --dataset or --data, not both")
    if args.target is not None and args.data is None:
        raise UsageError("--target goes with --data FILE")
    placements = resolve_placements(
        parse_names(args.placements) or DEFAULT_PLACEMENTS
    )
    normalizations = resolve_normalizations(
        parse_names(args.normalizations) or DEFAULT_NORMALIZATIONS
    )
    epochs = args.epochs
    if epochs is None:
        epochs = QUICK_EPOCHS if args.quick else DEFAULT_EPOCHS
    for value, option in (
        (epochs, "--epochs"),
        (args.batch_size, "--batch-size"),
        (args.ghost_batch_size, "--ghost-batch-size"),
    ):
        _positive(value, option)
    if not 0.0 <= args.momentum < 1.0:
        raise UsageError(
            f"--momentum must be in [0, 1); got {args.momentum}"
        )
    if not args.learning_rate > 0:
        raise UsageError(
            f"--learning-rate must be positive; got {args.learning_rate}"
        )
    ghost_batch_size = args.ghost_batch_size
    if ghost_batch_size is None:
        ghost_batch_size = max(2, args.batch_size // 4)
    if "ghost" in normalizations and ghost_batch_size >= args.batch_size:
        raise UsageError(
            f"--ghost-batch-size {ghost_batch_size} must be smaller than "
            f"--batch-size {args.batch_size}: ghost batches split each batch"
        )

    dataset = datasets.load(
        args.dataset, args.data, args.target, args.task, args.seed
    )
    keras.utils.set_random_seed(args.seed)
    base = build_base_model(args.model, dataset, args.quick)
    configs = configurations(placements, normalizations)
    session = new_session_dir(args.logdir, f"compare-{dataset.name}")
    metric = "val_accuracy" if dataset.task == "classification" else "val_loss"
    steps_per_epoch = math.ceil(len(dataset.x_train) / args.batch_size)

    out = console()
    out.print(dataset.describe())
    out.print(
        f"model {args.model} ({base.count_params():,} parameters without BN), "
        f"{len(configs)} configuration{'s' if len(configs) > 1 else ''} x "
        f"{epochs} epochs, batch {args.batch_size}, Adam "
        f"{args.learning_rate:g}, BN momentum {args.momentum:g}, seed "
        f"{args.seed}"
    )
    horizon = 1.0 / (1.0 - args.momentum)
    if len(configs) > 1 and epochs * steps_per_epoch < 3 * horizon:
        out.print(
            f"note: {epochs * steps_per_epoch} training steps in all, and BN's "
            f"moving statistics (momentum {args.momentum:g}) average over "
            f"about {horizon:.0f} steps: they will lag behind, and BN's "
            "validation figures suffer for it. More epochs or --momentum 0.9 "
            "avoid that."
        )
    results = []
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("configurations"),
        TimeElapsedColumn(),
        console=console(stderr=True),
    )
    with progress, quiet_tensorflow_warnings(args.verbose):
        bar = progress.add_task("", total=len(configs))
        for index, configuration in enumerate(configs):
            label = configuration.label(ghost_batch_size)
            run_dir = os.path.join(session, configuration.slug)
            model = make_model(
                base,
                configuration,
                ghost_batch_size,
                epochs * steps_per_epoch,
                args.momentum,
            )
            compile_model(model, dataset.task, args.learning_rate)

            def on_epoch(epoch, label=label, index=index):
                progress.update(
                    bar,
                    description=f"{label}: epoch {epoch + 1}/{epochs}",
                    completed=index + epoch / epochs,
                )

            curve, seconds = train(
                model,
                dataset,
                configuration,
                run_dir,
                epochs,
                args.batch_size,
                args,
                on_epoch,
            )
            results.append(
                Result(
                    configuration,
                    label,
                    run_dir,
                    curve,
                    seconds,
                    higher_is_better=metric == "val_accuracy",
                )
            )
            progress.update(bar, completed=index + 1)
        progress.update(bar, description="done")

    csv_path = os.path.join(session, LEADERBOARD)
    png_path = os.path.join(session, PLOT)
    write_csv(csv_path, results, metric)
    write_plot(
        png_path,
        results,
        metric,
        f"{dataset.name}, {args.model}: {metric.replace('_', ' ')} per epoch",
    )
    out.print()
    print_leaderboard(out, results, metric)
    out.print(f"leaderboard:  {csv_path}")
    out.print(f"plot:         {png_path}")
    out.print(f"TensorBoard:  {session} (one run per configuration)")
    out.print()
    out.print(f"  tensorboard --logdir {session}")
    return 0
