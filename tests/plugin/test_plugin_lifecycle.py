"""classFactory -> initGui -> unload round trips on the pytest-qgis interface."""

from __future__ import annotations

import logging

import pytest
from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtCore import QCoreApplication, QEvent
from qgis.PyQt.QtWidgets import QAction, QToolBar

import parcel_crop_classifier
from helpers import ROOT, SYSTEM_PYTHON, run_python
from parcel_crop_classifier.plugin.main import TOOLBAR_OBJECT_NAME
from parcel_crop_classifier.plugin.provider import PROVIDER_ID

ALGORITHMS = [
    "build_stack", "classify_parcels", "diagnostics", "evaluate_models", "extract_patches",
    "train_model",
]  # fmt: skip


def flush_deletes() -> None:
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    QCoreApplication.processEvents()


def plugin_actions(main_window) -> list[QAction]:
    return [a for a in main_window.findChildren(QAction) if a.objectName().startswith("ParcelCrop")]


def plugin_toolbars(main_window) -> list[QToolBar]:
    return [t for t in main_window.findChildren(QToolBar) if t.objectName() == TOOLBAR_OBJECT_NAME]


def registry():
    return QgsApplication.processingRegistry()


def test_init_py_is_lazy():
    """QGIS imports every plugin's __init__ at start-up: it must not pull in Qt, QGIS or torch."""
    result = run_python(
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('pcc', {str(ROOT / '__init__.py')!r},"
        f" submodule_search_locations=[{str(ROOT)!r}])\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "assert callable(m.classFactory)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in"
        " ('qgis', 'PyQt5', 'torch', 'numpy', 'pcc') and n != 'pcc'))\n",
        python=SYSTEM_PYTHON,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_gui_round_trip_leaves_nothing_behind(qgis_iface):
    main_window = qgis_iface.mainWindow()
    assert registry().providerById(PROVIDER_ID) is None

    plugin = parcel_crop_classifier.classFactory(qgis_iface)
    plugin.initGui()
    assert registry().providerById(PROVIDER_ID) is not None
    assert len(plugin_toolbars(main_window)) == 1
    actions = plugin_actions(main_window)
    assert {a.objectName() for a in actions} == {
        "ParcelCropClassifierClassify",
        "ParcelCropClassifierDiagnostics",
        "ParcelCropClassifierCompare",
        "ParcelCropClassifierClassifyLayer",  # the Layers panel's context menu, not the toolbar
    }
    assert [a.objectName() for a in plugin.toolbar.actions()] == [
        "ParcelCropClassifierClassify",
        "ParcelCropClassifierDiagnostics",
        "ParcelCropClassifierCompare",
    ]

    plugin.unload()
    flush_deletes()
    assert registry().providerById(PROVIDER_ID) is None
    assert plugin_actions(main_window) == []
    assert plugin_toolbars(main_window) == []
    assert plugin.actions == []


def test_reload_twice(qgis_iface):
    """Plugin Reloader and the Plugin Manager unload and load again in one session."""
    for _ in range(2):
        plugin = parcel_crop_classifier.classFactory(qgis_iface)
        plugin.initGui()
        assert registry().providerById(PROVIDER_ID) is not None
        plugin.unload()
        flush_deletes()
        assert registry().providerById(PROVIDER_ID) is None
    assert plugin_actions(qgis_iface.mainWindow()) == []


def test_processing_only_load_as_in_qgis_process():
    """qgis_process passes no iface and calls only initProcessing before unload."""
    plugin = parcel_crop_classifier.classFactory(None)
    plugin.initProcessing()
    plugin.initProcessing()  # idempotent: QGIS may call it again
    provider = registry().providerById(PROVIDER_ID)
    assert provider is not None
    try:
        assert sorted(a.name() for a in provider.algorithms()) == ALGORITHMS
    finally:
        plugin.unload()
    assert registry().providerById(PROVIDER_ID) is None


def test_unload_without_init_is_safe(qgis_iface):
    plugin = parcel_crop_classifier.classFactory(qgis_iface)
    plugin.unload()


@pytest.mark.parametrize(
    ("level", "expected"),
    [(logging.INFO, Qgis.Info), (logging.WARNING, Qgis.Warning), (logging.ERROR, Qgis.Critical)],
)
def test_core_logging_reaches_the_qgis_message_log(qgis_iface, level, expected):
    received: list[tuple[str, str, int]] = []

    def on_message(message: str, tag: str, qgis_level) -> None:
        received.append((message, tag, qgis_level))

    log = QgsApplication.messageLog()
    log.messageReceived.connect(on_message)
    plugin = parcel_crop_classifier.classFactory(qgis_iface)
    try:
        logging.getLogger("parcel_crop_classifier.cropmodels.stack").log(level, "read 118 dates")
    finally:
        plugin.unload()
        log.messageReceived.disconnect(on_message)
    ours = [r for r in received if r[1] == "Parcel Crop Classifier"]
    assert ours == [("parcel_crop_classifier.cropmodels.stack: read 118 dates",
                     "Parcel Crop Classifier", expected)]  # fmt: skip

    # After unload the handler is gone: nothing more reaches the log.
    received.clear()
    log.messageReceived.connect(on_message)
    logging.getLogger("parcel_crop_classifier.cropmodels").warning("after unload")
    log.messageReceived.disconnect(on_message)
    assert [r for r in received if r[1] == "Parcel Crop Classifier"] == []
