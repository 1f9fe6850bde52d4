"""Argument checks shared by the whole package.

Every public function and constructor of bn-keras validates its arguments
with these, so that the same kind of mistake gets the same message
everywhere: the argument's name, what was expected, and
`Received: name=value` at the end (the house style, taken from Keras).
"""

import numbers

import numpy as np


def _received(name, value):
    return f"Received: {name}={value!r}"


def check_bool(name, value):
    """Returns `value` as a `bool`; a `TypeError` unless it is a boolean.

    NumPy booleans are accepted; integers (`0`, `1`) are not.

    >>> bn_keras._validation.check_bool("frozen", True)
    True
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"Argument `{name}` must be a boolean. {_received(name, value)}"
        )
    return bool(value)


def is_integer(value):
    """Whether `value` is an integer (a Python or NumPy one), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(
        value, (bool, np.bool_)
    )


def is_number(value):
    """Whether `value` is a real number (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(
        value, (bool, np.bool_)
    )


def check_positive_int(name, value, allow_none=False):
    """Returns `value` as an `int` (or `None` where allowed).

    Raises a `ValueError` for anything but a positive integer, whatever its
    type, as Keras does for sizes and counts.

    >>> bn_keras._validation.check_positive_int("steps", 3)
    3
    """
    if allow_none and value is None:
        return None
    if not is_integer(value) or value < 1:
        expected = "a positive integer" + (" or None" if allow_none else "")
        raise ValueError(
            f"Argument `{name}` must be {expected}. {_received(name, value)}"
        )
    return int(value)


def check_nonnegative_int(name, value, what="integer"):
    """Returns `value` as an `int`; `TypeError`/`ValueError` otherwise.

    `what` completes "a non-negative ..." in the message (for example
    `"integer number of steps"`).
    """
    if not is_integer(value):
        raise TypeError(
            f"Argument `{name}` must be a non-negative {what}. "
            f"{_received(name, value)}"
        )
    if value < 0:
        raise ValueError(
            f"Argument `{name}` must be a non-negative {what}. "
            f"{_received(name, value)}"
        )
    return int(value)


def check_fraction(name, value, allow_none=False, allow_one=False):
    """Returns `value` as a `float` in `[0, 1)`, as momenta are (or `None`
    where allowed; `[0, 1]` with `allow_one`).

    >>> bn_keras._validation.check_fraction("momentum", 0.9)
    0.9
    >>> bn_keras._validation.check_fraction("momentum", None, allow_none=True)
    >>> bn_keras._validation.check_fraction("momentum", 1, allow_one=True)
    1.0
    """
    if allow_none and value is None:
        return None
    interval = "[0, 1]" if allow_one else "[0, 1)"
    expected = f"a float in {interval}" + (" or None" if allow_none else "")
    if not is_number(value):
        raise TypeError(
            f"Argument `{name}` must be {expected}. {_received(name, value)}"
        )
    if not (0.0 <= value <= 1.0 if allow_one else 0.0 <= value < 1.0):
        raise ValueError(
            f"Argument `{name}` must be {expected}. {_received(name, value)}"
        )
    return float(value)


def check_number(name, value, minimum):
    """Returns `value` as a `float` of at least `minimum`."""
    if not is_number(value):
        raise TypeError(
            f"Argument `{name}` must be a number. {_received(name, value)}"
        )
    if not value >= minimum:
        raise ValueError(
            f"Argument `{name}` must be at least {minimum}. "
            f"{_received(name, value)}"
        )
    return float(value)


def check_keywords(caller, given, known, takes="it takes"):
    """A `TypeError` when `given` (a dict of keyword arguments) holds names
    not in `known`; `caller` says who received them, `takes` introduces
    the list of the known ones."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise TypeError(
            f"{caller} got unexpected keyword arguments {unknown}; {takes} "
            f"{list(known)}. {_received(unknown[0], given[unknown[0]])}"
        )
