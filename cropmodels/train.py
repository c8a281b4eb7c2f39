"""Training with the paper's protocol: any registry model on a parcel store.

Garnot et al. (IGARSS 2019), section 2.2: Adam, learning rate 1e-3, batch 32, 50 epochs; 5-fold
cross-validation with train:val:test = 3:1:1; the epoch with the best validation result is
evaluated on the test fold. Here, concretely:

* **Labels** (:func:`plan_labels`): store rows that are usable (status ok / partly_outside) and
  labelled; codes go through an optional class mapping; unknown codes are an error by default
  (or excluded, or merged into "Other"); classes with fewer members than folds cannot appear in
  every fold, so they are dropped with a warning naming them, or merged into "Other"
  (``merge_rare``). Everything excluded is counted and reported.
* **Folds** (:func:`assign_parts`): the labelled rows are split into 5 parts, stratified by class
  (scikit-learn ``StratifiedKFold``); fold k tests on part k, validates on part k+1 (mod 5) and
  trains on the other three (3:1:1). ``grouping="spatial"`` forms the parts from spatial blocks
  (``StratifiedGroupKFold`` on block ids, :func:`spatial_blocks`): neighbouring parcels share
  soil, weather and often farmer, so random folds put near-duplicates on both sides and inflate
  the scores. Grouped parts are then numbered so that no fold's training parts lack a class
  that two large groups hold (:func:`_order_parts`).
* **Normalisation** (:mod:`.normalise`): per date and channel, fitted on each fold's training
  part only; the shipped model's statistics go into its card.
* **Selection**: the validation *F-score* (unweighted class average, the paper's ranking metric)
  chooses the epoch; ties keep the earlier epoch.
* **Time-shuffle** (Table 4, ``shuffle_dates``): each sample's dates are randomly permuted, anew
  at every training step and once (fixed per parcel) for validation and test, after
  normalisation (each date keeps its own statistics); ``doy`` is permuted along, so only the
  order the network sees changes.
* **Determinism**: python, numpy and torch are seeded; each fold derives its own seeds from
  (seed, fold), batch order from (seed, fold, epoch); on CPU deterministic algorithms are
  switched on for the run (and restored after). Same seed + data -> same metrics.
* **Device**: CUDA when present (``device="auto"``), with mixed precision (float16 autocast and
  gradient scaling) unless ``amp=False``; CPU otherwise.
* **Resume**: with a work folder, every epoch writes a checkpoint (weights, optimizer, scaler,
  RNG state, best epoch and its weights, history) atomically; a finished fold writes its test
  predictions. The folder is keyed by a hash of the store and the settings, so rerunning the
  same command resumes where it stopped, and different settings never mix. Checkpoints are read
  with ``torch.load(weights_only=True)``: tensors and plain containers only, never pickled code.
* **Progress**: ``progress(fraction, message)`` with the fold, epoch, validation F-score and an
  ETA; ``is_cancelled()`` is checked between batches (raises :class:`~.progress.Cancelled`;
  completed epochs are kept for resuming).
* **Shipped model** (:func:`train_model`): the paper only evaluates by CV. The model written to
  disk is trained on all usable labelled parcels but one part, which is held out as validation
  for choosing the epoch (so 4:1 train:val, said so in the card); its card carries the CV
  metrics (mean, std, per fold, per class, summed confusion matrix).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__, distributed
from .architectures import FEATURES, PATCHES, get_spec
from .device import OomBackoff, choose_device, run_with_cpu_fallback, working_device
from .distributed import DistInfo, gather_rows, share
from .evaluate import CVResult, fold_metrics, json_safe
from .files import check_output_folder, write_text_atomic
from .modelcard import CropClass
from .normalise import Normaliser
from .progress import CancelFn, ProgressFn, check_cancelled, never_cancelled, no_progress
from .stack import PAPER_BANDS

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .modelcard import ModelCard
    from .store import Store

LOG = logging.getLogger(__name__)

GROUPINGS = ("stratified", "spatial")
UNKNOWN_HANDLING = ("error", "exclude", "other")
FINAL_FITS = ("holdout", "all")
OTHER_NAME = "Other"
OTHER_COLOUR = "#b0b0b0"
# tab20, for classes whose nomenclature gives no colour
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)  # fmt: skip
CHECKPOINT_VERSION = 1
_CARD_FOLD_KEYS = (
    "fold", "overall_accuracy", "fscore", "precision", "recall", "per_class_fscore",
    "best_epoch", "n_test",
)  # fmt: skip


# -- configuration ------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Settings of a training run; the defaults are the paper's protocol."""

    model: str = "cnn_gru9"
    hparams: dict[str, Any] = field(default_factory=dict)
    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    n_folds: int = 5
    folds: list[int] | None = None  # which CV folds to run (None: all); for quick runs
    grouping: str = "stratified"  # or "spatial" (needs groups, see spatial_blocks)
    block_size_m: float = 1000.0  # spatial block side, recorded for provenance
    merge_rare: bool = False  # classes with < n_folds members: merge into "Other" (else drop)
    final_fit: str = "holdout"  # the shipped model: "holdout" or "all" (see train_model)
    unknown_codes: str = "error"  # codes outside the nomenclature: error, exclude or other
    shuffle_dates: bool = False  # the time-shuffle experiment (Table 4)
    per_date_normalisation: bool = True
    device: str = "auto"  # auto (cuda if present), cpu, cuda, cuda:1 ...
    amp: bool = True  # mixed precision on CUDA (never on CPU)
    eval_batch_size: int = 128
    cache_mb: float = 2048.0  # rows whose arrays fit are read once and kept in memory
    workdir: str | None = None  # checkpoints for resuming; None: no checkpoints
    name: str | None = None  # model name in the card

    def __post_init__(self) -> None:
        get_spec(self.model)  # ValueError listing the valid names
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if not (isinstance(self.lr, int | float) and self.lr > 0):
            raise ValueError(f"lr must be > 0, not {self.lr!r}")
        if not isinstance(self.n_folds, int) or self.n_folds < 3:
            raise ValueError(
                f"n_folds must be an integer >= 3 (train:val:test needs three parts), "
                f"not {self.n_folds!r}"
            )
        if self.folds is not None:
            self.folds = sorted({int(k) for k in self.folds})
            bad = [k for k in self.folds if not 0 <= k < self.n_folds]
            if bad or not self.folds:
                raise ValueError(f"folds must be a non-empty subset of 0..{self.n_folds - 1}")
        if self.grouping not in GROUPINGS:
            raise ValueError(
                f"grouping must be one of {', '.join(GROUPINGS)}, not {self.grouping!r}"
            )
        if self.unknown_codes not in UNKNOWN_HANDLING:
            raise ValueError(
                f"unknown_codes must be one of {', '.join(UNKNOWN_HANDLING)}, "
                f"not {self.unknown_codes!r}"
            )
        if self.block_size_m <= 0:
            raise ValueError(f"block_size_m must be > 0, not {self.block_size_m!r}")
        if self.final_fit not in FINAL_FITS:
            raise ValueError(
                f"final_fit must be one of {', '.join(FINAL_FITS)}, not {self.final_fit!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    def result_key(self) -> dict[str, Any]:
        """The settings that change results (not the device, paths or display name)."""
        ignore = {"device", "eval_batch_size", "cache_mb", "workdir", "name", "folds"}
        return {k: v for k, v in self.to_dict().items() if k not in ignore}


# -- labels -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassMap:
    """Source label code -> output class (code, name, colour or None)."""

    targets: Mapping[int, tuple[int, str, str | None]]

    def classes(self) -> dict[int, tuple[str, str | None]]:
        return {code: (name, colour) for code, name, colour in self.targets.values()}


def read_class_map(path: str | Path) -> ClassMap:
    """A CSV with columns ``source_code,code,name`` and optionally ``colour`` (``#rrggbb``).

    One row per label code of the store; several source codes may share a class (the same
    ``code`` must then have the same name). Example::

        source_code,code,name,colour
        1200,1,Maize,#f5c400
        9120,2,Grassland,#66bb44
        7900,2,Grassland,#66bb44
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise ValueError(f"cannot read the class mapping {path}: {exc}") from exc
    needed = {"source_code", "code", "name"}
    if not rows or not needed <= set(rows[0]):
        raise ValueError(
            f"{path} must be a CSV with a header source_code,code,name[,colour] and one row per "
            "label code"
        )
    targets: dict[int, tuple[int, str, str | None]] = {}
    names: dict[int, str] = {}
    for i, row in enumerate(rows, start=2):
        try:
            source, code = int(row["source_code"]), int(row["code"])
        except (TypeError, ValueError):
            raise ValueError(f"{path} line {i}: source_code and code must be integers") from None
        name = (row.get("name") or "").strip()
        colour = (row.get("colour") or "").strip() or None
        if not name:
            raise ValueError(f"{path} line {i}: empty class name")
        if names.setdefault(code, name) != name:
            raise ValueError(
                f"{path} line {i}: class {code} is named both {names[code]!r} and {name!r}"
            )
        if source in targets:
            raise ValueError(f"{path} line {i}: source code {source} is mapped twice")
        targets[source] = (code, name, colour)
    return ClassMap(targets)


@dataclass
class LabelPlan:
    """Which store rows train and test, and as which class.

    ``rows`` (n,) store rows kept; ``y`` (n,) their class index into ``classes``;
    ``label_mapping`` source code -> class code for every code seen; ``excluded`` counts by
    reason; ``notes`` says in words what was dropped or merged.
    """

    classes: list[CropClass]
    rows: np.ndarray
    y: np.ndarray
    label_mapping: dict[int, int]
    excluded: dict[str, int]
    notes: list[str]

    @property
    def counts(self) -> dict[str, int]:
        numbers = np.bincount(self.y, minlength=len(self.classes))
        return {c.name: int(n) for c, n in zip(self.classes, numbers, strict=True)}

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]


def plan_labels(
    labels: np.ndarray,
    usable: np.ndarray,
    *,
    n_folds: int = 5,
    store_classes: Sequence[Mapping[str, Any]] | None = None,
    class_map: ClassMap | None = None,
    merge_rare: bool = False,
    unknown_codes: str = "error",
) -> LabelPlan:
    """Decide the classes and the rows (see the module docstring); pure, so it is testable.

    ``labels`` (N,) codes with -1 unlabelled; ``usable`` (N,) bool. The nomenclature is the
    class mapping when given, else the store's class list when it has one, else every code seen.
    """
    labels = np.asarray(labels, dtype=np.int64)
    usable = np.asarray(usable, dtype=bool)
    if labels.shape != usable.shape:
        raise ValueError("labels and usable must have the same length")
    unlabelled = labels == -1
    excluded = {
        "unlabelled": int(unlabelled.sum()),
        "not_usable": int((~unlabelled & ~usable).sum()),
        "unknown_code": 0,
        "rare_class": 0,
    }
    candidate = np.flatnonzero(~unlabelled & usable)
    if not len(candidate):
        raise ValueError(
            f"the store has no usable labelled parcel ({excluded['unlabelled']} unlabelled, "
            f"{excluded['not_usable']} labelled but not extracted); extract with a label field "
            "(--label-field) and check the parcels overlap the stack"
        )
    notes: list[str] = []
    # nomenclature: source code -> target code; target code -> (name, colour)
    info: dict[int, tuple[str, str | None]] = {}
    mapping: dict[int, int] = {}
    if class_map is not None:
        mapping = {s: t[0] for s, t in class_map.targets.items()}
        info = class_map.classes()
        origin = "the class mapping"
    elif store_classes:
        for c in store_classes:
            code = int(c["code"])
            mapping[code] = code
            info[code] = (str(c["name"]), c.get("colour"))
        origin = "the store's class list"
    else:
        origin = ""
    codes = labels[candidate]
    seen = np.unique(codes)
    if origin:
        unknown = [int(c) for c in seen if int(c) not in mapping]
    else:
        unknown = []
        for c in seen:
            mapping[int(c)] = int(c)
            info[int(c)] = (f"class {int(c)}", None)
    other_code: int | None = None

    def other() -> int:
        nonlocal other_code
        if other_code is None:
            named = [code for code, (name, _) in info.items() if name.casefold() == "other"]
            if named:
                other_code = named[0]
            else:
                other_code = max([*info, *mapping.values(), 0]) + 1
                info[other_code] = (OTHER_NAME, OTHER_COLOUR)
        return other_code

    if unknown:
        counts = {c: int((codes == c).sum()) for c in unknown}
        listed = ", ".join(f"{c} ({n} parcels)" for c, n in list(counts.items())[:10])
        if unknown_codes == "error":
            raise ValueError(
                f"{len(unknown)} label code(s) are not in {origin}: {listed}"
                f"{' ...' if len(unknown) > 10 else ''}. Add them to a class mapping "
                "(--class-map; in QGIS 'Class mapping (CSV)'), or exclude them or merge them "
                "into 'Other' (--unknown-codes exclude|other; in QGIS 'Label codes not in the "
                "class mapping')"
            )
        if unknown_codes == "exclude":
            excluded["unknown_code"] = sum(counts.values())
            notes.append(f"excluded parcels with codes not in {origin}: {listed}")
        else:
            for c in unknown:
                mapping[c] = other()
            notes.append(f"merged codes not in {origin} into '{OTHER_NAME}': {listed}")
    kept = np.array([int(c) in mapping for c in codes], dtype=bool)
    rows, target = candidate[kept], np.array([mapping[int(c)] for c in codes[kept]], np.int64)

    def census(t: np.ndarray) -> dict[int, int]:
        values, numbers = np.unique(t, return_counts=True)
        return {int(v): int(n) for v, n in zip(values, numbers, strict=True)}

    count = census(target)
    rare = sorted(c for c, n in count.items() if n < n_folds)
    if rare:
        listed = ", ".join(f"{info[c][0]} ({count[c]})" for c in rare)
        if merge_rare:
            into = other()
            for source, t in list(mapping.items()):
                if t in rare:
                    mapping[source] = into
            target = np.where(np.isin(target, rare), into, target)
            notes.append(
                f"classes with fewer than {n_folds} parcels (one per fold) merged into "
                f"'{info[into][0]}': {listed}"
            )
            count = census(target)
            if count.get(into, 0) < n_folds:
                rare = [into]
                listed = f"{info[into][0]} ({count.get(into, 0)})"
            else:
                rare = []
        if rare:
            drop = np.isin(target, rare)
            excluded["rare_class"] = int(drop.sum())
            rows, target = rows[~drop], target[~drop]
            message = (
                f"dropped classes with fewer than {n_folds} parcels (stratified {n_folds}-fold "
                f"CV needs one per fold): {listed}; merge them with --merge-rare"
            )
            notes.append(message)
            LOG.warning(message)
    present = sorted(set(target.tolist()))
    if len(present) < 2:
        raise ValueError(
            f"only {len(present)} class remains with at least {n_folds} usable labelled "
            f"parcels ({len(rows)} parcels); a classifier needs two or more"
        )
    classes = []
    for i, code in enumerate(present):
        name, colour = info[code]
        classes.append(CropClass(int(code), str(name), colour or PALETTE[i % len(PALETTE)]))
    index = {c.code: i for i, c in enumerate(classes)}
    y = np.array([index[t] for t in target], dtype=np.int64)
    seen_codes = set(codes.tolist())
    used = {int(s): int(t) for s, t in mapping.items() if t in index and s in seen_codes}
    for note in notes:
        LOG.info(note)
    return LabelPlan(classes, rows, y, used, excluded, notes)


# -- folds --------------------------------------------------------------------------------------


def assign_parts(
    y: np.ndarray, n_folds: int = 5, seed: int = 0, groups: np.ndarray | None = None
) -> np.ndarray:
    """Part (0..n_folds-1) of each sample, stratified by class ``y``; with ``groups``, whole
    groups stay in one part (``StratifiedGroupKFold``)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(y)
    parts = np.full(len(y), -1, dtype=np.int64)
    if groups is None:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y)
    else:
        groups = np.asarray(groups)
        if len(groups) != len(y):
            raise ValueError(f"{len(groups)} groups for {len(y)} samples")
        n_groups = len(np.unique(groups))
        if n_groups < n_folds:
            raise ValueError(
                f"only {n_groups} spatial block(s) for {n_folds} folds; use smaller blocks "
                "(--block-size) or stratified folds"
            )
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y, groups)
    for k, (_, test) in enumerate(splits):
        parts[test] = k
    empty = [k for k in range(n_folds) if not (parts == k).any()]
    if empty:
        raise ValueError(f"fold part(s) {empty} are empty: too few parcels for {n_folds} folds")
    if groups is not None:
        parts = _order_parts(parts, y, n_folds)
    return parts


