"""What a user installs: the wheel and the sdist, the extras and their
errors, what `import bn_keras` imports, and the torch installer of
`make install-torch` (tools/install_torch.py)."""

import glob
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL_TORCH = os.path.join(ROOT, "tools", "install_torch.py")


def _python(code, *args, env=None, cwd=None, python=sys.executable):
    """Runs `code` in a new interpreter with the worktree's bn_keras first
    on the path; returns the completed process."""
    full_env = dict(os.environ)
    full_env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    full_env["PYTHONPATH"] = os.pathsep.join(
        [ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    full_env.update(env or {})
    return subprocess.run(
        [python, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=600,
        check=False,
    )


def _report(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_on_jax_imports_no_tensorflow():
    # (Keras itself imports scikit-learn and matplotlib where installed.)
    pytest.importorskip("jax")  # in the dev extra, which `make test` uses
    result = _python(
        """
        import json
        import sys

        import numpy as np

        import bn_keras

        bn_keras.layers.BatchNormalization()(np.ones((2, 3), "float32"))
        print(json.dumps({
            "imported": sorted(
                name for name in ("tensorflow", "keras_tuner")
                if name in sys.modules
            ),
        }))
        """,
        env={"KERAS_BACKEND": "jax"},
    )
    report = _report(result)
    assert report["imported"] == []


def test_tuner_without_keras_tuner_names_the_extra():
    pytest.importorskip("jax")
    result = _python(
        """
        import sys

        sys.modules["keras_tuner"] = None  # as if not installed
        import bn_keras

        try:
            bn_keras.tuner
        except ModuleNotFoundError as error:
            print(error)
        """,
        env={"KERAS_BACKEND": "jax"},  # starts faster than TensorFlow
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == (
        "bn_keras.tuner needs keras-tuner, which is not installed. "
        "Install it with: pip install 'bn-keras[tuner]'"
    )


@pytest.mark.parametrize(
    "command, options, missing",
    [
        (
            "compare",
            "--epochs 1",
            "scikit-learn and matplotlib, which are not installed. Install "
            "them",
        ),
        (
            "search",
            "--epochs 1",
            "scikit-learn, matplotlib and keras-tuner, which are not "
            "installed. Install them",
        ),
        (
            "doctor",
            "model.keras --dataset digits",
            "scikit-learn, which is not installed. Install it",
        ),
    ],
)
def test_command_without_cli_extra_names_it(command, options, missing):
    # Started as the command (argv[0] is bn-keras), with the libraries of
    # the `cli` extra missing: one line, before any training starts.
    result = _python(
        f"""
        import runpy
        import sys

        for name in ("sklearn", "matplotlib", "keras_tuner"):
            sys.modules[name] = None
        sys.argv = ["bn-keras", "{command}", *"{options}".split()]
        runpy.run_module("bn_keras", run_name="__main__")
        """
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        f"bn-keras {command}: error: this command needs {missing} with: "
        "pip install 'bn-keras[cli]'"
    ]


def test_inspect_needs_no_cli_extra(tmp_path):
    pytest.importorskip("jax")
    result = _python(
        """
        import sys

        for name in ("sklearn", "matplotlib", "keras_tuner"):
            sys.modules[name] = None
        import keras

        import bn_keras.cli

        model = keras.Sequential([
            keras.Input((3,)), bn_keras.layers.BatchNormalization(name="bn")
        ])
        model.save(sys.argv[1])
        sys.exit(bn_keras.cli.main(["inspect", sys.argv[1]]))
        """,
        str(tmp_path / "small.keras"),
        env={"KERAS_BACKEND": "jax"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bn" in result.stdout


# tools/install_torch.py, run with a fake `pip` module first on the path:
# it logs its arguments and fails where FAKE_PIP_FAIL says.
FAKE_PIP = textwrap.dedent(
    """
    import json
    import os
    import sys

    with open(os.environ["FAKE_PIP_LOG"], "a") as log:
        log.write(json.dumps(sys.argv[1:]) + "\\n")
    fail = os.environ.get("FAKE_PIP_FAIL", "")
    sys.exit(1 if fail and any(fail in arg for arg in sys.argv[1:]) else 0)
    """
)


def _install_torch(tmp_path, *args, fail=""):
    fake = tmp_path / "fake" / "pip"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(FAKE_PIP)
    log = tmp_path / "pip.log"
    log.write_text("")
    result = subprocess.run(
        [sys.executable, INSTALL_TORCH, *args],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": str(tmp_path / "fake"),
            "FAKE_PIP_LOG": str(log),
            "FAKE_PIP_FAIL": fail,
        },
        timeout=60,
        check=False,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return result, calls


def test_install_torch_takes_the_cpu_build_where_pip_finds_it(tmp_path):
    index = ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
    result, calls = _install_torch(tmp_path, "2.13.0", *index)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "install-torch: installing torch==2.13.0+cpu, the CPU build of torch."
    ]
    assert calls == [
        ["install", "--dry-run", "--no-deps", "torch==2.13.0+cpu", *index],
        ["install", "--quiet", "torch==2.13.0+cpu", *index],
    ]


def test_install_torch_falls_back_to_the_index_build(tmp_path):
    result, calls = _install_torch(tmp_path, "2.13.0", fail="+cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "install-torch: no torch==2.13.0+cpu where pip looks (find-links, "
        "TORCH_INDEX); installing the index's torch==2.13.0 (on Linux with "
        "about 3 GB of CUDA libraries)."
    ]
    assert calls == [
        ["install", "--dry-run", "--no-deps", "torch==2.13.0+cpu"],
        ["install", "--quiet", "torch==2.13.0"],
    ]


def test_install_torch_returns_pip_failure_and_usage(tmp_path):
    result, calls = _install_torch(tmp_path, "9.9", fail="torch==9.9")
    assert result.returncode == 1
    assert calls[-1] == ["install", "--quiet", "torch==9.9"]
    result, calls = _install_torch(tmp_path, "--quiet")
    assert result.returncode == 2
    assert "Received: '--quiet'" in result.stderr
    assert calls == []


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The sdist and the wheel, built once as a user would (`python -m
    build`: the sdist first, then the wheel from the unpacked sdist)."""
    pytest.importorskip("build")  # in the dev and test extras
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), ROOT],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    (sdist,) = glob.glob(str(out / "*.tar.gz"))
    (wheel,) = glob.glob(str(out / "*.whl"))
    return sdist, wheel


@pytest.mark.slow
def test_classifiers_are_known_to_the_package_index():
    """PyPI refuses an upload with a classifier it does not list."""
    import configparser

    from trove_classifiers import classifiers

    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    declared = config["metadata"]["classifiers"].split("\n")
    declared = [line.strip() for line in declared if line.strip()]
    assert declared
    assert [c for c in declared if c not in classifiers] == []


def test_wheel_and_sdist(built, tmp_path):
    sdist, wheel = built
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(
            next(n for n in names if n.endswith(".dist-info/METADATA"))
        ).decode()
    # The wheel: the package only, typed, with its license.
    assert {name.split("/")[0] for name in names} == {
        "bn_keras",
        "bn_keras-0.1.0.dist-info",
    }
    assert "bn_keras/py.typed" in names
    assert "bn_keras-0.1.0.dist-info/licenses/LICENSE" in names
    assert (
        "Requires-Dist: tensorflow" not in metadata.split("Provides-Extra")[0]
    )
    assert 'Requires-Dist: tensorflow>=2.16.1; extra == "tensorflow"' in (
        metadata
    )
    # The sdist: the whole project, tests with their conftest.
    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[-1] for name in archive.getnames()}
        archive.extractall(tmp_path / "sdist", filter="data")
    for path in (
        "LICENSE",
        "Makefile",
        "mkdocs.yml",
        "docs/index.md",
        "examples/ghost_batches.py",
        "tests/conftest.py",
        "tests/layer_test_case.py",
        "tools/install_torch.py",
        "bn_keras/py.typed",
    ):
        assert path in members, path
    assert not [name for name in members if "__pycache__" in name]
    # It tests from itself: a test module of the unpacked sdist, with its
    # own bn_keras and conftest.
    (unpacked,) = glob.glob(str(tmp_path / "sdist" / "bn_keras-*"))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + ["tests/test_registry.py"],
        capture_output=True,
        text=True,
        cwd=unpacked,
        env={**os.environ, "PYTHONPATH": unpacked},
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout.splitlines()[-1]


@pytest.mark.slow
def test_wheel_installs_and_trains_on_jax_without_tensorflow(built, tmp_path):
    # A JAX user's install: the wheel with its `jax` extra in a new
    # virtual environment, from the package index (pip's cache reused).
    _, wheel = built
    venv = tmp_path / "venv"
    # Without PYTHONPATH: pip would count what it finds there as installed.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", f"{wheel}[jax]"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    result = _python(
        """
        import importlib.util
        import json
        import sys

        import keras
        import numpy as np

        import bn_keras

        x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
        model = keras.Sequential([
            keras.Input((4,)),
            bn_keras.layers.BatchNormalization(virtual_batch_size=8),
            keras.layers.Dense(1),
        ])
        model.compile("sgd", "mse")
        history = model.fit(x, x[:, :1], batch_size=16, epochs=2, verbose=0)
        print(json.dumps({
            "backend": keras.backend.backend(),
            "file": bn_keras.__file__,
            "tensorflow": importlib.util.find_spec("tensorflow") is not None,
            "losses": history.history["loss"],
            "x": x.tolist(),
            "predictions": model.predict(x, verbose=0).tolist(),
            "weights": [w.tolist() for w in model.get_weights()],
        }))
        """,
        env={"KERAS_BACKEND": "jax", "PYTHONPATH": ""},
        cwd=tmp_path,
        python=python,
    )
    report = _report(result)
    assert report["backend"] == "jax"
    assert report["file"].startswith(str(venv))
    assert report["tensorflow"] is False
    assert len(report["losses"]) == 2
    # Inference of the trained model, from its weights with NumPy: BN with
    # its moving statistics (Keras's epsilon, 1e-3), then the Dense layer.
    gamma, beta, mean, variance, kernel, bias = map(
        np.asarray, report["weights"]
    )
    x = np.asarray(report["x"])
    normalized = (x - mean) / np.sqrt(variance + 1e-3) * gamma + beta
    np.testing.assert_allclose(
        report["predictions"], normalized @ kernel + bias, atol=1e-5
    )
    assert not np.allclose(mean, 0.0)  # the statistics were updated
