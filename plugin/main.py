"""The plugin object QGIS creates through ``classFactory``.

``initProcessing`` is separate from ``initGui`` so that the provider also exists headless and in
``qgis_process`` (where ``iface`` is None and ``initGui`` is never called). Every action, menu
entry, toolbar, layer context-menu entry, signal connection and provider added here is removed
again in ``unload``.

"Classify parcels..." appears in the Layers panel's context menu of every polygon layer (those
there when the plugin loads and those added later) and opens the algorithm's dialog with that
layer as the parcels; the same entry in the plugin menu and toolbar uses the current layer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from qgis.core import (
    QgsApplication,
    QgsMapLayer,
    QgsMapLayerType,
    QgsProject,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QToolBar

from . import deps_check, qgis_logging
from .paths import PLUGIN_TITLE, icon_path
from .provider import PROVIDER_ID, CropClassifierProvider

LOG = logging.getLogger(__name__)

MENU = "&Parcel Crop Classifier"
TOOLBAR_OBJECT_NAME = "ParcelCropClassifierToolbar"
LAYER_ACTION_OBJECT_NAME = "ParcelCropClassifierClassifyLayer"
CLASSIFY_ALGORITHM = f"{PROVIDER_ID}:classify_parcels"


def is_parcel_layer(layer: QgsMapLayer | None) -> bool:
    """A vector layer of polygons: what classify_parcels accepts as parcels."""
    return (
        isinstance(layer, QgsVectorLayer)
        and layer.isValid()
        and layer.geometryType() == QgsWkbTypes.PolygonGeometry
    )


def classify_dialog_parameters(layer: QgsMapLayer | None) -> dict[str, str]:
    """Initial parameters of the classification dialog: the layer as parcels, if it can be."""
    return {"PARCELS": layer.id()} if is_parcel_layer(layer) else {}


def tr(text: str) -> str:
    return QCoreApplication.translate("CropClassifierPlugin", text)


class CropClassifierPlugin:
    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider: CropClassifierProvider | None = None
        self.actions: list[QAction] = []
        self.toolbar: QToolBar | None = None
        self.layer_action: QAction | None = None
        self._log_handler = qgis_logging.install()
        # Packages the installer put in the profile's dependencies folder; before anything
        # checks for torch, and also under qgis_process (no initGui there).
        deps_check.activate()
        self.dependencies = None  # DependencyUi, with the GUI
        self.panel = None  # ComparePanel, created on first use

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
            "ParcelCropClassifierClassify",
            tr("Classify parcels…"),
            self.classify_current_layer,
            tip=tr("Classify the parcels of the current polygon layer into crop classes"),
        )
        self.add_action(
            "ParcelCropClassifierDiagnostics",
            tr("Diagnostics…"),
            self.show_diagnostics,
            tip=tr("Show the versions, missing packages and the device (GPU/CPU) in use"),
        )
        self.add_action(
            "ParcelCropClassifierCompare",
            tr("Compare models…"),
            self.show_compare_panel,
            tip=tr("Compare the bundled and your trained models (accuracy, speed, on a layer)"),
        )
        self._add_layer_action()
        from .dependency_ui import DependencyUi

        self.dependencies = DependencyUi(self.iface)
        self.dependencies.offer_if_missing()
        LOG.info("Parcel Crop Classifier loaded")

    def _add_layer_action(self) -> None:
        """ "Classify parcels…" in the Layers panel's context menu of polygon layers."""
        action = QAction(QIcon(icon_path()), tr("Classify parcels…"), self.iface.mainWindow())
        action.setObjectName(LAYER_ACTION_OBJECT_NAME)
        action.setToolTip(tr("Classify the parcels of this layer into crop classes"))
        action.triggered.connect(self.classify_current_layer)
        # allLayers=False: offered only on the layers given to addCustomActionForLayer
        self.iface.addCustomActionForLayerType(action, "", QgsMapLayerType.VectorLayer, False)
        self.layer_action = action
        project = QgsProject.instance()
        self.offer_on_layers(list(project.mapLayers().values()))
        project.layersAdded.connect(self.offer_on_layers)

    def offer_on_layers(self, layers: list[QgsMapLayer]) -> None:
        if self.layer_action is None:
            return
        for layer in layers:
            if is_parcel_layer(layer):
                self.iface.addCustomActionForLayer(self.layer_action, layer)

    def classify_current_layer(self) -> None:
        """Open the classification dialog; the right-clicked (current) layer as parcels."""
        import processing

        layer = self.iface.activeLayer()
        processing.execAlgorithmDialog(CLASSIFY_ALGORITHM, classify_dialog_parameters(layer))

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

    def show_compare_panel(self) -> None:
        """The model comparison dock (DESIGN section 5), docked on the right."""
        if self.panel is None:
            from qgis.PyQt.QtCore import Qt

            from .panel import ComparePanel

            self.panel = ComparePanel(self.iface.mainWindow())
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.panel)
        else:
            self.panel.refresh()
        self.panel.show()
        self.panel.raise_()

    # -- Teardown ---------------------------------------------------------------------------

    def unload(self) -> None:
        if self.panel is not None:
            self.panel.cancel_compare()
            self.iface.removeDockWidget(self.panel)
            self.panel.deleteLater()
            self.panel = None
        if self.dependencies is not None:
            self.dependencies.unload()
            self.dependencies = None
        if self.layer_action is not None:
            with contextlib.suppress(TypeError, RuntimeError):  # never connected
                QgsProject.instance().layersAdded.disconnect(self.offer_on_layers)
            self.iface.removeCustomActionForLayerType(self.layer_action)
            self.layer_action.deleteLater()
            self.layer_action = None
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
