"""Checks every bn-keras layer must pass, shared by the layer tests.

`keras.src.testing` is private, so, like keras-hub, we ship our own small
helper. It works on the TensorFlow, JAX and PyTorch backends.

Usage, in a test::

    from tests.layer_test_case import assert_layer_conventions

    def test_conventions(tmp_path):
        assert_layer_conventions(
            lambda: bn_keras.layers.BatchNormalization(momentum=0.5),
            input_shape=(8, 3),
            tmp_path=tmp_path,
        )

`make_layer` must return a new layer each time it is called (the checks
build several copies, some under a mixed-precision dtype policy), and
`input_shape` includes the batch size. Each check is also available on its
own (`check_config_round_trip`, ...; see `LAYER_CHECKS`), so that a test
can parametrize over them and report which one fails.
"""

import json

import keras
import numpy as np
from keras import ops

MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")
# Outputs of magnitude ~1 rounded to the compute dtype: half an ulp
# relative (float16 keeps 11 significant bits, bfloat16 8), with margin.
_MIXED_RTOL = {"float16": 2.0**-10, "bfloat16": 2.0**-7}
_MIXED_ATOL = {"float16": 1e-3, "bfloat16": 1e-2}


def sample_inputs(input_shape, seed=0, scale=2.0, shift=0.5):
    """Deterministic float32 inputs, not centred and not of unit variance."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=input_shape) * scale + shift).astype("float32")


def to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def weight_values(layer_or_model):
    """`{path: numpy value}` of every weight, in order."""
    return {w.path: to_numpy(w) for w in layer_or_model.weights}


def assert_weights_equal(actual, expected, atol=0.0, rtol=0.0, context=""):
    """Same weight paths, in the same order, with the same values."""
    actual = weight_values(actual) if hasattr(actual, "weights") else actual
    expected = (
        weight_values(expected) if hasattr(expected, "weights") else expected
    )
    strip = lambda paths: [p.split("/", 1)[-1] for p in paths]  # noqa: E731
    assert strip(actual) == strip(expected), context
    for (path, a), e in zip(actual.items(), expected.values(), strict=True):
        np.testing.assert_allclose(
            a, e, atol=atol, rtol=rtol, err_msg=f"{context} {path}"
        )


def make_model(make_layer, input_shape):
    """`Input -> Dense -> layer -> Dense(2)`: the layer sees trained inputs,
    receives gradients and has a trainable head after it."""
    inputs = keras.Input(input_shape[1:])
    x = keras.layers.Dense(input_shape[-1], name="pre")(inputs)
    x = make_layer()(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    return keras.Model(inputs, outputs)


def _training_data(input_shape, steps=2, seed=0):
    batch = input_shape[0]
    x = sample_inputs((steps * batch, *input_shape[1:]), seed=seed)
    y = np.random.default_rng(seed + 1).normal(
        size=(steps * batch, *input_shape[1:-1], 2)
    )
    return x, y.astype("float32")


def _fit(model, input_shape, jit_compile, steps=2):
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss="mse",
        jit_compile=jit_compile,
    )
    x, y = _training_data(input_shape, steps=steps)
    model.fit(
        x, y, batch_size=input_shape[0], epochs=1, shuffle=False, verbose=0
    )
    return x


def _the_layer(model):
    return model.layers[2]


def _statistics(model):
    """`{path: value}` of the non-trainable weights of the layer tested."""
    return {
        w.path: to_numpy(w) for w in _the_layer(model).non_trainable_weights
    }


def _changed(before, after):
    """Paths whose value differs between two `{path: value}` dicts."""
    return [
        path
        for path, value in before.items()
        if not np.array_equal(value, after[path], equal_nan=True)
    ]


def check_config_round_trip(make_layer, input_shape, tmp_path, **options):
    """JSON round trip of the config, and of the registered serialization."""
    layer = make_layer()
    config = layer.get_config()
    text = json.dumps(config, sort_keys=True)  # must be JSON-serializable
    clone = type(layer).from_config(json.loads(text))
    assert json.dumps(clone.get_config(), sort_keys=True) == text

    serialized = json.loads(
        json.dumps(keras.saving.serialize_keras_object(layer))
    )
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is type(layer)
    assert json.dumps(revived.get_config(), sort_keys=True) == text


def check_training_vs_inference(
    make_layer,
    input_shape,
    tmp_path,
    *,
    training_changes_output=True,
    **options,
):
    """Inference is deterministic and stateless; training uses the batch
    (and updates the statistics) when `training_changes_output`."""
    layer = make_layer()
    x = sample_inputs(input_shape)
    inference = to_numpy(layer(x, training=False))
    before = weight_values(layer)
    np.testing.assert_array_equal(to_numpy(layer(x, training=False)), inference)
    np.testing.assert_array_equal(to_numpy(layer(x)), inference)
    assert not _changed(before, weight_values(layer)), (
        "an inference call changed the weights"
    )

    training = to_numpy(layer(x, training=True))
    changed = _changed(before, weight_values(layer))
    assert np.all(np.isfinite(training))
    if training_changes_output:
        assert changed, "a training call left every weight unchanged"
        assert not np.allclose(training, inference, atol=1e-3), (
            "training output equals the inference output"
        )
        # Inference now uses the updated statistics.
        assert not np.allclose(
            to_numpy(layer(x, training=False)), inference, atol=1e-6
        )
    else:
        assert not changed, f"a training call changed {changed}"
        np.testing.assert_allclose(training, inference, atol=1e-6)


def check_save_and_load(
    make_layer,
    input_shape,
    tmp_path,
    *,
    training_changes_output=True,
    **options,
):
    """A trained model saved as `.keras` reloads (without custom objects)
    with the same weights and the same predictions, in inference and in
    training mode."""
    model = make_model(make_layer, input_shape)
    initial = _statistics(model)
    x = _fit(model, input_shape, jit_compile=False)
    if training_changes_output:
        assert _changed(initial, _statistics(model)), "statistics untrained"
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)

    assert type(_the_layer(loaded)) is type(_the_layer(model))
    assert_weights_equal(loaded, model)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )
    # Training-mode outputs depend on every piece of state (step counters
    # included): they must match too.
    np.testing.assert_allclose(
        to_numpy(loaded(x[: input_shape[0]], training=True)),
        to_numpy(model(x[: input_shape[0]], training=True)),
        atol=1e-6,
    )
    assert_weights_equal(loaded, model, atol=1e-6)


def check_jit_compile_fit(
    make_layer,
    input_shape,
    tmp_path,
    *,
    training_changes_output=True,
    **options,
):
    """`fit` with `jit_compile=True` gives the weights that `fit` without
    it gives, from the same initial weights."""
    eager = make_model(make_layer, input_shape)
    jitted = make_model(make_layer, input_shape)
    jitted.set_weights(eager.get_weights())
    initial = weight_values(eager)
    _fit(eager, input_shape, jit_compile=False)
    _fit(jitted, input_shape, jit_compile=True)
    assert _changed(initial, weight_values(eager)), "fit changed nothing"
    if training_changes_output:
        assert _changed(
            {k: v for k, v in initial.items() if k in _statistics(eager)},
            _statistics(eager),
        ), "statistics untrained"
    assert_weights_equal(jitted, eager, atol=1e-5, rtol=1e-5)
    x, _ = _training_data(input_shape, steps=1, seed=7)
    np.testing.assert_allclose(
        jitted.predict(x, verbose=0), eager.predict(x, verbose=0), atol=1e-5
    )


def _built_under(policy, make_layer, x):
    """A layer made under the dtype policy `policy`, built on `x`."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        layer = make_layer()
    finally:
        keras.config.set_dtype_policy(previous)
    layer(x, training=False)
    return layer


