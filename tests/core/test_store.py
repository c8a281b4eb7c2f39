"""The chunked parcel store: real-sample round trip, batching, and all-or-nothing writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

from cropmodels import __version__
from cropmodels.extract import (
    INVALID,
    N_FEATURES,
    NO_CLEAR,
    OK,
    OUTSIDE,
    PARTLY_OUTSIDE,
    TOO_SMALL,
    ParcelData,
    extract,
)
from cropmodels.progress import Cancelled
from cropmodels.stack import PAPER_BANDS, open_stack
from cropmodels.store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    Store,
    StoreError,
    is_store,
    write_store,
)
from sample_data import PARCELS, STACK

CHUNK = 4  # several chunks from the 18 real parcels


@pytest.fixture(scope="module")
def sample():
    stack = open_stack(STACK)
    parcels = gpd.read_file(PARCELS)
    results = list(extract(parcels, stack))
    return stack, parcels, results


def _write_sample(sample, out: Path, **kwargs) -> object:
    stack, parcels, results = sample
    names = parcels.drop_duplicates("crop_code").sort_values("crop_code")
    options = {
        "n_parcels": len(parcels),
        "stack_description": stack.describe(),
        "dates": [d.date.isoformat() for d in stack.dates],
        "parcel_ids": list(parcels["parcel_id"]),
        "labels": list(parcels["crop_code"]),
        "label_field": "crop_code",
        "classes": [
            {"code": int(c), "name": n}
            for c, n in zip(names["crop_code"], names["crop_name"], strict=True)
        ],
        "chunk_parcels": CHUNK,
    }
    options.update(kwargs)
    return write_store(kwargs.pop("results", results), out, **options)


@pytest.fixture(scope="module")
def written(sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "flanders.zarr"
    summary = _write_sample(sample, out)
    return out, summary


def _synthetic(index: int, status: str = OK, t: int = 3, size: int = 8, value: float = 100.0):
    usable = status in (OK, PARTLY_OUTSIDE)
    rng = np.random.default_rng(index)
    return ParcelData(
        index=index,
        status=status,
        n_pixels=10 if usable else 0,
        cloud_fraction=np.full(t, 0.25, np.float32),
        n_clear_dates=t if usable else 0,
        patches=(rng.random((t, 10, size, size)) * value).astype(np.float32) if usable else None,
        mask=np.ones((size, size), bool) if usable else None,
        features=rng.random((t, N_FEATURES)).astype(np.float32) if usable else None,
    )


def _write_synthetic(out: Path, results, n: int, **kwargs):
    options = {
        "n_parcels": n,
        "stack_description": {"source": "synthetic"},
        "dates": ["2019-03-05", "2019-04-01", "2019-06-30"],
        "patch_size": 8,
        "chunk_parcels": 2,
    }
    options.update(kwargs)
    return write_store(results, out, **options)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- the real sample -------------------------------------------------------------------------


def test_round_trip_on_the_real_sample_equals_the_extractor(sample, written):
    stack, parcels, results = sample
    out, summary = written
    store = Store(out)
    by_index = {r.index: r for r in results}
    assert len(store) == len(parcels) == summary.n_parcels == 18
    assert summary.counts == {OK: 18}
    assert summary.n_labelled == 18
    # Rows keep the extractor's (spatial) arrival order; source_index maps them back.
    assert list(store.source_index) == [r.index for r in results]
    assert sorted(store.source_index) == list(range(18))

    batch = store.read(np.arange(len(store)))
    for row, index in enumerate(batch.source_index):
        r = by_index[int(index)]
        assert np.abs(batch.patches[row] - r.patches).max() <= 0.5
        np.testing.assert_array_equal(batch.mask[row], r.mask)
        np.testing.assert_array_equal(batch.features[row], r.features)
        np.testing.assert_allclose(batch.cloud_fraction[row], r.cloud_fraction, atol=1e-3)
        assert batch.label[row] == parcels["crop_code"][index]
        assert batch.parcel_id[row] == str(parcels["parcel_id"][index])
        assert batch.status[row] == r.status
        assert batch.n_pixels[row] == r.n_pixels == parcels["n_pixels"][index]
        assert batch.n_clear_dates[row] == r.n_clear_dates
        assert not batch.geometry_repaired[row]
    assert batch.patches.dtype == np.float32
    assert batch.patches.shape == (18, 118, 10, 32, 32)

    attrs = store.attrs
    assert attrs["format"] == FORMAT_NAME
    assert attrs["format_version"] == FORMAT_VERSION
    assert attrs["cropmodels_version"] == __version__
    assert store.dates == [d.date.isoformat() for d in stack.dates]
    assert store.day_of_year == stack.day_of_year
    assert attrs["bands"] == list(PAPER_BANDS)
    assert attrs["label_field"] == "crop_code"
    assert {c["code"] for c in store.classes} == {1200, 2130, 5100, 7900, 9120}
    assert attrs["stack"]["crs"] == "EPSG:32631"
    assert attrs["status_codes"]["0"] == OK
    assert attrs["created"].endswith("+00:00")
    assert store.chunk_parcels == CHUNK

    per_parcel = store.bytes_per_parcel()
    raw = 118 * 10 * 32 * 32 * 2
    print(  # shown with pytest -s; the benchmark reports the same for a synthetic tile
        f"store of the Flanders sample: {per_parcel:.0f} bytes per parcel (118 dates; raw "
        f"uint16 patches {raw} bytes, {raw / per_parcel:.2f}x smaller), {per_parcel / 118:.0f} "
        f"bytes per parcel-date; by array: {store.bytes_by_array()}"
    )
    assert per_parcel == summary.bytes_per_parcel
    assert per_parcel < raw / 2  # compressed at least two-fold


def test_read_restores_the_callers_order_with_duplicates(written):
    store = Store(written[0])
    everything = store.read(range(len(store)))
    wanted = [17, 2, 9, 2, 0, 13]
    batch = store.read(wanted)
    assert list(batch.rows) == wanted
    np.testing.assert_array_equal(batch.patches, everything.patches[wanted])
    np.testing.assert_array_equal(batch.features, everything.features[wanted])
    np.testing.assert_array_equal(batch.parcel_id, everything.parcel_id[wanted])
    only = store.read(wanted, fields=["features"])
    assert only.patches is None
    assert only.mask is None
    np.testing.assert_array_equal(only.features, batch.features)
    raw = store.read(wanted, patches_dtype=np.uint16)
    assert raw.patches.dtype == np.uint16
    np.testing.assert_array_equal(raw.patches, batch.patches)
    (streamed,) = store.iter_batches(6, indices=wanted, fields=["patches"], patches_dtype="u2")
    assert streamed.patches.dtype == np.uint16
    assert len(store.read([])) == 0
    with pytest.raises(IndexError):
        store.read([18])


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(
    ("buffer_mb", "prefetch"),
    [(0.0, 3), (256.0, 1)],  # one chunk per group, three read ahead; or all at once
)
def test_iter_batches_yield_every_row_exactly_once(written, shuffle, buffer_mb, prefetch):
    store = Store(written[0])
    batches = list(
        store.iter_batches(5, shuffle=shuffle, seed=3, buffer_mb=buffer_mb, prefetch=prefetch)
    )
    rows = np.concatenate([b.rows for b in batches])
    assert sorted(rows) == list(range(18))
    assert [len(b) for b in batches] == [5, 5, 5, 3]
    if not shuffle:
        assert list(rows) == list(range(18))
    else:
        assert list(rows) != list(range(18))
    for b in batches:
        np.testing.assert_array_equal(b.source_index, store.source_index[b.rows])
    again = np.concatenate(
        [b.rows for b in store.iter_batches(5, shuffle=shuffle, seed=3, buffer_mb=buffer_mb)]
    )
    np.testing.assert_array_equal(rows, again)  # the seed makes it reproducible


def test_iter_batches_on_a_subset_with_drop_last(written):
    store = Store(written[0])
    subset = store.usable_indices(labelled=True)[::2]  # 9 rows
    batches = list(
        store.iter_batches(
            4, indices=subset, shuffle=True, drop_last=True, fields=["features"], prefetch=0
        )
    )
    assert [len(b) for b in batches] == [4, 4]
    rows = np.concatenate([b.rows for b in batches])
    assert set(rows) <= set(subset)
    assert len(set(rows)) == 8
    assert all(b.patches is None and b.features.shape[1:] == (118, 20) for b in batches)


# -- all or nothing --------------------------------------------------------------------------


def test_cancellation_after_the_first_chunk_leaves_nothing(sample, tmp_path: Path):
    reports: list[float] = []
    with pytest.raises(Cancelled):
        _write_sample(
            sample,
            tmp_path / "cancelled.zarr",
            progress=lambda f, _m: reports.append(f),
            is_cancelled=lambda: bool(reports),  # true once the first chunk is on disk
        )
    assert reports == [CHUNK / 18]
    assert _leftovers(tmp_path) == []


def test_an_exception_in_the_results_leaves_nothing(tmp_path: Path):
    def failing():
        for i in range(5):
            yield _synthetic(i)
        raise RuntimeError("the stack went away")

    with pytest.raises(RuntimeError, match="went away"):
        _write_synthetic(tmp_path / "broken.zarr", failing(), 10)
    assert _leftovers(tmp_path) == []


def test_a_failing_chunk_write_leaves_nothing(tmp_path: Path, monkeypatch):
    """Chunks are compressed on a thread; its errors (a full disk, say) reach the caller."""
    from cropmodels import store as store_module

    def full_disk(self, buffers, start, stop):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module._Writer, "_write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _write_synthetic(tmp_path / "full.zarr", (_synthetic(i) for i in range(7)), 7)
    assert _leftovers(tmp_path) == []


def test_missing_duplicate_or_foreign_results_leave_nothing(tmp_path: Path):
    out = tmp_path / "s.zarr"
    with pytest.raises(ValueError, match=r"held 3 parcels but n_parcels is 4.*\[2\]"):
        _write_synthetic(out, [_synthetic(i) for i in (0, 1, 3)], 4)
    with pytest.raises(ValueError, match="arrived twice"):
        _write_synthetic(out, [_synthetic(i) for i in (0, 1, 1)], 3)
    with pytest.raises(ValueError, match="outside the layer"):
        _write_synthetic(out, [_synthetic(i) for i in (0, 5)], 2)
    with pytest.raises(ValueError, match="4 dates but the store has 3"):
        _write_synthetic(out, [_synthetic(0, t=4)], 1)
    with pytest.raises(ValueError, match="labels for 2 parcels"):
        _write_synthetic(out, [_synthetic(0)], 2, labels=[1])
    with pytest.raises(ValueError, match="not an integer class code"):
        _write_synthetic(out, [_synthetic(0)], 1, labels=["wheat"])
    assert _leftovers(tmp_path) == []


def test_overwriting_a_store_needs_overwrite(tmp_path: Path):
    out = tmp_path / "s.zarr"
    _write_synthetic(out, [_synthetic(i) for i in range(3)], 3)
    with pytest.raises(StoreError, match=r"already exists.*overwrite"):
        _write_synthetic(out, [_synthetic(i) for i in range(2)], 2)
    assert len(Store(out)) == 3
    _write_synthetic(out, [_synthetic(i) for i in range(2)], 2, overwrite=True)
    assert len(Store(out)) == 2
    assert _leftovers(tmp_path) == ["s.zarr"]


def test_a_path_that_is_not_a_store_is_refused(tmp_path: Path):
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="not a parcel store; refusing"):
            _write_synthetic(folder, [_synthetic(0)], 1, overwrite=overwrite)
    assert (folder / "thesis.txt").read_text() == "keep me"
    with pytest.raises(StoreError, match="not a parcel store"):
        Store(folder)
    assert not is_store(folder)
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(StoreError, match="not a folder"):
        Store(tmp_path / "file.zarr")
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "absent.zarr")


def test_a_store_from_a_newer_format_is_refused(tmp_path: Path):
    out = tmp_path / "s.zarr"
    _write_synthetic(out, [_synthetic(0)], 1)
    for name in (".zattrs", ".zmetadata"):
        text = (out / name).read_text()
        (out / name).write_text(text.replace('"format_version": 1', '"format_version": 99'))
    assert json.loads((out / ".zattrs").read_text())["format_version"] == 99
    with pytest.raises(StoreError, match=r"store format 99.*format 1 at most"):
        Store(out)


# -- unusable parcels, labels, ids, clipping -------------------------------------------------


def test_unusable_parcels_labels_ids_and_clipping(tmp_path: Path):
    statuses = [OK, OUTSIDE, PARTLY_OUTSIDE, TOO_SMALL, NO_CLEAR, INVALID, OK]
    results = [_synthetic(i, s) for i, s in enumerate(statuses)]
    results[0].patches[0, 0, 0, 0] = -12.0  # negative after offset removal
    results[0].patches[0, 0, 0, 1] = 70000.0
    results[6].features[1, 3] = np.nan
    out = tmp_path / "s.zarr"
    summary = _write_synthetic(
        out,
        reversed(results),  # any arrival order
        len(results),
        labels=[3, None, math.nan, -1, 5.0, 7, 3],
        parcel_ids=["a", "b", None, 4, 5.0, "f", "g"],
    )
    assert summary.n_clipped == 2
    assert summary.n_usable == 3
    assert summary.n_labelled == 4
    store = Store(out)
    assert list(store.source_index) == [6, 5, 4, 3, 2, 1, 0]
    batch = store.read(np.argsort(store.source_index))  # back to input order
    assert list(batch.status) == statuses
    assert list(batch.label) == [3, -1, -1, -1, 5, 7, 3]
    assert list(batch.parcel_id) == ["a", "b", "", "4", "5", "f", "g"]
    assert batch.patches[0, 0, 0, 0, 0] == 0
    assert batch.patches[0, 0, 0, 0, 1] == 65535
    assert np.abs(batch.patches[0].ravel()[2:] - results[0].patches.ravel()[2:]).max() <= 0.5
    assert batch.features[6, 1, 3] == 0
    assert np.isfinite(batch.features).all()
    for row in (1, 3, 4, 5):
        assert not batch.patches[row].any()
        assert not batch.mask[row].any()
        assert not batch.features[row].any()
    np.testing.assert_array_equal(np.sort(store.source_index[store.usable_indices()]), [0, 2, 6])
    np.testing.assert_array_equal(
        np.sort(store.source_index[store.usable_indices(labelled=True)]), [0, 6]
    )
    positions = _write_synthetic(tmp_path / "p.zarr", [_synthetic(1), _synthetic(0)], 2)
    assert list(Store(positions.path).read([0, 1]).parcel_id) == ["1", "0"]
    assert Store(positions.path).attrs["parcel_id_source"] == "input position"


def test_an_empty_layer_gives_an_empty_store(tmp_path: Path):
    summary = _write_synthetic(tmp_path / "e.zarr", [], 0)
    store = Store(summary.path)
    assert len(store) == 0
    assert list(store.iter_batches(4)) == []
    assert store.bytes_per_parcel() == 0.0


def test_long_series_get_smaller_chunks(tmp_path: Path, monkeypatch):
    from cropmodels import store as store_module

    monkeypatch.setattr(store_module, "MAX_CHUNK_BYTES", 3 * (3 * 10 * 8 * 8 * 2))  # 3 parcels
    results = [_synthetic(i) for i in range(7)]
    summary = _write_synthetic(tmp_path / "c.zarr", results, 7, chunk_parcels=64)
    store = Store(summary.path)
    assert store.chunk_parcels == store.attrs["chunk_parcels"] == 3
    batch = store.read(np.argsort(store.source_index))
    for r in results:
        assert np.abs(batch.patches[r.index] - r.patches).max() <= 0.5
    rows = np.concatenate([b.rows for b in store.iter_batches(2, buffer_mb=0.0)])
    assert list(rows) == list(range(7))


def test_store_records_parcel_centroids_for_spatial_folds(tmp_path):
    """Centroids in the stack's CRS; spatial blocks from them match those from the layer."""
    import geopandas as gpd

    from cropmodels.extract import extract
    from cropmodels.stack import open_stack
    from cropmodels.store import Store, write_store
    from cropmodels.train import blocks_from_parcels, blocks_from_store
    from sample_data import PARCELS, STACK

    stack = open_stack(STACK)
    gdf = gpd.read_file(PARCELS)
    out = tmp_path / "c.store"
    dates = [d.date for d in stack.dates]
    write_store(extract(gdf, stack), out, n_parcels=len(gdf),
                stack_description=stack.describe(), dates=dates)  # fmt: skip
    store = Store(out)
    order = np.asarray(store.source_index)
    expected = np.column_stack([gdf.geometry.centroid.x, gdf.geometry.centroid.y])[order]
    np.testing.assert_allclose(store.centroids, expected)
    np.testing.assert_array_equal(
        blocks_from_store(store, 200.0), blocks_from_parcels(PARCELS, store, 200.0)
    )
