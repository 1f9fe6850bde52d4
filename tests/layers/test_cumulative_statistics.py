"""`momentum=None` and `renorm_momentum=None`: cumulative statistics.

Checked against NumPy: the mean and variance of every value seen (batches
of equal size), the pooled statistics of the batches (unequal sizes), the
closed-form reference of `tests/reference.py` step by step, and, for
unclipped renorm, standardization by the statistics of the batches before.
"""

import re

import keras
import numpy as np
import pytest

import bn_keras
from tests import reference
from tests.layer_test_case import LAYER_CHECKS
from tests.layer_test_case import call_compiled
from tests.layer_test_case import randomize_weights
from tests.layer_test_case import to_numpy
from tests.layer_test_case import weights_by_name

BN = bn_keras.layers.BatchNormalization
TENSORFLOW = keras.backend.backend() == "tensorflow"
FUSED = [None, False] if TENSORFLOW else [None]
EPSILON = 1e-3

# input shape (batch first) and features axis
LAYOUTS = {
    "2d": ((8, 3), -1),
    "4d_channels_last": ((4, 2, 3, 3), -1),
    "4d_channels_first": ((4, 3, 2, 2), 1),
}
# Both momenta None: the input normalizer's settings, and plain BN.
MODES = {
    "plain": {"momentum": None},
    "renorm": {"momentum": None, "renorm": True, "renorm_momentum": None},
    "ghost": {"momentum": None, "virtual_batch_size": 3},
    "ghost_renorm": {
        "momentum": None,
        "renorm": True,
        "renorm_momentum": None,
        "virtual_batch_size": 3,
    },
}


def batches(shape, count, seed=0, axis=-1):
    """`count` batches whose per-channel means and spreads differ from one
    batch to the next (and from channel to channel), as input features
    sampled in an arbitrary order do not; so that an average that weighs
    batches wrongly is far from the exact one."""
    rng = np.random.default_rng(seed)
    channels = shape[axis]
    channel_shape = [1] * len(shape)
    channel_shape[axis % len(shape)] = channels
    out = []
    for _ in range(count):
        shift = rng.uniform(-20.0, 60.0, channels).reshape(channel_shape)
        scale = rng.uniform(0.5, 30.0, channels).reshape(channel_shape)
        out.append((rng.normal(size=shape) * scale + shift).astype("float32"))
    return out


def rows(x, axis):
    """`x` as `(N, C)` float64 rows, the channels last."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    return x.reshape(-1, x.shape[-1])


def assert_statistics(layer, mean, variance, what=""):
    """The layer's moving (and renorm) statistics are `mean`, `variance`."""
    weights = weights_by_name(layer)
    expected = {"moving_mean": mean, "moving_variance": variance}
    if layer.renorm:
        stddev = np.sqrt(variance + layer.epsilon)
        expected.update(
            moving_stddev=stddev, renorm_mean=mean, renorm_stddev=stddev
        )
    for name, value in expected.items():
        np.testing.assert_allclose(
            weights[name], value, rtol=2e-6, atol=2e-5, err_msg=f"{what} {name}"
        )


# -- the statistics -----------------------------------------------------------


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_equal_batches_give_the_statistics_of_every_value_seen(
    layout, mode, fused
):
    shape, axis = LAYOUTS[layout]
    layer = BN(axis=axis, fused=fused, **MODES[mode])
    seen = []
    for step, x in enumerate(batches(shape, 6, axis=axis), start=1):
        layer(x, training=True)
        seen.append(rows(x, axis))
        every = np.concatenate(seen)
        assert int(to_numpy(layer.num_batches_tracked)) == step
        assert_statistics(
            layer, every.mean(axis=0), every.var(axis=0), f"step {step}"
        )


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("mode", MODES)
def test_unequal_batches_weigh_each_batch_alike(mode, fused):
    """Batches of 8, 3, 5 and 12 samples: the statistics are the pooled
    mean and variance of the batches, each weighing one (a batch counts
    once, whatever its size, as in PyTorch)."""
    layer = BN(fused=fused, **MODES[mode])
    means, variances, every = [], [], []
    for size, seed in zip((8, 3, 5, 12), range(4)):
        (x,) = batches((size, 3), 1, seed=seed)
        layer(x, training=True)
        means.append(x.astype(np.float64).mean(axis=0))
        variances.append(x.astype(np.float64).var(axis=0))
        every.append(x.astype(np.float64))
    means, variances = np.array(means), np.array(variances)
    pooled_mean = means.mean(axis=0)
    pooled_variance = (variances + (means - pooled_mean) ** 2).mean(axis=0)
    assert int(to_numpy(layer.num_batches_tracked)) == 4
    assert_statistics(layer, pooled_mean, pooled_variance)
    # The data tells the two apart: the statistics of every value differ.
    every = np.concatenate(every)
    assert np.all(np.abs(every.mean(axis=0) - pooled_mean) > 0.5)


