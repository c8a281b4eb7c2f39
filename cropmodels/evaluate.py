"""Metrics of the paper's protocol (scikit-learn) and evaluation of a saved model on a store.

Garnot et al. (2019) report overall accuracy, the *unweighted* class-average F-score, precision
and recall (Table 2; the F-score ranks models because the classes are very imbalanced), the
per-class F-score (Table 3) and, implicitly, confusion matrices. Over 5 folds this module gives
each metric per test fold, then the mean and standard deviation over folds.

Conventions (why):

* class averages run over the classes present in the fold's truth or predictions (scikit-learn's
  default label set). A class absent from a test fold and never predicted there says nothing
  about the model, and counting it as F = 0 would penalise rare classes twice;
* a per-class score is NaN ("no data") where the class has neither support nor predictions in
  that fold; means over folds ignore NaNs (``nanmean``); JSON writes them as ``null``;
* precision/recall/F of a class that was never predicted (or has no support) are 0 with
  ``zero_division=0``, as scikit-learn's warning-free convention;
* the standard deviation over folds is the sample one (ddof=1), the usual "mean +- std" of a
  cross-validation; a single fold gives std 0;
* the confusion matrix is the sum over the test folds: every labelled parcel is tested exactly
  once in a 5-fold CV, so the sum is the confusion of the whole dataset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .progress import CancelFn, ProgressFn, never_cancelled, no_progress

SUMMARY_METRICS: tuple[str, ...] = ("overall_accuracy", "fscore", "precision", "recall")
"""The four columns of Table 2 (class averages are unweighted)."""


def fold_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Metrics of one test fold; ``y_*`` are class indices in ``0..n_classes-1``.

    Returns ``overall_accuracy``, ``fscore``, ``precision``, ``recall`` (unweighted means over
    the classes present), ``per_class_fscore`` / ``per_class_precision`` / ``per_class_recall``
    (lists of ``n_classes``, NaN where the class has no support and no prediction),
    ``support`` and ``confusion_matrix`` (rows = truth, columns = prediction), ``n``.
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal 1-D")
    if not len(y_true):
        raise ValueError("no samples to compute metrics on")
    all_labels = np.arange(n_classes)
    bad = np.setdiff1d(np.union1d(y_true, y_pred), all_labels)
    if bad.size:
        raise ValueError(f"class indices {bad.tolist()} are outside 0..{n_classes - 1}")
    present = np.union1d(y_true, y_pred)
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=present, average="macro", zero_division=0
    )
    pc, rc, fc, support = precision_recall_fscore_support(
        y_true, y_pred, labels=all_labels, average=None, zero_division=0
    )
    absent = ~np.isin(all_labels, present)
    for values in (pc, rc, fc):
        values[absent] = np.nan
    return {
        "n": len(y_true),
        "overall_accuracy": float(accuracy_score(y_true, y_pred)),
        "fscore": float(f),
        "precision": float(p),
        "recall": float(r),
        "per_class_fscore": [float(v) for v in fc],
        "per_class_precision": [float(v) for v in pc],
        "per_class_recall": [float(v) for v in rc],
        "support": [int(v) for v in support],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=all_labels).tolist(),
    }


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    a = a[~np.isnan(a)]
    if not a.size:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {"mean": float(a.mean()), "std": std, "n": int(a.size)}


@dataclass
class CVResult:
    """Cross-validated result of one model (or the RF baseline) on one store.

    ``folds`` holds :func:`fold_metrics` dicts (plus ``fold``, ``best_epoch``, ``history``);
    ``summary`` and ``per_class`` the mean/std over folds; ``confusion_matrix`` the sum.
    """

    name: str
    classes: list[str]
    folds: list[dict[str, Any]]
    variant: str = "ordered"
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion_matrix: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.folds and not self.summary:
            self.summary = {m: _mean_std([f[m] for f in self.folds]) for m in SUMMARY_METRICS}
            self.per_class = {
                name: _mean_std([f["per_class_fscore"][i] for f in self.folds])
                for i, name in enumerate(self.classes)
            }
            self.confusion_matrix = np.sum(
                [np.asarray(f["confusion_matrix"]) for f in self.folds], axis=0
            ).tolist()

    def mean(self, metric: str) -> float:
        return self.summary[metric]["mean"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (NaN -> None)."""
        return json_safe(
            {
                "name": self.name,
                "variant": self.variant,
                "classes": self.classes,
                "summary": self.summary,
                "per_class_fscore": self.per_class,
                "confusion_matrix": self.confusion_matrix,
                "folds": self.folds,
                "config": self.config,
            }
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CVResult:
        def nan(v: Any) -> Any:
            if v is None:
                return math.nan
            if isinstance(v, list):
                return [nan(x) for x in v]
            if isinstance(v, dict):
                return {k: nan(x) for k, x in v.items()}
            return v

        return cls(
            name=data["name"],
            classes=list(data["classes"]),
            folds=[nan(f) for f in data["folds"]],
            variant=data.get("variant", "ordered"),
            config=dict(data.get("config", {})),
        )


def json_safe(value: Any) -> Any:
    """A copy with NaN/inf floats as None and numpy scalars as Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


# -- a saved model on a labelled store ------------------------------------------------------------


def evaluate_model(
    model_path: str | Path,
    store_path: str | Path,
    *,
    device: str = "auto",
    batch_size: int = 64,
    progress: ProgressFn = no_progress,
    is_cancelled: CancelFn = never_cancelled,
) -> dict[str, Any]:
    """Metrics of a model file on the labelled, usable parcels of a store.

    Store labels are matched to the card's classes by code (after the card's
    ``provenance.label_mapping`` when the model was trained with a class mapping); parcels
    whose code the model does not know are excluded and counted, not guessed. The store's dates
    must be the card's date grid (temporal resampling belongs to prediction).
    Returns :func:`fold_metrics` plus ``classes``, ``excluded`` and ``model``.
    """
    from .modelcard import load_model
    from .store import Store
    from .train import predict_proba, resolve_device

    dev = resolve_device(device)
    model, card = load_model(model_path, device=dev)
    store = Store(store_path)
    if card.date_grid is not None and list(card.date_grid) != store.season_days:
        raise ValueError(
            f"the store's dates (season days {store.season_days[:6]}...) are not the model's "
            f"date grid ({card.date_grid[:6]}...); extract on the model's dates"
        )
    mapping = {int(k): int(v) for k, v in card.provenance.get("label_mapping", {}).items()}
    index_of = {c.code: i for i, c in enumerate(card.classes)}
    rows = store.usable_indices(labelled=True)
    codes = np.array([mapping.get(int(c), int(c)) for c in store.labels[rows]], dtype=np.int64)
    known = np.array([c in index_of for c in codes], dtype=bool)
    excluded = {
        "unlabelled": int((store.labels == -1).sum()),
        "not_usable": int(len(store) - len(store.usable_indices())),
        "unknown_to_model": int((~known).sum()),
    }
    rows, codes = rows[known], codes[known]
    if not len(rows):
        raise ValueError(
            f"none of the store's labelled parcels has a class the model knows "
            f"({', '.join(map(str, card.class_codes))})"
        )
    y_true = np.array([index_of[c] for c in codes], dtype=np.int64)
    proba = predict_proba(
        model,
        card,
        store,
        rows,
        device=dev,
        batch_size=batch_size,
        progress=progress,
        is_cancelled=is_cancelled,
    )
    metrics = fold_metrics(y_true, proba.argmax(axis=1), len(card.classes))
    metrics.update(
        {
            "classes": card.class_names,
            "class_codes": card.class_codes,
            "excluded": excluded,
            "model": card.name,
            "store": str(store_path),
        }
    )
    return metrics


__all__ = ["SUMMARY_METRICS", "CVResult", "evaluate_model", "fold_metrics", "json_safe"]
