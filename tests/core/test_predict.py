"""Streamed batched inference on the real Flanders sample, with tiny models trained on it."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import Polygon, box

from cropmodels.__main__ import main
from cropmodels.modelcard import ModelFileError, read_card
from cropmodels.predict import (
    AdaptiveBatcher,
    Classifier,
    PredictConfig,
    PredictError,
    PredictSummary,
    agreement,
    align_dates,
    auto_batch_size,
    bundled_models,
    check_card,
    check_ranks,
    classify,
    classify_to_file,
    declared_class_index,
    find_model,
    interpolation_weights,
    is_out_of_memory,
    output_field_names,
    probability_field_names,
    resolve_field_names,
    suspicion_order,
)
from cropmodels.progress import Cancelled
from cropmodels.stack import open_stack
from cropmodels.store import Store
from cropmodels.train import predict_proba
from sample_data import PARCELS, STACK, copy_dates, sample_dates, train_sample_model


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {arch: train_sample_model(folder, arch) for arch in ("gru", "cnn")}


@pytest.fixture(scope="module")
def store(models) -> Store:
    return Store(models["gru"].parent / "flanders.store")


def run(model, parcels=PARCELS, stack=STACK, **config) -> tuple[dict, PredictSummary]:
    summary = PredictSummary()
    out = {p.index: p for p in classify(parcels, stack, model, PredictConfig(device="cpu",
                                                                              **config),
                                         summary=summary)}  # fmt: skip
    return out, summary


# -- the stream ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gru", "cnn"])
def test_streamed_inference_equals_inference_on_the_extracted_store(models, store, arch):
    """The same parcels, extracted into a store and read back, or classified on the fly,
    get the same probabilities: inference feeds the model exactly what training saw."""
    classifier = Classifier.load(models[arch], device="cpu")
    streamed, summary = run(classifier, batch_size=5)
    assert sorted(streamed) == list(range(18))
    assert summary.counts == {"ok": 18}
    assert summary.n_classified == 18
    assert summary.notes == []  # the stack's dates are the model's grid: no resampling
    rows = store.usable_indices()
    expected = predict_proba(classifier.model, classifier.card, store, rows, device="cpu")
    got = np.stack([streamed[int(i)].probabilities for i in store.source_index[rows]])
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_predictions_are_consistent(models):
    streamed, _ = run(models["gru"])
    card = read_card(models["gru"])
    for p in streamed.values():
        assert p.probabilities.shape == (len(card.classes),)
        assert p.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert p.confidence == pytest.approx(p.probabilities.max())
        top = np.sort(p.probabilities)
        assert p.margin == pytest.approx(top[-1] - top[-2])
        assert 0 < p.n_clear_dates <= 118


def test_batch_size_does_not_change_results(models):
    one, _ = run(models["cnn"], batch_size=1)
    many, _ = run(models["cnn"], batch_size=64)
    for i in one:
        np.testing.assert_allclose(one[i].probabilities, many[i].probabilities, atol=1e-5)


def test_parcels_without_usable_observation_get_no_class(models):
    gdf = gpd.read_file(PARCELS)
    x0, y0 = 501360, 5629040
    extra = gpd.GeoDataFrame(
        {"parcel_id": [101, 102, 103]},
        geometry=[
            box(x0 - 5000, y0 - 5000, x0 - 4000, y0 - 4000),  # outside the stack
            box(x0 + 101, y0 + 101, x0 + 103, y0 + 103),  # no pixel centre inside
            Polygon(),  # empty
        ],
        crs=gdf.crs,
    )
    parcels = gpd.GeoDataFrame(
        [*gdf.to_dict("records"), *extra.to_dict("records")], crs=gdf.crs
    ).set_geometry("geometry")
    out, summary = run(models["gru"], parcels=parcels)
    assert [out[i].status for i in (18, 19, 20)] == [
        "outside_stack", "too_small", "invalid_geometry",
    ]  # fmt: skip
    for i in (18, 19, 20):
        assert out[i].probabilities is None
        assert out[i].class_index is None
        assert out[i].confidence is None
        assert out[i].margin is None
    assert all(out[i].classified for i in range(18))  # one bad parcel never fails the others
    assert summary.n_classified == 18


def test_parcels_with_too_few_clear_dates_get_no_class(models):
    out, summary = run(models["gru"], min_clear_dates=119)
    assert summary.counts == {"no_clear_observation": 18}
    assert not any(p.classified for p in out.values())
    assert all(p.n_clear_dates > 0 for p in out.values())  # reported all the same


def test_cancel_stops_the_stream(models):
    calls = []

    def cancel_after_first_batch() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled):
        list(classify(PARCELS, STACK, models["gru"], PredictConfig(device="cpu", batch_size=4),
                      is_cancelled=cancel_after_first_batch))  # fmt: skip


@pytest.mark.parametrize("arch", ["gru", "cnn"])
def test_reading_ahead_and_cpu_forward_threads_do_not_change_results(models, arch):
    """Extraction on its own thread (read_ahead) and forward passes split over one thread per
    core (each with one torch thread) give the probabilities of the plain sequential run."""
    import torch

    threads = torch.get_num_threads()
    ahead, _ = run(models[arch], batch_size=8, read_ahead=True)
    torch.set_num_threads(1)  # no forward pool: one pass on this thread
    try:
        plain, _ = run(models[arch], batch_size=8, read_ahead=False)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    assert ahead.keys() == plain.keys()
    for i in plain:
        np.testing.assert_allclose(ahead[i].probabilities, plain[i].probabilities, atol=1e-5)


@pytest.mark.parametrize("source_dates", [None, 5])
def test_slices_prepared_in_chunks_equal_the_whole_batch_prepared_at_once(models, source_dates):
    """The CPU path stacks, quantises, resamples in time and normalises each slice a few
    parcels at a time on its forward thread: the same numbers as preparing the whole batch
    (``_inputs``, then the normaliser), also for a slice made twice (a retry)."""
    import torch

    from cropmodels.extract import ParcelData

    classifier = Classifier.load(models["cnn"], device="cpu")
    n_model = len(classifier.card.date_grid)
    n_source = source_dates or n_model
    side = classifier.card.patch_size
    rng = np.random.default_rng(3)
    batch = []
    for i in range(7):
        mask = rng.random((side, side)) > 0.3
        mask[0, :3] = True
        patches = rng.normal(900, 700, (n_source, 10, side, side)).astype(np.float32) * mask
        patches[0, 0, 0, :3] = [-4.2, 70000.0, 12.5]  # clipped, clipped, rounded to even
        batch.append(ParcelData(i, "ok", int(mask.sum()), np.zeros(n_source, np.float32),
                                n_source, patches=patches, mask=mask))  # fmt: skip
    weights = None
    if source_dates:
        weights = torch.from_numpy(rng.dirichlet(np.ones(n_source), n_model).astype(np.float32))
    x, mask = classifier._inputs(batch)
    expected = torch.from_numpy(x.copy())
    if weights is not None:
        expected = torch.matmul(weights, expected.reshape(7, n_source, -1))
        expected = expected.reshape(7, n_model, 10, side, side)
    expected = classifier.normaliser.apply_torch_(expected, torch.from_numpy(mask))
    reuse: dict[str, np.ndarray] = {}
    make, masks = classifier._ready_slices(batch, weights, reuse)
    np.testing.assert_array_equal(masks, mask)
    got = torch.cat([make(0, 3), make(3, 7)])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(make(3, 7), expected[3:], rtol=0, atol=0)  # made again
    np.testing.assert_array_equal(x[0, 0, 0, 0, :3], [0.0, 65535.0, 12.0])  # as a store holds


def test_forward_pool_gives_back_torchs_thread_count(models):
    import threading

    import torch

    threads = torch.get_num_threads()
    run(models["cnn"], batch_size=8)
    seen = []
    worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    worker.start()
    worker.join()
    assert torch.get_num_threads() == threads
    assert seen == [threads]  # threads started later are not left at one torch thread


def test_cancel_while_reading_ahead_stops_every_thread(models):
    import threading

    before = threading.active_count()
    calls = []

    def cancel_later() -> bool:
        calls.append(1)
        return len(calls) > 6

    with pytest.raises(Cancelled):
        list(classify(PARCELS, STACK, models["cnn"],
                      PredictConfig(device="cpu", batch_size=2, read_ahead=True),
                      is_cancelled=cancel_later))  # fmt: skip
    assert threading.active_count() == before


# -- time -------------------------------------------------------------------------------------


def test_interpolation_weights_are_linear_in_time_and_clamped_at_the_ends():
    source = np.array([10.0, 20.0, 40.0])
    w = interpolation_weights(source, np.array([5.0, 10.0, 15.0, 30.0, 40.0, 50.0]))
    values = np.array([1.0, 3.0, 7.0])
    np.testing.assert_allclose(w @ values, [1.0, 1.0, 2.0, 5.0, 7.0, 7.0])
    np.testing.assert_allclose(w.sum(axis=1), 1.0)


def test_stack_dates_are_resampled_onto_the_model_grid(models, tmp_path):
    """A stack with every third date of the sample: each parcel's series is interpolated onto
    the model's 118-date grid, and the classes stay those of the full stack for most parcels."""
    subset = copy_dates(sample_dates()[::3], tmp_path / "stack")
    classifier = Classifier.load(models["gru"], device="cpu")
    alignment = classifier.prepare(open_stack(subset))
    assert alignment.weights.shape == (118, 40)
    full, _ = run(classifier)
    thin, summary = run(classifier, stack=subset)
    assert summary.counts == {"ok": 18}
    assert any("interpolated linearly in time" in note for note in summary.notes)
    same = sum(full[i].class_index == thin[i].class_index for i in range(18))
    assert same >= 12
    assert all(thin[i].n_clear_dates <= full[i].n_clear_dates for i in range(18))


