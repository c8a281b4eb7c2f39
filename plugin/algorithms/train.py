"""``cropclassifier:train_model``: a model file trained on labelled parcels, with the paper's
cross-validation, and an HTML report.

A thin wrapper over the core: the parcels are extracted into a temporary store
(:func:`cropmodels.store.write_store`), :func:`cropmodels.train.train_model` runs the paper's
protocol on it and saves the model (weights + card, atomically, only at the end), and the
core's Markdown report becomes one self-contained HTML page.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingUtils,
)

from ...cropmodels.architectures import get_spec, list_models
from ...cropmodels.stack import open_stack
from ...cropmodels.store import Store
from .base import CropAlgorithm
from .classify import DEVICES
from .common import (
    STACK_HELP,
    FeedbackProgress,
    core_errors,
    core_log_to,
    extract_to_store,
    label_values,
    multi_step,
    read_parcels,
    require_torch,
    stack_parameter,
)

# cropmodels.train.UNKNOWN_HANDLING (not imported here: the plugin loads without torch)
UNKNOWN_CODE_CHOICES = ("error", "exclude", "other")

CANCELLED = "Cancelled: no model was written."
GROUPINGS = ("stratified", "spatial")


class TrainModelAlgorithm(CropAlgorithm):
    PARCELS = "PARCELS"
    LABEL_FIELD = "LABEL_FIELD"
    STACK = "STACK"
    ARCHITECTURE = "ARCHITECTURE"
    EPOCHS = "EPOCHS"
    FOLDS = "FOLDS"
    CROSS_VALIDATE = "CROSS_VALIDATE"
    MERGE_RARE = "MERGE_RARE"
    CLASS_MAP = "CLASS_MAP"
    UNKNOWN_CODES = "UNKNOWN_CODES"
    GROUPING = "GROUPING"
    SEED = "SEED"
    DEVICE = "DEVICE"
    OUTPUT = "OUTPUT"
    REPORT = "REPORT"
    N_PARCELS = "N_PARCELS"
    N_CLASSES = "N_CLASSES"
    CV_FSCORE = "CV_FSCORE"

    def name(self) -> str:
        return "train_model"

    def displayName(self) -> str:
        return self.tr("Train a model")

    def group(self) -> str:
        return self.tr("Training and evaluation")

    def groupId(self) -> str:
        return "training"

    def shortHelpString(self) -> str:
        return self.tr(
            "Trains one of the architectures of Garnot et al. (IGARSS 2019) on labelled "
            "parcels and writes a model file (weights .safetensors + card .json) that "
            "'Classify parcels' can use, and an HTML report.\n\n"
            "The paper's protocol: {folds}-fold cross-validation with train:val:test = 3:1:1, "
            "Adam (learning rate 1e-3), batch 32, 50 epochs, the epoch with the best validation "
            "F-score tested; the card records the cross-validated overall accuracy, F-score, "
            "precision, recall, per-class F-scores and confusion matrix. The shipped model is "
            "then trained on four fifths of the parcels, the fifth choosing its epoch.\n\n"
            "Label field: integer crop codes. Classes with fewer parcels than folds cannot be "
            "cross-validated: they are dropped (with a warning) or, with 'merge rare classes', "
            "pooled into 'Other'. A class mapping CSV (source_code,code,name[,colour]) maps "
            "codes to the model's classes and gives their names and map colours; label codes "
            "it does not list stop the run, or (advanced) are excluded or merged into "
            "'Other'.\n\n"
            "Stack: {stack}.\n\nTraining on the CPU is slow; a CUDA GPU is used when present. "
            "Cancelling stops between batches and writes no model."
        ).format(folds=5, stack=self.tr(STACK_HELP))

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.PARCELS, self.tr("Labelled parcels"), [QgsProcessing.TypeVectorPolygon]
            )
        )
        self.addParameter(
            QgsProcessingParameterField(
                self.LABEL_FIELD,
                self.tr("Label field (integer crop codes)"),
                parentLayerParameterName=self.PARCELS,
            )
        )
        self.addParameter(stack_parameter(self.STACK))
        names = list_models()
        self.addParameter(
            QgsProcessingParameterEnum(
                self.ARCHITECTURE,
                self.tr("Architecture"),
                options=names,
                defaultValue="cnn_gru9",
                usesStaticStrings=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.EPOCHS,
                self.tr("Epochs"),
                QgsProcessingParameterNumber.Integer,
                50,
                minValue=1,
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(
                self.CROSS_VALIDATE, self.tr("Cross-validate (metrics in the card)"), True
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(
                self.MERGE_RARE, self.tr("Merge rare classes into 'Other'"), False
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.CLASS_MAP, self.tr("Class mapping (CSV)"), extension="csv", optional=True
            )
        )
        advanced = [
            QgsProcessingParameterNumber(
                self.FOLDS, self.tr("Cross-validation folds"),
                QgsProcessingParameterNumber.Integer, 5, minValue=3,
            ),
            QgsProcessingParameterEnum(
                self.GROUPING, self.tr("Folds"), options=list(GROUPINGS),
                defaultValue="stratified", usesStaticStrings=True,
            ),
            QgsProcessingParameterNumber(
                self.SEED, self.tr("Random seed"), QgsProcessingParameterNumber.Integer, 0,
                minValue=0,
            ),
            QgsProcessingParameterEnum(
                self.UNKNOWN_CODES, self.tr("Label codes not in the class mapping"),
                options=list(UNKNOWN_CODE_CHOICES), defaultValue="error", usesStaticStrings=True,
            ),
        ]  # fmt: skip
        for parameter in advanced:
            parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(parameter)
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
            QgsProcessingParameterFileDestination(
                self.OUTPUT, self.tr("Model file"), self.tr("Model card (*.json)")
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.REPORT, self.tr("Training report"), self.tr("HTML files (*.html)")
            )
        )
        self.addOutput(QgsProcessingOutputNumber(self.N_PARCELS, self.tr("Parcels trained on")))
        self.addOutput(QgsProcessingOutputNumber(self.N_CLASSES, self.tr("Classes")))
        self.addOutput(
            QgsProcessingOutputNumber(self.CV_FSCORE, self.tr("Cross-validated F-score"))
        )

    def processAlgorithm(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        from ...cropmodels.html import write_html
        from ...cropmodels.train import (
            TrainConfig,
            blocks_from_store,
            read_class_map,
            train_model,
        )

        steps = multi_step(2, feedback)
        store = Path(QgsProcessingUtils.tempFolder()) / f"train-{uuid.uuid4().hex[:8]}.store"
        try:
            with core_log_to(feedback), core_errors(self.tr(CANCELLED)):
                source = self.parameterAsSource(parameters, self.PARCELS, context)
                if source is None:
                    raise QgsProcessingException(self.invalidSourceError(parameters, self.PARCELS))
                require_torch()
                label_field = self.parameterAsString(parameters, self.LABEL_FIELD, context)
                architecture = self.parameterAsEnumString(parameters, self.ARCHITECTURE, context)
                get_spec(architecture)
                out = Path(self.parameterAsFileOutput(parameters, self.OUTPUT, context))
                stem = out.with_suffix("") if out.suffix in (".json", ".safetensors") else out
                report = self.parameterAsFileOutput(parameters, self.REPORT, context)
                class_map_path = self.parameterAsFile(parameters, self.CLASS_MAP, context)
                class_map = read_class_map(class_map_path) if class_map_path else None
                grouping = self.parameterAsEnumString(parameters, self.GROUPING, context)
                config = TrainConfig(
                    model=architecture,
                    epochs=self.parameterAsInt(parameters, self.EPOCHS, context),
                    n_folds=self.parameterAsInt(parameters, self.FOLDS, context),
                    seed=self.parameterAsInt(parameters, self.SEED, context),
                    grouping=grouping or "stratified",
                    merge_rare=self.parameterAsBool(parameters, self.MERGE_RARE, context),
                    unknown_codes=self.parameterAsEnumString(
                        parameters, self.UNKNOWN_CODES, context
                    )
                    or "error",
                    device=self.parameterAsEnumString(parameters, self.DEVICE, context) or "auto",
                    name=stem.name,
                )
                stack = open_stack(self.parameterAsFile(parameters, self.STACK, context))
                table = read_parcels(source, [label_field], steps)
                labels = label_values(table, label_field)
                if all(v is None for v in labels):
                    raise QgsProcessingException(
                        self.tr("The label field '{}' is empty for every parcel.").format(
                            label_field
                        )
                    )
                steps.pushInfo(
                    self.tr("Extracting {} parcels x {} dates").format(len(labels), len(stack))
                )
                extract_to_store(
                    table, stack, store, FeedbackProgress(steps), labels=labels,
                    label_field=label_field,
                )  # fmt: skip
                steps.setCurrentStep(1)
                steps.pushInfo(
                    self.tr("Training {} ({} epochs{})").format(
                        architecture,
                        config.epochs,
                        f", {config.n_folds}-fold cross-validation first"
                        if self.parameterAsBool(parameters, self.CROSS_VALIDATE, context)
                        else "",
                    )
                )
                groups = None
                if grouping == "spatial":  # blocks of the parcel centroids the store records
                    groups = blocks_from_store(Store(store), config.block_size_m)
                progress = FeedbackProgress(steps)
                result = train_model(
                    store, config, stem,
                    cv=self.parameterAsBool(parameters, self.CROSS_VALIDATE, context),
                    groups=groups, class_map=class_map, progress=progress,
                    is_cancelled=progress.is_cancelled,
                )  # fmt: skip
                for note in result.plan.notes:
                    feedback.pushWarning(note)
                if result.report_path is not None:
                    write_html(result.report_path, report, title=f"Training report: {stem.name}")
        finally:
            shutil.rmtree(store, ignore_errors=True)
        fscore = None
        if result.cv is not None:
            s = result.cv.summary["fscore"]
            fscore = s["mean"]
            feedback.pushInfo(
                self.tr("Cross-validated F-score {:.1f} ± {:.1f}").format(
                    100 * s["mean"], 100 * s["std"]
                )
            )
        feedback.pushInfo(self.tr("Model written: {}").format(stem.with_suffix(".json")))
        return {
            self.OUTPUT: str(stem.with_suffix(".json")),
            self.REPORT: report,
            self.N_PARCELS: len(result.plan.rows),
            self.N_CLASSES: len(result.card.classes),
            self.CV_FSCORE: fscore,
        }