def check_mixed_precision(
    make_layer, input_shape, tmp_path, *, large_input_scale=1e4, **options
):
    """Under each mixed policy: float weights and statistics stay float32,
    outputs come in the compute dtype, inputs of magnitude
    `large_input_scale` do not overflow, and the results equal the float32
    layer's (given the same inputs, rounded to the compute dtype)."""
    rng = np.random.default_rng(3)
    x = (1.0 + 0.5 * rng.normal(size=input_shape)) * large_input_scale
    x = x.astype("float32")
    initial = _built_under("float32", make_layer, x).get_weights()
    for policy in MIXED_POLICIES:
        compute_dtype = keras.DTypePolicy(policy).compute_dtype
        layer = _built_under(policy, make_layer, x)
        assert layer.compute_dtype == compute_dtype, policy
        layer.set_weights(initial)
        reference = _built_under("float32", make_layer, x)
        reference.set_weights(initial)
        x_rounded = to_numpy(ops.cast(ops.cast(x, compute_dtype), "float32"))
        for training in (True, False):
            y = layer(x, training=training)
            assert keras.backend.standardize_dtype(y.dtype) == compute_dtype
            y = to_numpy(ops.cast(y, "float32"))
            assert np.all(np.isfinite(y)), f"{policy}: overflow"
            np.testing.assert_allclose(
                y,
                to_numpy(reference(x_rounded, training=training)),
                rtol=_MIXED_RTOL[compute_dtype],
                atol=_MIXED_ATOL[compute_dtype],
                err_msg=f"{policy}, training={training}",
            )
            for w in layer.weights:
                dtype = keras.backend.standardize_dtype(w.dtype)
                if "float" in dtype:
                    assert dtype == "float32", f"{policy}: {w.path}"
            # The statistics, computed in float32, match closely.
            assert_weights_equal(
                layer, reference, rtol=1e-5, atol=1e-6, context=policy
            )


