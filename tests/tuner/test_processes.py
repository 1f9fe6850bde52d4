"""Searches in processes of their own: killed and resumed, distributed
over a chief and two workers, and under a MirroredStrategy."""

import json
import os
import signal
import socket
import time

import pytest

from tests.tuner.helpers import hparams_experiments
from tests.tuner.helpers import hparams_sessions
from tests.tuner.helpers import in_tensorboard
from tests.tuner.helpers import kill
from tests.tuner.helpers import scalar_tags
from tests.tuner.helpers import start
from tests.tuner.helpers import tail
from tests.tuner.helpers import trial_files

pytestmark = pytest.mark.slow

# Each phase waits at most this long (the processes end by themselves
# after `search_process.LIFETIME` seconds whatever happens).
PHASE_TIMEOUT = 180


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(process, log, deadline):
    try:
        process.wait(timeout=max(1.0, deadline - time.time()))
    except Exception as error:
        kill(process)
        raise AssertionError(
            f"{log.name} did not end in time:\n{tail(log)}"
        ) from error
    assert process.returncode == 0, f"{log.name} failed:\n{tail(log)}"


@pytest.mark.tensorflow_only
def test_killed_search_resumes_without_losing_a_trial(tmp_path):
    directory = tmp_path / "search"
    project = directory / "resume"
    result = tmp_path / "result.json"
    first_log = tmp_path / "first.log"
    first = start(["resume", directory, result], first_log)
    try:
        deadline = time.time() + PHASE_TIMEOUT
        while True:
            states = trial_files(project)
            done = [s for s in states.values() if s["status"] == "COMPLETED"]
            running = [s for s in states.values() if s["status"] == "RUNNING"]
            if len(done) >= 2 and running:
                break
            assert first.poll() is None, (
                "the search ended before it could be killed:\n"
                + tail(first_log)
            )
            assert time.time() < deadline, tail(first_log)
            time.sleep(0.1)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        kill(first)
    assert first.returncode == -signal.SIGKILL
    assert not result.exists()
    before = trial_files(project)
    completed = {
        trial_id: state
        for trial_id, state in before.items()
        if state["status"] == "COMPLETED"
    }
    assert 2 <= len(completed) < 6

    second_log = tmp_path / "second.log"
    second = start(["resume", directory, result], second_log)
    try:
        wait(second, second_log, time.time() + PHASE_TIMEOUT)
    finally:
        kill(second)
    assert "Reloading Tuner" in second_log.read_text()
    after = trial_files(project)
    # Nothing completed before the kill was run again or lost.
    for trial_id, state in completed.items():
        assert after[trial_id]["status"] == "COMPLETED"
        assert after[trial_id]["score"] == state["score"]
        assert (
            after[trial_id]["hyperparameters"]["values"]
            == state["hyperparameters"]["values"]
        )
    # The whole grid, each configuration once: 3 placements, two of them
    # with plain or ghost BN.
    assert [s["status"] for s in after.values()] == ["COMPLETED"] * 5
    configurations = {
        (
            s["hyperparameters"]["values"]["batchnorm/placement"],
            s["hyperparameters"]["values"].get("batchnorm/normalization"),
        )
        for s in after.values()
    }
    assert configurations == {
        ("layer-bn-act", "batch"),
        ("layer-bn-act", "ghost"),
        ("layer-act-bn", "batch"),
        ("layer-act-bn", "ghost"),
        ("layer-act", None),
    }
    report = json.loads(result.read_text())
    assert sorted(row["trial_id"] for row in report["rows"]) == sorted(after)


