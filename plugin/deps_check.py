"""The plugin's side of :mod:`cropmodels.deps`: the per-profile dependencies folder on
``sys.path``, the cheap check at load, and the error algorithms raise when torch is missing.

Algorithms that need torch call :func:`require` first thing in ``processAlgorithm``::

    from ..deps_check import require
    require(("torch", "safetensors"))

so they stay listed in the Toolbox (and usable from ``qgis_process``) without torch, and fail
with a message that says what is missing and how to install it without a terminal.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from qgis.core import QgsApplication, QgsProcessingException

from ..cropmodels import deps
from ..cropmodels.deps import ALL_REQUIREMENTS, PIP, Requirement

LOG = logging.getLogger(__name__)

INSTALL_HOW = (
    "Install them without a terminal: Plugins > Parcel Crop Classifier > Diagnostics… > "
    "Install dependencies… (or the button in the message bar when QGIS starts)"
)


def dependencies_dir() -> Path:
    """``<profile>/python/dependencies/parcel-crop-classifier``: per QGIS profile (each profile
    is its own set of plugins and settings), outside the plugin folder (which the Plugin
    Manager replaces on every upgrade)."""
    return deps.dependencies_dir(QgsApplication.qgisSettingsDirPath())


def site_dir() -> Path:
    return deps.site_dir(dependencies_dir())


def activate() -> bool:
    """Put the dependencies folder on ``sys.path`` (front; see :func:`deps.add_to_sys_path`).
    Cheap and idempotent: called at plugin load and after an installation."""
    added, warning = deps.add_to_sys_path(site_dir())
    if warning:
        LOG.warning("%s", warning)
    elif added:
        LOG.info("Python packages installed by the plugin are loaded from %s", site_dir())
    return added


def _select(modules: Iterable[str] | None) -> list[Requirement]:
    if modules is None:
        return list(ALL_REQUIREMENTS)
    wanted = set(modules)
    chosen = [r for r in ALL_REQUIREMENTS if r.module in wanted or r.name in wanted]
    unknown = wanted - {r.module for r in chosen} - {r.name for r in chosen}
    chosen += [Requirement(m, m, m, "needed by this algorithm") for m in sorted(unknown)]
    return chosen


def missing(modules: Iterable[str] | None = None) -> list[Requirement]:
    """What cannot be imported, of ``modules`` (module or package names; default: everything
    the core needs). ``find_spec`` only: nothing is imported, so it is fine on the GUI thread."""
    return deps.missing(_select(modules))


def missing_message(absent: Iterable[Requirement]) -> str:
    """What is missing, what for, and how to get it, as one paragraph for users."""
    absent = list(absent)
    names = ", ".join(f"{r.name} ({r.purpose})" for r in absent)
    text = f"QGIS's Python cannot import: {names}."
    if any(r.source == PIP for r in absent):
        text += f" {INSTALL_HOW}; they are installed into {dependencies_dir()}."
    for r in absent:
        if r.source != PIP:
            text += f" {r.name} {r.hint}."
    return text


def require(modules: Iterable[str] = ("torch", "safetensors")) -> None:
    """Raise :class:`QgsProcessingException` saying what is missing and how to install it,
    unless every module in ``modules`` can be imported."""
    absent = missing(modules)
    if absent and activate():  # installed by another QGIS window since this one started
        absent = missing(modules)
    if absent:
        raise QgsProcessingException(missing_message(absent))


__all__ = [
    "activate",
    "dependencies_dir",
    "missing",
    "missing_message",
    "require",
    "site_dir",
]
