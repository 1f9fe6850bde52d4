"""The `bn-keras` command line.

    bn-keras compare   train one model per BN configuration and rank them
    bn-keras search    search BN placements with keras-tuner
    bn-keras inspect   one row per BN layer of a saved model; fold it
    bn-keras convert   a saved model with its BN layers of another kind

Also `python -m bn_keras`. Exit status: 0 on success, 2 for usage errors
(bad options, unknown names, unreadable or malformed files), as argparse
does.
"""

import argparse
import sys

from bn_keras.cli import compare
from bn_keras.cli import convert
from bn_keras.cli import inspect
from bn_keras.cli import search
from bn_keras.cli.common import UsageError

PROG = "bn-keras"


def build_parser():
    """The argument parser, with one subparser per command."""
    from bn_keras import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Batch normalization done right for Keras 3: compare "
        "placements and variants on your data, search them with "
        "keras-tuner, inspect and fold the BN layers of a saved model.",
        epilog="Run 'bn-keras COMMAND --help' for a command's options.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    subparsers = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND"
    )
    subparsers.required = True
    for module in (compare, search, inspect, convert):
        module.add_parser(subparsers)
    return parser


def main(argv=None):
    """Runs the command line; returns the exit status.

    Args:
        argv: Arguments without the program name (default: `sys.argv[1:]`).

    Returns:
        0 on success, 2 for a usage error (printed to stderr).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, --version and argparse's errors
        return exit.code if isinstance(exit.code, int) else 2
    try:
        return args.run(args)
    except UsageError as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