@pytest.mark.tensorflow_only
def test_distributed_grid_search_on_a_chief_and_two_workers(tmp_path):
    env = {
        "KERASTUNER_ORACLE_IP": "127.0.0.1",
        "KERASTUNER_ORACLE_PORT": str(free_port()),
    }
    names = ["chief", "tuner0", "tuner1"]
    processes, logs = {}, {}
    try:
        for name in names:
            logs[name] = tmp_path / f"{name}.log"
            processes[name] = start(
                [
                    "grid",
                    tmp_path / "search",
                    tmp_path / f"{name}.json",
                    tmp_path / "barrier",
                    2,
                ],
                logs[name],
                env={**env, "KERASTUNER_TUNER_ID": name},
            )
        deadline = time.time() + PHASE_TIMEOUT
        for name in names:
            wait(processes[name], logs[name], deadline)
    finally:
        for process in processes.values():
            kill(process)
    results = {
        name: json.loads((tmp_path / f"{name}.json").read_text())
        for name in names
    }
    chief = results["chief"]
    assert chief["ran"] == []
    ran = [results[name]["ran"] for name in ["tuner0", "tuner1"]]
    assert ran[0] and ran[1], ran  # both workers ran trials
    assert set(ran[0]).isdisjoint(ran[1])
    assert sorted(ran[0] + ran[1]) == sorted(chief["statuses"])
    assert list(chief["statuses"].values()) == ["COMPLETED"] * 4
    rows = chief["rows"]
    assert sorted(
        row["slots"]["batchnorm"]["placement"] for row in rows
    ) == sorted(["layer-bn-act", "layer-act-bn", "bn-act-layer", "layer-act"])
    scores = [row["score"] for row in rows]
    assert scores == sorted(scores)


@pytest.mark.tensorflow_only
def test_mirrored_strategy_with_synchronized_batchnorm(tmp_path):
    log = tmp_path / "mirrored.log"
    result = tmp_path / "result.json"
    process = start(["mirrored", tmp_path / "search", result], log)
    try:
        wait(process, log, time.time() + PHASE_TIMEOUT)
    finally:
        kill(process)
    outcome = json.loads(result.read_text())
    assert outcome["replicas"] == 2
    assert list(outcome["statuses"].values()) == ["COMPLETED"] * 2
    assert outcome["synchronized"] == [True]
    assert outcome["variable_types"] == ["MirroredVariable"]
    (moving_mean,) = outcome["moving_mean"]
    assert all(abs(v) < 1e6 for v in moving_mean)
    assert max(abs(v) for v in moving_mean) > 0.0  # trained, not initial
    assert len(outcome["rows"]) == 2


def test_trial_folders_and_hparams_on_jax(tmp_path):
    """keras-tuner gives per-trial folders and HParams only on TensorFlow;
    `BNHyperModel.fit` does it on the other backends as well."""
    pytest.importorskip("jax")
    log = tmp_path / "logs.log"
    result = tmp_path / "result.json"
    process = start(
        ["logs", tmp_path / "search", result],
        log,
        env={"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
    )
    try:
        wait(process, log, time.time() + PHASE_TIMEOUT)
    finally:
        kill(process)
    outcome = json.loads(result.read_text())
    assert outcome["backend"] == "jax"
    trials = outcome["trials"]
    log_dir = outcome["log_dir"]
    names = {
        "0000": "trial_0000-layer-bn-act.batch",
        "0001": "trial_0001-input-bn_layer-bn-act.batch",
    }
    assert sorted(trials) == sorted(names)
    runs = [
        name
        for name in os.listdir(log_dir)
        if os.path.isdir(os.path.join(log_dir, name))
    ]
    assert sorted(runs) == sorted(names.values())
    assert [len(t["bn_tags"]) for t in trials.values()] == [1, 2]
    for trial_id, trial in trials.items():
        assert trial["status"] == "COMPLETED"
        run_dir = os.path.join(log_dir, names[trial_id])
        assert os.path.isdir(os.path.join(run_dir, "train"))
        # The one hyperparameter that varies (the space fixes the slot's).
        input_bn = trial["values"]["input_batchnorm"]
        assert hparams_sessions(run_dir) == [
            (f"trial_{trial_id}", in_tensorboard({"input_batchnorm": input_bn}))
        ]
        tags = scalar_tags(run_dir)
        drift = [t for t in tags if t.endswith("/moving_mean/drift")]
        assert {tag.split("/")[0] for tag in drift} == set(trial["bn_tags"])
        (experiment,) = hparams_experiments(run_dir)
        assert experiment["hparams"] == ["01.input_batchnorm"]
        assert experiment["metrics"][:2] == [
            ("", "epoch/best_val_loss"),
            ("validation", "epoch_loss"),
        ]
    assert not hparams_experiments(log_dir)
