"""The MODEL parameter's widget: the bundled models in an editable list, and a button to pick a
model file.

The parameter itself is a plain string (a bundled model's name or a model file's path), so it
works unchanged in ``qgis_process``, batch mode and the Model Designer; this wrapper only makes
the choice easy in the dialogs. Processing imports it by the dotted name the parameter's
metadata gives (:data:`WRAPPER`).
"""

from __future__ import annotations

import os
from typing import Any

from processing.gui.wrappers import WidgetWrapper
from qgis.core import QgsSettings
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QToolButton, QWidget

from ..cropmodels.predict import bundled_model_names

WRAPPER = f"{__name__}.ModelWidgetWrapper"
LAST_FOLDER_KEY = "parcel_crop_classifier/last_model_folder"


def tr(text: str) -> str:
    return QCoreApplication.translate("ModelWidgetWrapper", text)


class ModelWidgetWrapper(WidgetWrapper):
    """Editable combo box of the bundled models plus a "…" button for a model file."""

    def createWidget(self, **kwargs: Any) -> QWidget:
        widget = QWidget()
        layout = QHBoxLayout(widget)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        self.combo = QComboBox()
        self.combo.setEditable(True)
        for name in bundled_model_names():
            self.combo.addItem(name, name)
        self.combo.lineEdit().setPlaceholderText(tr("bundled model name, or a model file (.json)"))
        self.combo.setToolTip(
            tr(
                "A bundled model by name, or the card (.json) of a model file, with its "
                ".safetensors weights beside it"
            )
        )
        layout.addWidget(self.combo, 1)
        button = QToolButton()
        button.setText("…")
        button.setToolTip(tr("Choose a model file"))
        button.clicked.connect(self.choose_file)
        layout.addWidget(button)
        return widget

    def choose_file(self) -> None:
        settings = QgsSettings()
        current = self.combo.currentText().strip()
        folder = os.path.dirname(current) if os.path.isdir(os.path.dirname(current)) else str(
            settings.value(LAST_FOLDER_KEY, "")
        )  # fmt: skip
        path, _ = QFileDialog.getOpenFileName(
            self.widget, tr("Model file"), folder, tr("Model cards (*.json)")
        )
        if path:
            settings.setValue(LAST_FOLDER_KEY, os.path.dirname(path))
            self.combo.setEditText(path)

    def setValue(self, value: Any) -> None:
        self.combo.setEditText("" if value is None else str(value))

    def value(self) -> str | None:
        return self.combo.currentText().strip() or None
