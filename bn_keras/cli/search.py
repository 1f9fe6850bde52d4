"""`bn-keras search`: search batch normalization placements with keras-tuner.

Runs `bn_keras.tuner.BNPlacementHyperModel` on the `compare` architecture
(or a ready-made `BNSearchMLP` / `BNSearchCNN`) with a chosen tuner and
trial budget, and prints `bn_keras.tuner.placement_report`.

This module holds the command's options and their checks, which need no
Keras; the hypermodel, the tuner and the search are
`bn_keras.cli.tuning.Search`'s, the output `bn_keras.cli.report`'s,
both imported once the options are checked.
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
from bn_keras.cli.common import resolve_names
from bn_keras.cli.common import settings_options
from bn_keras.cli.settings import SearchSettings

HYPERMODELS = ("placement", "mlp", "cnn")
DEFAULT_TRIALS = 10
DEFAULT_EPOCHS = 10
QUICK_TRIALS = 2
QUICK_EPOCHS = 2

HELP = "search BN placements with keras-tuner and print the report"

DESCRIPTION = """\
Search where batch normalization goes, and which, with keras-tuner.

hypermodels:
  placement  bn_keras.tuner.BNPlacementHyperModel on the architecture of
             'bn-keras compare' (--model mlp|cnn): one placement and
             normalization choice per Dense/convolution layer (--shared:
             one choice for all; then placements that build the same
             network are searched once: on these chains, bn-act-layer
             builds layer-bn-act's), and whether the inputs get BN
  mlp        bn_keras.tuner.BNSearchMLP: depth, widths, learning rate and BN
             per block
  cnn        bn_keras.tuner.BNSearchCNN: the same for a small CNN (images)

placements (aliases in parentheses):
{placements}

tuners: random, grid, hyperband (--epochs is its max_epochs; --trials is
ignored), bayesian (needs scipy: pip install 'bn-keras[tuner]').

Writes the tuner's trials, one TensorBoard run per trial (bn_keras's
BatchNormMonitor: the BN figures and alerts, Keras's epoch metrics and the
trial's HParams, its row named trial_<id>), leaderboard.csv and a PNG of
the trials' validation curves, and the best model (best_model.keras, for
'bn-keras inspect') into a new folder under --logdir. Ctrl-C stops it: the
trials completed so far are written the same way (exit status 130).
"""

EPILOG = """\
examples:
  bn-keras search --trials 10                    # digits, random search
  bn-keras search --dataset wine --tuner bayesian --shared
  bn-keras search --hypermodel cnn --tuner hyperband --epochs 9
  bn-keras search --data my_images/ --hypermodel cnn --quick
"""


def _add_space_arguments(parser):
    space = parser.add_argument_group("search space")
    space.add_argument(
        "--hypermodel",
        choices=HYPERMODELS,
        default="placement",
        help="what to search (default: placement)",
    )
    add_model_arguments(
        space,
        MODELS,
        model_help="with --hypermodel placement: the architecture (default: "
        "mlp)",
        placements_help="placements to choose from (space- or "
        f"comma-separated; default: all four: {' '.join(registry.PLACEMENTS)})",
        normalizations_help="normalizations to choose from (default: all: "
        f"{' '.join(registry.normalization_names())})",
    )
    space.add_argument(
        "--shared",
        action="store_true",
        help="with --hypermodel placement: one choice for every layer "
        "instead of one per layer",
    )


def _add_tuner_arguments(parser):
    tuning = parser.add_argument_group("tuner")
    tuning.add_argument(
        "--tuner",
        choices=registry.TUNERS,
        default="random",
        help="(default: random)",
    )
    tuning.add_argument(
        "--trials",
        type=int,
        metavar="N",
        help=f"trial budget, max_trials (default: {DEFAULT_TRIALS}, "
        f"{QUICK_TRIALS} with --quick)",
    )
    add_training_arguments(
        tuning,
        epochs_help=f"epochs per trial (default: {DEFAULT_EPOCHS}, "
        f"{QUICK_EPOCHS} with --quick)",
        learning_rate_help="with --hypermodel placement: Adam's learning rate "
        "(default: 0.001; the mlp and cnn hypermodels search it)",
        seed_help="(default: 0)",
    )


def add_parser(subparsers):
    description = DESCRIPTION.format(placements=registry.placement_table())
    parser = add_command(subparsers, "search", HELP, description, EPILOG)
    datasets.add_data_arguments(parser)
    _add_space_arguments(parser)
    _add_tuner_arguments(parser)
    add_output_arguments(
        parser,
        logdir_help="each search goes to a new folder "
        "DIR/search-<dataset>-<time> (default: runs)",
        quick_help=f"a smoke test: {QUICK_TRIALS} trials of {QUICK_EPOCHS} "
        "epochs, small models",
        verbose_help="show keras-tuner's and Keras's own output, and "
        "TensorFlow's start-up log",
    )
    parser.set_defaults(run=run)
    return parser


def _budget(args):
    """`(trials, epochs)`: the options, or their (quick) defaults."""
    trials, epochs = args.trials, args.epochs
    if trials is None:
        trials = QUICK_TRIALS if args.quick else DEFAULT_TRIALS
    if epochs is None:
        epochs = QUICK_EPOCHS if args.quick else DEFAULT_EPOCHS
    check_positive(
        {
            "--trials": trials,
            "--epochs": epochs,
            "--batch-size": args.batch_size,
        }
    )
    if args.tuner == "hyperband" and epochs < 2:
        raise UsageError("--tuner hyperband needs --epochs of at least 2")
    return trials, epochs


def parse(args):
    """The search the options ask for, checked.

    Returns:
        A `bn_keras.cli.settings.SearchSettings`.

    Raises:
        UsageError: for any option out of range, name unknown, or a tuner
            whose dependencies are missing.
    """
    datasets.check_source(args)
    placements, normalizations = resolve_names(
        args.placements,
        args.normalizations,
        defaults=(registry.PLACEMENTS, registry.normalization_names()),
    )
    trials, epochs = _budget(args)
    return SearchSettings(
        hypermodel=args.hypermodel,
        placements=placements,
        normalizations=normalizations,
        shared=args.shared,
        tuner=args.tuner,
        trials=trials,
        epochs=epochs,
        **settings_options(args),
    )


def _search(search, session):
    """Runs the search, with a progress bar."""
    from bn_keras.cli import report

    with (
        report.SearchProgress(search.settings) as progress,
        quiet_tensorflow_warnings(search.settings.verbose),
    ):
        search.run(session, callbacks=[progress.callback])


def run(args):
    settings = parse(args)
    runtime.start_keras(settings.verbose)
    from bn_keras.cli import report
    from bn_keras.cli import tuning

    tuning.tuner_class(settings.tuner)  # bayesian needs scipy: say so
    dataset = datasets.load_from_args(args)
    if settings.hypermodel == "mlp":
        dataset.flatten_images()
    search = tuning.Search(settings, dataset)
    session = new_session_dir(args.logdir, f"search-{dataset.name}")
    out = console()
    report.print_search_setup(out, dataset, settings, search.notes)
    runtime.warn_all(search.setup_warnings())
    finished = runtime.completed(_search, search, session)
    rows = report.search_summary(out, search, session)
    if not finished:
        return runtime.interrupted(
            "search",
            report.partial_results(
                search.results(),
                None if settings.tuner == "hyperband" else settings.trials,
                session,
                "trials",
            ),
        )
    return 0 if rows else 1
