"""The trained models shipped in resources/models (made by ``make models``): every card loads,
validates and matches its weights, says what it was trained on and how good it is, and every
model classifies the real Flanders sample."""

from __future__ import annotations

import datetime as dt
import hashlib
import math

import geopandas as gpd
import numpy as np
import pytest

from cropmodels import nomenclature
from cropmodels.architectures import list_models, parameter_count
from cropmodels.extract import extract, select_dates
from cropmodels.modelcard import bundled_models, load_model, model_paths, read_card
from cropmodels.stack import open_stack
from cropmodels.store import Store, write_store
from cropmodels.train import predict_proba
from sample_data import PARCELS, STACK

BUNDLED = bundled_models()


def _ids(path) -> str:
    return path.stem


def test_every_architecture_of_the_registry_is_bundled():
    assert [p.stem for p in BUNDLED] == list_models()


def test_the_bundled_models_share_classes_and_date_grid():
    cards = [read_card(p) for p in BUNDLED]
    assert len({tuple(c.class_codes) for c in cards}) == 1
    assert len({tuple(c.date_grid) for c in cards}) == 1


@pytest.mark.parametrize("path", BUNDLED, ids=_ids)
def test_card_loads_validates_and_matches_its_weights(path):
    model, card = load_model(path)  # schema, sha256, tensor names and shapes, parameter count
    weights, card_path = model_paths(path)
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == card.weights_sha256
    assert card.parameter_count == parameter_count(model)
    assert card.name == card.architecture == path.stem == path.parent.name
    assert model.n_classes == len(card.classes)
    # classes: WorldCereal codes with their legend names and palette colours
    for c in card.classes:
        assert c.name == nomenclature.name(c.code)
        assert c.colour == nomenclature.colour(c.code)
    # a date grid of season days with per-date normalisation for it
    grid = card.date_grid
    assert len(grid) == 24
    mean, std = card.normalisation_arrays()
    width = 20 if card.input_kind == "features" else 10
    assert mean.shape == std.shape == (24, width)
    assert np.all(std > 0)
    dates = card.provenance["training_data"]["date_grid"]["dates"]
    assert [dt.date.fromisoformat(d).timetuple().tm_yday for d in dates] == grid
    assert card.provenance["dates"] == dates
    assert card.patch_size == (32 if card.input_kind == "patches" else None)
    # no path of the machine that built it
    assert "/work/" not in card_path.read_text(encoding="utf-8")
    assert "/tmp/" not in card_path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", BUNDLED, ids=_ids)
def test_card_says_what_it_was_trained_on_and_how_good_it_is(path):
    card = read_card(path)
    data = card.provenance["training_data"]
    assert "Flanders" in data["description"]
    assert "not a production classifier" in data["description"]
    assert "MIT" in data["licence"]
    assert "Copernicus" in data["licence"]
    assert "LPIS" in data["labels"]
    per_class = {e["name"]: e for e in data["samples"]["per_class"]}
    assert set(per_class) == set(card.class_names)
    assert card.provenance["class_counts"] == {n: e["samples"] for n, e in per_class.items()}
    assert all(e["source_regions"] >= 3 for e in per_class.values())
    excluded = {e["code"] for e in data["samples"]["excluded_classes"]}
    assert excluded == {2130, 5100}  # one region each
    assert not excluded & set(card.class_codes)
    cv = card.metrics["cross_validation"]
    assert cv["n_folds"] == 5
    assert cv["grouping"] == "spatial"
    assert len(cv["per_fold"]) == 5
    for metric in ("overall_accuracy", "fscore", "precision", "recall"):
        stats = cv["summary"][metric]
        assert 0.0 <= stats["mean"] <= 1.0
        assert math.isfinite(stats["std"])
        assert stats["n"] == 5
    assert np.sum(cv["confusion_matrix"]) == sum(e["samples"] for e in per_class.values())
    assert "random_forest" in card.metrics["baselines"]
    final = card.metrics["final_model"]
    assert final["final_fit"] == "all"
    assert final["n_train"] == data["samples"]["n_samples"]
    assert card.provenance["training"]["epochs"] == 50
    assert card.provenance["training"]["batch_size"] == 32
    assert card.provenance["training"]["lr"] == 1e-3
    assert card.provenance["torch_threads"] == 1
    commit = card.provenance["code"]["git_commit"]
    assert len(commit) == 40  # a committed tree: not "-dirty"
    report = path.with_name(f"{path.stem}.report.md")
    text = report.read_text(encoding="utf-8")
    assert "## Cross-validation" in text
    assert "Baselines on the same folds" in text
    for figure in ("confusion", "curves"):
        assert path.with_name(f"{path.stem}.{figure}.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory):
    """The real sample's 18 parcels, extracted from all 118 dates and kept on the models' grid."""
    dates = read_card(BUNDLED[0]).provenance["training_data"]["date_grid"]["dates"]
    stack = open_stack(STACK)
    keep = [i for i, d in enumerate(stack.dates) if d.date.isoformat() in dates]
    assert len(keep) == 24
    parcels = gpd.read_file(PARCELS)
    out = tmp_path_factory.mktemp("bundled") / "sample.store"
    write_store(
        select_dates(extract(parcels, stack), keep), out, n_parcels=len(parcels),
        stack_description=stack.describe(), dates=[stack.dates[i].date for i in keep],
        labels=list(parcels["crop_code"]), label_field="crop_code",
    )  # fmt: skip
    return Store(out)


@pytest.mark.parametrize("path", BUNDLED, ids=_ids)
def test_model_classifies_the_real_sample(path, sample_store):
    model, card = load_model(path)
    assert sample_store.season_days == card.date_grid
    rows = sample_store.usable_indices()
    assert len(rows) == 18
    proba = predict_proba(model, card, sample_store, rows)
    assert proba.shape == (18, len(card.classes))
    assert np.all(np.isfinite(proba))
    assert np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    # the whole regions the model learnt from (as sub-parcels): a trained model, unlike random
    # weights or a constant answer, finds most maize and most grassland regions
    codes = np.asarray(card.class_codes)[proba.argmax(axis=1)]
    labels = sample_store.labels[rows]
    for code in (1200, 9120):  # 4 maize and 9 grassland regions
        assert (codes[labels == code] == code).mean() >= 0.75, code


def test_models_readme_lists_every_bundled_model():
    text = (BUNDLED[0].parent.parent / "README.md").read_text(encoding="utf-8")
    for path in BUNDLED:
        card = read_card(path)
        cv = card.metrics["cross_validation"]["summary"]
        assert f"| `{card.name}` | {card.parameter_count:,} |" in text
        oa = cv["overall_accuracy"]
        assert f"{100 * oa['mean']:.1f} ± {100 * oa['std']:.1f}" in text
