"""Training with the paper's protocol: labels, folds, normalisation, learning, resume, CLI.

The synthetic store's classes differ *only* by the timing of an NDVI-like peak (same spectra,
random parcel shapes, noise), so reaching > 95 % test accuracy proves the temporal models learn,
not only that they run. Real spectra (Victoria pixels, WorldCereal points) are in
test_evaluate.py; the Flanders patches give a smoke run of every patch model.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from cropmodels import paper
from cropmodels.__main__ import main
from cropmodels.architectures import get_spec, list_models
from cropmodels.extract import OK, ParcelData
from cropmodels.modelcard import load_model, read_card
from cropmodels.normalise import MIN_STD, Normaliser
from cropmodels.progress import Cancelled
from cropmodels.store import Store, write_store
from cropmodels.train import (
    ClassMap,
    Experiment,
    TrainConfig,
    assign_parts,
    blocks_from_lonlat,
    card_date_grid,
    cross_validate,
    fold_split,
    plan_labels,
    read_class_map,
    resolve_device,
    spatial_blocks,
    train_model,
)

SOIL = np.array([900, 1150, 1400, 1600, 1750, 1850, 1950, 2050, 2900, 2400], np.float32)
GREEN = np.array([250, 550, 280, 900, 2700, 3500, 3900, 4100, 1900, 950], np.float32)


def synthetic_store(
    out: Path, n: int = 300, t: int = 12, n_classes: int = 3, seed: int = 0, unlabelled: int = 0
) -> Path:
    """Parcels whose classes differ only by *when* vegetation peaks (temporal profile).

    Each parcel: a random rectangle in a 32x32 patch, soil/vegetation mix per date with the
    vegetation fraction a Gaussian bump centred at a class-specific date (+ jitter), random vigour,
    pixel noise (std 60). Averaged over the season every class has the same spectrum.
    """
    rng = np.random.default_rng(seed)
    size = 32
    dates = [dt.date(2019, 1, 15) + dt.timedelta(days=28 * i) for i in range(t)]
    labels = np.arange(n) % n_classes + 1
    rng.shuffle(labels)
    peaks = np.linspace(0.25, 0.75, n_classes) * (t - 1)

    def parcels():
        for i in range(n):
            h, w = rng.integers(6, size + 1, 2)
            r0, c0 = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
            mask = np.zeros((size, size), bool)
            mask[r0 : r0 + h, c0 : c0 + w] = True
            peak = peaks[labels[i] - 1] + rng.normal(0, 0.5)
            veg = np.exp(-0.5 * ((np.arange(t) - peak) / 1.5) ** 2) * rng.uniform(0.7, 1.0)
            spectra = SOIL + veg[:, None] * (GREEN - SOIL)  # (T, 10)
            noise = rng.normal(0, 60, (t, 10, size, size)).astype(np.float32)
            patches = np.clip((spectra[:, :, None, None] + noise) * mask, 0, None)
            pixels = patches[:, :, mask]
            features = np.concatenate([pixels.mean(-1), pixels.std(-1)], axis=1)
            yield ParcelData(
                index=i, status=OK, n_pixels=int(mask.sum()),
                cloud_fraction=np.zeros(t, np.float32), n_clear_dates=t,
                patches=patches.astype(np.float32), mask=mask,
                features=features.astype(np.float32),
            )  # fmt: skip

    codes: list[int | None] = [int(v) for v in labels]
    for i in range(unlabelled):
        codes[i] = None
    write_store(
        parcels(), out, n_parcels=n, stack_description={"source": "synthetic"}, dates=dates,
        labels=codes, label_field="crop",
        classes=[{"code": k + 1, "name": f"peak {k + 1}"} for k in range(n_classes)],
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def separable(tmp_path_factory) -> Path:
    return synthetic_store(tmp_path_factory.mktemp("synthetic") / "separable.zarr")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """60 parcels, 6 dates, 10 of them unlabelled: fast protocol tests."""
    out = tmp_path_factory.mktemp("synthetic") / "small.zarr"
    return synthetic_store(out, n=70, t=6, unlabelled=10, seed=3)


# -- learning ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_cnn_gru9_learns_temporal_profiles_above_95_percent(separable):
    config = TrainConfig(model="cnn_gru9", epochs=8, folds=[0, 1])
    experiment = Experiment.prepare(separable, config)
    result = cross_validate(experiment, config)
    assert len(result.folds) == 2
    for fold in result.folds:
        assert fold["overall_accuracy"] > 0.95, fold["overall_accuracy"]
        assert fold["n_train"] == 180
        assert fold["n_val"] == 60
        assert fold["n_test"] == 60
        assert 1 <= fold["best_epoch"] <= 8


def test_train_model_writes_model_card_and_report(separable, tmp_path):
    config = TrainConfig(model="gru", epochs=6, workdir=str(tmp_path / "work"))
    events = []
    result = train_model(
        separable, config, tmp_path / "models" / "gru", progress=lambda f, m: events.append((f, m))
    )
    cv = result.cv
    assert cv.summary["overall_accuracy"]["mean"] > 0.9
    assert len(cv.folds) == 5
    assert np.asarray(cv.confusion_matrix).sum() == 300  # every parcel tested exactly once
    # progress: monotonic fractions ending at 1, with an ETA and the validation score
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions)
    assert fractions[-1] == pytest.approx(1.0)
    assert any("ETA" in m and "val F" in m for _, m in events)

    model, card = load_model(tmp_path / "models" / "gru.json")
    assert card.architecture == "gru"
    assert card.input_kind == "features"
    store = Store(separable)
    assert card.date_grid == store.season_days
    mean, std = card.normalisation_arrays()
    assert mean.shape == std.shape == (12, 20)  # one row per date of the grid
    assert [c.name for c in card.classes] == ["peak 1", "peak 2", "peak 3"]
    cvm = card.metrics["cross_validation"]
    assert cvm["n_folds"] == 5
    assert len(cvm["per_fold"]) == 5
    assert set(cvm["summary"]) == {"overall_accuracy", "fscore", "precision", "recall"}
    assert len(cvm["confusion_matrix"]) == 3
    assert "fold part 0" in card.metrics["final_model"]["protocol"]
    prov = card.provenance
    assert prov["label_field"] == "crop"
    assert prov["class_counts"]["peak 1"] == 100
    assert prov["training"]["lr"] == 1e-3
    assert prov["training"]["batch_size"] == 32
    assert prov["code"]["cropmodels"]
    # the statistics are those of the final model's training part only
    rows = result.plan.rows
    parts = Experiment.prepare(separable, config).parts
    train_rows = rows[parts != 0]
    features = store.read(np.sort(train_rows), fields=["features"]).features
    np.testing.assert_allclose(mean, features.mean(axis=0), rtol=1e-4, atol=1e-3)

    report = tmp_path / "models" / "gru.report.md"
    text = report.read_text()
    assert "mean ± std over folds" in text
    assert "Per-class F-score" in text
    assert (tmp_path / "models" / "gru.confusion.png").stat().st_size > 1000
    assert (tmp_path / "models" / "gru.curves.png").is_file()
    assert model.n_classes == 3


def test_same_seed_same_metrics_and_different_seed_differs(small):
    def run(seed: int):
        config = TrainConfig(model="gru", epochs=2, folds=[0], seed=seed)
        return cross_validate(Experiment.prepare(small, config), config).folds[0]

    a, b, c = run(0), run(0), run(1)
    assert a["history"] == b["history"]
    assert a["confusion_matrix"] == b["confusion_matrix"]
    assert a["history"] != c["history"]


def test_retraining_gives_identical_weights_and_another_seed_does_not(small, tmp_path):
    """The bundled models' promise: same seed, same data, same thread count -> the same bytes."""
    import hashlib

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        digests = {}
        for run, seed in (("a", 0), ("b", 0), ("c", 1)):
            config = TrainConfig(model="gru", epochs=3, seed=seed)
            train_model(small, config, tmp_path / run / "gru", cv=False, report=False)
            data = (tmp_path / run / "gru.safetensors").read_bytes()
            digests[run] = hashlib.sha256(data).hexdigest()
    finally:
        torch.set_num_threads(threads)
    assert digests["a"] == digests["b"]
    assert digests["a"] != digests["c"]


