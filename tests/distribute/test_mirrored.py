"""MirroredStrategy on 2 and 4 logical CPU devices.

The scenario runs in a fresh process (`scenario.py mirrored`): logical
devices must be configured before TensorFlow initializes its devices, which
the rest of the suite has long done in this process. It trains the same
model (Dense -> bn_keras BatchNormalization -> Dense, inputs of shape
`(batch, 3, 4)`) under the strategy and on one device, and writes both.

Global batch 16: each of the `n` replicas gets `b = 16 / n` consecutive
samples (`b = 8` on 2 devices, 4 on 4 devices).
"""

import numpy as np
import pytest

from bn_keras.layers import RenormClipping
from tests.distribute import helpers
from tests.distribute import scenario

pytestmark = [pytest.mark.tensorflow_only, pytest.mark.slow]


@pytest.fixture(scope="module", params=[2, 4], ids=lambda n: f"{n}devices")
def mirrored(request, tmp_path_factory):
    devices = request.param
    tmp_path = tmp_path_factory.mktemp(f"mirrored{devices}")
    out = tmp_path / "results.json"
    helpers.run_scenario(
        tmp_path, "mirrored", "mirrored", "--devices", devices, "--out", out
    )
    results = helpers.read_json(out)
    assert results["devices"] == devices
    return results


def check_steps(distributed, reference, what, state=True):
    """Outputs, summed gradients and (optionally) BN state, step by step."""
    assert len(distributed) == len(reference) == scenario.STEPS
    for k, (got, want) in enumerate(zip(distributed, reference)):
        helpers.assert_close(got["outputs"], want["outputs"], f"{what} {k}")
        assert len(got["grads"]) == len(want["grads"])
        for i, (g, w) in enumerate(zip(got["grads"], want["grads"])):
            helpers.assert_close(g, w, f"{what} step {k}: gradient {i}")
        if state:
            helpers.assert_bn_state_close(
                got["state"], want["state"], f"{what} step {k}"
            )


@pytest.mark.parametrize("case", ["plain", "ghost", "renorm", "ghost_renorm"])
def test_synchronized_equals_one_device_on_the_global_batch(mirrored, case):
    """`synchronized=True`: every step's outputs, gradients (summed over
    replicas) and every replica's copy of the moving statistics equal one
    device training on the global batch, within 1e-5.

    Ghost cases use `m = b / 2`: each replica forms 2 ghost batches of
    consecutive samples, and ghost `j` of replica `r` holds global samples
    `[r*b + j*m, r*b + (j+1)*m)`, exactly single-device ghost `2r + j` on
    the global batch of 16 (8 ghosts of 2 on 4 devices, 4 of 4 on 2).
    """
    record = mirrored["cases"][case]
    assert record["synchronized"]
    if "ghost" in case:
        assert record["virtual_batch_size"] * 2 == mirrored["local_batch"]
    check_steps(record["distributed"], record["global"], case)

    final = record["distributed"][-1]["state"]
    # The statistics did move (momentum 0.5), so the comparison has teeth.
    assert np.abs(np.asarray(final["bn0/moving_mean"])).max() > 0.05
    if "renorm" in case:
        steps = [scenario.STEPS] * mirrored["devices"]
        assert final["bn0/renorm_step"] == steps


@pytest.mark.parametrize("case", ["cumulative", "ghost_cumulative"])
def test_synchronized_cumulative_statistics(mirrored, case):
    """`momentum=None`, `renorm_momentum=None` (unclipped renorm), as
    `insert_batchnorm(input_batchnorm="renorm")` makes it: every replica
    applies the same update of the global batch's statistics, step by step
    equal to one device, and counts each step once."""
    record = mirrored["cases"][case]
    assert record["synchronized"]
    check_steps(record["distributed"], record["global"], case)
    final = record["distributed"][-1]["state"]
    steps = [scenario.STEPS] * mirrored["devices"]
    assert final["bn0/num_batches_tracked"] == steps


def test_ghost_batches_are_formed_within_each_replica(mirrored):
    """With `m = 3`, which does not divide the local batch, ghost batches
    are consecutive chunks of each replica's own batch (8 -> 3 + 3 + 2 on 2
    devices; 4 -> one ghost of 4 on 4 devices, a 1-sample remainder joining
    its neighbour), not of the global batch. Outputs and gradients equal
    one device running ghost BN on each replica's batch in turn; the moving
    statistics, pooled over all replicas, still equal one device on the
    global batch (compared after the first step: afterwards the weights,
    trained with other ghosts than single-device ghost BN, differ).
    """
    record = mirrored["cases"]["ghost_uneven"]
    assert record["virtual_batch_size"] == 3 and record["synchronized"]
    check_steps(
        record["distributed"],
        record["shards"],
        "per-replica ghosts",
        state=False,
    )
    first, single_device = record["distributed"][0], record["global"][0]
    helpers.assert_bn_state_close(
        first["state"], single_device["state"], "pooled moving statistics"
    )
    # Global ghosts of 3 would normalize differently.
    difference = np.abs(
        np.asarray(first["outputs"]) - np.asarray(single_device["outputs"])
    ).max()
    assert difference > 0.1