def _order_parts(parts: np.ndarray, y: np.ndarray, n_folds: int) -> np.ndarray:
    """Renumber grouped parts so that every fold trains on as many samples of every class as
    possible.

    Fold k tests on part k and validates on part k+1, so two parts that hold most of a class
    (a class with a few large groups) must not be neighbours in the cycle, or one fold trains
    on almost none of it. Among all orders of the parts (up to 7 folds) the one whose sorted
    (fold, class) training counts are lexicographically largest wins; ties keep the order
    ``StratifiedGroupKFold`` gave. Which parcels share a part is unchanged.
    """
    if n_folds > 7:
        return parts
    classes = np.unique(y)
    counts = np.array([[np.sum((parts == p) & (y == c)) for c in classes] for p in range(n_folds)])
    total = counts.sum(axis=0)

    def key(order: tuple[int, ...]) -> tuple[int, ...]:
        # order[j] = the old part that becomes part j
        ranked = counts[list(order)]
        train = [total - ranked[k] - ranked[(k + 1) % n_folds] for k in range(n_folds)]
        return tuple(sorted(np.concatenate(train).tolist()))

    best = max(itertools.permutations(range(n_folds)), key=key)  # first maximum: stable
    new = np.empty_like(parts)
    for j, old in enumerate(best):
        new[parts == old] = j
    return new


