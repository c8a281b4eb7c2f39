"""Metrics, evaluation of saved models, and the protocol on real labelled Sentinel-2 spectra.

Real data (copies in tests/data, see the READMEs there):
* Victoria pixels (Pelletier et al. 2019, GPL-3.0, test-only): 800 pixels x 73 dates, 8 classes;
* WorldCereal East Africa 2017 points (MIT): 500 points x 12 monthly composites, with lon/lat.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cropmodels.evaluate import CVResult, evaluate_model, fold_metrics, json_safe
from cropmodels.series import (
    compact_codes,
    load_victoria_pixels,
    load_worldcereal_points,
    series_to_store,
    victoria_object_ids,
)
from cropmodels.store import Store
from cropmodels.train import (
    Experiment,
    TrainConfig,
    blocks_from_lonlat,
    cross_validate,
    random_forest_cv,
    train_model,
)

DATA = Path(__file__).resolve().parent.parent / "data"
VICTORIA = DATA / "victoria_pixels"
EAST_AFRICA = DATA / "worldcereal_eastafrica2017" / "data.npz"
SHARED_VICTORIA = Path(__file__).resolve().parents[3] / "shared" / "data" / "victoria_pixels"


@pytest.fixture(scope="module")
def victoria(tmp_path_factory):
    series = load_victoria_pixels(VICTORIA)
    out = tmp_path_factory.mktemp("real") / "victoria.zarr"
    series_to_store(series, out)
    return series, out


@pytest.fixture(scope="module")
def east_africa(tmp_path_factory):
    series = load_worldcereal_points(EAST_AFRICA)
    out = tmp_path_factory.mktemp("real") / "eastafrica.zarr"
    series_to_store(series, out)
    return series, out


# -- metrics ---------------------------------------------------------------------------------------


def test_fold_metrics_match_hand_computation():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 0])
    m = fold_metrics(y_true, y_pred, 3)
    assert m["overall_accuracy"] == pytest.approx(4 / 6)
    # class 0: P 2/3 R 2/3 F 2/3; class 1: P 2/3 R 1 F 0.8; class 2: P 0 R 0 F 0
    assert m["per_class_fscore"] == pytest.approx([2 / 3, 0.8, 0.0])
    assert m["fscore"] == pytest.approx((2 / 3 + 0.8) / 3)
    assert m["precision"] == pytest.approx((2 / 3 + 2 / 3) / 3)
    assert m["recall"] == pytest.approx((2 / 3 + 1.0) / 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["support"] == [3, 2, 1]


def test_a_class_absent_from_a_fold_is_not_scored():
    m = fold_metrics(np.array([0, 1, 1]), np.array([0, 1, 1]), 3)
    assert m["fscore"] == 1.0  # averaged over the classes present, not dragged down by class 2
    assert math.isnan(m["per_class_fscore"][2])
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        fold_metrics(np.array([0, 3]), np.array([0, 1]), 3)


def test_cv_summary_is_mean_and_sample_std_over_folds():
    folds = [
        fold_metrics(np.array([0, 1, 1, 0]), np.array([0, 1, 1, 0]), 3),
        fold_metrics(np.array([0, 1, 2, 2]), np.array([1, 1, 2, 0]), 3),
    ]
    cv = CVResult("gru", ["a", "b", "c"], folds)
    oa = [1.0, 0.5]
    assert cv.summary["overall_accuracy"]["mean"] == pytest.approx(0.75)
    assert cv.summary["overall_accuracy"]["std"] == pytest.approx(np.std(oa, ddof=1))
    assert cv.per_class["c"]["n"] == 1  # only fold 2 has class c
    assert np.asarray(cv.confusion_matrix).sum() == 8
    data = json.loads(json.dumps(cv.to_dict()))  # NaN became null: strict JSON
    assert data["folds"][0]["per_class_fscore"][2] is None
    again = CVResult.from_dict(data)
    assert again.summary["fscore"]["mean"] == pytest.approx(cv.summary["fscore"]["mean"])
    assert json_safe({"x": np.float32("nan"), "y": np.int64(3)}) == {"x": None, "y": 3}


# -- importers -------------------------------------------------------------------------------------


def test_victoria_series_become_one_pixel_parcels(victoria):
    series, path = victoria
    store = Store(path)
    assert len(store) == 800
    assert len(store.dates) == 73
    assert sorted(np.unique(store.labels).tolist()) == [1, 2, 3, 7, 8, 10, 12, 13]
    assert {c["name"] for c in store.attrs["classes"]} >= {"Canola", "Water", "Forest"}
    batch = store.read([0, 799])
    np.testing.assert_array_equal(batch.features[:, :, :10], series.values[[0, 799]])
    assert np.all(batch.features[:, :, 10:] == 0)
    assert batch.mask.all()
    assert np.all(batch.patches == batch.patches[..., :1, :1])  # constant patches
    assert (store.status == "ok").all()


@pytest.mark.skipif(not SHARED_VICTORIA.is_dir(), reason="shared data not present")
def test_victoria_compact_copy_equals_the_original_csvs():
    original = load_victoria_pixels(SHARED_VICTORIA)
    copy = load_victoria_pixels(VICTORIA)
    np.testing.assert_array_equal(original.values, copy.values)
    np.testing.assert_array_equal(original.labels, copy.labels)
    assert original.parcel_ids == copy.parcel_ids


def test_worldcereal_codes_beyond_int32_are_renumbered(east_africa):
    series, path = east_africa
    store = Store(path)
    source = {c["source_code"]: c for c in store.attrs["classes"]}
    assert 6000000000 in source
    assert source[1101060000]["name"] == "maize"
    assert store.day_of_year[:2] == [336, 1]  # 1 Dec 2016 (leap year) then 1 Jan 2017
    codes, classes = compact_codes([30, 10, 10, -1])
    assert codes.tolist() == [2, 1, 1, -1]
    assert [c["code"] for c in classes] == [1, 2]
    with pytest.raises(ValueError, match="compact_codes"):
        series_to_store(
            type(series)(series.values[:2], series.dates, np.array([6000000000, 1])),
            path.parent / "bad.zarr",
        )


# -- the protocol on real spectra ------------------------------------------------------------------


@pytest.mark.slow
def test_gru_beats_chance_on_real_victoria_pixels_and_rf_uses_the_same_folds(victoria):
    """The paper's protocol (5 folds 3:1:1, Adam 1e-3, batch 32; 6 epochs instead of 50, 3 of
    the 5 folds to keep the test short) on 800 real pixels of 8 balanced classes, folds grouped
    by source polygon (pixels of one field never on both sides). Chance is 12.5 %."""
    series, path = victoria
    config = TrainConfig(model="gru", epochs=6, grouping="spatial", folds=[0, 1, 2])
    experiment = Experiment.prepare(path, config, groups=victoria_object_ids(series))
    assert experiment.plan.counts == dict.fromkeys(experiment.plan.class_names, 100)
    gru = cross_validate(experiment, config)
    forest = random_forest_cv(experiment, folds=config.folds)
    assert gru.summary["overall_accuracy"]["mean"] > 0.35, gru.summary
    assert gru.summary["fscore"]["mean"] > 0.25, gru.summary
    assert forest.summary["overall_accuracy"]["mean"] > 0.6, forest.summary
    assert [f["n_test"] for f in gru.folds] == [f["n_test"] for f in forest.folds]
    assert sum(f["n_test"] for f in gru.folds) == np.asarray(gru.confusion_matrix).sum()
    objects = victoria_object_ids(series)[experiment.plan.rows]
    for obj in np.unique(objects):
        assert len(np.unique(experiment.parts[objects == obj])) == 1


def test_spatial_blocks_on_real_points_and_rare_classes(east_africa):
    series, path = east_africa
    groups = blocks_from_lonlat(series.lon, series.lat, 20_000.0)
    config = TrainConfig(model="gru", grouping="spatial")
    experiment = Experiment.prepare(path, config, groups=groups)
    plan = experiment.plan
    # classes with fewer than 5 points cannot be in every fold: dropped and named
    assert plan.excluded["rare_class"] > 0
    assert any("fewer than 5" in note for note in plan.notes)
    assert "unspecified_sorghum" in plan.class_names
    kept = groups[plan.rows]
    for block in np.unique(kept):
        assert len(np.unique(experiment.parts[kept == block])) == 1
    forest = random_forest_cv(experiment, folds=[0, 1])
    assert 0.0 < forest.summary["overall_accuracy"]["mean"] <= 1.0


def test_evaluate_a_saved_model_on_a_store(victoria, east_africa, tmp_path):
    _, path = victoria
    config = TrainConfig(model="gru", epochs=2)
    result = train_model(path, config, tmp_path / "gru", cv=False, report=False)
    assert "cross_validation" not in result.card.metrics
    metrics = evaluate_model(tmp_path / "gru.json", path, device="cpu")
    assert metrics["n"] == 800
    assert len(metrics["classes"]) == 8
    assert metrics["excluded"] == {"unlabelled": 0, "not_usable": 0, "unknown_to_model": 0}
    assert 0.0 <= metrics["overall_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="date grid"):
        evaluate_model(tmp_path / "gru.json", east_africa[1], device="cpu")
