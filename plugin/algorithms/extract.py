"""``cropclassifier:extract_patches``: the paper's patches and features of every parcel, into a
store (a folder) that training, evaluation and batch inference read back chunk by chunk."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
)

from ...cropmodels.stack import open_stack
from ...cropmodels.store import is_store
from .base import CropAlgorithm
from .common import (
    STACK_HELP,
    FeedbackProgress,
    core_errors,
    core_log_to,
    extract_to_store,
    label_values,
    multi_step,
    read_parcels,
    stack_parameter,
)

CANCELLED = "Cancelled: no store was written."


class ExtractPatchesAlgorithm(CropAlgorithm):
    PARCELS = "PARCELS"
    STACK = "STACK"
    LABEL_FIELD = "LABEL_FIELD"
    ID_FIELD = "ID_FIELD"
    MEMORY_MB = "MEMORY_MB"
    OUTPUT = "OUTPUT"
    N_PARCELS = "N_PARCELS"
    N_USABLE = "N_USABLE"
    N_LABELLED = "N_LABELLED"

    def name(self) -> str:
        return "extract_patches"

    def displayName(self) -> str:
        return self.tr("Extract parcel patches")

    def group(self) -> str:
        return self.tr("Training and evaluation")

    def groupId(self) -> str:
        return "training"

    def shortHelpString(self) -> str:
        return self.tr(
            "Cuts, for every parcel and every date of a Sentinel-2 stack, the paper's 32 x 32 "
            "patch of the ten bands (bounding box of the parcel, pixels outside it set to zero, "
            "cloudy pixels interpolated in time from the previous and next clear observation, "
            "resized) and the per-date mean and standard deviation of each band, and stores "
            "them in a compressed chunked store (a folder, zarr format).\n\n"
            "Stack: {}.\n\n"
            "Label field (optional): integer crop codes, for training and evaluation. Id field "
            "(optional): the parcel's id in the store (default: the feature id). Every parcel "
            "gets a status (ok, partly_outside, outside_stack, too_small, too_large, "
            "no_clear_observation, invalid_geometry); one bad parcel never stops the others. "
            "The store is written completely or not at all; an existing store is replaced."
        ).format(self.tr(STACK_HELP))

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.PARCELS, self.tr("Parcels"), [QgsProcessing.TypeVectorPolygon]
            )
        )
        self.addParameter(stack_parameter(self.STACK))
        self.addParameter(
            QgsProcessingParameterField(
                self.LABEL_FIELD,
                self.tr("Label field (integer crop codes)"),
                parentLayerParameterName=self.PARCELS,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterField(
                self.ID_FIELD,
                self.tr("Parcel id field"),
                parentLayerParameterName=self.PARCELS,
                optional=True,
            )
        )
        memory = QgsProcessingParameterNumber(
            self.MEMORY_MB, self.tr("Memory budget for the stack's pixels (MiB)"),
            type=QgsProcessingParameterNumber.Double, defaultValue=2048.0, minValue=64.0,
        )  # fmt: skip
        memory.setFlags(memory.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(memory)
        self.addParameter(
            QgsProcessingParameterFolderDestination(self.OUTPUT, self.tr("Patch store (folder)"))
        )
        self.addOutput(QgsProcessingOutputNumber(self.N_PARCELS, self.tr("Parcels")))
        self.addOutput(QgsProcessingOutputNumber(self.N_USABLE, self.tr("Parcels extracted")))
        self.addOutput(QgsProcessingOutputNumber(self.N_LABELLED, self.tr("Parcels labelled")))

    def processAlgorithm(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        steps = multi_step(2, feedback)
        with core_log_to(feedback), core_errors(self.tr(CANCELLED)):
            source = self.parameterAsSource(parameters, self.PARCELS, context)
            if source is None:
                raise QgsProcessingException(self.invalidSourceError(parameters, self.PARCELS))
            out = Path(self.parameterAsFileOutput(parameters, self.OUTPUT, context))
            check_store_target(out)
            label_field = self.parameterAsString(parameters, self.LABEL_FIELD, context) or None
            id_field = self.parameterAsString(parameters, self.ID_FIELD, context) or None
            stack = open_stack(self.parameterAsFile(parameters, self.STACK, context))
            fields = [f for f in (label_field, id_field) if f]
            table = read_parcels(source, fields, steps)
            labels = label_values(table, label_field) if label_field else None
            ids = table.attributes[id_field] if id_field else None
            steps.setCurrentStep(1)
            steps.pushInfo(
                self.tr("Extracting {} parcels x {} dates").format(len(table.fids), len(stack))
            )
            summary = extract_to_store(
                table, stack, out, FeedbackProgress(steps), labels=labels,
                label_field=label_field, ids=ids,
                memory_mb=self.parameterAsDouble(parameters, self.MEMORY_MB, context),
            )  # fmt: skip
        counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
        feedback.pushInfo(
            self.tr("Stored {} parcels ({}); {:.1f} MiB").format(
                summary.n_parcels, counts, summary.bytes_on_disk / 2**20
            )
        )
        return {
            self.OUTPUT: str(out),
            self.N_PARCELS: summary.n_parcels,
            self.N_USABLE: summary.n_usable,
            self.N_LABELLED: summary.n_labelled,
        }


def check_store_target(out: Path) -> None:
    """Processing may create the destination folder beforehand: an empty folder is replaced by
    the store; a folder with other content is refused (it is not ours to delete)."""
    if out.is_dir() and not is_store(out):
        if any(out.iterdir()):
            raise QgsProcessingException(
                f"{out} is a folder with other content; choose a new folder for the store."
            )
        shutil.rmtree(out)
