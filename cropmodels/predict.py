"""Batched inference streamed from extraction: every parcel of a layer gets a crop class.

:func:`classify` reads parcels and a stack, and yields one :class:`ParcelPrediction` per parcel
without ever holding the whole dataset: the extractor (:func:`cropmodels.extract.extract`) is a
generator, usable parcels are gathered into batches, each batch is turned into the model's input
exactly as training saw it, run, and released.

Per batch, the input goes through the same steps as a training row of a store:

1. *quantised as the store stores it*: patches rounded and clipped to [0, 65535] (NaN -> 0),
   features NaN -> 0, so a parcel classified here and the same parcel read back from an
   extracted store get the same probabilities;
2. *resampled in time* to the model card's date grid when the stack's dates differ from it
   (:class:`TimeAlignment`): each value is interpolated linearly in time between the two stack
   dates around a grid date, the nearest date beyond the stack's first or last. The extractor
   has already filled each cloudy pixel from that pixel's previous and next clear observation,
   so the series is piecewise linear between clear observations and this interpolation is
   cloud-aware: it equals interpolating the clear observations themselves;
3. *normalised* with the card's training statistics (:class:`~cropmodels.normalise.Normaliser`),
   on the device;
4. run under ``torch.no_grad`` (float16 autocast on CUDA, except models in
   :data:`~cropmodels.train.AMP_EXCLUDED`), softmax in float32.

Parcels the extractor cannot use (outside the stack, too small, no clear observation, invalid
geometry) and parcels with fewer than ``min_clear_dates`` mostly-clear dates get no class and
their status: never a guess.

Device: ``auto`` is CUDA when torch sees a GPU, else the CPU. Batch size ``0`` is chosen from
free memory (:func:`auto_batch_size`); a CUDA out-of-memory error halves the batch and retries
(:class:`AdaptiveBatcher`), and later batches keep the smaller size. Within that bound, forward
passes are sized to take about half a second, so a cancel is honoured within a second even on
a CPU with long series; cancellation is also checked for every parcel the extractor yields.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
import os
import re
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .architectures import FEATURES, PATCHES
from .extract import (
    INVALID,
    NO_CLEAR,
    OUTSIDE,
    PARTLY_OUTSIDE,
    STATUS_TEXT,
    TOO_LARGE,
    TOO_SMALL,
    USABLE,
    ExtractConfig,
    ExtractionSummary,
    ParcelData,
    check_parcels,
    extract,
)
from .modelcard import ModelCard, model_paths
from .progress import CancelFn, ProgressFn, check_cancelled, never_cancelled, no_progress
from .readahead import read_ahead
from .stack import PAPER_BANDS, Stack, open_stack

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

LOG = logging.getLogger(__name__)

OK = "ok"
FEW_CLEAR = NO_CLEAR
"""Status of a parcel with fewer mostly-clear dates than ``min_clear_dates``: its few clear
pixels are not enough to classify it, so it reports the extractor's "no clear observation"."""
STATUSES: tuple[str, ...] = (OK, PARTLY_OUTSIDE, OUTSIDE, TOO_SMALL, NO_CLEAR, INVALID, TOO_LARGE)
CLASSIFIED = USABLE
"""Statuses of parcels that get a class (``partly_outside``: from the part inside the stack)."""


# Output fields (DESIGN section 3), in order; ``p_<class>`` fields go after ``margin``.
CROP_CODE = "crop_code"
CROP_CLASS = "crop_class"
CONFIDENCE = "confidence"
MARGIN = "margin"
N_CLEAR_DATES = "n_clear_dates"
STATUS = "status"
AGREES = "agrees"
CHECK_RANK = "check_rank"  # 1 = the declaration to check first (see suspicion_order)
PROBABILITY_PREFIX = "p_"

MAX_BATCH_CPU = 64  # beyond this a CPU gains nothing and holds more patches
MAX_BATCH_CUDA = 1024
READ_AHEAD_MIN_CORES = 4  # PredictConfig.read_ahead's default on a CPU
MIN_OVERLAP_SHARE = 0.5  # warn when the stack covers less of the model's season than this


class PredictError(ValueError):
    """Prediction cannot run; the message says what is wrong and what to do."""


# -- configuration and results ----------------------------------------------------------------


@dataclass(frozen=True)
class PredictConfig:
    """Settings of a classification run."""

    device: str = "auto"  # auto (CUDA when torch sees a GPU), cpu, cuda, cuda:1 ...
    batch_size: int = 0  # parcels per forward pass; 0 = chosen from free memory
    memory_mb: float = 2048.0  # budget of the extractor's stack buffer and of a batch
    workers: int = 0  # extractor threads reading dates; 0 = one per core
    process_workers: int = 0  # extractor threads cutting patches; 0 = ExtractConfig's default
    min_clear_dates: int = 1  # fewer mostly-clear dates in the stack: no class
    # Seconds one forward pass should take (batches sized to it, see AdaptiveBatcher), so that
    # cancelling answers within a second; None: always full batches.
    max_batch_seconds: float | None = 0.5
    # Extract the next batch on a background thread while the model runs on this one. None:
    # when the model runs on a GPU or the CPU has 4 cores or more. On 2 cores both already fill
    # the cores one after the other, and overlapping them only adds contention (measured with
    # bench_scale: 65.0 s without, 69.2 s with).
    read_ahead: bool | None = None

    def reads_ahead(self, device_type: str) -> bool:
        if self.read_ahead is not None:
            return self.read_ahead
        return device_type != "cpu" or (os.cpu_count() or 1) >= READ_AHEAD_MIN_CORES

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 0:
            raise ValueError(
                f"batch_size must be 0 (automatic) or positive, not {self.batch_size!r}"
            )
        if self.memory_mb <= 0:
            raise ValueError(f"memory_mb must be > 0, not {self.memory_mb!r}")
        if self.min_clear_dates < 0:
            raise ValueError(f"min_clear_dates must be >= 0, not {self.min_clear_dates!r}")


