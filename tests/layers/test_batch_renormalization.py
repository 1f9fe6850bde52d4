"""Batch renormalization with a schedule (`renorm_clipping=RenormClipping`)
and the `BatchRenormalization` preset, against the NumPy reference."""

import copy
import functools
import json
import re

import keras
import numpy as np
import pytest

import bn_keras
from tests import reference
from tests.layer_test_case import LAYER_CHECKS
from tests.layer_test_case import call_compiled
from tests.layer_test_case import randomize_weights
from tests.layer_test_case import sample_inputs
from tests.layer_test_case import to_numpy
from tests.layer_test_case import weights_by_name

BN = bn_keras.layers.BatchNormalization
BatchRenorm = bn_keras.layers.BatchRenormalization
RenormClipping = bn_keras.layers.RenormClipping
TENSORFLOW = keras.backend.backend() == "tensorflow"
FUSED = [None, False] if TENSORFLOW else [None]

# A short schedule: rmax = 1, dmax = 0 for steps 0 and 1; dmax reaches 1 at
# step 4, rmax reaches 2 at step 6.
SHORT_ARGS = dict(
    rmax=2.0, dmax=1.0, warmup_steps=2, rmax_steps=6, dmax_steps=4
)
SHORT_REFERENCE = functools.partial(reference.renorm_clipping_at, **SHORT_ARGS)
LAYOUTS = {
    "2d": ((8, 3), -1),
    "4d_channels_first": ((8, 3, 2, 2), 1),
}
STEPS = 8


def drifting_inputs(shape, step):
    """Batches whose mean and spread grow, so that r and d leave the
    bounds and the clipping (and so the schedule) decides the output."""
    return sample_inputs(
        shape, seed=step, scale=1.0 + 0.5 * step, shift=0.7 * step
    )


