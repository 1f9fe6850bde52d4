"""What a person reads in TensorBoard from `BatchNormMonitor`: finite
figures on constant channels, tags that do not depend on Keras's automatic
numbering, and the text summary."""

import keras
import numpy as np
import pytest

import bn_keras
from bn_keras.callbacks._figures import constant_batches
from bn_keras.callbacks._tags import batchnorm_tags
from bn_keras.callbacks._tags import to_snake_case
from bn_keras.diagnosis._detectors import dead_channels
from tests.callbacks.helpers import Snapshots
from tests.callbacks.helpers import read_events
from tests.callbacks.helpers import read_layout
from tests.callbacks.helpers import read_scalars
from tests.callbacks.helpers import run_dir

# -- constant channels ---------------------------------------------------------


def keras_updates(start, batch_values, momentum):
    """The moving statistic after each batch, as Keras computes it in
    float32: `s * m + b * (1 - m)`."""
    m = np.float32(momentum)
    s = np.asarray(start, np.float32)
    out = []
    for b in batch_values:
        s = s * m + np.asarray(b, np.float32) * (np.float32(1) - m)
        out.append(s.astype(np.float64))
    return out


@pytest.mark.parametrize("momentum", [0.99, 0.9, 0.7])
@pytest.mark.parametrize("steps", [1, 7, 200])
def test_constant_batches_tells_zero_variance_from_small_variance(
    momentum, steps
):
    rng = np.random.default_rng(steps)
    start = rng.uniform(0.5, 2.0, size=4)
    # Channel 0 only sees constant batches; channel 1 one batch whose
    # variance is a tenth of its moving variance; 2 and 3 ordinary batches.
    batches = np.zeros((steps, 4))
    batches[:, 2:] = rng.uniform(0.5, 2.0, size=(steps, 2))
    batches[-1, 1] = 0.1 * start[1] * momentum ** (steps - 1)
    after = keras_updates(start, batches, momentum)[-1]
    constant = constant_batches(start, after, momentum, steps)
    assert constant.tolist() == [True, False, False, False]
    # No step, or no momentum to invert: nothing can be told.
    assert not constant_batches(start, start, momentum, 0).any()
    assert not constant_batches(start, after, None, steps).any()


def test_constant_batches_of_a_stddev_floor_at_sqrt_epsilon():
    epsilon = np.float32(1e-3)
    floor = np.sqrt(epsilon)  # float32, as the layer computes it
    start = np.array([1.0, 1.0])
    batches = [[floor, np.sqrt(np.float32(2e-3) + epsilon)]] * 5
    after = keras_updates(start, batches, 0.9)[-1]
    constant = constant_batches(
        start, after, 0.9, 5, floor=np.sqrt(np.float64(epsilon))
    )
    assert constant.tolist() == [True, False]


def constant_inputs_model():
    """Three kinds of BN on raw inputs with constant features."""
    inputs = keras.Input((5,))
    plain = keras.layers.BatchNormalization(momentum=0.7, name="plain")
    ghost = bn_keras.layers.BatchNormalization(
        virtual_batch_size=8, momentum=0.7, name="ghost"
    )
    renorm = bn_keras.layers.BatchRenormalization(momentum=0.7, name="renorm")
    merged = keras.layers.Concatenate()(
        [plain(inputs), ghost(inputs), renorm(inputs)]
    )
    model = keras.Model(inputs, keras.layers.Dense(1)(merged))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def constant_features_data(rng, n=64):
    """Features 0 and 1 constant (0 and 3.7), the others of variance ~1, 4
    and 1e-4 (a real variance below epsilon)."""
    x = rng.normal(size=(n, 5)) * [0, 0, 1, 2, 0.01] + [0, 3.7, 1, 0, 0]
    return x.astype("float32"), rng.normal(size=(n, 1)).astype("float32")