def test_a_later_season_is_aligned_to_the_grid_by_whole_years():
    grid = [216, 300, 400, 500, 696]  # 4 Aug of year 1 .. 27 Nov of year 2
    dates = [dt.date(2020, 3, 1), dt.date(2020, 6, 1), dt.date(2020, 9, 1)]
    alignment = align_dates(dates, grid)
    assert alignment.origin_year == 2019  # March-September 2020 lies in the grid's 2nd year
    assert alignment.weights.shape == (5, 3)
    assert list(alignment.doy) == grid
    same = align_dates([dt.date(2017, 1, 1) + dt.timedelta(days=d - 1) for d in grid], grid)
    assert same.weights is None
    assert same.origin_year == 2017


def test_a_stack_in_the_grids_first_year_stays_there():
    """Two August dates fit the grid in their own year and a year later: the own year wins."""
    grid = list(range(216, 697, 5))
    alignment = align_dates([dt.date(2017, 8, 4), dt.date(2017, 8, 14)], grid)
    assert alignment.origin_year == 2017
    assert not any("as if the season started" in n for n in alignment.notes)


def test_a_stack_outside_the_models_season_is_refused():
    grid = [150, 180, 210]  # June to August of one year
    with pytest.raises(PredictError, match="do not overlap the season"):
        align_dates([dt.date(2020, 1, 5), dt.date(2020, 2, 1)], grid)


