"""The model comparison panel (DESIGN section 5): a dock widget to choose a model the way the
paper chose between them.

- A sortable table of every available model: the bundled ones (``resources/models``) and the
  user's (:func:`user_models_folder`: ``<QGIS profile>/parcel_crop_classifier/models``, any
  ``<name>.json`` card beside its ``<name>.safetensors``). Selecting a row shows its card.
- Charts (matplotlib): per-class F-score of the selected models side by side (the paper's
  Table 3 as bars), the confusion matrix of the current model, F-score against parameters or
  against speed.
- "Measure speed": parcels per second and peak memory of the selected models on this machine.
- "Compare on layer": the selected models on a parcel layer and stack in a background
  :class:`CompareTask` (cancellable, with progress); a red-outlined layer of the parcels they
  disagree on, and with a declared-crop / label field each model's metrics against it.
- Export: the tables to CSV, the chart to PNG.

The numbers come from :mod:`cropmodels.compare` (no QGIS there).
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from qgis.core import (
    QgsApplication,
    QgsFeature,
    QgsFillSymbol,
    QgsMapLayerProxyModel,
    QgsProject,
    QgsSingleSymbolRenderer,
    QgsTask,
    QgsVectorLayer,
)
from qgis.gui import QgsDockWidget, QgsFieldComboBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import QCoreApplication, Qt
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from ..cropmodels import compare

LOG = logging.getLogger(__name__)

PANEL_OBJECT_NAME = "ParcelCropClassifierComparePanel"
USER_MODELS_SUBFOLDER = ("parcel_crop_classifier", "models")
DISAGREEMENT_LAYER_NAME = "Models disagree"

CHART_FSCORE = "Per-class F-score (selected models)"
CHART_CONFUSION = "Confusion matrix (current model)"
CHART_PARAMETERS = "F-score against parameters"
CHART_SPEED = "F-score against speed"
CHARTS = (CHART_FSCORE, CHART_CONFUSION, CHART_PARAMETERS, CHART_SPEED)

COMPARE_COLUMNS = ["model", "overall_accuracy", "fscore", "precision", "recall", "n"]


def tr(text: str) -> str:
    return QCoreApplication.translate("ComparePanel", text)


def user_models_folder(create: bool = True) -> Path:
    """``<QGIS profile>/parcel_crop_classifier/models``: where the panel looks for the user's
    trained models (created on demand)."""
    folder = Path(QgsApplication.qgisSettingsDirPath()).joinpath(*USER_MODELS_SUBFOLDER)
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


class SortItem(QTableWidgetItem):
    """A cell that sorts by its raw value (numbers as numbers, "not known" last)."""

    def __init__(self, value: Any, key: str) -> None:
        super().__init__(compare.display(value, key))
        self.value = value
        if isinstance(value, int | float):
            self.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))

    def __lt__(self, other: QTableWidgetItem) -> bool:
        a, b = self.value, getattr(other, "value", None)
        if a is None or b is None:
            return a is not None and b is None
        if isinstance(a, int | float) and isinstance(b, int | float):
            return a < b
        return str(a).casefold() < str(b).casefold()


def _card_html(card: Any, row: dict[str, Any]) -> str:
    """The card as readable HTML: the table's figures, classes, provenance, the raw card."""
    cells = "".join(
        f"<tr><th align='left'>{html.escape(header)}</th>"
        f"<td>{html.escape(compare.display(row.get(key), key))}</td></tr>"
        for key, header in compare.COLUMNS
    )
    classes = "".join(
        f"<li><span style='background:{html.escape(c.colour)}'>&nbsp;&nbsp;&nbsp;</span> "
        f"{c.code} {html.escape(c.name)}</li>"
        for c in card.classes
    )
    notes = "".join(
        f"<li>{html.escape(str(n))}</li>" for n in (card.provenance or {}).get("label_notes", [])
    )
    raw = {k: v for k, v in card.__dict__.items() if k != "normalisation"}
    return (
        f"<h3>{html.escape(card.name)}</h3><p>{html.escape(row.get('path') or '')}</p>"
        f"<table>{cells}</table><h4>{tr('Classes')}</h4><ul>{classes}</ul>"
        + (f"<h4>{tr('Label notes')}</h4><ul>{notes}</ul>" if notes else "")
        + f"<h4>{tr('Card')}</h4><pre>"
        + html.escape(json.dumps(raw, indent=1, default=str)[:20000])
        + "</pre>"
    )