CASES = {
    "plain": dict(momentum=None),
    "renorm": dict(momentum=None, renorm=True, renorm_momentum=None),
    "renorm_clipped": dict(
        momentum=None,
        renorm=True,
        renorm_momentum=None,
        renorm_clipping={"rmax": 1.3, "rmin": 0.8, "dmax": 0.2},
    ),
    "moving_cumulative_renorm_ema": dict(
        momentum=None, renorm=True, renorm_momentum=0.6
    ),
    "moving_ema_renorm_cumulative": dict(
        momentum=0.7, renorm=True, renorm_momentum=None
    ),
}


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("ghost", [None, 3], ids=["batch", "ghost3"])
@pytest.mark.parametrize("layout", ["2d", "4d_channels_first"])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference_step_by_step(case, layout, ghost, fused):
    """Outputs and every statistic against `reference.ReferenceBatchNorm`,
    from random weights (gamma, beta and initial statistics), through a
    batch that the guard skips."""
    shape, axis = LAYOUTS[layout]
    options = dict(CASES[case], virtual_batch_size=ghost)
    layer = BN(axis=axis, fused=fused, **options)
    expected = reference.ReferenceBatchNorm(shape[axis], axis=axis, **options)
    layer.build(shape)
    randomize_weights(layer)
    expected.set_state(**weights_by_name(layer))
    data = batches(shape, 5, axis=axis)
    data[2] = data[2].copy()
    data[2].flat[5] = np.nan  # skipped: not counted, not averaged
    for step, x in enumerate(data):
        y = to_numpy(layer(x, training=True))
        want = expected.train_step(x)
        if step != 2:
            np.testing.assert_allclose(
                y, want, rtol=1e-5, atol=1e-5, err_msg=f"step {step}"
            )
        actual = weights_by_name(layer)
        for name, value in expected.state().items():
            np.testing.assert_allclose(
                actual[name], value, rtol=2e-6, atol=2e-5,
                err_msg=f"{name} {step}",
            )
    assert int(to_numpy(layer.num_batches_tracked)) == 4
    (x,) = batches(shape, 1, seed=9, axis=axis)
    np.testing.assert_allclose(
        to_numpy(layer(x, training=False)),
        expected.inference(x),
        rtol=1e-5,
        atol=1e-5,
    )


# -- renorm: standardization by the statistics of the batches before ---------


def standardize(data):
    """`data` standardized by its own mean and variance, float64."""
    return (data - data.mean(axis=0)) / np.sqrt(data.var(axis=0) + EPSILON)


