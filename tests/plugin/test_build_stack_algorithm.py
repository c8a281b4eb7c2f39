"""``cropclassifier:build_stack`` through Processing in headless QGIS, on generated L2A
products (see tests/l2a_fixtures.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProcessingException

import parcel_crop_classifier
from l2a_fixtures import product_from_sample
from parcel_crop_classifier.plugin.provider import PROVIDER_ID
from sample_data import PARCELS, PARCELS_WGS84

DATES = ("20180416", "20180419", "20180908")  # cloud over the parcels: 55%, 0%, 58%


@pytest.fixture
def provider_loaded(qgis_processing):
    plugin = parcel_crop_classifier.classFactory(None)
    plugin.initProcessing()
    yield QgsApplication.processingRegistry().providerById(PROVIDER_ID)
    plugin.unload()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("downloads")
    product_from_sample(folder, DATES[0])
    product_from_sample(folder, DATES[1], baseline="04.00", zipped=True)
    product_from_sample(folder, DATES[2], zipped=True)
    return folder


def test_build_stack_from_a_folder_of_products(provider_loaded, downloads, tmp_path):
    import processing

    out = tmp_path / "stack"
    result = processing.run(
        f"{PROVIDER_ID}:build_stack",
        {"INPUT_FOLDER": str(downloads), "PARCELS": str(PARCELS_WGS84), "MAX_CLOUD": 56,
         "OUTPUT": str(out)},
    )  # fmt: skip
    assert result["OUTPUT"] == str(out)
    assert (result["DATES"], result["LEFT_OUT"]) == (2, 1)
    assert sorted(p.name for p in out.glob("S2_*.tif")) == ["S2_20180416.tif", "S2_20180419.tif"]
    assert sorted(p.name for p in (out / "scl").iterdir()) == [
        "S2_20180416_SCL.tif", "S2_20180419_SCL.tif",
    ]  # fmt: skip
    manifest = json.loads((out / "build_stack.json").read_text())
    assert manifest["left_out"][0]["date"] == "2018-09-08"
    # The other algorithms read it as a stack.
    from parcel_crop_classifier.cropmodels.stack import open_stack

    assert len(open_stack(out)) == 2


def test_build_stack_from_files_with_an_extent_and_dates(provider_loaded, downloads, tmp_path):
    import processing

    files = sorted(str(p) for p in downloads.glob("*.zip"))
    safe = next(downloads.glob("*.SAFE"))
    files.append(str(safe / "MTD_MSIL2A.xml"))
    result = processing.run(
        f"{PROVIDER_ID}:build_stack",
        {"INPUT": files, "EXTENT": "501400,501800,5629100,5629500 [EPSG:32631]",
         "START": "2018-04-17", "END": "2018-12-31", "OUTPUT": str(tmp_path / "out")},
    )  # fmt: skip
    assert result["DATES"] == 2
    from parcel_crop_classifier.cropmodels.stack import open_stack

    stack = open_stack(tmp_path / "out")
    assert [d.date.isoformat() for d in stack.dates] == ["2018-04-19", "2018-09-08"]
    assert (stack.grid.width, stack.grid.height) == (40, 40)


def test_build_stack_explains_missing_inputs(provider_loaded, downloads, tmp_path):
    import processing

    with pytest.raises(QgsProcessingException, match="products or STAC files"):
        processing.run(f"{PROVIDER_ID}:build_stack",
                       {"PARCELS": str(PARCELS), "OUTPUT": str(tmp_path / "o")})  # fmt: skip
    with pytest.raises(QgsProcessingException, match="parcels \\(or an extent\\)"):
        processing.run(f"{PROVIDER_ID}:build_stack",
                       {"INPUT_FOLDER": str(downloads), "OUTPUT": str(tmp_path / "o")})  # fmt: skip
    with pytest.raises(QgsProcessingException, match=r"does not overlap|covers the extent"):
        processing.run(
            f"{PROVIDER_ID}:build_stack",
            {"INPUT_FOLDER": str(downloads), "EXTENT": "0,100,0,100 [EPSG:32631]",
             "OUTPUT": str(tmp_path / "o")},
        )  # fmt: skip
    assert not (tmp_path / "o").exists()
