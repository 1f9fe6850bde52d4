"""Ghost batches (`virtual_batch_size`) and the `GhostBatchNormalization`
preset, against the NumPy reference and against plain batch normalization.
"""

import json
import re

import keras
import numpy as np
import pytest

import bn_keras
from tests import reference
from tests.layer_test_case import LAYER_CHECKS
from tests.layer_test_case import call_compiled
from tests.layer_test_case import gradients
from tests.layer_test_case import randomize_weights
from tests.layer_test_case import sample_inputs
from tests.layer_test_case import to_numpy
from tests.layer_test_case import weights_by_name

BN = bn_keras.layers.BatchNormalization
GhostBN = bn_keras.layers.GhostBatchNormalization
TENSORFLOW = keras.backend.backend() == "tensorflow"
FUSED = [None, False] if TENSORFLOW else [None]

# batch size, ghost size: the ghost batches they make
BATCHES = {
    "divisible": (12, 4),  # 4 4 4
    "indivisible": (10, 4),  # 4 4 2
    "last_chunk_of_one": (9, 4),  # 4 5 (4 4 1, merged)
    "pairs_and_a_single": (7, 2),  # 2 2 3
    "smaller_than_m": (3, 4),  # 3
    "m_plus_one": (5, 4),  # 5
}
# sample shape (no batch axis), features axis
LAYOUTS = {
    "2d": ((3,), -1),
    "4d_channels_first": ((3, 2, 2), 1),
    "3d_channels_last": ((2, 3), -1),
}
RENORM = {"renorm": True, "renorm_clipping": {"rmax": 1.5, "dmax": 0.5}}


def make_pair(channels, axis, momentum=0.7, seed=0, **options):
    """Our layer (built, random weights) and the reference in its state."""
    layer = BN(axis=axis, momentum=momentum, renorm_momentum=0.6, **options)
    options.pop("fused", None)
    expected = reference.ReferenceBatchNorm(
        channels[axis],
        axis=axis,
        momentum=momentum,
        renorm_momentum=0.6,
        **options,
    )
    return layer, expected


def build_random(layer, expected, shape, seed=0):
    layer.build(shape)
    randomize_weights(layer, seed)
    expected.set_state(**weights_by_name(layer))


def assert_state_equal(layer, expected, atol=1e-5):
    actual = weights_by_name(layer)
    for name, value in expected.state().items():
        np.testing.assert_allclose(
            actual[name], value, atol=atol, rtol=1e-5, err_msg=name
        )


def test_reference_ghost_chunks():
    """The reference itself, by hand."""
    assert reference.ghost_chunks(12, 4) == [(0, 4), (4, 8), (8, 12)]
    assert reference.ghost_chunks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert reference.ghost_chunks(9, 4) == [(0, 4), (4, 9)]
    assert reference.ghost_chunks(3, 4) == [(0, 3)]
    assert reference.ghost_chunks(1, 4) == [(0, 1)]
    assert reference.ghost_chunks(7, 2) == [(0, 2), (2, 4), (4, 7)]


# Every batch case in 2-D; three of them in the other layouts.
REFERENCE_CASES = [(batches, "2d") for batches in BATCHES] + [
    (batches, layout)
    for batches in ("divisible", "indivisible", "last_chunk_of_one")
    for layout in LAYOUTS
    if layout != "2d"
]


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("renorm", [False, True], ids=["plain", "renorm"])
@pytest.mark.parametrize(
    "batches, layout",
    REFERENCE_CASES,
    ids=["-".join(c) for c in REFERENCE_CASES],
)
def test_matches_reference(batches, layout, renorm, fused):
    batch, m = BATCHES[batches]
    sample_shape, axis = LAYOUTS[layout]
    shape = (batch, *sample_shape)
    options = {"virtual_batch_size": m, "fused": fused}
    if renorm:
        options.update(RENORM)
    layer, expected = make_pair(shape, axis, **options)
    build_random(layer, expected, shape)
    for step in range(3):
        x = sample_inputs(shape, seed=step, scale=1.0 + step, shift=step)
        y = expected.train_step(x)
        np.testing.assert_allclose(
            to_numpy(layer(x, training=True)),
            y,
            atol=1e-5,
            rtol=1e-5,
            err_msg=f"step {step}",
        )
        assert_state_equal(layer, expected)
    x = sample_inputs(shape, seed=9)
    np.testing.assert_allclose(
        to_numpy(layer(x, training=False)), expected.inference(x), atol=1e-5
    )


