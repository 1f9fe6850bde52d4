"""Diagnosing batch normalization: `bn_keras.diagnose(model, data)`.

`diagnose` measures a model's batch normalization against data and returns
a `DiagnosisReport` of `Finding`s. The detectors behind it
(`bn_keras.diagnosis._detectors`) are pure functions from measured figures
to findings, so that figures measured during training give the same
findings, in the same words: `bn_keras.callbacks.BatchNormMonitor`'s
alerts are findings of these detectors and of those of what only training
shows (`bn_keras.diagnosis._training_detectors`).
"""

from bn_keras.diagnosis.diagnose import diagnose
from bn_keras.diagnosis.diagnosis_report import DiagnosisReport
from bn_keras.diagnosis.finding import Finding

__all__ = ["DiagnosisReport", "Finding", "diagnose"]
