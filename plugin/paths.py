"""Locations inside the installed plugin folder."""

from __future__ import annotations

from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent.parent
RESOURCES_DIR = PLUGIN_DIR / "resources"
ICONS_DIR = RESOURCES_DIR / "icons"

# Root logger of the plugin: "parcel_crop_classifier" once installed, so the core's loggers
# ("parcel_crop_classifier.cropmodels.*") are its children and reach the QGIS message log.
PACKAGE_NAME = __name__.split(".")[0]
PLUGIN_TITLE = "Parcel Crop Classifier"


def icon_path(name: str = "icon.svg") -> str:
    return str(ICONS_DIR / name)
