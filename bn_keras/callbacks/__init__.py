"""Keras callbacks for batch normalization."""

from bn_keras.callbacks.batch_norm_monitor import BatchNormMonitor
from bn_keras.callbacks.precise_bn import PreciseBN

__all__ = ["BatchNormMonitor", "PreciseBN"]
