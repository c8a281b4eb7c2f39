"""Stack discovery and reading on the real Flanders sample and stacks derived from it."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.windows import Window

from cropmodels.stack import (
    PAPER_BANDS,
    StackError,
    band_name,
    open_stack,
    parse_date,
    to_canonical,
)
from sample_data import SCL, STACK, copy_dates, read_date, sample_dates, write_raster

FULL = Window(0, 0, 64, 64)
THREE = ("20180419", "20180426", "20180504")


def test_real_folder_stack_is_described_completely():
    stack = open_stack(STACK)
    assert len(stack) == 118
    assert [d.date for d in stack.dates] == sorted(d.date for d in stack.dates)
    assert stack.dates[0].date == dt.date(2017, 8, 4)
    assert stack.dates[-1].date == dt.date(2018, 11, 27)
    assert stack.grid.crs.to_epsg() == 32631
    assert (stack.grid.width, stack.grid.height) == (64, 64)
    assert stack.grid.bounds == pytest.approx((501360, 5629040, 502000, 5629680))
    # The sidecar folder ../scl is found and matched by date.
    assert all(d.cloud and Path(d.cloud.path).parent == SCL for d in stack.dates)
    first = stack.dates[0]
    assert (first.scale, first.offset, first.nodata) == (1e-4, 0.0, 0.0)  # REFLECTANCE_SCALE tag
    assert stack.day_of_year[0] == 216
    json.dumps(stack.describe())  # recorded with stores and model cards


def test_reading_a_date_returns_the_file_values_and_the_scl_clear_mask():
    stack = open_stack(STACK)
    t = [d.date.isoformat() for d in stack.dates].index("2018-07-23")
    values, scl, _ = read_date("20180723")
    with stack.reader() as reader:
        got, clear = reader.read(t, FULL)
    np.testing.assert_array_equal(got, values)
    np.testing.assert_array_equal(clear, ~np.isin(scl, [0, 1, 3, 8, 9, 10]))
    # A window reads the same pixels.
    with stack.reader() as reader:
        part, _ = reader.read(t, Window(10, 20, 5, 7))
    np.testing.assert_array_equal(part, values[:, 20:27, 10:15])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("S2_20180723.tif", dt.date(2018, 7, 23)),
        ("T31TFM_2019-03-05_B05.tif", dt.date(2019, 3, 5)),
        ("S2A_MSIL2A_20190305T105021_N0211_R051_T31TFM_20190306T140101.tif", dt.date(2019, 3, 5)),
        ("2018:07:23 11:05:18", dt.date(2018, 7, 23)),
        ("S2_20181341.tif", None),
        ("parcels.tif", None),
    ],
)
def test_dates_from_names_and_tags(text, expected):
    assert parse_date(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("B2", "B02"), ("B02", "B02"), ("b8a", "B8A"), ("20190305_B11", "B11"),
     ("T31TFM_20190305_B05_20m", "B05"), ("SCL", None), ("B13", None), ("AB02X", None)],
)  # fmt: skip
def test_band_names(text, expected):
    assert band_name(text) == expected


def test_multiband_raster_with_dated_band_descriptions(tmp_path: Path):
    """One raster holding several dates, bands described as <YYYYMMDD>_<band> and _SCL."""
    layers, names = [], []
    for d in THREE:
        values, scl, profile = read_date(d)
        layers += [values, scl[None].astype(values.dtype)]
        names += [f"{d}_{b}" for b in PAPER_BANDS] + [f"{d}_SCL"]
    path = write_raster(tmp_path / "series.tif", np.concatenate(layers), profile, names,
                        {"REFLECTANCE_SCALE": "0.0001"})  # fmt: skip
    stack = open_stack(path)
    folder = open_stack(copy_dates(THREE, tmp_path / "folder"))
    assert [d.date for d in stack.dates] == [d.date for d in folder.dates]
    with stack.reader() as a, folder.reader() as b:
        for t in range(3):
            va, ca = a.read(t, FULL)
            vb, cb = b.read(t, FULL)
            np.testing.assert_array_equal(va, vb)
            np.testing.assert_array_equal(ca, cb)


def test_json_descriptor_lists_files_masks_and_scale(tmp_path: Path):
    spec = {
        "dates": [
            {"date": f"{d[:4]}-{d[4:6]}-{d[6:]}", "path": str(STACK / f"S2_{d}.tif"),
             "cloud_mask": str(SCL / f"S2_{d}_SCL.tif")}
            for d in reversed(THREE)
        ],
        "scale": 0.0001,
        "offset": -1000,
    }  # fmt: skip
    path = tmp_path / "stack.json"
    path.write_text(json.dumps(spec))
    stack = open_stack(path)
    assert [d.date.strftime("%Y%m%d") for d in stack.dates] == list(THREE)  # sorted
    assert all(d.offset == -1000 and d.cloud for d in stack.dates)
    values, _, _ = read_date(THREE[0])
    with stack.reader() as reader:
        raw, _ = reader.read(0, FULL)
    np.testing.assert_allclose(to_canonical(raw, stack.dates[0]), values.astype(np.float32) - 1000)


def test_separate_20m_band_files_are_resampled_to_the_10m_grid(tmp_path: Path):
    """A date given as one file per band, the 20 m bands on their native 20 m grid."""
    d = THREE[1]
    values, _, profile = read_date(d)
    folder = tmp_path / "bands"
    folder.mkdir()
    for i, band in enumerate(PAPER_BANDS):
        if band in ("B02", "B03", "B04", "B08"):
            write_raster(folder / f"T31UDS_{d}_{band}_10m.tif", values[i : i + 1], profile)
        else:  # the sample's 20 m bands are 2x2 duplicates: take one pixel of each block
            coarse = values[i : i + 1, ::2, ::2]
            t = profile["transform"]
            p20 = {**profile, "width": 32, "height": 32,
                   "transform": rasterio.Affine(20, 0, t.c, 0, -20, t.f)}  # fmt: skip
            write_raster(folder / f"T31UDS_{d}_{band}_20m.tif", coarse, p20)
    stack = open_stack(folder)
    assert len(stack) == 1
    assert (stack.grid.width, abs(stack.grid.transform.a)) == (64, 10)
    assert any("warped to the grid of the first date" in n for n in stack.notes)
    with stack.reader() as reader:
        got, _ = reader.read(0, FULL)
    np.testing.assert_array_equal(got, values)


def test_a_date_in_another_crs_is_warped_to_the_first_dates_grid(tmp_path: Path, caplog):
    folder = copy_dates(THREE[:2], tmp_path / "mixed")
    values, _, profile = read_date(THREE[2])
    dst_crs = "EPSG:3857"
    transform, width, height = calculate_default_transform(
        profile["crs"],
        dst_crs,
        64,
        64,
        *rasterio.transform.array_bounds(64, 64, profile["transform"])[::1],
    )
    out = np.zeros((10, height, width), dtype=values.dtype)
    reproject(values, out, src_transform=profile["transform"], src_crs=profile["crs"],
              dst_transform=transform, dst_crs=dst_crs, resampling=Resampling.nearest)  # fmt: skip
    write_raster(folder / f"S2_{THREE[2]}.tif", out,
                 {**profile, "crs": dst_crs, "transform": transform, "width": width,
                  "height": height})  # fmt: skip
    with caplog.at_level(logging.INFO, logger="cropmodels.stack"):
        stack = open_stack(folder)
    assert stack.grid.crs.to_epsg() == 32631
    assert any("another CRS" in r.getMessage() for r in caplog.records)
    with stack.reader() as reader:
        got, _ = reader.read(2, FULL)
    assert got.shape == (10, 64, 64)
    inner = (slice(None), slice(4, -4), slice(4, -4))  # away from the warped edges
    rel = np.abs(got[inner].astype(float) - values[inner]) / values[inner]
    assert np.median(rel) < 0.05


def test_baseline_04_offset_is_read_from_the_tags(tmp_path: Path):
    d = THREE[0]
    values, _, profile = read_date(d)
    folder = tmp_path / "pb4"
    folder.mkdir()
    write_raster(folder / f"S2_{d}.tif", values + 1000, profile, list(PAPER_BANDS),
                 {"PROCESSING_BASELINE": "04.00", "REFLECTANCE_SCALE": "0.0001"})  # fmt: skip
    stack = open_stack(folder)
    assert stack.dates[0].offset == -1000
    assert not stack.has_cloud_mask
    with stack.reader() as reader:
        raw, clear = reader.read(0, FULL)
    np.testing.assert_array_equal(to_canonical(raw, stack.dates[0]), values.astype(np.float32))
    assert clear.all()  # no mask: every observed pixel is clear


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: p, "No raster files"),
    ],
)
def test_unusable_stacks_get_a_clear_message(tmp_path: Path, make, message):
    with pytest.raises(StackError, match=message):
        open_stack(make(tmp_path))


def test_file_without_a_date_is_explained(tmp_path: Path):
    values, _, profile = read_date(THREE[0])
    write_raster(tmp_path / "image.tif", values, profile)
    with pytest.raises(StackError, match=r"date of image\.tif.*YYYYMMDD"):
        open_stack(tmp_path)


def test_unnamed_bands_must_be_ten(tmp_path: Path):
    values, _, profile = read_date(THREE[0])
    write_raster(tmp_path / f"S2_{THREE[0]}.tif", values[:7], profile)
    with pytest.raises(StackError, match="7 bands without band names"):
        open_stack(tmp_path)


def test_named_bands_missing_one_are_listed(tmp_path: Path):
    values, _, profile = read_date(THREE[0])
    write_raster(tmp_path / f"S2_{THREE[0]}.tif", values[:9], profile, list(PAPER_BANDS[:9]))
    with pytest.raises(StackError, match="lacks B12"):
        open_stack(tmp_path)


def test_sample_has_118_dates():
    assert len(sample_dates()) == 118


def test_bounds_and_date_range_limit_a_folder_stack(tmp_path: Path):
    folder = copy_dates(THREE, tmp_path / "s")
    # 501360 + 105 -> column 10 (snapped outward), 5629680 - 155 -> row 15
    stack = open_stack(folder, bounds=(501465, 5629400, 501700, 5629525), start="2018-04-20")
    assert [d.date.isoformat() for d in stack.dates] == ["2018-04-26", "2018-05-04"]
    assert (stack.grid.transform.c, stack.grid.transform.f) == (501460, 5629530)
    assert (stack.grid.width, stack.grid.height) == (24, 13)
    values, scl, _ = read_date(THREE[1])
    with stack.reader() as reader:
        got, clear = reader.read(0, Window(0, 0, 24, 13))
    np.testing.assert_array_equal(got, values[:, 15:28, 10:34])
    np.testing.assert_array_equal(clear, ~np.isin(scl[15:28, 10:34], [0, 1, 3, 8, 9, 10]))
    with pytest.raises(StackError, match="does not overlap"):
        open_stack(folder, bounds=(0, 0, 10, 10))
    with pytest.raises(StackError, match="YYYY-MM-DD"):
        open_stack(folder, end="23/07/2018")
