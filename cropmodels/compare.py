"""Comparing models the way the paper chose between them (DESIGN section 5), without QGIS.

- :func:`model_rows`: one row per model card (bundled and user-trained) with architecture,
  parameter count, temporal-parameter ratio, training data, cross-validated OA / F-score /
  precision / recall (mean and standard deviation over folds) and the time-shuffled F-score when
  the card knows it. Missing values are ``None`` and shown as "not known".
- :func:`measure_speed`: parcels per second and peak memory of one model on this machine, on
  random inputs of the card's shape (measured on request: it takes seconds).
- :func:`compare_on_layer`: several models on one parcel layer and stack; which parcels they
  disagree on, and each model's metrics against a declared-crop / label field.
- :func:`rows_to_csv`: a table to CSV.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NOT_KNOWN = "not known"
METRICS = ("overall_accuracy", "fscore", "precision", "recall")

# (key, header) of the table, in display order
COLUMNS: list[tuple[str, str]] = [
    ("name", "Model"),
    ("source", "Source"),
    ("architecture", "Architecture"),
    ("parameter_count", "Parameters"),
    ("temporal_parameter_ratio", "Temporal share"),
    ("training_data", "Training data"),
    ("overall_accuracy", "OA"),
    ("overall_accuracy_std", "OA ±"),
    ("fscore", "F-score"),
    ("fscore_std", "F-score ±"),
    ("precision", "Precision"),
    ("precision_std", "Precision ±"),
    ("recall", "Recall"),
    ("recall_std", "Recall ±"),
    ("shuffled_fscore", "Shuffled F-score"),
    ("parcels_per_second", "Parcels/s"),
    ("peak_memory_mb", "Peak memory (MB)"),
]


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def cross_validation(card: Any) -> dict[str, Any]:
    """The card's cross-validation block (``{}`` when it has none)."""
    return (card.metrics or {}).get("cross_validation") or {}


def shuffled_fscore(card: Any) -> float | None:
    """Mean F-score with the dates shuffled (the paper's time-shuffle test), when known: a
    ``metrics.time_shuffled`` / ``metrics.shuffled`` block, or the model's own CV when it was
    trained on shuffled dates."""
    metrics = card.metrics or {}
    for key in ("time_shuffled", "shuffled"):
        block = metrics.get(key) or {}
        value = _number(((block.get("summary") or {}).get("fscore") or {}).get("mean"))
        if value is not None:
            return value
    training = (card.provenance or {}).get("training") or {}
    if training.get("shuffle_dates"):
        return _number(
            ((cross_validation(card).get("summary") or {}).get("fscore") or {}).get("mean")
        )
    return None


def training_data(card: Any) -> str | None:
    """A short description of the training data: parcels, classes, dates, source."""
    prov = card.provenance or {}
    counts = prov.get("class_counts") or {}
    parts = []
    if counts:
        parts.append(f"{sum(int(v) for v in counts.values())} parcels, {len(counts)} classes")
    dates = prov.get("dates") or []
    if dates:
        parts.append(f"{len(dates)} dates {dates[0]}..{dates[-1]}")
    source = (prov.get("stack") or {}).get("source") or prov.get("store")
    if source:
        parts.append(Path(str(source)).name)
    return "; ".join(parts) or None


def card_row(card: Any, path: str | Path | None = None, source: str = "") -> dict[str, Any]:
    """One table row of a :class:`~cropmodels.modelcard.ModelCard`."""
    summary = cross_validation(card).get("summary") or {}
    row: dict[str, Any] = {
        "name": card.name,
        "source": source,
        "path": str(path) if path else None,
        "architecture": card.architecture,
        "parameter_count": card.parameter_count,
        "temporal_parameter_ratio": _number(card.temporal_parameter_ratio),
        "training_data": training_data(card),
        "shuffled_fscore": shuffled_fscore(card),
        "parcels_per_second": None,
        "peak_memory_mb": None,
    }
    for metric in METRICS:
        stats = summary.get(metric) or {}
        row[metric] = _number(stats.get("mean"))
        row[f"{metric}_std"] = _number(stats.get("std"))
    return row


def find_cards(folder: str | Path | None) -> dict[str, Path]:
    """Model cards in ``folder`` (``<name>.json`` beside ``<name>.safetensors``, at any depth)."""
    if folder is None or not Path(folder).is_dir():
        return {}
    found = {}
    for card in sorted(Path(folder).rglob("*.json")):
        if card.with_suffix(".safetensors").is_file():
            found.setdefault(card.stem, card)
    return found


