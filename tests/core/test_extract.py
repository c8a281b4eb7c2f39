"""The paper's patch extractor on the real Flanders sample, checked against independent code."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.mask
from shapely.affinity import translate
from shapely.geometry import Point, Polygon, box

from cropmodels.extract import (
    INVALID,
    NO_CLEAR,
    OK,
    OUTSIDE,
    PARTLY_OUTSIDE,
    TOO_SMALL,
    ExtractConfig,
    ExtractionSummary,
    ParcelError,
    extract,
    interpolate_in_time,
    resample_matrix,
    resize_masked,
)
from cropmodels.progress import Cancelled
from cropmodels.stack import open_stack
from sample_data import PARCELS, PARCELS_WGS84, SCL, STACK, copy_dates, read_date, write_raster

NOT_CLEAR = [0, 1, 3, 8, 9, 10]


@pytest.fixture(scope="module")
def stack():
    return open_stack(STACK)


@pytest.fixture(scope="module")
def parcels():
    return gpd.read_file(PARCELS)


@pytest.fixture(scope="module")
def extracted(stack, parcels):
    return {r.index: r for r in extract(parcels, stack)}


def test_every_real_parcel_overlays_the_stack(extracted, parcels):
    assert len(extracted) == 18
    for i, row in parcels.iterrows():
        r = extracted[i]
        assert r.status == OK
        assert r.n_pixels == row["n_pixels"]  # polygons are exact pixel outlines
        assert r.patches.shape == (118, 10, 32, 32)
        assert r.features.shape == (118, 20)
        assert r.cloud_fraction.shape == (118,)
        assert 0 < r.n_clear_dates <= 118


def test_patches_are_zero_outside_every_polygon(extracted):
    for r in extracted.values():
        assert r.mask.any()
        assert not r.patches[:, :, ~r.mask].any()
        inside = r.patches[:, :, r.mask]
        assert (inside > 0).mean() > 0.99  # reflectances inside
        assert np.isfinite(r.patches).all()


def test_features_equal_rasterio_mask_and_numpy(stack, parcels, extracted):
    """Mean and std over the parcel's clear pixels, computed independently per date."""
    checked = 0
    for i in (0, 3, 7, 10, 13):
        geom = parcels.geometry[i]
        for t in (60, 80, 95, 110):
            d = stack.dates[t].date.strftime("%Y%m%d")
            with rasterio.open(STACK / f"S2_{d}.tif") as ds:
                values, _ = rasterio.mask.mask(ds, [geom], crop=True, filled=False)
            with rasterio.open(SCL / f"S2_{d}_SCL.tif") as ds:
                scl, _ = rasterio.mask.mask(ds, [geom], crop=True, filled=False)
            clear = ~values.mask[0] & ~np.isin(scl.data[0], NOT_CLEAR)
            if not clear.any():
                continue
            pix = values.data[:, clear].astype(np.float64)
            np.testing.assert_allclose(extracted[i].features[t, :10], pix.mean(axis=1), rtol=1e-5)
            np.testing.assert_allclose(extracted[i].features[t, 10:], pix.std(axis=1), rtol=1e-4,
                                       atol=1e-2)  # fmt: skip
            checked += 1
    assert checked >= 12


def test_wgs84_parcels_give_the_same_patches(stack, extracted):
    again = {r.index: r for r in extract(PARCELS_WGS84, stack)}
    for i, r in extracted.items():
        assert again[i].status == r.status
        np.testing.assert_array_equal(again[i].mask, r.mask)
        np.testing.assert_allclose(again[i].patches, r.patches, rtol=1e-6)
        np.testing.assert_allclose(again[i].features, r.features, rtol=1e-6)


