"""``cropclassifier:evaluate_models``: how well models classify labelled parcels.

Each model classifies the parcels exactly as ``classify_parcels`` would (same extraction, time
resampling and batching, :mod:`cropmodels.predict`), and its classes are scored against the
labels with the paper's metrics: one row per model in a table, per-class F-scores and
confusion matrices in an optional HTML report.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QVariant

from ...cropmodels import predict
from ...cropmodels.extract import check_parcels
from ...cropmodels.stack import open_stack
from .base import CropAlgorithm
from .classify import DEVICES, bundled_model_names
from .common import (
    STACK_HELP,
    FeedbackProgress,
    core_errors,
    core_log_to,
    multi_step,
    read_parcels,
    require_torch,
    stack_parameter,
)

CANCELLED = "Cancelled: nothing was written."
METRICS = ("overall_accuracy", "fscore", "precision", "recall")


class EvaluateModelsAlgorithm(CropAlgorithm):
    PARCELS = "PARCELS"
    LABEL_FIELD = "LABEL_FIELD"
    STACK = "STACK"
    BUNDLED = "BUNDLED"
    MODELS = "MODELS"
    DEVICE = "DEVICE"
    OUTPUT = "OUTPUT"
    REPORT = "REPORT"

    def name(self) -> str:
        return "evaluate_models"

    def displayName(self) -> str:
        return self.tr("Evaluate models")

    def group(self) -> str:
        return self.tr("Training and evaluation")

    def groupId(self) -> str:
        return "training"

    def shortHelpString(self) -> str:
        return self.tr(
            "Classifies labelled parcels with one or more models, exactly as 'Classify parcels' "
            "does, and scores each against the labels: overall accuracy, F-score, precision "
            "and recall (unweighted class averages, as in the paper), with the parcels scored "
            "and excluded and the speed on this machine. One row per model in the output "
            "table; per-class F-scores and confusion matrices in the optional HTML report.\n\n"
            "Models: bundled ones by name and/or model files (.json). With none chosen, every "
            "bundled model is evaluated.\n\n"
            "Label field: the true crop of each parcel, as a code (matched through each model's "
            "class mapping) or a class name. Parcels without a label, without a class (outside "
            "the stack, cloudy...) or with a crop a model does not know are excluded, not "
            "counted as errors.\n\nStack: {}."
        ).format(self.tr(STACK_HELP))

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.PARCELS, self.tr("Labelled parcels"), [QgsProcessing.TypeVectorPolygon]
            )
        )
        self.addParameter(
            QgsProcessingParameterField(
                self.LABEL_FIELD,
                self.tr("Label field (true crop code or class name)"),
                parentLayerParameterName=self.PARCELS,
            )
        )
        self.addParameter(stack_parameter(self.STACK))
        self.addParameter(
            QgsProcessingParameterEnum(
                self.BUNDLED,
                self.tr("Bundled models"),
                options=bundled_model_names(),
                allowMultiple=True,
                optional=True,
                usesStaticStrings=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterMultipleLayers(
                self.MODELS,
                self.tr("Model files (.json)"),
                QgsProcessing.TypeFile,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                self.DEVICE,
                self.tr("Device"),
                options=list(DEVICES),
                defaultValue="auto",
                usesStaticStrings=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSink(
                self.OUTPUT, self.tr("Model metrics"), QgsProcessing.TypeVector
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.REPORT,
                self.tr("Evaluation report"),
                self.tr("HTML files (*.html)"),
                optional=True,
                createByDefault=False,
            )
        )

    def processAlgorithm(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        with core_log_to(feedback), core_errors(self.tr(CANCELLED)):
            source = self.parameterAsSource(parameters, self.PARCELS, context)
            if source is None:
                raise QgsProcessingException(self.invalidSourceError(parameters, self.PARCELS))
            require_torch()
            models = self._models(parameters, context)
            label_field = self.parameterAsString(parameters, self.LABEL_FIELD, context)
            device = self.parameterAsEnumString(parameters, self.DEVICE, context) or "auto"
            stack = open_stack(self.parameterAsFile(parameters, self.STACK, context))
            steps = multi_step(len(models) + 1, feedback)
            table = read_parcels(source, [label_field], steps)
            check_parcels(table.gdf, stack)
            labels = table.attributes[label_field]
            evaluations = []
            for k, model in enumerate(models):
                steps.setCurrentStep(k + 1)
                evaluations.append(self._evaluate(model, table, labels, stack, device, steps))
            fields = self._fields()
            sink, dest_id = self.parameterAsSink(
                parameters, self.OUTPUT, context, fields, QgsWkbTypes.NoGeometry
            )
            if sink is None:
                raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
            for row in evaluations:
                feature = QgsFeature(fields)
                feature.setAttributes([row[f.name()] for f in fields])
                sink.addFeature(feature, QgsFeatureSink.FastInsert)
            results: dict[str, Any] = {self.OUTPUT: dest_id}
            report = self.parameterAsFileOutput(parameters, self.REPORT, context)
            if report:
                write_report(Path(report), evaluations, label_field)
                results[self.REPORT] = report
        return results

    def _models(self, parameters: dict[str, Any], context: QgsProcessingContext) -> list[str]:
        chosen = [n for n in self.parameterAsEnumStrings(parameters, self.BUNDLED, context) if n]
        chosen += [f for f in self.parameterAsFileList(parameters, self.MODELS, context) if f]
        if not chosen:
            chosen = bundled_model_names()
        if not chosen:
            raise QgsProcessingException(
                self.tr("No model to evaluate: no model is bundled; choose model files.")
            )
        return chosen

    def _evaluate(
        self,
        model: str,
        table: Any,
        labels: list[Any],
        stack: Any,
        device: str,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        classifier = predict.Classifier.load(model, device)
        card = classifier.card
        feedback.pushInfo(self.tr("Evaluating {} ({})").format(card.name, card.architecture))
        progress = FeedbackProgress(feedback)
        summary = predict.PredictSummary()
        predictions: list[Any] = [None] * len(labels)
        start = time.perf_counter()
        for p in classifier.classify(
            table.gdf, stack, predict.PredictConfig(device=device), progress=progress,
            is_cancelled=progress.is_cancelled, summary=summary,
        ):  # fmt: skip
            predictions[p.index] = p
        seconds = time.perf_counter() - start
        for note in summary.notes:
            feedback.pushWarning(f"{card.name}: {note}")
        metrics = predict.evaluate_predictions(predictions, labels, card)
        excluded = metrics["excluded"]
        cv = (card.metrics.get("cross_validation") or {}).get("summary", {})
        row = {
            "model": card.name,
            "architecture": card.architecture,
            "parameters": card.parameter_count,
            "n_scored": metrics["n"],
            "n_excluded": sum(excluded.values()),
            **{m: round(float(metrics[m]), 6) for m in METRICS},
            "cv_fscore": (cv.get("fscore") or {}).get("mean"),
            "seconds": round(seconds, 3),
            "parcels_per_s": round(len(labels) / seconds, 2) if seconds > 0 else None,
            "device": summary.device,
            "metrics": metrics,
        }
        feedback.pushInfo(
            self.tr("{}: OA {:.1f}, F-score {:.1f} on {} parcels ({} excluded: {})").format(
                card.name,
                100 * row["overall_accuracy"],
                100 * row["fscore"],
                row["n_scored"],
                row["n_excluded"],
                ", ".join(f"{v} {k}" for k, v in excluded.items() if v),
            )
        )
        return row

    @staticmethod
    def _fields() -> QgsFields:
        fields = QgsFields()
        for name, kind in (
            ("model", QVariant.String), ("architecture", QVariant.String),
            ("parameters", QVariant.Int), ("n_scored", QVariant.Int),
            ("n_excluded", QVariant.Int), *((m, QVariant.Double) for m in METRICS),
            ("cv_fscore", QVariant.Double), ("seconds", QVariant.Double),
            ("parcels_per_s", QVariant.Double), ("device", QVariant.String),
        ):  # fmt: skip
            fields.append(QgsField(name, kind))
        return fields


def write_report(out: Path, evaluations: list[dict[str, Any]], label_field: str) -> Path:
    """Markdown with tables and confusion matrices, converted to one HTML page."""
    from ...cropmodels.html import write_html
    from ...cropmodels.report import pct, plot_confusion, table

    with tempfile.TemporaryDirectory() as folder:
        lines = [
            "# Model evaluation",
            "",
            f"Reference: the parcels' field `{label_field}`. F-score, precision and recall are "
            "unweighted class averages.",
            "",
            table(
                [
                    "model",
                    "architecture",
                    "OA",
                    "F-score",
                    "precision",
                    "recall",
                    "parcels",
                    "excluded",
                    "parcels/s",
                ],
                [
                    [
                        r["model"],
                        r["architecture"],
                        pct(r["overall_accuracy"]),
                        pct(r["fscore"]),
                        pct(r["precision"]),
                        pct(r["recall"]),
                        r["n_scored"],
                        r["n_excluded"],
                        r["parcels_per_s"],
                    ]
                    for r in evaluations
                ],
            ),
        ]
        for k, r in enumerate(evaluations):
            m = r["metrics"]
            png = plot_confusion(m["confusion_matrix"], m["classes"], Path(folder) / f"{k}.png",
                                 r["model"])  # fmt: skip
            lines += [
                "",
                f"## {r['model']}",
                "",
                table(["class", "F-score", "parcels"],
                      [[c, pct(f), s] for c, f, s in zip(m["classes"], m["per_class_fscore"],
                                                         m["support"], strict=True)]),
                "",
                f"![confusion matrix of {r['model']}]({png.name})",
            ]  # fmt: skip
        md = Path(folder) / "report.md"
        md.write_text("\n".join(lines) + "\n", encoding="utf-8")
        out.parent.mkdir(parents=True, exist_ok=True)
        return write_html(md, out, title="Model evaluation")
