"""What `bn_keras.diagnose` found: findings, a table, JSON, and a fix."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable
from typing import Any

import keras

from bn_keras._statistics import set_statistics
from bn_keras.diagnosis import _detectors
from bn_keras.diagnosis.finding import Finding
from bn_keras.models.find_batchnorm import find_batchnorm

#: The width of the printed report (a terminal of 120 columns).
WIDTH = 120
#: Columns of the table: title and width (the last takes the rest).
_COLUMNS = (("severity", 8), ("finding", 24), ("layers", 36), ("evidence", 0))


def _cell(text, width):
    text = " ".join(str(text).split())
    if len(text) <= width:
        return text.ljust(width)
    return text[: width - 3] + "..."


def _layers_cell(layers, width):
    """The first layer's path, and how many more: always whole."""
    if not layers:
        return "-"
    more = f" and {len(layers) - 1} more" if len(layers) > 1 else ""
    first = layers[0]
    if len(first) + len(more) > width:
        first = first[: width - len(more) - 3] + "..."
    return first + more


def _evidence_cell(finding):
    """A few words of evidence for the table."""
    evidence = finding.evidence
    if "changed_share" in evidence:
        words = f"{_detectors.share(evidence['changed_share'])} change"
        if evidence.get("metric") is not None:
            before = _detectors.figure(evidence["before"])
            after = _detectors.figure(evidence["after"])
            words += f"; {evidence['metric']} {before} -> {after}"
        return words
    if "scale_factor" in evidence:
        factor = evidence["scale_factor"]
        words = f"inputs ~{factor:.3g}x larger"
        if factor < 1:
            words = f"inputs ~{1 / factor:.3g}x smaller"
        rescaled = evidence.get("rescaled")
        if rescaled and rescaled.get("metric") is not None:
            # The metric as it is and with the inputs rescaled.
            words += (
                f"; {rescaled['metric']} "
                f"{_detectors.figure(rescaled['before'])} -> "
                f"{_detectors.figure(rescaled['after'])}"
            )
        return words
    if "disagreement" in evidence:
        return (
            f"{_detectors.share(evidence['disagreement'])} disagree at batch "
            f"size {evidence['batch_size']}"
        )
    for key, unit in (
        ("nonfinite", "layer"),
        ("collapsed_channels", "layer"),
        ("clipped_fraction", "layer"),
        ("dead_channels", "layer"),
        ("probe_gap", "layer"),
    ):
        if key in evidence:
            return _count(len(evidence[key]), unit)
    return _count(len(finding.layers), "layer")


#: How many layers the details of a finding name (`to_json()` has all).
LISTED_LAYERS = 10


def _layer_list(layers):
    named = ", ".join(layers[:LISTED_LAYERS]) or "-"
    if len(layers) > LISTED_LAYERS:
        named += f" and {len(layers) - LISTED_LAYERS} more"
    return named


def _count(number, noun):
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _wrapped(prefix, text, indent=3):
    return textwrap.fill(
        text,
        WIDTH,
        initial_indent=prefix,
        subsequent_indent=" " * indent,
        break_on_hyphens=False,
        break_long_words=False,
    )


