"""The WorldCereal legend and palette (resources/nomenclature) via cropmodels.nomenclature."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest

import make_palette
from cropmodels import nomenclature
from cropmodels.modelcard import CropClass
from sample_data import SAMPLE

SAMPLE_CODES = (1200, 2130, 5100, 7900, 9120)


def test_legend_is_the_sample_legend_unchanged():
    assert (
        nomenclature.LEGEND_CSV.read_bytes()
        == (SAMPLE / "worldcereal_croptype_legend.csv").read_bytes()
    )
    assert nomenclature.LICENCE_FILE.read_text(encoding="utf-8").startswith("MIT License")
    assert "ESA WorldCereal" in nomenclature.LICENCE_FILE.read_text(encoding="utf-8")


def test_legend_codes_and_names():
    legend = nomenclature.legend()
    assert len(legend) == 189
    assert legend[1200] == "Maize"
    assert legend[9120] == "Permanent grass crops"
    assert legend[2130] == "Cabbages"  # the legend's "Cabages", corrected
    assert nomenclature.entries()[1200].ewoc_code == "11-01-06-000-0"
    assert nomenclature.entries()[9120].landcover == 13
    legend[1200] = "changed"
    assert nomenclature.legend()[1200] == "Maize"  # callers get a copy


def test_sample_parcel_names_are_the_legend_names():
    import geopandas as gpd

    parcels = gpd.read_file(SAMPLE / "parcels.gpkg")
    for code, name in zip(parcels["crop_code"], parcels["crop_name"], strict=True):
        assert nomenclature.name(code) == name


def test_every_code_has_one_distinct_valid_colour():
    palette = nomenclature.palette()
    assert set(palette) == set(nomenclature.legend())
    assert all(len(c) == 7 and c.startswith("#") for c in palette.values())
    assert len(set(palette.values())) == len(palette)
    closest = min(
        make_palette.distance(a, b) for a, b in itertools.combinations(palette.values(), 2)
    )
    assert closest >= make_palette.MIN_DISTANCE - 0.05


def test_palette_file_names_follow_the_legend_and_the_script_rebuilds_it(tmp_path):
    with nomenclature.PALETTE_CSV.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {int(r["code"]): r["name"] for r in rows} == nomenclature.legend()
    rebuilt = make_palette.write(tmp_path / "palette.csv")
    assert rebuilt.read_bytes() == nomenclature.PALETTE_CSV.read_bytes()


def test_agronomic_colours_of_the_sample_classes():
    """Maize yellow, grassland green, potatoes brown, leguminous purple, cabbages blue."""

    def hue_light(code: int) -> tuple[float, float]:
        import colorsys

        c = nomenclature.colour(code)
        h, lum, _ = colorsys.rgb_to_hls(*(int(c[i : i + 2], 16) / 255 for i in (1, 3, 5)))
        return 360 * h, lum

    assert 40 <= hue_light(1200)[0] <= 60  # yellow
    assert 90 <= hue_light(9120)[0] <= 140  # green
    assert 20 <= hue_light(5100)[0] <= 40  # a dark orange is brown
    assert hue_light(5100)[1] < 0.35
    assert 260 <= hue_light(7900)[0] <= 300  # purple
    assert 190 <= hue_light(2130)[0] <= 220  # blue


# Machado, Oliveira and Fernandes (2009), severity 1, on linear RGB
DEUTERANOPIA = np.array(
    [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.01182, 0.04294, 0.968881]]
)
PROTANOPIA = np.array(
    [
        [0.152286, 1.052583, -0.204868],
        [0.114503, 0.786281, 0.099216],
        [-0.003882, -0.048116, 1.051998],
    ]
)


def _simulated(colour: str, matrix: np.ndarray) -> str:
    rgb = np.array([int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    out = np.clip(matrix @ linear, 0, 1)
    srgb = np.where(out <= 0.0031308, 12.92 * out, 1.055 * out ** (1 / 2.4) - 0.055)
    return "#" + "".join(f"{round(v * 255):02x}" for v in srgb)


@pytest.mark.parametrize("matrix", [DEUTERANOPIA, PROTANOPIA], ids=["deuteranopia", "protanopia"])
def test_sample_classes_stay_apart_for_red_green_colour_blind_readers(matrix):
    colours = [nomenclature.colour(c) for c in SAMPLE_CODES]
    seen = [_simulated(c, matrix) for c in colours]
    closest = min(make_palette.distance(a, b) for a, b in itertools.combinations(seen, 2))
    assert closest > 25, closest
    # the simulation is not the identity: a plain red and green collapse under it
    assert make_palette.distance(_simulated("#e0201c", matrix), _simulated("#3d8b37", matrix)) < 40


def test_crop_classes_keep_the_order_given():
    classes = nomenclature.crop_classes([9120, 1200, 7900])
    assert classes == [
        CropClass(9120, "Permanent grass crops", nomenclature.colour(9120)),
        CropClass(1200, "Maize", "#f2c80f"),
        CropClass(7900, "Other Leguminous crops", nomenclature.colour(7900)),
    ]


def test_unknown_codes_are_named_in_the_error():
    with pytest.raises(nomenclature.UnknownCodeError, match="code 1234 is not in the WorldCereal"):
        nomenclature.colour(1234)
    with pytest.raises(KeyError, match="not an integer"):
        nomenclature.name("maize")
    with pytest.raises(nomenclature.UnknownCodeError, match="4242"):
        nomenclature.crop_classes([1200, 4242])


def test_a_palette_missing_a_code_is_reported(tmp_path, monkeypatch):
    bad = tmp_path / "palette.csv"
    lines = nomenclature.PALETTE_CSV.read_text(encoding="utf-8").splitlines()
    bad.write_text("\n".join(line for line in lines if not line.startswith("1200,")) + "\n")
    monkeypatch.setattr(nomenclature, "PALETTE_CSV", bad)
    nomenclature._palette.cache_clear()
    try:
        with pytest.raises(
            nomenclature.NomenclatureError, match=r"no colour for legend codes \[1200\]"
        ):
            nomenclature.palette()
    finally:
        monkeypatch.undo()
        nomenclature._palette.cache_clear()
    assert nomenclature.colour(1200) == "#f2c80f"