@pytest.mark.parametrize("case", ["plain_unsync", "ghost_renorm_unsync"])
def test_unsynchronized_replicas_use_their_own_statistics(mirrored, case):
    """`synchronized=False`: each replica normalizes its own batch with its
    own statistics and moves its own copy of the moving statistics with
    them. Outputs, summed gradients and replica `r`'s copy of every BN
    weight equal one device running replica `r`'s batch, step by step.
    The copies then differ between replicas (the mirrored variables
    diverge; reading or saving one gives replica 0's copy).
    """
    record = mirrored["cases"][case]
    assert not record["synchronized"]
    check_steps(record["distributed"], record["shards"], case)
    final = record["distributed"][-1]["state"]
    copies = np.asarray(final["bn0/moving_mean"])
    assert copies.shape[0] == mirrored["devices"]
    assert np.abs(copies - copies[0]).max() > 0.05
    if "renorm" in case:
        steps = [scenario.STEPS] * mirrored["devices"]
        assert final["bn0/renorm_step"] == steps


def test_fit_with_a_partial_last_batch(mirrored):
    """`model.fit` on 34 samples with a global batch of 16: the last batch
    has 2 samples, one on each of the first two replicas (on 4 devices the
    other two replicas get an empty batch). The model has two synchronized
    BN layers, plain and ghost + renorm (`m = b / 2`). Their moving
    statistics and renorm counter equal single-device `fit` after every
    step, the partial one included; all weights do after the full batches.
    (After the partial batch the trainable weights differ, by design: Keras
    scales each replica's mean loss by 1 / replicas, which is not the
    global mean for unequal local batches, and per-replica ghost batches of
    1 sample differ from one ghost batch of 2.)
    """
    distributed = mirrored["fit"]["distributed"]
    single = mirrored["fit"]["global"]
    assert np.all(np.isfinite(distributed["loss"]))
    steps = distributed["steps"]
    when = ["begin", "batch 0", "batch 1", "batch 2"]
    assert [s["when"] for s in steps] == when
    assert any(name.startswith("bn1/") for name in steps[0]["bn"])
    for k, (got, want) in enumerate(zip(steps, single["steps"])):
        helpers.assert_bn_state_close(got["bn"], want["bn"], f"step {k}")
        assert got["iterations"] == want["iterations"] == k
        if k < 3:
            for i, (g, w) in enumerate(zip(got["weights"], want["weights"])):
                helpers.assert_close(g, w, f"step {k}: weight {i}")
    last = steps[-1]
    assert last["renorm_step"] == [[3] * mirrored["devices"]]
    schedule = RenormClipping(**scenario.SCHEDULE)(3)
    for key, value in schedule.items():
        helpers.assert_close(last["clipping"][0][key], value, key)


def test_fit_with_a_partial_last_batch_unsynchronized(mirrored):
    """The same `fit` with `synchronized=False` (TensorFlow's fused kernel
    path): replica `r < 2` normalizes its one sample (row `32 + r`) and
    moves its own copy of the moving statistics with it, as NumPy computes
    for the first BN layer from the Dense weights before the step; on 4
    devices, replicas 2 and 3 get an empty batch, which has no statistics,
    so their copies stay as they were. Nothing becomes NaN.
    """
    steps = mirrored["fit_unsync"]["distributed"]["steps"]
    devices = mirrored["devices"]
    assert np.all(np.isfinite(mirrored["fit_unsync"]["distributed"]["loss"]))
    for state in steps:
        for w in state["weights"]:
            assert np.all(np.isfinite(w))
    before, after = steps[-2], steps[-1]
    kernel, bias = (np.asarray(w) for w in before["weights"][:2])
    assert kernel.shape == (scenario.FEATURES, scenario.UNITS)
    x, _ = scenario.make_data(2 * scenario.GLOBAL_BATCH + 2, seed=1)
    old_mean = np.asarray(before["bn"]["bn0/moving_mean"])
    old_variance = np.asarray(before["bn"]["bn0/moving_variance"])
    new_mean = np.asarray(after["bn"]["bn0/moving_mean"])
    new_variance = np.asarray(after["bn"]["bn0/moving_variance"])
    assert new_mean.shape == (devices, scenario.UNITS)
    momentum = scenario.MOMENTUM
    for r in range(devices):
        if r >= 2:  # an empty batch: the copy stays exactly as it was
            np.testing.assert_array_equal(new_mean[r], old_mean[r])
            np.testing.assert_array_equal(new_variance[r], old_variance[r])
            continue
        h = x[2 * scenario.GLOBAL_BATCH + r] @ kernel + bias  # (TIME, C)
        helpers.assert_close(
            new_mean[r],
            momentum * old_mean[r] + (1 - momentum) * h.mean(axis=0),
            f"replica {r} moving mean",
        )
        helpers.assert_close(
            new_variance[r],
            momentum * old_variance[r] + (1 - momentum) * h.var(axis=0),
            f"replica {r} moving variance",
        )
    assert after["renorm_step"] == [[3] * devices]
