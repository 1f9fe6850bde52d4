"""`bn-keras doctor`'s options: what is wrong with a saved model's batch
normalization, measured on data.

The options need no Keras, so that `bn-keras --help` and `bn-keras doctor
--help` answer at once; the work is `bn_keras.cli.doctor`'s, imported
when the command runs.
"""

from bn_keras.cli import datasets
from bn_keras.cli import runtime
from bn_keras.cli.common import UsageError
from bn_keras.cli.common import add_command
from bn_keras.cli.common import check_keras_output
from bn_keras.cli.common import check_model_file
from bn_keras.cli.common import check_positive

HELP = "what is wrong with a saved model's BN, measured on data; --fix"

DESCRIPTION = """\
Measure a saved model's batch normalization layers against data and report
what is wrong, which layers, the evidence and what to do
(bn_keras.diagnose). The model is left as it is; it is run over the data in
training mode at the training batch size, in inference as it is, and in
inference with precise statistics (recomputed on the data).

findings (severity: error when predictions are wrong because of it,
warning when they would measurably improve, info for structure):
  statistics-mismatch      moving statistics do not match the data
  preprocessing-mismatch   the input is on another scale than in training
  noisy-batch-statistics   batch statistics too noisy at the batch size
  nonfinite-statistics     NaN or Inf in statistics, gamma or beta
  collapsed-variance       moving variance ~0 for inputs that vary
  dropout-before-batchnorm, bias-before-batchnorm, batchnorm-before-output,
  dead-channels            structure (info)

With targets (--target, image folders, built-in datasets) the report gives
the metric as the model is and with precise statistics. --fix writes a copy
with what needs no training fixed (precise statistics, non-finite
statistics repaired) when it helps; what needs training gets a remedy.
All samples are used (the training and validation splits of --data and
--dataset together).
"""

EPILOG = """\
examples:
  bn-keras doctor model.keras --data test.csv --target label
  bn-keras doctor model.keras --data images/ --fix model_fixed.keras
  bn-keras doctor model.keras --dataset digits --batch-size 8 --json

exit status: 0 when no error or warning is found (also for a model without
batch normalization), 1 with warnings or errors, 2 for a usage error (a
file that is not a model, data that does not fit it, too few samples).
"""


def add_parser(subparsers):
    parser = add_command(subparsers, "doctor", HELP, DESCRIPTION, EPILOG)
    parser.add_argument("model", metavar="MODEL.keras", help="a saved model")
    datasets.add_data_arguments(parser, training=False)
    options = parser.add_argument_group("diagnosis")
    options.add_argument(
        "--batch-size",
        type=int,
        default=32,
        metavar="N",
        help="the batch size the model was trained with (default: 32)",
    )
    options.add_argument(
        "--fix",
        metavar="OUT.keras",
        help="write a copy with the fixes that need no training",
    )
    options.add_argument(
        "--json", action="store_true", help="print the report as JSON"
    )
    options.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow's start-up log and tracebacks",
    )
    parser.set_defaults(run=run, seed=0)
    return parser


def check(args):
    """The options' checks, before Keras starts; a `UsageError`."""
    check_keras_output(args.fix, option="--fix")
    check_positive({"--batch-size": args.batch_size})
    if args.data is None and args.dataset is None:
        raise UsageError(
            "give the data to diagnose the model on: --data FILE.csv|FILE.npz "
            "--target NAME, --data FOLDER (images), or --dataset NAME"
        )
    datasets.check_source(args)
    check_model_file(args.model)


def run(args):
    check(args)
    runtime.start_keras(args.verbose)
    from bn_keras.cli import doctor

    return doctor.run(args)