def layer_frame(layer: QgsVectorLayer) -> tuple[Any, list[int]]:
    """A GeoDataFrame of a vector layer's features (all fields, geometry, CRS) and their ids,
    in iteration order, so the core can classify layers of any provider."""
    import geopandas as gpd
    from shapely import wkb

    names = layer.fields().names()
    records, geoms, ids = [], [], []
    for feature in layer.getFeatures():
        attrs = [None if v is None or str(v) == "NULL" else v for v in feature.attributes()]
        records.append(dict(zip(names, attrs, strict=True)))
        geometry = feature.geometry()
        geoms.append(None if geometry.isNull() else wkb.loads(bytes(geometry.asWkb())))
        ids.append(feature.id())
    frame = gpd.GeoDataFrame(records, columns=names, geometry=geoms, crs=layer.crs().toWkt())
    return frame, ids


class CompareTask(QgsTask):
    """Several models on one layer in the background; ``result`` (a
    :class:`~cropmodels.compare.LayerComparison`) or ``error`` once finished."""

    def __init__(
        self, frame: Any, stack: str, models: list[str], label_field: str | None, on_done: Any
    ) -> None:
        super().__init__(tr("Comparing models on a layer"), QgsTask.CanCancel)
        self.frame, self.stack, self.models = frame, stack, models
        self.label_field = label_field
        self.on_done = on_done
        self.result: compare.LayerComparison | None = None
        self.error: str | None = None

    def run(self) -> bool:
        from ..cropmodels.progress import Cancelled

        try:
            self.result = compare.compare_on_layer(
                self.frame, self.stack, self.models, label_field=self.label_field,
                progress=lambda f, _m: self.setProgress(100.0 * f), is_cancelled=self.isCanceled,
            )  # fmt: skip
        except Cancelled:
            self.error = tr("cancelled")
            return False
        except Exception as exc:  # shown in the panel, not raised in a worker thread
            LOG.exception("comparison failed")
            self.error = str(exc)
            return False
        return True

    def finished(self, result: bool) -> None:
        if self.on_done is not None:
            self.on_done(self)