class _KerasBNPerGhost(keras.layers.Layer):
    """Keras's own layer applied to each ghost batch in turn: a reference
    for the gradients, independent of how ours groups the ghost batches."""

    def __init__(self, m, axis):
        super().__init__()
        self.m = m
        self.bn = keras.layers.BatchNormalization(axis=axis)

    def build(self, input_shape):
        self.bn.build(input_shape)

    def call(self, x, training=None):
        chunks = reference.ghost_chunks(x.shape[0], self.m)
        return keras.ops.concatenate(
            [self.bn(x[a:b], training=training) for a, b in chunks], axis=0
        )


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize(
    "batches, layout",
    REFERENCE_CASES,
    ids=["-".join(c) for c in REFERENCE_CASES],
)
def test_gradients_match_keras_layer_per_ghost_batch(batches, layout, fused):
    """Equal ghost batches (reshaped into groups), unequal ones (one-hot
    assignment) and the fused layout all give the gradients of Keras's
    layer run on each ghost batch."""
    batch, m = BATCHES[batches]
    sample_shape, axis = LAYOUTS[layout]
    shape = (batch, *sample_shape)
    ours = BN(axis=axis, virtual_batch_size=m, fused=fused)
    theirs = _KerasBNPerGhost(m, axis)
    ours.build(shape)
    theirs.build(shape)
    randomize_weights(ours)
    theirs.bn.set_weights(ours.get_weights())
    x = sample_inputs(shape, scale=2.0, shift=1.0)
    upstream = sample_inputs(shape, seed=5)
    dx, dw = gradients(ours, x, upstream)
    dx_expected, dw_expected = gradients(theirs, x, upstream)
    assert np.abs(dx).max() > 1e-3  # the gradients are not all zero
    np.testing.assert_allclose(dx, dx_expected, atol=1e-4, rtol=1e-4)
    for actual, expected in zip(dw, dw_expected, strict=True):
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("batches", ["indivisible", "last_chunk_of_one"])
def test_ghost_batches_change_the_output(batches):
    """Guards the reference tests: ghost batches differ from plain BN on
    their data, so a layer ignoring `virtual_batch_size` would fail."""
    batch, m = BATCHES[batches]
    x = sample_inputs((batch, 3))
    ghost = reference.ReferenceBatchNorm(3, virtual_batch_size=m)
    plain = reference.ReferenceBatchNorm(3)
    assert not np.allclose(ghost.train_step(x), plain.train_step(x), atol=1e-2)


@pytest.mark.parametrize("layout", ["2d", "4d_channels_first"])
def test_matches_reference_with_mask(layout):
    sample_shape, axis = LAYOUTS[layout]
    shape = (10, *sample_shape)
    layer, expected = make_pair(shape, axis, virtual_batch_size=4, **RENORM)
    build_random(layer, expected, shape)
    for step in range(3):
        x = sample_inputs(shape, seed=step, shift=step)
        mask = np.random.default_rng(step).random(shape[:-1]) < 0.7
        y = expected.train_step(x, mask=mask)
        np.testing.assert_allclose(
            to_numpy(layer(x, training=True, mask=mask)),
            y,
            atol=1e-5,
            rtol=1e-5,
        )
        assert_state_equal(layer, expected)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("renorm", [False, True], ids=["plain", "renorm"])