class DiagnosisReport:
    """What `bn_keras.diagnose` found in a model's batch normalization.

    Attributes:
        findings: The `bn_keras.diagnosis.Finding`s, errors first, then
            warnings, then information.
        summary: A dict: `model` (its name), `layers` (how many batch
            normalization layers), `samples`, `batch_size`,
            `precise_method` (the `bn_keras.recalibrate` method that
            computed the precise statistics), `changed_share` (the share
            of predictions that precise statistics change), `metric`,
            `before` and `after` (with targets: the metric as it is and
            with precise statistics), and `notes`.
        ok: Whether there is no finding of severity `"error"` or
            `"warning"`.

    `str(report)` is a table (one row per finding) followed by each
    finding's message and remedy, at most 120 columns wide;
    `report.to_json()` is the same, machine-readable; `report.fix()` is a
    new model with the fixes that need no training.

    Example:

    >>> report = bn_keras.diagnosis.DiagnosisReport([], {"model": "m"})
    >>> report.ok
    True
    >>> print(report)
    Batch normalization diagnosis of 'm': no findings.
    """

    def __init__(
        self,
        findings: Iterable[Finding],
        summary: dict[str, Any],
        model: keras.Model | None = None,
        precise: dict[int, Any] | None = None,
    ) -> None:
        self.findings = list(findings)
        self.summary = dict(summary)
        self.summary.setdefault("notes", [])
        self._model = model
        self._precise = precise

    @property
    def ok(self) -> bool:
        return not any(
            f.severity in ("error", "warning") for f in self.findings
        )

    @property
    def fixes(self) -> list[str]:
        """What `fix()` changes, in words (empty when it changes nothing)."""
        if self._precise is None:
            return []
        how = "on the data diagnosed"
        method = self.summary.get("precise_method")
        if method not in (None, "two-pass"):
            how += f', with method="{method}"'
        words = (
            "precise statistics in every batch normalization layer "
            f"(as bn_keras.recalibrate computes them {how})"
        )
        if self.summary.get("metric") is not None:
            words += (
                f": {self.summary['metric']} "
                f"{_detectors.figure(self.summary['before'])} -> "
                f"{_detectors.figure(self.summary['after'])}"
            )
        return [words]

    def fix(self) -> keras.Model:
        """Returns a new model with the fixes that need no training.

        For `statistics-mismatch` and `collapsed-variance` (as errors or
        warnings) and non-finite moving statistics, the new model's batch
        normalization layers get the precise statistics measured by
        `diagnose`, when they do not make the metric worse (with targets);
        everything else (weights, the other findings) is as in the model,
        whose copy this is. A finding that needs training has a remedy
        instead. The new model is not compiled.

        Returns:
            A new `keras.Model` (a copy of the model, with its statistics
            changed only where `report.fixes` says).
        """
        if self._model is None:
            raise ValueError(
                "This report has no model to fix: it comes from a model "
                "without batch normalization, or was not made by "
                "`bn_keras.diagnose`. Received: report with "
                f"{len(self.findings)} findings"
            )
        fixed = _copy(self._model)
        if self._precise is not None:
            for layer, copy in zip(
                find_batchnorm(self._model), find_batchnorm(fixed)
            ):
                statistics = self._precise.get(id(layer))
                if statistics is not None:
                    set_statistics(copy, *statistics)
        return fixed

    def to_json(self, **kwargs: Any) -> str:
        """The report as a JSON string: `{"summary": ..., "ok": ...,
        "findings": [...]}`; `kwargs` go to `json.dumps`."""
        return json.dumps(
            {
                "summary": self.summary,
                "ok": self.ok,
                "fixes": self.fixes,
                "findings": [f.to_dict() for f in self.findings],
            },
            **kwargs,
        )

    def _header(self):
        summary = self.summary
        name = f"Batch normalization diagnosis of '{summary.get('model')}'"
        if summary.get("layers") == 0:
            return [
                f"{name}: no batch normalization layers: nothing to diagnose"
            ]
        if "samples" not in summary:
            return [f"{name}: no findings."] if not self.findings else [name]
        lines = [
            f"{name}: {_count(summary['layers'], 'batch normalization layer')}"
            f", {summary['samples']} samples, training batch size "
            f"{summary['batch_size']}"
        ]
        if summary.get("metric") is not None:
            lines.append(
                f"{summary['metric']}: {_detectors.figure(summary['before'])} "
                f"as it is, {_detectors.figure(summary['after'])} with precise "
                "statistics"
            )
        return lines

    def _table(self):
        widths = [width for _, width in _COLUMNS]
        widths[-1] = WIDTH - sum(widths) - 2 * (len(widths) - 1)
        rows = [[title for title, _ in _COLUMNS]]
        rows += [
            [
                f.severity,
                f.code,
                _layers_cell(f.layers, widths[2]),
                _evidence_cell(f),
            ]
            for f in self.findings
        ]
        return [
            "  ".join(_cell(text, w) for text, w in zip(row, widths)).rstrip()
            for row in rows
        ]

    def __str__(self):
        return self.text()

    def text(self, fix: str = "report.fix()") -> str:
        """The printed report; `fix` names how the user applies the fix
        (`None`: the report does not say)."""
        lines = self._header()
        for note in self.summary["notes"]:
            if note not in lines[0]:
                lines.append(_wrapped("note: ", note, indent=6))
        if "samples" in self.summary and not self.findings:
            lines.append("No findings: batch normalization looks healthy.")
        if self.findings:
            lines += [""] + self._table()
        for number, finding in enumerate(self.findings, start=1):
            lines.append("")
            lines.append(
                _wrapped(
                    f"{number}. {finding.severity} {finding.code}: ",
                    _layer_list(finding.layers),
                )
            )
            lines.append(_wrapped("   ", finding.message))
            lines.append(_wrapped("   Remedy: ", finding.remedy))
        if fix is not None:
            for words in self.fixes:
                lines += ["", _wrapped(f"{fix} sets ", words, indent=0)]
        return "\n".join(lines)

    def __repr__(self):
        codes = [f.code for f in self.findings]
        return f"<DiagnosisReport ok={self.ok} findings={codes}>"


def _copy(model):
    """A copy of `model` with its weights."""
    try:
        copy = keras.models.clone_model(model)
    except Exception as error:  # Keras raises many kinds here
        raise TypeError(
            "report.fix() copies the model, and this model cannot be copied "
            f"from its config ({type(error).__name__}: {error}). Give its "
            "custom layers a `get_config()`, or apply the fix yourself: "
            "`bn_keras.recalibrate(model, data)`. "
            f"Received: model={model.name}"
        ) from error
    copy.set_weights(model.get_weights())
    return copy