def numpy_gap(x, weights, epsilon):
    """Probe gap per channel of a plain BN on raw inputs `x`, NumPy."""
    gamma, beta = weights["gamma"], weights["beta"]
    mean, var = x.mean(0), x.var(0)
    y_batch = gamma * (x - mean) / np.sqrt(var + epsilon) + beta
    y_moving = (
        gamma
        * (x - weights["moving_mean"])
        / np.sqrt(weights["moving_variance"] + epsilon)
        + beta
    )
    rms = np.sqrt(np.mean((y_batch - y_moving) ** 2, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return rms / y_batch.std(0)


def test_constant_channels_are_counted_not_infinite(tmp_path, rng):
    x, y = constant_features_data(rng)
    probe = x[:16]
    model = constant_inputs_model()
    layers = bn_keras.find_batchnorm(model)
    snapshots = Snapshots(layers)
    monitor = bn_keras.callbacks.BatchNormMonitor(tmp_path, probe_data=probe)
    history = model.fit(
        x,
        y,
        batch_size=16,
        epochs=5,
        verbose=0,
        callbacks=[snapshots, monitor],
    )
    scalars = read_scalars(run_dir(tmp_path))
    for tag, values in scalars.items():
        assert np.all(np.isfinite(list(values.values()))), tag
    # Three BN layers of the input: one tag, then a letter for each other.
    tags = ["bn00-input", "bn00b-input", "bn00c-input"]
    for tag in tags:
        for figure in ("moving_variance", "probe"):
            counts = scalars[f"{tag}/{figure}/constant_channels"]
            assert counts == {epoch: 2.0 for epoch in range(1, 6)}, tag
    plain = layers[0]
    for epoch in range(5):
        weights = snapshots.epochs[epoch]["plain"]
        variance = weights["moving_variance"]
        # The constant features' moving variance has decayed 20 times by
        # 0.7, below every real one: left out of the minimum, which is the
        # real variance below epsilon.
        assert variance[:2].max() < variance[2:].min()
        np.testing.assert_allclose(
            scalars["bn00-input/moving_variance/min"][epoch + 1],
            variance[2:].min(),
            rtol=1e-6,
        )
        gap = numpy_gap(probe.astype(np.float64), weights, plain.epsilon)
        # What the figure used to be: 0 / 0 and x / 0.
        assert not np.any(np.isfinite(gap[:2]))
        np.testing.assert_allclose(
            scalars["bn00-input/1_probe_gap"][epoch + 1],
            gap[2:].mean(),
            rtol=1e-4,
        )
        np.testing.assert_allclose(
            scalars["bn00-input/probe/gap_max"][epoch + 1],
            gap[2:].max(),
            rtol=1e-4,
        )
        all_real = [
            snapshots.epochs[epoch][layer.name]["moving_variance"][2:].min()
            for layer in layers
        ]
        np.testing.assert_allclose(
            history.history["bn_min_moving_variance"][epoch],
            min(all_real),
            rtol=1e-6,
        )
    assert np.all(np.isfinite(history.history["bn_max_probe_gap"]))
    # The constant features are a note from the first epoch on, for the
    # three layers. The real variance below epsilon (1e-4) is no collapse:
    # the training batches' variance is below epsilon too (the doctor asks
    # a collapsed channel to vary beyond it).
    assert scalars["alerts/constant-channels"] == {
        epoch: 3.0 for epoch in range(1, 6)
    }
    assert "alerts/collapsed-variance" not in scalars
    table = read_events(run_dir(tmp_path))["batchnorm/layers"][5]
    table = table.item().decode()
    constant = "; ".join(
        f"{tag} ({name}): 2/5 on the training batches, 2/5 on the probe batch"
        for tag, name in zip(tags, ("plain", "ghost", "renorm"))
    )
    # A table of short cells, then each alert's evidence and what to do,
    # in the doctor's words (`bn_keras.diagnosis`).
    assert f"| info | constant-channels | {', '.join(tags)} |" in table
    assert (
        "- **constant-channels** (info): Channels whose input holds one "
        f"value, with no variance to normalize: {constant}. They are left out "
        "of the probe gap and of the smallest moving variance. *What to do:* "
        "Nothing to do when the data holds them"
    ) in table
    # How many layers have an error or a warning first, the alerts that
    # fired at the end of the Overview, the note last.
    overview = read_layout(run_dir(tmp_path)).category[0]
    charts = [list(c.multiline.tag) for c in overview.chart]
    assert charts[0] == ["^alerts/unhealthy_layers$"]
    assert charts[-1] == ["^alerts/constant\\-channels$"]
    assert overview.chart[-1].title.startswith(
        "INFO constant-channels, how many BN layers"
    )


def test_a_channel_constant_in_each_ghost_batch_only(tmp_path, rng):
    """Constant within each ghost batch but not across them: each ghost
    batch normalizes it to beta, so its gap would be infinite."""
    x = rng.normal(size=(32, 3)).astype("float32")
    x[:, 0] = np.repeat([1.0, -2.0, 0.5, 3.0], 8)  # ghost batches of 8
    model = keras.Sequential(
        [
            keras.Input((3,)),
            bn_keras.layers.BatchNormalization(virtual_batch_size=8),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    monitor = bn_keras.callbacks.BatchNormMonitor(tmp_path, probe_data=x)
    model.fit(
        x, x[:, 1:2], batch_size=32, epochs=2, verbose=0, callbacks=[monitor]
    )
    scalars = read_scalars(run_dir(tmp_path))
    assert scalars["bn00-input/probe/constant_channels"] == {1: 1.0, 2: 1.0}
    gap = scalars["bn00-input/probe/gap_max"]
    assert np.all(np.isfinite(list(gap.values())))
    # Across ghost batches the channel varies: the moving variance sees it.
    assert scalars["bn00-input/moving_variance/constant_channels"] == {
        1: 0.0,
        2: 0.0,
    }


def test_every_channel_constant_leaves_the_figures_out(tmp_path):
    x = np.zeros((32, 2), "float32")
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.BatchNormalization(name="idle"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    monitor = bn_keras.callbacks.BatchNormMonitor(tmp_path, probe_data=x)
    history = model.fit(
        x, x[:, :1], batch_size=16, epochs=2, verbose=0, callbacks=[monitor]
    )
    scalars = read_scalars(run_dir(tmp_path))
    assert scalars["bn00-input/probe/constant_channels"] == {1: 2.0, 2: 2.0}
    assert scalars["bn00-input/moving_variance/constant_channels"] == {
        1: 2.0,
        2: 2.0,
    }
    # Undefined figures are not written, rather than written as inf or 0.
    for tag in (
        "bn00-input/1_probe_gap",
        "bn00-input/moving_variance/min",
        "batchnorm/max_probe_gap",
        "batchnorm/min_moving_variance",
    ):
        assert tag not in scalars
    assert np.isnan(history.history["bn_max_probe_gap"]).all()
    assert np.isnan(history.history["bn_min_moving_variance"]).all()


# -- tags ----------------------------------------------------------------------


def automatic_names_model():
    """Automatic names only: BN layers of Keras, of insert_batchnorm
    (`dense_bn`, `input_layer_bn`) and of a BNBlock, in a nested model."""
    inner = keras.Sequential(
        [
            keras.Input((6,)),
            bn_keras.layers.BNBlock(keras.layers.Dense(6), activation="relu"),
        ]
    )
    base = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6, activation="relu"), inner]
    )
    model = bn_keras.insert_batchnorm(
        base, placement="layer-bn-act", input_batchnorm=True
    )
    model = keras.Sequential(
        [model, keras.layers.BatchNormalization(), keras.layers.Dense(1)]
    )
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_two_models_of_one_architecture_log_the_same_tags(tmp_path, rng):
    x = rng.normal(size=(32, 4)).astype("float32")
    runs = []
    for index in range(2):
        model = automatic_names_model()
        log_dir = tmp_path / f"run{index}"
        model.fit(
            x,
            x[:, :1],
            batch_size=16,
            epochs=1,
            verbose=0,
            callbacks=[bn_keras.callbacks.BatchNormMonitor(log_dir)],
        )
        names = [layer.name for layer in bn_keras.find_batchnorm(model)]
        runs.append(
            (
                names,
                set(read_events(run_dir(log_dir))),
                [c.title for c in read_layout(run_dir(log_dir)).category],
            )
        )
    (names_a, tags_a, titles_a), (names_b, tags_b, titles_b) = runs
    # Keras numbered the second model's layers on from the first's...
    assert not set(names_a) & set(names_b)
    # ...yet both runs log one tag set and one layout: the input's BN, the
    # first Dense's, the nested block's Dense's, and a second BN of that
    # Dense's output (after its activation).
    assert tags_a == tags_b
    assert (
        titles_a
        == titles_b
        == [
            "Overview",
            "bn00-input",
            "bn01-dense",
            "bn02-dense",
            "bn02b-dense",
        ]
    )


def test_tags_keep_the_names_the_user_gave():
    inputs = keras.Input((4,), name="pixels")
    x = keras.layers.Dense(6, name="hidden")(inputs)
    block = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(6),
            keras.layers.BatchNormalization(name="bn"),
        ],
        name="block_a",
    )
    x = block(keras.layers.Dense(6)(x))
    x = keras.Sequential(
        [keras.Input((6,)), keras.layers.BatchNormalization()]
    )(x)
    model = keras.Model(inputs, x)
    model = bn_keras.insert_batchnorm(
        model, placement="layer-bn-act", input_batchnorm=True
    )
    tagged = [(layer.name, tag) for layer, tag in batchnorm_tags(model)]
    # Named after what they normalize, never after their own names.
    assert tagged == [
        ("pixels_bn", "bn00-input"),
        ("hidden_bn", "bn01-hidden"),  # the user's name of its layer
        (tagged[2][0], "bn02-dense"),  # an automatic name: the class
        ("bn", "bn03-block_a.dense"),  # inside the user's block_a
        (tagged[4][0], "bn03b-block_a.dense"),  # a second BN of that Dense
    ]