def test_training_flag_as_a_tensor_in_a_compiled_function(renorm, jit_compile):
    """`training` passed as a boolean tensor is honoured inside a compiled
    function (tf.function with input_signature [None, ...] on TensorFlow,
    so the batch size is unknown at trace time; jax.jit on JAX), for a
    sequence of batch sizes that m divides or not."""
    options = {"virtual_batch_size": 4, **(RENORM if renorm else {})}
    layer, expected = make_pair((None, 3), -1, **options)
    build_random(layer, expected, (None, 3))
    for step, (batch, training) in enumerate(
        [(12, True), (9, True), (10, False), (3, True), (10, True), (5, False)]
    ):
        x = sample_inputs((batch, 3), seed=step, shift=step)
        y = call_compiled(layer, x, training, jit_compile=jit_compile)
        if training:
            np.testing.assert_allclose(
                y,
                expected.train_step(x),
                atol=1e-5,
                rtol=1e-5,
                err_msg=f"step {step}",
            )
        else:
            np.testing.assert_allclose(
                y, expected.inference(x), atol=1e-5, err_msg=f"step {step}"
            )
        assert_state_equal(layer, expected)


@pytest.mark.parametrize("training", [True, False])
def test_training_flag_as_an_eager_tensor(training):
    layer, expected = make_pair((10, 3), -1, virtual_batch_size=4)
    build_random(layer, expected, (10, 3))
    x = sample_inputs((10, 3))
    y = to_numpy(layer(x, training=keras.ops.convert_to_tensor(training)))
    y_expected = expected.train_step(x) if training else expected.inference(x)
    np.testing.assert_allclose(y, y_expected, atol=1e-5, rtol=1e-5)
    assert_state_equal(layer, expected)


@pytest.mark.tensorflow_only
def test_batch_size_unknown_at_trace_time_without_a_tensor_flag():
    import tensorflow as tf

    layer, expected = make_pair((None, 3), -1, virtual_batch_size=4)
    build_random(layer, expected, (None, 3))

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def train(x):
        return layer(x, training=True)

    for step, batch in enumerate([12, 9, 10, 3, 1]):
        x = sample_inputs((batch, 3), seed=step)
        np.testing.assert_allclose(
            to_numpy(train(tf.constant(x))),
            expected.train_step(x),
            atol=1e-5,
            rtol=1e-5,
            err_msg=f"batch {batch}",
        )
        assert_state_equal(layer, expected)
    assert len(train._list_all_concrete_functions()) == 1  # traced once


