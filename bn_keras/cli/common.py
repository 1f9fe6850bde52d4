"""Pieces shared by the subcommands: usage errors, output folders, tables."""

import contextlib
import datetime
import logging
import os
import shutil

from rich import box
from rich.console import Console
from rich.table import Table

#: The widest the printed tables get, whatever the terminal.
MAX_WIDTH = 100


class UsageError(ValueError):
    """Bad input from the user: printed as `bn-keras CMD: error: ...`, exit
    status 2 (argparse's convention for usage errors)."""


def console(stderr=False):
    """A rich console at most `MAX_WIDTH` columns wide.

    Created per call so that it writes to the `sys.stdout` (or
    `sys.stderr`) of the moment, which tests capture. Text lines are not
    wrapped (paths and commands stay whole, to copy); tables fit the width.
    """
    width = min(shutil.get_terminal_size((MAX_WIDTH, 24)).columns, MAX_WIDTH)
    return Console(
        stderr=stderr,
        width=width,
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


def table(columns, rows, title=None):
    """A rich table; `columns` is a list of `(header, justify)` pairs.

    Right-justified (numeric) columns never wrap; the others fold.
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
            overflow="fold",
            no_wrap=justify == "right",
        )
    for row in rows:
        result.add_row(*[str(cell) for cell in row])
    return result


def parse_names(values):
    """A list of names from `--opt a b` and `--opt a,b` alike."""
    names = []
    for value in values or ():
        names.extend(part.strip() for part in value.split(",") if part.strip())
    return names


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
