"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1."""

import pytest

from tests.distribute import helpers
from tests.distribute import scenario

pytestmark = [pytest.mark.tensorflow_only, pytest.mark.slow]


def start_workers(processes, out, phase, *args):
    ports = ",".join(map(str, helpers.free_ports(2)))
    return [
        processes.start(
            f"{phase}-worker{i}",
            "train",
            "--ports",
            ports,
            "--index",
            i,
            "--out",
            out,
            "--phase",
            phase,
            "--lifetime",
            helpers.LIFETIME,
            *args,
        )
        for i in range(2)
    ]


def test_two_workers_train_like_one_process_on_the_global_batches(
    tmp_path, uninterrupted
):
    """Two workers (`TF_CONFIG`, one CPU replica each) train a model with
    two synchronized BN layers (ghost batches of 4 within each worker's 8
    samples, then renorm with a schedule) for 2 epochs of 4 steps, worker
    `i` taking samples `[8i, 8i + 8)` of every global batch of 16. After
    every step both workers hold the same weights, moving statistics and
    renorm counter as one process running `fit` on the global batches.
    """
    with helpers.Processes(tmp_path) as processes:
        workers = start_workers(processes, tmp_path, "run")
        processes.wait(workers, helpers.LIFETIME - 20)
    results = [
        helpers.read_json(tmp_path / f"result-run-{i}.json") for i in range(2)
    ]
    steps = scenario.EPOCHS * scenario.STEPS_PER_EPOCH
    for i, result in enumerate(results):
        assert result["epochs_run"] == scenario.EPOCHS
        states = result["states"]
        assert len(states) == steps + 1
        for k, state in enumerate(states):
            helpers.assert_training_state_close(
                state, uninterrupted[k], f"worker {i}, step {k}"
            )
    first, second = (result["final"] for result in results)
    # Identical, not merely close: both apply the same all-reduced values.
    assert first["bn"] == second["bn"]
    assert first["renorm_step"] == second["renorm_step"] == [[steps]]
    helpers.assert_training_state_close(
        first, uninterrupted[steps], "final state"
    )
