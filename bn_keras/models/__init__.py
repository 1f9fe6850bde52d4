"""Functions that act on whole models."""

from bn_keras.models.find_batchnorm import find_batchnorm

__all__ = ["find_batchnorm"]
