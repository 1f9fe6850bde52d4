"""Functions that act on whole models."""

from bn_keras.models.convert_batchnorm import convert_batchnorm
from bn_keras.models.find_batchnorm import find_batchnorm
from bn_keras.models.fold_batchnorm import fold_batchnorm
from bn_keras.models.freeze_batchnorm import freeze_batchnorm
from bn_keras.models.insert_batchnorm import insert_batchnorm
from bn_keras.models.recalibrate import recalibrate
from bn_keras.models.train_inference_gap import train_inference_gap

__all__ = [
    "convert_batchnorm",
    "find_batchnorm",
    "fold_batchnorm",
    "freeze_batchnorm",
    "insert_batchnorm",
    "recalibrate",
    "train_inference_gap",
]
