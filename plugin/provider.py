"""The Processing provider ``cropclassifier``: algorithms of the plugin in the Toolbox,
the Model Designer and ``qgis_process``."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from .algorithms.build_stack import BuildStackAlgorithm
from .algorithms.classify import ClassifyParcelsAlgorithm
from .algorithms.diagnostics import DiagnosticsAlgorithm
from .algorithms.evaluate import EvaluateModelsAlgorithm
from .algorithms.extract import ExtractPatchesAlgorithm
from .algorithms.train import TrainModelAlgorithm
from .paths import icon_path

PROVIDER_ID = "cropclassifier"


class CropClassifierProvider(QgsProcessingProvider):
    def id(self) -> str:
        """Short, stable, never translated: algorithm ids are ``cropclassifier:<name>``."""
        return PROVIDER_ID

    def name(self) -> str:
        return QCoreApplication.translate("CropClassifierProvider", "Parcel Crop Classifier")

    def longName(self) -> str:
        return self.name()

    def icon(self) -> QIcon:
        return QIcon(icon_path())

    def svgIconPath(self) -> str:
        return icon_path()

    def loadAlgorithms(self) -> None:
        self.addAlgorithm(ClassifyParcelsAlgorithm())
        self.addAlgorithm(ExtractPatchesAlgorithm())
        self.addAlgorithm(TrainModelAlgorithm())
        self.addAlgorithm(EvaluateModelsAlgorithm())
        self.addAlgorithm(DiagnosticsAlgorithm())
        self.addAlgorithm(BuildStackAlgorithm())
