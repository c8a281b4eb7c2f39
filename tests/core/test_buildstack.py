"""build_stack: a season of L2A products (or STAC items) into a small per-date stack over the
parcels, read back by open_stack and giving the same extraction as the original pixels."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from cropmodels.__main__ import main
from cropmodels.buildstack import build_stack
from cropmodels.extract import extract
from cropmodels.progress import Cancelled
from cropmodels.stack import StackError, open_stack
from l2a_fixtures import item_collection, make_product, product_from_sample, stac_item
from sample_data import PARCELS, copy_dates, read_date

# cloud (SCL 3, 8, 9, 10) over all the sample's parcels: 55%, 0%, 58%
DATES = ("20180416", "20180419", "20180908")


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("downloads")
    product_from_sample(folder, DATES[0])
    product_from_sample(folder, DATES[1], baseline="04.00", zipped=True)
    product_from_sample(folder, DATES[2], zipped=True)
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return open_stack(copy_dates(DATES, tmp_path_factory.mktemp("geotiffs")))


def test_products_become_a_per_date_stack_over_the_parcels(downloads, reference, tmp_path):
    parcels = gpd.read_file(PARCELS).iloc[:5]
    out = tmp_path / "season"
    result = build_stack(downloads, out, parcels=parcels)
    assert [w["file"] for w in result.written] == [f"S2_{d}.tif" for d in DATES]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["build_stack.json", "scl", *(f"S2_{d}.tif" for d in DATES)]
    )
    assert not list(tmp_path.glob(".season*"))  # no temporary folder left
    stack = open_stack(out)
    assert stack.grid.width * stack.grid.height < 64 * 64  # clipped to the parcels (+ 20 m)
    assert all(d.offset == 0 and d.scale == 1e-4 for d in stack.dates)  # offset removed
    col0 = round((stack.grid.transform.c - reference.grid.transform.c) / 10)
    row0 = round((reference.grid.transform.f - stack.grid.transform.f) / 10)
    rows, cols = slice(row0, row0 + stack.grid.height), slice(col0, col0 + stack.grid.width)
    with stack.reader() as reader:
        for t, date in enumerate(DATES):
            values, scl, _ = read_date(date)
            got, _, mask = reader.read_with_mask(
                t, Window(0, 0, stack.grid.width, stack.grid.height)
            )
            np.testing.assert_array_equal(got, values[:, rows, cols])
            np.testing.assert_array_equal(mask, scl[rows, cols])
    with rasterio.open(out / f"S2_{DATES[1]}.tif") as ds:
        assert ds.descriptions == ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
                                   "B11", "B12")  # fmt: skip
        assert ds.tags()["SOURCE_BOA_ADD_OFFSETS"] == "-1000"
        assert ds.tags()["BOA_ADD_OFFSET_APPLIED"] == "YES"
        assert ds.nodata == 0
    manifest = json.loads((out / "build_stack.json").read_text())
    assert [d["date"] for d in manifest["dates"]] == ["2018-04-16", "2018-04-19", "2018-09-08"]
    # The other commands reuse it: extraction gives what the original pixels give.
    got = {d.index: d for d in extract(parcels, stack)}
    want = {d.index: d for d in extract(parcels, reference)}
    for i, d in want.items():
        assert got[i].status == d.status
        np.testing.assert_array_equal(got[i].patches, d.patches)
        np.testing.assert_array_equal(got[i].features, d.features)


def test_cloudy_dates_and_the_date_range(downloads, tmp_path):
    result = build_stack(downloads, tmp_path / "a", parcels=PARCELS, max_cloud=0.56)
    assert [w["date"] for w in result.written] == ["2018-04-16", "2018-04-19"]
    (skipped,) = result.skipped
    assert skipped["date"] == "2018-09-08"
    assert "cloud fraction 58% over the parcels > 56%" in skipped["reason"]
    assert json.loads((tmp_path / "a" / "build_stack.json").read_text())["left_out"]
    result = build_stack(downloads, tmp_path / "b", parcels=PARCELS, start="2018-04-17",
                         end="2018-12-31", max_cloud=0.5)  # fmt: skip
    assert [w["date"] for w in result.written] == ["2018-04-19"]
    with pytest.raises(StackError, match="No date kept out of 1"):
        build_stack(downloads, tmp_path / "c", parcels=PARCELS, max_cloud=0.1, start="2018-09-01")
    assert not (tmp_path / "c").exists()


def test_a_date_that_saw_none_of_the_parcels_is_left_out(tmp_path: Path):
    values, scl, profile = read_date(DATES[1])
    values[:, :, :40] = 0  # the swath edge: no data over the left part
    scl[:, :40] = 0
    folder = tmp_path / "d"
    make_product(folder, values, scl, profile["crs"], profile["transform"], date=DATES[1])
    product_from_sample(folder, DATES[0])
    parcels = gpd.read_file(PARCELS)
    left = parcels[parcels.geometry.bounds.maxx < 501360 + 390]
    assert len(left)
    result = build_stack(folder, tmp_path / "out", parcels=left)
    assert [w["date"] for w in result.written] == ["2018-04-16"]
    assert "no parcel pixel observed" in result.skipped[0]["reason"]


def test_cancelling_leaves_nothing(downloads, tmp_path):
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        build_stack(downloads, tmp_path / "out", parcels=PARCELS, is_cancelled=cancel)
    assert list(tmp_path.iterdir()) == []


def test_output_folder_rules(downloads, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.docx").write_text("precious")
    with pytest.raises(StackError, match="not empty"):
        build_stack(downloads, busy, parcels=PARCELS, start="2018-04-19", end="2018-04-19")
    empty = tmp_path / "empty"
    empty.mkdir()  # as QGIS may create it for the output
    build_stack(downloads, empty, parcels=PARCELS, start="2018-04-19", end="2018-04-19")
    with pytest.raises(StackError, match="overwrit"):
        build_stack(downloads, empty, parcels=PARCELS, start="2018-04-16", end="2018-04-16")
    build_stack(downloads, empty, parcels=PARCELS, start="2018-04-16", end="2018-04-16",
                overwrite=True)  # fmt: skip
    assert sorted(p.name for p in empty.glob("*.tif")) == ["S2_20180416.tif"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_stac_items_become_a_stack(tmp_path: Path):
    items = [stac_item(tmp_path, DATES[1], baseline="04.00", offset_applied=False)]
    collection = item_collection(tmp_path / "search.json", items)
    result = build_stack(collection, tmp_path / "out", bounds=(501400, 5629100, 501800, 5629500),
                         bounds_crs="EPSG:32631")  # fmt: skip
    assert result.width == 40
    stack = open_stack(tmp_path / "out")
    values, _, _ = read_date(DATES[1])
    with stack.reader() as reader:
        got, _ = reader.read(0, Window(0, 0, 40, 40))
    np.testing.assert_array_equal(got, values[:, 18:58, 4:44])


def test_command_line(downloads, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["build-stack", str(downloads), "--out", str(out), "--parcels", str(PARCELS),
                 "--max-cloud", "0.56", "--quiet"])  # fmt: skip
    assert code == 0
    assert "2 dates" in capsys.readouterr().out
    assert len(open_stack(out)) == 2
    code = main(["build-stack", str(downloads), "--out", str(out), "--parcels", str(PARCELS)])
    assert code == 2
    assert "already exists" in capsys.readouterr().err
