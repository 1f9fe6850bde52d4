"""The `bn-keras` command line.

    bn-keras compare   train one model per BN configuration and rank them
    bn-keras search    search BN placements with keras-tuner
    bn-keras inspect   one row per BN layer of a saved model; fold it
    bn-keras convert   a saved model with its BN layers of another kind
    bn-keras doctor    what is wrong with a saved model's BN, on data; fix it

Also `python -m bn_keras`. Exit status: 0 on success, 2 for usage errors
(bad options, unknown names, unreadable or malformed files), as argparse
does, 130 when Ctrl-C stops a command, 1 for anything else (an error that
is not the input's: one line, and its traceback with `--verbose`).

Nothing here imports Keras: `--help`, `--version` and usage errors answer
at once, and a command starts Keras once its options are checked
(`bn_keras.cli.runtime`).
"""

import argparse
import sys

from bn_keras import _optional
from bn_keras.cli import compare
from bn_keras.cli import convert
from bn_keras.cli import doctor_command
from bn_keras.cli import inspect_command
from bn_keras.cli import runtime
from bn_keras.cli import search
from bn_keras.cli.common import PROG
from bn_keras.cli.common import UsageError

#: The optional modules each command needs, all brought by the `cli`
#: extra (`pip install 'bn-keras[cli]'`); checked before a command starts.
REQUIREMENTS = {
    "compare": ("sklearn", "matplotlib"),
    "search": ("sklearn", "matplotlib", "keras_tuner"),
    "doctor": ("sklearn",),
}


def build_parser():
    """The argument parser, with one subparser per command."""
    from bn_keras import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Batch normalization done right for Keras 3: compare "
        "placements and variants on your data, search them with "
        "keras-tuner, inspect and fold the BN layers of a saved model, "
        "diagnose and fix them.",
        epilog="Run 'bn-keras COMMAND --help' for a command's options.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    subparsers = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND"
    )
    subparsers.required = True
    for module in (compare, search, inspect_command, convert, doctor_command):
        module.add_parser(subparsers)
    return parser


def _parse(argv):
    """`(args, None)`, or `(None, exit status)` after `--help`,
    `--version` or an argparse error."""
    try:
        return build_parser().parse_args(argv), None
    except SystemExit as exit:
        return None, exit.code if isinstance(exit.code, int) else 2


def _failed(command, error, verbose):
    """One line for an error that is not the input's; exit status 1."""
    if verbose:
        import traceback

        traceback.print_exc()
    lines = [line for line in str(error).splitlines() if line.strip()]
    first = lines[0].strip() if lines else ""
    hint = "" if verbose else " (--verbose shows the traceback)"
    print(
        f"{PROG} {command}: error: {type(error).__name__}: {first}{hint}",
        file=sys.stderr,
    )
    return 1


def main(argv=None):
    """Runs the command line; returns the exit status.

    Args:
        argv: Arguments without the program name (default: `sys.argv[1:]`).

    Returns:
        0 on success, 2 for a usage error (printed to stderr), 130 when
        interrupted (Ctrl-C), 1 for any other error.
    """
    args = command = None
    try:
        runtime.take_over_interrupts()
        args, status = _parse(argv)
        if args is None:
            return status
        command = args.command
        missing = _optional.missing_message(
            REQUIREMENTS.get(command, ()), "this command", extra="cli"
        )
        if missing is not None:
            print(f"{PROG} {command}: error: {missing}", file=sys.stderr)
            return 1
        with runtime.plain_warnings(), runtime.remember_interrupts():
            status = args.run(args)
            runtime.check_interrupt()
        return status
    except UsageError as error:
        print(f"{PROG} {command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return runtime.interrupted(command)
    except Exception as error:
        if runtime.was_interrupted():
            return runtime.interrupted(command)
        return _failed(command, error, getattr(args, "verbose", False))