def available_models(
    bundled_folder: str | Path | None = None, user_folder: str | Path | None = None
) -> list[tuple[str, Path]]:
    """``(source, card path)`` of every bundled and user model; a user model with a bundled
    model's name is listed too (sources differ)."""
    from .predict import bundled_models

    try:
        bundled = bundled_models(bundled_folder)
    except (FileNotFoundError, OSError):
        bundled = {}
    found = [("bundled", Path(p)) for _, p in sorted(bundled.items())]
    found += [("user", p) for _, p in sorted(find_cards(user_folder).items())]
    return found


@dataclass
class ModelRows:
    rows: list[dict[str, Any]]
    cards: dict[str, Any]  # path -> card
    problems: list[str] = field(default_factory=list)  # cards that could not be read


def model_rows(models: Sequence[tuple[str, str | Path]]) -> ModelRows:
    """Table rows of ``(source, card path)`` pairs; unreadable cards are reported, not raised."""
    from .modelcard import read_card

    out = ModelRows([], {})
    for source, path in models:
        try:
            card = read_card(path)
        except Exception as exc:  # a broken user card must not hide the others
            out.problems.append(f"{path}: {exc}")
            continue
        out.rows.append(card_row(card, path, source))
        out.cards[str(path)] = card
    return out


def display(value: Any, key: str = "") -> str:
    """A cell's text: numbers rounded, ``None`` as "not known"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_KNOWN
    if key == "parameter_count":
        return f"{int(value):,}"
    if key == "temporal_parameter_ratio":
        return f"{100 * float(value):.1f} %"
    if key == "parcels_per_second":
        return f"{float(value):,.0f}"
    if key == "peak_memory_mb":
        return f"{float(value):.1f}"
    if isinstance(value, float):
        return f"{100 * value:.1f}" if key in _PERCENT else f"{value:.3g}"
    return str(value)


_PERCENT = {m for m in METRICS} | {f"{m}_std" for m in METRICS} | {"shuffled_fscore"}


def rows_to_csv(
    rows: Sequence[Mapping[str, Any]], path: str | Path, columns: Sequence[str] | None = None
) -> Path:
    """Raw values (not rounded; empty when not known), one header line of keys."""
    keys = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(keys)
        for row in rows:
            writer.writerow(["" if row.get(k) is None else row.get(k) for k in keys])
    return path


# -- speed and memory ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeedResult:
    parcels_per_second: float
    peak_memory_mb: float
    batch_size: int
    n_dates: int
    device: str
    measures: str = (
        "forward passes of the inference model on random inputs of the card's shape; peak "
        "memory: the largest extra memory allocated during one forward pass (CUDA: "
        "torch.cuda.max_memory_allocated; CPU: the torch CPU profiler's allocations, "
        "weights excluded)"
    )


def measure_speed(
    card_path: str | Path, device: str = "cpu", batch_size: int = 64, repeats: int = 3
) -> SpeedResult:
    """Inference throughput and peak memory of one model on this machine (no stack needed)."""
    import torch

    from .architectures import FEATURES
    from .inference import for_inference
    from .modelcard import load_model
    from .predict import resolve_device

    dev = resolve_device(device)
    net, card = load_model(card_path, device=dev)
    model = for_inference(net, dev)
    n_dates = len(card.date_grid) if card.date_grid else 24
    torch.manual_seed(0)
    if card.input_kind == FEATURES:
        width = len(card.normalisation.get("mean", [[0] * (2 * card.n_bands)])[0])
        x = torch.randn(batch_size, n_dates, width, device=dev)
    else:
        size = card.patch_size or 32
        x = torch.randn(batch_size, n_dates, card.n_bands, size, size, device=dev)
    grid = card.date_grid or list(range(1, 1 + 10 * n_dates, 10))
    doy = torch.tensor(grid, device=dev).expand(batch_size, -1)
    with torch.inference_mode():
        model(x, doy=doy)  # warm-up
        peak = _peak_memory(lambda: model(x, doy=doy), dev)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x, doy=doy)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - start)
    return SpeedResult(
        parcels_per_second=batch_size / float(np.median(times)),
        peak_memory_mb=peak / 2**20,
        batch_size=batch_size,
        n_dates=n_dates,
        device=str(dev),
    )


def _peak_memory(forward: Callable[[], Any], dev: Any) -> float:
    """Bytes: the high-water mark of memory allocated by torch during ``forward``."""
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        forward()
        torch.cuda.synchronize(dev)
        return float(torch.cuda.max_memory_allocated(dev) - base)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        forward()
    # running sum of allocations (+) and frees (-) in time order: its maximum is the peak
    events = sorted(
        (e for e in prof.events() if getattr(e, "cpu_memory_usage", 0)),
        key=lambda e: e.time_range.start,
    )
    level = peak = 0
    for event in events:
        level += event.cpu_memory_usage
        peak = max(peak, level)
    return float(peak)


# -- several models on one layer ---------------------------------------------------------------


@dataclass
class LayerComparison:
    models: list[str]
    codes: np.ndarray  # (n_parcels, n_models) predicted class codes, -1 where no class
    disagree: np.ndarray  # (n_parcels,) bool: classified models predict different codes
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> metrics
    notes: list[str] = field(default_factory=list)

    @property
    def n_disagreeing(self) -> int:
        return int(self.disagree.sum())

    def metric_rows(self) -> list[dict[str, Any]]:
        rows = []
        for name in self.models:
            m = self.metrics.get(name) or {}
            row = {"model": name, **{k: _number(m.get(k)) for k in METRICS}, "n": m.get("n")}
            rows.append(row)
        return rows


def disagreements(codes: np.ndarray) -> np.ndarray:
    """Parcels where at least two models gave a class and their codes differ."""
    codes = np.asarray(codes)
    masked = np.where(codes < 0, np.nan, codes.astype(float))
    with np.errstate(invalid="ignore"):
        hi, lo = (
            np.nanmax(masked, axis=1, initial=-np.inf),
            np.nanmin(masked, axis=1, initial=np.inf),
        )
    return np.isfinite(hi) & np.isfinite(lo) & (hi != lo)


def compare_on_layer(
    parcels: Any,
    stack: Any,
    models: Sequence[str | Path],
    *,
    label_field: str | None = None,
    device: str = "cpu",
    progress: Callable[[float, str], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> LayerComparison:
    """Run every model on ``parcels`` (a path or GeoDataFrame) over ``stack``; returns their
    predicted codes per parcel (in the layer's row order), where they disagree, and with
    ``label_field`` each model's metrics against it
    (:func:`~cropmodels.predict.evaluate_predictions`).

    Raises :class:`~cropmodels.progress.Cancelled` when ``is_cancelled()``.
    """
    import geopandas as gpd

    from .predict import Classifier, PredictConfig, PredictError, evaluate_predictions
    from .progress import check_cancelled, never_cancelled, no_progress

    progress = progress or no_progress
    is_cancelled = is_cancelled or never_cancelled
    frame = parcels if isinstance(parcels, gpd.GeoDataFrame) else gpd.read_file(parcels)
    n = len(frame)
    if label_field is not None and label_field not in frame.columns:
        raise PredictError(f"the layer has no field {label_field!r}")
    codes = np.full((n, len(models)), -1, dtype=np.int64)
    names: list[str] = []
    result = LayerComparison([], codes, np.zeros(n, bool))
    for j, model in enumerate(models):
        check_cancelled(is_cancelled)
        classifier = Classifier.load(model, device=device)
        name = classifier.card.name
        if name in names:
            name = f"{name} ({j + 1})"
        names.append(name)

        def step(fraction: float, message: str, j: int = j, name: str = name) -> None:
            progress((j + fraction) / len(models), f"{name}: {message}")

        predictions = sorted(
            classifier.classify(
                frame, stack, PredictConfig(device=device), progress=step,
                is_cancelled=is_cancelled,
            ),
            key=lambda p: p.index,
        )  # fmt: skip
        for p in predictions:
            if p.classified:
                codes[p.index, j] = classifier.card.classes[p.class_index].code
        if label_field is not None:
            labels = [None if _missing(v) else v for v in frame[label_field].tolist()]
            try:
                result.metrics[name] = evaluate_predictions(predictions, labels, classifier.card)
            except (ValueError, PredictError) as exc:
                result.notes.append(f"{name}: no metrics ({exc})")
    progress(1.0, "done")
    result.models = names
    result.disagree = disagreements(codes)
    return result


def _missing(value: Any) -> bool:
    try:
        return value is None or bool(np.isnan(value))
    except TypeError:
        return False
