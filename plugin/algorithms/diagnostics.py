"""``cropclassifier:diagnostics``: what this QGIS can run, and on which device.

The first thing to run when something does not work: versions of QGIS, GDAL, PROJ, numpy and
torch as the QGIS Python sees them, which required packages are missing, and whether CUDA is
usable. It only reads the environment; the optional JSON report is written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from qgis.core import (
    Qgis,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputString,
    QgsProcessingParameterFileDestination,
)

from ...cropmodels import doctor
from ...cropmodels.files import publish_mode
from ..deps_check import INSTALL_HOW
from .base import CropAlgorithm


class DiagnosticsAlgorithm(CropAlgorithm):
    OUTPUT = "OUTPUT"
    REPORT = "REPORT"
    DEVICE = "DEVICE"
    MISSING = "MISSING"

    def name(self) -> str:
        return "diagnostics"

    def displayName(self) -> str:
        return self.tr("Diagnostics")

    def group(self) -> str:
        return self.tr("Utilities")

    def groupId(self) -> str:
        return "utilities"

    def shortHelpString(self) -> str:
        return self.tr(
            "Reports the versions of QGIS, GDAL, PROJ, numpy and PyTorch that this QGIS uses, "
            "lists the Python packages the classifier needs but cannot import, and tells which "
            "device (CUDA GPU or CPU) a classification with device 'auto' would use, and why.\n\n"
            "Run it first when a classification fails to start. The optional JSON report can be "
            "attached to a bug report."
        )

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT,
                self.tr("Diagnostics report (JSON)"),
                fileFilter=self.tr("JSON files (*.json)"),
                optional=True,
                createByDefault=False,
            )
        )
        self.addOutput(QgsProcessingOutputString(self.REPORT, self.tr("Report")))
        self.addOutput(QgsProcessingOutputString(self.DEVICE, self.tr("Device used by 'auto'")))
        self.addOutput(QgsProcessingOutputString(self.MISSING, self.tr("Missing packages")))

    def processAlgorithm(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        report = doctor.collect()
        text = report.to_text([("QGIS", Qgis.QGIS_VERSION)])
        for line in text.splitlines():
            feedback.pushInfo(line)
        if report.missing:
            feedback.reportError(
                self.tr(
                    "Missing Python packages: {}. {}, or see 'Installing torch inside QGIS' "
                    "in the plugin's README."
                ).format(", ".join(report.missing), INSTALL_HOW)
            )
        results: dict[str, Any] = {
            self.REPORT: text,
            self.DEVICE: report.default_device,
            self.MISSING: ",".join(report.missing),
        }
        path = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        if path:
            data = report.to_dict()
            data["qgis"] = Qgis.QGIS_VERSION
            _write_json_atomically(Path(path), data)
            results[self.OUTPUT] = path
        return results


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write the whole file or nothing: a temporary file in the same folder, then rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise QgsProcessingException(
            f"Cannot write the report to {path}: {exc.strerror}. Choose a folder you can write to."
        ) from exc
    try:
        publish_mode(tmp)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
