"""Sentinel-2 L2A products (.SAFE folders and zips) as stacks, on products generated from the
bundled real sample: the same pixels must come out as through the per-date GeoTIFF route."""

from __future__ import annotations

import datetime as dt
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import Affine
from rasterio.windows import Window

from cropmodels.extract import extract
from cropmodels.s2products import read_product
from cropmodels.stack import StackError, open_stack, to_canonical
from l2a_fixtures import crop, make_product, product_from_sample
from sample_data import PARCELS, copy_dates, read_date

FULL = Window(0, 0, 64, 64)
DATES = ("20180419", "20180426", "20180723")


def canonical(stack, t, window=FULL):
    with stack.reader() as reader:
        values, clear, mask = reader.read_with_mask(t, window)
    return to_canonical(values, stack.dates[t]), clear, mask


def extracted(parcels, stack) -> dict:
    return {d.index: d for d in extract(parcels, stack)}


@pytest.fixture(scope="module")
def products(tmp_path_factory) -> Path:
    """A folder as downloaded: a .SAFE folder, a zip, and a zip of baseline 04.00."""
    folder = tmp_path_factory.mktemp("downloads")
    product_from_sample(folder, DATES[0])
    product_from_sample(folder, DATES[1], zipped=True)
    product_from_sample(folder, DATES[2], baseline="04.00", zipped=True, orbit=8)
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return open_stack(copy_dates(DATES, tmp_path_factory.mktemp("geotiffs")))


def test_products_read_like_the_per_date_geotiffs(products: Path, reference):
    stack = open_stack(products)
    assert [d.date for d in stack.dates] == [d.date for d in reference.dates]
    assert stack.grid.same_as(reference.grid)
    assert [d.offset for d in stack.dates] == [0, 0, -1000]  # BOA_ADD_OFFSET from 04.00
    assert stack.dates[1].bands[0].path.startswith("/vsizip/")  # read inside the zip
    assert ".SAFE/GRANULE/L2A_T31UDS_" in stack.dates[1].bands[0].path
    assert stack.dates[0].bands[4].path.endswith("_B06_20m.jp2")  # native 20 m file
    assert stack.dates[0].cloud.path.endswith("_SCL_20m.jp2")
    for t in range(len(DATES)):
        got, clear, mask = canonical(stack, t)
        want, want_clear, _ = canonical(reference, t)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(clear, want_clear)
        np.testing.assert_array_equal(mask, read_date(DATES[t])[1])
    json.dumps(stack.describe())


def test_extraction_is_identical_through_products_and_geotiffs(products: Path, reference):
    got = extracted(PARCELS, open_stack(products))
    want = extracted(PARCELS, reference)
    assert got.keys() == want.keys()
    assert sum(d.status == "ok" for d in got.values()) >= 15
    for i, d in want.items():
        assert got[i].status == d.status
        assert got[i].n_clear_dates == d.n_clear_dates
        if d.patches is not None:
            np.testing.assert_array_equal(got[i].patches, d.patches)
            np.testing.assert_array_equal(got[i].features, d.features)


@pytest.mark.parametrize("zipped", [False, True])
def test_baseline_04_product_gives_the_reflectance_of_a_02_08_one(tmp_path: Path, zipped):
    old = product_from_sample(tmp_path / "old", DATES[0], zipped=zipped)
    new = product_from_sample(tmp_path / "new", DATES[0], baseline="04.00", zipped=zipped)
    a, b = open_stack(old), open_stack(new)
    assert (a.dates[0].offset, b.dates[0].offset) == (0.0, -1000.0)
    with a.reader() as ra, b.reader() as rb:
        raw_a, clear_a = ra.read(0, FULL)
        raw_b, clear_b = rb.read(0, FULL)
    assert int(raw_b[0, 5, 5]) == int(raw_a[0, 5, 5]) + 1000  # the stored DN differ
    np.testing.assert_array_equal(to_canonical(raw_a, a.dates[0]), to_canonical(raw_b, b.dates[0]))
    np.testing.assert_array_equal(clear_a, clear_b)


