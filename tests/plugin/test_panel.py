"""The model comparison panel under a virtual screen (offscreen Qt), on the real sample."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProject, QgsVectorLayer

from parcel_crop_classifier.plugin.panel import (
    CHARTS,
    DISAGREEMENT_LAYER_NAME,
    ComparePanel,
    user_models_folder,
)
from sample_data import PARCELS, STACK, train_sample_model

ROOT = Path(__file__).resolve().parents[2]
CV = {
    "summary": {
        "overall_accuracy": {"mean": 0.94, "std": 0.01},
        "fscore": {"mean": 0.62, "std": 0.04},
        "precision": {"mean": 0.66, "std": 0.03},
        "recall": {"mean": 0.60, "std": 0.05},
    },
    "per_class_fscore": {
        "Maize": {"mean": 0.9, "std": 0.02},
        "Other leguminous crops": {"mean": 0.3, "std": 0.1},
        "Permanent grass crops": {"mean": 0.95, "std": 0.01},
    },
    "confusion_matrix": [[40, 2, 1], [3, 5, 4], [1, 2, 90]],
    "class_order": ["Maize", "Other leguminous crops", "Permanent grass crops"],
}


def install(card: Path, folder: Path, cv: dict | None = None) -> Path:
    """Copy a model into a user model folder (optionally with cross-validation metrics)."""
    target = folder / card.stem
    target.mkdir(parents=True, exist_ok=True)
    data = json.loads(card.read_text())
    if cv is not None:
        data["metrics"]["cross_validation"] = cv
    (target / card.name).write_text(json.dumps(data))
    shutil.copy(card.with_suffix(".safetensors"), target / card.with_suffix(".safetensors").name)
    return target / card.name


@pytest.fixture(scope="module")
def user_folder(sample_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("user_models")
    gru = train_sample_model(tmp_path_factory.mktemp("gru"), "gru", epochs=2)
    install(sample_model, folder, CV)
    install(gru, folder)
    return folder


@pytest.fixture
def panel(qgis_iface, user_folder, tmp_path):
    widget = ComparePanel(bundled_folder=tmp_path / "no_bundled", user_folder=user_folder)
    widget.resize(1100, 800)
    widget.show()
    yield widget
    widget.close()
    widget.deleteLater()


def test_the_user_folder_is_in_the_profile_and_made_on_demand(qgis_app, monkeypatch, tmp_path):
    from parcel_crop_classifier.plugin import panel as panel_module

    folder = user_models_folder(create=False)
    assert folder.parts[-2:] == ("parcel_crop_classifier", "models")
    assert folder.parent.parent == Path(QgsApplication.qgisSettingsDirPath())

    class Profile:
        @staticmethod
        def qgisSettingsDirPath() -> str:
            return str(tmp_path / "profile")

    monkeypatch.setattr(panel_module, "QgsApplication", Profile)
    made = user_models_folder()
    assert made == tmp_path / "profile" / "parcel_crop_classifier" / "models"
    assert made.is_dir()


def test_one_row_per_model_sortable_and_the_card(panel):
    assert panel.table.rowCount() == 2
    names = {panel.table.item(r, 0).text() for r in range(2)}
    assert names == {"cnn_flanders_test", "gru_flanders_test"}
    fscore = [k for k, _ in panel_columns()].index("fscore")
    panel.table.sortItems(fscore)
    assert panel.table.item(0, fscore).text() == "62.0"  # known values first
    assert panel.table.item(1, fscore).text() == "not known"
    panel.table.selectRow(1)
    assert "gru_flanders_test" in panel.card_view.toPlainText()


def test_the_plugin_entry_opens_the_dock_and_unload_removes_it(
    qgis_iface, monkeypatch, user_folder
):
    import parcel_crop_classifier
    from parcel_crop_classifier.plugin import panel as panel_module

    monkeypatch.setattr(panel_module, "user_models_folder", lambda create=True: user_folder)
    plugin = parcel_crop_classifier.classFactory(qgis_iface)
    plugin.initGui()
    action = next(a for a in plugin.actions if a.objectName() == "ParcelCropClassifierCompare")
    action.trigger()
    dock = plugin.panel
    assert dock is not None
    assert dock.objectName() == "ParcelCropClassifierComparePanel"
    assert dock.table.rowCount() >= 2
    action.trigger()  # again: the same dock, refreshed
    assert plugin.panel is dock
    plugin.unload()
    assert plugin.panel is None


def panel_columns():
    from parcel_crop_classifier.cropmodels.compare import COLUMNS

    return COLUMNS


def test_every_chart_draws_and_exports(panel, tmp_path):
    panel.select_paths([r["path"] for r in panel.rows])
    for i, chart in enumerate(CHARTS):
        panel.chart_choice.setCurrentIndex(i)
        assert panel.figure.axes, chart
        out = panel.export_chart(tmp_path / f"chart{i}.png")
        assert out.stat().st_size > 1000
    panel.chart_choice.setCurrentIndex(0)
    bars = panel.figure.axes[0].patches
    assert len(bars) == 3  # the CNN's three classes; the GRU has no per-class F-score yet


def test_measure_speed_fills_the_table(panel, tmp_path):
    panel.select_paths([panel.rows[0]["path"]])
    panel.measure_selected()
    row = panel.rows[0]
    assert row["parcels_per_second"] > 0
    assert row["peak_memory_mb"] > 0
    out = panel.export_table(tmp_path / "models.csv")
    header, *lines = out.read_text().splitlines()
    assert header.startswith("name,source,architecture,parameter_count")
    assert len(lines) == 2


def wait_for(task, timeout: float = 300.0) -> None:
    start = time.monotonic()
    while panel_busy(task) and time.monotonic() - start < timeout:
        QgsApplication.processEvents()
        time.sleep(0.05)
    QgsApplication.processEvents()


def panel_busy(task) -> bool:
    from qgis.core import QgsTask

    try:
        return task.status() not in (QgsTask.Complete, QgsTask.Terminated)
    except RuntimeError:  # deleted by the task manager once finished
        return False


def test_compare_on_the_real_sample_gives_a_disagreement_layer(panel, tmp_path):
    QgsProject.instance().removeAllMapLayers()
    layer = QgsVectorLayer(str(PARCELS), "parcels", "ogr")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    task = panel.start_compare(layer, STACK, "crop_code", [r["path"] for r in panel.rows])
    wait_for(task)
    assert panel.task is None, panel.compare_summary.text()
    result = panel.comparison
    assert result is not None, panel.compare_summary.text()
    out = QgsProject.instance().mapLayersByName(DISAGREEMENT_LAYER_NAME)
    assert len(out) == 1
    assert out[0].featureCount() == result.n_disagreeing > 0
    assert out[0].fields().names()[-2:] == ["code_1", "code_2"]
    assert out[0].renderer().symbol().symbolLayer(0).strokeColor().name() == "#e31a1c"
    assert panel.compare_table.rowCount() == 2
    assert all(0 <= r["overall_accuracy"] <= 1 for r in panel.comparison_rows)
    # the GRU now has a confusion matrix and per-class F-scores (against the layer)
    panel.export_table(tmp_path / "t.csv")
    assert (tmp_path / "t_layer.csv").is_file()
    panel.select_paths([r["path"] for r in panel.rows])
    panel.tabs.setCurrentIndex(1)
    panel.chart_choice.setCurrentIndex(0)
    assert len(panel.figure.axes[0].patches) == 6


def test_compare_can_be_cancelled(panel):
    layer = QgsVectorLayer(str(PARCELS), "parcels", "ogr")
    task = panel.start_compare(layer, STACK, None, [panel.rows[0]["path"]])
    panel.cancel_compare()
    wait_for(task)
    assert panel.comparison is None
    assert panel.compare_button.isEnabled()
    assert "cancel" in panel.compare_summary.text().lower()


def test_the_bundled_models_are_listed_with_their_cross_validated_metrics(qgis_iface, tmp_path):
    from parcel_crop_classifier.cropmodels.predict import bundled_models

    bundled = bundled_models()
    # the plugin's own bundled folder, an empty user folder
    widget = ComparePanel(user_folder=tmp_path / "user_models")
    widget.resize(1100, 800)
    widget.show()
    try:
        rows = [r for r in widget.rows if r["source"] == "bundled"]
        assert sorted(r["name"] for r in rows) == sorted(bundled)
        assert all(0 < r["overall_accuracy"] <= 1 and r["fscore_std"] >= 0 for r in rows)
        widget.select_paths([r["path"] for r in rows])
        widget.tabs.setCurrentIndex(1)
        widget.chart_choice.setCurrentIndex(0)  # per-class F-score, Table 3 as bars
        n_classes = 3  # maize, leguminous crops, permanent grass
        assert len(widget.figure.axes[0].patches) == len(rows) * n_classes
        screenshot(widget, tmp_path)
    finally:
        widget.close()
        widget.deleteLater()


def screenshot(panel, tmp_path: Path) -> Path:
    """docs/panel.png with UPDATE_SCREENSHOTS=1, else a temporary file."""
    update = os.environ.get("UPDATE_SCREENSHOTS") == "1"
    path = ROOT / "docs" / "panel.png" if update else tmp_path / "panel.png"
    QgsApplication.processEvents()
    assert panel.grab().save(str(path))
    assert path.stat().st_size > 10000
    return path
