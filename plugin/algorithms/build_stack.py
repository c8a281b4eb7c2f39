"""``cropclassifier:build_stack``: Sentinel-2 L2A products or STAC items as downloaded, into
a small per-date image stack over the parcels that the other algorithms reuse.

The work is done by :func:`cropmodels.buildstack.build_stack`; this adapts QGIS parameters
(file lists, a folder, a feature source or an extent, dates) and Processing feedback to it.
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterDateTime,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
)

from ...cropmodels.buildstack import build_stack
from ...cropmodels.errors import user_message
from ...cropmodels.progress import Cancelled
from .base import CropAlgorithm
from .common import LOGGER


class BuildStackAlgorithm(CropAlgorithm):
    INPUT = "INPUT"
    INPUT_FOLDER = "INPUT_FOLDER"
    PARCELS = "PARCELS"
    EXTENT = "EXTENT"
    START = "START"
    END = "END"
    MAX_CLOUD = "MAX_CLOUD"
    OUTPUT = "OUTPUT"
    DATES = "DATES"
    LEFT_OUT = "LEFT_OUT"

    def name(self) -> str:
        return "build_stack"

    def displayName(self) -> str:
        return self.tr("Build image stack from Sentinel-2 products or STAC items")

    def group(self) -> str:
        return self.tr("Image stacks")

    def groupId(self) -> str:
        return "stacks"

    def shortHelpString(self) -> str:
        return self.tr(
            "Turns Sentinel-2 Level-2A products as downloaded from the Copernicus Browser or "
            "Data Space (.SAFE folders or their .zip files, left zipped) or STAC items (an "
            "ItemCollection saved from a search, or item JSON files, with local or http(s) "
            "Cloud-Optimised GeoTIFF assets) into a small image stack covering the parcels: "
            "one GeoTIFF per date (S2_YYYYMMDD.tif, the ten bands B02-B12 at 10 m, 20 m bands "
            "resampled by nearest neighbour) with its Sen2Cor scene classification in scl/. "
            "Use the output folder as the image stack of the other algorithms.\n\n"
            "Products: give the files (for a .SAFE folder, its MTD_MSIL2A.xml) or a folder "
            "holding them. Only the parcels' extent is read. Tiles of the same day are "
            "mosaicked; the same tile seen twice on one day (two orbits) gives one observation "
            "per pixel, the clear one (ranked by clear fraction over the parcels). The "
            "processing-baseline offset (BOA_ADD_OFFSET, from baseline 04.00) is removed, so "
            "old and new products give the same reflectance x 10000.\n\n"
            "Dates outside START-END, dates on which no parcel pixel was observed, and dates "
            "on which more than MAX_CLOUD % of the parcel pixels are cloud, cloud shadow, "
            "cirrus or no data are left out; build_stack.json in the output lists them with "
            "the reason. The output is written completely or not at all."
        )

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        self.addParameter(
            QgsProcessingParameterMultipleLayers(
                self.INPUT,
                self.tr("Products (.zip, MTD_MSIL2A.xml) or STAC JSON files"),
                layerType=QgsProcessing.TypeFile,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.INPUT_FOLDER,
                self.tr("Folder of products (.SAFE folders, .zip) or STAC item JSON"),
                behavior=QgsProcessingParameterFile.Folder,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.PARCELS,
                self.tr("Parcels (extent of the stack, cloud cover measured over them)"),
                [QgsProcessing.TypeVectorPolygon],
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterExtent(
                self.EXTENT, self.tr("Extent, when no parcels are given"), optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterDateTime(
                self.START,
                self.tr("First date"),
                type=QgsProcessingParameterDateTime.Date,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterDateTime(
                self.END,
                self.tr("Last date"),
                type=QgsProcessingParameterDateTime.Date,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MAX_CLOUD,
                self.tr("Maximum cloud over the parcels (%)"),
                type=QgsProcessingParameterNumber.Double,
                minValue=0.0,
                maxValue=100.0,
                defaultValue=100.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterFolderDestination(self.OUTPUT, self.tr("Image stack folder"))
        )
        self.addOutput(QgsProcessingOutputNumber(self.DATES, self.tr("Dates written")))
        self.addOutput(QgsProcessingOutputNumber(self.LEFT_OUT, self.tr("Dates left out")))

    def processAlgorithm(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        sources = [f for f in self.parameterAsFileList(parameters, self.INPUT, context) if f]
        folder = self.parameterAsFile(parameters, self.INPUT_FOLDER, context)
        if folder:
            sources.append(folder)
        if not sources:
            raise QgsProcessingException(
                self.tr("Give the products or STAC files, or the folder that holds them.")
            )
        parcels = self._parcels(parameters, context)
        bounds = bounds_crs = None
        if parcels is None:
            extent = self.parameterAsExtent(parameters, self.EXTENT, context)
            if extent is None or extent.isNull() or extent.isEmpty():
                raise QgsProcessingException(
                    self.tr("Give the parcels (or an extent) that the stack should cover.")
                )
            bounds = (extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum())
            bounds_crs = _crs_text(self.parameterAsExtentCrs(parameters, self.EXTENT, context))
        out = self.parameterAsString(parameters, self.OUTPUT, context)

        def progress(fraction: float, message: str) -> None:
            feedback.setProgress(100.0 * fraction)
            feedback.setProgressText(message)

        try:
            result = build_stack(
                sources if len(sources) > 1 else sources[0],
                out,
                parcels=parcels,
                bounds=bounds,
                bounds_crs=bounds_crs,
                start=self._date(parameters, self.START, context),
                end=self._date(parameters, self.END, context),
                max_cloud=self.parameterAsDouble(parameters, self.MAX_CLOUD, context) / 100.0,
                overwrite=True,  # only ever a stack built before; other folders are refused
                progress=progress,
                is_cancelled=feedback.isCanceled,
            )
        except Cancelled:
            feedback.pushInfo(self.tr("Cancelled: nothing was written."))
            return {}
        except Exception as exc:  # StackError, ParcelError, OSError, MemoryError: one line
            LOGGER.debug("build_stack failed", exc_info=True)
            raise QgsProcessingException(user_message(exc)) from exc
        for item in result.written:
            feedback.pushInfo(
                f"{item['date']}: {item['file']} (cloud over the parcels "
                f"{item['cloud_fraction']:.0%})"
            )
        for item in result.skipped:
            feedback.pushInfo(f"{item['date']}: left out, {item['reason']}")
        feedback.pushInfo(
            self.tr("{} dates written to {} ({} x {} px, {}).").format(
                len(result.written), out, result.width, result.height, result.crs
            )
        )
        return {
            self.OUTPUT: out,
            self.DATES: len(result.written),
            self.LEFT_OUT: len(result.skipped),
        }

    def _parcels(self, parameters: dict[str, Any], context: QgsProcessingContext) -> Any:
        """The parcel source as a GeoDataFrame (geometries only), or None when not given."""
        source = self.parameterAsSource(parameters, self.PARCELS, context)
        if source is None:
            return None
        import geopandas as gpd
        from shapely import wkb

        geoms = []
        for feature in source.getFeatures():
            geom = feature.geometry()
            if geom is not None and not geom.isNull() and not geom.isEmpty():
                geoms.append(wkb.loads(bytes(geom.asWkb())))
        if not geoms:
            raise QgsProcessingException(self.tr("The parcel layer has no geometry."))
        crs = source.sourceCrs()
        if not crs.isValid():
            raise QgsProcessingException(
                self.tr("The parcel layer has no coordinate reference system; set it first.")
            )
        return gpd.GeoDataFrame(geometry=geoms, crs=_crs_text(crs))

    def _date(self, parameters: dict[str, Any], key: str, context: QgsProcessingContext) -> Any:
        if parameters.get(key) in (None, ""):
            return None
        value = self.parameterAsDateTime(parameters, key, context)
        if value is None or not value.isValid():
            return None
        return value.date().toString("yyyy-MM-dd")


def _crs_text(crs: QgsCoordinateReferenceSystem) -> str:
    """The CRS as pyproj and rasterio read it: its EPSG code, else WKT2."""
    if crs.authid().upper().startswith("EPSG:"):
        return crs.authid()
    return crs.toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED)
