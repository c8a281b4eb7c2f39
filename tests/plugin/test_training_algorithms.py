"""extract_patches, train_model and evaluate_models through Processing on the real sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from qgis.core import QgsProcessingException, QgsProcessingFeedback, QgsVectorLayer

from parcel_crop_classifier.cropmodels.evaluate import evaluate_model
from parcel_crop_classifier.cropmodels.modelcard import load_model
from parcel_crop_classifier.cropmodels.store import Store
from sample_data import LEGEND, PARCELS, STACK


def run(alg: str, params: dict, feedback=None) -> dict:
    import processing

    return processing.run(f"cropclassifier:{alg}", params, feedback=feedback)


@pytest.fixture(scope="module")
def class_map(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("classes") / "classes.csv"
    path.write_text(
        "source_code,code,name,colour\n"
        + "".join(f"{c},{c},{n},{col}\n" for c, (n, col) in LEGEND.items()),
        encoding="utf-8",
    )
    return path


def test_extract_patches_writes_a_labelled_store(provider, tmp_path):
    out = tmp_path / "flanders.store"
    result = run("extract_patches", {"PARCELS": str(PARCELS), "STACK": str(STACK),
                                     "LABEL_FIELD": "crop_code", "ID_FIELD": "parcel_id",
                                     "OUTPUT": str(out)})  # fmt: skip
    assert result["OUTPUT"] == str(out)
    assert (result["N_PARCELS"], result["N_USABLE"], result["N_LABELLED"]) == (18, 18, 18)
    store = Store(out)
    order = np.argsort(store.source_index)
    assert store.meta("parcel_id")[order].tolist() == [str(i) for i in range(1, 19)]
    assert sorted(set(store.labels.tolist())) == [1200, 2130, 5100, 7900, 9120]
    assert len(store.dates) == 118


def test_extract_patches_refuses_a_folder_with_other_content(provider, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(QgsProcessingException, match="folder with other content"):
        run("extract_patches", {"PARCELS": str(PARCELS), "STACK": str(STACK),
                                "OUTPUT": str(tmp_path)})  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_extract_patches_cancelled_leaves_no_store(provider, tmp_path):
    feedback = QgsProcessingFeedback()
    feedback.cancel()
    out = tmp_path / "never.store"
    with pytest.raises(QgsProcessingException, match="Cancelled: no store was written"):
        run("extract_patches", {"PARCELS": str(PARCELS), "STACK": str(STACK),
                                "OUTPUT": str(out)}, feedback)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def trained(qgis_processing, tmp_path_factory, class_map) -> tuple[dict, Path]:
    import parcel_crop_classifier

    plugin = parcel_crop_classifier.classFactory(None)
    plugin.initProcessing()
    try:
        folder = tmp_path_factory.mktemp("trained")
        result = run("train_model", {
            "PARCELS": str(PARCELS), "LABEL_FIELD": "crop_code", "STACK": str(STACK),
            "ARCHITECTURE": "gru", "EPOCHS": 1, "FOLDS": 3, "CROSS_VALIDATE": True,
            "MERGE_RARE": True, "CLASS_MAP": str(class_map), "DEVICE": "cpu",
            "OUTPUT": str(folder / "gru_flanders.json"),
            "REPORT": str(folder / "gru_flanders.html"),
        })  # fmt: skip
    finally:
        plugin.unload()
    return result, folder


def test_train_model_writes_a_model_file_and_an_html_report(trained):
    result, folder = trained
    card_path = Path(result["OUTPUT"])
    assert card_path == folder / "gru_flanders.json"
    _model, card = load_model(card_path)  # weights and card agree
    assert card.name == "gru_flanders"
    assert card.architecture == "gru"
    assert card.class_names == ["Maize", "Other leguminous crops", "Permanent grass crops"]
    assert [c.colour for c in card.classes] == ["#ffd92f", "#984ea3", "#4daf4a"]
    assert card.metrics["cross_validation"]["n_folds"] == 3
    assert result["CV_FSCORE"] == pytest.approx(
        card.metrics["cross_validation"]["summary"]["fscore"]["mean"]
    )
    assert result["N_CLASSES"] == 3
    assert result["N_PARCELS"] == sum(card.provenance["class_counts"].values())
    page = Path(result["REPORT"]).read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<h2>Cross-validation</h2>" in page
    assert 'src="data:image/png;base64,' in page  # self-contained
    assert not list(folder.glob("*.store"))  # the temporary store is gone


def test_train_model_explains_a_text_label_field(provider, tmp_path):
    with pytest.raises(QgsProcessingException, match="not an integer crop code"):
        run("train_model", {"PARCELS": str(PARCELS), "LABEL_FIELD": "crop_name",
                            "STACK": str(STACK), "ARCHITECTURE": "gru", "EPOCHS": 1,
                            "DEVICE": "cpu", "OUTPUT": str(tmp_path / "m.json"),
                            "REPORT": str(tmp_path / "m.html")})  # fmt: skip
    assert not (tmp_path / "m.json").exists()


def test_evaluate_models_scores_each_model(provider, trained, sample_model, tmp_path):
    result, _ = trained
    models = [str(sample_model), result["OUTPUT"]]
    report = tmp_path / "evaluation.html"
    out = run("evaluate_models", {"PARCELS": str(PARCELS), "LABEL_FIELD": "crop_code",
                                  "STACK": str(STACK), "MODELS": models, "DEVICE": "cpu",
                                  "OUTPUT": "TEMPORARY_OUTPUT", "REPORT": str(report)})  # fmt: skip
    table: QgsVectorLayer = out["OUTPUT"]
    names = table.fields().names()
    rows = [dict(zip(names, f.attributes(), strict=True)) for f in table.getFeatures()]
    assert [r["model"] for r in rows] == ["cnn_flanders_test", "gru_flanders"]
    for row in rows:
        assert row["n_scored"] == 16  # cabbages and potatoes are unknown to both models
        assert row["n_excluded"] == 2
        for metric in ("overall_accuracy", "fscore", "precision", "recall"):
            assert 0.0 <= row[metric] <= 1.0
        assert row["parcels_per_s"] > 0
        assert row["device"] == "cpu"
    # the same numbers as the core's evaluation of an extracted store (same dates, no
    # resampling): classification and evaluation see the parcels alike
    store = tmp_path / "s.store"
    run("extract_patches", {"PARCELS": str(PARCELS), "STACK": str(STACK),
                            "LABEL_FIELD": "crop_code", "OUTPUT": str(store)})  # fmt: skip
    core = evaluate_model(sample_model, store, device="cpu")
    assert rows[0]["overall_accuracy"] == pytest.approx(core["overall_accuracy"], abs=1e-6)
    assert rows[0]["fscore"] == pytest.approx(core["fscore"], abs=1e-6)
    page = report.read_text(encoding="utf-8")
    assert "<h2>cnn_flanders_test</h2>" in page
    assert "<h2>gru_flanders</h2>" in page
    assert page.count('src="data:image/png;base64,') == 2


def test_evaluate_models_without_a_choice_scores_every_bundled_model(provider, tmp_path):
    from parcel_crop_classifier.cropmodels.predict import bundled_model_names

    bundled = bundled_model_names()
    assert bundled  # the plugin ships trained models
    out = run("evaluate_models", {"PARCELS": str(PARCELS), "LABEL_FIELD": "crop_code",
                                  "STACK": str(STACK), "DEVICE": "cpu",
                                  "OUTPUT": "TEMPORARY_OUTPUT"})  # fmt: skip
    table = out["OUTPUT"]
    assert table.featureCount() == len(bundled)


def test_cards_are_json(trained):
    result, _ = trained
    assert json.loads(Path(result["OUTPUT"]).read_text())["architecture"] == "gru"