LAYER_CHECKS = {
    "config_round_trip": check_config_round_trip,
    "training_vs_inference": check_training_vs_inference,
    "save_and_load": check_save_and_load,
    "jit_compile_fit": check_jit_compile_fit,
    "mixed_precision": check_mixed_precision,
}


def assert_layer_conventions(
    make_layer,
    input_shape,
    tmp_path,
    *,
    training_changes_output=True,
    large_input_scale=1e4,
):
    """Runs every check of `LAYER_CHECKS` on the layers `make_layer` makes.

    Args:
        make_layer: A function of no argument returning a new layer.
        input_shape: The shape of an input batch, batch size included.
        tmp_path: A directory for the saved model (pytest's `tmp_path`).
        training_changes_output: Whether a training call should differ from
            an inference call and update some non-trainable weight (True
            for batch normalization in training mode).
        large_input_scale: Magnitude of the inputs of the mixed-precision
            check.
    """
    for check in LAYER_CHECKS.values():
        check(
            make_layer,
            input_shape,
            tmp_path,
            training_changes_output=training_changes_output,
            large_input_scale=large_input_scale,
        )


# -- small utilities for numerical layer tests --------------------------------


def weights_by_name(layer):
    """`{weight name: numpy value}` of a layer's own weights."""
    return {w.name: to_numpy(w) for w in layer.weights}


def randomize_weights(layer, seed=0):
    """Sets every float weight of a built layer to a random value: positive
    (in [0.5, 2]) for variances, standard deviations and `gamma`, any sign
    otherwise. Integer weights (counters) are left alone."""
    rng = np.random.default_rng(seed)
    values = []
    for w in layer.weights:
        value = to_numpy(w)
        if "float" in keras.backend.standardize_dtype(w.dtype):
            if any(k in w.name for k in ("variance", "stddev", "gamma")):
                random = rng.uniform(0.5, 2.0, size=value.shape)
            else:
                random = rng.normal(size=value.shape)
            value = random.astype(value.dtype)
        values.append(value)
    layer.set_weights(values)