def test_a_32px_square_parcel_keeps_its_native_pixels(stack):
    """Resizing 32 -> 32 is the identity: the patch is the window itself on clear dates."""
    left, top = 501360 + 16 * 10, 5629680 - 20 * 10
    square = box(left, top - 320, left + 320, top)
    gdf = gpd.GeoDataFrame({"id": [1]}, geometry=[square], crs=32631)
    (r,) = extract(gdf, stack)
    assert r.status == OK
    assert r.n_pixels == 1024
    assert r.mask.all()
    t = next(t for t in range(118) if r.cloud_fraction[t] == 0)
    values, _, _ = read_date(stack.dates[t].date.strftime("%Y%m%d"))
    np.testing.assert_array_equal(r.patches[t], values[:, 20:52, 16:48].astype(np.float32))


def test_cloudy_pixels_are_interpolated_in_time_from_real_neighbours(tmp_path: Path):
    """Three clear real dates; the middle one is made cloudy over a block with garbage
    values: the patch there is the day-weighted line between the first and the last."""
    dates = ("20180705", "20180713", "20180723")
    folder = copy_dates(dates, tmp_path / "s")
    with rasterio.open(SCL / f"S2_{dates[1]}_SCL.tif") as ds:
        scl_profile = ds.profile
    for d in dates:  # clear vegetation everywhere, but a cloud over a block on the middle date
        values, scl, profile = read_date(d)
        scl[:] = 4
        if d == dates[1]:
            values[:, 0:40, 0:40] = 17000
            scl[0:40, 0:40] = 9
            write_raster(folder / f"S2_{d}.tif", values, profile)
        write_raster(folder / "scl" / f"S2_{d}_SCL.tif", scl[None], scl_profile)
    square = box(501360 + 40, 5629680 - 360, 501360 + 360, 5629680 - 40)  # rows/cols 4..36
    gdf = gpd.GeoDataFrame({"id": [1]}, geometry=[square], crs=32631)
    (r,) = extract(gdf, folder)
    first, _, _ = read_date(dates[0])
    last, _, _ = read_date(dates[2])
    w = 8 / 18  # 2018-07-13 lies 8 of the 18 days from 2018-07-05 to 2018-07-23
    expected = first[:, 4:36, 4:36] * (1 - w) + last[:, 4:36, 4:36] * w
    np.testing.assert_allclose(r.patches[1], expected, rtol=1e-5)
    assert r.cloud_fraction[1] == 1.0
    assert r.n_clear_dates == 2
    # Features of the fully cloudy date are interpolated the same way.
    np.testing.assert_allclose(r.features[1], r.features[0] * (1 - w) + r.features[2] * w,
                               rtol=1e-5)  # fmt: skip


def test_interpolation_rules_on_a_known_series():
    days = np.array([0.0, 10.0, 20.0, 40.0, 50.0])
    truth = np.array([1.0, 2.0, 3.0, 5.0, 6.0])  # linear in days
    values = np.where([1, 0, 1, 0, 1], truth, 999.0).astype(np.float32)[:, None, None]
    clear = np.array([1, 0, 1, 0, 1], bool)[:, None]
    np.testing.assert_allclose(interpolate_in_time(values, clear, days)[:, 0, 0], truth)
    # Ends take the nearest clear observation; a pixel never clear is NaN.
    clear2 = np.array([[0, 0], [1, 0], [0, 0], [1, 0], [0, 0]], bool)
    values2 = np.repeat(np.arange(5, dtype=np.float32)[:, None, None], 2, axis=2)
    out = interpolate_in_time(values2, clear2, days)
    np.testing.assert_allclose(out[:, 0, 0], [1, 1, 1 + 2 * 10 / 30, 3, 3])
    assert np.isnan(out[:, 0, 1]).all()


def test_resampling_weights_and_masked_resize():
    assert np.allclose(resample_matrix(32, 32), np.eye(32))
    for n_in, n_out in ((5, 32), (100, 32), (33, 32)):
        m = resample_matrix(n_in, n_out)
        assert m.shape == (n_out, n_in)
        assert np.allclose(m.sum(axis=1), 1)
        assert (m >= 0).all()
    # A parcel of constant value keeps exactly that value after resizing: no zeros bleed in.
    mask = np.zeros((7, 11), bool)
    mask[1:6, 2:9] = True
    mask[3, 2] = False
    values = np.where(mask, 1234.0, 0.0).astype(np.float32)[None]
    out, keep = resize_masked(values, mask, 32)
    assert keep.any()
    assert not keep.all()
    np.testing.assert_allclose(out[0][keep], 1234.0, rtol=1e-6)
    assert not out[0][~keep].any()