def fold_split(parts: np.ndarray, fold: int, n_folds: int) -> tuple[np.ndarray, ...]:
    """Positions (train, val, test) of fold ``fold``: test part k, val part k+1, train the rest."""
    test = np.flatnonzero(parts == fold)
    val = np.flatnonzero(parts == (fold + 1) % n_folds)
    train = np.flatnonzero((parts != fold) & (parts != (fold + 1) % n_folds))
    return train, val, test


def spatial_blocks(x: np.ndarray, y: np.ndarray, block_size: float) -> np.ndarray:
    """Block id of each point (x, y in metres) on a square grid of ``block_size`` metres."""
    if block_size <= 0:
        raise ValueError(f"block_size must be > 0, not {block_size}")
    x, y = np.asarray(x, float), np.asarray(y, float)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("coordinates must be finite to form spatial blocks")
    cells = np.stack([np.floor(x / block_size), np.floor(y / block_size)], axis=1)
    _, ids = np.unique(cells, axis=0, return_inverse=True)
    return ids.reshape(-1).astype(np.int64)


def blocks_from_lonlat(lon: np.ndarray, lat: np.ndarray, block_size: float) -> np.ndarray:
    """Spatial blocks of WGS84 points, projected to the equal-area EPSG:6933 grid (metres)."""
    from pyproj import Transformer

    transformer = Transformer.from_crs("EPSG:4326", "EPSG:6933", always_xy=True)
    x, y = transformer.transform(np.asarray(lon, float), np.asarray(lat, float))
    return spatial_blocks(np.asarray(x), np.asarray(y), block_size)


def blocks_from_store(store: Store, block_size: float) -> np.ndarray:
    """Block id of every store row from the parcel centroids the store records.

    Rows without a centroid (no usable geometry; never trained on) get block -1. The stack's
    CRS must be projected (metres), as Sentinel-2 UTM tiles are.
    """
    from pyproj import CRS

    crs_text = (store.attrs.get("stack") or {}).get("crs")
    if not crs_text or not CRS.from_user_input(crs_text).is_projected:
        raise ValueError(
            f"the store's stack CRS ({crs_text or 'unknown'}) is not projected, so its "
            "centroids are not in metres; give the parcel layer (--parcels) for spatial folds"
        )
    centres = store.centroids
    known = np.isfinite(centres).all(axis=1)
    blocks = np.full(len(store), -1, dtype=np.int64)
    if known.any():
        blocks[known] = spatial_blocks(centres[known, 0], centres[known, 1], block_size)
    return blocks


def blocks_from_parcels(
    parcels: str | Path, store: Store, block_size: float, layer: str | None = None
) -> np.ndarray:
    """Block id of every store row from the parcel layer the store was extracted from.

    The store keeps each row's position in the input layer (``source_index``) but no geometry,
    so the centroids come from the layer itself (projected to its UTM zone when geographic).
    """
    from .extract import read_parcels

    gdf = read_parcels(parcels, layer=layer)
    n_layer = int(store.attrs.get("n_parcels", len(store)))
    if len(gdf) != n_layer:
        raise ValueError(
            f"{parcels} has {len(gdf)} features but the store was extracted from {n_layer}; "
            "give the same parcel layer"
        )
    if gdf.crs is None:
        raise ValueError(f"{parcels} has no CRS; spatial blocks need coordinates in metres")
    if gdf.crs.is_geographic:
        gdf = gdf.to_crs(gdf.estimate_utm_crs())
    valid = ~(gdf.geometry.is_empty | gdf.geometry.isna())
    centroid = gdf.geometry.where(valid, None).centroid
    x = np.where(valid, centroid.x.fillna(0.0), 0.0)
    y = np.where(valid, centroid.y.fillna(0.0), 0.0)
    blocks = spatial_blocks(x, y, block_size)
    return blocks[np.asarray(store.source_index, dtype=np.int64)]


# -- devices, seeds -----------------------------------------------------------------------------


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for ``auto``/``cpu``/``cuda``/``cuda:N`` (see :mod:`.device`, which
    also says why; ValueError when a GPU is asked for that torch cannot use)."""
    choice = choose_device(device)
    LOG.info("device %s: %s", choice.device, choice.reason)
    return choice.device


def derive_seed(*parts: int | str) -> int:
    """A 32-bit seed from the run seed and a path (fold, epoch, purpose): independent streams."""
    words = [int(hashlib.sha256(p.encode()).hexdigest()[:8], 16) if isinstance(p, str) else p
             for p in parts]  # fmt: skip
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch global generators (library code may use them)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms on CPU for the duration of a run, restored afterwards (the
    setting is process-wide and QGIS is a shared process)."""
    import torch

    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


# -- data ---------------------------------------------------------------------------------------


