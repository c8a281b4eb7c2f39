"""Render classified parcels over a true-colour Sentinel-2 date to a PNG, with QGIS's layout
engine: the map, the classes' legend, a scale bar, a title and a note on how to read it.

Used by ``make demo`` (``build/demo/classified_map.png``, copied to ``docs/``); runs headless
(``QT_QPA_PLATFORM=offscreen``). The parcels keep the style the plugin gave them (the
GeoPackage's default style, else the QML beside it); the image is bands 3, 2, 1 (B04, B03, B02
in the paper's band order) stretched between the 2nd and 98th percentiles of each band.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

RGB_BANDS = (3, 2, 1)  # B04, B03, B02 of a 10-band file in the paper's order
CUT = (0.02, 0.98)


def true_colour_layer(image: Path, name: str):
    """The image as a contrast-stretched RGB layer. GDAL would save the histogram it computes
    for the stretch beside the image (``.aux.xml``): the input is not ours to write, so that
    is switched off (``GDAL_PAM_ENABLED=NO``) while the layer is open."""
    from qgis.core import (
        QgsBilinearRasterResampler,
        QgsContrastEnhancement,
        QgsMultiBandColorRenderer,
        QgsRasterLayer,
    )

    layer = QgsRasterLayer(str(image), name)
    if not layer.isValid():
        raise SystemExit(f"cannot open {image} as a raster")
    provider = layer.dataProvider()
    renderer = QgsMultiBandColorRenderer(provider, *RGB_BANDS)
    setters = (
        renderer.setRedContrastEnhancement,
        renderer.setGreenContrastEnhancement,
        renderer.setBlueContrastEnhancement,
    )
    for band, setter in zip(RGB_BANDS, setters, strict=True):
        low, high = provider.cumulativeCut(band, CUT[0], CUT[1], provider.extent(), 0)
        enhancement = QgsContrastEnhancement(provider.dataType(band))
        enhancement.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
        enhancement.setMinimumValue(low)
        enhancement.setMaximumValue(high)
        setter(enhancement)
    layer.setRenderer(renderer)
    layer.resampleFilter().setZoomedInResampler(QgsBilinearRasterResampler())
    return layer


def parcels_layer(classified: Path, name: str):
    from qgis.core import QgsVectorLayer

    layer = QgsVectorLayer(str(classified), name, "ogr")
    if not layer.isValid():
        raise SystemExit(f"cannot open {classified} as a vector layer")
    qml = classified.with_suffix(".qml")
    if qml.is_file():  # the plugin's style, also when the format stores none itself
        message, ok = layer.loadNamedStyle(str(qml))
        if not ok:
            raise SystemExit(f"cannot load the style {qml}: {message}")
    return layer


def render_map(
    classified: Path,
    image: Path,
    out: Path,
    *,
    title: str,
    note: str,
    image_name: str = "Sentinel-2 true colour",
    width_mm: float = 260.0,
    height_mm: float = 180.0,
    dpi: int = 150,
) -> Path:
    """Write ``out`` (PNG); QGIS must be initialised (see :func:`main`)."""
    from osgeo import gdal

    previous_pam = gdal.GetConfigOption("GDAL_PAM_ENABLED")
    gdal.SetConfigOption("GDAL_PAM_ENABLED", "NO")  # never write .aux.xml beside the inputs
    try:
        return _render(classified, image, out, title, note, image_name, width_mm, height_mm, dpi)
    finally:
        gdal.SetConfigOption("GDAL_PAM_ENABLED", previous_pam)


def _render(
    classified: Path,
    image: Path,
    out: Path,
    title: str,
    note: str,
    image_name: str,
    width_mm: float,
    height_mm: float,
    dpi: int,
) -> Path:
    from osgeo import gdal
    from qgis.core import (
        QgsLayoutExporter,
        QgsLayoutItemLabel,
        QgsLayoutItemLegend,
        QgsLayoutItemMap,
        QgsLayoutItemScaleBar,
        QgsLayoutPoint,
        QgsLayoutSize,
        QgsLegendRenderer,
        QgsLegendStyle,
        QgsPrintLayout,
        QgsProject,
        QgsUnitTypes,
    )
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtGui import QFont

    project = QgsProject()
    raster = true_colour_layer(image, image_name)
    parcels = parcels_layer(classified, "Predicted crop class")
    project.addMapLayers([raster, parcels])
    project.setCrs(raster.crs())

    layout = QgsPrintLayout(project)
    layout.initializeDefaults()
    page = layout.pageCollection().page(0)
    page.setPageSize(QgsLayoutSize(width_mm, height_mm, QgsUnitTypes.LayoutMillimeters))
    mm = QgsUnitTypes.LayoutMillimeters
    margin = 6.0
    title_mm, scale_mm = 10.0, 12.0
    map_size = height_mm - 2 * margin - title_mm - scale_mm

    heading = QgsLayoutItemLabel(layout)
    layout.addLayoutItem(heading)
    heading.setText(title)
    heading.setFont(QFont("DejaVu Sans", 15, QFont.Bold))
    heading.attemptMove(QgsLayoutPoint(margin, margin - 2, mm))
    heading.attemptResize(QgsLayoutSize(width_mm - 2 * margin, 10, mm))

    item = QgsLayoutItemMap(layout)
    item.setRect(0, 0, map_size, map_size)
    layout.addLayoutItem(item)  # added first: moves and sizes need the layout's units
    item.attemptMove(QgsLayoutPoint(margin, margin + 10, mm))
    item.attemptResize(QgsLayoutSize(map_size, map_size, mm))
    item.setLayers([parcels, raster])
    item.setCrs(raster.crs())
    extent = raster.extent()
    extent.combineExtentWith(parcels.extent())
    item.zoomToExtent(extent)
    item.setFrameEnabled(True)

    legend = QgsLayoutItemLegend(layout)
    layout.addLayoutItem(legend)
    legend.setTitle("Predicted crop class")
    legend.setLinkedMap(item)
    legend.setAutoUpdateModel(False)
    root = legend.model().rootGroup()
    root.removeAllChildren()
    root.addLayer(parcels)
    node = root.findLayer(parcels.id())
    node.setUseLayerName(False)
    node.setName("")
    legend.setStyleFont(QgsLegendStyle.Title, QFont("DejaVu Sans", 13, QFont.Bold))
    legend.setStyleFont(QgsLegendStyle.SymbolLabel, QFont("DejaVu Sans", 11))
    legend.setSymbolWidth(9)
    legend.setSymbolHeight(6)
    legend_x = margin + map_size + 8
    legend.attemptMove(QgsLayoutPoint(legend_x, margin + 10, mm))
    legend.adjustBoxSize()
    # the item knows its size only once drawn; the renderer measures it beforehand (mm)
    legend_height = (
        QgsLegendRenderer(legend.model(), legend.legendSettings()).minimumSize().height()
    )

    text = QgsLayoutItemLabel(layout)
    layout.addLayoutItem(text)
    text.setText(note)
    text.setFont(QFont("DejaVu Sans", 9))
    text.setHAlign(Qt.AlignLeft)
    below = margin + 10 + legend_height + 6
    text.attemptMove(QgsLayoutPoint(legend_x, below, mm))
    text.attemptResize(
        QgsLayoutSize(width_mm - legend_x - margin, margin + 10 + map_size - below, mm)
    )

    scale = QgsLayoutItemScaleBar(layout)
    layout.addLayoutItem(scale)
    scale.setLinkedMap(item)
    scale.applyDefaultSize()
    scale.setStyle("Single Box")
    scale.setNumberOfSegments(2)
    scale.setNumberOfSegmentsLeft(0)
    scale.setUnits(QgsUnitTypes.DistanceMeters)
    scale.setUnitsPerSegment(100)
    scale.setUnitLabel("m")
    scale.attemptMove(QgsLayoutPoint(margin, margin + title_mm + map_size + 2, mm))

    out.parent.mkdir(parents=True, exist_ok=True)
    settings = QgsLayoutExporter.ImageExportSettings()
    settings.dpi = dpi
    settings.generateWorldFile = False
    settings.exportMetadata = False
    # QGIS tries to georeference the PNG through GDAL, whose PNG driver cannot update a file:
    # a harmless "ERROR 6" on stderr that would only confuse the demo's reader
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        result = QgsLayoutExporter(layout).exportToImage(str(out), settings)
    finally:
        gdal.PopErrorHandler()
    if result != QgsLayoutExporter.Success:
        raise SystemExit(f"QGIS could not export the map to {out} (error {result})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classified", type=Path, required=True, help="classified parcels")
    parser.add_argument("--image", type=Path, required=True, help="10-band date of the stack")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--title", default="Parcels classified by crop")
    parser.add_argument("--note", default="")
    parser.add_argument("--image-name", default="Sentinel-2 true colour")
    args = parser.parse_args(argv)

    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    try:
        render_map(args.classified, args.image, args.out, title=args.title, note=args.note,
                   image_name=args.image_name)  # fmt: skip
    finally:
        app.exitQgis()
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