def input_like_batches(batch_size, count, seed=0):
    """Features on very different scales, as `examples/input_batchnorm.py`:
    A ~ U[1, 10], B ~ U[1, 200]."""
    rng = np.random.default_rng(seed)
    x = rng.uniform([1.0, 1.0], [10.0, 200.0], size=(count * batch_size, 2))
    return np.split(x.astype("float32"), count)


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("ghost", [None, 4], ids=["batch", "ghost4"])
@pytest.mark.parametrize("affine", [False, True], ids=["input", "affine"])
def test_unclipped_renorm_standardizes_by_the_batches_before(
    affine, ghost, fused
):
    """Training output: step 1 standardizes the batch (each ghost batch) by
    its own statistics; from step 2 on, by the mean and variance of every
    sample before it (NumPy), within 1e-5: the identity that makes renorm
    with cumulative statistics an input normalizer. With gamma and beta,
    their affine map follows."""
    layer = BN(
        momentum=None,
        renorm=True,
        renorm_momentum=None,
        center=affine,
        scale=affine,
        virtual_batch_size=ghost,
        fused=fused,
    )
    layer.build((16, 2))
    gamma, beta = np.ones(2), np.zeros(2)
    if affine:
        gamma, beta = np.array([1.5, 0.5]), np.array([0.25, -2.0])
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    seen = []
    for step, x in enumerate(input_like_batches(16, 12), start=1):
        data = x.astype(np.float64)
        if seen:
            before = np.concatenate(seen)
            mean, variance = before.mean(axis=0), before.var(axis=0)
            standardized = (data - mean) / np.sqrt(variance + EPSILON)
        else:  # each (ghost) batch by its own statistics
            standardized = np.concatenate(
                [
                    standardize(data[start:stop])
                    for start, stop in reference.ghost_chunks(16, ghost)
                ]
            )
        np.testing.assert_allclose(
            to_numpy(layer(x, training=True)),
            gamma * standardized + beta,
            atol=1e-5,
            err_msg=f"step {step}",
        )
        seen.append(data)
    # Plain BN would standardize each batch by its own statistics: on this
    # data that is far from the above (the test can tell them apart).
    assert np.abs(standardize(data) - standardized).max() > 0.05


def test_first_step_rule_survives_a_skipped_first_batch():
    """A first batch with a NaN is not counted: the next one is the first
    step, standardized by its own statistics, not by the initial 0 and 1."""
    layer = BN(momentum=None, renorm=True, renorm_momentum=None)
    bad, good = input_like_batches(8, 2)
    bad = bad.copy()
    bad[0, 0] = np.nan
    layer(bad, training=True)
    assert int(to_numpy(layer.num_batches_tracked)) == 0
    np.testing.assert_allclose(
        to_numpy(layer(good, training=True)),
        standardize(good.astype(np.float64)),
        atol=1e-5,
    )
    assert int(to_numpy(layer.num_batches_tracked)) == 1


# -- the counter --------------------------------------------------------------


@pytest.mark.parametrize(
    "options, counted",
    [
        ({"momentum": None}, True),
        ({"momentum": None, "renorm": True}, True),
        ({"renorm": True, "renorm_momentum": None}, True),
        ({"renorm_momentum": None}, False),  # renorm off: no renorm stats
        ({}, False),
        ({"renorm": True}, False),
    ],
)
def test_the_counter_exists_only_for_cumulative_statistics(options, counted):
    layer = BN(**options)
    layer.build((4, 3))
    names = [w.name for w in layer.non_trainable_weights]
    assert ("num_batches_tracked" in names) is counted
    assert layer.cumulative is counted
    if counted:
        counter = layer.num_batches_tracked
        assert keras.backend.standardize_dtype(counter.dtype) == "int32"
        assert tuple(counter.shape) == () and not counter.trainable
        assert names[-1] == "num_batches_tracked"  # after Keras's weights


