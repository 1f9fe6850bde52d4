"""`bn-keras convert`: a saved model with its BN layers of another kind.

`bn-keras convert model.keras --to renorm out.keras` is
`bn_keras.convert_batchnorm(model, "renorm")` on a saved model: it writes
the converted model and checks that its inference outputs are the
original's. The layer settings (`--virtual-batch-size`, `--momentum`, ...)
are `convert_batchnorm`'s `**overrides`. Keras starts
(`bn_keras.cli.runtime.start_keras`) once the options are checked: `--help`
and usage errors answer without it, except a value that only the layers
can judge (a momentum out of range), judged before the model loads.
"""

import math

from bn_keras import registry
from bn_keras.cli import runtime
from bn_keras.cli.common import UsageError
from bn_keras.cli.common import add_command
from bn_keras.cli.common import check_keras_output
from bn_keras.cli.common import check_model_file
from bn_keras.cli.common import console
from bn_keras.cli.common import save_model

HELP = "write a saved model with its BN layers converted (e.g. to renorm)"

DESCRIPTION = """\
Replace the batch normalization layers of a saved Keras model (nested ones
included) by another kind, keeping their weights, and save the result. The
converted model computes the same outputs in inference; what changes is
how its BN layers train:

  batch    bn_keras.layers.BatchNormalization
  ghost    bn_keras.layers.GhostBatchNormalization: ghost batches of 32
           samples, or --virtual-batch-size (a training batch of that size
           or smaller is one ghost batch: plain batch normalization)
  renorm   bn_keras.layers.BatchRenormalization: fine-tune with small
           batches (its renorm statistics start from the moving ones)
  keras    keras.layers.BatchNormalization: a model that loads without
           bn-keras (ghost and renorm settings are dropped, with a warning)

Each converted layer keeps its momentum and epsilon unless a layer setting
below says otherwise. It prints one line per kind of layer converted, the
settings of the converted layers, and the largest difference between the
two models' inference outputs on random inputs. This is
bn_keras.convert_batchnorm(model, NAME, **settings) (see its docstring for
the settings kept from each layer). The model is loaded without its
optimizer.
"""

EXAMPLES = """\
examples:
  bn-keras convert model.keras --to renorm model_renorm.keras
  bn-keras convert model.keras --to ghost --virtual-batch-size 8 ghost.keras
  bn-keras convert model.keras --to renorm --renorm-steps 2000 \\
      --momentum 0.9 renorm.keras"""

#: The `--to` names whose layers are bn-keras's (ghost batches, renorm
#: schedules, cumulative averages), and all of them.
_BN_KERAS = ("batch", "ghost", "renorm")
_ALL = (*_BN_KERAS, "keras")

#: The keys of `--renorm-clipping`, those of Keras's `renorm_clipping`.
_CLIPPING_KEYS = ("rmax", "rmin", "dmax")


def _positive_int(option, text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"{option} {text}: must be a positive integer")
    return value


def _number(option, text, none=False):
    """A finite float, or None for `none` where `none` is allowed."""
    if none and text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        expected = "a finite number" + (" or none" if none else "")
        raise UsageError(f"{option} {text}: must be {expected}")
    return value


def _number_or_none(option, text):
    return _number(option, text, none=True)


def _clipping(option, text):
    """Keras's `renorm_clipping` dict from `rmax=3,dmax=5`; `{}` (no
    clipping) from `none`."""
    if text.strip().lower() == "none":
        return {}
    clipping = {}
    for part in text.split(","):
        key, equals, value = (s.strip() for s in part.partition("="))
        key = key.lower()
        if not equals or key not in _CLIPPING_KEYS or key in clipping:
            raise UsageError(
                f"{option} {text}: expected KEY=VALUE pairs with the keys "
                f"{', '.join(_CLIPPING_KEYS)} (e.g. rmax=3,dmax=5), or none"
            )
        clipping[key] = _number(f"{option} {text}: {key}", value)
    return clipping


#: option: (argument of the layers, parser, metavar, the `--to` names it
#: applies to, help).
_SETTINGS = {
    "--virtual-batch-size": (
        "virtual_batch_size",
        _positive_int,
        "N",
        _BN_KERAS,
        "ghost batch size (ghost: default 32; batch and renorm layers take "
        "ghost batches too)",
    ),
    "--momentum": (
        "momentum",
        _number_or_none,
        "M",
        _ALL,
        "momentum of the moving mean and variance, or none for cumulative "
        "averages (bn-keras's layers only)",
    ),
    "--epsilon": (
        "epsilon",
        _number,
        "E",
        _ALL,
        "added to the variance; another value changes the inference "
        "outputs a little",
    ),
    "--renorm-momentum": (
        "renorm_momentum",
        _number_or_none,
        "M",
        ("renorm",),
        "renorm only: momentum of the renorm statistics, or none",
    ),
    "--renorm-clipping": (
        "renorm_clipping",
        _clipping,
        "rmax=R,dmax=D",
        ("renorm",),
        "renorm only: fixed bounds of r and d from the first step (keys "
        "rmax, rmin, dmax; a bound left out does not clip), or none (no "
        "clipping)",
    ),
    "--renorm-steps": (
        "renorm_clipping",
        _positive_int,
        "N",
        ("renorm",),
        "renorm only: the paper's schedule compressed to a fine-tuning run "
        "of N training steps (plain BN for N/8 steps, dmax reaches 5 at "
        "5N/8 and rmax 3 at N); default: the paper's schedule, plain BN for "
        "5,000 steps, final at step 40,000",
    ),
}


