"""The process around a command: Keras's start, warnings and Ctrl-C.

`bn-keras --help`, `--version` and usage errors never import Keras: a
command imports it with `start_keras` once its options are checked, with
TensorFlow's C++ and absl start-up lines silenced unless `--verbose`.
While a command runs, `plain_warnings` turns every Python warning into one
line `warning: <message>` on standard error, without a file path.
Ctrl-C raises `KeyboardInterrupt` as usual; one that Python would swallow
(raised in a garbage-collection callback, where it prints "Exception
ignored in ..." with a traceback and goes on) is kept by
`remember_interrupts` and raised again by `check_interrupt`, which the
training calls after every batch. `interrupted` is how a command says that
Ctrl-C stopped it.
"""

import contextlib
import os
import re
import signal
import sys
import tempfile
import threading
import warnings

from bn_keras.cli.common import PROG

#: The exit status of a command stopped by Ctrl-C (128 + SIGINT), as
#: shells report it.
INTERRUPTED = 130

#: What TensorFlow's C++ side writes while it starts, before its logging
#: is set up: absl's "I0000 00:00:1796019338.103297   31060 port.cc:153]"
#: lines (information, warnings and the CUDA probe's error on a machine
#: without a GPU), the banner that announces them, and the second line of
#: cpu_feature_guard's message.
_STARTUP_LINE = re.compile(
    r"[IWE]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.]+:\d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) "
    r"|To enable the following instructions: "
)


def quiet_environment():
    """Sets TensorFlow's C++ log level (3: fatal errors only), unless
    already set; TensorFlow reads it when it starts."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def _filtered_stderr():
    """Keeps TensorFlow's start-up lines off standard error (file
    descriptor 2, where its C++ side writes); everything else written
    there meanwhile is passed on when the block ends."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            kept = [
                line
                for line in text.splitlines(keepends=True)
                if not _STARTUP_LINE.match(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def start_keras(verbose=False):
    """Imports Keras, and TensorFlow with it, once.

    TensorFlow prints about six lines of C++ logging when it loads and when
    it looks for a GPU, whatever `TF_CPP_MIN_LOG_LEVEL` says (they come
    before its logging reads it), and C++ "errors" that are not (oneDNN's
    note on DT_BOOL) when it trains. Unless `verbose`,
    `TF_CPP_MIN_LOG_LEVEL` is set to 3 if unset (failures still raise
    Python exceptions), absl's Python logging to errors only, and the
    start-up lines are dropped; anything else written meanwhile shows.
    """
    if "keras" not in sys.modules:
        with _interrupts_kept():
            if verbose:
                import keras  # noqa: F401
            else:
                _quiet_start()
    check_interrupt()


@contextlib.contextmanager
def _interrupts_kept():
    """Keeps a Ctrl-C during the block for `check_interrupt` instead of
    raising it there: a `KeyboardInterrupt` raised while TensorFlow's C++
    extensions initialize can abort the process (SIGABRT, no message)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return

    def keep(signum, frame):
        global _pending_interrupt
        _pending_interrupt = True

    previous = signal.signal(signal.SIGINT, keep)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _quiet_start():
    """Imports Keras with TensorFlow's start-up lines dropped."""
    quiet_environment()
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    with _filtered_stderr():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe, now


def _one_line(message):
    return " ".join(str(message).split())


@contextlib.contextmanager
def plain_warnings():
    """Python warnings as `warning: <message>` lines on standard error.

    One line per message (whitespace collapsed), each message once, no file
    path or source line. Python's warning filters stay as they are; the
    previous handler comes back when the block ends.
    """
    shown = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = _one_line(message)
        if text not in shown:
            shown.add(text)
            print(f"warning: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


_pending_interrupt = False
#: Whether Ctrl-C came since the command started (see `was_interrupted`).
_interrupt_received = False


def _interrupt(signum, frame):
    """Python's Ctrl-C (`KeyboardInterrupt`), remembered."""
    global _interrupt_received
    _interrupt_received = True
    raise KeyboardInterrupt


def was_interrupted():
    """Whether Ctrl-C came since the command started: an error raised
    after it comes from the interrupt (TensorFlow's tracing can turn a
    `KeyboardInterrupt` raised inside it into a `TypeError`)."""
    return _interrupt_received


def take_over_interrupts():
    """From now on Ctrl-C raises `KeyboardInterrupt` (for the command to
    handle) instead of ending the process at once, as the package's
    handler does while `bn-keras` starts (see `bn_keras/__init__.py`)."""
    handler = signal.getsignal(signal.SIGINT)
    if getattr(handler, "__module__", None) == "bn_keras":
        signal.signal(signal.SIGINT, _interrupt)


@contextlib.contextmanager
def remember_interrupts():
    """Keeps a Ctrl-C that Python could not raise (it happened in a
    finalizer or a garbage-collection callback) for `check_interrupt`,
    instead of printing it as an ignored exception with a traceback."""
    previous = sys.unraisablehook

    def hook(unraisable):
        global _pending_interrupt
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            _pending_interrupt = True
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def check_interrupt():
    """Raises `KeyboardInterrupt` if a Ctrl-C was kept by
    `remember_interrupts` and not raised yet."""
    global _pending_interrupt
    if _pending_interrupt:
        _pending_interrupt = False
        raise KeyboardInterrupt


def completed(function, *args, **kwargs):
    """Calls `function(*args, **kwargs)`: `True` when it returns, `False`
    when Ctrl-C stopped it (what it finished stays where it put it), also
    when the interrupt surfaced as another error."""
    try:
        function(*args, **kwargs)
    except KeyboardInterrupt:
        return False
    except Exception:
        if was_interrupted():
            return False
        raise
    return True


def warn_all(messages):
    """Warns each message (a `UserWarning`), as `plain_warnings` shows."""
    for message in messages:
        warnings.warn(message, stacklevel=2)


def interrupted(command, details=""):
    """Says on standard error that Ctrl-C stopped `command` (and, if
    given, `details`); returns the exit status, `INTERRUPTED`."""
    line = (
        f"{PROG} {command}: interrupted" if command else f"{PROG}: interrupted"
    )
    if details:
        line += f" {details}"
    print(line, file=sys.stderr, flush=True)
    return INTERRUPTED
