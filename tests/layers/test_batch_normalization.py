"""`bn_keras.layers.BatchNormalization`: a drop-in for Keras's layer, its
conventions, the non-finite guard and its errors.

Ghost batches and renorm schedules have their own test modules.
"""

import re

import keras
import numpy as np
import pytest

import bn_keras
from tests import reference
from tests.layer_test_case import LAYER_CHECKS
from tests.layer_test_case import assert_layer_conventions
from tests.layer_test_case import assert_weights_equal
from tests.layer_test_case import gradients
from tests.layer_test_case import randomize_weights
from tests.layer_test_case import sample_inputs
from tests.layer_test_case import to_numpy
from tests.layer_test_case import weights_by_name

BN = bn_keras.layers.BatchNormalization
TENSORFLOW = keras.backend.backend() == "tensorflow"
# On TensorFlow, `fused=None` (the default) runs the fused kernel where it
# applies and `fused=False` the composite ops: both must pass.
FUSED = [None, False] if TENSORFLOW else [None]
# Arguments that Keras's layer does not have.
OUR_ONLY = ("virtual_batch_size", "skip_nonfinite", "fused")

# input shape (batch first) and features axis
LAYOUTS = {
    "2d": ((6, 3), -1),
    "4d_channels_last": ((4, 2, 3, 5), -1),
    "4d_channels_first": ((4, 3, 2, 5), 1),
    "3d_channels_first": ((5, 4, 3), 1),
}
MODES = {
    "plain": {},
    "renorm": {"renorm": True},
    "renorm_clipped": {
        "renorm": True,
        "renorm_clipping": {"rmax": 1.3, "rmin": 0.8, "dmax": 0.2},
    },
}


def keras_options(options):
    return {k: v for k, v in options.items() if k not in OUR_ONLY}


def make_pair(layout, options, seed=0):
    """Keras's layer and ours, built, with the same random weights."""
    shape, axis = LAYOUTS[layout]
    options = {"momentum": 0.8, "renorm_momentum": 0.7, **options}
    theirs = keras.layers.BatchNormalization(
        axis=axis, **keras_options(options)
    )
    ours = BN(axis=axis, **options)
    theirs.build(shape)
    ours.build(shape)
    randomize_weights(theirs, seed)
    ours.set_weights(theirs.get_weights())
    return theirs, ours, shape


def random_mask(shape, seed):
    """A Keras mask (rank `ndim - 1`) keeping about 70% of the positions."""
    return np.random.default_rng(seed).random(shape[:-1]) < 0.7


# -- conventions --------------------------------------------------------------

def test_layer_conventions_through_the_one_call_helper(tmp_path):
    """`assert_layer_conventions`, the helper other layers' tests use."""
    assert_layer_conventions(lambda: BN(momentum=0.5), (8, 3), tmp_path)


CONVENTION_CASES = {
    "channels_first_4d": (lambda: BN(axis=1, momentum=0.5), (4, 3, 2, 2)),
    "renorm_fixed_clipping": (
        lambda: BN(
            momentum=0.5,
            renorm=True,
            renorm_clipping={"rmax": 2.0, "rmin": 0.5, "dmax": 1.0},
            renorm_momentum=0.5,
        ),
        (8, 3),
    ),
}


@pytest.mark.parametrize("check", LAYER_CHECKS)
@pytest.mark.parametrize("case", CONVENTION_CASES)
def test_layer_conventions(case, check, tmp_path):
    make_layer, input_shape = CONVENTION_CASES[case]
    LAYER_CHECKS[check](make_layer, input_shape, tmp_path)


@pytest.mark.parametrize(
    "options", [{}, {"renorm": True}, {"virtual_batch_size": 3}]
)
def test_frozen_layer_runs_in_inference_mode(options, tmp_path):
    LAYER_CHECKS["training_vs_inference"](
        lambda: BN(trainable=False, **options),
        (8, 3),
        tmp_path,
        training_changes_output=False,
    )


# -- drop-in for keras.layers.BatchNormalization ------------------------------


def describe_weights(layer):
    return [
        (
            w.name,
            tuple(w.shape),
            w.trainable,
            keras.backend.standardize_dtype(w.dtype),
        )
        for w in layer.weights
    ]


