"""`bn_keras.layers.load_torch_batchnorm`: PyTorch's weights, inference as
PyTorch's eval mode, training on with Keras's conventions.

Against NumPy arrays built as PyTorch stores them (its update rule written
out), and against PyTorch itself where it is installed (the environment of
the PyTorch backend).
"""

import re

import keras
import numpy as np
import pytest

import bn_keras
from tests.layer_test_case import to_numpy

BN = bn_keras.layers.BatchNormalization
EPS = 1e-5  # PyTorch's default
SHAPE = (6, 3, 4, 5)  # PyTorch's channels-first: N, C, H, W


def torch_state(momentum=0.1, steps=3, seed=0):
    """A state dict as `nn.BatchNorm2d(3, momentum=momentum)` stores it
    after `steps` training batches: running averages of the batch mean and
    of the *unbiased* batch variance (`None`: cumulative averages)."""
    rng = np.random.default_rng(seed)
    mean, var = np.zeros(3), np.ones(3)
    for step in range(steps):
        x = rng.normal(step, 1.0 + step, SHAPE)
        batch_mean = x.mean(axis=(0, 2, 3))
        batch_var = x.var(axis=(0, 2, 3), ddof=1)  # unbiased
        m = 1.0 / (step + 1) if momentum is None else momentum
        mean = (1 - m) * mean + m * batch_mean
        var = (1 - m) * var + m * batch_var
    return {
        "weight": rng.uniform(0.5, 2.0, 3).astype("float32"),
        "bias": rng.normal(size=3).astype("float32"),
        "running_mean": mean.astype("float32"),
        "running_var": var.astype("float32"),
        "num_batches_tracked": np.array(steps, "int64"),
    }


def eval_mode(state, x):
    """PyTorch's eval-mode output on channels-first `x`."""
    shape = (1, -1, 1, 1)
    scale = state["weight"] / np.sqrt(state["running_var"] + EPS)
    return (x - state["running_mean"].reshape(shape)) * scale.reshape(
        shape
    ) + state["bias"].reshape(shape)


def loaded(state, prefix="", **kwargs):
    layer = BN(**{"axis": 1, "epsilon": EPS, "momentum": 0.9, **kwargs})
    layer.build((None, *SHAPE[1:]))
    return bn_keras.layers.load_torch_batchnorm(layer, state, prefix)