def test_final_fit_all_trains_on_every_parcel_for_the_median_best_epoch(small, tmp_path):
    from cropmodels.evaluate import CVResult

    baseline = CVResult(
        name="random_forest", classes=["peak 1", "peak 2", "peak 3"],
        folds=[{"overall_accuracy": 0.5, "fscore": 0.4, "precision": 0.4, "recall": 0.4,
                "per_class_fscore": [0.4, 0.4, 0.4], "confusion_matrix": np.eye(3).tolist()}],
        config={"description": "a stand-in baseline"},
    )  # fmt: skip
    config = TrainConfig(model="gru", epochs=4, final_fit="all")
    result = train_model(
        small, config, tmp_path / "gru", provenance={"training_data": {"description": "Made up."}},
        baselines={"random_forest": baseline},
    )  # fmt: skip
    card = result.card
    best = sorted(f["best_epoch"] for f in result.cv.folds)
    final = card.metrics["final_model"]
    assert final["final_fit"] == "all"
    assert final["n_train"] == len(result.plan.rows) == 60
    assert final["n_val"] == 0
    assert final["epochs"] == best[2] == final["best_epoch"]  # the median of 5 folds
    assert final["val_fscore"] is None
    assert len(result.history) == best[2]
    assert "median of the cross-validation folds' best epochs" in final["protocol"]
    assert card.provenance["training_data"] == {"description": "Made up."}
    assert card.provenance["label_field"] == "crop"  # the standard entries are still there
    assert card.metrics["baselines"]["random_forest"]["summary"]["fscore"]["mean"] == 0.4
    report = (tmp_path / "gru.report.md").read_text(encoding="utf-8")
    assert "Baselines on the same folds" in report
    assert "| random_forest | 50.0 ± 0.0 | 40.0 ± 0.0" in report
    assert "a stand-in baseline" in report
    assert "Made up." in report
    assert f"Trained for {best[2]} epochs on all kept parcels" in report
    with pytest.raises(ValueError, match="final_fit='all'"):
        train_model(small, config, tmp_path / "x", cv=False)
    with pytest.raises(ValueError, match="final_fit must be one of holdout, all"):
        TrainConfig(final_fit="everything")


