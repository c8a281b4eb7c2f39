"""How the bundled models' training data is made (scripts/make_subparcels.py,
scripts/build_models.py) and the core pieces it relies on (select_dates, bundled_models)."""

from __future__ import annotations

import datetime as dt

import geopandas as gpd
import numpy as np
import pytest

import build_models
import make_subparcels
from cropmodels.extract import extract, select_dates
from cropmodels.modelcard import bundled_models
from cropmodels.stack import open_stack
from sample_data import PARCELS, SAMPLE, copy_dates

DATES = ("20180225", "20180320", "20180419", "20180509", "20180526", "20180705")


@pytest.fixture(scope="module")
def subparcels(tmp_path_factory):
    return make_subparcels.write_subparcels(tmp_path_factory.mktemp("sub") / "subparcels.gpkg")


def test_sub_parcels_tile_each_region_in_compact_pieces_of_realistic_size(subparcels):
    parcels = gpd.read_file(PARCELS)
    assert sorted(subparcels.source_parcel_id.unique()) == sorted(parcels.parcel_id)
    assert subparcels.subparcel_id.tolist() == list(range(1, len(subparcels) + 1))
    assert len(subparcels) == 108
    for row in parcels.itertuples():
        pieces = subparcels[subparcels.source_parcel_id == row.parcel_id]
        assert (pieces.crop_code == row.crop_code).all()
        assert pieces.n_pixels.sum() == row.n_pixels
        assert pieces.unary_union.symmetric_difference(row.geometry).area < 1e-6
        assert pieces.unary_union.area == pytest.approx(pieces.area.sum())  # no overlap
        assert len(pieces) == max(1, row.n_pixels // make_subparcels.TARGET_PX)
        if len(pieces) > 1:
            assert pieces.n_pixels.min() >= make_subparcels.MIN_PIECE_PX
            assert pieces.n_pixels.max() <= 3 * make_subparcels.TARGET_PX
    assert (subparcels.geometry.geom_type == "Polygon").all()  # one piece each
    assert np.allclose(subparcels.area, subparcels.area_m2)
    # compact: a piece's area is at least a third of its bounding box's
    boxes = subparcels.envelope.area
    assert (subparcels.area / boxes).min() > 1 / 3


def test_sub_parcels_are_deterministic(subparcels, tmp_path):
    again = make_subparcels.write_subparcels(tmp_path / "again.gpkg")
    assert again.drop(columns="geometry").equals(subparcels.drop(columns="geometry"))
    assert all(a.equals(b) for a, b in zip(again.geometry, subparcels.geometry, strict=True))


def test_split_region_joins_fragments_and_small_pieces():
    # a U shape: clusters of pixel centres can straddle the gap between its arms
    inside = np.zeros((12, 12), bool)
    inside[:, :3] = inside[:, 9:] = inside[9:, :] = True
    labels = make_subparcels.split_region(inside, target_px=20, min_piece_px=12)
    from scipy import ndimage

    assert (labels >= 0).sum() == inside.sum()
    assert ((labels >= 0) == inside).all()
    for piece in np.unique(labels[labels >= 0]):
        _, count = ndimage.label(labels == piece)
        assert count == 1
        assert (labels == piece).sum() >= 12
    small = np.zeros((5, 5), bool)
    small[1:4, 1:4] = True
    assert (make_subparcels.split_region(small)[small] == 0).all()  # stays whole


def test_date_grid_takes_the_clearest_date_of_each_window():
    dates = [dt.date(2018, 1, 1) + dt.timedelta(days=3 * i) for i in range(120)]
    share = np.full(len(dates), 0.9)
    share[::2] = 0.95  # the clearer of every pair
    share[:20] = 0.1  # January-February cloudy: their windows give their slots away
    chosen = build_models.choose_date_grid(dates, share, n=24)
    assert len(chosen) == 24
    assert chosen == sorted(set(chosen))
    assert all(dates[i] <= dt.date(2018, 10, 31) for i in chosen)
    assert all(share[i] >= 0.5 for i in chosen)
    assert min(dates[i] for i in chosen) >= dates[20]
    with pytest.raises(ValueError, match="only 3 dates"):
        build_models.choose_date_grid(dates[:3], share[:3] + 1, n=24)


def test_date_grid_of_the_real_sample_is_24_clear_dates_of_2018():
    stack = open_stack(SAMPLE / "stack")
    subs = gpd.read_file(PARCELS)
    from rasterio import features

    grid = stack.grid
    inside = features.rasterize(
        [(g, 1) for g in subs.geometry], out_shape=(grid.height, grid.width),
        transform=grid.transform,
    ).astype(bool)  # fmt: skip
    share = build_models.clear_share_by_date(stack, inside)
    dates = [e.date for e in stack.dates]
    assert share[dates.index(dt.date(2018, 9, 23))] < 0.05  # Sen2Cor's September "snow"
    chosen = build_models.choose_date_grid(dates, share)
    assert len(chosen) == 24
    assert {dates[i].year for i in chosen} == {2018}
    assert min(share[i] for i in chosen) >= 0.5
    assert dt.date(2018, 9, 23) not in [dates[i] for i in chosen]


def test_select_dates_keeps_the_grid_after_interpolating_over_every_date(tmp_path):
    stack = open_stack(copy_dates(DATES, tmp_path / "stack"))
    parcels = gpd.read_file(PARCELS)
    full = {r.index: r for r in extract(parcels, stack)}
    keep = [1, 3, 4]
    kept = {r.index: r for r in select_dates(extract(parcels, stack), keep)}
    assert sorted(kept) == sorted(full)
    for i, r in kept.items():
        np.testing.assert_array_equal(r.patches, full[i].patches[keep])
        np.testing.assert_array_equal(r.features, full[i].features[keep])
        np.testing.assert_array_equal(r.cloud_fraction, full[i].cloud_fraction[keep])
        np.testing.assert_array_equal(r.mask, full[i].mask)
        assert r.n_clear_dates == int(((1 - r.cloud_fraction[:]) >= 0.5).sum())
        assert r.n_clear_dates <= full[i].n_clear_dates
    with pytest.raises(ValueError, match="increasing"):
        next(select_dates(iter(()), [3, 1]))
    with pytest.raises(ValueError, match="beyond the 6 dates"):
        next(select_dates(extract(parcels, stack), [2, 6]))


def test_bundled_models_lists_card_folders_in_registry_order(tmp_path):
    for name in ("pse_ltae", "gru", "cnn", "zz_custom"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "stray.json").write_text("{}")
    found = bundled_models(tmp_path)
    assert [p.stem for p in found] == ["cnn", "gru", "pse_ltae", "zz_custom"]
    assert bundled_models(tmp_path / "missing") == []