def test_inference_equals_pytorch_eval_mode():
    state = torch_state()
    layer = loaded(state)
    x = np.random.default_rng(9).normal(1.0, 2.0, SHAPE).astype("float32")
    np.testing.assert_allclose(
        to_numpy(layer(x, training=False)), eval_mode(state, x), atol=1e-5
    )
    # The state dict of a whole model: the layer's entries by prefix.
    prefixed = {f"layer1.bn1.{k}": v for k, v in state.items()}
    prefixed["layer1.conv1.weight"] = np.zeros((3, 3, 3, 3))
    other = loaded(prefixed, prefix="layer1.bn1.")
    for a, b in zip(other.weights, layer.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_training_on_averages_biased_variances_with_momentum_one_minus_m():
    """One more training batch: the mean moves as PyTorch's (momentum 0.9
    here is PyTorch's 0.1), the variance by the biased batch variance where
    PyTorch would average the unbiased one."""
    state = torch_state()
    layer = loaded(state)
    x = np.random.default_rng(4).normal(-1.0, 3.0, SHAPE).astype("float32")
    layer(x, training=True)
    n = SHAPE[0] * SHAPE[2] * SHAPE[3]
    biased = x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(
        to_numpy(layer.moving_mean),
        0.9 * state["running_mean"] + 0.1 * x.mean(axis=(0, 2, 3)),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        to_numpy(layer.moving_variance),
        0.9 * state["running_var"] + 0.1 * biased,
        rtol=1e-5,
    )
    pytorch = 0.9 * state["running_var"] + 0.1 * biased * n / (n - 1)
    assert np.all(to_numpy(layer.moving_variance) < pytorch)


def test_cumulative_statistics_carry_the_batch_count():
    state = torch_state(momentum=None)
    layer = loaded(state, momentum=None)
    assert int(to_numpy(layer.num_batches_tracked)) == 3
    np.testing.assert_allclose(
        to_numpy(layer.moving_mean), state["running_mean"], rtol=1e-6
    )
    # A momentum of 0.9 has no counter: the count is not used.
    assert loaded(state).num_batches_tracked is None


def test_renorm_statistics_follow_and_keras_layer_loads_too():
    state = torch_state()
    renorm = loaded(state, renorm=True)
    stddev = np.sqrt(state["running_var"] + EPS)
    for name in ("moving_stddev", "renorm_stddev"):
        np.testing.assert_allclose(
            to_numpy(getattr(renorm, name)), stddev, rtol=1e-6
        )
    np.testing.assert_allclose(
        to_numpy(renorm.renorm_mean), state["running_mean"], rtol=1e-6
    )
    theirs = keras.layers.BatchNormalization(axis=1, epsilon=EPS)
    theirs.build((None, *SHAPE[1:]))
    bn_keras.layers.load_torch_batchnorm(theirs, state)
    x = np.random.default_rng(2).normal(size=SHAPE).astype("float32")
    np.testing.assert_allclose(
        to_numpy(theirs(x, training=False)), eval_mode(state, x), atol=1e-5
    )


def test_affine_false():
    state = torch_state()
    del state["weight"], state["bias"]
    layer = loaded(state, center=False, scale=False)
    x = np.random.default_rng(3).normal(size=SHAPE).astype("float32")
    identity = {"weight": np.ones(3), "bias": np.zeros(3)}
    expected = eval_mode({**state, **identity}, x)
    np.testing.assert_allclose(
        to_numpy(layer(x, training=False)), expected, atol=1e-5
    )


def _built(**kwargs):
    layer = BN(axis=1, **kwargs)
    layer.build((None, *SHAPE[1:]))
    return layer


@pytest.mark.parametrize(
    "make_layer, change, error, message",
    [
        (lambda: BN(), {}, ValueError, "built=False>"),
        (
            lambda: keras.layers.Dense(3),
            {},
            TypeError,
            "Received: layer=<Dense",
        ),
        (
            lambda: _built(scale=False, center=False),
            {},
            ValueError,
            "`scale=True, center=True`. Received: scale=False, center=False",
        ),
        (
            _built,
            {"drop": ("running_var",)},
            ValueError,
            "track_running_stats=False",
        ),
        (
            _built,
            {"running_mean": np.zeros(4, "float32")},
            ValueError,
            "Received: running_mean.shape=(4,)",
        ),
    ],
)
def test_errors(make_layer, change, error, message):
    state = torch_state()
    for key in change.pop("drop", ()):
        del state[key]
    state.update(change)
    with pytest.raises(error, match=re.escape(message)):
        bn_keras.layers.load_torch_batchnorm(make_layer(), state)


@pytest.mark.parametrize("axis", [1, -1], ids=["channels_first", "ported"])
def test_against_pytorch(axis):
    """PyTorch's own layer, trained three steps: the loaded layer's
    inference equals its eval mode, channels-first or ported to
    channels-last."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.BatchNorm2d(3)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        module.weight.copy_(torch.tensor(rng.uniform(0.5, 2.0, 3)))
        module.bias.copy_(torch.tensor(rng.normal(size=3)))
        module.train()
        for step in range(3):
            module(torch.tensor(rng.normal(step, 1.0 + step, SHAPE)).float())
        module.eval()
        x = rng.normal(1.0, 2.0, SHAPE).astype("float32")
        expected = module(torch.tensor(x)).numpy()
    layer = BN(axis=axis, epsilon=module.eps, momentum=1 - module.momentum)
    if axis == 1:
        layer.build((None, *SHAPE[1:]))
        actual = to_numpy(
            bn_keras.layers.load_torch_batchnorm(layer, module.state_dict())(
                x, training=False
            )
        )
    else:
        channels_last = np.transpose(x, (0, 2, 3, 1))
        layer.build(channels_last.shape)
        bn_keras.layers.load_torch_batchnorm(layer, module.state_dict())
        actual = np.transpose(
            to_numpy(layer(channels_last, training=False)), (0, 3, 1, 2)
        )
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    assert int(module.num_batches_tracked) == 3
