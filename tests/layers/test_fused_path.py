"""The fused-kernel fast path is taken where it applies, and only there."""

import keras
import numpy as np
import pytest

import bn_keras

tf = pytest.importorskip("tensorflow")


def _op_types(layer, x, training, mask=None, jit_compile=None):
    """Op types of a traced training or inference call, function bodies
    included."""

    @tf.function(
        input_signature=[tf.TensorSpec([None, *x.shape[1:]])],
        jit_compile=jit_compile,
    )
    def call(inputs):
        return layer(inputs, training=training, mask=mask)

    graph_def = call.get_concrete_function().graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types |= {node.op for node in function.node_def}
    return types


CASES = [
    ((8, 6), -1, {}),
    ((8, 3, 6), -1, {}),
    ((8, 4, 4, 6), -1, {}),
    ((8, 6, 4, 4), 1, {}),
    ((8, 4, 4, 6), -1, {"renorm": True}),
    ((64, 4, 4, 6), -1, {"virtual_batch_size": 16}),
    ((64, 6, 4, 4), 1, {"virtual_batch_size": 16, "renorm": True}),
]


@pytest.mark.tensorflow_only
def test_large_ghost_batches_get_a_kernel_call_each():
    shape, kwargs = SLICED
    layer = bn_keras.layers.BatchNormalization(**kwargs)
    layer.build(shape)

    @tf.function
    def call(inputs):
        return layer(inputs, training=True)

    graph = call.get_concrete_function(tf.zeros(shape)).graph
    ops = [op.type for op in graph.get_operations()]
    assert ops.count("FusedBatchNormV3") == 2
    assert "Transpose" not in ops


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("shape,axis,kwargs", CASES)
@pytest.mark.parametrize("training", [True, False])
def test_fused_kernel_is_used_for_supported_inputs(
    shape, axis, kwargs, training
):
    layer = bn_keras.layers.BatchNormalization(axis=axis, **kwargs)
    layer.build(shape)
    x = np.zeros(shape, "float32")
    assert "FusedBatchNormV3" in _op_types(layer, x, training)
    layer_off = bn_keras.layers.BatchNormalization(
        axis=axis, fused=False, **kwargs
    )
    layer_off.build(shape)
    assert "FusedBatchNormV3" not in _op_types(layer_off, x, training)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("shape,axis,kwargs", CASES)
def test_general_path_under_xla(shape, axis, kwargs):
    """XLA compiles the general path to faster code than the fused kernel."""
    layer = bn_keras.layers.BatchNormalization(axis=axis, **kwargs)
    layer.build(shape)
    x = np.zeros(shape, "float32")
    assert "FusedBatchNormV3" not in _op_types(layer, x, True, jit_compile=True)
    assert "FusedBatchNormV3" in _op_types(layer, x, True, jit_compile=False)


@pytest.mark.tensorflow_only
def test_general_path_for_masks():
    shape = (8, 5, 6)
    x = np.zeros(shape, "float32")
    layer = bn_keras.layers.BatchNormalization()
    layer.build(shape)
    mask = tf.ones((8, 5), "bool")
    assert "FusedBatchNormV3" not in _op_types(layer, x, True, mask=mask)
    assert "FusedBatchNormV3" in _op_types(layer, x, True)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("epsilon", [1e-5, 1e-7])
@pytest.mark.parametrize("shape,axis", [((16, 5, 6), -1), ((16, 6, 3, 3), 1)])
def test_small_epsilon_takes_the_fused_kernel_as_it_is(shape, axis, epsilon):
    """PyTorch's epsilon (1e-5) and smaller ones run on the fused kernel,
    with the epsilon given (not raised to 1.001e-5), as Keras's layer
    computes them: outputs, gradients and statistics, in training and
    inference, on inputs whose variance is small enough for epsilon to
    matter."""
    layer = bn_keras.layers.BatchNormalization(axis=axis, epsilon=epsilon)
    keras_layer = keras.layers.BatchNormalization(axis=axis, epsilon=epsilon)
    for each in (layer, keras_layer):
        each.build(shape)
    x = np.zeros(shape, "float32")
    assert "FusedBatchNormV3" in _op_types(layer, x, True)
    assert "FusedBatchNormV3" in _op_types(layer, x, False)
    rng = np.random.default_rng(0)
    for _ in range(2):
        # Channel variances about 1e-6 to 1e-3: epsilon is not negligible.
        scale = np.logspace(-3, -1.5, shape[axis]).reshape(
            [-1 if a == axis % len(shape) else 1 for a in range(len(shape))]
        )
        x = tf.constant((rng.normal(size=shape) * scale).astype("float32"))
        results = []
        for each in (layer, keras_layer):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = each(x, training=True)
                loss = tf.reduce_sum(y * tf.sin(y))
            results.append((y, tape.gradient(loss, x)))
        (y, dx), (y_keras, dx_keras) = results
        np.testing.assert_allclose(y, y_keras, atol=1e-5, rtol=1e-5)
        dx_scale = float(np.abs(dx_keras).max())
        np.testing.assert_allclose(dx, dx_keras, atol=1e-5 * dx_scale)
    for ours, theirs in zip(layer.weights, keras_layer.weights):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(
        layer(x, training=False),
        keras_layer(x, training=False),
        atol=1e-5,
        rtol=1e-5,
    )
    # The epsilon given is used: tf-keras's 1.001e-5 would differ from
    # Keras's output by 10 times the tolerance above (4.9e-4 for 1e-5).
    raised = bn_keras.layers.BatchNormalization(axis=axis, epsilon=1.001e-5)
    raised.build(shape)
    gap = raised(x, training=True) - keras_layer(x, training=True)
    assert np.abs(gap).max() > 1e-4