@dataclass
class ParcelPrediction:
    """The result for one parcel; ``probabilities`` (K,) in the card's class order, or None."""

    index: int  # position of the parcel in the input layer
    status: str
    n_clear_dates: int
    probabilities: np.ndarray | None = None

    @property
    def classified(self) -> bool:
        return self.probabilities is not None

    @property
    def class_index(self) -> int | None:
        return None if self.probabilities is None else int(np.argmax(self.probabilities))

    @property
    def confidence(self) -> float | None:
        """The top probability."""
        return None if self.probabilities is None else float(np.max(self.probabilities))

    @property
    def margin(self) -> float | None:
        """Top probability minus the second (1 for a single-class model)."""
        if self.probabilities is None:
            return None
        top = np.sort(self.probabilities)[::-1]
        return float(top[0] - (top[1] if len(top) > 1 else 0.0))


@dataclass
class PredictSummary:
    """Filled in while :func:`classify` runs."""

    counts: dict[str, int] = field(default_factory=dict)  # parcels by status
    n_classified: int = 0
    device: str = ""
    batch_size: int = 0  # final (after any halving)
    oom_halvings: int = 0
    notes: list[str] = field(default_factory=list)  # what the user should know (resampling...)
    extraction: ExtractionSummary = field(default_factory=ExtractionSummary)

    def add(self, prediction: ParcelPrediction) -> None:
        self.counts[prediction.status] = self.counts.get(prediction.status, 0) + 1
        self.n_classified += prediction.classified


# -- model files ---------------------------------------------------------------------------------


def bundled_models(folder: str | Path | None = None) -> dict[str, Path]:
    """Bundled model cards by name (:func:`.modelcard.bundled_models`, in the registry's order).

    Empty when none are shipped; a folder whose card is missing is skipped.
    """
    from .modelcard import bundled_models as bundled_cards

    return {card.stem: card for card in bundled_cards(folder)}


def bundled_model_names(folder: str | Path | None = None) -> list[str]:
    """Bundled models, the recommended one first: the best cross-validated F-score in its
    card (models without one last), then by name."""
    from .modelcard import read_card

    found = bundled_models(folder)

    def score(name: str) -> float:
        try:
            cv = read_card(found[name]).metrics.get("cross_validation") or {}
            return float(cv["summary"]["fscore"]["mean"])
        except (ValueError, KeyError, TypeError):
            return -1.0

    return sorted(found, key=lambda n: (-score(n), n))


def find_model(spec: str | Path, folder: str | Path | None = None) -> Path:
    """A model's card path from a bundled model's name or a model file (card, weights, stem)."""
    text = str(spec).strip()
    if not text:
        raise PredictError("No model given: name a bundled model or choose a model file.")
    bundled = bundled_models(folder)
    if text in bundled:
        return bundled[text]
    weights, card = model_paths(text)
    if card.is_file():
        return card
    names = ", ".join(bundled) or "none are installed"
    if weights.is_file():
        raise PredictError(
            f"The model's weights {weights} are there but its card {card.name} is not; a model "
            f"is the pair <name>.safetensors + <name>.json in one folder."
        )
    raise PredictError(
        f"{text!r} is neither a bundled model (bundled: {names}) nor a model file "
        f"(<name>.json with <name>.safetensors beside it)."
    )


# -- time ----------------------------------------------------------------------------------------


def season_days_from(dates: Sequence[dt.date], year: int) -> np.ndarray:
    """Days counted from 1 January of ``year`` (1 = that day), as the card's date grid is."""
    origin = dt.date(year, 1, 1)
    return np.array([(d - origin).days + 1 for d in dates], dtype=np.float64)


