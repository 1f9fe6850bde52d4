"""Stopping training when batch normalization statistics go non-finite."""

import keras

from bn_keras._statistics import nonfinite
from bn_keras._statistics import read_statistics
from bn_keras.models.find_batchnorm import find_batchnorm


class NonFiniteGuard(keras.callbacks.Callback):
    """Finds batch normalization layers whose statistics hold a NaN or an
    infinity, once each, and stops training when it finds one.

    As a callback it checks every batch normalization layer of the model
    (`bn_keras.find_batchnorm`) at each epoch end; `BNHyperModel.fit` uses
    it so that a diverging trial stops after the epoch. `BatchNormMonitor`
    calls `check` with the statistics it has just read, at every write, and
    warns about the layers it returns.

    Args:
        stop: Whether to stop training (`model.stop_training = True`) when
            a layer's statistics are found non-finite. Defaults to `True`.
    """

    def __init__(self, stop=True):
        super().__init__()
        self.stop = stop
        self._found = set()

    def on_train_begin(self, logs=None):
        self._found = set()

    def on_epoch_end(self, epoch, logs=None):
        layers = find_batchnorm(self.model)
        self.check(dict(enumerate(map(read_statistics, layers))))

    def check(self, states):
        """Checks `states`, `{layer key: read_statistics(layer)}`.

        Returns `{layer key: [names of non-finite statistics]}` for the
        layers found non-finite for the first time since training began,
        and stops training if there are any and `stop` is set.
        """
        found = {}
        for key, values in states.items():
            bad = list(nonfinite(values))
            if bad and key not in self._found:
                self._found.add(key)
                found[key] = bad
        if found and self.stop:
            self.model.stop_training = True
        return found