def base_model(kind):
    """A small CNN or MLP without BN, as `bn-keras compare` builds them."""
    if kind == "cnn":
        body = [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
        ]
    else:
        body = [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(8, activation="relu"),
        ]
    return keras.Sequential([*body, keras.layers.Dense(3)])


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_the_bn_of_one_base_layer_has_one_tag_in_every_placement(kind):
    """`insert_batchnorm` names a BN after the layer it serves: after it
    (`layer-bn-act`, `layer-act-bn`), so that it normalizes that layer's
    output, or before it (`bn-act-layer`), so that it normalizes the
    output of the weight layer before (none before the first). The
    tag names the layer whose output a BN normalizes: the same in every
    placement."""
    base = base_model(kind)
    weighted = [layer.name for layer in base.layers if layer.weights]
    classes = {
        layer.name: to_snake_case(type(layer).__name__) for layer in base.layers
    }

    def tag_of(index):
        if index < 0:
            return "bn00-input"
        return f"bn{index + 1:02d}-{classes[weighted[index]]}"

    seen = {}
    for placement in ("layer-bn-act", "layer-act-bn", "bn-act-layer"):
        model = bn_keras.insert_batchnorm(base, placement=placement)
        tagged = batchnorm_tags(model)
        assert tagged
        for layer, tag in tagged:
            served = weighted.index(layer.name.removesuffix("_bn"))
            before = placement == "bn-act-layer"
            assert tag == tag_of(served - 1 if before else served)
            seen.setdefault(tag, set()).add(placement)
    # The hidden layers' BN in every placement; pre-activation puts no BN
    # on the model's input (the first layer's input is left alone).
    assert "bn00-input" not in seen
    assert len(seen) == len(weighted) - 1
    assert all(len(placements) == 3 for placements in seen.values())


