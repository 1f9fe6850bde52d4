"""The `bn-keras` entry points: `python -m bn_keras`, `--help`, `--version`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import bn_keras
from tests.cli.helpers import run_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_python_m_bn_keras_help():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(REPO), env.get("PYTHONPATH", "")] if p
    )
    completed = subprocess.run(
        [sys.executable, "-m", "bn_keras", "--help"],
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.startswith("usage: bn-keras ")
    for command in ("compare", "search", "inspect"):
        assert f"    {command} " in completed.stdout


@pytest.mark.parametrize(
    "command, options",
    [
        ("compare", ["--dataset", "--data", "--target", "--placements",
                     "--normalizations", "--logdir", "--quick", "--verbose"]),
        ("search", ["--hypermodel", "--tuner", "--trials", "--placements",
                    "--logdir", "--quick"]),
        ("inspect", ["MODEL.keras", "--fold"]),
    ],
)
def test_every_command_has_help(command, options, capsys):
    status, out, _ = run_cli(capsys, command, "--help")
    assert status == 0
    assert out.startswith(f"usage: bn-keras {command} ")
    for option in options:
        assert option in out


def test_version(capsys):
    status, out, _ = run_cli(capsys, "--version")
    assert status == 0
    assert out.strip() == f"bn-keras {bn_keras.__version__}"


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: COMMAND"),
        (["train"], "invalid choice: 'train'"),
        (["compare", "--no-such-option"], "unrecognized arguments"),
        (["inspect"], "the following arguments are required: MODEL.keras"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    status, _, err = run_cli(capsys, *argv)
    assert status == 2
    assert message in err
