"""The package surface: `bn_keras.__all__`, and keras-tuner loaded lazily."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest

import bn_keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a fresh interpreter: in the test session other tests have already
# imported keras_tuner and bn_keras.tuner.
SCRIPT = textwrap.dedent(
    """
    import json
    import os
    import sys

    import keras

    import bn_keras

    report = {
        "tuner_after_import": "keras_tuner" in sys.modules,
        "public": sorted(n for n in vars(bn_keras) if not n.startswith("_")),
        "dir_has_tuner": "tuner" in dir(bn_keras),
    }
    model = keras.Sequential(
        [
            keras.Input((4,)),
            bn_keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(2, name="head"),
        ]
    )
    path = os.path.join(sys.argv[1], "small.keras")
    model.save(path)

    import bn_keras.cli

    report["inspect_status"] = bn_keras.cli.main(["inspect", path])
    report["tuner_after_inspect"] = "keras_tuner" in sys.modules
    hypermodel = bn_keras.tuner.BNSearchMLP(
        3, input_shape=(4,), num_layers=1, units=8
    )
    report["tuner_after_access"] = "keras_tuner" in sys.modules
    import keras_tuner

    built = hypermodel.build(keras_tuner.HyperParameters())
    report["built_layers"] = [layer.name for layer in built.layers]
    report["built_output"] = list(built.output_shape)
    print("REPORT " + json.dumps(report))
    """
)


def _run_fresh(tmp_path):
    env = dict(os.environ)
    env["KERAS_BACKEND"] = keras.backend.backend()
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT, *filter(None, [env.get("PYTHONPATH")])]
    )
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    reports = [
        line[len("REPORT ") :]
        for line in result.stdout.splitlines()
        if line.startswith("REPORT ")
    ]
    assert result.returncode == 0 and reports, result.stderr[-3000:]
    return json.loads(reports[-1])


def test_tuner_loads_on_first_use(tmp_path):
    report = _run_fresh(tmp_path)
    assert report["tuner_after_import"] is False
    assert report["inspect_status"] == 0
    assert report["tuner_after_inspect"] is False
    assert report["tuner_after_access"] is True
    assert report["dir_has_tuner"] is True
    assert report["built_layers"] == ["block_0", "head"]
    assert report["built_output"] == [None, 3]
    # Everything public after `import bn_keras`, and the lazy `tuner`, is
    # listed in `__all__`, and nothing else.
    assert sorted([*report["public"], "tuner"]) == sorted(
        n for n in bn_keras.__all__ if n != "__version__"
    )


def test_all_names_resolve():
    for name in bn_keras.__all__:
        assert getattr(bn_keras, name) is not None, name
    assert bn_keras.tuner.BNSearchMLP.__module__ == (
        "bn_keras.tuner.bn_search_mlp"
    )
    assert bn_keras.insert_batchnorm is bn_keras.models.insert_batchnorm


def test_unknown_attribute_raises():
    with pytest.raises(
        AttributeError, match="^module 'bn_keras' has no attribute 'tunr'$"
    ):
        _ = bn_keras.tunr