def make_pair(layout, clipping, reference_clipping, **options):
    shape, axis = LAYOUTS[layout]
    layer = BN(
        axis=axis,
        renorm=True,
        renorm_clipping=clipping,
        momentum=0.7,
        renorm_momentum=0.6,
        **options,
    )
    options.pop("fused", None)
    expected = reference.ReferenceBatchNorm(
        shape[axis],
        axis=axis,
        renorm=True,
        renorm_clipping=reference_clipping,
        momentum=0.7,
        renorm_momentum=0.6,
        **options,
    )
    layer.build(shape)
    randomize_weights(layer)
    expected.set_state(**weights_by_name(layer))
    return layer, expected, shape


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("ghost", [None, 3], ids=["batch", "ghost3"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_reference_while_the_schedule_relaxes(layout, ghost, fused):
    layer, expected, shape = make_pair(
        layout,
        RenormClipping(**SHORT_ARGS),
        SHORT_REFERENCE,
        virtual_batch_size=ghost,
        fused=fused,
    )
    for step in range(STEPS):
        assert int(to_numpy(layer.renorm_step)) == step
        x = drifting_inputs(shape, step)
        np.testing.assert_allclose(
            to_numpy(layer(x, training=True)),
            expected.train_step(x),
            atol=1e-5,
            rtol=1e-5,
            err_msg=f"step {step}",
        )
        actual = weights_by_name(layer)
        for name, value in expected.state().items():
            np.testing.assert_allclose(
                actual[name],
                value,
                atol=1e-5,
                rtol=1e-5,
                err_msg=f"{name} {step}",
            )
    x = drifting_inputs(shape, STEPS)
    np.testing.assert_allclose(
        to_numpy(layer(x, training=False)),
        expected.inference(x),
        atol=1e-5,
        rtol=1e-5,
    )
    assert int(to_numpy(layer.renorm_step)) == STEPS


@pytest.mark.parametrize("ghost", [None, 3], ids=["batch", "ghost3"])
def test_the_schedule_decides_the_output_on_this_data(ghost):
    """Guards the test above: on its data, the scheduled output equals plain
    BN (rmax = 1, dmax = 0) until the warm-up ends and differs from it
    after; during the ramps it differs from unclipped renorm and from the
    output with the bounds of the step before. A layer that ignored the
    schedule, or evaluated it at the wrong step, would fail there."""
    _, scheduled, shape = make_pair(
        "2d",
        RenormClipping(**SHORT_ARGS),
        SHORT_REFERENCE,
        virtual_batch_size=ghost,
    )
    unclipped = copy.deepcopy(scheduled)
    unclipped.renorm_clipping = None
    warmup = copy.deepcopy(scheduled)
    warmup.renorm_clipping = {"rmax": 1.0, "rmin": 1.0, "dmax": 0.0}
    for step in range(STEPS):
        x = drifting_inputs(shape, step)
        before = copy.deepcopy(scheduled)
        y = scheduled.train_step(x)
        y_unclipped, y_warmup = unclipped.train_step(x), warmup.train_step(x)
        if step <= SHORT_ARGS["warmup_steps"]:  # the ramps start from 1, 0
            np.testing.assert_allclose(y, y_warmup, atol=1e-12)
        else:
            assert not np.allclose(y, y_warmup, atol=1e-3), step
        if 3 <= step <= 6:  # the ramps: bounds differ from the step before's
            assert not np.allclose(y, y_unclipped, atol=1e-3), step
            before.renorm_clipping = SHORT_REFERENCE(step - 1)
            assert not np.allclose(before.train_step(x), y, atol=1e-4), step


def test_preset_at_step_zero_is_plain_batch_normalization():
    """The paper's schedule starts with rmax = 1, dmax = 0: r = 1, d = 0,
    whatever the renorm statistics."""
    layer = BatchRenorm()
    layer.build((8, 3))
    randomize_weights(layer)
    plain = reference.ReferenceBatchNorm(3)
    plain.set_state(gamma=to_numpy(layer.gamma), beta=to_numpy(layer.beta))
    x = drifting_inputs((8, 3), 3)
    np.testing.assert_allclose(
        to_numpy(layer(x, training=True)), plain.train_step(x), atol=1e-5
    )


# -- the step counter ---------------------------------------------------------


def test_step_counter_only_with_a_schedule():
    with_schedule = BN(renorm=True, renorm_clipping=RenormClipping())
    with_dict = BN(renorm=True, renorm_clipping={"rmax": 2.0})
    keras_layer = keras.layers.BatchNormalization(
        renorm=True, renorm_clipping={"rmax": 2.0}
    )
    for layer in (with_schedule, with_dict, keras_layer):
        layer.build((4, 3))
    keras_names = [w.name for w in keras_layer.weights]
    assert [w.name for w in with_dict.weights] == keras_names
    assert with_dict.renorm_step is None
    assert [w.name for w in with_schedule.weights] == [
        *keras_names,
        "renorm_step",
    ]
    step = with_schedule.weights[-1]
    assert step is with_schedule.renorm_step
    assert not step.trainable
    assert "int" in keras.backend.standardize_dtype(step.dtype)
    assert tuple(step.shape) == ()
    assert all(w is not step for w in with_schedule.trainable_weights)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_step_counter_counts_training_steps_only(compiled):
    layer = BatchRenorm(renorm_clipping=RenormClipping(**SHORT_ARGS))
    x = sample_inputs((6, 3))
    layer(x, training=False)
    expected = 0
    for training in (True, True, False, True, False):
        if compiled:
            call_compiled(layer, x, training)
        else:
            layer(x, training=training)
        expected += training
        assert int(to_numpy(layer.renorm_step)) == expected
    layer(x)  # inference by default
    frozen = BatchRenorm(trainable=False)
    frozen(x, training=True)
    assert int(to_numpy(frozen.renorm_step)) == 0
    assert int(to_numpy(layer.renorm_step)) == 3


def test_reloaded_model_resumes_the_schedule(tmp_path):
    def make():
        inputs = keras.Input((3,))
        x = BatchRenorm(
            renorm_clipping=RenormClipping(**SHORT_ARGS),
            momentum=0.7,
            renorm_momentum=0.6,
            name="bn",
        )(inputs)
        model = keras.Model(inputs, keras.layers.Dense(1)(x))
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        return model

    model = make()
    x = np.concatenate([drifting_inputs((8, 3), s) for s in range(5)])
    y = np.ones((40, 1), "float32")
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    assert int(to_numpy(model.get_layer("bn").renorm_step)) == 5
    path = str(tmp_path / "renorm.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = loaded.get_layer("bn")
    assert isinstance(layer, BatchRenorm)
    assert layer.renorm_schedule == RenormClipping(**SHORT_ARGS)
    assert int(to_numpy(layer.renorm_step)) == 5

    # The next training output is the one at step 5, not at step 0.
    x_next = drifting_inputs((8, 3), 5)
    expected = reference.ReferenceBatchNorm(
        3,
        renorm=True,
        renorm_clipping=SHORT_REFERENCE,
        momentum=0.7,
        renorm_momentum=0.6,
    )
    expected.set_state(**weights_by_name(layer))
    assert expected.step == 5
    restarted = reference.ReferenceBatchNorm(
        3,
        renorm=True,
        renorm_clipping=SHORT_REFERENCE,
        momentum=0.7,
        renorm_momentum=0.6,
    )
    restarted.set_state(**{**weights_by_name(layer), "renorm_step": 0})
    y_expected = expected.train_step(x_next)
    assert not np.allclose(restarted.train_step(x_next), y_expected, atol=1e-3)
    bn_model = keras.Model(loaded.input, layer.output)
    np.testing.assert_allclose(
        to_numpy(bn_model(x_next, training=True)),
        y_expected,
        atol=1e-5,
        rtol=1e-5,
    )

    # Both models then train on identically.
    model.get_layer("bn")(x_next, training=True)
    model.fit(x[:16], y[:16], batch_size=8, shuffle=False, verbose=0)
    loaded.fit(x[:16], y[:16], batch_size=8, shuffle=False, verbose=0)
    for a, b in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_allclose(
            to_numpy(a), to_numpy(b), atol=1e-5, err_msg=a.path
        )
    assert int(to_numpy(layer.renorm_step)) == 8


# -- the BatchRenormalization preset ------------------------------------------


@pytest.mark.parametrize("check", LAYER_CHECKS)
@pytest.mark.parametrize(
    "make_layer, input_shape",
    [
        (
            lambda: BatchRenorm(
                momentum=0.5,
                renorm_momentum=0.5,
                renorm_clipping=RenormClipping(**SHORT_ARGS),
            ),
            (8, 3),
        ),
        (
            lambda: BatchRenorm(
                axis=1,
                virtual_batch_size=3,
                momentum=0.5,
                renorm_momentum=0.5,
                renorm_clipping=RenormClipping(
                    rmax=1.5,
                    dmax=0.5,
                    warmup_steps=0,
                    rmax_steps=1,
                    dmax_steps=1,
                ),
            ),
            (8, 3, 2, 2),
        ),
        (lambda: BatchRenorm(momentum=0.5), (8, 3)),
    ],
    ids=["short_schedule", "ghost_channels_first", "paper_schedule"],
)
def test_layer_conventions(make_layer, input_shape, check, tmp_path):
    LAYER_CHECKS[check](make_layer, input_shape, tmp_path)


def test_preset_defaults_and_serialization():
    layer = BatchRenorm()
    assert layer.renorm is True
    assert layer.renorm_momentum == 0.99
    assert layer.renorm_schedule == RenormClipping()
    assert layer.renorm_schedule.get_config() == {
        "rmax": 3.0,
        "dmax": 5.0,
        "warmup_steps": 5000,
        "rmax_steps": 40000,
        "dmax_steps": 25000,
    }
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    revived = keras.saving.deserialize_keras_object(config)
    assert type(revived) is BatchRenorm
    assert revived.renorm_schedule == RenormClipping()
    assert revived.get_config() == layer.get_config()


def test_preset_with_fixed_bounds_has_keras_weights():
    layer = BatchRenorm(renorm_clipping={"rmax": 2.0, "dmax": 1.0})
    layer.build((4, 3))
    assert layer.renorm_step is None
    assert [w.name for w in layer.weights] == [
        "gamma",
        "beta",
        "moving_mean",
        "moving_variance",
        "moving_stddev",
        "renorm_mean",
        "renorm_stddev",
    ]


def test_preset_always_renormalizes():
    with pytest.raises(
        ValueError, match=re.escape("Received: renorm=False") + "$"
    ):
        BatchRenorm(renorm=False)