def test_product_metadata(tmp_path: Path):
    path = product_from_sample(tmp_path, DATES[2], baseline="04.00", orbit=8, sat="S2A",
                               time="110621")  # fmt: skip
    (scene,) = read_product(path)
    assert scene.date == dt.date(2018, 7, 23)
    assert scene.time == dt.datetime(2018, 7, 23, 11, 6, 21, 24000, tzinfo=dt.UTC)
    assert (scene.tile, scene.orbit, scene.baseline) == ("31UDS", 8, "04.00")
    assert (scene.scale, scene.offset) == (1e-4, -1000.0)
    assert scene.cloud_percent is not None
    # The MTD_MSIL2A.xml path also opens the product.
    assert len(open_stack(path / "MTD_MSIL2A.xml")) == 1


def test_two_adjacent_tiles_are_mosaicked(tmp_path: Path):
    """Two tiles overlapping by 16 columns, one of them baseline 04.00: parcels across the
    edge get the values of the single-grid reference."""
    date = DATES[2]
    values, scl, profile = read_date(date)
    t = profile["transform"]
    left = crop(values, scl, t, slice(0, 40), slice(0, 64))
    right = crop(values, scl, t, slice(24, 64), slice(0, 64))
    # In the overlap the right tile's SCL says cloud: the left tile's clear pixels win.
    right_scl = right[1].copy()
    right_scl[:, :16] = 9
    folder = tmp_path / "tiles"
    a = make_product(folder, left[0], left[1], profile["crs"], left[2], date=date, zipped=True)
    b = make_product(folder, right[0], right_scl, profile["crs"], right[2], date=date,
                     tile="31UES", baseline="04.00")  # fmt: skip
    stack = open_stack([a, b])
    assert len(stack) == 1
    assert len(stack.dates[0].parts) == 2
    assert stack.grid.same_as(open_stack(copy_dates([date], tmp_path / "ref")).grid)
    assert any("2 acquisitions mosaicked" in n for n in stack.notes)
    got, clear, mask = canonical(stack, 0)
    np.testing.assert_array_equal(got, values.astype(np.float32))
    np.testing.assert_array_equal(mask, scl)
    np.testing.assert_array_equal(clear, ~np.isin(scl, [0, 1, 3, 8, 9, 10]))
    reference = open_stack(copy_dates([date], tmp_path / "ref2"))
    got_p, want_p = extracted(PARCELS, stack), extracted(PARCELS, reference)
    for i, d in want_p.items():
        assert got_p[i].status == d.status
        if d.patches is not None:
            np.testing.assert_array_equal(got_p[i].patches, d.patches)


def test_same_tile_from_two_orbits_gives_one_observation_per_day(tmp_path: Path):
    date = DATES[2]
    values, scl, profile = read_date(date)
    crs, t = profile["crs"], profile["transform"]
    clear_scl = np.full_like(scl, 4)
    # Orbit 51: clouds over the left half. Orbit 8 (another time that day, values + 7 to tell
    # them apart): clear, but outside its swath (no data) over the top 12 rows.
    scl_a = clear_scl.copy()
    scl_a[:, :32] = 9
    values_b = np.where(values > 0, values + 7, 0).astype(values.dtype)
    values_b[:, :12] = 0
    scl_b = clear_scl.copy()
    scl_b[:12] = 0
    folder = tmp_path / "orbits"
    make_product(folder, values, scl_a, crs, t, date=date, orbit=51)
    make_product(folder, values_b, scl_b, crs, t, date=date, orbit=8, time="110621",
                 zipped=True)  # fmt: skip
    bounds = (501360 + 100, 5629040 + 100, 502000 - 100, 5629680 - 100)
    for options in ({}, {"bounds": bounds}):
        stack = open_stack(folder, **options)
        assert len(stack) == 1
        (entry,) = stack.dates
        # Ranked clearer first: orbit 8 is 81% clear, orbit 51 50% (by metadata or SCL).
        assert "_R008_" in entry.parts[0].bands[0].path
        window = Window(0, 0, stack.grid.width, stack.grid.height)
        got, clear, mask = canonical(stack, 0, window)
        rows, cols = _rows_cols(stack.grid, t)
        v = values[:, rows][:, :, cols].astype(np.float32)
        from_b = np.ones(got.shape[1:], bool)
        from_b[: max(0, 12 - rows.start)] = False
        expected = np.where(from_b, v + 7, v)
        np.testing.assert_array_equal(got, expected)
        left = np.arange(cols.start, cols.stop) < 32
        # Clear everywhere except where orbit 8 saw nothing and orbit 51 saw clouds.
        np.testing.assert_array_equal(clear, from_b | ~left[None, :])
        np.testing.assert_array_equal(mask, np.where(from_b, 4, scl_a[rows][:, cols]))