def test_a_model_without_grid_takes_the_stacks_dates():
    dates = [dt.date(2018, 12, 30), dt.date(2019, 1, 2)]
    alignment = align_dates(dates, None)
    assert alignment.weights is None
    assert list(alignment.doy) == [364, 367]


# -- batches and memory -------------------------------------------------------------------------


def test_out_of_memory_halves_the_batch_and_retries():
    """The OOM path, run on the CPU through an injected forward that fails like CUDA does."""
    seen: list[tuple[int, int]] = []
    freed = []

    def forward(start: int, stop: int) -> np.ndarray:
        seen.append((start, stop))
        if stop - start > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return np.arange(start, stop, dtype=np.float32)[:, None]

    batcher = AdaptiveBatcher(16, on_oom=lambda: freed.append(1))
    out = batcher.run(10, forward)
    np.testing.assert_array_equal(out[:, 0], np.arange(10))
    assert batcher.batch_size == 2  # the failing 10 halved to 5, then to 2
    assert batcher.halvings == 2 == len(freed)
    assert seen[:4] == [(0, 10), (0, 5), (0, 2), (2, 4)]
    # the smaller size sticks for the next batches
    seen.clear()
    batcher.run(4, forward)
    assert seen == [(0, 2), (2, 4)]


def test_batches_are_sized_to_a_time_budget_and_cancellable():
    """Forward passes take 0.25 s per item on this fake clock: from a probe of 2 items the
    batches settle at 2 (0.5 s), never above the memory bound; cancelling stops between them."""
    now = [0.0]
    sizes: list[int] = []

    def forward(start: int, stop: int) -> np.ndarray:
        sizes.append(stop - start)
        now[0] += 0.25 * (stop - start)
        return np.zeros((stop - start, 1), np.float32)

    batcher = AdaptiveBatcher(64, target_seconds=0.5, clock=lambda: now[0])
    batcher.run(9, forward)
    assert sizes == [2, 2, 2, 2, 1]
    fast = AdaptiveBatcher(8, target_seconds=0.5, clock=lambda: now[0])
    sizes.clear()

    def quick(start: int, stop: int) -> np.ndarray:
        sizes.append(stop - start)
        now[0] += 0.01 * (stop - start)
        return np.zeros((stop - start, 1), np.float32)

    fast.run(40, quick)
    assert sizes == [2, 4, 8, 8, 8, 8, 2]  # doubling up to the memory bound, no further
    calls = []
    stop_now = AdaptiveBatcher(4, is_cancelled=lambda: len(calls) >= 1)
    with pytest.raises(Cancelled):
        stop_now.run(12, lambda a, b: calls.append(1) or np.zeros((b - a, 1), np.float32))
    assert calls == [1]


