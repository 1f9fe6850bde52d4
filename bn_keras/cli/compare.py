"""`bn-keras compare`: does batch normalization help this model, and where?

Trains the same architecture, from the same initial weights, on the same
split, once without batch normalization and once per (placement,
normalization) pair, then ranks the configurations by their best
validation accuracy (validation loss for regression).

This module holds the command's options and their checks, which need no
Keras; the training is `bn_keras.cli.experiment.Comparison`, the output
`bn_keras.cli.report`, both imported once the options are checked.
"""

from bn_keras import registry
from bn_keras.cli import datasets
from bn_keras.cli import runtime
from bn_keras.cli.common import MODELS
from bn_keras.cli.common import UsageError
from bn_keras.cli.common import add_command
from bn_keras.cli.common import add_model_arguments
from bn_keras.cli.common import add_output_arguments
from bn_keras.cli.common import add_training_arguments
from bn_keras.cli.common import check_positive
from bn_keras.cli.common import console
from bn_keras.cli.common import new_session_dir
from bn_keras.cli.common import quiet_tensorflow_warnings
from bn_keras.cli.common import resolve_input_normalizations
from bn_keras.cli.common import resolve_names
from bn_keras.cli.common import settings_options
from bn_keras.cli.settings import ComparisonSettings

DEFAULT_PLACEMENTS = ("layer-bn-act", "layer-act-bn", "bn-act-layer")
DEFAULT_NORMALIZATIONS = ("batch",)
QUICK_EPOCHS = 3
DEFAULT_EPOCHS = 20

HELP = "train one model per BN configuration and rank them"

DESCRIPTION = """\
Train the same model once without batch normalization and once per
(placement, normalization) pair, from the same initial weights on the same
train/validation split, and rank the configurations by best validation
accuracy (validation loss for regression). Writes one TensorBoard run per
configuration (bn_keras's BatchNormMonitor: the BN figures and alerts,
Keras's epoch metrics, the best validation figure and the HParams session;
epochs counted from 1 as in the leaderboard), leaderboard.csv and a PNG of
the validation curves into a new folder under --logdir (earlier runs are
never overwritten). Configurations that build the same network (the same
layers, configurations, wiring and initial weights, the BN layers' names
aside) are trained once, in one row that names them all: on the mlp and
cnn, chains without residual connections, pre-activation builds
layer-bn-act's network (the row "layer-bn-act = bn-act-layer + batch").

placements (aliases in parentheses; 'no BN' is always trained):
{placements}
normalizations:
  batch    bn_keras.layers.BatchNormalization
  ghost    ghost batches of --ghost-batch-size samples
  renorm   batch renormalization, with the paper's r/d schedule compressed
           to the length of the run
input normalizations (--input-batchnorm; every configuration is trained
once per name):
  none     the inputs as they are (default)
  batch    plain BN on the inputs (each training batch by its own statistics)
  renorm   renorm with cumulative statistics on the inputs: standardizes
           them as by hand, with no pass over the data beforehand
"""

EPILOG = """\
examples:
  bn-keras compare                                  # digits, MLP, 20 epochs
  bn-keras compare --dataset wine --normalizations batch renorm
  bn-keras compare --model cnn --placements layer-bn-act --epochs 10
  bn-keras compare --dataset scales --input-batchnorm none renorm
  bn-keras compare --data my.csv --target label --quick
  bn-keras compare --data my_images/ --model cnn --image-size 64
  bn-keras compare --dataset fashion_mnist --model cnn --limit 5000 --quick

Ctrl-C stops it: the configurations finished so far are written as
leaderboard.csv and the plot (exit status 130).
"""


def _add_configuration_arguments(parser):
    runs = parser.add_argument_group("configurations")
    add_model_arguments(
        runs,
        MODELS,
        model_help="architecture: a multilayer perceptron, or a small CNN for "
        "image data (digits, mnist, fashion_mnist, cifar10, a folder of "
        "images, or an NPZ of images) (default: mlp)",
        placements_help="where BN goes (space- or comma-separated; default: "
        f"{' '.join(DEFAULT_PLACEMENTS)}). 'no BN' is always trained too",
        normalizations_help="which BN (default: batch); each placement is "
        "trained with each normalization. Valid: "
        f"{', '.join(registry.normalization_names())}",
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
        "--input-batchnorm",
        nargs="+",
        metavar="NAME",
        help="input normalizations, each with every configuration (space- or "
        "comma-separated; default: none). Valid: "
        f"{', '.join(registry.input_normalization_names())}",
    )
    runs.add_argument(
        "--ghost-batch-size",
        type=int,
        metavar="N",
        help="ghost batch size for 'ghost' (default: a quarter of the batch "
        "size)",
    )