def call_compiled(layer, x, training, *, jit_compile=False):
    """`layer(x, training=training)` inside a compiled function, with
    `training` passed as a boolean tensor and the batch size unknown at
    trace time where the backend allows it (TensorFlow).

    TensorFlow: a `tf.function` with `input_signature`
    `[TensorSpec([None, ...]), TensorSpec([], tf.bool)]`. JAX: `jax.jit`
    over `layer.stateless_call`, whose new state is assigned back. PyTorch:
    `torch.compile` (Inductor with `jit_compile`, else AOTAutograd's graph
    run eagerly), which updates the variables in place. The layer must be
    built.
    """
    backend = keras.backend.backend()
    x = np.asarray(x, "float32")
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, *x.shape[1:]], tf.float32),
                tf.TensorSpec([], tf.bool),
            ],
            jit_compile=jit_compile,
        )
        def fn(inputs, flag):
            assert inputs.shape[0] is None  # unknown when traced
            return layer(inputs, training=flag)

        return to_numpy(fn(tf.constant(x), tf.constant(training)))
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        @jax.jit
        def fn(trainable, non_trainable, inputs, flag):
            return layer.stateless_call(
                trainable, non_trainable, inputs, training=flag
            )

        outputs, non_trainable = fn(
            [v.value for v in layer.trainable_variables],
            [v.value for v in layer.non_trainable_variables],
            jnp.asarray(x),
            jnp.asarray(training),
        )
        for variable, value in zip(
            layer.non_trainable_variables, non_trainable, strict=True
        ):
            variable.assign(value)
        return to_numpy(outputs)
    if backend == "torch":
        import torch

        # Without XLA's counterpart, `jit_compile=False` traces through
        # AOTAutograd only (the graph, no code generation); True compiles
        # with Inductor, as `model.compile(jit_compile=True)` does.
        # Static shapes: under dynamic ones, Keras's `ops.arange` of the
        # symbolic batch size breaks the graph (`fit(jit_compile=True)` then
        # runs that part eagerly). `fullgraph=True` raises on any graph
        # break, and on a recompilation limit hit (no silent eager run).
        @torch.compile(
            dynamic=False,
            fullgraph=True,
            backend="inductor" if jit_compile else "aot_eager",
        )
        def fn(inputs, flag):
            return layer(inputs, training=flag)

        return to_numpy(
            fn(torch.as_tensor(x), torch.as_tensor(bool(training)))
        )
    raise NotImplementedError(backend)


def gradients(layer, x, upstream, **call_kwargs):
    """Gradients of `sum(layer(x, training=True) * upstream)` with respect to
    `x` and to each trainable weight: `(dx, [dw, ...])` as numpy arrays.
    The layer must be built; its state is updated as by one training call.
    """
    backend = keras.backend.backend()
    x = np.asarray(x, "float32")
    upstream = np.asarray(upstream, "float32")
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True, **call_kwargs)
            loss = tf.reduce_sum(y * upstream)
        dx, *dw = tape.gradient(loss, [x, *layer.trainable_variables])
        return to_numpy(dx), [to_numpy(g) for g in dw]
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        non_trainable = [v.value for v in layer.non_trainable_variables]

        def loss(inputs, trainable):
            y, _ = layer.stateless_call(
                trainable, non_trainable, inputs, training=True, **call_kwargs
            )
            return jnp.sum(y * upstream)

        dx, dw = jax.grad(loss, argnums=(0, 1))(
            jnp.asarray(x), [v.value for v in layer.trainable_variables]
        )
        layer(x, training=True, **call_kwargs)  # the same state update
        return to_numpy(dx), [to_numpy(g) for g in dw]
    if backend == "torch":
        import torch

        x = torch.tensor(x, requires_grad=True)
        y = layer(x, training=True, **call_kwargs)
        loss = torch.sum(y * torch.as_tensor(upstream))
        dx, *dw = torch.autograd.grad(
            loss, [x, *(v.value for v in layer.trainable_variables)]
        )
        return to_numpy(dx), [to_numpy(g) for g in dw]
    raise NotImplementedError(backend)
