"""The formulas shared by the layer and the monitor, against tests/reference.py.

Each is checked on NumPy float64 arrays (as the monitor calls them: the
results must stay NumPy float64) and on backend tensors (as the layer calls
them, in float32).
"""

import keras
import numpy as np
import pytest

from bn_keras.layers._formulas import clip_renorm
from bn_keras.layers._formulas import cumulative_average
from bn_keras.layers._formulas import cumulative_average_input
from bn_keras.layers._formulas import ghost_count
from bn_keras.layers._formulas import ghost_ids
from bn_keras.layers._formulas import moving_average
from bn_keras.layers._formulas import moving_average_input
from bn_keras.layers._formulas import renorm_clipped
from bn_keras.layers._formulas import renorm_ratios
from bn_keras.layers._formulas import renorm_update_input
from tests import reference


@pytest.mark.parametrize("batch", [1, 2, 3, 7, 8, 9, 10, 16, 17, 33])
@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_ghost_ids_are_the_reference_chunks(batch, size):
    expected = np.empty(batch, dtype=int)
    for ghost, (start, stop) in enumerate(
        reference.ghost_chunks(batch, size)
    ):
        expected[start:stop] = ghost
    ids, count = ghost_ids(batch, size)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(ids), expected)
    assert count == len(reference.ghost_chunks(batch, size))
    # The same count from a scalar tensor (a batch size known at run time).
    tensor_count = ghost_count(
        keras.ops.convert_to_tensor(batch), size
    )
    assert int(keras.ops.convert_to_numpy(tensor_count)) == count


CLIPPINGS = [
    {},
    {"rmax": 1.5},
    {"rmin": 0.8, "rmax": 1.25, "dmax": 0.5},
    {"rmin": None, "rmax": 2.0, "dmax": 0.0},
]


def _renorm_case(rng, channels=6):
    mean = rng.normal(0.0, 2.0, channels)
    variance = rng.uniform(0.05, 4.0, channels)
    renorm_mean = rng.normal(0.0, 1.0, channels)
    # Two channels below sqrt(epsilon): the floor applies there.
    renorm_stddev = np.concatenate(
        [[1e-4, 0.0], rng.uniform(0.3, 2.0, channels - 2)]
    )
    return mean, variance, renorm_mean, renorm_stddev


def _reference_correction(mean, variance, renorm_mean, renorm_stddev, bounds):
    """r and d from the reference layer's training output on a batch with
    these statistics: y = x_hat * r + d (gamma 1, beta 0)."""
    epsilon = 1e-3
    ref = reference.ReferenceBatchNorm(
        len(mean), epsilon=epsilon, renorm=True, renorm_clipping=bounds
    )
    ref.set_state(renorm_mean=renorm_mean, renorm_stddev=renorm_stddev)
    # Two samples per channel with exactly this mean and biased variance.
    spread = np.sqrt(variance)
    x = np.stack([mean - spread, mean + spread])
    y = ref.train_step(x)
    x_hat = (x - mean) / np.sqrt(variance + epsilon)
    r = (y[1] - y[0]) / (x_hat[1] - x_hat[0])
    d = y[0] - x_hat[0] * r
    return r, d


@pytest.mark.parametrize("clipping", CLIPPINGS)
def test_renorm_correction_on_numpy_matches_the_reference(rng, clipping):
    mean, variance, renorm_mean, renorm_stddev = _renorm_case(rng)
    epsilon = 1e-3
    r, d = renorm_ratios(
        mean, np.sqrt(variance + epsilon), renorm_mean, renorm_stddev, epsilon
    )
    assert r.dtype == np.float64 and isinstance(r, np.ndarray)
    clipped_r, clipped_d = clip_renorm(r, d, clipping)
    expected_r, expected_d = _reference_correction(
        mean, variance, renorm_mean, renorm_stddev, clipping
    )
    np.testing.assert_allclose(clipped_r, expected_r, rtol=1e-9)
    np.testing.assert_allclose(clipped_d, expected_d, rtol=1e-9, atol=1e-9)
    # `renorm_clipped` marks exactly the pairs that clipping changed.
    changed = (clipped_r != r) | (clipped_d != d)
    np.testing.assert_array_equal(
        renorm_clipped(r, d, clipping), changed
    )
    if clipping.get("rmax"):
        assert changed.any()  # the case exercises clipping


