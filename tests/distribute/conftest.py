"""Single-process references for the multi-worker and restart tests."""

import keras
import pytest

from tests.distribute import scenario


@pytest.fixture(scope="session")
def uninterrupted():
    """`scenario.train_model` trained with `model.fit` on one device for
    `EPOCHS` epochs of `STEPS_PER_EPOCH` global batches, uninterrupted.

    Returns the training states: index `k` is the state after `k` steps.
    """
    keras.config.set_dtype_policy("float32")
    model = scenario.train_model()
    recorder = scenario.state_recorder()
    x, y = scenario.train_data()
    scenario.fit_on_one_process(model, x, y, [recorder])
    assert [r["iterations"] for r in recorder.records] == list(
        range(scenario.EPOCHS * scenario.STEPS_PER_EPOCH + 1)
    )
    return recorder.records
