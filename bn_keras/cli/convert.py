"""`bn-keras convert`: a saved model with its BN layers of another kind.

`bn-keras convert model.keras --to renorm out.keras` is
`bn_keras.convert_batchnorm(model, "renorm")` on a saved model: it writes
the converted model and checks that its inference outputs are the
original's. Keras starts (`bn_keras.cli.runtime.start_keras`) once the
options are checked: `--help` and usage errors answer without it.
"""

from bn_keras import registry
from bn_keras.cli import runtime
from bn_keras.cli.common import UsageError
from bn_keras.cli.common import add_command
from bn_keras.cli.common import check_keras_output
from bn_keras.cli.common import check_model_file
from bn_keras.cli.common import console

HELP = "write a saved model with its BN layers converted (e.g. to renorm)"

DESCRIPTION = """\
Replace the batch normalization layers of a saved Keras model (nested ones
included) by another kind, keeping their weights, and save the result. The
converted model computes the same outputs in inference; what changes is
how its BN layers train:

  batch    bn_keras.layers.BatchNormalization
  ghost    bn_keras.layers.GhostBatchNormalization (ghost batches of 32)
  renorm   bn_keras.layers.BatchRenormalization: fine-tune with small
           batches (its renorm statistics start from the moving ones)
  keras    keras.layers.BatchNormalization: a model that loads without
           bn-keras (ghost and renorm settings are dropped, with a warning)

It prints one line per kind of layer converted, and the largest difference
between the two models' inference outputs on random inputs. This is
bn_keras.convert_batchnorm(model, NAME) (see its docstring for the
settings kept from each layer). The model is loaded without its optimizer.
"""


def add_parser(subparsers):
    parser = add_command(
        subparsers,
        "convert",
        help=HELP,
        description=DESCRIPTION,
        epilog="example:\n  bn-keras convert model.keras --to renorm "
        "model_renorm.keras",
    )
    parser.add_argument("model", metavar="MODEL.keras", help="a saved model")
    parser.add_argument(
        "out", metavar="OUT.keras", help="where to write the converted model"
    )
    parser.add_argument(
        "--to",
        required=True,
        metavar="NAME",
        help="what the BN layers become: batch, ghost, renorm or keras",
    )
    parser.add_argument(
        "--layers",
        metavar="NAME[,NAME...]",
        help="convert only these BN layers (default: all)",
    )
    parser.set_defaults(run=run)
    return parser


def _layer_names(args):
    """The `--layers` list (None for all), or a `UsageError`."""
    if args.layers is None:
        return None
    layers = [name.strip() for name in args.layers.split(",")]
    if not all(layers):
        raise UsageError(f"--layers {args.layers}: an empty layer name")
    return layers


def _target(args):
    """The `--to` name, checked by the registry (without Keras), or a
    `UsageError`."""
    try:
        return registry.get_conversion_name(args.to)
    except ValueError:
        names = ", ".join(sorted(registry.CONVERSIONS))
        raise UsageError(
            f"--to {args.to}: unknown; valid names: {names}"
        ) from None


def convert(model, path, to, layers):
    """The converted model, or a `UsageError` naming `path`. Its warning
    (settings dropped for `keras`) is a `warning:` line on standard error
    (`bn_keras.cli.runtime.plain_warnings`)."""
    import bn_keras

    if not bn_keras.find_batchnorm(model):
        raise UsageError(f"{path}: the model has no batch normalization layer")
    try:
        return bn_keras.convert_batchnorm(model, to, layers=layers)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{path}: cannot convert: {error}") from error


def summary(model, new, layers):
    """`3 BatchNormalization -> BatchRenormalization`, one line per pair
    of classes, in the order they first appear."""
    import bn_keras

    def selected(of):
        return [
            bn
            for bn in bn_keras.find_batchnorm(of)
            if layers is None or bn.name in layers
        ]

    counts = {}
    for old, changed in zip(selected(model), selected(new)):
        key = (type(old).__name__, type(changed).__name__)
        counts[key] = counts.get(key, 0) + 1
    return [f"{n} {old} -> {new}" for (old, new), n in counts.items()]


def run(args):
    check_keras_output(args.out)
    layers = _layer_names(args)
    to = _target(args)
    check_model_file(args.model)
    runtime.start_keras()
    from bn_keras.cli.inspect import load
    from bn_keras.cli.inspect import max_difference

    model = load(args.model)
    new = convert(model, args.model, to, layers)
    try:
        new.save(args.out)
    except OSError as error:
        raise UsageError(
            f"{args.out}: cannot write: {error.strerror or error}"
        ) from error
    out = console()
    for line in summary(model, new, layers):
        out.print(f"converted {line}")
    out.print(f"wrote {args.out}")
    difference = max_difference(model, new)
    if difference is not None:
        out.print(
            "largest |output difference| from the original in inference, on "
            f"8 random inputs: {difference:.3g}"
        )
    return 0
