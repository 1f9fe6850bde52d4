"""`bn-keras inspect`: one row per BN layer of a saved model, and --fold."""

import keras
import numpy as np
import pytest

import bn_keras
from bn_keras.cli.inspect import Row
from bn_keras.cli.inspect import grouped_notes
from bn_keras.cli.inspect import inspect_model
from tests.cli.helpers import run_cli
from tests.cli.helpers import run_entry_point


def mixed_model():
    """Plain BN in a BNBlock, a ghost BN after an activation, and a renorm
    BN inside a nested Sequential model."""
    inputs = keras.Input((6,), name="features")
    x = bn_keras.layers.BNBlock(
        keras.layers.Dense(8, name="dense_in"),
        activation="relu",
        placement="layer-bn-act",
        name="block",
    )(inputs)
    x = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    x = bn_keras.layers.GhostBatchNormalization(
        virtual_batch_size=4, name="ghost_bn"
    )(x)
    inner = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(4, use_bias=False, name="inner_dense"),
            bn_keras.layers.BatchRenormalization(name="renorm_bn"),
            keras.layers.ReLU(name="inner_relu"),
        ],
        name="inner",
    )
    outputs = keras.layers.Dense(2, name="head")(inner(x))
    return keras.Model(inputs, outputs, name="mixed")


@pytest.fixture
def saved_model(tmp_path):
    """The mixed model with hand-set statistics of the ghost BN layer."""
    model = mixed_model()
    ghost = model.get_layer("ghost_bn")
    ghost.moving_mean.assign(
        np.array([-1.5, 0, 0, 0, 0, 0, 0, 2.5], "float32")
    )
    ghost.moving_variance.assign(
        np.array([1e-5, 1, 2, 3, 1, 1, 1, np.nan], "float32")
    )
    ghost.gamma.assign(np.array([0, 5e-4, 1, 1, 1, 1, -1, 1], "float32"))
    path = tmp_path / "mixed.keras"
    model.save(path)
    return path


def test_inspect_rows(saved_model):
    rows = inspect_model(keras.saving.load_model(saved_model))
    assert [row.path for row in rows] == [
        "block/batch_normalization",
        "ghost_bn",
        "inner/renorm_bn",
    ]
    assert [row.kind for row in rows] == ["plain", "ghost(4)", "renorm"]
    assert [(row.before, row.after) for row in rows] == [
        ("Dense", "relu"),
        ("Dense(relu)", "Sequential"),
        ("Dense", "ReLU"),
    ]
    assert [row.position for row in rows] == [
        "before act",
        "after act",
        "before act",
    ]
    assert [row.channels for row in rows] == [8, 8, 4]
    assert [row.dead for row in rows] == [0, 2, 0]
    assert [row.foldable for row in rows] == [True, False, True]
    assert rows[1].fold_note == "'hidden' has a non-linear activation before it"
    ghost = rows[1]
    assert ghost.mean_range == (-1.5, 2.5)
    assert ghost.variance_range == pytest.approx((1e-5, 3.0))
    assert ghost.warnings == [
        "non-finite moving_variance in 1/8 channels",
        "collapsed: moving variance < epsilon in 1/8 channels",
    ]
    for row in (rows[0], rows[2]):
        assert row.warnings == [
            "statistics at their initial values (never trained?)"
        ]