# Ghost batches of 4 x 64 x 64 x 4 values (2**16) get a kernel call each;
# smaller ones go through the transposed layout.
SLICED = ((8, 64, 64, 4), {"virtual_batch_size": 4})


@pytest.mark.tensorflow_only
@pytest.mark.parametrize(
    "shape,kwargs",
    [((32, 4, 4, 3), {}),
     ((32, 4, 4, 3), {"renorm": True,
                      "renorm_clipping": {"rmax": 1.2, "dmax": 0.2}}),
     ((32, 4, 4, 3), {"virtual_batch_size": 8}),
     ((32, 4, 4, 3), {"virtual_batch_size": 8, "renorm": True}),
     SLICED,
     (SLICED[0], {**SLICED[1], "renorm": True}),
     ((8, 4, 64, 64), {**SLICED[1], "axis": 1})],
)
@pytest.mark.parametrize("batch", ["static", "dynamic"])
def test_fused_path_equals_general_path(shape, kwargs, batch):
    """With the batch size unknown when tracing ("dynamic"), ghost batches
    take the fused kernel's transposed layout; known, slices of the batch
    (large ghost batches) or the general path (small ones)."""
    rng = np.random.default_rng(0)
    layers = [
        bn_keras.layers.BatchNormalization(fused=fused, **kwargs)
        for fused in (None, False)
    ]
    results = []
    for layer in layers:
        layer.build(shape)
        call = layer
        if batch == "dynamic":
            call = tf.function(
                lambda x, layer=layer: layer(x, training=True),
                input_signature=[tf.TensorSpec([None, *shape[1:]])],
            )
        outputs, grads = [], []
        for step in range(3):
            x = tf.constant(rng.normal(step, 2.0, shape).astype("float32"))
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = call(x, training=True) if call is layer else call(x)
                loss = tf.reduce_sum(y * tf.sin(y))
            grads.append(tape.gradient(loss, [x, *layer.trainable_weights]))
            outputs.append(y)
        results.append((outputs, grads, [w.numpy() for w in layer.weights]))
        rng = np.random.default_rng(0)
    (out_a, grad_a, w_a), (out_b, grad_b, w_b) = results
    for a, b in zip(out_a, out_b):
        np.testing.assert_allclose(a, b, atol=2e-5)
    # gamma's and beta's gradients sum over every value of a channel: their
    # float32 rounding grows with the batch (both paths are within it of a
    # float64 computation).
    atol = 1e-3 * max(1.0, np.prod(shape) / 1536)
    for ga, gb in zip(grad_a, grad_b):
        for a, b in zip(ga, gb):
            np.testing.assert_allclose(a, b, atol=atol, rtol=1e-4)
    for a, b in zip(w_a, w_b):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"fused": "yes"}, "Received: fused='yes'"),
     ({"fused": "none"}, "Received: fused='none'")],
)
def test_fused_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bn_keras.layers.BatchNormalization(**kwargs)


def test_fused_true_needs_tensorflow_and_takes_any_epsilon():
    if keras.backend.backend() != "tensorflow":
        with pytest.raises(ValueError, match="Received: fused=True$"):
            bn_keras.layers.BatchNormalization(fused=True)
        return
    layer = bn_keras.layers.BatchNormalization(fused=True, epsilon=1e-6)
    assert layer.fused is True and layer.epsilon == 1e-6
