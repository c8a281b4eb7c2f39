"""Right-click "Classify parcels..." on polygon layers in the Layers panel."""

from __future__ import annotations

import pytest
from qgis.core import QgsMapLayerType, QgsProject, QgsVectorLayer

import parcel_crop_classifier
from parcel_crop_classifier.plugin.main import (
    CLASSIFY_ALGORITHM,
    LAYER_ACTION_OBJECT_NAME,
    classify_dialog_parameters,
)
from sample_data import PARCELS


def polygons(name: str = "parcels") -> QgsVectorLayer:
    layer = QgsVectorLayer(str(PARCELS), name, "ogr")
    assert layer.isValid()
    return layer


def points() -> QgsVectorLayer:
    return QgsVectorLayer("Point?crs=EPSG:32631", "wells", "memory")


def calls_with(mock, action) -> list:
    return [c for c in mock.call_args_list if c.args and c.args[0] is action]


@pytest.fixture
def loaded(qgis_iface, qgis_new_project):
    project = QgsProject.instance()
    parcels, wells = polygons(), points()
    project.addMapLayers([parcels, wells])
    for name in ("addCustomActionForLayerType", "addCustomActionForLayer",
                 "removeCustomActionForLayerType"):  # fmt: skip
        getattr(qgis_iface, name).reset_mock()
    plugin = parcel_crop_classifier.classFactory(qgis_iface)
    plugin.initGui()
    yield plugin, parcels, wells
    plugin.unload()


def test_the_action_is_offered_on_polygon_layers_only(qgis_iface, loaded):
    plugin, parcels, _wells = loaded
    action = plugin.layer_action
    assert action.objectName() == LAYER_ACTION_OBJECT_NAME
    assert action.text() == "Classify parcels…"
    (call,) = calls_with(qgis_iface.addCustomActionForLayerType, action)
    assert call.args[1:] == ("", QgsMapLayerType.VectorLayer, False)  # not on every layer
    offered = [c.args[1] for c in calls_with(qgis_iface.addCustomActionForLayer, action)]
    assert offered == [parcels]
    # a polygon layer added later is offered the action too; a point layer is not
    later = polygons("later")
    QgsProject.instance().addMapLayers([later, points()])
    offered = [c.args[1] for c in calls_with(qgis_iface.addCustomActionForLayer, action)]
    assert offered == [parcels, later]


def test_unload_removes_the_action(qgis_iface, qgis_new_project):
    plugin = parcel_crop_classifier.classFactory(qgis_iface)
    plugin.initGui()
    action = plugin.layer_action
    qgis_iface.addCustomActionForLayer.reset_mock()
    plugin.unload()
    assert len(calls_with(qgis_iface.removeCustomActionForLayerType, action)) == 1
    assert plugin.layer_action is None
    QgsProject.instance().addMapLayer(polygons("after unload"))
    assert calls_with(qgis_iface.addCustomActionForLayer, action) == []


def test_triggering_opens_the_dialog_with_the_layer(qgis_iface, loaded, monkeypatch):
    import processing

    plugin, parcels, wells = loaded
    opened = []
    monkeypatch.setattr(processing, "execAlgorithmDialog", lambda *a: opened.append(a))
    qgis_iface.setActiveLayer(parcels)
    plugin.layer_action.trigger()
    assert opened == [(CLASSIFY_ALGORITHM, {"PARCELS": parcels.id()})]
    qgis_iface.setActiveLayer(wells)  # from the plugin menu with a point layer current
    plugin.layer_action.trigger()
    assert opened[-1] == (CLASSIFY_ALGORITHM, {})


def test_the_dialog_opens_with_the_layer_preselected(qgis_iface, loaded, monkeypatch):
    """The real Processing dialog, built as execAlgorithmDialog builds it (not executed)."""
    import processing
    from qgis.gui import QgsBrowserGuiModel

    browser = QgsBrowserGuiModel()  # the stub interface has none; the dialog's widgets need one
    monkeypatch.setattr(qgis_iface, "browserModel", lambda: browser, raising=False)
    _plugin, parcels, _ = loaded
    dialog = processing.createAlgorithmDialog(CLASSIFY_ALGORITHM,
                                              classify_dialog_parameters(parcels))  # fmt: skip
    try:
        assert dialog is not None
        assert dialog.algorithm().id() == CLASSIFY_ALGORITHM
        wrappers = dialog.mainWidget().wrappers
        assert wrappers["PARCELS"].parameterValue() == parcels.id()
        # MODEL: the bundled models in an editable list and a file button; the value is text
        model = wrappers["MODEL"]
        assert type(model).__name__ == "ModelWidgetWrapper"
        model.setValue("/data/models/mine.json")
        assert model.parameterValue() == "/data/models/mine.json"
        model.setValue(None)
        assert model.parameterValue() is None
    finally:
        dialog.close()
        dialog.deleteLater()
