"""What every algorithm of the provider shares: translation, icon, help link."""

from __future__ import annotations

from qgis.core import QgsProcessingAlgorithm
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from ..paths import icon_path


class CropAlgorithm(QgsProcessingAlgorithm):
    """Base class: subclasses set ``name()``, ``displayName()``, group and ``processAlgorithm``."""

    def tr(self, text: str) -> str:
        return QCoreApplication.translate(type(self).__name__, text)

    def createInstance(self) -> CropAlgorithm:
        return type(self)()

    def icon(self) -> QIcon:
        return QIcon(icon_path())

    def svgIconPath(self) -> str:
        return icon_path()