def test_grouped_parts_keep_every_class_in_every_training_set():
    """Two large groups hold most of class 0: numbered as neighbours (k, k+1), one fold would
    test on one and validate on the other, training on almost none of the class."""
    y = np.array([0] * 30 + [0] * 28 + [0, 0] + [1] * 40)
    groups = np.array([0] * 30 + [1] * 28 + [2, 3] + list(np.repeat(np.arange(4, 14), 4)))
    for seed in range(6):
        parts = assign_parts(y, 5, seed=seed, groups=groups)
        for g in np.unique(groups):
            assert len(np.unique(parts[groups == g])) == 1
        for k in range(5):
            train, _, test = fold_split(parts, k, 5)
            assert (y[train] == 0).sum() >= 2, (seed, k)
            assert len(test)
        big = parts[0], parts[30]
        assert (big[0] - big[1]) % 5 not in (1, 4)  # not neighbours in the 3:1:1 cycle
    # ungrouped parts are left as StratifiedKFold made them
    from sklearn.model_selection import StratifiedKFold

    plain = assign_parts(y, 5, seed=0)
    splitter = StratifiedKFold(5, shuffle=True, random_state=0)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y)):
        assert np.all(plain[test] == k)


def test_interrupted_run_resumes_to_the_same_result(small, tmp_path):
    base = TrainConfig(model="gru", epochs=3, folds=[0])
    reference = cross_validate(Experiment.prepare(small, base), base).folds[0]

    config = TrainConfig(model="gru", epochs=3, folds=[0], workdir=str(tmp_path))
    experiment = Experiment.prepare(small, config)
    stop = {"now": False}

    def progress(fraction: float, message: str) -> None:
        stop["now"] = stop["now"] or "epoch 2/3" in message  # cancel inside epoch 2

    with pytest.raises(Cancelled):
        cross_validate(experiment, config, progress=progress, is_cancelled=lambda: stop["now"])
    (run_dir,) = tmp_path.iterdir()
    checkpoint = run_dir / "fold0.pt"
    assert checkpoint.is_file()
    import torch

    saved = torch.load(checkpoint, weights_only=True)
    assert saved["epoch"] == 0
    assert len(saved["history"]) == 1

    resumed = cross_validate(experiment, config).folds[0]
    assert resumed["history"] == reference["history"]
    assert resumed["confusion_matrix"] == reference["confusion_matrix"]
    assert (run_dir / "fold0.json").is_file()
    assert not checkpoint.exists()
    # a third run reuses the finished fold without training
    messages = []
    again = cross_validate(experiment, config, progress=lambda f, m: messages.append(m))
    assert again.folds[0]["confusion_matrix"] == reference["confusion_matrix"]
    assert not any("epoch" in m for m in messages)