@pytest.mark.parametrize("layout", ["2d", "4d_channels_first"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"center": False},
        {"scale": False},
        {"renorm": True},
        {"renorm": True, "renorm_clipping": {"rmax": 2.0, "dmax": 1.0}},
        {"virtual_batch_size": 4},
        {"virtual_batch_size": 4, "renorm": True},
        {"skip_nonfinite": False},
    ],
    ids=lambda o: "-".join(o) or "defaults",
)
def test_same_weights_and_config_as_keras_layer(layout, options):
    shape, axis = LAYOUTS[layout]
    theirs = keras.layers.BatchNormalization(
        axis=axis, **keras_options(options)
    )
    ours = BN(axis=axis, **options)
    theirs.build(shape)
    ours.build(shape)
    assert describe_weights(ours) == describe_weights(theirs)
    for mine, keras_weight in zip(ours.weights, theirs.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(mine), to_numpy(keras_weight))
    # Every Keras argument, with Keras's default and meaning, is in our config.
    expected = theirs.get_config()
    actual = ours.get_config()
    for key, value in expected.items():
        if key != "name":
            assert actual[key] == value, key


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_keras_layer(layout, mode, masked, fused):
    theirs, ours, shape = make_pair(layout, {**MODES[mode], "fused": fused})
    for step in range(3):
        # The distribution moves, so that the statistics change each step.
        x = sample_inputs(shape, seed=step, scale=1.0 + step, shift=step)
        mask = random_mask(shape, seed=step) if masked else None
        expected = to_numpy(theirs(x, training=True, mask=mask))
        actual = to_numpy(ours(x, training=True, mask=mask))
        np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=1e-5)
        assert_weights_equal(
            ours, theirs, atol=1e-5, rtol=1e-5, context=f"step {step}"
        )
    x = sample_inputs(shape, seed=10)
    np.testing.assert_allclose(
        to_numpy(ours(x, training=False)),
        to_numpy(theirs(x, training=False)),
        atol=1e-5,
        rtol=1e-5,
    )


def test_renorm_clipping_is_active_in_the_drop_in_data():
    """Guards `test_matches_keras_layer`: with its data, clipping changes
    Keras's output, so a layer that ignored the bounds would fail there."""
    clipped, _, shape = make_pair("2d", MODES["renorm_clipped"])
    unclipped, _, _ = make_pair("2d", MODES["renorm"])
    x = sample_inputs(shape, seed=0, scale=1.0, shift=0.0)
    assert not np.allclose(
        to_numpy(clipped(x, training=True)),
        to_numpy(unclipped(x, training=True)),
        atol=1e-3,
    )


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["2d", "4d_channels_first"])
def test_gradients_match_keras_layer(layout, mode, masked, fused):
    theirs, ours, shape = make_pair(layout, {**MODES[mode], "fused": fused})
    upstream = np.random.default_rng(5).normal(size=shape)
    for step in range(2):
        x = sample_inputs(shape, seed=step, scale=1.0 + step)
        mask = random_mask(shape, seed=step) if masked else None
        dx_expected, dw_expected = gradients(theirs, x, upstream, mask=mask)
        dx, dw = gradients(ours, x, upstream, mask=mask)
        np.testing.assert_allclose(dx, dx_expected, atol=1e-5, rtol=1e-4)
        assert len(dw) == len(dw_expected) == 2
        for actual, expected in zip(dw, dw_expected, strict=True):
            np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=1e-4)
        assert np.abs(dx).max() > 1e-3  # the gradients are not all zero


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("mode", ["plain", "renorm"])
def test_momentum_one_freezes_the_statistics_as_keras(mode, fused):
    """`momentum=1.0` (and `renorm_momentum=1.0`) is Keras's: training
    normalizes with the batch statistics and leaves the moving (and renorm)
    statistics as they were."""
    frozen = {"momentum": 1.0, "renorm_momentum": 1.0, "fused": fused}
    theirs, ours, shape = make_pair(
        "4d_channels_last", {**MODES[mode], **frozen}
    )
    assert ours.momentum == 1.0 and ours.get_config()["momentum"] == 1.0
    start = weights_by_name(ours)
    for step in range(2):
        x = sample_inputs(shape, seed=step, scale=1.0 + step, shift=step)
        np.testing.assert_allclose(
            to_numpy(ours(x, training=True)),
            to_numpy(theirs(x, training=True)),
            atol=1e-5,
            rtol=1e-5,
        )
        assert_weights_equal(ours, theirs, context=f"step {step}")
    now = weights_by_name(ours)
    if ours.renorm:  # Keras keeps the variance as `moving_stddev**2 - eps`
        start["moving_variance"] = np.maximum(
            start["moving_stddev"] ** 2 - ours.epsilon, 0.0
        )
    for name, value in now.items():
        np.testing.assert_allclose(
            value, start[name], rtol=1e-6, atol=0, err_msg=name
        )
    # Not the identity: the batch statistics normalize in training.
    y = to_numpy(ours(x, training=True))
    assert not np.allclose(y, to_numpy(ours(x, training=False)), atol=1e-2)