def add_parser(subparsers):
    parser = add_command(
        subparsers,
        "convert",
        help=HELP,
        description=DESCRIPTION,
        epilog=EXAMPLES,
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
    group = parser.add_argument_group(
        "layer settings",
        "arguments of every converted layer (default: each layer's own,\n"
        "or the default of the kind that --to names)",
    )
    for option, (_, _, metavar, _, text) in _SETTINGS.items():
        group.add_argument(option, metavar=metavar, help=text)
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


def _not_for(option, text, to):
    """The usage error of a setting that `--to to` has no use for."""
    if to == "keras" and option == "--virtual-batch-size":
        reason = "keras.layers.BatchNormalization has no ghost batches"
    else:
        reason = "only with --to renorm"
    return UsageError(f"{option} {text}: {reason}")


def layer_settings(args, to):
    """The layer settings given, parsed without Keras: `{option: (argument,
    value, text)}`, or a `UsageError` naming the option and its value."""
    settings = {}
    for option, (argument, parse, _, targets, _) in _SETTINGS.items():
        text = getattr(args, option[2:].replace("-", "_"))
        if text is None:
            continue
        if to not in targets:
            raise _not_for(option, text, to)
        value = parse(option, text)
        if value is None and to == "keras":
            raise UsageError(
                f"{option} {text}: keras.layers.BatchNormalization has no "
                "cumulative averages; give a number"
            )
        settings[option] = (argument, value, text)
    if "--renorm-clipping" in settings and "--renorm-steps" in settings:
        raise UsageError(
            "--renorm-clipping and --renorm-steps: give one of them (fixed "
            "bounds, or the paper's schedule over N steps)"
        )
    return settings


def overrides(settings):
    """`convert_batchnorm`'s `**overrides` for the `layer_settings`, each
    value judged by bn-keras's layer (Keras starts here): a value it
    refuses is a `UsageError` naming the option."""
    from bn_keras import layers

    result = {}
    for option, (argument, value, text) in settings.items():
        if option == "--renorm-steps":
            value = layers.RenormClipping().scaled(value)
        check = (
            layers.BatchRenormalization
            if argument.startswith("renorm")
            else layers.BatchNormalization
        )
        try:
            check(name="check", **{argument: value})
        except (TypeError, ValueError) as error:
            raise UsageError(f"{option} {text}: {error}") from None
        result[argument] = value
    return result


def convert(model, path, to, layers, settings=None):
    """The converted model, or a `UsageError` naming `path`. Its warning
    (settings dropped for `keras`) is a `warning:` line on standard error
    (`bn_keras.cli.runtime.plain_warnings`)."""
    import bn_keras

    if not bn_keras.find_batchnorm(model):
        raise UsageError(f"{path}: the model has no batch normalization layer")
    try:
        return bn_keras.convert_batchnorm(
            model, to, layers=layers, **(settings or {})
        )
    except (TypeError, ValueError) as error:
        raise UsageError(f"{path}: cannot convert: {error}") from error


def _selected(model, layers):
    """The BN layers of `model` that `layers` names (all for None)."""
    import bn_keras

    return [
        bn
        for bn in bn_keras.find_batchnorm(model)
        if layers is None or bn.name in layers
    ]


def summary(model, new, layers):
    """`3 BatchNormalization -> BatchRenormalization`, one line per pair
    of classes, in the order they first appear."""
    counts = {}
    for old, changed in zip(_selected(model, layers), _selected(new, layers)):
        key = (type(old).__name__, type(changed).__name__)
        counts[key] = counts.get(key, 0) + 1
    return [f"{n} {old} -> {new}" for (old, new), n in counts.items()]


#: The settings `convert` prints of the converted layers, where they apply.
_SHOWN = (
    "virtual_batch_size",
    "momentum",
    "epsilon",
    "renorm_momentum",
    "renorm_clipping",
)


def _format(value):
    """A setting's value as typed on the command line."""
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ",".join(f"{k}={v:g}" for k, v in value.items()) or "none"
    if hasattr(value, "get_config"):  # a RenormClipping schedule
        config = ", ".join(f"{k}={v:g}" for k, v in value.get_config().items())
        return f"{type(value).__name__}({config})"
    return str(value)


def settings_line(layers):
    """`virtual_batch_size=8, momentum=0.99, epsilon=0.001`: the settings
    that the converted layers have (`a|b` where they differ)."""
    parts = []
    for key in _SHOWN:
        values = []
        for layer in layers:
            if key.startswith("renorm_") and not getattr(layer, "renorm", 0):
                continue
            if key == "virtual_batch_size" and not getattr(layer, key, None):
                continue
            text = _format(getattr(layer, key))
            if text not in values:
                values.append(text)
        if values:
            parts.append(f"{key}={'|'.join(values)}")
    return ", ".join(parts)


def run(args):
    check_keras_output(args.out)
    layers = _layer_names(args)
    to = _target(args)
    settings = layer_settings(args, to)
    check_model_file(args.model)
    runtime.start_keras()
    from bn_keras.cli.inspect import load
    from bn_keras.cli.inspect import print_difference

    checked = overrides(settings)
    model = load(args.model)
    new = convert(model, args.model, to, layers, checked)
    save_model(new, args.out)
    out = console()
    for line in summary(model, new, layers):
        out.print(f"converted {line}")
    settings_text = settings_line(_selected(new, layers))
    out.print(f"settings of the converted layers: {settings_text}")
    out.print(f"wrote {args.out}")
    print_difference(out, model, new, "converted")
    return 0
