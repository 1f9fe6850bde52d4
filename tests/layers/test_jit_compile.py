"""`fit` with `jit_compile=True` (XLA on TensorFlow and JAX, torch.compile
on PyTorch) against Keras's own layer.

Where Keras's layer compiles correctly it is the reference: ours, compiled,
trains to Keras's compiled weights. Keras's renorm under torch.compile
trains to other weights than its own eager run (Keras 3.15, torch 2.13):
torch.compile's partitioner recomputes r and d in the backward pass from
the renorm statistics that the forward pass has meanwhile updated in place.
Ours saves r and d instead, so the reference for renorm is Keras's eager run
on every backend; Keras's compiled renorm is marked as failing on torch.
"""

import keras
import numpy as np
import pytest

import bn_keras
from tests.layer_test_case import assert_weights_equal
from tests.layer_test_case import make_model
from tests.layer_test_case import sample_inputs

TORCH = keras.backend.backend() == "torch"
SHAPE = (8, 3, 2, 2)  # channels first: sample axes on both sides
RENORM = {
    "renorm": True,
    "renorm_momentum": 0.5,
    "renorm_clipping": {"rmax": 1.3, "rmin": 0.8, "dmax": 0.2},
}


def trained(layer_class, options, jit_compile):
    """Weights and predictions of `make_model` around the layer after 3
    steps of `fit`, from the same initial weights every time."""
    keras.utils.set_random_seed(0)
    model = make_model(
        lambda: layer_class(axis=1, momentum=0.5, **options), SHAPE
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss="mse",
        jit_compile=jit_compile,
    )
    x = sample_inputs((3 * SHAPE[0], *SHAPE[1:]), seed=1)
    y = np.random.default_rng(2).normal(size=(3 * SHAPE[0], *SHAPE[1:-1], 2))
    model.fit(
        x, y, batch_size=SHAPE[0], epochs=1, shuffle=False, verbose=0
    )
    return model, model.predict(x, verbose=0)


def assert_trained_alike(actual, expected):
    (model, predictions), (reference, reference_predictions) = actual, expected
    # The statistics moved: the comparison has teeth.
    bn = reference.layers[2]
    assert np.abs(keras.ops.convert_to_numpy(bn.moving_mean)).max() > 0.05
    assert_weights_equal(model, reference, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(
        predictions, reference_predictions, atol=1e-5, rtol=1e-5
    )


def test_plain_matches_keras_layer_compiled():
    assert_trained_alike(
        trained(bn_keras.layers.BatchNormalization, {}, jit_compile=True),
        trained(keras.layers.BatchNormalization, {}, jit_compile=True),
    )


def test_renorm_compiled_matches_keras_layer_eager():
    assert_trained_alike(
        trained(bn_keras.layers.BatchNormalization, RENORM, jit_compile=True),
        trained(keras.layers.BatchNormalization, RENORM, jit_compile=False),
    )


@pytest.mark.xfail(
    TORCH,
    reason="Keras 3.15's renorm under torch.compile: r and d recomputed in "
    "the backward from the renorm statistics updated in place",
    raises=AssertionError,
    strict=True,
)
def test_keras_renorm_compiled_matches_its_eager_run():
    """Documents Keras's layer, not ours: passes on TensorFlow and JAX."""
    assert_trained_alike(
        trained(keras.layers.BatchNormalization, RENORM, jit_compile=True),
        trained(keras.layers.BatchNormalization, RENORM, jit_compile=False),
    )
