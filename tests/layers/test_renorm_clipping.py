"""`bn_keras.layers.RenormClipping`: the paper's schedule for rmax and dmax."""

import json
import re

import keras
import numpy as np
import pytest

import bn_keras
from tests import reference
from tests.layer_test_case import to_numpy

RenormClipping = bn_keras.layers.RenormClipping

# Computed by hand from the paper's recipe (rmax = 1 and dmax = 0 for 5,000
# steps, then linear ramps to rmax = 3 at 40,000 and dmax = 5 at 25,000):
# rmax = 1 + 2 * (step - 5000) / 35000, dmax = 5 * (step - 5000) / 20000.
PAPER = {
    0: (1.0, 0.0),
    4999: (1.0, 0.0),
    5000: (1.0, 0.0),
    12000: (1.4, 1.75),
    22500: (2.0, 4.375),
    25000: (15 / 7, 5.0),
    40000: (3.0, 5.0),
    1_000_000: (3.0, 5.0),
}
# RenormClipping(rmax=2, dmax=1, warmup_steps=2, rmax_steps=6, dmax_steps=4)
SHORT_ARGS = dict(
    rmax=2.0, dmax=1.0, warmup_steps=2, rmax_steps=6, dmax_steps=4
)
SHORT = {
    0: (1.0, 0.0),
    1: (1.0, 0.0),
    2: (1.0, 0.0),
    3: (1.25, 0.5),
    4: (1.5, 1.0),
    5: (1.75, 1.0),
    6: (2.0, 1.0),
    7: (2.0, 1.0),
}
SCHEDULES = {"paper": ({}, PAPER), "short": (SHORT_ARGS, SHORT)}


def as_floats(bounds):
    return {key: float(to_numpy(value)) for key, value in bounds.items()}


def expected_bounds(rmax, dmax):
    return {"rmin": 1.0 / rmax, "rmax": rmax, "dmax": dmax}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_values_at_python_steps(schedule):
    args, table = SCHEDULES[schedule]
    clipping = RenormClipping(**args)
    for step, (rmax, dmax) in table.items():
        bounds = clipping(step)
        assert set(bounds) == {"rmin", "rmax", "dmax"}
        for key, value in expected_bounds(rmax, dmax).items():
            assert bounds[key] == pytest.approx(value, rel=1e-12), (step, key)


@pytest.mark.parametrize("dtype", ["int32", "int64", "float32"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_values_at_tensor_steps(schedule, dtype):
    """A tensor step (the layer's counter) gives float32 tensors."""
    args, table = SCHEDULES[schedule]
    clipping = RenormClipping(**args)
    for step, (rmax, dmax) in table.items():
        bounds = clipping(keras.ops.convert_to_tensor(step, dtype=dtype))
        for value in bounds.values():
            assert keras.backend.standardize_dtype(value.dtype) == "float32"
        actual = as_floats(bounds)
        for key, value in expected_bounds(rmax, dmax).items():
            assert actual[key] == pytest.approx(value, rel=1e-6), (step, key)


def test_values_at_a_variable_step():
    clipping = RenormClipping(**SHORT_ARGS)
    step = keras.Variable(0, dtype="int64", trainable=False)
    for value, (rmax, dmax) in SHORT.items():
        step.assign(value)
        assert as_floats(clipping(step)) == pytest.approx(
            expected_bounds(rmax, dmax), rel=1e-6
        )


@pytest.mark.parametrize(
    "args",
    [
        {},
        SHORT_ARGS,
        dict(rmax=1.5, dmax=0.0, warmup_steps=0, rmax_steps=10, dmax_steps=0),
    ],
    ids=["paper", "short", "no_warmup"],
)
def test_matches_reference_at_every_step(args):
    clipping = RenormClipping(**args)
    end = max(args.get("rmax_steps", 40000), args.get("dmax_steps", 25000))
    for step in np.unique(np.linspace(0, end + 10, 101).astype(int)):
        expected = reference.renorm_clipping_at(int(step), **args)
        assert clipping(int(step)) == pytest.approx(expected, rel=1e-12)


def test_zero_length_ramp_jumps_at_its_step():
    clipping = RenormClipping(warmup_steps=3, rmax_steps=3, dmax_steps=3)
    for step in (2, keras.ops.convert_to_tensor(2)):
        assert as_floats(clipping(step)) == pytest.approx(
            expected_bounds(1.0, 0.0)
        )
    for step in (3, keras.ops.convert_to_tensor(3)):
        assert as_floats(clipping(step)) == pytest.approx(
            expected_bounds(3.0, 5.0)
        )


def test_defaults_are_the_papers():
    assert RenormClipping().get_config() == {
        "rmax": 3.0,
        "dmax": 5.0,
        "warmup_steps": 5000,
        "rmax_steps": 40000,
        "dmax_steps": 25000,
    }


@pytest.mark.parametrize("args", [{}, SHORT_ARGS], ids=["paper", "short"])
def test_serialization_round_trip(args):
    clipping = RenormClipping(**args)
    config = json.loads(json.dumps(clipping.get_config()))
    assert RenormClipping.from_config(config) == clipping
    serialized = json.loads(
        json.dumps(keras.saving.serialize_keras_object(clipping))
    )
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is RenormClipping
    assert revived == clipping
    assert hash(revived) == hash(clipping)
    assert revived != RenormClipping(rmax=2.5)
    assert eval(repr(clipping), {"RenormClipping": RenormClipping}) == clipping


ERRORS = [
    ({"rmax": 0.5}, ValueError, "rmax=0.5"),
    ({"rmax": "3"}, TypeError, "rmax='3'"),
    ({"rmax": True}, TypeError, "rmax=True"),
    ({"dmax": -1.0}, ValueError, "dmax=-1.0"),
    ({"warmup_steps": -1}, ValueError, "warmup_steps=-1"),
    ({"warmup_steps": 2.5}, TypeError, "warmup_steps=2.5"),
    ({"rmax_steps": None}, TypeError, "rmax_steps=None"),
    (
        {"warmup_steps": 200, "rmax_steps": 100},
        ValueError,
        "rmax_steps=100, warmup_steps=200",
    ),
    (
        {"warmup_steps": 30000},  # dmax_steps defaults to 25000
        ValueError,
        "dmax_steps=25000, warmup_steps=30000",
    ),
]


@pytest.mark.parametrize(
    "kwargs, error, text", ERRORS, ids=[text for _, _, text in ERRORS]
)
def test_errors(kwargs, error, text):
    with pytest.raises(error, match=re.escape(f"Received: {text}") + "$"):
        RenormClipping(**kwargs)
