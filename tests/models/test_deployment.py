"""Models with bn-keras layers deploy as Keras models do: `model.export()`
(a TensorFlow SavedModel, reloaded with `tf.saved_model.load`) and TFLite
conversion keep the inference outputs (within 1e-4)."""

import keras
import numpy as np
import pytest

import bn_keras

pytestmark = [pytest.mark.tensorflow_only, pytest.mark.slow]

TOLERANCE = 1e-4


def _model_with_our_layers():
    """Plain, ghost and renorm BN (with its step counter), a BNBlock and a
    raw tensor operation, with non-trivial statistics."""
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, use_bias=False)(inputs)
    h = keras.layers.ReLU()(bn_keras.layers.BatchNormalization()(h))
    h = bn_keras.layers.GhostBatchNormalization(virtual_batch_size=4)(h)
    h = bn_keras.layers.BNBlock(keras.layers.Conv2D(8, 3), activation="relu")(
        h * 2.0
    )
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = bn_keras.layers.BatchRenormalization()(keras.layers.Dense(6)(h))
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    rng = np.random.default_rng(0)
    for bn in bn_keras.find_batchnorm(model):
        n = bn.moving_mean.shape[0]
        bn.moving_mean.assign(rng.normal(size=n).astype("float32"))
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
        bn.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
    return model


def _inputs():
    return np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype("float32")


def _exported(tmp_path):
    model = _model_with_our_layers()
    expected = keras.ops.convert_to_numpy(model(_inputs(), training=False))
    path = str(tmp_path / "exported")
    model.export(path, verbose=False)
    return path, expected


def test_export_and_tf_saved_model_load(tmp_path):
    import tensorflow as tf

    path, expected = _exported(tmp_path)
    reloaded = tf.saved_model.load(path)
    np.testing.assert_allclose(
        reloaded.serve(_inputs()).numpy(),
        expected,
        rtol=TOLERANCE,
        atol=TOLERANCE,
    )


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_tflite_conversion(tmp_path):
    import tensorflow as tf

    path, expected = _exported(tmp_path)
    content = tf.lite.TFLiteConverter.from_saved_model(path).convert()
    interpreter = tf.lite.Interpreter(model_content=content)
    (given,) = interpreter.get_input_details()
    (output,) = interpreter.get_output_details()
    x = _inputs()
    interpreter.resize_tensor_input(given["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], x)
    interpreter.invoke()
    np.testing.assert_allclose(
        interpreter.get_tensor(output["index"]),
        expected,
        rtol=TOLERANCE,
        atol=TOLERANCE,
    )
