"""The plugin object QGIS creates through ``classFactory``.

``initProcessing`` is separate from ``initGui`` so that the provider also exists headless and in
``qgis_process`` (where ``iface`` is None and ``initGui`` is never called). Every action, menu
entry, toolbar and provider added here is removed again in ``unload``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QToolBar

from . import deps_check, qgis_logging
from .paths import PLUGIN_TITLE, icon_path
from .provider import CropClassifierProvider

LOG = logging.getLogger(__name__)

MENU = "&Parcel Crop Classifier"
TOOLBAR_OBJECT_NAME = "ParcelCropClassifierToolbar"


def tr(text: str) -> str:
    return QCoreApplication.translate("CropClassifierPlugin", text)


class CropClassifierPlugin:
    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider: CropClassifierProvider | None = None
        self.actions: list[QAction] = []
        self.toolbar: QToolBar | None = None
        self._log_handler = qgis_logging.install()
        # Packages the installer put in the profile's dependencies folder; before anything
        # checks for torch, and also under qgis_process (no initGui there).
        deps_check.activate()
        self.dependencies = None  # DependencyUi, with the GUI

    # -- Processing -------------------------------------------------------------------------

    def initProcessing(self) -> None:
        if self.provider is None:
            self.provider = CropClassifierProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    # -- GUI --------------------------------------------------------------------------------

    def initGui(self) -> None:
        self.initProcessing()
        self.toolbar = self.iface.addToolBar(PLUGIN_TITLE)
        self.toolbar.setObjectName(TOOLBAR_OBJECT_NAME)
        self.add_action(
            "ParcelCropClassifierDiagnostics",
            tr("Diagnostics…"),
            self.show_diagnostics,
            tip=tr("Show the versions, missing packages and the device (GPU/CPU) in use"),
        )
        from .dependency_ui import DependencyUi

        self.dependencies = DependencyUi(self.iface)
        self.dependencies.offer_if_missing()
        LOG.info("Parcel Crop Classifier loaded")

    def add_action(
        self,
        object_name: str,
        text: str,
        callback: Callable[[], None],
        icon: str | None = None,
        tip: str | None = None,
        in_toolbar: bool = True,
    ) -> QAction:
        """Create an action in the plugin menu (and toolbar) and remember it for ``unload``."""
        action = QAction(QIcon(icon or icon_path()), text, self.iface.mainWindow())
        action.setObjectName(object_name)
        action.triggered.connect(callback)
        if tip:
            action.setStatusTip(tip)
            action.setToolTip(tip)
        self.iface.addPluginToMenu(MENU, action)
        if in_toolbar and self.toolbar is not None:
            self.toolbar.addAction(action)
        self.actions.append(action)
        return action

    def show_diagnostics(self) -> None:
        """The Diagnostics dialog: versions, CUDA or why not, the device a run would use, and
        "Install dependencies…" (cropclassifier:diagnostics gives the same in Processing)."""
        if self.dependencies is not None:
            self.dependencies.show_diagnostics()

    # -- Teardown ---------------------------------------------------------------------------

    def unload(self) -> None:
        if self.dependencies is not None:
            self.dependencies.unload()
            self.dependencies = None
        for action in self.actions:
            self.iface.removePluginMenu(MENU, action)
            if self.toolbar is not None:
                self.toolbar.removeAction(action)
            action.deleteLater()
        self.actions.clear()
        if self.toolbar is not None:
            self.toolbar.deleteLater()
            self.toolbar = None
        if self.provider is not None:
            # The registry owns and deletes the provider; only drop our reference.
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        qgis_logging.remove(self._log_handler)
        self._log_handler = None