@pytest.mark.parametrize("renorm", [False, True], ids=["plain", "renorm"])
def test_fit_with_a_last_partial_batch(renorm):
    """`fit` over 8 + 8 + 6 samples with m = 3: statistics as the reference
    (the layer comes first, so they depend on the inputs only)."""
    options = {"virtual_batch_size": 3, **(RENORM if renorm else {})}
    layer, expected = make_pair((None, 3), -1, momentum=0.5, **options)
    model = keras.Sequential([keras.Input((3,)), layer, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x = sample_inputs((22, 3))
    model.fit(x, np.zeros((22, 1)), batch_size=8, shuffle=False, verbose=0)
    for start in (0, 8, 16):
        expected.train_step(x[start : start + 8])
    assert_state_equal(layer, expected)


def _single_ghost_warnings(record):
    return [w for w in record if "single ghost batch" in str(w.message)]


@pytest.mark.parametrize("batch_size", [8, 32, 33])
def test_fit_warns_once_when_a_batch_is_a_single_ghost(batch_size):
    """Ghost size 32 with batches of 8, 32 or 33 (whose last sample joins
    the ghost batch) trains plain batch normalization: one warning, from
    the layer itself, over every step and epoch."""
    layer = GhostBN(virtual_batch_size=32, name="ghost")
    model = keras.Sequential([keras.Input((3,)), layer, keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = sample_inputs((2 * batch_size, 3))
    with pytest.warns(UserWarning, match="single ghost batch") as record:
        model.fit(x, x[:, :1], batch_size=batch_size, epochs=2, verbose=0)
    found = _single_ghost_warnings(record)
    assert len(found) == 1
    assert str(found[0].message).startswith(
        "A batch normalization layer with virtual_batch_size=32 received a "
        f"training batch of {batch_size} samples: the batch forms a single "
        "ghost batch, so the layer trains as plain batch normalization."
    )


def test_many_layers_warn_with_one_message():
    """Three ghost layers warn once each, with the same message and place:
    Python's default filter (not pytest's) shows it once."""
    layers = [GhostBN(virtual_batch_size=32) for _ in range(3)]
    model = keras.Sequential([keras.Input((3,)), *layers])
    model.compile(optimizer="sgd", loss="mse")
    x = sample_inputs((16, 3))
    with pytest.warns(UserWarning, match="single ghost batch") as record:
        model.fit(x, x, batch_size=8, epochs=1, verbose=0)
    found = _single_ghost_warnings(record)
    assert len(found) == 3
    assert len({(str(w.message), w.filename, w.lineno) for w in found}) == 1


def test_no_warning_when_ghost_batches_form_or_in_inference(recwarn):
    """Batches of 40 make ghost batches 32 + 8; the partial last batch of 6
    samples is one ghost batch but comes after the first: no warning. Nor
    in inference, nor without ghost batches."""
    layer = GhostBN(virtual_batch_size=32)
    model = keras.Sequential([keras.Input((3,)), layer, keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = sample_inputs((46, 3))
    model.fit(x, x[:, :1], batch_size=40, epochs=2, verbose=0)
    model.predict(x[:8], verbose=0)
    BN()(x[:8], training=True)
    GhostBN(virtual_batch_size=32)(x[:8], training=False)
    assert _single_ghost_warnings(recwarn.list) == []


# -- against plain batch normalization ----------------------------------------


@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 16])
def test_moving_statistics_and_inference_equal_plain_keras(m, masked):
    shape = (10, 2, 3)
    theirs = keras.layers.BatchNormalization(momentum=0.6)
    ours = BN(momentum=0.6, virtual_batch_size=m)
    theirs.build(shape)
    ours.build(shape)
    randomize_weights(theirs)
    ours.set_weights(theirs.get_weights())
    for step in range(3):
        x = sample_inputs(shape, seed=step, shift=step)
        mask = (
            np.random.default_rng(step).random(shape[:-1]) < 0.7
            if masked
            else None
        )
        theirs(x, training=True, mask=mask)
        ours(x, training=True, mask=mask)
        for w, keras_w in zip(ours.weights, theirs.weights, strict=True):
            np.testing.assert_allclose(
                to_numpy(w),
                to_numpy(keras_w),
                atol=1e-5,
                rtol=1e-5,
                err_msg=w.name,
            )
    x = sample_inputs(shape, seed=7)
    np.testing.assert_allclose(
        to_numpy(ours(x, training=False)),
        to_numpy(theirs(x, training=False)),
        atol=1e-5,
    )


@pytest.mark.parametrize("transfer", ["weights_file", "get_set_weights"])
@pytest.mark.parametrize("direction", ["ghost_to_keras", "keras_to_ghost"])
def test_checkpoints_swap_with_plain_keras(direction, transfer, tmp_path):
    """Ghost BN keeps weights of shape (C,): trained weights move between a
    model using it and the same model using Keras's plain layer.

    `.weights.h5` files key each layer by its class name, so the file check
    uses `BatchNormalization(virtual_batch_size=4)`; the preset (another
    class name) swaps through `get_weights`/`set_weights`.
    """

    def model(bn_layer):
        return keras.Sequential(
            [
                keras.Input((4, 3)),
                keras.layers.Dense(3),
                bn_layer,
                keras.layers.Dense(1),
            ]
        )

    if transfer == "weights_file":
        ghost = model(BN(virtual_batch_size=4, momentum=0.5))
    else:
        ghost = model(GhostBN(virtual_batch_size=4, momentum=0.5))
    plain = model(keras.layers.BatchNormalization(momentum=0.5))
    assert [tuple(w.shape) for w in ghost.layers[1].weights] == [(3,)] * 4
    source, target = (
        (ghost, plain) if direction == "ghost_to_keras" else (plain, ghost)
    )
    source.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = sample_inputs((16, 4, 3))
    source.fit(x, np.ones((16, 4, 1)), batch_size=16, verbose=0)
    if transfer == "weights_file":
        path = str(tmp_path / "bn.weights.h5")
        source.save_weights(path)
        target.load_weights(path)
    else:
        target.set_weights(source.get_weights())
    assert not np.allclose(to_numpy(source.layers[1].moving_mean), 0, atol=1e-2)
    np.testing.assert_allclose(
        target.predict(x, verbose=0), source.predict(x, verbose=0), atol=1e-5
    )


# -- ghost batches with renorm ------------------------------------------------


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("layout", ["2d", "4d_channels_first"])
@pytest.mark.parametrize(
    "batches", ["divisible", "indivisible", "last_chunk_of_one"]
)
def test_unclipped_renorm_training_output_is_the_inference_transform(
    batches, layout, fused
):
    """With r and d per ghost batch, unclipped, and `momentum ==
    renorm_momentum` (so the renorm statistics are the moving ones), the
    training output is `gamma * (x - mu) / sigma + beta` with the
    statistics from before the step: `r` and `d` are computed before the
    update. Per-batch r and d (tf-keras) would not give this."""
    batch, m = BATCHES[batches]
    sample_shape, axis = LAYOUTS[layout]
    shape = (batch, *sample_shape)
    layer = BN(
        axis=axis,
        virtual_batch_size=m,
        renorm=True,
        momentum=0.8,
        renorm_momentum=0.8,
        fused=fused,
    )
    layer.build(shape)
    layer(sample_inputs(shape, seed=0), training=True)  # non-trivial stats
    for step in range(1, 4):
        x = sample_inputs(shape, seed=step, scale=1.0 + step, shift=step)
        before = to_numpy(layer(x, training=False))
        np.testing.assert_allclose(
            to_numpy(layer(x, training=True)), before, atol=1e-4, rtol=1e-4
        )
    # Not vacuous: the ghost batches' own statistics differ from the moving
    # ones, so plain ghost BN output is far from the inference transform.
    plain = reference.ReferenceBatchNorm(
        shape[axis], axis=axis, virtual_batch_size=m
    )
    assert not np.allclose(plain.train_step(x), before, atol=1e-1)


# -- the GhostBatchNormalization preset ---------------------------------------


@pytest.mark.parametrize("check", LAYER_CHECKS)
@pytest.mark.parametrize(
    "make_layer, input_shape",
    [
        (lambda: GhostBN(virtual_batch_size=3, momentum=0.5), (8, 3)),
        (
            lambda: GhostBN(
                virtual_batch_size=2, axis=1, momentum=0.5, **RENORM
            ),
            (5, 3, 2, 2),
        ),
    ],
    ids=["ghost", "ghost_renorm_channels_first"],
)
def test_layer_conventions(make_layer, input_shape, check, tmp_path):
    LAYER_CHECKS[check](make_layer, input_shape, tmp_path)


def test_preset_defaults_and_serialization():
    layer = GhostBN()
    assert layer.virtual_batch_size == 32
    assert isinstance(layer, BN)
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    revived = keras.saving.deserialize_keras_object(config)
    assert type(revived) is GhostBN
    assert revived.virtual_batch_size == 32
    # The preset is plain BatchNormalization(virtual_batch_size=32).
    x = sample_inputs((70, 3))
    expected = reference.ReferenceBatchNorm(3, virtual_batch_size=32)
    np.testing.assert_allclose(
        to_numpy(layer(x, training=True)), expected.train_step(x), atol=1e-5
    )


def test_preset_needs_a_ghost_size():
    with pytest.raises(
        ValueError, match=re.escape("Received: virtual_batch_size=None") + "$"
    ):
        GhostBN(virtual_batch_size=None)