def test_inspect_prints_one_row_per_layer(saved_model, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    status, out, err = run_cli(capsys, "inspect", saved_model)
    assert status == 0, err
    assert f"{saved_model}: Functional 'mixed'" in out
    assert "3 batch normalization layers" in out
    lines = out.splitlines()
    rows = [
        line.split()
        for line in lines
        if line.strip()[:1].isdigit() and ": " not in line
    ]
    assert [row[:3] for row in rows] == [
        ["1", "block/batch_normalization", "plain"],
        ["2", "ghost_bn", "ghost(4)"],
        ["3", "inner/renorm_bn", "renorm"],
    ]
    assert rows[1][3:] == [
        "Dense(relu)", "->", "Sequential", "-1.5..2.5", "1e-05..3", "2/8",
        "no", "2",
    ]
    assert lines[-5:] == [
        "2 layers (#1, #3): warning: statistics at their initial values "
        "(never trained?)",
        "#2 ghost_bn: not foldable: 'hidden' has a non-linear activation "
        "before it",
        "#2 ghost_bn: warning: non-finite moving_variance in 1/8 channels",
        "#2 ghost_bn: warning: collapsed: moving variance < epsilon in 1/8 "
        "channels",
        "(--details: one line per layer and note, and each layer's position, "
        "momentum and epsilon)",
    ]
    assert all(len(line.rstrip()) <= 120 for line in lines[1:])


def test_inspect_cuts_the_neighbours_to_fit(saved_model, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    status, out, err = run_cli(capsys, "inspect", saved_model)
    assert status == 0, err
    lines = out.splitlines()
    assert all(len(line.rstrip()) <= 100 for line in lines[1:])
    rows = [line.split() for line in lines if line[:3].strip().isdigit()]
    # The paths stay whole; the longest neighbours lose their end.
    assert [row[1] for row in rows] == [
        "block/batch_normalization", "ghost_bn", "inner/renorm_bn"
    ]
    assert rows[1][3:5] == ["Dense(relu)", "->…"]
    assert rows[1][5:] == ["-1.5..2.5", "1e-05..3", "2/8", "no", "2"]


def test_inspect_details(saved_model, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    status, out, err = run_cli(capsys, "inspect", saved_model, "--details")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[2].split() == [
        "#", "layer", "kind", "before", "after", "position", "momentum",
        "epsilon", "moving", "mean", "moving", "var", "dead", "fold", "warn",
    ]
    rows = [line.split() for line in lines if line[:3].strip().isdigit()]
    assert rows[1] == [
        "2", "ghost_bn", "ghost(4)", "Dense(relu)", "Sequential", "after",
        "act", "0.99", "0.001", "-1.5..2.5", "1e-05..3", "2/8", "no", "2",
    ]
    assert lines[-5:] == [
        "  1  block/batch_normalization: warning: statistics at their "
        "initial values (never trained?)",
        "  2  ghost_bn: not foldable: 'hidden' has a non-linear activation "
        "before it",
        "  2  ghost_bn: warning: non-finite moving_variance in 1/8 channels",
        "  2  ghost_bn: warning: collapsed: moving variance < epsilon in 1/8 "
        "channels",
        "  3  inner/renorm_bn: warning: statistics at their initial values "
        "(never trained?)",
    ]


def _row(path, warnings=(), fold_note=""):
    """A `Row` with the given notes and placeholder figures."""
    return Row(
        path=path, kind="plain", before="Dense", after="relu",
        position="before act", channels=8, mean_range=(0.0, 0.0),
        variance_range=(1.0, 1.0), dead=0, foldable=not fold_note,
        fold_note=fold_note, warnings=list(warnings), momentum=0.99,
        epsilon=1e-3,
    )


def test_notes_shared_by_layers_are_one_line():
    collapsed = "collapsed: moving variance < epsilon in {}/{} channels"
    rows = [
        _row("a", [collapsed.format(1, 8)], "'d1' has an activation"),
        _row("b", [collapsed.format(3, 64)], "'d2' has an activation"),
        _row("c", ["not built (no statistics)"]),
        _row("d", [collapsed.format(2, 16)]),
    ]
    # In the order of the rows, a layer's reason not to fold first.
    assert grouped_notes(rows) == [
        "2 layers (#1-2): not foldable: '…' has an activation",
        "3 layers (#1-2, #4): warning: collapsed: moving variance < epsilon "
        "in 6/88 channels",
        "#3 c: warning: not built (no statistics)",
    ]


def test_long_lists_of_rows_end_with_an_ellipsis():
    rows = [_row(f"bn{i}", ["not built (no statistics)"]) for i in range(20)]
    del rows[1::2]  # rows 1, 3, 5, ..., 19 of the original numbering
    lines = grouped_notes(rows)
    assert lines == [
        "10 layers (#1-10): warning: not built (no statistics)"
    ]
    rows = [_row(f"bn{i}", ["not built (no statistics)"] * (i % 2)) for i in
            range(1, 21)]
    assert grouped_notes(rows) == [
        "10 layers (#1, #3, #5, #7, #9, #11, …): warning: not built (no "
        "statistics)"
    ]


def test_inspect_fold_writes_an_equivalent_model(tmp_path, capsys):
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(8, use_bias=False, name="dense"),
            bn_keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(name="relu"),
            keras.layers.Dense(3, name="head"),
            bn_keras.layers.BatchNormalization(name="bn_out"),
        ],
        name="small",
    )
    model.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(64, 5)).astype("float32")
    model.fit(x, x[:, :3], epochs=2, batch_size=16, verbose=0)
    source, out_path = tmp_path / "small.keras", tmp_path / "folded.keras"
    model.save(source)

    status, out, err = run_cli(
        capsys, "inspect", source, "--fold", out_path
    )
    assert status == 0, err
    assert f"folded 2 of 2 BN layers (0 kept); wrote {out_path}" in out
    assert "largest |output difference| from the original" in out
    folded = keras.saving.load_model(out_path)
    assert bn_keras.find_batchnorm(folded) == []
    np.testing.assert_allclose(
        folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5
    )