@pytest.mark.parametrize("size", [None, 2])
def test_momentum_one_in_fit_keeps_the_statistics(size):
    layer = BN(momentum=1.0, virtual_batch_size=size)
    model = keras.Sequential([keras.Input((3,)), layer])
    model.compile("sgd", "mse")
    x = sample_inputs((16, 3))
    model.fit(x, x, batch_size=8, epochs=1, verbose=0)
    np.testing.assert_array_equal(to_numpy(layer.moving_mean), np.zeros(3))
    np.testing.assert_array_equal(to_numpy(layer.moving_variance), np.ones(3))
    # The same fit with momentum 0.5 moves them: the test can fail.
    moving = BN(momentum=0.5, virtual_batch_size=size)
    model = keras.Sequential([keras.Input((3,)), moving])
    model.compile("sgd", "mse")
    model.fit(x, x, batch_size=8, epochs=1, verbose=0)
    assert np.abs(to_numpy(moving.moving_mean)).min() > 0.1


def make_model(bn_layer, shape):
    inputs = keras.Input(shape[1:])
    x = keras.layers.Dense(shape[-1], name="pre")(inputs)
    x = bn_layer(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x))


@pytest.mark.parametrize("direction", ["keras_to_ours", "ours_to_keras"])
@pytest.mark.parametrize("mode", MODES)
def test_weights_swap_with_a_keras_model(mode, direction):
    shape, axis = (8, 3, 2, 4), 1
    options = {"axis": axis, "momentum": 0.5, **MODES[mode]}
    keras_model = make_model(keras.layers.BatchNormalization(**options), shape)
    our_model = make_model(BN(**options), shape)
    source, target = (
        (keras_model, our_model)
        if direction == "keras_to_ours"
        else (our_model, keras_model)
    )
    source.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = sample_inputs((16, *shape[1:]))
    y = np.random.default_rng(1).normal(size=(16, *shape[1:-1], 2))
    source.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)

    target.set_weights(source.get_weights())
    np.testing.assert_allclose(
        target.predict(x, verbose=0), source.predict(x, verbose=0), atol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(target(x[:8], training=True)),
        to_numpy(source(x[:8], training=True)),
        atol=1e-5,
    )
    # Not vacuous: the statistics are trained, so a swap that put them in
    # the wrong place would change the predictions.
    bn = source.layers[2]
    assert not np.allclose(to_numpy(bn.moving_mean), 0.0, atol=1e-2)