def test_other_errors_are_not_mistaken_for_out_of_memory():
    def forward(start: int, stop: int) -> np.ndarray:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    batcher = AdaptiveBatcher(8)
    with pytest.raises(RuntimeError, match="shapes"):
        batcher.run(4, forward)
    assert batcher.batch_size == 8
    assert not is_out_of_memory(ValueError("out of memory"))


def test_out_of_memory_for_a_single_parcel_says_what_to_do():
    def forward(start: int, stop: int) -> np.ndarray:
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(PredictError, match="device cpu"):
        AdaptiveBatcher(4).run(3, forward)


def test_out_of_memory_inside_the_classifier_keeps_every_result(models):
    """A model that fails like a full GPU on batches above 3 parcels: the run halves its
    batches and the probabilities are those of an unconstrained run."""
    import torch

    classifier = Classifier.load(models["cnn"], device="cpu")
    reference, _ = run(classifier, batch_size=16)

    class SmallGpu(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.architecture = inner.architecture

        def forward(self, x, mask=None, doy=None):
            if x.shape[0] > 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return self.inner(x, mask=mask, doy=doy)

    classifier.model = SmallGpu(classifier.model).eval()
    squeezed, summary = run(classifier, batch_size=16, max_batch_seconds=None)
    assert summary.batch_size == 2
    assert summary.oom_halvings == 3
    for i in reference:
        np.testing.assert_allclose(squeezed[i].probabilities, reference[i].probabilities,
                                   atol=1e-5)  # fmt: skip


def test_automatic_batch_size_is_a_bounded_power_of_two(models):
    import torch

    card = read_card(models["cnn"])
    cpu = torch.device("cpu")
    n = auto_batch_size(card, 118, cpu, memory_mb=2048)
    assert 1 <= n <= 64
    assert n & (n - 1) == 0
    assert auto_batch_size(card, 118, cpu, memory_mb=1) == 1


# -- model files and cards -----------------------------------------------------------------------


def test_models_are_found_by_name_or_file(models, tmp_path):
    folder = tmp_path / "models"
    (folder / "gru").mkdir(parents=True)
    for suffix in (".json", ".safetensors"):
        src = models["gru"].with_suffix(suffix)
        (folder / "gru" / f"gru{suffix}").write_bytes(src.read_bytes())
    assert bundled_models(folder) == {"gru": folder / "gru" / "gru.json"}
    assert find_model("gru", folder) == folder / "gru" / "gru.json"
    assert find_model(models["gru"].with_suffix(".safetensors"), folder) == models["gru"]
    assert find_model(str(models["gru"].with_suffix("")), folder) == models["gru"]
    with pytest.raises(PredictError, match=r"bundled: gru"):
        find_model("cnn_gru9", folder)
    assert bundled_models(tmp_path / "nowhere") == {}


def test_a_model_for_other_bands_is_refused_plainly(models):
    card = read_card(models["gru"])
    card.bands = ["B02", "B03", "B04", "B08", "VV", "VH", "B05", "B06", "B07", "B8A"]
    with pytest.raises(PredictError, match="expects the bands B02, B03, B04, B08, VV"):
        check_card(card)


def test_a_tampered_model_file_is_refused(models, tmp_path):
    for suffix in (".json", ".safetensors"):
        (tmp_path / f"m{suffix}").write_bytes(models["gru"].with_suffix(suffix).read_bytes())
    data = bytearray((tmp_path / "m.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "m.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="was modified"):
        Classifier.load(tmp_path / "m.json", device="cpu")


# -- output table --------------------------------------------------------------------------------


def test_field_names(models):
    card = read_card(models["gru"])
    assert probability_field_names(card) == [
        "p_maize", "p_other_leguminous_crops", "p_permanent_grass_crops",
    ]  # fmt: skip
    card.classes[1] = type(card.classes[1])(7900, "Maize!", "#000000")
    assert probability_field_names(card) == ["p_1200", "p_7900", "p_permanent_grass_crops"]
    assert output_field_names(card, declared=True)[-4:] == [
        "n_clear_dates", "status", "agrees", "check_rank",
    ]  # fmt: skip
    names = resolve_field_names(["parcel_id", "CROP_CODE", "crop_code_pred", "status"],
                                ["crop_code", "crop_class", "status"])  # fmt: skip
    assert names == {"crop_code": "crop_code_pred2", "crop_class": "crop_class",
                     "status": "status_pred"}  # fmt: skip


def test_declared_crops_are_matched_through_the_cards_label_mapping(models):
    card = read_card(models["gru"])
    assert declared_class_index(1200, card) == 0
    assert declared_class_index("9120", card) == 2
    assert declared_class_index(9120.0, card) == 2
    assert declared_class_index("maize", card) == 0
    assert declared_class_index(5100, card) is None  # dropped at training: unknown
    assert declared_class_index(None, card) is None
    assert declared_class_index(float("nan"), card) is None
    card.provenance["label_mapping"] = {"1110": 1200}
    assert declared_class_index(1110, card) == 0


def test_agreement_and_suspicion_order(models):
    card = read_card(models["gru"])
    from cropmodels.predict import ParcelPrediction

    maize = ParcelPrediction(0, "ok", 30, np.array([0.7, 0.2, 0.1], np.float32))
    assert agreement(maize, 1200, card) is True
    assert agreement(maize, 9120, card) is False
    assert agreement(maize, 5100, card) is None
    assert agreement(ParcelPrediction(1, "outside_stack", 0), 1200, card) is None
    agrees = [True, False, None, False, True]
    confidence = [0.9, 0.6, None, 0.95, 0.5]
    order = suspicion_order(agrees, confidence)
    assert order.tolist() == [3, 1, 4, 0, 2]
    assert check_ranks(order).tolist() == [4, 2, 5, 1, 3]


# -- the command line ------------------------------------------------------------------------------


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_classify_writes_every_input_field_and_the_predictions(models, tmp_path, capsys):
    before = digest(PARCELS)
    out = tmp_path / "classified.gpkg"
    code = main(["classify", "--parcels", str(PARCELS), "--stack", str(STACK), "--model",
                 str(models["cnn"]), "--out", str(out), "--declared-field", "crop_code",
                 "--device", "cpu", "--quiet"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "18 classified (18 ok)" in printed
    assert "'crop_code_pred'" in printed
    assert digest(PARCELS) == before  # the input is never modified
    result = gpd.read_file(out)
    source = gpd.read_file(PARCELS)
    card = read_card(models["cnn"])
    expected = [
        *source.columns[:-1],
        "crop_code_pred",
        "crop_class",
        "confidence",
        "margin",
        *probability_field_names(card),
        "n_clear_dates",
        "status",
        "agrees",
        "check_rank",
        "geometry",
    ]
    assert list(result.columns) == expected
    assert len(result) == 18
    # the input fields keep their values (the declared crop_code included)
    merged = result.merge(source, on="parcel_id", suffixes=("", "_in"))
    assert (merged["crop_code"] == merged["crop_code_in"]).all()
    assert (merged["crop_name"] == merged["crop_name_in"]).all()
    p = result[probability_field_names(card)].to_numpy()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-4)
    assert set(result["crop_class"]) <= set(card.class_names)
    # suspicious first: disagreements by decreasing confidence, then agreements by increasing
    # confidence, then the cabbages and potatoes, crops the model does not know (cannot judge)
    agrees = [None if a != a else bool(a) for a in result["agrees"].astype(object)]
    n_bad, n_good = agrees.count(False), agrees.count(True)
    assert agrees == [False] * n_bad + [True] * n_good + [None] * 2
    assert set(result["crop_code"][-2:]) == {2130, 5100}
    assert result["check_rank"].tolist() == list(range(1, 19))
    conf = result["confidence"].to_numpy()
    assert np.all(np.diff(conf[:n_bad]) <= 0)
    assert np.all(np.diff(conf[n_bad : n_bad + n_good]) >= 0)
    assert not list(tmp_path.glob(".classified*"))  # no temporary file left


def test_cli_classify_reading_ahead_writes_the_same_predictions(models, tmp_path, capsys):
    outputs = {}
    for mode in ("on", "off"):
        out = tmp_path / f"classified_{mode}.gpkg"
        code = main(["classify", "--parcels", str(PARCELS), "--stack", str(STACK), "--model",
                     str(models["cnn"]), "--out", str(out), "--device", "cpu", "--quiet",
                     "--read-ahead", mode])  # fmt: skip
        assert code == 0
        outputs[mode] = gpd.read_file(out)
    capsys.readouterr()
    assert outputs["on"]["crop_class"].tolist() == outputs["off"]["crop_class"].tolist()
    np.testing.assert_allclose(outputs["on"]["confidence"], outputs["off"]["confidence"],
                               atol=1e-5)  # fmt: skip


def test_cli_classify_refuses_to_overwrite_and_names_bad_models(models, tmp_path, capsys):
    out = tmp_path / "x.gpkg"
    out.write_bytes(b"keep me")
    assert main(["classify", "--parcels", str(PARCELS), "--stack", str(STACK), "--model",
                 str(models["gru"]), "--out", str(out), "--quiet"]) == 2  # fmt: skip
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main(["classify", "--parcels", str(PARCELS), "--stack", str(STACK), "--model",
                 "no_such_model", "--out", str(tmp_path / "y.gpkg"), "--quiet"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "'no_such_model' is neither a bundled model" in err
    assert not (tmp_path / "y.gpkg").exists()


def test_a_cancelled_file_run_leaves_nothing(models, tmp_path):
    out = tmp_path / "c.gpkg"
    with pytest.raises(Cancelled):
        classify_to_file(PARCELS, STACK, models["gru"], out, PredictConfig(device="cpu"),
                         is_cancelled=lambda: True)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_card_classes_in_json(models):
    """What the plugin styles from: codes, names and colours straight from the card."""
    data = json.loads(models["cnn"].read_text())
    assert [c["colour"] for c in data["classes"]] == ["#ffd92f", "#984ea3", "#4daf4a"]


def test_evaluation_excludes_what_it_cannot_score(models):
    from cropmodels.predict import ParcelPrediction, evaluate_predictions

    card = read_card(models["gru"])
    maize = np.array([0.8, 0.1, 0.1], np.float32)
    grass = np.array([0.1, 0.1, 0.8], np.float32)
    predictions = [
        ParcelPrediction(0, "ok", 30, maize),
        ParcelPrediction(1, "ok", 30, grass),
        ParcelPrediction(2, "ok", 30, grass),
        ParcelPrediction(3, "outside_stack", 0),
        ParcelPrediction(4, "ok", 30, maize),
        ParcelPrediction(5, "ok", 30, maize),
    ]
    labels = [1200, "Permanent grass crops", 1200, 9120, None, 5100]
    m = evaluate_predictions(predictions, labels, card)
    assert m["n"] == 3
    assert m["overall_accuracy"] == pytest.approx(2 / 3)
    assert m["excluded"] == {"unlabelled": 1, "no_class": 1, "unknown_to_model": 1}
    with pytest.raises(PredictError, match="No parcel can be scored"):
        evaluate_predictions(predictions[3:], labels[3:], card)


def test_the_recommended_bundled_model_comes_first(models, tmp_path):
    from cropmodels.predict import bundled_model_names

    folder = tmp_path / "models"
    for name, fscore in (("a_model", 0.6), ("b_model", 0.8), ("c_model", None)):
        (folder / name).mkdir(parents=True)
        card = json.loads(models["gru"].read_text())
        card["name"] = name
        if fscore is not None:
            card["metrics"]["cross_validation"] = {"summary": {"fscore": {"mean": fscore}}}
        (folder / name / f"{name}.json").write_text(json.dumps(card))
    assert bundled_model_names(folder) == ["b_model", "a_model", "c_model"]
