"""``cropclassifier:classify_parcels``: every parcel coloured by its predicted crop class.

Three stages under a ``QgsProcessingMultiStepFeedback``: read the parcels and check the model
and the stack against each other; extract and classify, streamed in batches by the core
(:mod:`cropmodels.predict`); write every input feature with the prediction fields and style the
result. Nothing is written before the third stage, and a run cancelled or failing while writing
removes what it wrote, so an output is complete or absent.
"""

from __future__ import annotations

import os
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
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsVectorFileWriter,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QVariant

from ...cropmodels import predict
from ...cropmodels.extract import check_parcels
from ...cropmodels.files import check_output_folder
from ...cropmodels.modelcard import ModelCard
from ...cropmodels.stack import open_stack
from ..styling import ApplyStyle, StyleFields, apply_style, write_qml
from .base import CropAlgorithm
from .common import (
    STACK_HELP,
    FeedbackProgress,
    core_errors,
    core_log_to,
    features_in_order,
    multi_step,
    read_parcels,
    require_torch,
    stack_parameter,
)

DEVICES = ("auto", "cpu", "cuda")
# dotted name of ..model_widget.ModelWidgetWrapper, imported by Processing's dialogs only
MODEL_WIDGET = f"{__name__.rsplit('.', 2)[0]}.model_widget.ModelWidgetWrapper"
CANCELLED = "Cancelled: nothing was written."


def bundled_model_names() -> list[str]:
    """Bundled models, the recommended one first (see the core's ``bundled_model_names``)."""
    return predict.bundled_model_names()


