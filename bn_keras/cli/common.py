"""Pieces shared by the subcommands: usage errors, the options `compare`
and `search` both take and their checks, output folders, tables.

Nothing here imports Keras: the parsers and the checks of the options run
before it is started (`bn_keras.cli.runtime.start_keras`).
"""

import argparse
import contextlib
import datetime
import logging
import os
import shutil
import zipfile

from rich import box
from rich.console import Console
from rich.table import Table

from bn_keras import registry

PROG = "bn-keras"

#: The architectures of `--model`.
MODELS = ("mlp", "cnn")

#: The fewest samples a dataset may have: enough to split off a
#: validation set.
MIN_SAMPLES = 10

#: The widest the printed tables get, whatever the terminal.
MAX_WIDTH = 100


class UsageError(ValueError):
    """Bad input from the user: printed as `bn-keras CMD: error: ...`, exit
    status 2 (argparse's convention for usage errors)."""


def console(stderr=False, max_width=MAX_WIDTH):
    """A rich console as wide as the terminal, at most `max_width` columns
    (`None`: no limit); `max_width` columns, or 160 for `None`, where the
    output is not a terminal and `COLUMNS` is not set.

    Created per call so that it writes to the `sys.stdout` (or
    `sys.stderr`) of the moment, which tests capture. Text lines are not
    wrapped (paths and commands stay whole, to copy); tables fit the width.
    """
    width = shutil.get_terminal_size((max_width or 160, 24)).columns
    if max_width is not None:
        width = min(width, max_width)
    return Console(
        stderr=stderr,
        width=width,
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


def table(columns, rows, title=None, wrap=True):
    """A rich table; `columns` is a list of `(header, justify)` pairs.

    Right-justified (numeric) columns never wrap; the others fold, unless
    `wrap=False`: then no cell wraps (one line per row), and a table wider
    than the console cuts its cells short with an ellipsis.
    """
    result = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        pad_edge=False,
        collapse_padding=True,
    )
    for header, justify in columns:
        result.add_column(
            header,
            justify=justify,
            overflow="fold" if wrap else "ellipsis",
            no_wrap=justify == "right" or not wrap,
        )
    for row in rows:
        result.add_row(*[str(cell) for cell in row])
    return result


def add_command(subparsers, name, help, description, epilog):
    """A command's parser; its description and epilog keep their lines."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_model_arguments(
    group, model_choices, model_help, placements_help, normalizations_help
):
    """Adds `--model`, `--placements` and `--normalizations`."""
    group.add_argument(
        "--model", choices=model_choices, default="mlp", help=model_help
    )
    for option, text in (
        ("--placements", placements_help),
        ("--normalizations", normalizations_help),
    ):
        group.add_argument(option, nargs="+", metavar="NAME", help=text)


def add_training_arguments(group, epochs_help, learning_rate_help, seed_help):
    """Adds `--epochs`, `--batch-size`, `--learning-rate` and `--seed`."""
    group.add_argument("--epochs", type=int, metavar="N", help=epochs_help)
    group.add_argument(
        "--batch-size", type=int, default=32, metavar="N", help="(default: 32)"
    )
    group.add_argument(
        "--learning-rate",
        type=float,
        default=1e-3,
        metavar="LR",
        help=learning_rate_help,
    )
    group.add_argument("--seed", type=int, default=0, help=seed_help)


def add_output_arguments(parser, logdir_help, quick_help, verbose_help):
    """Adds the "output" group: `--logdir`, `--quick` and `--verbose`."""
    output = parser.add_argument_group("output")
    output.add_argument(
        "--logdir", default="runs", metavar="DIR", help=logdir_help
    )
    output.add_argument("--quick", action="store_true", help=quick_help)
    output.add_argument("--verbose", action="store_true", help=verbose_help)
    return output


def settings_options(args):
    """The options that both commands' settings take as they are."""
    return {
        "model": args.model,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "quick": args.quick,
        "verbose": args.verbose,
    }


def check_positive(options):
    """Checks that every given option is a positive integer.

    Args:
        options: A dict from option (`"--epochs"`) to its value; `None`
            (not given, a default follows) passes.

    Raises:
        UsageError: for the first value below 1, naming the option.
    """
    for option, value in options.items():
        if value is not None and value < 1:
            raise UsageError(
                f"{option} must be a positive integer; got {value}"
            )


def parse_names(values):
    """A list of names from `--opt a b` and `--opt a,b` alike."""
    names = []
    for value in values or ():
        names.extend(part.strip() for part in value.split(",") if part.strip())
    return names


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


def new_session_dir(logdir, prefix):
    """Creates and returns a new folder `logdir/<prefix>-<timestamp>`.

    Earlier sessions are never reused: if the name is taken (two runs in
    the same second), `-2`, `-3`, ... is appended.

    Raises:
        UsageError: if `logdir` is not a directory that can be written.
    """
    logdir = os.fspath(logdir)
    if os.path.exists(logdir) and not os.path.isdir(logdir):
        raise UsageError(
            f"--logdir {logdir}: exists and is not a directory; give a folder "
            "for the runs"
        )
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(logdir, f"{prefix}-{stamp}")
    path, index = base, 1
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            index += 1
            path = f"{base}-{index}"
        except OSError as error:
            raise UsageError(
                f"--logdir {logdir}: cannot create the folder {path}: "
                f"{error.strerror or error}"
            ) from error


@contextlib.contextmanager
def quiet_tensorflow_warnings(verbose=False):
    """Keeps TensorFlow's Python-side warnings out of the output.

    Training several models in one process makes TensorFlow warn about
    `tf.function` retracing, which is expected here. Errors still show;
    with `verbose=True` nothing is hidden.
    """
    logger = logging.getLogger("tensorflow")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_keras_output(path, option=None):
    """A `UsageError` unless `path` (an output; `None`: not asked for)
    ends with `.keras`; `option` names the option that gave it."""
    if path is not None and not path.endswith(".keras"):
        given = path if option is None else f"{option} {path}"
        raise UsageError(f"{given}: the output must be a .keras file")


def save_model(model, path, option=None):
    """Saves `model` to `path`; a `UsageError` naming the path (and
    `option`, the option that gave it) when it cannot be written."""
    try:
        model.save(path)
    except OSError as error:
        given = path if option is None else f"{option} {path}"
        raise UsageError(
            f"{given}: cannot write: {error.strerror or error}"
        ) from error


def _what_it_is(path):
    """A few words on a file that is not a zip archive."""
    with open(path, "rb") as file:
        head = file.read(512)
    if not head:
        return "an empty file"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "a binary file that is not a zip archive"
    return "a text file"


def check_model_file(path):
    """A `UsageError` naming `path` and its problem unless it looks like a
    saved `.keras` model (a zip archive with a `config.json`): checked
    before Keras starts, so that a wrong file is answered at once."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a folder; expected a .keras file")
    if not path.endswith(".keras"):
        raise UsageError(
            f"{path}: expected a model saved as .keras (model.save(...))"
        )
    archive = "model.save(...) writes a zip archive with a config.json"
    if not zipfile.is_zipfile(path):
        raise UsageError(
            f"{path}: not a valid .keras archive ({archive}); this is "
            f"{_what_it_is(path)}"
        )
    try:
        with zipfile.ZipFile(path) as opened:
            names = opened.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise UsageError(
            f"{path}: not a valid .keras archive ({archive}): {error}"
        ) from None
    if "config.json" not in names:
        raise UsageError(
            f"{path}: not a valid .keras archive ({archive}); this zip "
            "archive has no config.json"
        )