def test_time_shuffled_variant_runs_and_differs(small):
    ordered = TrainConfig(model="gru", epochs=2, folds=[0])
    shuffled = TrainConfig(model="gru", epochs=2, folds=[0], shuffle_dates=True)
    experiment = Experiment.prepare(small, ordered)
    a = cross_validate(experiment, ordered)
    b = cross_validate(experiment, shuffled)
    assert b.variant == "shuffled"
    assert a.variant == "ordered"
    assert a.folds[0]["history"] != b.folds[0]["history"]


FLANDERS_DATES = (
    "20180225", "20180320", "20180419", "20180509", "20180526", "20180705", "20180802",
    "20180921",
)  # fmt: skip


@pytest.mark.slow
def test_every_registry_model_trains_on_real_flanders_patches(tmp_path):
    """Smoke run: the real Flanders sample (8 mostly clear 2018 dates) through the extractor and
    the store into every model. 18 parcels are too few for metrics; with 3 folds the classes
    with fewer than 3 parcels are merged into "Other", which is still too small and dropped."""
    import geopandas as gpd

    from cropmodels.extract import extract
    from cropmodels.stack import open_stack
    from sample_data import PARCELS, copy_dates

    stack = open_stack(copy_dates(FLANDERS_DATES, tmp_path / "stack"))
    parcels = gpd.read_file(PARCELS)
    out = tmp_path / "flanders.zarr"
    write_store(
        extract(parcels, stack), out, n_parcels=len(parcels),
        stack_description=stack.describe(), dates=[d.date for d in stack.dates],
        labels=list(parcels["crop_code"]), label_field="crop_code",
    )  # fmt: skip
    for name in list_models():
        config = TrainConfig(model=name, epochs=1, n_folds=3, folds=[0], merge_rare=True)
        experiment = Experiment.prepare(out, config)
        assert experiment.plan.class_names == ["class 1200", "class 7900", "class 9120"]
        assert experiment.plan.excluded["rare_class"] == 2
        result = cross_validate(experiment, config)
        assert 0.0 <= result.folds[0]["overall_accuracy"] <= 1.0, name
    # the shipped-model path with a patch model: per-date patch statistics in the card
    config = TrainConfig(model="cnn_gru9", epochs=1, n_folds=3, merge_rare=True)
    train_model(out, config, tmp_path / "m" / "cnn_gru9", cv=False, report=False)
    card = read_card(tmp_path / "m" / "cnn_gru9.json")
    assert card.patch_size == 32
    assert card.date_grid == Store(out).season_days
    assert np.asarray(card.normalisation["mean"]).shape == (8, 10)
    assert card.provenance["label_notes"]
    # spatial blocks from the parcel layer the store came from, by input position
    from cropmodels.train import blocks_from_parcels

    blocks = blocks_from_parcels(PARCELS, Store(out), 5000.0)
    assert blocks.shape == (18,)
    assert len(np.unique(blocks)) == 1  # the whole 640 m sample lies in one 5 km block
    assert len(np.unique(blocks_from_parcels(PARCELS, Store(out), 100.0))) > 5


def test_streamed_rows_give_the_same_predictions_as_cached_rows(small, tmp_path):
    """Rows too big for ``cache_mb`` stream through Store.iter_batches (store order); the
    predictions must still line up with the rows asked for."""
    from cropmodels.train import predict_proba

    config = TrainConfig(model="cnn", epochs=1, cache_mb=0.0)
    result = train_model(small, config, tmp_path / "cnn", cv=False, report=False)
    model, card = load_model(tmp_path / "cnn.json")
    store = Store(small)
    rows = result.plan.rows[::-1]  # not in store order
    cached = predict_proba(model, card, store, rows, cache_mb=1e3)
    streamed = predict_proba(model, card, store, rows, cache_mb=0.0)
    np.testing.assert_allclose(streamed, cached, atol=1e-5)
    assert cached.shape == (len(rows), 3)
    np.testing.assert_allclose(cached.sum(axis=1), 1.0, atol=1e-5)