def interpolation_weights(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(len(target), len(source)) weights of linear interpolation in time, rows summing to 1.

    ``source`` increasing; a target before the first (after the last) source date takes the
    first (last) value, as the extractor does at the ends of a pixel's series.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    n = len(source)
    weights = np.zeros((len(target), n), dtype=np.float64)
    if n == 1:
        weights[:, 0] = 1.0
        return weights.astype(np.float32)
    clamped = np.clip(target, source[0], source[-1])
    right = np.clip(np.searchsorted(source, clamped, side="right"), 1, n - 1)
    left = right - 1
    span = source[right] - source[left]
    w = np.divide(clamped - source[left], span, out=np.zeros_like(span), where=span > 0)
    rows = np.arange(len(target))
    weights[rows, left] += 1.0 - w
    weights[rows, right] += w
    return weights.astype(np.float32)


@dataclass(frozen=True)
class TimeAlignment:
    """How the stack's dates feed the model's time axis.

    ``weights`` (T_model, T_stack) or None when the stack's dates are the grid; ``doy`` (T_model,)
    the season days the model is given; ``notes`` what the user should know.
    """

    weights: np.ndarray | None
    doy: np.ndarray
    notes: tuple[str, ...] = ()
    origin_year: int | None = None

    @property
    def resampled(self) -> bool:
        return self.weights is not None


def align_dates(dates: Sequence[dt.date], grid: Sequence[int] | None) -> TimeAlignment:
    """Align the stack's dates to a card's ``date_grid`` (season days, year-agnostic).

    The grid only says "days from 1 January of the season's first year". The stack's dates are
    read from the 1 January that makes them overlap the grid the most (the stack's first year
    unless an earlier or later one overlaps more: a 2019 season on a model trained on
    August 2017 - November 2018 lines up with the grid's second year). Without a grid the model
    takes the stack's own dates.
    """
    if not dates:
        raise PredictError("The stack has no dates.")
    first_year = dates[0].year
    if grid is None:
        doy = season_days_from(dates, first_year)
        return TimeAlignment(None, doy.astype(np.int64), origin_year=first_year)
    grid_days = np.asarray(grid, dtype=np.float64)
    lo, hi = float(grid_days[0]), float(grid_days[-1])

    def inside_grid(days: np.ndarray) -> int:
        return int(((days >= lo) & (days <= hi)).sum())

    def grid_inside(days: np.ndarray) -> int:
        return int(((grid_days >= days[0]) & (grid_days <= days[-1])).sum())

    # The stack's own year unless another puts more of its dates inside the grid's span (ties
    # keep the earlier candidate); a stack wider than the grid is placed by the grid dates it
    # spans instead.
    offsets = (0, -1, 1, -2, 2)
    best_offset, best = 0, -1
    for measure in (inside_grid, grid_inside):
        for offset in offsets:
            score = measure(season_days_from(dates, first_year + offset))
            if score > best:
                best_offset, best = offset, score
        if best > 0:
            break
    year = first_year + best_offset
    days = season_days_from(dates, year)
    doy = grid_days.astype(np.int64)
    if len(days) == len(grid_days) and np.allclose(days, grid_days):
        return TimeAlignment(None, doy, origin_year=year)
    if best == 0:
        raise PredictError(
            f"The stack's dates ({dates[0]} to {dates[-1]}) do not overlap the season the model "
            f"was trained on ({_season_text(grid_days)}) in any year; use a stack covering that "
            "part of the year, or a model trained for your season."
        )
    notes = [
        f"the stack's {len(days)} dates ({dates[0]} to {dates[-1]}) differ from the model's "
        f"{len(grid_days)}-date grid ({_season_text(grid_days)}); each parcel's series is "
        "interpolated linearly in time onto the grid (cloudy observations were already "
        "replaced by interpolation between clear ones)"
    ]
    if best_offset:
        notes.append(
            f"the stack's dates are aligned to the model's season as if the season started in "
            f"{year} (the grid has day-of-season positions, not years)"
        )
    covered = float(((grid_days >= days[0]) & (grid_days <= days[-1])).mean())
    if covered < MIN_OVERLAP_SHARE:
        notes.append(
            f"the stack's dates span only {100 * covered:.0f}% of the model's dates "
            f"({_season_text(grid_days)}); grid dates beyond the stack take the nearest stack "
            "date, so expect less reliable classes"
        )
    return TimeAlignment(weights=interpolation_weights(days, grid_days), doy=doy,
                         notes=tuple(notes), origin_year=year)  # fmt: skip


def _season_text(days: np.ndarray) -> str:
    def day(d: float) -> str:
        date = dt.date(2001, 1, 1) + dt.timedelta(days=int(d) - 1)  # a non-leap reference
        years = (int(d) - 1) // 365
        return date.strftime("%d %b") + (f" of year {years + 1}" if years else "")

    return f"{day(days[0])} to {day(days[-1])}"


# -- checks ----------------------------------------------------------------------------------------


def check_card(card: ModelCard) -> None:
    """Raise :class:`PredictError` when the extractor cannot feed this model."""
    problems = []
    if list(card.bands) != list(PAPER_BANDS) or card.n_bands != len(PAPER_BANDS):
        problems.append(
            f"the model expects the bands {', '.join(card.bands)} but the extractor provides "
            f"{', '.join(PAPER_BANDS)} (Sentinel-2, the paper's ten)"
        )
    if card.input_kind == PATCHES and not card.patch_size:
        problems.append("the card gives no patch size for a model consuming patches")
    if problems:
        raise PredictError(
            f"Model {card.name!r} cannot classify Sentinel-2 stacks: " + "; ".join(problems)
            + "; use a model trained on the paper's ten bands (a bundled one, or one trained "
            "with 'train'), or restore this model's original card."
        )  # fmt: skip


# -- output table ----------------------------------------------------------------------------------


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")


def probability_field_names(card: ModelCard) -> list[str]:
    """``p_<class name>`` per class (lower-case ASCII); ``p_<code>`` where names collide."""
    slugs = [_slug(c.name) for c in card.classes]
    names = []
    for c, slug in zip(card.classes, slugs, strict=True):
        unique = slug and slugs.count(slug) == 1
        names.append(f"{PROBABILITY_PREFIX}{slug if unique else c.code}")
    return names


def output_field_names(card: ModelCard, declared: bool = False) -> list[str]:
    """The fields classification adds, in order (DESIGN section 3), before renaming clashes."""
    names = [CROP_CODE, CROP_CLASS, CONFIDENCE, MARGIN, *probability_field_names(card)]
    names += [N_CLEAR_DATES, STATUS]
    if declared:
        names += [AGREES, CHECK_RANK]
    return names


def resolve_field_names(existing: Sequence[str], wanted: Sequence[str]) -> dict[str, str]:
    """``wanted`` name -> the name to write, never clashing with ``existing`` (case-insensitive,
    as GeoPackage and shapefile field names are): a clash gets ``_pred``, then ``_pred2``...

    The input fields keep their names and values; the caller logs the renamed ones.
    """
    taken = {name.casefold() for name in existing}
    out = {}
    for name in wanted:
        candidate, k = name, 1
        while candidate.casefold() in taken:
            candidate = f"{name}_pred" if k == 1 else f"{name}_pred{k}"
            k += 1
        taken.add(candidate.casefold())
        out[name] = candidate
    return out


def declared_class_index(value: Any, card: ModelCard) -> int | None:
    """The card's class index of a declared crop (a code, or a class name), or None when it is
    empty or a crop the model does not know.

    Codes go through the card's ``provenance.label_mapping`` first (the source codes the model
    was trained on, e.g. rare crops merged into "Other").
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    if not text or text.upper() == "NULL":
        return None
    by_code = {c.code: i for i, c in enumerate(card.classes)}
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if math.isfinite(number) and number.is_integer():
        code = int(number)
        mapping = card.provenance.get("label_mapping") or {}
        code = int(mapping.get(str(code), code))
        return by_code.get(code)
    by_name = {c.name.casefold(): i for i, c in enumerate(card.classes)}
    return by_name.get(text.casefold())


def agreement(prediction: ParcelPrediction, declared: Any, card: ModelCard) -> bool | None:
    """True / False when the predicted class is / is not the declared one; None when there is
    no prediction, no declaration, or the declared crop is unknown to the model."""
    if not prediction.classified:
        return None
    index = declared_class_index(declared, card)
    if index is None:
        return None
    return index == prediction.class_index


def suspicion_order(
    agrees: Sequence[bool | None], confidence: Sequence[float | None]
) -> np.ndarray:
    """Positions ordered for an inspector: disagreements, most confident first (the model is
    sure the declaration is wrong); then agreements, least confident first; then parcels that
    cannot be judged (no class, no or unknown declaration), in input order."""

    def key(i: int) -> tuple[int, float, int]:
        a, c = agrees[i], confidence[i]
        c = 0.0 if c is None else float(c)
        if a is False:
            return (0, -c, i)
        if a is True:
            return (1, c, i)
        return (2, 0.0, i)

    return np.array(sorted(range(len(agrees)), key=key), dtype=np.int64)


def check_ranks(order: Sequence[int]) -> np.ndarray:
    """``check_rank`` per position from :func:`suspicion_order`: 1 for the first to check.

    A field, not only the order of the features: formats that key features by the input's
    ``fid`` (a GeoPackage written from a GeoPackage) keep the input order, and users re-sort.
    """
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[np.asarray(order, dtype=np.int64)] = np.arange(1, len(order) + 1)
    return ranks


def prediction_values(prediction: ParcelPrediction, card: ModelCard) -> list[Any]:
    """Values of :func:`output_field_names` (without the declaration check) for one parcel;
    None = NULL."""
    k = len(card.classes)
    if not prediction.classified:
        return [None] * (4 + k) + [prediction.n_clear_dates, prediction.status]
    cls = card.classes[prediction.class_index]
    probabilities = [round(float(p), 6) for p in prediction.probabilities]
    return [
        cls.code,
        cls.name,
        round(prediction.confidence, 6),
        round(prediction.margin, 6),
        *probabilities,
        prediction.n_clear_dates,
        prediction.status,
    ]


def prediction_columns(predictions: Sequence[ParcelPrediction], card: ModelCard) -> dict[str, Any]:
    """Typed columns (pandas arrays) of :func:`output_field_names` without the declaration
    check; missing values are NA, written as NULL."""
    import pandas as pd

    n, k = len(predictions), len(card.classes)
    proba = np.full((n, k), np.nan)
    code = pd.array([None] * n, dtype="Int64")
    name = np.full(n, None, dtype=object)
    for i, p in enumerate(predictions):
        if p.classified:
            proba[i] = p.probabilities
            c = card.classes[p.class_index]
            code[i], name[i] = c.code, c.name
    top2 = -np.sort(-np.nan_to_num(proba, nan=-1.0), axis=1)[:, :2]
    confidence = np.where(np.isnan(proba).all(axis=1), np.nan, top2[:, 0])
    second = top2[:, 1] if k > 1 else np.zeros(n)
    columns: dict[str, Any] = {
        CROP_CODE: code,
        CROP_CLASS: name,
        CONFIDENCE: confidence.round(6),
        MARGIN: (confidence - second).round(6),
    }
    for j, field_name in enumerate(probability_field_names(card)):
        columns[field_name] = proba[:, j].round(6)
    columns[N_CLEAR_DATES] = pd.array([p.n_clear_dates for p in predictions], dtype="Int64")
    columns[STATUS] = np.array([p.status for p in predictions], dtype=object)
    return columns


def evaluate_predictions(
    predictions: Sequence[ParcelPrediction], labels: Sequence[Any], card: ModelCard
) -> dict[str, Any]:
    """Metrics (:func:`cropmodels.evaluate.fold_metrics`) of predictions against reference
    labels (codes or class names, matched as declarations are: :func:`declared_class_index`).

    Parcels without a label, without a class (status) or with a crop the model does not know
    are excluded and counted, never scored as errors or successes.
    """
    from .evaluate import fold_metrics

    excluded = {"unlabelled": 0, "no_class": 0, "unknown_to_model": 0}
    y_true: list[int] = []
    y_pred: list[int] = []
    for prediction, label in zip(predictions, labels, strict=True):
        index = declared_class_index(label, card)
        empty = label is None or (isinstance(label, float) and math.isnan(label))
        if empty or (isinstance(label, str) and not label.strip()):
            excluded["unlabelled"] += 1
        elif not prediction.classified:
            excluded["no_class"] += 1
        elif index is None:
            excluded["unknown_to_model"] += 1
        else:
            y_true.append(index)
            y_pred.append(int(prediction.class_index))
    if not y_true:
        raise PredictError(
            f"No parcel can be scored for {card.name}: {excluded['unlabelled']} unlabelled, "
            f"{excluded['no_class']} without a class, {excluded['unknown_to_model']} with a "
            f"crop the model does not know (its classes: {', '.join(card.class_names)})."
        )
    metrics = fold_metrics(np.array(y_true), np.array(y_pred), len(card.classes))
    metrics.update(
        {"classes": card.class_names, "class_codes": card.class_codes, "excluded": excluded,
         "model": card.name}
    )  # fmt: skip
    return metrics


# -- device, memory and batches ----------------------------------------------------------------


def free_memory_bytes(device: torch.device) -> int:
    """Free memory where the batch will live: the GPU's, or the machine's available RAM."""
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2 << 30  # unknown (Windows): assume 2 GiB


def parcel_bytes(card: ModelCard, n_stack_dates: int) -> int:
    """Bytes one parcel of a batch costs: its stack-date arrays, the resampled and normalised
    copies, and the activations of the first convolution (about 1.6 input's worth)."""
    t_model = len(card.date_grid) if card.date_grid else n_stack_dates
    if card.input_kind == FEATURES:
        per_date = 2 * card.n_bands * 4
        return n_stack_dates * per_date + 4 * t_model * per_date + 64 * 1024
    side = card.patch_size or 32
    per_date = card.n_bands * side * side * 4
    return n_stack_dates * per_date + 4 * t_model * per_date + side * side


def auto_batch_size(
    card: ModelCard, n_stack_dates: int, device: torch.device, memory_mb: float
) -> int:
    """Parcels per batch from free memory: a quarter of the free GPU memory on CUDA; on the
    CPU the smaller of a quarter of the available RAM and half the memory budget. A power of
    two, at most 64 on the CPU (no gain beyond) and 1024 on CUDA."""
    free = free_memory_bytes(device)
    if device.type == "cuda":
        budget, cap = free // 4, MAX_BATCH_CUDA
    else:
        budget, cap = min(free // 4, int(memory_mb * 2**20) // 2), MAX_BATCH_CPU
    n = max(1, min(cap, budget // max(1, parcel_bytes(card, n_stack_dates))))
    return 1 << (n.bit_length() - 1)


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory error, by type or by torch's message."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class AdaptiveBatcher:
    """Runs ``forward(start, stop)`` over ``n`` items in batches of at most ``batch_size``.

    * On out-of-memory the failing batch is halved and retried; the smaller size becomes the
      new maximum for later calls. ``on_oom`` frees what it can between tries
      (``torch.cuda.empty_cache``). An error at one item is raised as :class:`PredictError`
      saying what to do.
    * With ``target_seconds``, batches are sized so that one forward pass takes about that
      long: the first has ``PROBE_ITEMS`` items, later ones follow the measured time per item
      (at most doubling per step). On a CPU a batch of 32 parcels x 118 dates takes 2 s for
      the CNN and 13 s for the ConvLSTM; small batches keep cancellation within a second at
      no cost in speed (CPU throughput is flat beyond a few parcels).
    * ``is_cancelled`` is checked before every batch.
    """

    PROBE_ITEMS = 2

    def __init__(
        self,
        batch_size: int,
        on_oom: Callable[[], None] | None = None,
        *,
        target_seconds: float | None = None,
        is_cancelled: CancelFn = never_cancelled,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        self.max_size = batch_size  # the memory bound, lowered on out-of-memory
        self.target_seconds = target_seconds
        self.batch_size = batch_size if target_seconds is None else min(
            batch_size, self.PROBE_ITEMS
        )  # fmt: skip
        self.on_oom = on_oom or (lambda: None)
        self.is_cancelled = is_cancelled
        self.clock = clock
        self.halvings = 0

    def run(self, n: int, forward: Callable[[int, int], np.ndarray]) -> np.ndarray:
        outputs: list[np.ndarray] = []
        start = 0
        while start < n:
            check_cancelled(self.is_cancelled)
            stop = min(n, start + self.batch_size)
            failed = False
            began = self.clock()
            try:
                outputs.append(forward(start, stop))
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                if stop - start <= 1:
                    raise PredictError(
                        "The device ran out of memory even for one parcel at a time; close "
                        "other programs using the GPU, or classify on the CPU (device cpu)."
                    ) from exc
                failed = True  # retried outside the handler, so the traceback's tensors go
            if failed:
                self.on_oom()
                self.max_size = max(1, (stop - start) // 2)
                self.batch_size = min(self.batch_size, self.max_size)
                self.halvings += 1
                LOG.warning(
                    "Out of memory with %d parcels per batch; retrying with %d.",
                    stop - start, self.batch_size,
                )  # fmt: skip
                continue
            self._fit_to_time(stop - start, self.clock() - began)
            start = stop
        if not outputs:
            return np.zeros((0, 0), np.float32)
        return np.concatenate(outputs)

    def _fit_to_time(self, items: int, seconds: float) -> None:
        if self.target_seconds is None:
            return
        ideal = int(self.target_seconds * items / seconds) if seconds > 0 else 2 * items
        size = max(1, min(ideal, 2 * self.batch_size, self.max_size))
        self.batch_size = 1 << (size.bit_length() - 1)


# -- the classifier ------------------------------------------------------------------------------


def resolve_device(device: str = "auto") -> torch.device:
    """The device for ``device`` (auto, cpu, cuda, cuda:N; :func:`.device.choose_device`), after
    a test computation: a GPU this torch build cannot run falls back to the CPU with a warning.
    An unavailable CUDA asked for by name is a :class:`PredictError` saying what to do."""
    from .device import working_device

    try:
        return working_device(device)
    except ValueError as exc:
        raise PredictError(f"{str(exc)[:1].upper()}{str(exc)[1:]}") from None


class Classifier:
    """A loaded model with its card, ready to classify parcels of any stack.

    Load once (:meth:`load`), then :meth:`classify` as many layers as needed.
    """

    def __init__(self, model: nn.Module, card: ModelCard, device: torch.device) -> None:
        check_card(card)
        from .inference import for_inference

        # Same logits, less work (folded BatchNorm, channels-last, InferenceGRU).
        self.model = for_inference(model, device)
        self.card = card
        self.device = device
        from .normalise import Normaliser

        self.normaliser = Normaliser.from_card(card)
        if card.date_grid is not None:
            self.normaliser.check_dates(len(card.date_grid))

    @classmethod
    def load(cls, model: str | Path, device: str = "auto") -> Classifier:
        """From a bundled model's name or a model file; ``ModelFileError``/``PredictError``."""
        from .modelcard import load_model

        card_path = find_model(model)
        dev = resolve_device(device)
        net, card = load_model(card_path, device=dev)
        return cls(net, card, dev)

    @property
    def n_classes(self) -> int:
        return len(self.card.classes)

    def prepare(self, stack: Stack) -> TimeAlignment:
        """Check the stack against the card and work out the time alignment."""
        alignment = align_dates([d.date for d in stack.dates], self.card.date_grid)
        if self.card.date_grid is None:
            self.normaliser.check_dates(len(stack))
        return alignment

    def classify(
        self,
        parcels: Any,
        stack: str | Path | Stack,
        config: PredictConfig | None = None,
        *,
        progress: ProgressFn = no_progress,
        is_cancelled: CancelFn = never_cancelled,
        summary: PredictSummary | None = None,
    ) -> Iterator[ParcelPrediction]:
        """Yield one :class:`ParcelPrediction` per parcel (in streaming order; ``index`` says
        which). ``parcels``: a path to any OGR source or a GeoDataFrame (any CRS).

        Raises :class:`~cropmodels.progress.Cancelled` between batches when ``is_cancelled()``.
        """
        config = config or PredictConfig()
        summary = summary if summary is not None else PredictSummary()
        stack = open_stack(stack)
        alignment = self.prepare(stack)
        summary.notes.extend(alignment.notes)  # the caller shows them (CLI, Processing log)
        size = config.batch_size or auto_batch_size(
            self.card, len(stack), self.device, config.memory_mb
        )
        batcher = AdaptiveBatcher(
            size, on_oom=self._free_device_memory, target_seconds=config.max_batch_seconds,
            is_cancelled=is_cancelled,
        )  # fmt: skip
        summary.device = str(self.device)
        summary.batch_size = size
        LOG.info("Classifying with %s on %s, %d parcels per batch", self.card.name,
                 self.device, size)  # fmt: skip
        kind = self.card.input_kind
        extract_config = ExtractConfig(
            patch_size=self.card.patch_size or 32,
            memory_mb=config.memory_mb,
            workers=config.workers,
            process_workers=config.process_workers,
            patches=kind != FEATURES,  # a feature model reads no patch: none is made
        )
        pending: list[ParcelData] = []
        # Not for feature models: a GRU on 20 numbers per date runs 20,000 parcels/s on one
        # thread, and slicing it only adds overhead (13,700 parcels/s measured).
        pool = _CpuForwardPool.start() if self.device.type == "cpu" and kind != FEATURES else None
        reuse: dict[str, np.ndarray] = {}  # the batch array, kept from one batch to the next

        def flush() -> Iterator[ParcelPrediction]:
            probabilities = self._run(pending, alignment, batcher, pool, reuse)
            for data, p in zip(pending, probabilities, strict=True):
                yield ParcelPrediction(data.index, data.status, data.n_clear_dates, p)
            pending.clear()

        def emit(prediction: ParcelPrediction) -> ParcelPrediction:
            summary.add(prediction)
            return prediction

        stream = extract(
            parcels, stack, extract_config, progress=progress, is_cancelled=is_cancelled,
            summary=summary.extraction,
        )  # fmt: skip
        # Extraction runs on its own thread up to one batch ahead, while the model computes.
        ahead = batcher.max_size if config.reads_ahead(self.device.type) else 0
        stream = read_ahead(stream, ahead, "extract")
        try:
            for data in stream:
                check_cancelled(is_cancelled)
                if not data.usable:
                    yield emit(ParcelPrediction(data.index, data.status, data.n_clear_dates))
                    continue
                if data.n_clear_dates < config.min_clear_dates:
                    yield emit(ParcelPrediction(data.index, FEW_CLEAR, data.n_clear_dates))
                    continue
                # keep only what the model reads: a batch of GRU parcels holds no patches
                if kind == FEATURES:
                    data.patches = data.mask = None
                else:
                    data.features = None
                pending.append(data)
                if len(pending) >= batcher.max_size:
                    yield from map(emit, flush())
            if pending:
                yield from map(emit, flush())
        finally:
            stream.close()
            if pool is not None:
                pool.close()
            summary.batch_size = batcher.max_size
            summary.oom_halvings = batcher.halvings

    # -- internals ------------------------------------------------------------------------------

    def _free_device_memory(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _inputs(
        self, batch: list[ParcelData], reuse: dict[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Stack-date arrays of a batch, quantised as a store holds them (uint16 values).

        With ``reuse`` (a dict kept across the batches of one run), the patches go into one
        array kept there: a fresh 60 MB array per batch is mapped anew by the C library, and
        touching its pages cost more than copying into it."""
        if self.card.input_kind == FEATURES:
            x = np.stack([d.features for d in batch]).astype(np.float32, copy=False)
            return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), None
        x = _held(reuse, "patches", (len(batch), *batch[0].patches.shape))
        chunk = _chunk_parcels(x)
        for start in range(0, len(batch), chunk):
            _stack_quantised(batch, x, start, min(len(batch), start + chunk))
        return x, np.stack([d.mask for d in batch])

    def _ready_slices(
        self,
        batch: list[ParcelData],
        weights: Tensor | None,
        reuse: dict[str, np.ndarray] | None,
    ) -> tuple[Callable[[int, int], Tensor], np.ndarray]:
        """For patch models on the CPU: a function giving the model inputs of parcels
        ``start:stop``, stacked, quantised as :meth:`_inputs`, resampled to the model's dates
        and normalised, and the batch's pixel masks.

        Each slice is made on the thread that runs its forward pass, a few parcels at a time:
        every step then finds its 4 MB in the cache, where the same steps over a whole 60 MB
        batch went to memory for each of them (0.28 against 0.40 ms per parcel of 24 dates),
        and the main thread is left free. The values are those of :meth:`_inputs` followed by
        the normaliser, entry for entry (tested). A slice is made again from the parcels'
        patches if it is computed again, so a retried slice is never normalised twice."""
        import torch

        masks = np.stack([d.mask for d in batch])
        all_masks = torch.from_numpy(masks)
        n, shape = len(batch), batch[0].patches.shape
        stacked = _held(reuse, "patches", (n, *shape))
        if weights is None:
            ready = stacked
        else:
            ready = _held(reuse, "aligned", (n, weights.shape[0], *shape[1:]))
        chunk = _chunk_parcels(stacked)

        def make(start: int, stop: int) -> Tensor:
            for a in range(start, stop, chunk):
                b = min(stop, a + chunk)
                xt = _stack_quantised(batch, stacked, a, b)
                out = torch.from_numpy(ready[a:b])
                if weights is not None:  # (Tm, Ts) @ (k, Ts, rest) -> (k, Tm, rest)
                    torch.matmul(weights, xt.reshape(b - a, xt.shape[1], -1),
                                 out=out.view(b - a, out.shape[1], -1))  # fmt: skip
                self.normaliser.apply_torch_(out, all_masks[a:b])
            return torch.from_numpy(ready[start:stop])

        return make, masks

    def _run(
        self,
        batch: list[ParcelData],
        alignment: TimeAlignment,
        batcher: AdaptiveBatcher,
        pool: _CpuForwardPool | None = None,
        reuse: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        import torch

        from .train import AMP_EXCLUDED, _forward

        dev = self.device
        weights = (
            None if alignment.weights is None else torch.as_tensor(alignment.weights, device=dev)
        )
        doy_all = torch.as_tensor(alignment.doy, device=dev)
        amp = dev.type == "cuda" and self.card.architecture not in AMP_EXCLUDED
        cpu_patches = dev.type == "cpu" and self.card.input_kind != FEATURES
        if cpu_patches:  # each slice made on its forward thread, in cache-sized chunks
            ready, mask = self._ready_slices(batch, weights, reuse)
        else:
            x, mask = self._inputs(batch, reuse)

        def prepared(xt: Tensor, mt: Tensor | None) -> Tensor:
            """Resampled to the model's dates and normalised, in place on ``xt`` (which must be
            a copy: the batcher may retry a slice)."""
            if weights is not None:  # (Tm, Ts) @ (B, Ts, rest) -> (B, Tm, rest)
                shape = xt.shape
                xt = torch.matmul(weights, xt.reshape(shape[0], shape[1], -1))
                xt = xt.reshape(shape[0], weights.shape[0], *shape[2:])
            return self.normaliser.apply_torch_(xt, mt)

        def forward(start: int, stop: int) -> np.ndarray:
            if pool is not None:  # only ever made for the CPU
                return pool.map_slices(compute, start, stop)
            return compute(start, stop)

        def compute(start: int, stop: int) -> np.ndarray:
            mt = None if mask is None else torch.from_numpy(mask[start:stop]).to(dev)
            if cpu_patches:
                xt = ready(start, stop)
            else:  # features (small: a copy, in case the slice is retried), or on the device
                xt = prepared(torch.from_numpy(x[start:stop]).to(dev, copy=True), mt)
            doy = doy_all.expand(stop - start, -1)
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
                logits = _forward(self.model, xt, mt, doy)
            return torch.softmax(logits.float(), dim=1).cpu().numpy()

        return batcher.run(len(batch), forward)


CHUNK_BYTES = 4 << 20
"""Batch preparation works on this many bytes of patches at a time (cache-sized): 4 MB measured
fastest on the development machine (0.28 ms per parcel of 24 dates, 0.33 at 1 MB, 0.40 for a
whole batch at once)."""


def _chunk_parcels(x: np.ndarray) -> int:
    """Parcels of ``x`` (n, ...) in :data:`CHUNK_BYTES`."""
    return max(1, CHUNK_BYTES // max(1, x[0].nbytes))


def _held(reuse: dict[str, np.ndarray] | None, key: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of ``shape``: a view of the one kept in ``reuse[key]`` when it is large
    enough (a fresh batch-sized array per batch is mapped anew, and touching its pages cost
    more than the work done in it), else a new one, kept there."""
    held = None if reuse is None else reuse.get(key)
    if held is None or held.shape[0] < shape[0] or held.shape[1:] != shape[1:]:
        held = np.empty(shape, np.float32)
        if reuse is not None:
            reuse[key] = held
    return held[: shape[0]]


def _stack_quantised(batch: list[ParcelData], out: np.ndarray, a: int, b: int) -> Tensor:
    """The patches of parcels ``a:b`` of ``batch`` into ``out[a:b]``, as a store holds them:
    NaN (never from the extractor) -> 0, then rounded and clipped to 0..65535 (uint16), in
    place in torch (numpy's clip alone took longer than the three). Returns the tensor sharing
    ``out[a:b]``'s memory."""
    import torch

    np.stack([d.patches for d in batch[a:b]], out=out[a:b])
    xt = torch.from_numpy(out[a:b])
    return torch.nan_to_num_(xt, nan=0.0, posinf=65535.0, neginf=0.0).round_().clamp_(0, 65535)


class _CpuForwardPool:
    """Forward passes on the CPU as slices computed by one thread per core, each with one torch
    thread, instead of one pass with torch's OpenMP threads.

    Beside the extractor's threads, OpenMP threads wait for each other at every operation and
    spin while one of them is preempted. Measured on 2 cores: ``cnn_gru9`` alone ran 1,100
    parcels/s this way against 1,040 with OpenMP; classifying 26,200 parcels (bench_scale) took
    65.0 s against 70.3. Slices give the same values as one pass: every parcel is computed
    independently in eval mode.
    """

    MIN_SLICE = 4  # parcels: smaller slices are not split further

    def __init__(self, threads: int) -> None:
        import concurrent.futures as cf

        import torch

        self.threads = threads
        self.executor = cf.ThreadPoolExecutor(
            threads, thread_name_prefix="forward", initializer=torch.set_num_threads, initargs=(1,)
        )

    @classmethod
    def start(cls) -> _CpuForwardPool | None:
        """A pool of torch's thread count (None when that is one)."""
        import torch

        threads = torch.get_num_threads()
        return cls(threads) if threads > 1 else None

    def map_slices(self, compute: Callable[[int, int], np.ndarray], start: int, stop: int):
        n = min(self.threads, max(1, (stop - start) // self.MIN_SLICE))
        if n == 1:
            return compute(start, stop)
        bounds = np.linspace(start, stop, n + 1).round().astype(int)
        futures = [
            self.executor.submit(compute, int(a), int(b)) for a, b in itertools.pairwise(bounds)
        ]
        return np.concatenate([f.result() for f in futures])

    def close(self) -> None:
        import torch

        self.executor.shutdown(wait=True, cancel_futures=True)
        # torch.set_num_threads(1) on the workers also set the default of threads started
        # later: give it back its value.
        torch.set_num_threads(self.threads)


def classify(
    parcels: Any,
    stack: str | Path | Stack,
    model: str | Path | Classifier,
    config: PredictConfig | None = None,
    *,
    progress: ProgressFn = no_progress,
    is_cancelled: CancelFn = never_cancelled,
    summary: PredictSummary | None = None,
) -> Iterator[ParcelPrediction]:
    """:meth:`Classifier.classify` with a model given by name, file or :class:`Classifier`."""
    config = config or PredictConfig()
    classifier = model if isinstance(model, Classifier) else Classifier.load(model, config.device)
    yield from classifier.classify(
        parcels, stack, config, progress=progress, is_cancelled=is_cancelled, summary=summary
    )


# -- a whole layer to a file (the command line) -------------------------------------------------


@dataclass
class ClassifiedLayer:
    """What :func:`classify_to_file` wrote."""

    path: Path
    n_parcels: int
    summary: PredictSummary
    renamed: dict[str, str]  # output field -> name written, where an input field had the name
    n_disagreeing: int | None = None


def classify_to_file(
    parcels: str | Path,
    stack: str | Path,
    model: str | Path | Classifier,
    out: str | Path,
    config: PredictConfig | None = None,
    *,
    layer: str | None = None,
    declared_field: str | None = None,
    overwrite: bool = False,
    scheduler: Any = None,
    progress: ProgressFn = no_progress,
    is_cancelled: CancelFn = never_cancelled,
) -> ClassifiedLayer:
    """Classify a parcel file and write every input field plus the prediction fields.

    The output (any OGR format by extension, e.g. ``.gpkg``) is written completely or not at
    all: to a temporary file beside it, renamed into place at the end. With ``declared_field``
    an ``agrees`` field compares prediction and declaration, ``check_rank`` numbers the
    parcels in the order an inspector should check them, and the features are written in it
    suspicious first (:func:`suspicion_order`). With ``scheduler`` (a dask.distributed address
    or client) spatial blocks of parcels are classified on the cluster's workers
    (:func:`.cluster.classify_on_cluster`), which must see the stack at the same path.
    """
    import tempfile

    import pandas as pd

    from .extract import read_parcels
    from .files import check_output_folder

    out = Path(out)
    if out.exists() and not overwrite:
        raise PredictError(
            f"{out} already exists; choose another output or allow overwriting (--overwrite)."
        )
    check_output_folder(out)  # now, not after the whole layer is classified
    config = config or PredictConfig()
    classifier = model if isinstance(model, Classifier) else Classifier.load(model, config.device)
    card = classifier.card
    gdf = read_parcels(parcels, layer=layer)
    columns = [c for c in gdf.columns if c != gdf.geometry.name]
    if declared_field is not None and declared_field not in columns:
        raise PredictError(
            f"The parcel layer has no field {declared_field!r}; its fields are: "
            f"{', '.join(columns)}."
        )
    wanted = output_field_names(card, declared=declared_field is not None)
    names = resolve_field_names(columns, wanted)
    renamed = {k: v for k, v in names.items() if k != v}
    for original, new in renamed.items():
        LOG.warning("The parcel layer already has a field %r: the prediction's is named %r.",
                    original, new)  # fmt: skip

    opened = open_stack(stack)
    check_parcels(gdf, opened)  # a layer that cannot be classified at all: an error, no file
    summary = PredictSummary()
    results: list[ParcelPrediction | None] = [None] * len(gdf)
    if scheduler is not None:
        from .cluster import classify_on_cluster

        stream = classify_on_cluster(
            gdf, stack, classifier, scheduler, config, summary=summary, progress=progress,
            is_cancelled=is_cancelled,
        )  # fmt: skip
    else:
        stream = classifier.classify(
            gdf, opened, config, progress=progress, is_cancelled=is_cancelled, summary=summary
        )
    for prediction in stream:
        results[prediction.index] = prediction
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:  # the extractor yields every parcel once; anything else is a bug
        raise RuntimeError(f"no result for parcels {missing[:5]}")
    predictions: list[ParcelPrediction] = results  # type: ignore[assignment]

    output = gdf.copy()
    for name, values in prediction_columns(predictions, card).items():
        output[names[name]] = values
    n_disagreeing = None
    if declared_field is not None:
        declared = gdf[declared_field].tolist()
        agrees = [agreement(p, d, card) for p, d in zip(predictions, declared, strict=True)]
        output[names[AGREES]] = pd.array(agrees, dtype="boolean")
        n_disagreeing = sum(a is False for a in agrees)
        order = suspicion_order(agrees, [p.confidence for p in predictions])
        output[names[CHECK_RANK]] = check_ranks(order)
        output = output.iloc[order]
    output = output[[*columns, *(names[n] for n in wanted), gdf.geometry.name]]

    check_cancelled(is_cancelled)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # OGR drivers want to create the file themselves
    try:
        output.to_file(tmp, layer=out.stem if out.suffix.lower() == ".gpkg" else None)
        from .files import publish_mode

        publish_mode(tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ClassifiedLayer(out, len(gdf), summary, renamed, n_disagreeing)


def describe_counts(counts: Mapping[str, int]) -> str:
    """``"16 ok, 2 outside_stack (the parcel does not overlap the image stack)"``."""
    parts = []
    for status in sorted(counts, key=lambda s: (s != OK, s)):
        text = STATUS_TEXT.get(status) if status != OK else None
        parts.append(f"{counts[status]} {status}" + (f" ({text})" if text else ""))
    return ", ".join(parts)


__all__ = [
    "AGREES",
    "CHECK_RANK",
    "CLASSIFIED",
    "CONFIDENCE",
    "CROP_CLASS",
    "CROP_CODE",
    "MARGIN",
    "N_CLEAR_DATES",
    "STATUS",
    "AdaptiveBatcher",
    "ClassifiedLayer",
    "Classifier",
    "ParcelPrediction",
    "PredictConfig",
    "PredictError",
    "PredictSummary",
    "TimeAlignment",
    "agreement",
    "align_dates",
    "auto_batch_size",
    "bundled_model_names",
    "bundled_models",
    "check_card",
    "check_ranks",
    "classify",
    "classify_to_file",
    "declared_class_index",
    "describe_counts",
    "evaluate_predictions",
    "find_model",
    "interpolation_weights",
    "is_out_of_memory",
    "output_field_names",
    "prediction_columns",
    "prediction_values",
    "probability_field_names",
    "resolve_field_names",
    "suspicion_order",
]