def add_parser(subparsers):
    description = DESCRIPTION.format(placements=registry.placement_table())
    parser = add_command(subparsers, "compare", HELP, description, EPILOG)
    datasets.add_data_arguments(parser)
    _add_configuration_arguments(parser)
    add_training_arguments(
        parser.add_argument_group("training"),
        epochs_help=f"epochs per configuration (default: {DEFAULT_EPOCHS}, "
        f"{QUICK_EPOCHS} with --quick)",
        learning_rate_help="Adam's learning rate (default: 0.001)",
        seed_help="seed of the split, the initial weights and the shuffling "
        "(default: 0)",
    )
    add_output_arguments(
        parser,
        logdir_help="each comparison goes to a new folder "
        "DIR/compare-<dataset>-<time> (default: runs)",
        quick_help=f"a smoke test in seconds: {QUICK_EPOCHS} epochs, a small "
        "model",
        verbose_help="show Keras's own output for every epoch, and "
        "TensorFlow's start-up log",
    )
    parser.set_defaults(run=run)
    return parser


def _ghost_batch_size(args, normalizations):
    """`--ghost-batch-size`, or a quarter of the batch; smaller than it."""
    ghost_batch_size = args.ghost_batch_size
    if ghost_batch_size is None:
        ghost_batch_size = max(2, args.batch_size // 4)
    if "ghost" in normalizations and ghost_batch_size >= args.batch_size:
        raise UsageError(
            f"--ghost-batch-size {ghost_batch_size} must be smaller than "
            f"--batch-size {args.batch_size}: ghost batches split each batch"
        )
    return ghost_batch_size


def _check_rates(args):
    if not 0.0 <= args.momentum < 1.0:
        raise UsageError(f"--momentum must be in [0, 1); got {args.momentum}")
    if not args.learning_rate > 0:
        raise UsageError(
            f"--learning-rate must be positive; got {args.learning_rate}"
        )


def parse(args):
    """The comparison the options ask for, checked.

    Returns:
        A `bn_keras.cli.settings.ComparisonSettings`.

    Raises:
        UsageError: for any option out of range or name unknown.
    """
    datasets.check_source(args)
    placements, normalizations = resolve_names(
        args.placements,
        args.normalizations,
        defaults=(DEFAULT_PLACEMENTS, DEFAULT_NORMALIZATIONS),
    )
    epochs = args.epochs
    if epochs is None:
        epochs = QUICK_EPOCHS if args.quick else DEFAULT_EPOCHS
    check_positive(
        {
            "--epochs": epochs,
            "--batch-size": args.batch_size,
            "--ghost-batch-size": args.ghost_batch_size,
        }
    )
    _check_rates(args)
    return ComparisonSettings(
        placements=placements,
        normalizations=normalizations,
        input_batchnorms=resolve_input_normalizations(args.input_batchnorm),
        momentum=args.momentum,
        ghost_batch_size=_ghost_batch_size(args, normalizations),
        epochs=epochs,
        **settings_options(args),
    )


def _train(comparison, session):
    """Trains every configuration, with a progress bar."""
    from bn_keras.cli import report

    with (
        report.ComparisonProgress(comparison) as progress,
        quiet_tensorflow_warnings(comparison.settings.verbose),
    ):
        comparison.run(session, progress)


def run(args):
    settings = parse(args)
    runtime.start_keras(settings.verbose)
    from bn_keras.cli import experiment
    from bn_keras.cli import report

    comparison = experiment.Comparison(settings, datasets.load_from_args(args))
    session = new_session_dir(args.logdir, f"compare-{comparison.dataset.name}")
    out = console()
    report.print_comparison_setup(out, comparison)
    runtime.warn_all(comparison.setup_warnings())
    finished = runtime.completed(_train, comparison, session)
    report.comparison_summary(out, session, comparison)
    if finished:
        return 0
    return runtime.interrupted(
        "compare",
        report.partial_results(
            comparison.results, len(comparison.configurations), session
        ),
    )
