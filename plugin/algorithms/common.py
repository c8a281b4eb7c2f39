"""Shared by the algorithms: parameter blocks, core errors as Processing errors, parcels from a
feature source for the core's extractor, progress and cancellation adapters."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from qgis.core import (
    QgsFeatureRequest,
    QgsProcessingException,
    QgsProcessingFeatureSource,
    QgsProcessingFeedback,
    QgsProcessingMultiStepFeedback,
    QgsProcessingParameterFile,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QCoreApplication

from ...cropmodels.errors import user_message
from ...cropmodels.progress import Cancelled
from ...cropmodels.readahead import owner_thread
from ..paths import PACKAGE_NAME

LOGGER = logging.getLogger(f"{PACKAGE_NAME}.plugin")

STACK_HELP = (
    "a folder of per-date Sentinel-2 rasters (S2_YYYYMMDD.tif, one 10-band file per date or "
    "one file per band, SCL cloud masks beside them or in ../scl); you may also type the path "
    "of one multi-band raster whose band descriptions carry date and band, or of a JSON stack "
    "descriptor"
)


def tr(text: str) -> str:
    return QCoreApplication.translate("CropAlgorithm", text)


def stack_parameter(name: str) -> QgsProcessingParameterFile:
    """The image stack: a folder widget, though a multi-band raster or descriptor path typed
    into it is accepted too (a Processing parameter cannot browse for both)."""
    return QgsProcessingParameterFile(
        name, tr("Sentinel-2 image stack (folder of per-date rasters)"),
        behavior=QgsProcessingParameterFile.Folder,
    )  # fmt: skip


def require_torch() -> None:
    """PyTorch and safetensors must import in QGIS's Python; say how to get them if not."""
    missing = []
    for name in ("torch", "safetensors"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise QgsProcessingException(
            tr(
                "The Python that QGIS runs lacks {}: the classifier cannot run without it. "
                "Run Parcel Crop Classifier > Diagnostics for details and see the plugin's "
                "README for installing PyTorch, then restart QGIS."
            ).format(" and ".join(missing))
        )


@contextlib.contextmanager
def core_errors(cancelled_message: str) -> Iterator[None]:
    """The core's errors (all ``ValueError`` subclasses with actionable messages), the system's
    (``OSError``, ``MemoryError``) and its cancellation become ``QgsProcessingException``: the
    user reads one line saying what to do (:func:`cropmodels.errors.user_message`), never a
    traceback, which goes to the log."""
    try:
        yield
    except QgsProcessingException:
        raise
    except Cancelled:
        raise QgsProcessingException(cancelled_message) from None
    except Exception as exc:  # ValueError, OSError, MemoryError, torch's OOM, bugs
        LOGGER.debug("the algorithm failed", exc_info=True)  # the traceback: to the log
        raise QgsProcessingException(user_message(exc)) from exc


def multi_step(n: int, feedback: QgsProcessingFeedback) -> QgsProcessingMultiStepFeedback:
    """A multi-step feedback over ``feedback`` that is cancelled if it already was (it only
    follows cancellations signalled after its creation)."""
    steps = QgsProcessingMultiStepFeedback(n, feedback)
    if feedback.isCanceled():
        steps.cancel()
    return steps


class FeedbackProgress:
    """``progress(fraction, message)`` and ``is_cancelled()`` for the core, on a feedback."""

    def __init__(self, feedback: QgsProcessingFeedback, start: float = 0.0, end: float = 1.0):
        self.feedback, self.start, self.end = feedback, start, end
        self.last_message = ""

    def __call__(self, fraction: float, message: str) -> None:
        share = self.start + (self.end - self.start) * min(max(fraction, 0.0), 1.0)
        self.feedback.setProgress(100.0 * share)
        if message and message != self.last_message:
            self.last_message = message
            self.feedback.setProgressText(message)

    def is_cancelled(self) -> bool:
        return self.feedback.isCanceled()


class _FeedbackLogHandler(logging.Handler):
    """Core log records of one thread (and of the thread reading ahead for it), shown in the
    algorithm's log as they happen."""

    def __init__(self, feedback: QgsProcessingFeedback, thread: int) -> None:
        super().__init__(logging.INFO)
        self.feedback, self.thread = feedback, thread

    def emit(self, record: logging.LogRecord) -> None:
        # this run's thread, or the thread extracting ahead for it (predict.read_ahead)
        if record.thread is None or owner_thread(record.thread) != self.thread:
            return
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            self.feedback.pushWarning(message)
        else:
            self.feedback.pushInfo(message)


@contextlib.contextmanager
def core_log_to(feedback: QgsProcessingFeedback) -> Iterator[None]:
    """While the block runs, what the core logs from this thread also reaches ``feedback``."""
    logger = logging.getLogger(PACKAGE_NAME)
    handler = _FeedbackLogHandler(feedback, threading.get_ident())
    previous = logger.level
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@dataclass
class ParcelTable:
    """A feature source's parcels as the core reads them: a GeoDataFrame of geometries (in the
    source's CRS) whose row ``i`` is the feature ``fids[i]``, plus requested attributes."""

    gdf: Any
    fids: list[int]
    attributes: dict[str, list[Any]]


def crs_text(source: QgsProcessingFeatureSource) -> str:
    crs = source.sourceCrs()
    if not crs.isValid():
        raise QgsProcessingException(
            tr(
                "The parcel layer has no coordinate reference system. Set it (Layer Properties "
                "> Source) and run again."
            )
        )
    authid = crs.authid()
    return authid if authid.upper().startswith("EPSG:") else crs.toWkt()


def read_parcels(
    source: QgsProcessingFeatureSource,
    fields: Sequence[str] = (),
    feedback: QgsProcessingFeedback | None = None,
) -> ParcelTable:
    """Geometries (and ``fields``) of every feature, for the core's extractor.

    Geometry validity is not checked here: the extractor repairs what it can and gives the
    others the status ``invalid_geometry``, so one bad parcel never stops the run. Curved
    geometries are segmentised (shapely reads only linear ones).
    """
    import geopandas as gpd
    import shapely.wkb
    from shapely.errors import ShapelyError

    request = QgsFeatureRequest()
    if fields:
        request.setSubsetOfAttributes(list(fields), source.fields())
    else:
        request.setNoAttributes()
    geometries: list[Any] = []
    fids: list[int] = []
    attributes: dict[str, list[Any]] = {name: [] for name in fields}
    total = source.featureCount()
    for i, feature in enumerate(
        source.getFeatures(request, QgsProcessingFeatureSource.FlagSkipGeometryValidityChecks)
    ):
        if feedback is not None and i % 1000 == 0:
            if feedback.isCanceled():
                raise Cancelled("cancelled while reading the parcels")
            if total > 0:
                feedback.setProgress(100.0 * i / total)
        geometry = feature.geometry()
        shape = None
        if not geometry.isNull() and not geometry.isEmpty():
            if QgsWkbTypes.isCurvedType(geometry.wkbType()):
                geometry = geometry.__class__(geometry.constGet().segmentize())
            try:
                shape = shapely.wkb.loads(bytes(geometry.asWkb()))
            except (ShapelyError, ValueError, TypeError):
                shape = None  # the extractor reports it as invalid_geometry
        geometries.append(shape)
        fids.append(feature.id())
        for name in fields:
            value = feature[name]
            attributes[name].append(None if _is_null(value) else value)
    gdf = gpd.GeoDataFrame(geometry=gpd.GeoSeries(geometries), crs=crs_text(source))
    return ParcelTable(gdf, fids, attributes)


def _is_null(value: Any) -> bool:
    if value is None:
        return True
    is_null = getattr(value, "isNull", None)  # a NULL QVariant
    return bool(is_null()) if callable(is_null) else False


def features_in_order(
    source: QgsProcessingFeatureSource, fids: Sequence[int], chunk: int = 4096
) -> Iterator[Any]:
    """The source's features in the order of ``fids``, fetched ``chunk`` at a time (one
    request each, memory bounded by the chunk)."""
    flags = QgsProcessingFeatureSource.FlagSkipGeometryValidityChecks
    for start in range(0, len(fids), chunk):
        wanted = list(fids[start : start + chunk])
        request = QgsFeatureRequest().setFilterFids(wanted)
        found = {f.id(): f for f in source.getFeatures(request, flags)}
        for fid in wanted:
            yield found[fid]


def label_values(table: ParcelTable, field: str) -> list[Any]:
    """The label field's values as the store wants them: integer codes, None when empty."""
    out: list[Any] = []
    for value in table.attributes[field]:
        if value is None or (isinstance(value, str) and not value.strip()):
            out.append(None)
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise QgsProcessingException(
                tr(
                    "The label field '{}' holds {!r}, which is not an integer crop code. Choose "
                    "a field of crop codes (e.g. LPIS or WorldCereal codes)."
                ).format(field, value)
            ) from None
        if not number.is_integer():
            raise QgsProcessingException(
                tr("The label field '{}' holds {}, which is not an integer crop code.").format(
                    field, value
                )
            )
        out.append(int(number))
    return out


def extract_to_store(
    table: ParcelTable,
    stack: Any,
    out: Any,
    progress: FeedbackProgress,
    *,
    labels: list[Any] | None = None,
    label_field: str | None = None,
    ids: list[Any] | None = None,
    memory_mb: float = 2048.0,
) -> Any:
    """Extract the parcels of ``table`` into a store at ``out`` (replaced if it is a store);
    returns the core's ``StoreSummary``."""
    from ...cropmodels.extract import ExtractConfig, check_parcels, extract
    from ...cropmodels.store import write_store

    check_parcels(table.gdf, stack)  # polygons, some over the stack: else an error, no store
    stream = extract(
        table.gdf, stack, ExtractConfig(memory_mb=memory_mb), progress=progress,
        is_cancelled=progress.is_cancelled,
    )  # fmt: skip
    return write_store(
        stream,
        out,
        n_parcels=len(table.fids),
        stack_description=stack.describe(),
        dates=[d.date for d in stack.dates],
        parcel_ids=ids if ids is not None else [str(fid) for fid in table.fids],
        labels=labels,
        label_field=label_field,
        overwrite=True,
        is_cancelled=progress.is_cancelled,
    )