@pytest.mark.parametrize("clipping", CLIPPINGS)
def test_renorm_correction_on_tensors_matches_the_reference(rng, clipping):
    mean, variance, renorm_mean, renorm_stddev = _renorm_case(rng)
    epsilon = 1e-3
    as32 = [
        keras.ops.convert_to_tensor(v.astype("float32"))
        for v in (mean, np.sqrt(variance + epsilon), renorm_mean, renorm_stddev)
    ]
    r, d = clip_renorm(
        *renorm_ratios(*as32, epsilon), clipping
    )
    assert keras.backend.standardize_dtype(r.dtype) == "float32"
    expected_r, expected_d = _reference_correction(
        mean, variance, renorm_mean, renorm_stddev, clipping
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(r), expected_r, rtol=1e-5
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(d), expected_d, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9, 0.99])
def test_moving_average_and_its_inverse(rng, momentum):
    old = rng.normal(size=5)
    batch_mean = rng.normal(size=5)
    ref = reference.ReferenceBatchNorm(5, momentum=momentum)
    ref.set_state(moving_mean=old)
    # Rows whose mean is batch_mean (two samples, symmetric).
    ref.train_step(np.stack([batch_mean - 1.0, batch_mean + 1.0]))
    new = moving_average(old, batch_mean, momentum)
    np.testing.assert_allclose(new, ref.moving_mean, rtol=1e-12)
    np.testing.assert_allclose(
        moving_average_input(old, new, momentum),
        batch_mean,
        rtol=1e-9,
        atol=1e-12,
    )


def _batch_statistics(rng, count, channels=4):
    """`count` batches' means and biased variances, far apart."""
    means = rng.normal(0.0, 5.0, (count, channels))
    variances = rng.uniform(0.1, 9.0, (count, channels))
    return means, variances


@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy", "tensor"])
def test_cumulative_average_is_the_pooled_statistics(rng, as_tensor):
    """After n updates: the reference's closed form (the batches weighing
    alike); the first update sets them whatever the initial values."""
    means, variances = _batch_statistics(rng, 7)
    ref = reference.ReferenceBatchNorm(4, momentum=None)
    mean, variance = rng.normal(size=4), rng.uniform(0.5, 2.0, 4)
    if as_tensor:
        cast = lambda v: keras.ops.convert_to_tensor(  # noqa: E731
            np.asarray(v, "float32")
        )
        mean, variance = cast(mean), cast(variance)
    for n, (m, v) in enumerate(zip(means, variances), start=1):
        if as_tensor:
            m, v = cast(m), cast(v)
        mean, variance = cumulative_average(mean, variance, m, v, float(n))
        ref._update(means[n - 1], variances[n - 1])
        tolerance = 1e-5 if as_tensor else 1e-12
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(mean), ref.moving_mean, rtol=tolerance
        )
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(variance),
            ref.moving_variance,
            rtol=tolerance,
        )
    if not as_tensor:
        assert isinstance(mean, np.ndarray) and mean.dtype == np.float64


def test_cumulative_average_and_its_inverse(rng):
    (old_mean, mean), (old_variance, variance) = _batch_statistics(rng, 2)
    for count in (1.0, 2.0, 50.0):
        new = cumulative_average(old_mean, old_variance, mean, variance, count)
        recovered = cumulative_average_input(
            old_mean, old_variance, *new, count
        )
        np.testing.assert_allclose(recovered[0], mean, rtol=1e-9)
        np.testing.assert_allclose(recovered[1], variance, rtol=1e-9)


@pytest.mark.parametrize("momentum", [0.9, None])
def test_renorm_update_input_recovers_the_batch(rng, momentum):
    """The batch mean and stddev from a renorm update, as the monitor reads
    them: the reference's update, inverted."""
    epsilon = 1e-3
    ref = reference.ReferenceBatchNorm(
        4, momentum=0.9, renorm=True, renorm_momentum=momentum
    )
    ref.set_state(num_batches_tracked=3)
    (mean, _), (variance, _) = _batch_statistics(rng, 2)
    old_mean, old_stddev = ref.renorm_mean, ref.renorm_stddev
    ref._update(mean, variance)
    recovered_mean, recovered_stddev = renorm_update_input(
        old_mean,
        old_stddev,
        ref.renorm_mean,
        ref.renorm_stddev,
        epsilon,
        momentum,
        count=4.0,
    )
    np.testing.assert_allclose(recovered_mean, mean, rtol=1e-9)
    np.testing.assert_allclose(
        recovered_stddev, np.sqrt(variance + epsilon), rtol=1e-9
    )