def test_every_kind_of_bad_parcel_gets_its_status_and_others_are_unharmed(stack, parcels):
    good = parcels.geometry[7]
    minx, _miny, maxx, _maxy = good.bounds
    bowtie = Polygon([(501500, 5629500), (501600, 5629600), (501600, 5629500), (501500, 5629600)])
    geoms = [
        good,
        translate(good, 20_000, 0),  # outside
        translate(good, -(minx - 501360) - (maxx - minx) / 2, 0),  # half beyond the left edge
        box(501361, 5629501, 501364, 5629504),  # 3 m square: no pixel centre
        None,  # missing geometry
        Polygon(),  # empty
        Point(501500, 5629500),  # not a polygon
        bowtie,  # invalid, repaired
    ]
    gdf = gpd.GeoDataFrame({"id": range(len(geoms))}, geometry=geoms, crs=32631)
    summary = ExtractionSummary()
    res = {r.index: r for r in extract(gdf, stack, summary=summary)}
    assert [res[i].status for i in range(len(geoms))] == [
        OK, OUTSIDE, PARTLY_OUTSIDE, TOO_SMALL, INVALID, INVALID, INVALID, OK,
    ]  # fmt: skip
    assert 0 < res[2].n_pixels < res[0].n_pixels
    assert res[2].patches is not None
    assert res[2].mask.any()
    assert res[7].geometry_repaired
    assert res[7].n_pixels > 0
    assert summary.counts == {OK: 2, OUTSIDE: 1, PARTLY_OUTSIDE: 1, TOO_SMALL: 1, INVALID: 3}
    for i in (1, 3, 4, 5, 6):
        assert res[i].patches is None
        assert not res[i].usable


def test_no_clear_observation(tmp_path: Path, parcels):
    cloudy = ("20170804", "20170903")  # SCL is cloud or shadow over the whole patch
    folder = copy_dates(cloudy, tmp_path / "cloudy")
    res = list(extract(parcels.iloc[:3], folder))
    assert {r.status for r in res} == {NO_CLEAR}
    assert all(r.n_pixels > 0 and r.n_clear_dates == 0 for r in res)
    assert all((r.cloud_fraction == 1).all() for r in res)


def test_tiny_memory_budget_streams_many_chunks_with_identical_results(stack, extracted):
    """Row chunks far smaller than the parcels: results must not depend on the chunking."""
    summary = ExtractionSummary()
    config = ExtractConfig(memory_mb=0.4, workers=1)
    small = {r.index: r for r in extract(PARCELS, stack, config, summary=summary)}
    assert summary.rows_reread > 0 or summary.rows_read >= 64
    for i, r in extracted.items():
        np.testing.assert_array_equal(small[i].patches, r.patches)
        np.testing.assert_array_equal(small[i].features, r.features)
    # GDAL's cache takes its minimum (16 MB), the row buffer gets 1 MB, 80% of it for rows.
    assert summary.peak_buffer_mb <= 0.8 * config.buffer_mb()