class ComparePanel(QgsDockWidget):
    def __init__(
        self,
        parent: QWidget | None = None,
        bundled_folder: str | Path | None = None,
        user_folder: str | Path | None = None,
    ) -> None:
        super().__init__(tr("Compare crop models"), parent)
        self.setObjectName(PANEL_OBJECT_NAME)
        self.bundled_folder = bundled_folder
        self.user_folder = Path(user_folder) if user_folder else user_models_folder()
        self.rows: list[dict[str, Any]] = []
        self.cards: dict[str, Any] = {}
        self.comparison: compare.LayerComparison | None = None
        self.comparison_rows: list[dict[str, Any]] = []
        self.disagreement_layer: QgsVectorLayer | None = None
        self.task: CompareTask | None = None
        # finished tasks stay referenced: the task manager deletes the C++ object later, and a
        # Python wrapper collected before that crashes QGIS
        self._done_tasks: list[CompareTask] = []
        self._build()
        self.refresh()

    # -- layout -------------------------------------------------------------------------------

    def _build(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        root = QWidget()
        layout = QVBoxLayout(root)
        buttons = QHBoxLayout()
        self.refresh_button = QPushButton(tr("Refresh"))
        self.speed_button = QPushButton(tr("Measure speed"))
        self.speed_button.setToolTip(
            tr("Parcels per second and peak memory of the selected models on this machine")
        )
        self.csv_button = QPushButton(tr("Export table CSV…"))
        self.png_button = QPushButton(tr("Export chart PNG…"))
        for b in (self.refresh_button, self.speed_button, self.csv_button, self.png_button):
            buttons.addWidget(b)
        buttons.addStretch()
        layout.addLayout(buttons)

        self.table = QTableWidget(0, len(compare.COLUMNS))
        self.table.setHorizontalHeaderLabels([h for _, h in compare.COLUMNS])
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSortingEnabled(True)
        self.table.verticalHeader().setVisible(False)

        self.card_view = QTextBrowser()
        self.figure = Figure(figsize=(6, 3.5), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.chart_choice = QComboBox()
        self.chart_choice.addItems(CHARTS)
        chart = QWidget()
        chart_layout = QVBoxLayout(chart)
        chart_layout.setContentsMargins(0, 0, 0, 0)
        chart_layout.addWidget(self.chart_choice)
        chart_layout.addWidget(self.canvas)

        self.tabs = QTabWidget()
        self.tabs.addTab(self.card_view, tr("Card"))
        self.tabs.addTab(chart, tr("Charts"))
        self.tabs.addTab(self._build_compare(), tr("Compare on layer"))

        splitter = QSplitter(Qt.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(self.tabs)
        layout.addWidget(splitter)
        self.status = QLabel()
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.setWidget(root)

        self.refresh_button.clicked.connect(self.refresh)
        self.speed_button.clicked.connect(self.measure_selected)
        self.csv_button.clicked.connect(self._ask_export_csv)
        self.png_button.clicked.connect(self._ask_export_png)
        self.chart_choice.currentIndexChanged.connect(self.draw_chart)
        self.table.itemSelectionChanged.connect(self._selection_changed)

    def _build_compare(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        self.layer_combo = QgsMapLayerComboBox()
        self.layer_combo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        self.stack_widget = QgsFileWidget()
        self.stack_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.stack_widget.setDialogTitle(tr("Stack folder (per-date GeoTIFFs)"))
        self.label_combo = QgsFieldComboBox()
        self.label_combo.setAllowEmptyFieldName(True)
        self.layer_combo.layerChanged.connect(self._layer_changed)
        self._layer_changed(self.layer_combo.currentLayer())
        run = QHBoxLayout()
        self.compare_button = QPushButton(tr("Compare selected models"))
        self.cancel_button = QPushButton(tr("Cancel"))
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        run.addWidget(self.compare_button)
        run.addWidget(self.cancel_button)
        run.addWidget(self.progress)
        self.compare_table = QTableWidget(0, len(COMPARE_COLUMNS))
        self.compare_table.setHorizontalHeaderLabels(COMPARE_COLUMNS)
        self.compare_table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.compare_table.setSortingEnabled(True)
        self.compare_summary = QLabel()
        self.compare_summary.setWordWrap(True)
        form.addRow(tr("Parcels"), self.layer_combo)
        form.addRow(tr("Stack"), self.stack_widget)
        form.addRow(tr("Declared crop / label field"), self.label_combo)
        form.addRow(run)
        form.addRow(self.compare_summary)
        form.addRow(self.compare_table)
        self.compare_button.clicked.connect(self._compare_clicked)
        self.cancel_button.clicked.connect(self.cancel_compare)
        return page

    def _layer_changed(self, layer: Any) -> None:
        self.label_combo.setLayer(layer)
        if layer is not None:
            names = layer.fields().names()
            for guess in ("crop_code", "declared", "label", "crop", "code"):
                if guess in names:
                    self.label_combo.setField(guess)
                    return
        self.label_combo.setField("")

    # -- the table ----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read every bundled and user model card again (measured speeds are kept)."""
        measured = {r["path"]: (r["parcels_per_second"], r["peak_memory_mb"]) for r in self.rows}
        found = compare.available_models(self.bundled_folder, self.user_folder)
        table = compare.model_rows(found)
        for row in table.rows:
            row["parcels_per_second"], row["peak_memory_mb"] = measured.get(
                row["path"], (None, None)
            )
        self.rows, self.cards = table.rows, table.cards
        self._fill_table()
        text = tr("{n} models ({user} is the user model folder).").format(
            n=len(self.rows), user=self.user_folder
        )
        if table.problems:
            text += " " + tr("Not readable: ") + "; ".join(table.problems)
        self.status.setText(text)
        if self.rows and not self.table.selectedItems():
            self.table.selectRow(0)
        self.draw_chart()

    def _fill_table(self) -> None:
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(self.rows))
        for i, row in enumerate(self.rows):
            for j, (key, _) in enumerate(compare.COLUMNS):
                item = SortItem(row.get(key), key)
                item.setData(Qt.UserRole, row["path"])
                if key == "name":
                    item.setToolTip(row["path"])
                self.table.setItem(i, j, item)
        self.table.setSortingEnabled(True)
        self.table.resizeColumnsToContents()

    def _row_of(self, path: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["path"] == path)

    def selected_paths(self) -> list[str]:
        """Card paths of the selected rows, in table order (all models when none selected)."""
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()})
        paths = [self.table.item(r, 0).data(Qt.UserRole) for r in rows]
        return paths or [r["path"] for r in self.rows]

    def current_path(self) -> str | None:
        item = self.table.item(self.table.currentRow(), 0) if self.table.currentRow() >= 0 else None
        if item is not None:
            return item.data(Qt.UserRole)
        selected = self.selected_paths()
        return selected[0] if selected else None

    def select_paths(self, paths: list[str]) -> None:
        self.table.clearSelection()
        mode = self.table.selectionMode()
        self.table.setSelectionMode(QAbstractItemView.MultiSelection)
        for r in range(self.table.rowCount()):
            if self.table.item(r, 0).data(Qt.UserRole) in paths:
                self.table.selectRow(r)
        self.table.setSelectionMode(mode)

    def _selection_changed(self) -> None:
        path = self.current_path()
        if path in self.cards:
            self.card_view.setHtml(_card_html(self.cards[path], self._row_of(path)))
        self.draw_chart()

    # -- speed --------------------------------------------------------------------------------

    def measure_selected(self, device: str = "cpu") -> None:
        """Measure the selected models (seconds each). In the foreground on purpose, the UI
        waiting with a busy cursor: a comparison or redraw running meanwhile would slow the
        timed passes."""
        from qgis.PyQt.QtWidgets import QApplication

        QApplication.setOverrideCursor(Qt.WaitCursor)
        try:
            for path in self.selected_paths():
                try:
                    result = compare.measure_speed(path, device=device)
                except Exception as exc:  # one broken model must not stop the others
                    self.status.setText(tr("Could not measure {p}: {e}").format(p=path, e=exc))
                    continue
                row = self._row_of(path)
                row["parcels_per_second"] = result.parcels_per_second
                row["peak_memory_mb"] = result.peak_memory_mb
                self.status.setText(
                    tr("Measured on {d}, batches of {b} parcels x {t} dates: {m}").format(
                        d=result.device, b=result.batch_size, t=result.n_dates, m=result.measures
                    )
                )
        finally:
            QApplication.restoreOverrideCursor()
        selected = self.selected_paths()
        self._fill_table()
        self.select_paths(selected)
        self.draw_chart()

    # -- charts -------------------------------------------------------------------------------

    def draw_chart(self, *_: Any) -> None:
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        chart = self.chart_choice.currentText()
        try:
            if chart == CHART_FSCORE:
                self._draw_fscore(ax)
            elif chart == CHART_CONFUSION:
                self._draw_confusion(ax)
            else:
                self._draw_scatter(ax, "parcels_per_second" if chart == CHART_SPEED else None)
        except Exception as exc:  # a strange card draws a message, not a traceback
            LOG.exception("chart failed")
            ax.clear()
            self._message(ax, tr("Cannot draw: {e}").format(e=exc))
        self.canvas.draw()

    @staticmethod
    def _message(ax: Any, text: str) -> None:
        ax.set_axis_off()
        ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)

    def _per_class(self, path: str) -> dict[str, tuple[float, float]]:
        """Class name -> (mean, std) F-score: cross-validation, else the last layer comparison."""
        card = self.cards[path]
        cv = compare.cross_validation(card).get("per_class_fscore") or {}
        if cv:
            return {k: (v.get("mean") or 0.0, v.get("std") or 0.0) for k, v in cv.items()}
        metrics = self._layer_metrics(path)
        if metrics and metrics.get("per_class_fscore"):
            return {
                name: (0.0 if f is None or np.isnan(f) else float(f), 0.0)
                for name, f in zip(metrics["classes"], metrics["per_class_fscore"], strict=True)
            }
        return {}

    def _per_class_source(self, path: str) -> str:
        cv = compare.cross_validation(self.cards[path]).get("per_class_fscore")
        return "CV" if cv else tr("layer")

    def _layer_metrics(self, path: str) -> dict[str, Any] | None:
        if self.comparison is None:
            return None
        name = self.cards[path].name
        return self.comparison.metrics.get(name)

    def _draw_fscore(self, ax: Any) -> None:
        paths = [p for p in self.selected_paths() if self._per_class(p)]
        if not paths:
            self._message(ax, tr("Per-class F-score not known for the selected models"))
            return
        series = {
            f"{self.cards[p].name} ({self._per_class_source(p)})": self._per_class(p) for p in paths
        }
        classes = list(dict.fromkeys(c for s in series.values() for c in s))
        width = 0.8 / len(series)
        x = np.arange(len(classes))
        for k, (name, values) in enumerate(series.items()):
            means = [100 * values.get(c, (np.nan, 0))[0] for c in classes]
            stds = [100 * values.get(c, (0, 0))[1] for c in classes]
            ax.bar(x + k * width - 0.4 + width / 2, means, width, yerr=stds, label=name,
                   capsize=2)  # fmt: skip
        ax.set_xticks(x, classes, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("F-score (%)")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7)

    def _draw_confusion(self, ax: Any) -> None:
        path = self.current_path()
        if path is None:
            self._message(ax, tr("No model"))
            return
        card = self.cards[path]
        cv = compare.cross_validation(card)
        matrix, names, source = cv.get("confusion_matrix"), cv.get("class_order"), "CV"
        if not matrix:
            metrics = self._layer_metrics(path) or {}
            matrix, names, source = metrics.get("confusion_matrix"), metrics.get("classes"), "layer"
        if not matrix:
            self._message(ax, tr("Confusion matrix of {m} not known").format(m=card.name))
            return
        matrix = np.asarray(matrix, dtype=float)
        names = names or card.class_names
        ax.imshow(matrix, cmap="Blues")
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if v > matrix.max() / 2 else "black")  # fmt: skip
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel(tr("predicted"))
        ax.set_ylabel(tr("true"))
        ax.set_title(f"{card.name} ({source})", fontsize=9)

    def _draw_scatter(self, ax: Any, x_key: str | None) -> None:
        x_key = x_key or "parameter_count"
        points = [
            (r[x_key], r["fscore"], r["fscore_std"] or 0.0, r["name"])
            for r in self.rows
            if r.get(x_key) and r.get("fscore") is not None
        ]
        if not points:
            what = tr("speed (Measure speed first)") if x_key != "parameter_count" else ""
            self._message(ax, tr("F-score and {x} not known").format(x=what or x_key))
            return
        for x, y, s, name in points:
            ax.errorbar(x, 100 * y, yerr=100 * s, fmt="o", capsize=2)
            ax.annotate(name, (x, 100 * y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(tr("parameters") if x_key == "parameter_count" else tr("parcels per second"))
        ax.set_ylabel("F-score (%)")

    # -- compare on a layer -------------------------------------------------------------------

    def _compare_clicked(self) -> None:
        layer = self.layer_combo.currentLayer()
        stack = self.stack_widget.filePath()
        if layer is None or not stack:
            self.compare_summary.setText(tr("Choose a parcel layer and a stack folder."))
            return
        self.start_compare(layer, stack, self.label_combo.currentField() or None)

    def start_compare(
        self,
        layer: QgsVectorLayer,
        stack: str | Path,
        label_field: str | None = None,
        models: list[str] | None = None,
    ) -> CompareTask:
        """Start the background comparison of ``models`` (default: the selected ones)."""
        frame, ids = layer_frame(layer)
        models = models or self.selected_paths()
        self._compare_input = (layer, ids)
        self.task = CompareTask(frame, str(stack), models, label_field, self._compare_done)
        self.task.progressChanged.connect(self._progress)
        self.compare_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.compare_summary.setText(
            tr("Running {n} models on {l}…").format(n=len(models), l=layer.name())
        )
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def _progress(self, value: float) -> None:
        self.progress.setValue(int(value))

    def cancel_compare(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _compare_done(self, task: CompareTask) -> None:
        self.compare_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self._done_tasks.append(task)
        self.task = None
        if task.result is None:
            error = task.error or (tr("cancelled") if task.isCanceled() else tr("unknown error"))
            self.compare_summary.setText(tr("Comparison stopped: {e}").format(e=error))
            return
        self.comparison = result = task.result
        layer, ids = self._compare_input
        self.disagreement_layer = disagreement_layer(layer, ids, result)
        QgsProject.instance().addMapLayer(self.disagreement_layer)
        self.comparison_rows = result.metric_rows()
        self._fill_compare_table()
        text = tr("{d} of {n} parcels get different classes from {m}.").format(
            d=result.n_disagreeing, n=len(ids), m=", ".join(result.models)
        )
        if result.notes:
            text += " " + " ".join(result.notes)
        self.compare_summary.setText(text)
        self.progress.setValue(100)
        self.draw_chart()

    def _fill_compare_table(self) -> None:
        table = self.compare_table
        table.setSortingEnabled(False)
        table.setRowCount(len(self.comparison_rows))
        for i, row in enumerate(self.comparison_rows):
            for j, key in enumerate(COMPARE_COLUMNS):
                table.setItem(i, j, SortItem(row.get(key), key))
        table.setSortingEnabled(True)

    # -- export -------------------------------------------------------------------------------

    def export_table(self, path: str | Path) -> Path:
        """The model table (raw values) to CSV; with a layer comparison, its metrics beside
        (``<name>_layer.csv``)."""
        keys = [k for k, _ in compare.COLUMNS] + ["path"]
        out = compare.rows_to_csv(self.rows, path, keys)
        if self.comparison_rows:
            compare.rows_to_csv(
                self.comparison_rows, out.with_name(out.stem + "_layer.csv"), COMPARE_COLUMNS
            )
        return out

    def export_chart(self, path: str | Path, dpi: int = 150) -> Path:
        self.figure.savefig(str(path), dpi=dpi)
        return Path(path)

    def _ask_export_csv(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, tr("Export table"), "", "CSV (*.csv)")
        if path:
            self.status.setText(tr("Written {p}").format(p=self.export_table(path)))

    def _ask_export_png(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, tr("Export chart"), "", "PNG (*.png)")
        if path:
            self.status.setText(tr("Written {p}").format(p=self.export_chart(path)))


def disagreement_layer(
    layer: QgsVectorLayer, ids: list[int], result: compare.LayerComparison
) -> QgsVectorLayer:
    """A memory layer of the parcels the models disagree on: the input fields plus one
    ``code_<k>`` field per model (its predicted code, NULL without a class), red outlines."""
    from qgis.core import QgsField, QgsFields, QgsWkbTypes
    from qgis.PyQt.QtCore import QVariant

    crs = layer.crs().authid() or layer.crs().toWkt()
    geometry = QgsWkbTypes.displayString(layer.wkbType())
    out = QgsVectorLayer(f"{geometry}?crs={crs}", DISAGREEMENT_LAYER_NAME, "memory")
    fields = QgsFields(layer.fields())
    model_fields = []
    for k, name in enumerate(result.models):
        field_name = f"code_{k + 1}"
        field = QgsField(field_name, QVariant.LongLong)
        field.setAlias(name)
        field.setComment(name)
        fields.append(field)
        model_fields.append(field_name)
    provider = out.dataProvider()
    provider.addAttributes(fields.toList())
    out.updateFields()
    wanted = {fid: i for i, fid in enumerate(ids) if result.disagree[i]}
    features = []
    from qgis.core import QgsFeatureRequest

    for feature in layer.getFeatures(QgsFeatureRequest().setFilterFids(list(wanted))):
        i = wanted[feature.id()]
        new = QgsFeature(out.fields())
        new.setGeometry(feature.geometry())
        codes = [None if c < 0 else int(c) for c in result.codes[i]]
        new.setAttributes(list(feature.attributes()) + codes)
        features.append(new)
    provider.addFeatures(features)
    out.updateExtents()
    symbol = QgsFillSymbol.createSimple(
        {"color": "255,0,0,40", "outline_color": "#e31a1c", "outline_width": "0.8"}
    )
    out.setRenderer(QgsSingleSymbolRenderer(symbol))
    out.setCustomProperty("parcel_crop_classifier/models", json.dumps(result.models))
    return out