class RowData:
    """The arrays one architecture reads, for a set of store rows.

    Features (T, 20) for feature models, patches (T, 10, P, P) + mask (P, P) otherwise. When the
    rows fit in ``cache_mb`` they are read once (patches kept as uint16: the store's values are
    integers) and batches are sliced from memory; otherwise every epoch streams through
    ``Store.iter_batches`` (chunk-shuffled), so memory stays bounded for the paper's 98 GB set.
    """

    def __init__(
        self,
        store: Store,
        rows: np.ndarray,
        input_kind: str,
        cache_mb: float = 2048.0,
        progress: ProgressFn = no_progress,
        is_cancelled: CancelFn = never_cancelled,
    ) -> None:
        self.store = store
        self.kind = input_kind
        self.fields = ("features",) if input_kind == FEATURES else ("patches", "mask")
        self.rows = np.unique(np.asarray(rows, dtype=np.int64))
        t, p = len(store.dates), store.patch_size
        row_bytes = t * 20 * 4 if input_kind == FEATURES else t * 10 * p * p * 2 + p * p
        self.cached = len(self.rows) * row_bytes <= cache_mb * 2**20
        self.x: np.ndarray | None = None
        self.mask: np.ndarray | None = None
        if self.cached:
            self._load(progress, is_cancelled)

    def _load(self, progress: ProgressFn, is_cancelled: CancelFn) -> None:
        n = len(self.rows)
        filled = 0
        for batch in self.store.iter_batches(
            256, indices=self.rows, fields=self.fields, buffer_mb=64.0
        ):
            at = np.searchsorted(self.rows, batch.rows)
            if self.kind == FEATURES:
                if self.x is None:
                    self.x = np.empty((n, *batch.features.shape[1:]), np.float32)
                self.x[at] = batch.features
            else:
                if self.x is None:
                    self.x = np.empty((n, *batch.patches.shape[1:]), np.uint16)
                    self.mask = np.empty((n, *batch.mask.shape[1:]), bool)
                self.x[at] = batch.patches
                self.mask[at] = batch.mask
            filled += len(batch)
            progress(filled / n, f"reading {filled}/{n} parcels")
            check_cancelled(is_cancelled)

    def batches(
        self, rows: np.ndarray, batch_size: int, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """(rows (b,), x float32, pixel mask (b, P, P) or None) batches over ``rows``.

        Without ``shuffle`` cached rows come in the given order (streamed rows in store order;
        use the returned rows to align).
        """
        rows = np.asarray(rows, dtype=np.int64)
        if not self.cached:
            for b in self.store.iter_batches(
                batch_size, indices=rows, shuffle=shuffle, seed=seed, fields=self.fields
            ):
                if self.kind == FEATURES:
                    yield b.rows, b.features.astype(np.float32), None
                else:
                    yield b.rows, b.patches, b.mask
            return
        order = np.random.default_rng(seed).permutation(len(rows)) if shuffle else None
        ordered = rows if order is None else rows[order]
        at_all = np.searchsorted(self.rows, ordered)
        if len(at_all) and not np.array_equal(
            self.rows[np.minimum(at_all, len(self.rows) - 1)], ordered
        ):
            raise ValueError("rows asked for were not loaded")
        for start in range(0, len(ordered), batch_size):
            at = at_all[start : start + batch_size]
            x = self.x[at].astype(np.float32)
            mask = None if self.mask is None else self.mask[at]
            yield ordered[start : start + batch_size], x, mask

    def fit_normaliser(self, rows: np.ndarray, per_date: bool) -> Normaliser:
        """Statistics of ``rows`` (the training part) only."""
        return Normaliser.fit(
            ((x, m) for _, x, m in self.batches(rows, 256)), self.kind, per_date=per_date
        )


def card_date_grid(season_days: Sequence[int]) -> list[int] | None:
    """The store's season days (:attr:`Store.season_days`) as a card ``date_grid``, or None.

    A card's grid must be strictly increasing season days within three years (any real series
    is); otherwise the normalisation falls back to one row of statistics for all dates.
    """
    from .modelcard import MAX_SEASON_DAY

    days = [int(d) for d in season_days]
    ok = all(1 <= d <= MAX_SEASON_DAY for d in days) and all(
        a < b for a, b in itertools.pairwise(days)
    )
    return days if ok else None


# -- one training run ---------------------------------------------------------------------------


@dataclass
class _Context:
    """What every fold of a run shares."""

    store: Store
    data: RowData
    config: TrainConfig
    device: torch.device
    n_classes: int
    per_date: bool
    doy: np.ndarray  # (T,)
    progress: _Progress
    is_cancelled: CancelFn
    workdir: Path | None
    dist: DistInfo | None = None  # one of several data-parallel processes (torchrun)

    @property
    def main(self) -> bool:
        """The process that writes files (the only one unless distributed)."""
        return self.dist is None or self.dist.main


class _Progress:
    """Turns units of work (training batches) into ``progress(fraction, message)`` with an ETA
    measured on the work done in this process (resumed work counts as done, not as speed)."""

    def __init__(self, callback: ProgressFn, total: int) -> None:
        self.callback, self.total = callback, max(1, total)
        self.done = 0
        self.done_here = 0
        self.start = time.monotonic()

    def skip(self, units: int) -> None:
        self.done += units

    def step(self, units: int, message: str) -> None:
        self.done += units
        self.done_here += units
        elapsed = time.monotonic() - self.start
        remaining = max(0, self.total - self.done)
        eta = elapsed / self.done_here * remaining if self.done_here else math.nan
        self.callback(min(1.0, self.done / self.total), f"{message}, ETA {format_seconds(eta)}")


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


AMP_EXCLUDED = frozenset({"pse_ltae"})
"""Models trained in float32 even on CUDA: the pixel-set encoder sums squared deviations over
up to P x P pixels with ``index_add``, which autocast leaves in float16, where such sums can
overflow (65,504); the others' reductions run in float32 under autocast."""


def _amp(device: torch.device, config: TrainConfig) -> bool:
    """Mixed precision: CUDA only, unless disabled or the model is in :data:`AMP_EXCLUDED`."""
    return device.type == "cuda" and config.amp and config.model not in AMP_EXCLUDED


def _forward(
    model: nn.Module, x: torch.Tensor, pixel_mask: torch.Tensor | None, doy: torch.Tensor
) -> torch.Tensor:
    """Call any registry model: ``doy`` for all (ignored by most), the pixel mask for PSE."""
    if getattr(model, "architecture", "") == "pse_ltae":
        return model(x, doy=doy, pixel_mask=pixel_mask)
    return model(x, doy=doy)


def _to_device(
    ctx: _Context,
    rows: np.ndarray,
    x: np.ndarray,
    mask: np.ndarray | None,
    norm: Normaliser,
    perm: np.ndarray | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Normalise on the device, then (time-shuffle) permute dates per sample."""
    import torch

    dev = ctx.device
    xt = torch.from_numpy(x).to(dev, non_blocking=True)
    mt = None if mask is None else torch.from_numpy(mask).to(dev, non_blocking=True)
    xt = norm.apply_torch(xt, mt)
    doy = torch.as_tensor(ctx.doy, device=dev).expand(len(rows), -1)
    if perm is not None:
        index = torch.from_numpy(perm).to(dev)
        batch = torch.arange(len(rows), device=dev)[:, None]
        xt, doy = xt[batch, index], doy[batch, index]
    return xt, mt, doy


def _eval_permutations(ctx: _Context, rows: np.ndarray) -> np.ndarray | None:
    """Fixed per-parcel date permutations for validation/test of the time-shuffle variant."""
    if not ctx.config.shuffle_dates:
        return None
    t = len(ctx.doy)
    return np.stack([
        np.random.default_rng(derive_seed(ctx.config.seed, "eval-shuffle", int(r))).permutation(t)
        for r in rows
    ])  # fmt: skip


def _proba_slice(
    ctx: _Context,
    model: nn.Module,
    norm: Normaliser,
    batch: tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None],
    start: int,
    stop: int,
) -> np.ndarray:
    """Probabilities of items ``start:stop`` of one batch ``(rows, x, mask, perm)``."""
    import torch

    part = slice(start, stop)
    rows, x, mask, perm = (None if a is None else a[part] for a in batch)
    xt, mt, doy = _to_device(ctx, rows, x, mask, norm, perm)
    use_amp = _amp(ctx.device, ctx.config)
    with torch.autocast(device_type=ctx.device.type, dtype=torch.float16, enabled=use_amp):
        logits = _forward(model, xt, mt, doy)
    return torch.softmax(logits.float(), dim=1).cpu().numpy()


def _predict(ctx: _Context, model: nn.Module, norm: Normaliser, rows: np.ndarray) -> np.ndarray:
    """Class probabilities (len(rows), K) in the order of ``rows`` (distributed: each process
    predicts its share, and all get the whole).

    Out of device memory, the batch is halved (and stays halved for the rest of the call)."""
    import torch

    if ctx.dist is not None:
        mine = _predict(replace(ctx, dist=None), model, norm, rows[share(len(rows), ctx.dist)])
        return gather_rows(mine, len(rows), ctx.dist)
    model.eval()
    out = np.zeros((len(rows), ctx.n_classes), np.float32)
    position = {int(r): i for i, r in enumerate(rows)}
    backoff = OomBackoff(ctx.config.eval_batch_size)
    with torch.no_grad():
        for b_rows, x, mask in ctx.data.batches(rows, ctx.config.eval_batch_size):
            batch = (b_rows, x, mask, _eval_permutations(ctx, b_rows))
            step = functools.partial(_proba_slice, ctx, model, norm, batch)
            out[[position[int(r)] for r in b_rows]] = np.concatenate(backoff.map(step, len(b_rows)))
            check_cancelled(ctx.is_cancelled)
    return out


def _macro_f(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    import torch

    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        LOG.warning("ignoring unreadable checkpoint %s (%s); that fold restarts", path, exc)
        return None
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        return None
    return ckpt


def _micro_slices(n: int, size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of at most ``size`` items over ``range(n)``, never a last slice of one
    item (BatchNorm cannot train on one sample): it joins the slice before."""
    bounds = [(a, min(n, a + size)) for a in range(0, n, size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _micro_batch_note(message: str) -> None:
    LOG.info(
        "%s: training continues with micro-batches whose gradients are summed over the whole "
        "batch (same batch size for the optimiser; BatchNorm statistics per micro-batch)",
        message,
    )


def _accumulate_gradients(
    ctx: _Context,
    model: nn.Module,
    norm: Normaliser,
    batch: tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None],
    label_of: Mapping[int, int],
    loss_fn: nn.Module,
    scaler: torch.amp.GradScaler,
    optimizer: torch.optim.Optimizer,
    micro: int,
    *,
    scale: float = 1.0,
) -> float:
    """Gradients of the mean loss of one training batch ``(rows, x, mask, perm)``, computed
    in micro-batches of at most ``micro`` items (one pass when the batch fits, bit-identical
    to a plain step), times ``scale``; returns the batch's mean loss."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    n = len(batch[0])
    use_amp = _amp(ctx.device, ctx.config)
    mean_loss = 0.0
    for start, stop in _micro_slices(n, micro):
        part = slice(start, stop)
        rows, x, mask, perm = (None if a is None else a[part] for a in batch)
        xt, mt, doy = _to_device(ctx, rows, x, mask, norm, perm)
        target = torch.as_tensor([label_of[int(r)] for r in rows], device=ctx.device)
        with torch.autocast(device_type=ctx.device.type, dtype=torch.float16, enabled=use_amp):
            logits = _forward(model, xt, mt, doy)
        loss = loss_fn(logits.float(), target)
        weight = (stop - start) / n * scale
        scaler.scale(loss if weight == 1 else loss * weight).backward()
        mean_loss += float(loss.detach()) * (stop - start) / n
    return mean_loss


@dataclass
class FoldOutcome:
    """A trained fold: the best epoch's weights, its normaliser and the training history."""

    model: nn.Module
    normaliser: Normaliser
    best_epoch: int
    best_score: float
    history: list[dict[str, float]]


def train_one(
    ctx: _Context,
    tag: str,
    train_rows: np.ndarray,
    y_train: np.ndarray,
    val_rows: np.ndarray,
    y_val: np.ndarray,
) -> FoldOutcome:
    """Train ``ctx.config.model`` for ``epochs`` epochs; keep the best-validation-F epoch.

    ``tag`` ("fold0", "final") names the checkpoint and derives the seeds. Rows are store rows,
    ``y_*`` class indices aligned with them. Without validation rows every epoch is trained and
    the last one is kept (the refit on all data, whose epoch count the CV chose).
    """
    import torch
    from torch import nn

    from .architectures import get_model

    cfg = ctx.config
    label = f"fold {int(tag[4:]) + 1}/{cfg.n_folds}" if tag.startswith("fold") else tag
    if cfg.shuffle_dates:
        label += " (shuffled)"
    label = f"{cfg.model} {label}"
    norm = ctx.data.fit_normaliser(train_rows, ctx.per_date)
    torch.manual_seed(derive_seed(cfg.seed, tag, "init"))
    model = get_model(cfg.model, n_classes=ctx.n_classes, n_bands=10, **cfg.hparams).to(ctx.device)
    net: nn.Module = model
    world = 1 if ctx.dist is None else ctx.dist.world
    if ctx.dist is not None:
        from torch.nn.parallel import DistributedDataParallel

        cuda = ctx.device.type == "cuda"
        net = DistributedDataParallel(model, device_ids=[ctx.device.index] if cuda else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    use_amp = _amp(ctx.device, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    # Distributed, each process's gradients are scaled by its share of the batch (x world), so
    # that DDP's mean of them is the gradient of the whole batch's mean loss.
    loss_fn = nn.CrossEntropyLoss()
    label_of = dict(zip(train_rows.tolist(), y_train.tolist(), strict=True))
    n_batches = math.ceil(len(train_rows) / cfg.batch_size)
    # Out of device memory, a batch is split into micro-batches whose gradients add up to the
    # batch's (BatchNorm then normalises over the micro-batches); 2 is BatchNorm's minimum.
    backoff = OomBackoff(cfg.batch_size, min_batch_size=2, notify=_micro_batch_note)
    history: list[dict[str, float]] = []
    best_score, best_epoch, best_state = -math.inf, -1, None
    start_epoch = 0
    ckpt_path = None if ctx.workdir is None else ctx.workdir / f"{tag}.pt"
    ckpt = None if ckpt_path is None else _load_checkpoint(ckpt_path)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["torch_rng"])
        history = list(ckpt["history"])
        best_score, best_epoch = float(ckpt["best_score"]), int(ckpt["best_epoch"])
        best_state = ckpt["best_model"]
        start_epoch = int(ckpt["epoch"]) + 1
        ctx.progress.skip(start_epoch * n_batches)
        LOG.info("resuming %s at epoch %d from %s", tag, start_epoch + 1, ckpt_path)

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        rng = np.random.default_rng(derive_seed(cfg.seed, tag, "shuffle", epoch))
        total_loss, seen = 0.0, 0
        for b_rows, x, mask in ctx.data.batches(
            train_rows, cfg.batch_size, True, int(rng.integers(2**31))
        ):
            n_batch = len(b_rows)
            # BatchNorm cannot train on one sample (per process); the rows come next epoch.
            if n_batch < 2 * world:
                ctx.progress.step(1, f"{label} epoch {epoch + 1}/{cfg.epochs}")
                continue
            perm = None
            if cfg.shuffle_dates:
                t = len(ctx.doy)
                perm = rng.permuted(np.tile(np.arange(t), (n_batch, 1)), axis=1)
            if ctx.dist is not None:  # this process's share of the batch
                part = share(n_batch, ctx.dist)
                b_rows, x = b_rows[part], x[part]
                mask = None if mask is None else mask[part]
                perm = None if perm is None else perm[part]
            step = functools.partial(
                _accumulate_gradients, ctx, net, norm, (b_rows, x, mask, perm), label_of,
                loss_fn, scaler, optimizer, scale=len(b_rows) * world / n_batch,
            )  # fmt: skip
            batch_loss = backoff.run(step)
            scaler.step(optimizer)
            scaler.update()
            total_loss += batch_loss * len(b_rows)  # this process's rows
            seen += len(b_rows)
            ctx.progress.step(1, f"{label} epoch {epoch + 1}/{cfg.epochs}")
            check_cancelled(ctx.is_cancelled)
        if len(val_rows):
            proba = _predict(ctx, model, norm, val_rows)
            val_pred = proba.argmax(axis=1)
            score = _macro_f(y_val, val_pred)
            val_accuracy = float((val_pred == y_val).mean())
        else:
            score = val_accuracy = math.nan
        record = {
            "epoch": epoch + 1,
            "train_loss": total_loss / max(seen, 1),
            "train_samples": seen,  # rows this process trained on (its share when distributed)
            "val_fscore": score,
            "val_accuracy": val_accuracy,
        }
        history.append(record)
        if score > best_score or (not len(val_rows) and epoch + 1 == cfg.epochs):
            best_score, best_epoch = score, epoch + 1
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        LOG.debug("%s epoch %d: %s", tag, epoch + 1, record)
        ctx.progress.step(
            0,
            f"{label} epoch {epoch + 1}/{cfg.epochs}: val F {score:.3f} (best {best_score:.3f} "
            f"at epoch {best_epoch})"
            if len(val_rows)
            else f"{label} epoch {epoch + 1}/{cfg.epochs} (no validation: all data)",
        )
        if ckpt_path is not None and ctx.main:
            _atomic_torch_save(
                {
                    "version": CHECKPOINT_VERSION,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "best_model": best_state,
                },
                ckpt_path,
            )
    if best_state is None:
        raise ValueError(f"{tag}: no epoch was trained")
    model.load_state_dict(best_state)
    model.eval()
    return FoldOutcome(model, norm, best_epoch, best_score, history)


# -- cross-validation ---------------------------------------------------------------------------


@dataclass
class Experiment:
    """A store prepared for the protocol: its label plan, the fold parts and the groups."""

    store: Store
    plan: LabelPlan
    parts: np.ndarray  # (len(plan.rows),) part of each kept row
    n_folds: int
    grouping: str

    @classmethod
    def prepare(
        cls,
        store: Store | str | Path,
        config: TrainConfig,
        *,
        groups: np.ndarray | None = None,
        class_map: ClassMap | None = None,
    ) -> Experiment:
        """Labels and folds of ``store``. ``groups`` (len(store),) spatial block ids per row,
        required when ``config.grouping == "spatial"``."""
        from .store import Store

        store = store if hasattr(store, "usable_indices") else Store(store)
        usable = np.zeros(len(store), dtype=bool)
        usable[store.usable_indices()] = True
        plan = plan_labels(
            store.labels,
            usable,
            n_folds=config.n_folds,
            store_classes=store.attrs.get("classes"),
            class_map=class_map,
            merge_rare=config.merge_rare,
            unknown_codes=config.unknown_codes,
        )
        group_ids = None
        if config.grouping == "spatial":
            if groups is None:
                raise ValueError(
                    "spatial folds need the parcels' positions: give a groups array (see "
                    "blocks_from_store and blocks_from_parcels)"
                )
            groups = np.asarray(groups)
            if len(groups) != len(store):
                raise ValueError(f"{len(groups)} group ids for a store of {len(store)} rows")
            group_ids = groups[plan.rows]
        parts = assign_parts(plan.y, config.n_folds, config.seed, group_ids)
        return cls(store, plan, parts, config.n_folds, config.grouping)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(str(Path(self.store.path).resolve()).encode())
        h.update(str(self.store.attrs.get("created")).encode())
        for a in (self.plan.rows, self.plan.y, self.parts):
            h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        return h.hexdigest()


def _run_dir(config: TrainConfig, experiment: Experiment, variant: str) -> Path | None:
    if config.workdir is None:
        return None
    key = hashlib.sha256(
        json.dumps(
            [config.result_key(), experiment.fingerprint(), variant], sort_keys=True
        ).encode()
    ).hexdigest()[:12]
    path = Path(config.workdir) / f"{config.model}-{variant}-{key}"
    path.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        (path / "settings.json").write_text(
            json.dumps({"config": config.to_dict(), "variant": variant}, indent=2), encoding="utf-8"
        )
    return path


def _make_context(
    experiment: Experiment,
    config: TrainConfig,
    progress: _Progress,
    is_cancelled: CancelFn,
    workdir: Path | None,
) -> _Context:
    spec = get_spec(config.model)
    store = experiment.store
    grid = card_date_grid(store.season_days)
    per_date = config.per_date_normalisation and grid is not None
    if config.per_date_normalisation and grid is None:
        LOG.warning(
            "the store's dates (%s) are not an increasing date grid a model card can record; "
            "normalising with one row of statistics for all dates",
            store.dates,
        )
    data = RowData(store, experiment.plan.rows, spec.input_kind, config.cache_mb,
                   is_cancelled=is_cancelled)  # fmt: skip
    dist = distributed.current()
    return _Context(
        store=store,
        data=data,
        config=config,
        device=distributed.device_for(dist, working_device(config.device)),
        n_classes=len(experiment.plan.classes),
        per_date=per_date,
        doy=np.asarray(store.season_days, dtype=np.int64),
        progress=progress,
        is_cancelled=is_cancelled,
        workdir=workdir,
        dist=dist,
    )


def _fold_units(n_train: int, config: TrainConfig) -> int:
    return math.ceil(n_train / config.batch_size) * config.epochs


def cross_validate(
    experiment: Experiment,
    config: TrainConfig,
    *,
    progress: ProgressFn = no_progress,
    is_cancelled: CancelFn = never_cancelled,
    _progress: _Progress | None = None,
) -> CVResult:
    """The paper's k-fold protocol for ``config.model``; returns per-fold and summary metrics.

    Each fold trains on its 3 training parts (normalisation fitted there), keeps the epoch of
    best validation F-score and is scored on its test part. With ``config.workdir`` finished
    folds and per-epoch checkpoints are reused by a rerun.
    """
    import torch

    variant = "shuffled" if config.shuffle_dates else "ordered"
    folds = config.folds if config.folds is not None else list(range(config.n_folds))
    plan, parts = experiment.plan, experiment.parts
    splits = {k: fold_split(parts, k, config.n_folds) for k in folds}
    tracker = _progress or _Progress(
        progress, sum(_fold_units(len(splits[k][0]), config) for k in folds)
    )
    workdir = _run_dir(config, experiment, variant)
    ctx = _make_context(experiment, config, tracker, is_cancelled, workdir)
    results = []
    seed_everything(config.seed)
    with deterministic(ctx.device):
        for k in folds:
            train, val, test = splits[k]
            done = None if workdir is None else workdir / f"fold{k}.json"
            if done is not None and done.is_file():
                record = json.loads(done.read_text(encoding="utf-8"))
                tracker.skip(_fold_units(len(train), config))
            else:
                out = train_one(
                    ctx, f"fold{k}", plan.rows[train], plan.y[train], plan.rows[val], plan.y[val]
                )
                proba = _predict(ctx, out.model, out.normaliser, plan.rows[test])
                record = fold_metrics(plan.y[test], proba.argmax(axis=1), len(plan.classes))
                record.update({
                    "fold": k, "best_epoch": out.best_epoch, "val_fscore": out.best_score,
                    "n_train": len(train), "n_val": len(val), "n_test": len(test),
                    "history": out.history,
                })  # fmt: skip
                if done is not None and ctx.main:
                    done.write_text(json.dumps(json_safe(record)), encoding="utf-8")
                    (workdir / f"fold{k}.pt").unlink(missing_ok=True)
                del out
                if ctx.device.type == "cuda":
                    torch.cuda.empty_cache()
            results.append(record)
    return CVResult(
        name=config.model,
        classes=plan.class_names,
        folds=[_nan_from_json(r) for r in results],
        variant=variant,
        config=config.to_dict(),
    )


def _nan_from_json(value: Any) -> Any:
    """Undo :func:`json_safe` for a fold record read back from a work folder (None -> NaN)."""
    if value is None:
        return math.nan
    if isinstance(value, list):
        return [_nan_from_json(v) for v in value]
    if isinstance(value, dict):
        return {k: v if k == "history" else _nan_from_json(v) for k, v in value.items()}
    return value


def random_forest_cv(
    experiment: Experiment,
    *,
    seed: int = 0,
    folds: Sequence[int] | None = None,
    n_estimators: int = 100,
    n_jobs: int = -1,
    progress: ProgressFn = no_progress,
    is_cancelled: CancelFn = never_cancelled,
) -> CVResult:
    """The paper's Random-Forest baseline on the flattened handcrafted features (T x 20).

    Same folds as the networks; the forest is fitted on each fold's 3 training parts (it has no
    epochs to choose, so the validation part is unused and the training data is the networks').
    100 trees (scikit-learn's default; the paper does not state its settings); no
    normalisation (trees are invariant to it).
    """
    from sklearn.ensemble import RandomForestClassifier

    plan = experiment.plan
    folds = list(folds) if folds is not None else list(range(experiment.n_folds))
    data = RowData(experiment.store, plan.rows, FEATURES, cache_mb=1e9)
    x = np.concatenate([b[1] for b in data.batches(plan.rows, 4096)]).reshape(len(plan.rows), -1)
    results = []
    for i, k in enumerate(folds):
        check_cancelled(is_cancelled)
        train, _, test = fold_split(experiment.parts, k, experiment.n_folds)
        forest = RandomForestClassifier(
            n_estimators=n_estimators, n_jobs=n_jobs, random_state=derive_seed(seed, f"rf{k}")
        )
        forest.fit(x[train], plan.y[train])
        record = fold_metrics(plan.y[test], forest.predict(x[test]), len(plan.classes))
        record.update({"fold": k, "n_train": len(train), "n_test": len(test)})
        results.append(record)
        progress((i + 1) / len(folds), f"random forest fold {k + 1}/{experiment.n_folds}")
    return CVResult(
        name="random_forest",
        classes=plan.class_names,
        folds=results,
        config={"n_estimators": n_estimators, "seed": seed, "input": "flattened T x 20 features"},
    )


# -- the shipped model --------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train_model` produced."""

    card: ModelCard
    cv: CVResult | None
    model_path: Path
    report_path: Path | None
    workdir: Path | None
    plan: LabelPlan
    history: list[dict[str, float]]


def train_model(
    store: Store | str | Path,
    config: TrainConfig,
    out: str | Path,
    *,
    cv: bool = True,
    groups: np.ndarray | None = None,
    class_map: ClassMap | None = None,
    report: bool = True,
    provenance: Mapping[str, Any] | None = None,
    baselines: Mapping[str, CVResult] | None = None,
    progress: ProgressFn = no_progress,
    is_cancelled: CancelFn = never_cancelled,
) -> TrainResult:
    """Cross-validate ``config.model`` on ``store``, then train and save the shipped model.

    ``out`` is the model's stem: ``<out>.safetensors`` + ``<out>.json`` (card), and with
    ``report`` ``<out>.report.md`` plus its PNG figures. The shipped model
    (``config.final_fit``):

    * ``"holdout"``: trained on every kept parcel outside part 0 of the folds, part 0 choosing
      its epoch (module docstring);
    * ``"all"``: trained on every kept parcel for the median of the CV folds' best epochs, with
      no validation part (for small data sets, where a fifth of the parcels held out costs
      too much; needs ``cv``).

    ``provenance`` entries are added to the card's provenance (how the training data was made,
    its licence...); ``baselines`` (e.g. the Random Forest on the same folds) go into the
    card's metrics and the report.
    """
    from dataclasses import replace

    from .modelcard import ModelCard, model_paths, save_model

    out = Path(out)
    _, card_path = model_paths(out)
    card_path.parent.mkdir(parents=True, exist_ok=True)
    check_output_folder(card_path)  # before training, not after
    if config.final_fit == "all" and not cv:
        raise ValueError(
            "final_fit='all' trains for the cross-validation's median best epoch; run the "
            "cross-validation (cv=True) or use final_fit='holdout'"
        )
    experiment = Experiment.prepare(store, config, groups=groups, class_map=class_map)
    plan, parts = experiment.plan, experiment.parts
    folds = config.folds if config.folds is not None else list(range(config.n_folds))
    if config.final_fit == "all":
        final_train = np.arange(len(plan.rows))
        final_val = np.zeros(0, dtype=np.int64)
    else:
        final_train = np.flatnonzero(parts != 0)
        final_val = np.flatnonzero(parts == 0)
    units = _fold_units(len(final_train), config)
    if cv:
        units += sum(
            _fold_units(len(fold_split(parts, k, config.n_folds)[0]), config) for k in folds
        )
    tracker = _Progress(progress, units)
    cv_result = None
    if cv:
        cv_result = cross_validate(experiment, config, is_cancelled=is_cancelled, _progress=tracker)
    final_config = config
    if config.final_fit == "all":
        best = [int(f["best_epoch"]) for f in cv_result.folds]
        final_config = replace(config, epochs=max(1, math.floor(float(np.median(best)) + 0.5)))
    workdir = _run_dir(final_config, experiment, "final")
    ctx = _make_context(experiment, final_config, tracker, is_cancelled, workdir)
    seed_everything(config.seed)
    with deterministic(ctx.device):
        final = train_one(
            ctx, "final", plan.rows[final_train], plan.y[final_train],
            plan.rows[final_val], plan.y[final_val],
        )  # fmt: skip
    spec = get_spec(config.model)
    store_obj = experiment.store
    attrs = store_obj.attrs
    grid = card_date_grid(store_obj.season_days) if ctx.per_date else None
    cv_text = (
        f"the metrics are those of the {config.n_folds}-fold cross-validation "
        f"({config.grouping} folds, train:val:test 3:1:1), not of this model"
    )
    if config.final_fit == "all":
        protocol = (
            f"trained on all {len(final_train)} kept parcels for {final_config.epochs} epochs, "
            f"the median of the cross-validation folds' best epochs "
            f"({', '.join(str(f['best_epoch']) for f in cv_result.folds)}), with no "
            f"validation part; {cv_text}"
        )
    else:
        protocol = (
            f"trained on {len(final_train)} parcels (all kept parcels but fold part 0), epoch "
            f"chosen by the best validation F-score on part 0 ({len(final_val)} parcels); "
            f"{cv_text}"
        )
    final_info = {
        "protocol": protocol,
        "final_fit": config.final_fit,
        "n_train": len(final_train),
        "n_val": len(final_val),
        "epochs": final_config.epochs,
        "best_epoch": final.best_epoch,
        "val_fscore": final.best_score,
    }
    metrics: dict[str, Any] = {"final_model": final_info}
    if cv_result is not None:
        metrics["cross_validation"] = {
            "n_folds": config.n_folds,
            "folds_run": folds,
            "grouping": config.grouping,
            "summary": cv_result.summary,
            "per_class_fscore": cv_result.per_class,
            "confusion_matrix": cv_result.confusion_matrix,
            "class_order": plan.class_names,
            "per_fold": [{k: f.get(k) for k in _CARD_FOLD_KEYS} for f in cv_result.folds],
        }
    if baselines:
        metrics["baselines"] = {
            name: {
                "summary": result.summary,
                "per_class_fscore": result.per_class,
                "confusion_matrix": result.confusion_matrix,
                "config": result.config,
            }
            for name, result in baselines.items()
        }
    provenance = {
        "store": str(store_obj.path),
        "store_created": attrs.get("created"),
        "stack": attrs.get("stack"),
        "dates": store_obj.dates,
        "label_field": attrs.get("label_field"),
        "class_counts": plan.counts,
        "excluded": plan.excluded,
        "label_notes": plan.notes,
        "label_mapping": {str(k): v for k, v in sorted(plan.label_mapping.items())},
        "normalisation": (
            "per date and channel over the training parcels' parcel pixels (patches) or parcels "
            "(features)"
            if ctx.per_date
            else "one row for all dates (the store's dates are not a one-year increasing grid)"
        ),
        "training": config.to_dict(),
        "code": _versions(),
        **dict(provenance or {}),
    }
    card = ModelCard(
        name=config.name or f"{config.model}_{Path(store_obj.path).stem}",
        architecture=config.model,
        hparams={},
        n_bands=10,
        bands=list(attrs.get("bands") or PAPER_BANDS),
        classes=plan.classes,
        input_kind=spec.input_kind,
        normalisation=final.normaliser.to_card(),
        date_grid=grid,
        patch_size=store_obj.patch_size if spec.input_kind == PATCHES else None,
        provenance=json_safe(provenance),
        metrics=json_safe(metrics),
    )
    report_path = None
    if ctx.main:  # distributed: every process has the same model; one writes it
        card = save_model(final.model.cpu(), card, out)
        if report:
            from .report import write_train_report

            report_path = write_train_report(
                out, card, cv_result, plan, final.history, baselines=baselines
            )
    distributed.barrier(ctx.dist)
    return TrainResult(card, cv_result, out, report_path, workdir, plan, final.history)


def _versions() -> dict[str, str]:
    import sklearn
    import torch

    return {
        "cropmodels": __version__,
        **_git_revision(),
        "torch": torch.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
    }


@functools.cache
def _git_revision() -> dict[str, str]:
    """The commit of the source checkout cropmodels runs from, ``-dirty`` when the training code
    (``cropmodels/``, ``scripts/``) has uncommitted changes; empty outside a git checkout (an
    installed plugin). Read once per process, so files a run writes cannot mark it dirty."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return {}

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "cropmodels", "scripts")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit + ("-dirty" if dirty else "")}


# -- inference on a store (shared with evaluate) -------------------------------------------------


def predict_proba(
    model: nn.Module,
    card: ModelCard,
    store: Store,
    rows: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    cache_mb: float = 512.0,
    progress: ProgressFn = no_progress,
    is_cancelled: CancelFn = never_cancelled,
    notify: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Class probabilities (len(rows), K) of a loaded model on store rows, normalised with the
    card's training statistics.

    Out of GPU memory the batch is halved; a CUDA failure runs the rows again on the CPU (the
    model is left on the CPU then); both are logged and passed to ``notify``.
    """
    import torch

    dev = resolve_device(device) if isinstance(device, str) else device
    norm = Normaliser.from_card(card)
    norm.check_dates(len(store.dates))
    config = TrainConfig(model=card.architecture, eval_batch_size=batch_size, amp=True)
    data = RowData(store, rows, card.input_kind, cache_mb=cache_mb)
    tracker = _Progress(progress, 1)
    rows = np.asarray(rows, dtype=np.int64)

    def run(on: torch.device) -> np.ndarray:
        ctx = _Context(
            store=store, data=data, config=config, device=on, n_classes=len(card.classes),
            per_date=norm.n_rows > 1, doy=np.asarray(store.season_days, dtype=np.int64),
            progress=tracker, is_cancelled=is_cancelled, workdir=None,
        )  # fmt: skip
        with torch.no_grad():
            return _predict(ctx, model.to(on), norm, rows)

    return run_with_cpu_fallback(run, dev, notify=notify)[0]


__all__ = [
    "GROUPINGS",
    "PAPER_MODELS",
    "SHUFFLED_MODELS",
    "ClassMap",
    "Experiment",
    "FoldOutcome",
    "LabelPlan",
    "ReproduceResult",
    "RowData",
    "TrainConfig",
    "TrainResult",
    "assign_parts",
    "blocks_from_lonlat",
    "blocks_from_parcels",
    "blocks_from_store",
    "card_date_grid",
    "cross_validate",
    "deterministic",
    "fold_split",
    "format_seconds",
    "plan_labels",
    "predict_proba",
    "random_forest_cv",
    "read_class_map",
    "reproduce_paper",
    "resolve_device",
    "seed_everything",
    "spatial_blocks",
    "train_model",
    "train_one",
]


# -- the paper's experiment ---------------------------------------------------------------------

PAPER_MODELS: tuple[str, ...] = ("cnn", "cnn_gru7", "cnn_gru8", "cnn_gru9", "gru", "convlstm")
"""Table 2's six architectures, in its order."""
SHUFFLED_MODELS: tuple[str, ...] = ("convlstm", "cnn_gru7", "cnn_gru9", "gru")
"""Table 4's time-shuffled models, in its order."""


@dataclass
class ReproduceResult:
    ordered: dict[str, CVResult]
    shuffled: dict[str, CVResult]
    forest: CVResult | None
    tables: Path
    results_json: Path


def reproduce_paper(
    store: Store | str | Path,
    out_dir: str | Path,
    config: TrainConfig,
    *,
    models: Sequence[str] = PAPER_MODELS,
    shuffled: Sequence[str] = SHUFFLED_MODELS,
    forest: bool = True,
    groups: np.ndarray | None = None,
    class_map: ClassMap | None = None,
    progress: ProgressFn = no_progress,
    is_cancelled: CancelFn = never_cancelled,
) -> ReproduceResult:
    """Tables 2-4 of the paper on ``store``: every model of ``models`` cross-validated on the
    same folds, the ``shuffled`` ones again with time-shuffled dates, and the Random-Forest
    baseline; ``config`` supplies the shared settings (its ``model`` is ignored). Writes
    ``tables.md`` (with the published numbers), ``results.json`` and confusion-matrix PNGs into
    ``out_dir``; checkpoints go to ``config.workdir`` (default ``out_dir/work``), so an
    interrupted run resumes.
    """
    from .report import write_reproduce_report

    for name in (*models, *shuffled):
        get_spec(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.workdir is None:
        config = replace(config, workdir=str(out_dir / "work"))
    experiment = Experiment.prepare(store, config, groups=groups, class_map=class_map)
    runs = [(m, False) for m in models] + [(m, True) for m in shuffled]
    folds = config.folds if config.folds is not None else list(range(config.n_folds))
    per_run = sum(
        _fold_units(len(fold_split(experiment.parts, k, config.n_folds)[0]), config) for k in folds
    )
    tracker = _Progress(progress, per_run * len(runs))
    ordered: dict[str, CVResult] = {}
    shuffled_results: dict[str, CVResult] = {}
    for name, shuffle in runs:
        run_config = replace(config, model=name, shuffle_dates=shuffle, hparams={})
        result = cross_validate(
            experiment, run_config, is_cancelled=is_cancelled, _progress=tracker
        )
        (shuffled_results if shuffle else ordered)[name] = result
        LOG.info(
            "%s%s: F-score %.1f ± %.1f", name, " (shuffled)" if shuffle else "",
            100 * result.summary["fscore"]["mean"], 100 * result.summary["fscore"]["std"],
        )  # fmt: skip
    forest_result = None
    if forest:
        forest_result = random_forest_cv(
            experiment, seed=config.seed, folds=folds, is_cancelled=is_cancelled
        )
    plan = experiment.plan
    context = {
        "store": str(experiment.store.path),
        "n_parcels": len(plan.rows),
        "n_classes": len(plan.classes),
        "n_dates": len(experiment.store.dates),
        "protocol": (
            f"{config.n_folds}-fold cross-validation ({config.grouping} folds, "
            f"folds run: {', '.join(str(k + 1) for k in folds)}), train:val:test 3:1:1, Adam lr "
            f"{config.lr}, batch {config.batch_size}, {config.epochs} epochs, best validation "
            f"F-score epoch tested, seed {config.seed}."
        ),
    }
    tables = write_reproduce_report(out_dir, ordered, shuffled_results, forest_result, context)
    payload = {
        "context": context,
        "label_plan": {
            "classes": plan.class_names,
            "counts": plan.counts,
            "excluded": plan.excluded,
            "notes": plan.notes,
        },
        "ordered": {k: v.to_dict() for k, v in ordered.items()},
        "shuffled": {k: v.to_dict() for k, v in shuffled_results.items()},
        "random_forest": forest_result.to_dict() if forest_result else None,
        "code": _versions(),
    }
    results_json = out_dir / "results.json"
    write_text_atomic(results_json, json.dumps(json_safe(payload), indent=1))
    return ReproduceResult(ordered, shuffled_results, forest_result, tables, results_json)