# -- the text summary ----------------------------------------------------------


class KillFirstTwo(keras.constraints.Constraint):
    def __call__(self, w):
        return w * keras.ops.convert_to_tensor([0.0, 0.0, 1.0, 1.0])


def test_text_summary_lists_placement_settings_and_alerts(tmp_path, rng):
    x = rng.normal(size=(64, 4)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(4, activation="relu", name="hidden"),
            keras.layers.BatchNormalization(
                momentum=0.9, gamma_constraint=KillFirstTwo(), name="after"
            ),
            keras.layers.Dense(4, name="project"),
            bn_keras.layers.BatchNormalization(
                virtual_batch_size=8,
                renorm=True,
                renorm_clipping={"rmax": 3.0, "dmax": 5.0},
            ),
            keras.layers.ReLU(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    monitor = bn_keras.callbacks.BatchNormMonitor(tmp_path)
    model.fit(
        x, x[:, :1], batch_size=32, epochs=2, verbose=0, callbacks=[monitor]
    )
    texts = read_events(run_dir(tmp_path))["batchnorm/layers"]
    assert sorted(texts) == [0, 2]  # as training begins, after epoch 2
    first, last = (texts[step].item().decode() for step in (0, 2))
    rows = [
        "| bn01-hidden | after | Dense(relu) -> BN -> Dense (after act) "
        "| plain, 0.9 |",
        "| bn02-project | batch_normalization | Dense -> BN -> ReLU "
        "(before act) | ghost(8)+renorm (rmax 3, dmax 5), 0.99 |",
    ]
    for table in (first, last):
        layer_rows = [
            r
            for r in table.splitlines()
            if r.startswith("| bn") and r.count("|") == 5
        ]
        assert layer_rows == rows
        # The run's HParams: the model's BN described.
        assert "| normalization | mixed |" in table
    # The alerts first, with what to do: none yet at the start (gamma
    # starts at 1).
    assert "**Alerts**\n\nNo alerts.\n\n| hyperparameter" in first
    assert last.index("**Alerts**") < last.index("| hyperparameter")
    assert "| info | dead-channels | bn01-hidden |" in last
    # In the words of `bn-keras doctor`: the same detector.
    finding = dead_channels({"bn01-hidden (after)": (2, 4)})
    assert (
        f"- **dead-channels** (info): {finding.message} *What to do:* "
        f"{finding.remedy}\n"
    ) in last
    assert "bn01-hidden (after) 2/4" in finding.message


class Opaque(keras.layers.Layer):
    """A layer Keras cannot make a config of (an object argument)."""

    def __init__(self, thing, **kwargs):
        super().__init__(**kwargs)
        self.thing = thing

    def call(self, x):
        return x


def test_a_model_without_a_config_is_monitored_all_the_same(tmp_path, rng):
    inputs = keras.Input((4,))
    x = Opaque(object())(keras.layers.Dense(4)(inputs))
    outputs = keras.layers.Dense(1)(keras.layers.BatchNormalization()(x))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(NotImplementedError):
        model.get_config()  # the graph of layers cannot be read
    x = rng.normal(size=(32, 4)).astype("float32")
    monitor = bn_keras.callbacks.BatchNormMonitor(tmp_path)
    model.fit(
        x, x[:, :1], batch_size=16, epochs=1, verbose=0, callbacks=[monitor]
    )
    # Numbered among themselves, as their graph cannot be read.
    assert "bnx01/moving_mean/drift" in read_scalars(run_dir(tmp_path))
    table = read_events(run_dir(tmp_path))["batchnorm/layers"][0]
    # Where it sits is unknown; the rest of its row is there.
    assert "| bnx01 | batch_normalization | ? | plain, 0.99 |" in (
        table.item().decode()
    )
