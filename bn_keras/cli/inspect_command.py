"""`bn-keras inspect`'s options: the batch normalization layers of a saved
model.

The options need no Keras, so that `bn-keras --help` answers at once; the
work is `bn_keras.cli.inspect`'s, imported when the command runs.
"""

from bn_keras.cli import runtime
from bn_keras.cli.common import add_command
from bn_keras.cli.common import check_keras_output
from bn_keras.cli.common import check_model_file

HELP = "one row per BN layer of a saved model; --fold writes it folded"

DESCRIPTION = """\
List every batch normalization layer of a saved Keras model (nested ones
included), in forward order, one line each, in at most 120 columns:

  layer        its path in the model
  kind         plain, ghost(N) (ghost batches of N samples), renorm
  neighbours   the layers before and after it
  moving mean  range over channels, min..max
  moving var   the same for the moving variance
  dead         channels with |gamma| < 1e-3, of all channels
  fold         whether bn_keras.fold_batchnorm folds it into the layer
               before it
  warn         how many warnings it has

Neighbours, then layer paths, too long for the terminal are cut short with
an ellipsis (numbers never are). Under the table, one line per reason a
layer cannot be folded and per warning, shared by all the layers it applies
to (e.g. "53 layers (#1-53): warning: ..."): non-finite statistics;
collapsed channels (moving variance below epsilon: constant inputs);
statistics still at their initial values (never trained). With --details,
the table adds each layer's position relative to the activation, momentum
and epsilon, and keeps every cell whole (it may then be wider than the
terminal), and every note has a line per layer. The model is loaded
without its optimizer.
"""


def add_parser(subparsers):
    parser = add_command(
        subparsers,
        "inspect",
        HELP,
        DESCRIPTION,
        "example:\n  bn-keras inspect model.keras --fold model_folded.keras",
    )
    parser.add_argument("model", metavar="MODEL.keras", help="a saved model")
    parser.add_argument(
        "--fold",
        metavar="OUT.keras",
        help="write an inference copy with every foldable BN folded into the "
        "layer before it",
    )
    parser.add_argument(
        "--details",
        action="store_true",
        help="more columns (position, momentum, epsilon), whole cells, "
        "and a line per layer and note",
    )
    parser.set_defaults(run=run)
    return parser


def run(args):
    check_keras_output(args.fold, option="--fold")
    check_model_file(args.model)
    runtime.start_keras()
    from bn_keras.cli import inspect

    return inspect.run(args)