def _tiled_stack(folder: Path, tiles: int = 8, n_dates: int = 6) -> Path:
    """The sample's first dates tiled ``tiles`` x ``tiles`` times (512 x 512 px at 8) in
    GeoTIFFs of 64 x 64 blocks: an area many blocks wide."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scl").mkdir(exist_ok=True)
    for date in sorted(p.stem.split("_")[1] for p in STACK.glob("S2_*.tif"))[:n_dates]:
        values, scl, profile = read_date(date)
        big = {**profile, "width": 64 * tiles, "height": 64 * tiles, "tiled": True,
               "blockxsize": 64, "blockysize": 64}  # fmt: skip
        with rasterio.open(STACK / f"S2_{date}.tif") as ds:
            names, tags = list(ds.descriptions), ds.tags()
        write_raster(folder / f"S2_{date}.tif", np.tile(values, (1, tiles, tiles)), big,
                     names, tags)  # fmt: skip
        write_raster(folder / "scl" / f"S2_{date}_SCL.tif", np.tile(scl, (tiles, tiles))[None],
                     {**big, "nodata": None})  # fmt: skip
    return folder


def test_column_strips_decode_whole_blocks_with_identical_results(tmp_path: Path, parcels):
    """An area whose rows of whole blocks exceed the budget is read in column strips of whole
    blocks (each block decoded about once, not once per thin chunk), with the same results as
    whole rows; a parcel wider than half a strip is read in a strip of its own."""
    folder = _tiled_stack(tmp_path / "tiled")
    copies = [translate(g, 640.0 * i, -640.0 * j) for i in range(8) for j in range(8)
              for g in parcels.geometry]  # fmt: skip
    west, _, _, north = parcels.total_bounds
    wide = box(west, north - 60, west + 3000, north - 20)  # 300 px wide, 4 rows
    gdf = gpd.GeoDataFrame({"id": range(len(copies) + 1)}, geometry=[*copies, wide],
                           crs=parcels.crs)  # fmt: skip
    # 6 dates x 21 bytes x 512 columns: 192 rows of the whole width (two block rows and the
    # tail) take 12.4 MB; 24 MB leaves 6.4 MB for rows, 512 MB leaves plenty.
    reference_summary, strips_summary = ExtractionSummary(), ExtractionSummary()
    reference = {r.index: r for r in extract(gdf.iloc[:-1], folder, ExtractConfig(memory_mb=512),
                                             summary=reference_summary)}  # fmt: skip
    assert (reference_summary.strips, reference_summary.aligned) == (1, True)
    small = ExtractConfig(memory_mb=24)
    stripped = {r.index: r for r in extract(gdf.iloc[:-1], folder, small,
                                            summary=strips_summary)}  # fmt: skip
    assert strips_summary.strips > 1
    assert strips_summary.aligned
    assert strips_summary.rows_read <= strips_summary.strips * 512  # no row read twice
    assert stripped.keys() == reference.keys()
    assert len(reference) == len(copies)
    for i, r in reference.items():
        assert (stripped[i].status, stripped[i].n_clear_dates) == (r.status, r.n_clear_dates)
        np.testing.assert_array_equal(stripped[i].patches, r.patches)
        np.testing.assert_array_equal(stripped[i].features, r.features)
    # with the wide parcel: the same parcels, plus the wide one in a last strip
    with_wide = {r.index: r for r in extract(gdf, folder, small)}
    alone = next(extract(gdf.iloc[[-1]], folder, ExtractConfig(memory_mb=512)))
    np.testing.assert_array_equal(with_wide[len(copies)].patches, alone.patches)
    for i in (0, 17, len(copies) - 1):
        np.testing.assert_array_equal(with_wide[i].patches, reference[i].patches)


def test_features_only_extraction_equals_the_full_one(stack, extracted):
    """patches=False (what a feature model reads) gives the same statuses, clear dates and
    features as the full extraction, and no patch."""
    only = {r.index: r for r in extract(PARCELS, stack, ExtractConfig(patches=False))}
    assert only.keys() == extracted.keys()
    for i, r in extracted.items():
        assert (only[i].status, only[i].n_clear_dates) == (r.status, r.n_clear_dates)
        assert only[i].patches is None
        assert only[i].mask is None
        np.testing.assert_array_equal(only[i].features, r.features)
        np.testing.assert_array_equal(only[i].cloud_fraction, r.cloud_fraction)


def test_processing_threads_follow_the_cores_within_the_memory_budget(monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert ExtractConfig().n_process_workers() == 8  # 2048 MB / 256 MB per thread
    assert ExtractConfig(memory_mb=8192).n_process_workers() == 16
    assert ExtractConfig(memory_mb=100).n_process_workers() == 2
    assert ExtractConfig(process_workers=3).n_process_workers() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert ExtractConfig().n_process_workers() == 1


def test_results_do_not_depend_on_the_number_of_processing_threads(stack, extracted):
    """Groups run on 1 or 4 threads, in any order: every parcel gets the same arrays."""
    for n in (1, 4):
        got = {r.index: r for r in extract(PARCELS, stack, ExtractConfig(process_workers=n))}
        assert got.keys() == extracted.keys()
        for i, r in extracted.items():
            assert got[i].status == r.status
            for name in ("patches", "mask", "features"):
                np.testing.assert_array_equal(getattr(got[i], name), getattr(r, name))


def test_progress_and_cancellation(stack):
    seen = []
    list(extract(PARCELS, stack, progress=lambda f, m: seen.append(f)))
    assert seen[-1] == 1.0
    with pytest.raises(Cancelled):
        list(extract(PARCELS, stack, is_cancelled=lambda: True))


def test_parcels_without_crs_are_refused_with_a_hint(stack, parcels):
    with pytest.raises(ParcelError, match="no coordinate reference system"):
        list(extract(gpd.GeoDataFrame(geometry=list(parcels.geometry)), stack))


def test_missing_parcel_file(stack, tmp_path: Path):
    with pytest.raises(ParcelError, match="does not exist"):
        list(extract(tmp_path / "nope.gpkg", stack))


def test_overlapping_parcels_each_keep_all_their_pixels(stack):
    """Parcels are rasterised together; where two claim the same pixels, each still gets them."""
    a = box(501360 + 100, 5629680 - 300, 501360 + 300, 5629680 - 100)  # 20 x 20 px
    b = translate(a, 100, -50)  # overlaps a over 10 x 15 px
    c = translate(a, 300, 0)  # touches b's right edge only: shares no pixel centre
    gdf = gpd.GeoDataFrame({"id": [1, 2, 3]}, geometry=[a, b, c], crs=32631)
    res = {r.index: r for r in extract(gdf, stack)}
    assert [res[i].n_pixels for i in range(3)] == [400, 400, 400]
    assert all(res[i].mask.all() for i in range(3))


def test_batched_processing_equals_the_per_parcel_reference(stack, parcels, extracted):
    """Groups of parcels processed at once give what the per-parcel code gives, parcel by
    parcel, whatever the group (padding, size, neighbours)."""
    from cropmodels.extract import _Extractor, _groups, _plan, _process_buffered

    jobs, _ = _plan(parcels, stack)
    ex = _Extractor(stack, ExtractConfig())
    try:
        rows = max(j.row1 for j in jobs)
        cols = max(j.col1 for j in jobs)
        chunk = ex.read(0, rows, 0, cols)
        # The per-parcel code, each parcel rasterised on its own.
        reference = {j.index: _process_buffered(ex, [chunk], j, None, col0=0) for j in jobs}
        one_group = ex.process_batch(jobs, (chunk,), 0)
        by_size = [
            r
            for group in _groups(jobs, len(stack), 32)
            for r in ex.process_batch(group, (chunk,), 0)
        ]
    finally:
        ex.close()
    assert len(one_group) == len(by_size) == len(jobs) == 18
    for results in (one_group, by_size, list(extracted.values())):
        for r in results:
            ref = reference[r.index]
            assert r.status == ref.status
            assert r.n_pixels == ref.n_pixels
            assert r.n_clear_dates == ref.n_clear_dates
            assert r.patches.dtype == r.features.dtype == np.float32
            assert r.mask.dtype == bool
            np.testing.assert_array_equal(r.mask, ref.mask)
            np.testing.assert_allclose(r.cloud_fraction, ref.cloud_fraction, rtol=1e-6)
            np.testing.assert_allclose(r.patches, ref.patches, rtol=1e-5, atol=1e-3)
            np.testing.assert_allclose(r.features, ref.features, rtol=1e-5, atol=1e-3)