def _rows_cols(grid, t: Affine) -> tuple[slice, slice]:
    col0 = round((grid.transform.c - t.c) / 10)
    row0 = round((t.f - grid.transform.f) / 10)
    return slice(row0, row0 + grid.height), slice(col0, col0 + grid.width)


def test_bounds_limit_the_grid_to_the_parcels(products: Path, reference):
    import geopandas as gpd

    parcels = gpd.read_file(PARCELS).iloc[:4]
    stack = open_stack(products, bounds=tuple(parcels.total_bounds), bounds_crs=parcels.crs)
    assert stack.grid.width < 64 or stack.grid.height < 64
    rows, cols = _rows_cols(stack.grid, reference.grid.transform)
    for t in range(len(stack)):
        got, clear, _ = canonical(stack, t, Window(0, 0, stack.grid.width, stack.grid.height))
        want, want_clear, _ = canonical(reference, t)
        np.testing.assert_array_equal(got, want[:, rows, cols])
        np.testing.assert_array_equal(clear, want_clear[rows, cols])
    # WGS84 bounds (e.g. from a parcel layer in EPSG:4326) are transformed first.
    wgs = parcels.to_crs("EPSG:4326")
    other = open_stack(products, bounds=tuple(wgs.total_bounds), bounds_crs="EPSG:4326")
    assert other.grid.crs == stack.grid.crs
    assert other.grid.width >= stack.grid.width


def test_date_range(products: Path):
    stack = open_stack(products, start="2018-04-20", end=dt.date(2018, 7, 23))
    assert [d.date for d in stack.dates] == [dt.date(2018, 4, 26), dt.date(2018, 7, 23)]
    stack = open_stack(products, start=dt.datetime(2018, 4, 20, 12), end="2018-07-22T23:59")
    assert [d.date for d in stack.dates] == [dt.date(2018, 4, 26)]
    with pytest.raises(StackError, match="lies between 2019-01-01"):
        open_stack(products, start="2019-01-01")


def test_extent_away_from_the_tiles_is_explained(products: Path):
    with pytest.raises(StackError, match="does not overlap"):
        open_stack(products, bounds=(0, 0, 100, 100))


def test_level_1c_product_is_refused_with_a_clear_message(tmp_path: Path):
    safe = tmp_path / "S2A_MSIL1C_20180723T105031_N0206_R051_T31UDS_20180723T125928.SAFE"
    safe.mkdir()
    (safe / "MTD_MSIL1C.xml").write_text("<x/>")
    with pytest.raises(StackError, match=r"Level-1C.*Level-2A"):
        open_stack(safe)


def test_incomplete_product_lists_what_is_missing(tmp_path: Path):
    path = product_from_sample(tmp_path, DATES[0])
    for f in path.rglob("*_B8A_20m.jp2"):
        f.unlink()
    with pytest.raises(StackError, match=r"lacks B8A \(20 m\)"):
        open_stack(path)


def test_per_band_offsets_that_differ_are_refused(tmp_path: Path):
    path = product_from_sample(tmp_path, DATES[0], baseline="04.00")
    mtd = path / "MTD_MSIL2A.xml"
    text = re.sub(r'(band_id="3">)-1000', r"\1-900", mtd.read_text())
    mtd.write_text(text)
    with pytest.raises(StackError, match="B04 -900"):
        open_stack(path)