# -- normalisation ---------------------------------------------------------------------------------


def test_patch_statistics_use_parcel_pixels_only_and_keep_outside_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(1000, 100, (4, 3, 10, 8, 8)).astype(np.float32)
    mask = np.zeros((4, 8, 8), bool)
    mask[:, 2:6, 1:7] = True
    x *= mask[:, None, None]
    norm = Normaliser.fit([(x[:2], mask[:2]), (x[2:], mask[2:])], "patches")
    pixels = x.transpose(1, 2, 0, 3, 4)[:, :, mask]  # (T, C, parcel pixels)
    np.testing.assert_allclose(norm.mean, pixels.mean(-1), rtol=1e-5)
    np.testing.assert_allclose(norm.std, pixels.std(-1), rtol=1e-4)
    out = norm.apply_numpy(x, mask)
    assert np.all(out[:, :, :, ~mask[0]] == 0)
    inside = out.transpose(1, 2, 0, 3, 4)[:, :, mask]
    np.testing.assert_allclose(inside.mean(-1), 0, atol=1e-4)
    np.testing.assert_allclose(inside.std(-1), 1, atol=1e-3)
    import torch

    torch_out = norm.apply_torch(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(torch_out, out, atol=1e-5)
    # in place (what classification uses on its own batches): the same values, in x's memory
    inplace = torch.from_numpy(x.copy())
    assert norm.apply_torch_(inplace, torch.from_numpy(mask)) is inplace
    np.testing.assert_array_equal(inplace.numpy(), torch_out)
    features = torch.from_numpy(x[:, :, :, 0, 0].copy())
    feature_norm = Normaliser(norm.mean, norm.std, "features")
    expected = feature_norm.apply_torch(features.clone()).numpy()
    np.testing.assert_array_equal(feature_norm.apply_torch_(features).numpy(), expected)


def test_feature_statistics_floor_constant_channels_and_round_trip_a_card():
    x = np.random.default_rng(1).normal(500, 50, (20, 4, 20)).astype(np.float32)
    x[:, :, 10:] = 0.0  # single-pixel series: "std" features are all zero
    norm = Normaliser.fit([(x, None)], "features")
    assert np.all(norm.std[:, 10:] == 1.0)
    assert MIN_STD < 1.0
    np.testing.assert_allclose(norm.apply_numpy(x)[:, :, 10:], 0.0)
    again = Normaliser.from_card({"mean": norm.to_card()["mean"], "std": norm.to_card()["std"]})
    np.testing.assert_array_equal(again.mean, norm.mean)
    pooled = Normaliser.fit([(x, None)], "features", per_date=False)
    assert pooled.mean.shape == (1, 20)
    with pytest.raises(ValueError, match="statistics for 4 dates"):
        norm.apply_numpy(x[:, :3])


def test_card_date_grid_takes_seasons_across_new_year_as_season_days():
    from cropmodels.store import season_days

    assert card_date_grid([10, 40, 70]) == [10, 40, 70]
    assert card_date_grid([336, 1, 32]) is None  # days of the year are not a grid...
    # ...but season days are: East Africa's Dec 2016 - Nov 2017, Flanders' 16 months.
    assert season_days(["2016-12-01", "2017-01-01", "2017-11-01"]) == [336, 367, 671]
    assert card_date_grid(season_days(["2016-12-01", "2017-01-01"])) == [336, 367]
    assert season_days(["2017-08-04", "2018-11-27"]) == [216, 696]
    assert card_date_grid([200, 300, 200]) is None


# -- labels ----------------------------------------------------------------------------------------


def _usable(n: int) -> np.ndarray:
    return np.ones(n, dtype=bool)


def test_missing_labels_unusable_rows_and_rare_classes_are_counted(caplog):
    labels = np.array([1] * 10 + [2] * 10 + [3] * 2 + [-1] * 4)
    usable = _usable(len(labels))
    usable[0] = False
    with caplog.at_level(logging.WARNING, logger="cropmodels.train"):
        plan = plan_labels(labels, usable, n_folds=5)
    assert plan.class_names == ["class 1", "class 2"]
    assert plan.excluded == {"unlabelled": 4, "not_usable": 1, "unknown_code": 0, "rare_class": 2}
    assert "class 3 (2)" in caplog.text
    assert "--merge-rare" in caplog.text
    assert len(plan.rows) == 19
    assert 0 not in plan.rows


def test_rare_classes_merge_into_other():
    labels = np.array([1] * 10 + [2] * 10 + [3] * 3 + [4] * 3)
    plan = plan_labels(labels, _usable(26), n_folds=5, merge_rare=True)
    assert plan.class_names == ["class 1", "class 2", "Other"]
    assert plan.counts["Other"] == 6
    assert plan.label_mapping[3] == plan.label_mapping[4] == plan.classes[2].code
    # too few even together: Other is dropped too
    plan = plan_labels(np.array([1] * 10 + [2] * 10 + [3]), _usable(21), merge_rare=True)
    assert plan.class_names == ["class 1", "class 2"]
    assert plan.excluded["rare_class"] == 1


def test_unknown_codes_error_exclude_or_other():
    labels = np.array([1] * 6 + [2] * 6 + [99] * 6)
    classes = [{"code": 1, "name": "Maize"}, {"code": 2, "name": "Wheat", "colour": "#aa0000"}]
    with pytest.raises(ValueError, match=r"99 \(6 parcels\).*--class-map"):
        plan_labels(labels, _usable(18), store_classes=classes)
    plan = plan_labels(labels, _usable(18), store_classes=classes, unknown_codes="exclude")
    assert plan.class_names == ["Maize", "Wheat"]
    assert plan.excluded["unknown_code"] == 6
    assert plan.classes[1].colour == "#aa0000"
    plan = plan_labels(labels, _usable(18), store_classes=classes, unknown_codes="other")
    assert plan.class_names == ["Maize", "Wheat", "Other"]


def test_class_map_csv_groups_codes(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("source_code,code,name,colour\n1200,1,Maize,#f5c400\n9120,2,Grass,\n"
                    "7900,2,Grass,\n")  # fmt: skip
    class_map = read_class_map(path)
    assert isinstance(class_map, ClassMap)
    labels = np.array([1200] * 5 + [9120] * 3 + [7900] * 3)
    plan = plan_labels(labels, _usable(11), class_map=class_map)
    assert plan.class_names == ["Maize", "Grass"]
    assert plan.counts == {"Maize": 5, "Grass": 6}
    assert plan.classes[0].colour == "#f5c400"
    bad = tmp_path / "bad.csv"
    bad.write_text("code,name\n1,a\n")
    with pytest.raises(ValueError, match="source_code,code,name"):
        read_class_map(bad)


def test_no_labels_or_one_class_is_a_clear_error():
    with pytest.raises(ValueError, match="no usable labelled parcel"):
        plan_labels(np.full(5, -1), _usable(5))
    with pytest.raises(ValueError, match="two or more"):
        plan_labels(np.array([1] * 10 + [2]), _usable(11))


# -- folds -----------------------------------------------------------------------------------------


def test_folds_are_stratified_and_rotate_3_1_1():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    parts = assign_parts(y, 5, seed=0)
    for k in range(5):
        assert np.bincount(y[parts == k]).tolist() == [10, 6, 4]
    seen_test = []
    for k in range(5):
        train, val, test = fold_split(parts, k, 5)
        assert len(train) == 60
        assert len(val) == 20
        assert len(test) == 20
        assert not set(train) & set(val)
        assert not set(val) & set(test)
        assert np.all(parts[val] == (k + 1) % 5)
        seen_test += test.tolist()
    assert sorted(seen_test) == list(range(100))
    assert np.array_equal(parts, assign_parts(y, 5, seed=0))


def test_spatial_folds_keep_each_block_in_one_part():
    rng = np.random.default_rng(0)
    x, yc = rng.uniform(0, 10_000, 400), rng.uniform(0, 10_000, 400)
    blocks = spatial_blocks(x, yc, 2000.0)
    assert len(np.unique(blocks)) == 25
    y = rng.integers(0, 3, 400)
    parts = assign_parts(y, 5, seed=0, groups=blocks)
    for block in np.unique(blocks):
        assert len(np.unique(parts[blocks == block])) == 1
    with pytest.raises(ValueError, match="smaller blocks"):
        assign_parts(y, 5, groups=spatial_blocks(x, yc, 8000.0))
    lonlat = blocks_from_lonlat(np.array([3.0, 3.001, 4.0]), np.array([50.0, 50.0, 50.0]), 1000)
    assert lonlat[0] == lonlat[1] != lonlat[2]


def test_spatial_grouping_needs_groups(small):
    with pytest.raises(ValueError, match="groups array"):
        Experiment.prepare(small, TrainConfig(model="gru", grouping="spatial"))


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="unknown architecture"):
        TrainConfig(model="resnet")
    with pytest.raises(ValueError, match="n_folds"):
        TrainConfig(n_folds=2)
    with pytest.raises(ValueError, match="grouping"):
        TrainConfig(grouping="random")


# -- command line ----------------------------------------------------------------------------------


def test_cli_train_evaluate_and_reproduce(small, tmp_path, capsys):
    out = tmp_path / "models" / "g"
    code = main(["train", "--store", str(small), "--model", "gru", "--out", str(out),
                 "--epochs", "2", "--quiet"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0, text
    assert "5-fold CV (stratified)" in text
    assert (tmp_path / "models" / "g.report.md").is_file()
    assert (tmp_path / "models" / "g.work").is_dir()

    code = main(["evaluate", "--store", str(small), "--model", f"{out}.json", "--json", "--quiet",
                 "--out", str(tmp_path / "eval")])  # fmt: skip
    captured = capsys.readouterr().out
    assert code == 0
    metrics = json.loads(captured[: captured.rindex("}") + 1])
    assert metrics["n"] == 60
    assert metrics["excluded"]["unlabelled"] == 10
    assert (tmp_path / "eval" / "confusion.png").is_file()

    code = main(["reproduce", "--store", str(small), "--out", str(tmp_path / "r"), "--models",
                 "gru,cnn", "--shuffled", "gru", "--epochs", "1", "--only-folds", "1",
                 "--quiet"])  # fmt: skip
    assert code == 0
    tables = (tmp_path / "r" / "tables.md").read_text()
    assert "## Table 2" in tables
    assert "## Table 3" in tables
    assert "## Table 4" in tables
    assert "| GRU |" in tables
    assert "Random Forest" in tables
    assert "34.9" in tables
    assert "36.9" in tables
    assert "-8.5" in tables
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert set(results["ordered"]) == {"gru", "cnn"}
    assert set(results["shuffled"]) == {"gru"}
    assert (tmp_path / "r" / "confusion_random_forest.png").is_file()


def test_cli_errors_are_actionable(small, tmp_path, capsys):
    args = ["train", "--store", str(small), "--out", str(tmp_path / "m"), "--quiet"]
    assert main([*args, "--model", "resnet"]) == 2
    assert "unknown architecture 'resnet'" in capsys.readouterr().err
    assert main([*args, "--model", "gru", "--grouping", "spatial"]) == 2
    assert "--parcels" in capsys.readouterr().err
    assert main([*args, "--model", "gru", "--only-folds", "x"]) == 2


# -- paper numbers, devices ------------------------------------------------------------------------


def test_paper_tables_agree_with_the_registry():
    for name, row in paper.TABLE2.items():
        spec = get_spec(name).paper
        assert (row.oa, row.fscore, row.precision, row.recall) == (
            spec.oa, spec.fscore, spec.precision, spec.recall,
        )  # fmt: skip
    for name, row in paper.TABLE4.items():
        assert get_spec(name).paper.fscore_shuffled == row.shuffled
        assert row.ordered == paper.TABLE2[name].fscore
        assert round(row.shuffled - row.ordered, 1) == row.delta
    assert len(paper.TABLE3) == 17
    assert paper.RANDOM_FOREST_FSCORE == 36.9
    assert paper.table3_value("grapevine", "gru") == 95.1


@pytest.mark.slow
def test_data_parallel_training_on_two_cpu_processes_matches_one_process(small, tmp_path):
    """torchrun with 2 gloo processes: each takes half of every batch and the averaged gradients
    equal the whole batch's, so a model without BatchNorm (gru) trains to the same weights."""
    import os
    import subprocess
    import sys

    from safetensors.numpy import load_file

    root = Path(__file__).resolve().parents[2]
    args = ["train", "--store", str(small), "--model", "gru", "--epochs", "3", "--no-cv",
            "--device", "cpu", "--quiet"]  # fmt: skip
    config = TrainConfig(model="gru", epochs=1, n_folds=5)
    result = train_model(small, config, tmp_path / "probe", cv=False, report=False)
    trained_alone = result.history[-1]["train_samples"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "cropmodels", *args, "--out", str(tmp_path / "two")],
        cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # Each process trains on its half of every batch (not the whole batch twice).
    assert (
        f"Trained data-parallel on 2 processes (gloo); process 0 trained on "
        f"{(trained_alone + 1) // 2} parcels per epoch" in done.stdout
    ), done.stdout
    one = load_file(tmp_path / "one.safetensors")
    two = load_file(tmp_path / "two.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        np.testing.assert_allclose(two[key], one[key], atol=2e-5, err_msg=key)
    card_one, card_two = read_card(tmp_path / "one.json"), read_card(tmp_path / "two.json")
    best = card_one.metrics["final_model"]["best_epoch"]
    assert card_two.metrics["final_model"]["best_epoch"] == best


def test_auto_device_is_cpu_without_cuda():
    import torch

    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")


@pytest.mark.gpu
def test_cuda_training_with_mixed_precision(small, tmp_path):
    config = TrainConfig(model="cnn_gru9", epochs=2, folds=[0], workdir=str(tmp_path))
    assert resolve_device(config.device).type == "cuda"
    result = cross_validate(Experiment.prepare(small, config), config)
    history = result.folds[0]["history"]
    assert all(np.isfinite(h["train_loss"]) for h in history)
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / "fold0.json").is_file()
    model_path = tmp_path / "m" / "gru"
    train_model(small, TrainConfig(model="gru", epochs=1, amp=True), model_path, cv=False)
    model, _ = load_model(f"{model_path}.json", device="cuda")
    assert next(model.parameters()).is_cuda


def test_micro_slices_never_leave_one_item_alone():
    from cropmodels.train import _micro_slices

    assert _micro_slices(32, 32) == [(0, 32)]
    assert _micro_slices(32, 16) == [(0, 16), (16, 32)]
    assert _micro_slices(31, 10) == [(0, 10), (10, 20), (20, 31)]  # not (30, 31)
    assert _micro_slices(5, 2) == [(0, 2), (2, 5)]


@pytest.mark.parametrize("model", ["cnn_gru9", "gru"])
def test_out_of_memory_micro_batches_give_the_whole_batch_gradient(small, model):
    """After a CUDA out-of-memory error a training batch is split into micro-batches; their
    gradients must add up to the whole batch's (BatchNorm in eval mode here, so the
    statistics are the same for both and the comparison is exact up to float rounding)."""
    import torch
    from torch import nn

    from cropmodels.architectures import get_model
    from cropmodels.train import _accumulate_gradients, _make_context, _Progress

    config = TrainConfig(model=model, epochs=1, folds=[0], device="cpu")
    experiment = Experiment.prepare(small, config)
    ctx = _make_context(experiment, config, _Progress(lambda f, m: None, 1), lambda: False, None)
    rows = experiment.plan.rows[:13]
    label_of = dict(zip(rows.tolist(), experiment.plan.y[:13].tolist(), strict=True))
    norm = ctx.data.fit_normaliser(rows, ctx.per_date)
    ((b_rows, x, mask),) = list(ctx.data.batches(rows, len(rows)))
    torch.manual_seed(0)
    net = get_model(model, n_classes=ctx.n_classes, n_bands=10).eval()
    optimizer = torch.optim.Adam(net.parameters())
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    grads, losses = [], []
    for micro in (32, 4):
        loss = _accumulate_gradients(ctx, net, norm, (b_rows, x, mask, None), label_of,
                                     nn.CrossEntropyLoss(), scaler, optimizer, micro)  # fmt: skip
        losses.append(loss)
        grads.append([p.grad.clone() for p in net.parameters()])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for whole, split in zip(*grads, strict=True):
        torch.testing.assert_close(whole, split, rtol=1e-4, atol=1e-6)
