"""Where the plugin's bundled files are: ``resources/`` beside the ``cropmodels`` package.

The repository and the plugin zip have the same layout (``cropmodels/`` and ``resources/`` side
by side at the plugin root), so one relative path serves the tests, the command line and QGIS.
"""

from __future__ import annotations

from pathlib import Path

RESOURCES_DIR = Path(__file__).resolve().parent.parent / "resources"
NOMENCLATURE_DIR = RESOURCES_DIR / "nomenclature"
MODELS_DIR = RESOURCES_DIR / "models"
SAMPLE_DIR = RESOURCES_DIR / "sample" / "flanders_s2"

__all__ = ["MODELS_DIR", "NOMENCLATURE_DIR", "RESOURCES_DIR", "SAMPLE_DIR"]