def test_inspect_model_without_batchnorm(tmp_path, capsys):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = tmp_path / "plain.keras"
    model.save(path)
    status, out, _ = run_cli(capsys, "inspect", path)
    assert status == 0
    assert "0 batch normalization layers" in out


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("absent.keras", None, "{path}: no such file"),
        ("model.h5", b"x", "{path}: expected a model saved as .keras"),
        ("broken.keras", b"not a zip file", "{path}: not a valid .keras"),
    ],
)
def test_inspect_unreadable_model(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    status, _, err = run_cli(capsys, "inspect", path)
    assert status == 2
    assert err.startswith("bn-keras inspect: error: ")
    assert message.format(path=path) in err


def test_inspect_fold_needs_a_keras_file(saved_model, tmp_path, capsys):
    status, _, err = run_cli(
        capsys, "inspect", saved_model, "--fold", tmp_path / "out.h5"
    )
    assert status == 2
    assert (
        f"--fold {tmp_path / 'out.h5'}: the output must be a .keras file"
        in err
    )
    assert not (tmp_path / "out.h5").exists()


def test_inspect_subclassed_model_says_why_nothing_folds():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.dense = keras.layers.Dense(3)
            self.bn = keras.layers.BatchNormalization(name="bn")

        def call(self, x):
            return self.bn(self.dense(x))

    net = Net()
    net(np.ones((2, 4), "float32"))
    rows = inspect_model(net)
    assert [(row.path, row.foldable) for row in rows] == [("net/bn", False)]
    assert rows[0].fold_note == (
        "`fold_batchnorm` rewrites a model's graph of layers, and a "
        "subclassed model has none to rewrite: its forward pass is the "
        "Python code of its `call()` method, which bn_keras cannot read or "
        "change"
    )
    assert (rows[0].before, rows[0].after) == ("input", "output")


def raw_op_model():
    """BN layers next to raw tensor operations (`b * 2.0`, `keras.ops`);
    `dense` feeds both `bn` and a raw relu."""
    inputs = keras.Input((8,), name="x")
    d = keras.layers.Dense(4, use_bias=False, name="dense")(inputs)
    b = keras.layers.BatchNormalization(name="bn")(d)
    c = keras.layers.Dense(4, use_bias=False, name="dense_2")(b * 2.0)
    c = keras.layers.BatchNormalization(name="bn_2")(c)
    return keras.Model(inputs, c + keras.ops.relu(d), name="raw")


def test_inspect_rows_next_to_raw_ops():
    rows = inspect_model(raw_op_model())
    assert [(r.path, r.before, r.after, r.foldable) for r in rows] == [
        ("bn", "Dense", "Multiply (op)", False),
        ("bn_2", "Dense", "Add (op)", True),
    ]
    assert rows[0].fold_note == "the output of 'dense' is used elsewhere too"


def test_inspect_and_fold_a_saved_model_with_raw_ops(tmp_path, capsys):
    model = raw_op_model()
    for layer in bn_keras.find_batchnorm(model):
        layer.moving_mean.assign(np.linspace(-1, 1, 4).astype("float32"))
        layer.moving_variance.assign(np.linspace(0.5, 2, 4).astype("float32"))
    source, out_path = tmp_path / "raw.keras", tmp_path / "folded.keras"
    model.save(source)
    status, out, err = run_cli(capsys, "inspect", source, "--fold", out_path)
    assert status == 0, err
    assert "2 batch normalization layers" in out
    note = "#1 bn: not foldable: the output of 'dense' is used elsewhere"
    assert note in out
    assert f"folded 1 of 2 BN layers (1 kept); wrote {out_path}" in out
    folded = keras.saving.load_model(out_path)
    assert [bn.name for bn in bn_keras.find_batchnorm(folded)] == ["bn"]
    x = np.random.default_rng(0).normal(size=(6, 8)).astype("float32")
    np.testing.assert_allclose(folded(x), model(x), atol=1e-5)


def test_inspect_model_with_raw_ops_and_no_batchnorm(tmp_path, capsys):
    # As ConvNeXt: residual adds as raw operations, no BN layer.
    inputs = keras.Input((4,))
    h = keras.layers.Dense(4)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(h + inputs))
    path = tmp_path / "residual.keras"
    model.save(path)
    status, out, err = run_cli(capsys, "inspect", path)
    assert status == 0, err
    assert "0 batch normalization layers" in out