def test_frozen_layer_in_fit_keeps_its_statistics():
    layer = BN(momentum=0.5, trainable=False)
    model = keras.Sequential([keras.Input((3,)), layer, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = sample_inputs((16, 3))
    randomize_weights(layer)
    before = weights_by_name(layer)
    expected = reference.ReferenceBatchNorm(3)
    expected.set_state(**before)
    model.fit(x, np.ones((16, 1)), batch_size=8, verbose=0)
    for name, value in weights_by_name(layer).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    # And the frozen layer outputs the inference transform.
    np.testing.assert_allclose(
        to_numpy(layer(x, training=True)), expected.inference(x), atol=1e-5
    )


# -- non-finite guard ---------------------------------------------------------

GUARD_MODES = {
    "plain": {},
    "renorm": {"renorm": True},
    "ghost": {"virtual_batch_size": 3},
    "ghost_renorm_schedule": {
        "virtual_batch_size": 3,
        "renorm": True,
        "renorm_clipping": bn_keras.layers.RenormClipping(
            warmup_steps=1, rmax_steps=3, dmax_steps=2
        ),
    },
}
BAD_VALUES = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}


def statistics(layer):
    """Every non-trainable float weight (the step counter excluded)."""
    return {
        w.name: to_numpy(w)
        for w in layer.non_trainable_weights
        if w.name != "renorm_step"
    }


def bad_batch(shape, bad, seed=1):
    x = sample_inputs(shape, seed=seed)
    x[1, 0] = bad  # one sample, one channel
    return x


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("bad", BAD_VALUES)
@pytest.mark.parametrize("mode", GUARD_MODES)
def test_nonfinite_batch_leaves_statistics_unchanged(mode, bad, fused):
    layer = BN(
        momentum=0.5, renorm_momentum=0.5, fused=fused, **GUARD_MODES[mode]
    )
    x = sample_inputs((8, 3))
    layer(x, training=True)
    before = statistics(layer)
    assert len(before) == (5 if "renorm" in mode else 2)
    inference = to_numpy(layer(x, training=False))

    layer(bad_batch((8, 3), BAD_VALUES[bad]), training=True)
    for name, value in statistics(layer).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    np.testing.assert_array_equal(to_numpy(layer(x, training=False)), inference)
    if layer.renorm_step is not None:
        # The schedule counts training steps, bad batches included.
        assert int(to_numpy(layer.renorm_step)) == 2

    layer(x, training=True)  # a good batch updates them again
    after = statistics(layer)
    assert not np.allclose(after["moving_mean"], before["moving_mean"])


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("bad", BAD_VALUES)
@pytest.mark.parametrize("mode", ["plain", "renorm"])
def test_without_guard_nonfinite_batch_poisons_statistics_as_keras(
    mode, bad, fused
):
    options = {**GUARD_MODES[mode], "skip_nonfinite": False, "fused": fused}
    theirs, ours, shape = make_pair("2d", options)
    for x in (sample_inputs(shape), bad_batch(shape, BAD_VALUES[bad])):
        theirs(x, training=True)
        ours(x, training=True)
    poisoned = statistics(ours)
    assert not np.all(np.isfinite(poisoned["moving_mean"]))
    expected = statistics(theirs)
    for name, value in poisoned.items():
        # Same values, non-finite ones at the same places (NaN == NaN).
        np.testing.assert_allclose(
            value, expected[name], atol=1e-5, err_msg=name
        )


@pytest.mark.parametrize("bad", BAD_VALUES)
@pytest.mark.parametrize("mode", ["ghost", "ghost_renorm_schedule"])
def test_without_guard_ghost_statistics_are_poisoned(mode, bad):
    layer = BN(
        momentum=0.5,
        renorm_momentum=0.5,
        skip_nonfinite=False,
        **GUARD_MODES[mode],
    )
    layer(bad_batch((8, 3), BAD_VALUES[bad]), training=True)
    for name, value in statistics(layer).items():
        # The channel of the bad value is poisoned, the others are not.
        assert not np.isfinite(value[0]), name
        assert np.all(np.isfinite(value[1:])), name


@pytest.mark.parametrize("skip_nonfinite", [True, False])
@pytest.mark.parametrize("mode", ["plain", "renorm", "ghost"])
def test_fit_with_a_nan_batch(mode, skip_nonfinite):
    options = {"momentum": 0.5, "renorm_momentum": 0.5, **GUARD_MODES[mode]}
    layer = BN(skip_nonfinite=skip_nonfinite, **options)
    model = keras.Sequential([keras.Input((3,)), layer, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x = sample_inputs((24, 3))
    x[8 + 2, 1] = np.nan  # in the second of three batches
    model.fit(x, np.zeros((24, 1)), batch_size=8, shuffle=False, verbose=0)

    moving = statistics(layer)
    if not skip_nonfinite:
        assert not np.all(np.isfinite(moving["moving_mean"]))
        return
    # The statistics are those of the two good batches (the layer comes
    # first, so they do not depend on the NaN weights the bad step leaves).
    expected = reference.ReferenceBatchNorm(
        3,
        momentum=0.5,
        renorm=options.get("renorm", False),
        renorm_momentum=0.5,
        virtual_batch_size=options.get("virtual_batch_size"),
    )
    for batch in (x[:8], x[16:]):
        expected.train_step(batch)
    for name, value in expected.state().items():
        np.testing.assert_allclose(moving[name], value, atol=1e-5, err_msg=name)


# -- errors -------------------------------------------------------------------

CONSTRUCTOR_ERRORS = [
    ({"virtual_batch_size": 0}, ValueError, "virtual_batch_size=0"),
    ({"virtual_batch_size": -2}, ValueError, "virtual_batch_size=-2"),
    ({"virtual_batch_size": 2.5}, ValueError, "virtual_batch_size=2.5"),
    ({"virtual_batch_size": "4"}, ValueError, "virtual_batch_size='4'"),
    ({"virtual_batch_size": True}, ValueError, "virtual_batch_size=True"),
    (
        {"virtual_batch_size": 4, "axis": 0},
        ValueError,
        "axis=0, virtual_batch_size=4",
    ),
    ({"momentum": 1.5}, ValueError, "momentum=1.5"),
    ({"momentum": -0.1}, ValueError, "momentum=-0.1"),
    ({"momentum": "0.9"}, TypeError, "momentum='0.9'"),
    (
        {"renorm": True, "renorm_momentum": 1.5},
        ValueError,
        "renorm_momentum=1.5",
    ),
    ({"renorm_momentum": -0.5}, ValueError, "renorm_momentum=-0.5"),
    ({"epsilon": 0}, ValueError, "epsilon=0"),
    ({"epsilon": -1e-3}, ValueError, "epsilon=-0.001"),
    ({"axis": 1.5}, TypeError, "axis=1.5"),
    (
        {"renorm": True, "renorm_clipping": {"rmax": 2.0, "rmn": 0.5}},
        ValueError,
        "renorm_clipping={'rmax': 2.0, 'rmn': 0.5}",
    ),
    (
        {"renorm": True, "renorm_clipping": {"rmax": 0.5, "rmin": 2}},
        ValueError,
        "rmax=0.5, rmin=2.0",
    ),
    (
        {"renorm": True, "renorm_clipping": {"dmax": -1}},
        ValueError,
        "dmax=-1.0",
    ),
    (
        {"renorm": True, "renorm_clipping": {"rmin": -1}},
        ValueError,
        "rmin=-1.0",
    ),
    (
        {"renorm": True, "renorm_clipping": {"rmax": "2"}},
        TypeError,
        "renorm_clipping={'rmax': '2'}",
    ),
    (
        {"renorm": True, "renorm_clipping": [1, 2]},
        TypeError,
        "renorm_clipping=[1, 2]",
    ),
    (
        {"renorm_clipping": {"rmax": 2.0}},
        ValueError,
        "renorm=False, renorm_clipping={'rmax': 2.0}",
    ),
    ({"skip_nonfinite": "yes"}, TypeError, "skip_nonfinite='yes'"),
]


def received(text):
    """`match=` pattern: the message ends with `Received: <text>`."""
    return re.escape(f"Received: {text}") + "$"


@pytest.mark.parametrize(
    "kwargs, error, text",
    CONSTRUCTOR_ERRORS,
    ids=[text for _, _, text in CONSTRUCTOR_ERRORS],
)
def test_constructor_errors(kwargs, error, text):
    with pytest.raises(error, match=received(text)):
        BN(**kwargs)


def test_unknown_clipping_keys_are_named():
    with pytest.raises(ValueError, match=re.escape("unknown keys ['rmn']")):
        BN(renorm=True, renorm_clipping={"rmax": 2.0, "rmn": 0.5})


def test_serialized_schedule_that_contradicts_itself():
    bad = keras.saving.serialize_keras_object(bn_keras.layers.RenormClipping())
    bad["config"]["warmup_steps"] = 10  # a hand-edited config
    bad["config"]["rmax_steps"] = 5
    with pytest.raises(
        ValueError, match=received("rmax_steps=5, warmup_steps=10")
    ):
        BN(renorm=True, renorm_clipping=bad)


BUILD_ERRORS = [
    ({"axis": 2}, (4, 3), "axis=2"),
    ({"axis": -3}, (4, 3), "axis=-3"),
    ({"axis": 4}, (2, 3, 4, 5), "axis=4"),
    (
        {"axis": -2, "virtual_batch_size": 4},
        (8, 3),
        "axis=-2, virtual_batch_size=4",
    ),
    ({}, (None, None), "input_shape=(None, None), axis=-1"),
]


@pytest.mark.parametrize(
    "kwargs, input_shape, text",
    BUILD_ERRORS,
    ids=[text for _, _, text in BUILD_ERRORS],
)
def test_build_errors(kwargs, input_shape, text):
    layer = BN(**kwargs)  # valid until it meets its input
    with pytest.raises(ValueError, match=received(text)):
        layer.build(input_shape)


def test_mask_of_the_wrong_rank():
    layer = BN()
    x = sample_inputs((4, 3))
    # The same tuples on every backend (torch's shapes print as torch.Size).
    expected = "Received: mask.shape=(4, 3), inputs.shape=(4, 3)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        layer(x, training=True, mask=np.ones((4, 3), bool))


@pytest.mark.skipif(TENSORFLOW, reason="TensorFlow can synchronize")
def test_synchronized_needs_tensorflow():
    with pytest.raises(ValueError, match=received("synchronized=True")):
        BN(synchronized=True)
