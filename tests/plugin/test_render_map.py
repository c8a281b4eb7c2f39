"""The demo's map: classified parcels over a true-colour date, drawn by QGIS's layout engine."""

from __future__ import annotations

from qgis.PyQt.QtGui import QColor, QImage

from parcel_crop_classifier.cropmodels.modelcard import read_card
from render_map import render_map
from sample_data import PARCELS, STACK


def test_the_map_shows_the_classes_in_the_cards_colours(provider, sample_model, tmp_path):
    import processing

    out = tmp_path / "classified.gpkg"
    processing.run("cropclassifier:classify_parcels", {
        "PARCELS": str(PARCELS), "STACK": str(STACK), "MODEL": str(sample_model),
        "DEVICE": "cpu", "OUTPUT": str(out),
    })  # fmt: skip
    before = sorted(STACK.iterdir())
    png = render_map(out, STACK / "S2_20180723.tif", tmp_path / "map.png", title="Test",
                     note="a note", dpi=100)  # fmt: skip
    image = QImage(str(png))
    assert (image.width(), image.height()) == (1023, 708)  # 260 x 180 mm at 100 dpi
    colours = {image.pixel(x, y) & 0xFFFFFF for x in range(0, image.width(), 2)
               for y in range(0, image.height(), 2)}  # fmt: skip
    card = read_card(sample_model)
    for cls in card.classes:  # the legend's patches at least
        assert QColor(cls.colour).rgb() & 0xFFFFFF in colours, cls.name
    assert not list(tmp_path.glob("map.png.*"))  # no world file or sidecar
    assert sorted(STACK.iterdir()) == before  # no .aux.xml statistics beside the input
