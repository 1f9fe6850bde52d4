"""Fault tolerance: `keras.callbacks.BackupAndRestore`, real SIGKILLs.

Both tests train `scenario.train_model` (ghost BN, then renorm with a
`RenormClipping` schedule, both synchronized) for 2 epochs of 4 steps, with
a backup every 2 batches, so the last backup before the kill holds the
state after step 6 (epoch 1, batch 1). Each process writes a marker after
its 7th step and waits; the test then kills every process with SIGKILL,
restarts them with the same backup directories, and checks that training
resumes from exactly the state of the last backup: weights, every BN
moving statistic, the renorm step counter (equal to the optimizer's
iterations) and the clipping bounds of the schedule at that step. Step 7,
done after the last backup, is lost, as `BackupAndRestore` promises
nothing more.

What happens next differs:

- `model.fit` (Keras 3.15) restores the epoch but not the batch: it
  restarts epoch 1 from its first batch, so batches 0 and 1 of epoch 1 are
  trained twice and the run ends after 10 steps, not 8. The resumed state
  then equals one device training that same sequence of batches.
- The two-worker custom loop starts from `optimizer.iterations`, skips the
  batches the backup covers, and ends exactly as an uninterrupted run.
"""

import signal

import keras
import pytest

from bn_keras.layers import RenormClipping
from tests.distribute import helpers
from tests.distribute import scenario
from tests.distribute.test_multi_worker import start_workers

pytestmark = [pytest.mark.tensorflow_only, pytest.mark.slow]

BACKUP = ["--backup", "--save-freq", 2]
KILL_AFTER = 7
BACKUP_STEP = 6


def kill_at_marker(processes, started, markers):
    """Waits for every marker, then SIGKILLs every process."""
    processes.wait_for_files(markers, started, helpers.LIFETIME - 20)
    processes.kill(started, signal.SIGKILL)
    for p in started:
        assert p.returncode == -signal.SIGKILL, processes.describe([p])


def check_killed_run(tmp_path, uninterrupted, suffixes):
    for suffix in suffixes:
        marker = helpers.read_json(tmp_path / f"marker{suffix}.json")
        # The killed run was on track when it died, one step past the backup.
        helpers.assert_training_state_close(
            marker, uninterrupted[KILL_AFTER], f"marker{suffix}"
        )
        metadata = helpers.read_json(
            tmp_path / f"backup{suffix}" / "training_metadata.json"
        )
        assert metadata == {"epoch": 1, "batch": 1}
        assert not (tmp_path / f"result-run{suffix}.json").exists()


def check_restored(begin, uninterrupted, what):
    """The state right after the restore is the last backup's."""
    assert begin["when"] == "begin"
    helpers.assert_training_state_close(
        begin, uninterrupted[BACKUP_STEP], what
    )
    assert begin["iterations"] == BACKUP_STEP
    (copies,) = begin["renorm_step"]  # one renorm layer
    assert copies == [BACKUP_STEP] * len(copies)
    schedule = RenormClipping(**scenario.SCHEDULE)(BACKUP_STEP)
    for key, value in schedule.items():
        helpers.assert_close(begin["clipping"][0][key], value, f"{what}: {key}")


@pytest.fixture(scope="module")
def replayed():
    """One device through the batches that a `fit` killed after step 7 and
    resumed from the step-6 backup sees: epoch 0, batches 0-1 of epoch 1
    (the backup), then epoch 1 again from its first batch."""
    keras.config.set_dtype_policy("float32")
    model = scenario.train_model()
    x, y = scenario.train_data()
    two_batches = 2 * scenario.TRAIN_BATCH
    scenario.fit_on_one_process(model, x, y, [], epochs=1)
    scenario.fit_on_one_process(model, x[:two_batches], y[:two_batches], [], 1)
    scenario.fit_on_one_process(model, x, y, [], epochs=1)
    return scenario.training_state(model, "replayed")


def test_fit_on_two_devices_resumes_from_the_last_backup(
    tmp_path, uninterrupted, replayed
):
    """One process, `model.fit` under a MirroredStrategy on 2 logical CPU
    devices (ghost batches of 4 within each replica's 8 samples)."""
    common = ["train", "--devices", 2, "--out", tmp_path, *BACKUP]
    common += ["--lifetime", helpers.LIFETIME]
    with helpers.Processes(tmp_path) as processes:
        run = processes.start(
            "run", *common, "--phase", "run", "--kill-after", KILL_AFTER
        )
        kill_at_marker(processes, [run], [tmp_path / "marker.json"])
    check_killed_run(tmp_path, uninterrupted, [""])

    with helpers.Processes(tmp_path) as processes:
        resume = processes.start("resume", *common, "--phase", "resume")
        processes.wait([resume], helpers.LIFETIME - 20)
    result = helpers.read_json(tmp_path / "result-resume.json")
    check_restored(result["states"][0], uninterrupted, "restored")
    assert result["epochs_run"] == 1  # epoch 1 only
    final = result["final"]
    # Epoch 1 replayed from its first batch: 6 + 4 steps, counted alike by
    # the optimizer and the renorm counter of both replicas.
    assert final["iterations"] == BACKUP_STEP + scenario.STEPS_PER_EPOCH
    assert final["renorm_step"] == [[final["iterations"]] * 2]
    helpers.assert_training_state_close(final, replayed, "after resuming")
    # A completed fit deletes its backup.
    assert not (tmp_path / "backup").exists()


def test_two_workers_resume_from_the_last_backup(tmp_path, uninterrupted):
    """Two MultiWorkerMirroredStrategy workers, each backing up to its own
    directory, both killed; restarted on fresh ports, they restore the
    step-6 backup and end exactly as an uninterrupted run."""
    with helpers.Processes(tmp_path) as processes:
        started = start_workers(
            processes, tmp_path, "run", *BACKUP, "--kill-after", KILL_AFTER
        )
        markers = [tmp_path / f"marker-{i}.json" for i in range(2)]
        kill_at_marker(processes, started, markers)
    check_killed_run(tmp_path, uninterrupted, ["-0", "-1"])

    with helpers.Processes(tmp_path) as processes:
        started = start_workers(processes, tmp_path, "resume", *BACKUP)
        processes.wait(started, helpers.LIFETIME - 20)
    results = [
        helpers.read_json(tmp_path / f"result-resume-{i}.json")
        for i in range(2)
    ]
    steps = scenario.EPOCHS * scenario.STEPS_PER_EPOCH
    for i, result in enumerate(results):
        check_restored(result["states"][0], uninterrupted, f"worker {i}")
        assert result["epochs_run"] == 1
        helpers.assert_training_state_close(
            result["final"], uninterrupted[steps], f"worker {i} final"
        )
    assert results[0]["final"]["bn"] == results[1]["final"]["bn"]
