"""Diagnosing batch normalization: `bn_keras.diagnose(model, data)`.

`diagnose` measures a model's batch normalization against data and returns
a `DiagnosisReport` of `Finding`s; the detectors behind it
(`bn_keras.diagnosis._detectors`) turn measured figures into findings for
`bn_keras.callbacks.BatchNormMonitor` too.
"""

from bn_keras.diagnosis.diagnose import diagnose
from bn_keras.diagnosis.diagnosis_report import DiagnosisReport
from bn_keras.diagnosis.finding import Finding

__all__ = ["DiagnosisReport", "Finding", "diagnose"]