@pytest.mark.parametrize("skip_nonfinite", [True, False])
@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("mode", ["plain", "renorm"])
def test_a_nonfinite_batch(mode, fused, skip_nonfinite):
    """With the guard, a NaN batch leaves the counter and the statistics
    unchanged; without it, it is counted and poisons them, as Keras."""
    layer = BN(fused=fused, skip_nonfinite=skip_nonfinite, **MODES[mode])
    first, second = batches((8, 3), 2)
    layer(first, training=True)
    before = weights_by_name(layer)
    bad = second.copy()
    bad[3, 1] = np.nan
    layer(bad, training=True)
    after = weights_by_name(layer)
    if skip_nonfinite:
        for name, value in before.items():
            np.testing.assert_array_equal(after[name], value, err_msg=name)
        layer(second, training=True)
        every = rows(np.concatenate([first, second]), -1)
        assert_statistics(layer, every.mean(axis=0), every.var(axis=0))
    else:
        assert int(after["num_batches_tracked"]) == 2
        assert np.isnan(after["moving_mean"][1])


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("mode", ["plain", "ghost_renorm"])
def test_training_flag_as_a_tensor(mode, jit_compile):
    """A compiled call with `training` a boolean tensor: False leaves the
    counter and the statistics alone, True updates them."""
    layer = BN(**MODES[mode])
    first, second = batches((8, 3), 2)
    layer(first, training=True)
    before = weights_by_name(layer)
    inference = to_numpy(layer(second, training=False))
    y = call_compiled(layer, second, False, jit_compile=jit_compile)
    np.testing.assert_allclose(y, inference, atol=1e-5)
    for name, value in weights_by_name(layer).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    call_compiled(layer, second, True, jit_compile=jit_compile)
    assert int(to_numpy(layer.num_batches_tracked)) == 2
    every = rows(np.concatenate([first, second]), -1)
    assert_statistics(layer, every.mean(axis=0), every.var(axis=0))


# -- conventions and serialization --------------------------------------------

CONVENTION_CASES = {
    "plain": (lambda: BN(momentum=None), (8, 3)),
    "renorm_channels_first": (
        lambda: BN(axis=1, momentum=None, renorm=True, renorm_momentum=None),
        (4, 3, 2, 2),
    ),
    "ghost_renorm": (
        lambda: BN(
            momentum=None,
            renorm=True,
            renorm_momentum=None,
            virtual_batch_size=3,
        ),
        (8, 3),
    ),
}


@pytest.mark.parametrize("check", LAYER_CHECKS)
@pytest.mark.parametrize("case", CONVENTION_CASES)
def test_layer_conventions(case, check, tmp_path):
    make_layer, input_shape = CONVENTION_CASES[case]
    LAYER_CHECKS[check](make_layer, input_shape, tmp_path)


def test_config_keeps_none():
    layer = BN(momentum=None, renorm=True, renorm_momentum=None)
    config = layer.get_config()
    assert config["momentum"] is None and config["renorm_momentum"] is None
    clone = BN.from_config(config)
    assert clone.momentum is None and clone.renorm_momentum is None


def test_training_resumes_the_average_after_loading(tmp_path):
    """The counter is saved: a model trained on 3 batches, saved, loaded and
    trained on 3 more has the statistics of all 6 batches."""
    inputs = keras.Input((3,))
    outputs = BN(momentum=None, renorm=True, renorm_momentum=None)(inputs)
    model = keras.Model(inputs, outputs)
    data = batches((8, 3), 6)
    for x in data[:3]:
        model(x, training=True)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = loaded.layers[-1]
    assert int(to_numpy(layer.num_batches_tracked)) == 3
    for x in data[3:]:
        loaded(x, training=True)
    every = rows(np.concatenate(data), -1)
    assert int(to_numpy(layer.num_batches_tracked)) == 6
    assert_statistics(layer, every.mean(axis=0), every.var(axis=0))


def test_preset_classes_accept_none():
    renorm = bn_keras.layers.BatchRenormalization(
        momentum=None, renorm_momentum=None
    )
    ghost = bn_keras.layers.GhostBatchNormalization(
        virtual_batch_size=4, momentum=None
    )
    assert renorm.cumulative and ghost.cumulative


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"momentum": "none"}, TypeError, "momentum='none'"),
        ({"momentum": 1.5}, ValueError, "momentum=1.5"),
        ({"renorm_momentum": False}, TypeError, "renorm_momentum=False"),
    ],
)
def test_errors_say_none_is_allowed(kwargs, error, text):
    name = next(iter(kwargs))
    pattern = re.escape(
        f"Argument `{name}` must be a float in [0, 1] or None. "
        f"Received: {text}"
    )
    with pytest.raises(error, match=pattern + "$"):
        BN(**kwargs)