def test_a_zip_that_is_not_a_product_is_not_taken_for_one(tmp_path: Path):
    with zipfile.ZipFile(tmp_path / "notes.zip", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(StackError, match="No raster files"):
        open_stack(tmp_path)


def test_a_tile_in_another_utm_zone_is_warped_onto_the_common_grid(tmp_path: Path):
    """The right part comes as a tile in EPSG:32632 (as across a zone boundary): read on the
    EPSG:32631 grid by bilinear warping, its no-data corners never mixed into the values."""
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    date = DATES[2]
    values, scl, profile = read_date(date)
    t = profile["transform"]
    left = crop(values, scl, t, slice(0, 40), slice(0, 64))
    part_values, part_scl, part_t = crop(values, scl, t, slice(24, 64), slice(0, 64))
    dst_crs = rasterio.crs.CRS.from_epsg(32632)
    bounds = rasterio.transform.array_bounds(64, 40, part_t)
    tr, w, h = calculate_default_transform(profile["crs"], dst_crs, 40, 64, *bounds, resolution=10)
    tr = Affine(10, 0, tr.c // 20 * 20, 0, -10, -(-tr.f // 20) * 20)  # on a 20 m lattice
    w, h = w + w % 2 + 2, h + h % 2 + 2
    warped = np.zeros((10, h, w), values.dtype)
    warped_scl = np.zeros((h, w), scl.dtype)
    for src, dst in ((part_values, warped), (part_scl, warped_scl)):
        reproject(src, dst, src_transform=part_t, src_crs=profile["crs"], dst_transform=tr,
                  dst_crs=dst_crs, resampling=Resampling.nearest, src_nodata=0,
                  dst_nodata=0)  # fmt: skip
    folder = tmp_path / "zones"
    make_product(folder, left[0], left[1], profile["crs"], left[2], date=date)
    make_product(folder, warped, warped_scl, dst_crs, tr, date=date, tile="32ULB", zipped=True)
    stack = open_stack(folder, bounds=rasterio.transform.array_bounds(64, 64, t),
                       bounds_crs=profile["crs"])  # fmt: skip
    assert stack.grid.crs.to_epsg() == 32631
    assert stack.grid.same_as(open_stack(copy_dates([date], tmp_path / "ref")).grid)
    assert any("EPSG:32632" in n and "warped" in n for n in stack.notes)
    got, clear, _ = canonical(stack, 0)
    np.testing.assert_array_equal(got[:, :, :40], values[:, :, :40])  # the 32631 tile as is
    inner = (slice(None), slice(4, -4), slice(44, -4))  # the 32632 tile, away from its edges
    rel = np.abs(got[inner] - values[inner]) / values[inner]
    assert np.median(rel) < 0.05
    assert (got[inner] > 0).all()
    assert clear[4:-4, 44:-4].mean() > 0.95


def test_products_unzipped_into_a_wrapper_folder_are_found(tmp_path: Path):
    """Some unzip tools leave downloads/S2B_MSIL2A_.../S2B_MSIL2A_....SAFE."""
    inner = product_from_sample(tmp_path / "tmp", DATES[0])
    wrapper = tmp_path / "downloads" / inner.name.removesuffix(".SAFE")
    wrapper.mkdir(parents=True)
    inner.rename(wrapper / inner.name)
    product_from_sample(tmp_path / "downloads", DATES[1], zipped=True)
    assert [d.date.isoformat() for d in open_stack(tmp_path / "downloads").dates] == [
        "2018-04-19", "2018-04-26",
    ]  # fmt: skip


def test_a_product_and_a_stac_item_without_scl_on_one_day(tmp_path: Path):
    """Mixed sources in one list; the day's SCL says 'unclassified' (7) where the pixel comes
    from the item, which has no scene classification."""
    from l2a_fixtures import item_collection, stac_item

    date = DATES[2]
    values, scl, profile = read_date(date)
    cloudy = scl.copy()
    cloudy[:, :20] = 9  # the product is cloudy on the left: the item's clear pixels win there
    product = make_product(tmp_path / "p", values, cloudy, profile["crs"], profile["transform"],
                           date=date)  # fmt: skip
    item = stac_item(tmp_path / "s", date)
    item["assets"].pop("scl")
    item["properties"]["eo:cloud_cover"] = 80.0  # ranked after the product
    collection = item_collection(tmp_path / "s" / "items.json", [item])
    stack = open_stack([product, collection])
    (entry,) = stack.dates
    assert [".SAFE" in p.bands[0].path for p in entry.parts] == [True, False]
    got, clear, mask = canonical(stack, 0)
    np.testing.assert_array_equal(got, values.astype(np.float32))
    assert clear.all()  # the item has no mask: every pixel it observed counts as clear
    product_clear = ~np.isin(cloudy, [0, 1, 3, 8, 9, 10])
    np.testing.assert_array_equal(mask, np.where(product_clear, cloudy, 7))
    assert (mask[:, :20] == 7).all()
