"""The published numbers of Garnot et al. (IGARSS 2019), transcribed from the paper's text.

Source: ``shared/seed/garnot2019_time_space_tradeoff.txt`` (HAL hal-02386701). Values are the
printed percentages, unchanged; ``reproduce`` prints them next to the numbers it measures.
The dataset behind them (tile T31TFM, 2017, 199,464 parcels, 24 dates, French LPIS
nomenclature) is not available here, so they are a reference, not an expected result.
"""

from __future__ import annotations

from dataclasses import dataclass

TITLES: dict[str, str] = {
    "cnn": "CNN",
    "cnn_gru7": "CNN+GRU7",
    "cnn_gru8": "CNN+GRU8",
    "cnn_gru9": "CNN+GRU9",
    "gru": "GRU",
    "convlstm": "ConvLSTM",
    "random_forest": "Random Forest",
}
"""Registry names -> the paper's model names (plus the RF baseline)."""


@dataclass(frozen=True)
class Table2Row:
    """Table 2: performance metrics (%), 5-fold cross-validation on T31TFM."""

    oa: float
    fscore: float
    precision: float
    recall: float


TABLE2: dict[str, Table2Row] = {
    "cnn": Table2Row(89.5, 34.9, 53.0, 31.4),
    "cnn_gru7": Table2Row(93.4, 53.2, 59.7, 49.9),
    "cnn_gru8": Table2Row(93.7, 55.1, 63.3, 51.6),
    "cnn_gru9": Table2Row(93.7, 55.1, 65.1, 51.8),
    "gru": Table2Row(93.5, 53.8, 63.0, 50.0),
    "convlstm": Table2Row(93.1, 49.2, 64.0, 44.5),
}

TABLE3_MODELS: tuple[str, ...] = ("cnn", "gru", "cnn_gru9", "convlstm")
"""Column order of Table 3."""

TABLE3: dict[str, tuple[float, float, float, float]] = {
    # class: (CNN, GRU, CNN+GRU9, ConvLSTM) per-class F-score (%) on the test set
    "Undefined": (0.0, 45.1, 35.4, 38.2),
    "Meadows": (92.9, 95.8, 96.0, 96.0),
    "Cereal": (93.3, 97.1, 97.5, 97.5),
    "Hemp": (21.6, 60.5, 64.4, 72.7),
    "Leguminous Fodder": (15.6, 42.9, 43.8, 34.8),
    "Other Fodder": (0.0, 25.5, 32.9, 14.8),
    "Oilseed": (93.1, 95.9, 96.0, 95.1),
    "Protein Crop": (79.2, 87.9, 89.1, 87.6),
    "Industrial Crop": (19.6, 40.3, 47.3, 23.9),
    "Fruit, Vegetable, Flower": (42.5, 60.3, 63.1, 55.1),
    "Aromatic/Medicinal Plant": (0.0, 32.8, 28.9, 8.3),
    "Ligneous": (5.5, 39.8, 38.6, 32.1),
    "Orchard": (0.0, 8.0, 6.0, 2.5),
    "Grapevine": (81.8, 95.1, 94.3, 92.4),
    "Short Rotation Coppice": (0.0, 8.3, 18.2, 17.4),
    "Non Agricultural Area": (46.7, 54.9, 59.1, 55.2),
    "Other": (1.2, 24.0, 27.0, 14.1),
}


@dataclass(frozen=True)
class Table4Row:
    """Table 4: F-score (%) trained on ordered and on randomly time-shuffled sequences."""

    ordered: float
    shuffled: float
    delta: float


TABLE4: dict[str, Table4Row] = {
    "convlstm": Table4Row(49.2, 47.9, -1.3),
    "cnn_gru7": Table4Row(53.2, 52.0, -1.2),
    "cnn_gru9": Table4Row(55.1, 48.8, -6.3),
    "gru": Table4Row(53.8, 45.3, -8.5),
}

RANDOM_FOREST_FSCORE = 36.9
"""Section 4: "the RF baseline which achieves an average F-score of 36.9 on the same dataset"."""

DATASET = (
    "Sentinel-2 tile T31TFM (southern France), 24 dates January-October 2017, 199,464 parcels, "
    "French LPIS in 18 high-level classes (rice absent), TOC reflectance, 10 bands"
)


def table3_value(class_name: str, model: str) -> float | None:
    """The paper's per-class F-score of ``model`` for a class of that name (case-insensitive)."""
    if model not in TABLE3_MODELS:
        return None
    wanted = class_name.strip().casefold()
    for name, values in TABLE3.items():
        if name.casefold() == wanted:
            return values[TABLE3_MODELS.index(model)]
    return None


__all__ = [
    "DATASET",
    "RANDOM_FOREST_FSCORE",
    "TABLE2",
    "TABLE3",
    "TABLE3_MODELS",
    "TABLE4",
    "TITLES",
    "Table2Row",
    "Table4Row",
    "table3_value",
]