@pytest.mark.slow
def test_inspect_resnet50_fits_120_columns(tmp_path, capsys, monkeypatch):
    model = keras.applications.ResNet50(
        weights=None, input_shape=(64, 64, 3), classes=5
    )  # 53 BN layers, untrained
    path = tmp_path / "resnet50.keras"
    model.save(path)
    monkeypatch.setenv("COLUMNS", "120")
    status, out, err = run_cli(capsys, "inspect", path)
    assert status == 0, err
    lines = out.splitlines()
    assert all(len(line.rstrip()) <= 120 for line in lines[1:])
    # One line per layer: the title, the table's top margin, header and
    # rule, 53 rows, its bottom margin, one note and the hint.
    assert len(lines) == 1 + 3 + 53 + 1 + 2
    rows = [line.split() for line in lines[4:57]]
    assert [row[0] for row in rows] == [str(i) for i in range(1, 54)]
    assert rows[0] == [
        "1", "conv1_bn", "plain", "Conv2D", "->", "relu", "0..0", "1..1",
        "0/64", "yes", "1",
    ]
    assert rows[-1] == [
        "53", "conv5_block3_3_bn", "plain", "Conv2D", "->", "Add", "0..0",
        "1..1", "0/2048", "yes", "1",
    ]
    assert lines[-2:] == [
        "53 layers (#1-53): warning: statistics at their initial values "
        "(never trained?)",
        "(--details: one line per layer and note, and each layer's position, "
        "momentum and epsilon)",
    ]
    assert out.count("statistics at their initial values") == 1


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_fold_of_a_channels_first_model_where_tensorflow_cannot_run_it(
    tmp_path, channels_first
):
    """Without oneDNN and a GPU, TensorFlow cannot run the folded
    channels-first model: `--fold` writes it and says why it was not
    checked, instead of failing with TensorFlow's error."""
    model = keras.Sequential(
        [
            keras.Input((3, 6, 7)),
            keras.layers.Conv2D(4, 3, data_format="channels_first", name="c"),
            keras.layers.BatchNormalization(axis=1, name="bn"),
        ],
        name="nchw",
    )
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.linspace(-1, 1, 4).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2, 4).astype("float32"))
    source, out_path = tmp_path / "nchw.keras", tmp_path / "folded.keras"
    model.save(source)
    completed = run_entry_point(
        "inspect", source, "--fold", out_path,
        TF_ENABLE_ONEDNN_OPTS=0, CUDA_VISIBLE_DEVICES="",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.splitlines()[-2:] == [
        f"folded 1 of 1 BN layers (0 kept); wrote {out_path}",
        "the folded model was not checked: running it here fails: the model "
        "has channels-first layers ('c'), and TensorFlow runs channels-first "
        "convolutions on a GPU, or on the CPU only through oneDNN, which is "
        "off in this process: set TF_ENABLE_ONEDNN_OPTS=1 before TensorFlow "
        "starts, use a GPU, or use the JAX or PyTorch backend "
        "(KERAS_BACKEND=jax)",
    ]
    folded = keras.saving.load_model(out_path)
    assert [layer.name for layer in folded.layers] == ["c"]
    x = np.random.default_rng(0).normal(size=(2, 3, 6, 7)).astype("float32")
    np.testing.assert_allclose(
        channels_first.run(folded, x), channels_first.run(model, x), atol=1e-5
    )