class ClassifyParcelsAlgorithm(CropAlgorithm):
    PARCELS = "PARCELS"
    STACK = "STACK"
    MODEL = "MODEL"
    DEVICE = "DEVICE"
    BATCH_SIZE = "BATCH_SIZE"
    MIN_CLEAR_DATES = "MIN_CLEAR_DATES"
    MEMORY_MB = "MEMORY_MB"
    DECLARED_FIELD = "DECLARED_FIELD"
    OUTPUT = "OUTPUT"
    STYLE = "STYLE"
    N_CLASSIFIED = "N_CLASSIFIED"
    N_UNCLASSIFIED = "N_UNCLASSIFIED"
    N_DISAGREEING = "N_DISAGREEING"
    DEVICE_USED = "DEVICE_USED"

    def name(self) -> str:
        return "classify_parcels"

    def displayName(self) -> str:
        return self.tr("Classify parcels")

    def group(self) -> str:
        return self.tr("Classification")

    def groupId(self) -> str:
        return "classification"

    def shortHelpString(self) -> str:
        names = bundled_model_names()
        bundled = ", ".join(names) if names else self.tr("none installed yet")
        return self.tr(
            "Classifies every parcel of a polygon layer into a crop class from a Sentinel-2 "
            "image time series, with one of the deep-learning models of Garnot et al. "
            "(IGARSS 2019).\n\n"
            "For each parcel and date the plugin cuts a 32 x 32 patch of the ten bands (pixels "
            "outside the parcel set to zero, cloudy pixels interpolated in time), runs the model "
            "in batches (on a CUDA GPU when there is one) and writes every input field plus: "
            "crop_code and crop_class (the predicted class), confidence (its probability), "
            "margin (top probability minus the second), one p_<class> probability per class, "
            "n_clear_dates and status (ok, or why a parcel got no class: outside_stack, "
            "too_small, too_large, no_clear_observation, invalid_geometry; partly_outside "
            "parcels are classified from their part inside the stack; parcels with fewer "
            "mostly clear dates than the advanced minimum, 1 by default, get "
            "no_clear_observation). A field already named like one of these keeps its name and "
            "values; the new one gets the suffix _pred.\n\n"
            "Stack: {stack}. When its dates differ from the model's, each parcel's series is "
            "resampled in time onto the model's dates.\n\n"
            "Model: the name of a bundled model ({bundled}) or a model file (.json with its "
            ".safetensors beside it).\n\n"
            "Declared crop field (optional): the crop each parcel was declared as (code or "
            "class name). Adds 'agrees' (empty where the model does not know the declared crop) "
            "and 'check_rank': parcels whose prediction disagrees come first, most confident "
            "first, then agreements, least confident first. The most suspicious declarations "
            "to check are at the top of the attribute table.\n\n"
            "The output is coloured by class in the model's colours; paler parcels are less "
            "confident; disagreements get a red outline. The style is also saved as a QML file "
            "beside the output."
        ).format(stack=self.tr(STACK_HELP), bundled=bundled)

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.PARCELS, self.tr("Parcels"), [QgsProcessing.TypeVectorPolygon]
            )
        )
        self.addParameter(stack_parameter(self.STACK))
        names = bundled_model_names()
        model = QgsProcessingParameterString(
            self.MODEL,
            self.tr("Model (bundled model name, or model file .json)"),
            defaultValue=names[0] if names else None,
        )
        # the dialogs show the bundled models and a file button; the value stays a string
        model.setMetadata({"widget_wrapper": {"class": MODEL_WIDGET}})
        self.addParameter(model)
        self.addParameter(
            QgsProcessingParameterEnum(
                self.DEVICE,
                self.tr("Device"),
                options=list(DEVICES),
                defaultValue="auto",
                usesStaticStrings=True,
            )
        )
        batch = QgsProcessingParameterNumber(
            self.BATCH_SIZE, self.tr("Parcels per batch (0: chosen from free memory)"),
            type=QgsProcessingParameterNumber.Integer, defaultValue=0, minValue=0,
        )  # fmt: skip
        clear = QgsProcessingParameterNumber(
            self.MIN_CLEAR_DATES,
            self.tr("Minimum number of mostly clear dates for a class"),
            type=QgsProcessingParameterNumber.Integer, defaultValue=1, minValue=0,
        )  # fmt: skip
        memory = QgsProcessingParameterNumber(
            self.MEMORY_MB, self.tr("Memory budget for the stack's pixels (MiB)"),
            type=QgsProcessingParameterNumber.Double, defaultValue=2048.0, minValue=64.0,
        )  # fmt: skip
        for parameter in (batch, clear, memory):
            parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(parameter)
        self.addParameter(
            QgsProcessingParameterField(
                self.DECLARED_FIELD,
                self.tr("Declared crop field (to check declarations)"),
                parentLayerParameterName=self.PARCELS,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSink(
                self.OUTPUT, self.tr("Classified parcels"), QgsProcessing.TypeVectorPolygon
            )
        )
        self.addOutput(QgsProcessingOutputFile(self.STYLE, self.tr("Style (QML)")))
        self.addOutput(QgsProcessingOutputNumber(self.N_CLASSIFIED, self.tr("Parcels classified")))
        self.addOutput(
            QgsProcessingOutputNumber(self.N_UNCLASSIFIED, self.tr("Parcels without a class"))
        )
        self.addOutput(
            QgsProcessingOutputNumber(
                self.N_DISAGREEING, self.tr("Parcels disagreeing with their declaration")
            )
        )
        self.addOutput(QgsProcessingOutputString(self.DEVICE_USED, self.tr("Device used")))

    # -- run ----------------------------------------------------------------------------------

    def processAlgorithm(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        steps = multi_step(3, feedback)
        with core_log_to(feedback), core_errors(self.tr(CANCELLED)):
            source = self.parameterAsSource(parameters, self.PARCELS, context)
            if source is None:
                raise QgsProcessingException(self.invalidSourceError(parameters, self.PARCELS))
            require_torch()
            declared = self.parameterAsString(parameters, self.DECLARED_FIELD, context) or None
            if declared and source.fields().lookupField(declared) < 0:
                raise QgsProcessingException(
                    self.tr("The parcel layer has no field {!r}.").format(declared)
                )

            steps.setCurrentStep(0)
            steps.pushInfo(self.tr("Reading the model, the stack and the parcels"))
            config = predict.PredictConfig(
                device=self.parameterAsEnumString(parameters, self.DEVICE, context) or "auto",
                batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context),
                min_clear_dates=self.parameterAsInt(parameters, self.MIN_CLEAR_DATES, context),
                memory_mb=self.parameterAsDouble(parameters, self.MEMORY_MB, context),
            )
            destination = _file_destination(
                self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
            )
            if destination is not None:  # refused now, not after classifying every parcel
                check_output_folder(destination)
            model_spec = self.parameterAsString(parameters, self.MODEL, context)
            classifier = predict.Classifier.load(model_spec, config.device)
            card = classifier.card
            stack = open_stack(self.parameterAsFile(parameters, self.STACK, context))
            classifier.prepare(stack)  # dates and bands checked before any parcel is read
            steps.pushInfo(
                self.tr("Model {} ({}, {} classes) on {}; stack of {} dates").format(
                    card.name,
                    card.architecture,
                    len(card.classes),
                    classifier.device,
                    len(stack),
                )
            )
            table = read_parcels(source, [declared] if declared else [], steps)
            check_parcels(table.gdf, stack)  # polygons, some over the stack: else an error
            n = len(table.fids)

            steps.setCurrentStep(1)
            steps.pushInfo(self.tr("Extracting and classifying {} parcels").format(n))
            progress = FeedbackProgress(steps)
            summary = predict.PredictSummary()
            results: list[predict.ParcelPrediction | None] = [None] * n
            for prediction in classifier.classify(
                table.gdf, stack, config, progress=progress, is_cancelled=progress.is_cancelled,
                summary=summary,
            ):  # fmt: skip
                results[prediction.index] = prediction
            predictions: list[predict.ParcelPrediction] = results  # type: ignore[assignment]
            for note in summary.notes:
                steps.pushWarning(note)
            steps.pushInfo(
                self.tr("{} of {} parcels classified: {}").format(
                    summary.n_classified, n, predict.describe_counts(summary.counts)
                )
            )
            if summary.oom_halvings:
                steps.pushWarning(
                    self.tr("The GPU ran out of memory; batches were reduced to {} parcels.")
                    .format(summary.batch_size)
                )  # fmt: skip
            if steps.isCanceled():
                raise QgsProcessingException(self.tr(CANCELLED))

            steps.setCurrentStep(2)
            agrees = None
            if declared:
                values = table.attributes[declared]
                agrees = [predict.agreement(p, v, card) for p, v in zip(predictions, values,
                                                                        strict=True)]  # fmt: skip
            dest_id, qml = self._write(
                parameters, context, steps, source, table.fids, predictions, agrees, card
            )
        n_disagreeing = sum(a is False for a in agrees) if agrees is not None else 0
        if agrees is not None:
            steps.pushInfo(
                self.tr(
                    "{} parcels disagree with '{}'; they come first in the output, most "
                    "confident first."
                ).format(n_disagreeing, declared)
            )
        return {
            self.OUTPUT: dest_id,
            self.STYLE: qml,
            self.N_CLASSIFIED: summary.n_classified,
            self.N_UNCLASSIFIED: n - summary.n_classified,
            self.N_DISAGREEING: n_disagreeing,
            self.DEVICE_USED: summary.device,
        }

    # -- output -------------------------------------------------------------------------------

    def _fields(self, source: Any, card: ModelCard, declared: bool) -> tuple[QgsFields, dict]:
        existing = [f.name() for f in source.fields()]
        wanted = predict.output_field_names(card, declared=declared)
        names = predict.resolve_field_names(existing, wanted)
        types = {predict.CROP_CODE: QVariant.Int, predict.CROP_CLASS: QVariant.String,
                 predict.N_CLEAR_DATES: QVariant.Int, predict.STATUS: QVariant.String,
                 predict.AGREES: QVariant.Bool, predict.CHECK_RANK: QVariant.Int}  # fmt: skip
        fields = QgsFields(source.fields())
        for name in wanted:
            fields.append(QgsField(names[name], types.get(name, QVariant.Double)))
        return fields, names

    def _write(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
        source: Any,
        fids: list[int],
        predictions: list[predict.ParcelPrediction],
        agrees: list[bool | None] | None,
        card: ModelCard,
    ) -> tuple[str, str]:
        fields, names = self._fields(source, card, agrees is not None)
        for original, new in names.items():
            if original != new:
                feedback.pushWarning(
                    self.tr(
                        "The parcel layer already has a field '{}'; it keeps its values and "
                        "the prediction's is named '{}'."
                    ).format(original, new)
                )
        ranks = None
        if agrees is not None:
            order = predict.suspicion_order(agrees, [p.confidence for p in predictions])
            ranks = predict.check_ranks(order)
        else:
            order = range(len(fids))
        sink, dest_id = self.parameterAsSink(
            parameters, self.OUTPUT, context, fields, source.wkbType(), source.sourceCrs()
        )
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        n_input = len(source.fields())
        writer: Any = sink  # the only reference: dropping it closes the file
        del sink
        try:
            total = max(len(fids), 1)
            ordered_fids = [fids[i] for i in order]
            for k, (i, feature) in enumerate(
                zip(order, features_in_order(source, ordered_fids), strict=True)
            ):
                if k % 256 == 0:
                    if feedback.isCanceled():
                        raise QgsProcessingException(self.tr(CANCELLED))
                    feedback.setProgress(100.0 * k / total)
                values = predict.prediction_values(predictions[i], card)
                if agrees is not None:
                    values += [agrees[i], int(ranks[i])]
                out = QgsFeature(fields, feature.id())
                out.setGeometry(feature.geometry())
                attributes = list(feature.attributes())[:n_input] + values
                out.setAttributes(attributes)
                if not writer.addFeature(out, QgsFeatureSink.FastInsert):
                    raise QgsProcessingException(
                        self.tr("Could not write the output: {}").format(writer.lastError())
                    )
            writer.flushBuffer()
            writer = None  # closes the file: the output is complete
        except BaseException:
            writer = None
            self._remove_partial(dest_id, feedback)
            raise
        style_fields = StyleFields(
            crop_code=names[predict.CROP_CODE], crop_class=names[predict.CROP_CLASS],
            confidence=names[predict.CONFIDENCE], status=names[predict.STATUS],
            agrees=names.get(predict.AGREES), check_rank=names.get(predict.CHECK_RANK),
        )  # fmt: skip
        qml = self._style(dest_id, context, feedback, card, style_fields, fields)
        return dest_id, qml

    def _style(
        self,
        dest_id: str,
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
        card: ModelCard,
        style_fields: StyleFields,
        fields: QgsFields,
    ) -> str:
        """QML beside a file output (in the temporary folder otherwise), the default style of
        a GeoPackage output, and the post-processor that styles the loaded layer."""
        path = _file_of(dest_id)
        if path is not None:
            qml = str(path.with_suffix(".qml"))
        else:
            qml = QgsProcessingUtils.generateTempFilename("classified_parcels.qml")
        template = QgsVectorLayer("Polygon", "template", "memory")
        template.dataProvider().addAttributes(fields.toList())
        template.updateFields()
        write_qml(qml, card, style_fields, template)
        if path is not None and path.suffix.lower() == ".gpkg":
            layer = QgsVectorLayer(dest_id, "classified", "ogr")
            if layer.isValid() and layer.dataProvider().isSaveAndLoadStyleToDatabaseSupported():
                apply_style(layer, card, style_fields)
                error = layer.saveStyleToDatabase(
                    "crop classes", f"Classes of {card.name}", True, ""
                )
                if error:
                    feedback.pushWarning(
                        self.tr("The style was not stored in the GeoPackage: {}").format(error)
                    )
            del layer
        feedback.pushInfo(self.tr("Style saved as {}").format(qml))
        if context.willLoadLayerOnCompletion(dest_id):
            details = context.layerToLoadOnCompletionDetails(dest_id)
            name = self.tr("Classified parcels ({})").format(card.name)
            details.setPostProcessor(ApplyStyle.create(qml, name))
        return qml

    def _remove_partial(self, dest_id: str, feedback: QgsProcessingFeedback) -> None:
        """Delete a half-written file output; say so where it cannot be removed."""
        path = _file_of(dest_id)
        if path is not None and "layername=" not in dest_id:
            if path.suffix.lower() == ".shp":
                QgsVectorFileWriter.deleteShapeFile(str(path))
            else:
                for extra in ("", "-wal", "-shm", "-journal"):
                    Path(f"{path}{extra}").unlink(missing_ok=True)
        elif path is not None or not dest_id.startswith("memory:"):
            feedback.reportError(self.tr("The output {} is incomplete; delete it.").format(dest_id))


def _file_destination(dest: str) -> Path | None:
    """The file an output destination will create (``path`` or ``path|layername=...``); None
    for memory layers and database URIs."""
    if not dest or dest.startswith(("memory:", "ogr:", "postgres:", "postgis:", "spatialite:")):
        return None
    return Path(dest.split("|", 1)[0])


def _file_of(dest_id: str) -> Path | None:
    """The file behind a sink destination (``path`` or ``path|layername=...``), if any."""
    if not dest_id or dest_id.startswith(("memory:", "ogr:", "postgres:", "postgis:")):
        return None
    path = Path(dest_id.split("|", 1)[0])
    return path if os.path.isfile(path) else None
