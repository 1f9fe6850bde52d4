"""One thing found wrong (or worth knowing) about a model's batch
normalization."""

from __future__ import annotations

import dataclasses
from typing import Any

#: The severities, most serious first: "error" when predictions are wrong
#: because of it, "warning" when they would measurably improve, "info" for
#: structure that costs nothing at inference.
SEVERITIES = ("error", "warning", "info")

#: The stable codes of the findings, and what each is about (the last
#: only `BatchNormMonitor` raises: it needs the training batches).
CODES = {
    "statistics-mismatch": "moving statistics do not match the data",
    "preprocessing-mismatch": "the input is on another scale than in training",
    "noisy-batch-statistics": "batch statistics too noisy at the training "
    "batch size",
    "nonfinite-statistics": "NaN or Inf in statistics, gamma or beta",
    "collapsed-variance": "moving variance near zero for inputs that vary",
    "renorm-clipping-saturated": "renorm's r and d clipped on nearly every "
    "channel",
    "dropout-before-batchnorm": "Dropout right before batch normalization",
    "bias-before-batchnorm": "a bias that batch normalization cancels",
    "batchnorm-before-output": "batch normalization on the logits",
    "dead-channels": "channels whose gamma is about zero",
    "constant-channels": "channels whose input holds one value (seen "
    "during training)",
}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One finding about a model's batch normalization.

    `bn_keras.diagnose` returns them in its report's `findings`;
    `bn_keras.callbacks.BatchNormMonitor` raises them as alerts during
    training, from the same detectors.

    Args:
        code: A stable name from `CODES` (`"statistics-mismatch"`, ...).
        severity: `"error"` (predictions are wrong because of it),
            `"warning"` (they would measurably improve) or `"info"`
            (structure that costs nothing at inference).
        layers: The paths of the layers concerned, in forward order.
        message: What is wrong and why, in a sentence or three.
        evidence: The measured figures, a JSON-serializable dict.
        remedy: What to do, with the exact call where there is one.

    Example:

    >>> finding = bn_keras.diagnosis.Finding(
    ...     code="dead-channels",
    ...     severity="info",
    ...     layers=("bn",),
    ...     message="2 of 8 channels of bn have |gamma| < 1e-3.",
    ...     evidence={"dead_channels": {"bn": [2, 8]}},
    ...     remedy="Nothing to do at inference.",
    ... )
    >>> finding.to_dict()["code"]
    'dead-channels'
    """

    code: str
    severity: str
    layers: tuple[str, ...]
    message: str
    evidence: dict[str, Any]
    remedy: str

    def __post_init__(self):
        if self.code not in CODES:
            raise ValueError(
                f"Argument `code` must be one of {sorted(CODES)}. "
                f"Received: code={self.code!r}"
            )
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"Argument `severity` must be one of {list(SEVERITIES)}. "
                f"Received: severity={self.severity!r}"
            )
        object.__setattr__(self, "layers", tuple(self.layers))

    def to_dict(self) -> dict[str, Any]:
        """The finding as a JSON-serializable dict."""
        return {
            "code": self.code,
            "severity": self.severity,
            "layers": list(self.layers),
            "message": self.message,
            "evidence": self.evidence,
            "remedy": self.remedy,
        }
