"""The QGIS-free part of the model comparison panel (cropmodels.compare)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

from cropmodels.compare import (
    NOT_KNOWN,
    available_models,
    card_row,
    compare_on_layer,
    disagreements,
    display,
    measure_speed,
    model_rows,
    rows_to_csv,
)
from cropmodels.modelcard import read_card
from cropmodels.progress import Cancelled
from sample_data import PARCELS, STACK, train_sample_model

CV = {
    "cross_validation": {
        "summary": {
            "overall_accuracy": {"mean": 0.9, "std": 0.01},
            "fscore": {"mean": 0.7, "std": 0.05},
            "precision": {"mean": 0.72, "std": 0.04},
            "recall": {"mean": 0.69, "std": 0.06},
        },
        "per_class_fscore": {"Maize": {"mean": 0.8, "std": 0.1}},
        "confusion_matrix": [[3, 1], [0, 4]],
        "class_order": ["Maize", "Other"],
    },
    "time_shuffled": {"summary": {"fscore": {"mean": 0.4, "std": 0.02}}},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {arch: train_sample_model(folder, arch) for arch in ("gru", "cnn")}


def with_cv(card_path: Path, folder: Path) -> Path:
    """A copy of a model whose card has cross-validation and time-shuffle metrics."""
    folder.mkdir(parents=True, exist_ok=True)
    data = json.loads(card_path.read_text())
    data["metrics"].update(CV)
    out = folder / card_path.name
    out.write_text(json.dumps(data))
    weights = card_path.with_suffix(".safetensors")
    (folder / weights.name).write_bytes(weights.read_bytes())
    return out


def test_rows_have_every_column_and_unknowns(models, tmp_path):
    full = with_cv(models["cnn"], tmp_path / "user" / "cnn")
    found = available_models(tmp_path / "none", tmp_path / "user")
    assert found == [("user", full)]
    table = model_rows([*found, ("user", models["gru"]), ("user", tmp_path / "missing.json")])
    assert len(table.rows) == 2
    assert len(table.problems) == 1
    row, bare = table.rows
    assert row["architecture"] == "cnn"
    assert row["parameter_count"] > 0
    assert row["overall_accuracy"] == 0.9
    assert row["fscore_std"] == 0.05
    assert row["shuffled_fscore"] == 0.4
    assert "16 parcels" in row["training_data"]
    assert bare["fscore"] is None
    assert bare["shuffled_fscore"] is None
    assert display(bare["fscore"], "fscore") == NOT_KNOWN
    assert display(row["fscore"], "fscore") == "70.0"
    assert bare["temporal_parameter_ratio"] > 0  # GRU parameters are temporal
    out = rows_to_csv(table.rows, tmp_path / "t.csv", ["name", "fscore", "shuffled_fscore"])
    lines = list(csv.reader(out.open()))
    assert lines[0] == ["name", "fscore", "shuffled_fscore"]
    assert lines[1][1:] == ["0.7", "0.4"]
    assert lines[2][1:] == ["", ""]


def test_card_row_of_a_card_without_metrics(models):
    card = read_card(models["gru"])
    card.metrics = {}
    card.provenance = {}
    row = card_row(card)
    assert row["training_data"] is None
    assert row["overall_accuracy"] is None


def test_speed_and_memory_are_measured(models):
    result = measure_speed(models["cnn"], batch_size=8, repeats=1)
    assert result.parcels_per_second > 0
    assert result.peak_memory_mb > 0
    assert result.device == "cpu"


def test_disagreements_ignore_missing_classes():
    codes = np.array([[1, 1], [1, 2], [-1, 2], [-1, -1], [3, 3]])
    assert disagreements(codes).tolist() == [False, True, False, False, False]


def test_compare_on_the_real_sample(models):
    seen = []
    result = compare_on_layer(
        PARCELS, STACK, [models["gru"], models["cnn"]], label_field="crop_code",
        progress=lambda f, m: seen.append(f),
    )  # fmt: skip
    n = len(gpd.read_file(PARCELS))
    assert result.codes.shape == (n, 2)
    assert result.disagree.shape == (n,)
    assert result.models == ["gru_flanders_test", "cnn_flanders_test"]
    expected = (result.codes[:, 0] != result.codes[:, 1]) & (result.codes >= 0).all(axis=1)
    assert result.disagree.tolist() == expected.tolist()
    rows = result.metric_rows()
    assert [r["model"] for r in rows] == result.models
    assert all(0 <= r["overall_accuracy"] <= 1 for r in rows)
    assert seen[-1] == 1.0


def test_compare_can_be_cancelled(models):
    with pytest.raises(Cancelled):
        compare_on_layer(PARCELS, STACK, [models["cnn"]], is_cancelled=lambda: True)
