"""STAC items (earth-search style ItemCollection with local Cloud-Optimised GeoTIFF assets)
as stacks: the same pixels as the per-date GeoTIFF route, offsets from raster:bands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from cropmodels.stac import _choose_assets, gdal_href, item_scene
from cropmodels.stack import StackError, open_stack, to_canonical
from l2a_fixtures import item_collection, stac_item
from sample_data import PARCELS, copy_dates, read_date

DATES = ("20180419", "20180426", "20180723")
FULL = Window(0, 0, 64, 64)


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """As saved from an earth-search search: one pre-04.00 item, one 04.00 item with the
    offset in its values (raster:bands offset -0.1), one 04.00 item that earth-search
    harmonised (boa_offset_applied: true, raster:bands still says -0.1)."""
    folder = tmp_path_factory.mktemp("stac")
    items = [
        stac_item(folder, DATES[0]),
        stac_item(folder, DATES[1], baseline="04.00", offset_applied=False),
        stac_item(folder, DATES[2], baseline="04.00", offset_applied=True, with_proj=False),
    ]
    return item_collection(folder / "search.json", items)


def test_item_collection_reads_like_the_per_date_geotiffs(collection: Path, tmp_path: Path):
    stack = open_stack(collection)
    reference = open_stack(copy_dates(DATES, tmp_path / "ref"))
    assert [d.date for d in stack.dates] == [d.date for d in reference.dates]
    assert stack.grid.same_as(reference.grid)
    assert [d.offset for d in stack.dates] == [0.0, -1000.0, 0.0]
    assert stack.dates[0].bands[0].path.endswith("B02.tif")  # the COG, not the JP2 alternate
    with stack.reader() as got_r, reference.reader() as want_r:
        for t in range(len(DATES)):
            got, clear = got_r.read(t, FULL)
            want, want_clear = want_r.read(t, FULL)
            np.testing.assert_array_equal(to_canonical(got, stack.dates[t]), want)
            np.testing.assert_array_equal(clear, want_clear)
    with rasterio.open(stack.dates[0].bands[0].path) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_bounds_read_only_the_parcels_windows(collection: Path):
    import geopandas as gpd

    parcels = gpd.read_file(PARCELS).iloc[:3]
    stack = open_stack(collection, bounds=tuple(parcels.total_bounds), bounds_crs=parcels.crs)
    assert stack.grid.width * stack.grid.height < 64 * 64 / 2
    values, _, _ = read_date(DATES[0])
    col0 = round((stack.grid.transform.c - 501360) / 10)
    row0 = round((5629680 - stack.grid.transform.f) / 10)
    with stack.reader() as reader:
        got, _ = reader.read(0, Window(0, 0, stack.grid.width, stack.grid.height))
    h, w = stack.grid.height, stack.grid.width
    np.testing.assert_array_equal(got, values[:, row0 : row0 + h, col0 : col0 + w])


def test_item_files_and_a_folder_of_them(collection: Path, tmp_path: Path):
    features = json.loads(collection.read_text())["features"]
    files = []
    for item in features:
        path = collection.parent / f"{item['id']}.json"
        path.write_text(json.dumps(item))
        files.append(path)
    assert len(open_stack(files)) == 3
    assert len(open_stack(files[0])) == 1
    # A folder holding only item JSON files (and their asset folders).
    folder = tmp_path / "items"
    folder.mkdir()
    for f in files[:2]:
        item = json.loads(f.read_text())
        for asset in item["assets"].values():
            if not asset["href"].startswith("http"):
                asset["href"] = str(collection.parent / asset["href"])
        (folder / f.name).write_text(json.dumps(item))
    assert len(open_stack(folder)) == 2


def test_asset_names_of_the_usual_catalogues():
    planetary = {b: {"href": f"{b}.tif", "type": "image/tiff"} for b in
                 ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11",
                  "B12", "SCL", "AOT", "WVP", "visual")}  # fmt: skip
    chosen = _choose_assets(planetary)
    assert chosen["B8A"] == "B8A"
    assert chosen["SCL"] == "SCL"
    assert not {"B01", "B09"} & chosen.keys()
    cdse = {f"{b}_{r}m": {"href": f"{b}_{r}m.jp2", "type": "image/jp2"}
            for b in ("B02", "B05", "SCL") for r in (10, 20, 60)}  # fmt: skip
    assert _choose_assets(cdse) == {"B02": "B02_10m", "B05": "B05_20m", "SCL": "SCL_20m"}
    earth = {"nir": {"href": "nir.tif"}, "nir08": {"href": "nir08.tif"},
             "nir09": {"href": "nir09.tif"}, "nir-jp2": {"href": "B08.jp2"}}  # fmt: skip
    assert _choose_assets(earth) == {"B08": "nir", "B8A": "nir08"}


def test_remote_hrefs_go_through_gdal_virtual_file_systems(tmp_path: Path):
    url = "https://sentinel-cogs.s3.us-west-2.amazonaws.com/x/B02.tif"
    assert gdal_href(url, tmp_path) == f"/vsicurl/{url}"
    assert gdal_href("s3://bucket/key/B02.tif", tmp_path) == "/vsis3/bucket/key/B02.tif"
    assert gdal_href("sub/B02.tif", tmp_path) == str(tmp_path / "sub" / "B02.tif")


def test_offset_rules(tmp_path: Path):
    item = {"type": "Feature", "id": "x", "properties": {"datetime": "2022-03-01T10:00:00Z"},
            "assets": {b: {"href": f"{b}.tif"} for b in ("blue", "green", "red", "rededge1",
                       "rededge2", "rededge3", "nir", "nir08", "swir16", "swir22")}}  # fmt: skip
    assert item_scene(item, tmp_path, "x").offset == 0.0  # nothing says otherwise
    item["properties"]["s2:processing_baseline"] = "04.00"
    assert item_scene(item, tmp_path, "x").offset == -1000.0
    item["assets"]["blue"]["raster:bands"] = [{"scale": 0.0001, "offset": -0.1}]
    assert item_scene(item, tmp_path, "x").offset == pytest.approx(-1000.0)
    item["properties"]["earthsearch:boa_offset_applied"] = True
    assert item_scene(item, tmp_path, "x").offset == 0.0
    scene = item_scene(item, tmp_path, "x")
    assert scene.cloud is None  # no scl asset: clear unless no data


def test_items_without_sentinel2_bands_are_explained(tmp_path: Path):
    path = tmp_path / "landsat.json"
    path.write_text(json.dumps({"type": "Feature", "id": "LC08", "properties":
                                {"datetime": "2020-01-01T00:00:00Z"},
                                "assets": {"red": {"href": "r.tif"}}}))  # fmt: skip
    with pytest.raises(StackError, match="lacks the Sentinel-2 bands B02"):
        open_stack(path)


def test_a_stack_descriptor_is_still_a_descriptor(tmp_path: Path):
    folder = copy_dates(DATES[:1], tmp_path / "s")
    spec = {"dates": [{"date": "2018-04-19", "path": f"s/S2_{DATES[0]}.tif"}]}
    (tmp_path / "stack.json").write_text(json.dumps(spec))
    assert len(open_stack(tmp_path / "stack.json")) == 1
    assert folder.exists()
