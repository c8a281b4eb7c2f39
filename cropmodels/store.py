"""On-disk chunked dataset of extracted parcels, read in batches by training and batch inference.

The paper's dataset (199,464 parcels x 24 dates x 10 bands x 32 x 32) is 98 GB as uint16, far
more than memory, so extraction streams into a store and training reads it back chunk by chunk.

Layout: a zarr v2 group on a ``DirectoryStore`` (a folder; any zarr v2 reader opens it), every
array compressed with Blosc zstd; patches, smooth reflectances with zeros outside the parcel,
go through a delta filter and byte shuffle first (choices measured, see :func:`_codecs`).
Rows are parcels *in arrival order*: the extractor emits parcels top to bottom, so a chunk
holds neighbouring parcels and its patches compress better than a random mix;
``source_index`` gives each row's position in the input layer.

=====================  ====================  ==========================================
array                  shape / dtype         meaning
=====================  ====================  ==========================================
patches                (N,T,10,P,P) uint16   canonical reflectance x 10000, rounded and
                                             clipped to [0, 65535]; 0 outside the parcel
                                             and for unusable parcels
mask                   (N,P,P) bool          parcel pixels of the patch
features               (N,T,20) float32      per-date band means then stds (NaN-free)
label                  (N,) int32            class code, -1 = unlabelled
source_index           (N,) int64            position of the parcel in the input layer
parcel_id              (N,) str              the layer's parcel id (or the position)
status                 (N,) uint8            code into ``attrs["status_codes"]``
n_pixels               (N,) int32            pixel centres inside the parcel
cloud_fraction         (N,T) float16         share of the parcel not clear, per date
n_clear_dates          (N,) int16            dates on which the parcel is mostly clear
geometry_repaired      (N,) bool             the polygon was invalid and repaired
centroid               (N,2) float64         parcel centroid (x, y) in the stack's CRS
                                             (``attrs["stack"]["crs"]``); NaN without geometry
=====================  ====================  ==========================================

``patches``, ``mask`` and ``features`` are chunked by ``chunk_parcels`` rows and written while
extraction runs (memory: two chunks, one filling, one being compressed on a thread); the small
per-parcel arrays are kept in memory (about 150 bytes per parcel at 24 dates) and written at
the end in large chunks, so a big store is not thousands of tiny files. At 24 dates a chunk
of 64 parcels is 31 MB before compression; for long series (the Flanders sample has 118
dates) a smaller ``chunk_parcels`` keeps chunks, and the memory of readers, moderate.

A store is written completely or not at all: it is built in a hidden sibling folder and
renamed into place when complete.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import itertools
import json
import logging
import math
import os
import shutil
import threading
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .extract import (
    INVALID,
    N_BANDS,
    N_FEATURES,
    NO_CLEAR,
    OK,
    OUTSIDE,
    PARTLY_OUTSIDE,
    TOO_LARGE,
    TOO_SMALL,
    USABLE,
    ParcelData,
)
from .progress import CancelFn, ProgressFn, check_cancelled, never_cancelled, no_progress
from .stack import PAPER_BANDS

LOG = logging.getLogger(__name__)

FORMAT_NAME = "cropmodels-parcel-store"
FORMAT_VERSION = 1
UNLABELLED = -1
# Codes are part of the format: append new statuses, never renumber.
STATUS_CODES: tuple[str, ...] = (
    OK, PARTLY_OUTSIDE, OUTSIDE, TOO_SMALL, NO_CLEAR, INVALID, TOO_LARGE,
)  # fmt: skip
UNIT = "reflectance x 10000 (offset removed), rounded to uint16, clipped to [0, 65535]"
FEATURE_NAMES: tuple[str, ...] = tuple(f"{b}_mean" for b in PAPER_BANDS) + tuple(
    f"{b}_std" for b in PAPER_BANDS
)
CHUNKED_FIELDS: tuple[str, ...] = ("patches", "mask", "features")
META_FIELDS: tuple[str, ...] = (
    "label",
    "source_index",
    "parcel_id",
    "status",
    "n_pixels",
    "cloud_fraction",
    "n_clear_dates",
    "geometry_repaired",
    "centroid",
)
META_CHUNK_ROWS = 1 << 16  # rows per chunk of the small per-parcel arrays
MAX_CHUNK_BYTES = 64 * 2**20  # uncompressed patches per chunk: bounds writer and reader memory
_STATUS_CODE = {name: code for code, name in enumerate(STATUS_CODES)}
_USABLE_CODES = np.array([_STATUS_CODE[s] for s in sorted(USABLE)], dtype=np.uint8)


class StoreError(ValueError):
    """The store cannot be written or read; the message says what is wrong and what to do."""


def _codecs(name: str, dtype: Any) -> dict[str, Any]:
    """Filters and compressor of one array; measured choices, see benchmarks/README.md.

    Patches: horizontal delta (as the GeoTIFF predictor) + byte shuffle + zstd level 2. On
    the synthetic tile and the Flanders sample it is 2 % and 17 % smaller than zstd 5 +
    bitshuffle and encodes about 3x faster, which matters because writing runs beside
    extraction; decoding (about 1.4 GB/s) stays far above what training consumes. Byte
    shuffle beat bitshuffle on every reflectance array tried; bitshuffle is kept for booleans
    (it packs them to bits).
    """
    from numcodecs import Blosc, Delta

    if name == "patches":
        return {"filters": [Delta(dtype="<u2")],
                "compressor": Blosc(cname="zstd", clevel=2, shuffle=Blosc.SHUFFLE)}  # fmt: skip
    shuffle = Blosc.BITSHUFFLE if np.dtype(dtype) == np.bool_ else Blosc.SHUFFLE
    return {"compressor": Blosc(cname="zstd", clevel=5, shuffle=shuffle)}


# -- writing ---------------------------------------------------------------------------------


@dataclass
class StoreSummary:
    """What :func:`write_store` wrote."""

    path: str
    n_parcels: int
    counts: dict[str, int] = field(default_factory=dict)  # rows by status
    n_labelled: int = 0
    n_clipped: int = 0  # patch values outside [0, 65535] (or NaN) before clipping
    bytes_on_disk: int = 0

    @property
    def n_usable(self) -> int:
        return sum(n for status, n in self.counts.items() if status in USABLE)

    @property
    def bytes_per_parcel(self) -> float:
        return self.bytes_on_disk / self.n_parcels if self.n_parcels else 0.0


def is_store(path: str | Path) -> bool:
    """True when ``path`` is a folder written by :func:`write_store` (any format version)."""
    try:
        return _read_root_attrs(Path(path)).get("format") == FORMAT_NAME
    except StoreError:
        return False


def write_store(
    results: Iterable[ParcelData],
    out: str | Path,
    *,
    n_parcels: int,
    stack_description: Mapping[str, Any],
    dates: Sequence[str | dt.date],
    parcel_ids: Sequence[str | int] | None = None,
    labels: Sequence[int | None] | None = None,
    label_field: str | None = None,
    classes: Sequence[Mapping[str, Any]] | None = None,
    patch_size: int = 32,
    chunk_parcels: int = 64,
    overwrite: bool = False,
    progress: ProgressFn = no_progress,
    is_cancelled: CancelFn = never_cancelled,
) -> StoreSummary:
    """Stream ``results`` (e.g. ``extract(...)``) into a new store at ``out``.

    ``n_parcels`` is the size of the input layer: every index ``0..n_parcels-1`` must arrive
    exactly once. ``parcel_ids`` and ``labels`` are indexed by input position (``None``, NaN
    or -1 labels mean unlabelled). ``chunk_parcels`` rows make a chunk, fewer for long series
    so that a chunk of patches stays under 64 MB uncompressed (27 parcels at 118 dates).
    ``out`` is replaced only if it is a store and ``overwrite``; on any error or cancellation
    nothing is left behind. Raises :class:`StoreError`, :class:`ValueError` for inconsistent
    inputs, :class:`~.progress.Cancelled`.
    """
    out = Path(out)
    _check_target(out, overwrite)
    if n_parcels < 0:
        raise ValueError(f"n_parcels must be >= 0, not {n_parcels}.")
    if chunk_parcels < 1:
        raise ValueError(f"chunk_parcels must be >= 1, not {chunk_parcels}.")
    iso_dates = _iso_dates(dates)
    row_bytes = len(iso_dates) * N_BANDS * patch_size * patch_size * 2
    if chunk_parcels * row_bytes > MAX_CHUNK_BYTES:
        chunk_parcels = max(1, MAX_CHUNK_BYTES // row_bytes)
        LOG.debug("chunk_parcels lowered to %d for %d dates", chunk_parcels, len(iso_dates))
    id_text = _id_array(parcel_ids, n_parcels)
    label_codes = _label_array(labels, n_parcels)
    class_list = _class_list(classes)
    attrs = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "cropmodels_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "n_parcels": n_parcels,
        "chunk_parcels": chunk_parcels,
        "dates": iso_dates,
        "day_of_year": [dt.date.fromisoformat(d).timetuple().tm_yday for d in iso_dates],
        "bands": list(PAPER_BANDS),
        "feature_names": list(FEATURE_NAMES),
        "patch_size": patch_size,
        "unit": UNIT,
        "stack": json.loads(json.dumps(dict(stack_description), default=str)),
        "label_field": label_field,
        "unlabelled": UNLABELLED,
        "classes": class_list,
        "parcel_id_source": "input layer" if parcel_ids is not None else "input position",
        "status_codes": {str(code): name for code, name in enumerate(STATUS_CODES)},
        "usable_statuses": sorted(USABLE),
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:12]}")
    close = getattr(results, "close", None)  # stop a generator (the extractor's threads) early
    try:
        writer = _Writer(tmp, n_parcels, len(iso_dates), patch_size, chunk_parcels)
        try:
            for data in results:
                writer.add(data, label_codes)
                if writer.fill == chunk_parcels:
                    writer.flush()
                    progress(writer.rows / max(n_parcels, 1), f"stored {writer.rows} parcels")
                check_cancelled(is_cancelled)
            writer.flush()
            writer.wait()
        finally:
            writer.close()  # no write may still run when the folder is removed
        if writer.rows != n_parcels:
            missing = np.flatnonzero(~writer.seen)[:5].tolist()
            raise ValueError(
                f"The results held {writer.rows} parcels but n_parcels is {n_parcels} (first "
                f"missing input positions: {missing}); the store needs one result per parcel."
            )
        counts = writer.finish(attrs, id_text)
        summary = StoreSummary(
            path=str(out),
            n_parcels=n_parcels,
            counts=counts,
            n_labelled=int((writer.label != UNLABELLED).sum()),
            n_clipped=writer.n_clipped,
            bytes_on_disk=_du(tmp),
        )
        _install(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if callable(close):
            close()
    progress(1.0, f"stored {n_parcels} parcels in {out}")
    LOG.info(
        "Store %s: %d parcels (%d usable, %d labelled), %.1f kB per parcel",
        out, n_parcels, summary.n_usable, summary.n_labelled, summary.bytes_per_parcel / 1e3,
    )  # fmt: skip
    if summary.n_clipped:
        LOG.warning(
            "%d patch values lay outside the uint16 range [0, 65535] (negative reflectances "
            "after offset removal, or NaN) and were clipped.", summary.n_clipped,
        )  # fmt: skip
    return summary


class _Writer:
    """Buffers ``chunk`` parcels of the big arrays; keeps the small per-parcel arrays whole.

    Compressing a chunk costs about as much as extracting it, so chunks are compressed and
    written on a background thread (Blosc releases the GIL) while the next chunk fills the
    other of two buffer sets: at most one write in flight, memory two chunks.
    """

    def __init__(self, path: Path, n: int, t_count: int, size: int, chunk: int) -> None:
        import zarr

        self.path, self.n, self.t_count, self.size, self.chunk = path, n, t_count, size, chunk
        self.group = zarr.open_group(zarr.DirectoryStore(str(path)), mode="w-")
        big = {
            "patches": ((t_count, N_BANDS, size, size), np.uint16),
            "mask": ((size, size), bool),
            "features": ((t_count, N_FEATURES), np.float32),
        }
        self.arrays = {}
        self.sets: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] = ({}, {})
        for name, (shape, dtype) in big.items():
            self.arrays[name] = self.group.create_dataset(
                name, shape=(n, *shape), chunks=(chunk, *shape), dtype=dtype,
                fill_value=0, write_empty_chunks=True, **_codecs(name, dtype),
            )  # fmt: skip
            for buffers in self.sets:
                buffers[name] = np.zeros((chunk, *shape), dtype=dtype)
        self.buffers = self.sets[0]  # the set being filled
        self.pool = cf.ThreadPoolExecutor(1, thread_name_prefix="store-write")
        self.pending: cf.Future[None] | None = None
        self.seen = np.zeros(n, dtype=bool)
        self.source_index = np.zeros(n, np.int64)
        self.label = np.full(n, UNLABELLED, np.int32)
        self.status = np.zeros(n, np.uint8)
        self.n_pixels = np.zeros(n, np.int32)
        self.cloud_fraction = np.ones((n, t_count), np.float16)
        self.n_clear_dates = np.zeros(n, np.int16)
        self.geometry_repaired = np.zeros(n, bool)
        self.centroid = np.full((n, 2), np.nan)
        self.rows = 0  # rows written to disk
        self.fill = 0  # rows in the buffers
        self.n_clipped = 0

    def add(self, data: ParcelData, labels: np.ndarray) -> None:
        index = int(data.index)
        if not 0 <= index < self.n:
            raise ValueError(f"Result index {index} is outside the layer (n_parcels={self.n}).")
        if self.seen[index]:
            raise ValueError(f"Parcel {index} arrived twice; each parcel must arrive once.")
        if data.status not in _STATUS_CODE:
            raise ValueError(f"Parcel {index} has the unknown status {data.status!r}.")
        cloud = np.asarray(data.cloud_fraction, dtype=np.float32).reshape(-1)
        if cloud.shape != (self.t_count,):
            raise ValueError(
                f"Parcel {index} has {cloud.shape[0]} dates but the store has {self.t_count}; "
                "give write_store the dates of the stack the results come from."
            )
        b = self.fill
        usable = data.status in USABLE
        if usable:
            self._put_arrays(data, b)
        else:
            for buffer in self.buffers.values():
                buffer[b] = 0
        row = self.rows + b
        self.seen[index] = True
        self.source_index[row] = index
        self.label[row] = labels[index]
        self.status[row] = _STATUS_CODE[data.status]
        self.n_pixels[row] = data.n_pixels
        self.cloud_fraction[row] = np.nan_to_num(cloud, nan=1.0)
        self.n_clear_dates[row] = data.n_clear_dates
        self.geometry_repaired[row] = bool(data.geometry_repaired)
        if data.centroid is not None:
            self.centroid[row] = data.centroid
        self.fill += 1

    def _put_arrays(self, data: ParcelData, b: int) -> None:
        t, s = self.t_count, self.size
        expected = {
            "patches": (t, N_BANDS, s, s),
            "mask": (s, s),
            "features": (t, N_FEATURES),
        }
        for name, shape in expected.items():
            value = getattr(data, name)
            if value is None or np.shape(value) != shape:
                got = None if value is None else np.shape(value)
                raise ValueError(
                    f"Parcel {data.index} ({data.status}) has {name} of shape {got}, "
                    f"expected {shape} (patch_size={s}, {t} dates)."
                )
        patches = np.rint(data.patches)
        bad = ~((patches >= 0) & (patches <= 65535))  # also catches NaN
        n_bad = int(bad.sum())
        if n_bad:
            self.n_clipped += n_bad
            patches = np.clip(np.nan_to_num(patches, nan=0.0), 0, 65535)
        self.buffers["patches"][b] = patches
        self.buffers["mask"][b] = data.mask
        self.buffers["features"][b] = np.nan_to_num(data.features, nan=0.0, posinf=0.0, neginf=0.0)

    def flush(self) -> None:
        """Hand the filled rows to the writing thread and switch to the other buffer set."""
        if not self.fill:
            return
        start, stop = self.rows, self.rows + self.fill
        self.wait()  # the other set is free again
        self.pending = self.pool.submit(self._write, self.buffers, start, stop)
        self.buffers = self.sets[1] if self.buffers is self.sets[0] else self.sets[0]
        self.rows, self.fill = stop, 0

    def _write(self, buffers: dict[str, np.ndarray], start: int, stop: int) -> None:
        for name, array in self.arrays.items():
            array[start:stop] = buffers[name][: stop - start]

    def wait(self) -> None:
        """Wait for the write in flight; re-raises its error."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def finish(self, attrs: dict[str, Any], ids: np.ndarray) -> dict[str, int]:
        """Write the per-parcel arrays and the attributes; ``ids`` by input position."""
        import zarr
        from numcodecs import VLenUTF8

        n = self.n
        rows = max(1, min(n, META_CHUNK_ROWS))
        meta: dict[str, np.ndarray] = {
            "label": self.label,
            "source_index": self.source_index,
            "status": self.status,
            "n_pixels": self.n_pixels,
            "cloud_fraction": self.cloud_fraction,
            "n_clear_dates": self.n_clear_dates,
            "geometry_repaired": self.geometry_repaired,
            "centroid": self.centroid,
        }
        for name, values in meta.items():
            array = self.group.create_dataset(
                name, shape=values.shape, chunks=(rows, *values.shape[1:]), dtype=values.dtype,
                **_codecs(name, values.dtype),
            )  # fmt: skip
            if n:
                array[:] = values
        id_array = self.group.create_dataset(
            "parcel_id", shape=(n,), chunks=(rows,), dtype=object, object_codec=VLenUTF8(),
            **_codecs("parcel_id", object),
        )  # fmt: skip
        if n:
            id_array[:] = ids[self.source_index]
        counts = {
            STATUS_CODES[c]: int(k)
            for c, k in zip(*np.unique(self.status, return_counts=True), strict=True)
        }
        self.group.attrs.update({**attrs, "counts": counts})
        zarr.consolidate_metadata(self.group.store)
        return counts


def _check_target(out: Path, overwrite: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not is_store(out):
        raise StoreError(
            f"{out} exists and is not a parcel store; refusing to replace it. Choose a new "
            "output path (or remove it yourself if it is disposable)."
        )
    if not overwrite:
        raise StoreError(
            f"The store {out} already exists; allow overwriting (overwrite=True, or --overwrite "
            "on the command line) to replace it."
        )


def _install(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished store into place; an old store is removed only once the new is there."""
    _check_target(out, overwrite)  # again: something may have appeared while we wrote
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:12]}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def season_days(dates: Sequence[str | dt.date]) -> list[int]:
    """Days since 31 December before the first date (see :attr:`Store.season_days`)."""
    parsed = [d if isinstance(d, dt.date) else dt.date.fromisoformat(str(d)) for d in dates]
    if not parsed:
        return []
    origin = dt.date(parsed[0].year, 1, 1)
    return [(d - origin).days + 1 for d in parsed]


def _iso_dates(dates: Sequence[str | dt.date]) -> list[str]:
    out = []
    for d in dates:
        try:
            day = d if isinstance(d, dt.date) else dt.date.fromisoformat(str(d)[:10])
        except ValueError as exc:
            raise ValueError(f"Date {d!r} is not an ISO date (YYYY-MM-DD).") from exc
        out.append(day.isoformat())
    if not out:
        raise ValueError("A store needs at least one date.")
    return out


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN
    except (TypeError, ValueError):  # pandas.NA and friends
        return True


def _label_array(labels: Sequence[Any] | None, n: int) -> np.ndarray:
    out = np.full(n, UNLABELLED, np.int32)
    if labels is None:
        return out
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} parcels; give one per input parcel.")
    for i, value in enumerate(labels):
        if _missing(value):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and number.is_integer() and abs(number) < 2**31):
            raise ValueError(
                f"The label {value!r} of parcel {i} is not an integer class code; map the "
                "labels to the nomenclature's codes first."
            )
        out[i] = int(number)
    return out


def _id_array(ids: Sequence[Any] | None, n: int) -> np.ndarray:
    if ids is None:
        return np.array([str(i) for i in range(n)], dtype=object)
    if len(ids) != n:
        raise ValueError(f"{len(ids)} parcel ids for {n} parcels; give one per input parcel.")

    def text(value: Any) -> str:
        if _missing(value):
            return ""
        if isinstance(value, float) and value.is_integer():
            return str(int(value))  # integer ids read as float because of a missing value
        return str(value)

    return np.array([text(v) for v in ids], dtype=object)


def _class_list(classes: Sequence[Any] | None) -> list[dict[str, Any]] | None:
    if classes is None:
        return None
    out = []
    for c in classes:
        item = dict(c) if isinstance(c, Mapping) else dict(vars(c))
        if "code" not in item or "name" not in item:
            raise ValueError(f"Class {c!r} needs a 'code' and a 'name'.")
        item["code"] = int(item["code"])
        item["name"] = str(item["name"])
        out.append(json.loads(json.dumps(item, default=str)))
    return out


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            total += os.stat(os.path.join(root, name)).st_size
    return total


# -- reading ---------------------------------------------------------------------------------


@dataclass
class Batch:
    """Rows of a store; arrays not asked for are None. Patches are float32 canonical units."""

    rows: np.ndarray  # (n,) row numbers in the store
    label: np.ndarray  # (n,) int32, -1 unlabelled
    source_index: np.ndarray  # (n,) int64
    parcel_id: np.ndarray  # (n,) object (str)
    status: np.ndarray  # (n,) object (status names)
    n_pixels: np.ndarray  # (n,) int32
    cloud_fraction: np.ndarray  # (n, T) float32
    n_clear_dates: np.ndarray  # (n,) int16
    geometry_repaired: np.ndarray  # (n,) bool
    patches: np.ndarray | None = None  # (n, T, 10, P, P) float32 (or as asked)
    mask: np.ndarray | None = None  # (n, P, P) bool
    features: np.ndarray | None = None  # (n, T, 20) float32

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, selection: np.ndarray | slice) -> Batch:
        """The rows at ``selection`` (positions in this batch)."""
        return replace(
            self,
            **{f.name: None if (v := getattr(self, f.name)) is None else v[selection]
               for f in fields(self)},
        )  # fmt: skip

    @staticmethod
    def concat(batches: Sequence[Batch]) -> Batch:
        if len(batches) == 1:
            return batches[0]
        values = {}
        for f in fields(Batch):
            parts = [getattr(b, f.name) for b in batches]
            values[f.name] = None if parts[0] is None else np.concatenate(parts)
        return Batch(**values)


class Store:
    """A store opened read-only; reads rows chunk by chunk so memory stays bounded."""

    def __init__(self, path: str | Path) -> None:
        import zarr

        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"The store {self.path} does not exist.")
        attrs = _read_root_attrs(self.path)
        if attrs.get("format") != FORMAT_NAME:
            raise StoreError(
                f"{self.path} is not a parcel store (no '{FORMAT_NAME}' format mark); point at "
                "a folder written by 'extract' (write_store)."
            )
        version = attrs.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise StoreError(f"{self.path}: invalid store format version {version!r}.")
        if version > FORMAT_VERSION:
            raise StoreError(
                f"{self.path} was written by cropmodels {attrs.get('cropmodels_version', '?')} "
                f"in store format {version}; this cropmodels ({__version__}) reads format "
                f"{FORMAT_VERSION} at most. Update the plugin, or extract again."
            )
        store = zarr.DirectoryStore(str(self.path))
        try:
            self.group = zarr.open_consolidated(store, mode="r")
        except KeyError:  # written without consolidated metadata: still readable
            self.group = zarr.open_group(store, mode="r")
        missing = [n for n in (*CHUNKED_FIELDS, *META_FIELDS) if n not in self.group]
        if missing:
            raise StoreError(f"{self.path} is incomplete: it lacks {', '.join(missing)}.")
        self._attrs = dict(self.group.attrs)
        self._n = int(self.group["patches"].shape[0])
        self._meta: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._status_names = np.array(
            [self._attrs["status_codes"].get(str(c), f"code {c}") for c in range(256)],
            dtype=object,
        )

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, {self._n} parcels, {len(self.dates)} dates)"

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._attrs)

    @property
    def dates(self) -> list[str]:
        return list(self._attrs["dates"])

    @property
    def day_of_year(self) -> list[int]:
        return list(self._attrs["day_of_year"])

    @property
    def centroids(self) -> np.ndarray:
        """(N, 2) parcel centroids in the stack's CRS (``attrs["stack"]["crs"]``), NaN where
        the parcel had no usable geometry: where parcels are, for spatially grouped folds."""
        return self.meta("centroid")

    @property
    def season_days(self) -> list[int]:
        """Days counted from 1 January of the first date's year (1 = that 1 January).

        Unlike days of the year they keep increasing across New Year, so a season from
        December to November, or a 16-month series, is still an increasing date grid.
        """
        return season_days(self.dates)

    @property
    def patch_size(self) -> int:
        return int(self._attrs["patch_size"])

    @property
    def classes(self) -> list[dict[str, Any]] | None:
        return self._attrs.get("classes")

    @property
    def chunk_parcels(self) -> int:
        return int(self.group["patches"].chunks[0])

    def meta(self, name: str) -> np.ndarray:
        """A whole small per-parcel array (``label``, ``status``, ...), cached."""
        if name not in META_FIELDS:
            raise KeyError(f"{name!r} is not one of {', '.join(META_FIELDS)}")
        with self._lock:
            if name not in self._meta:
                self._meta[name] = self.group[name][:]
            return self._meta[name]

    @property
    def labels(self) -> np.ndarray:
        return self.meta("label")

    @property
    def source_index(self) -> np.ndarray:
        return self.meta("source_index")

    @property
    def status(self) -> np.ndarray:
        """Status names per row."""
        return self._status_names[self.meta("status")]

    def usable_indices(self, labelled: bool = False) -> np.ndarray:
        """Rows with patches and features (status ok or partly_outside), optionally labelled."""
        keep = np.isin(self.meta("status"), _USABLE_CODES)
        if labelled:
            keep &= self.meta("label") != UNLABELLED
        return np.flatnonzero(keep)

    def read(
        self,
        indices: Sequence[int] | np.ndarray,
        fields: Iterable[str] | None = None,
        patches_dtype: Any = np.float32,
    ) -> Batch:
        """Rows ``indices`` in the caller's order (duplicates allowed).

        ``fields``: which of ``patches``, ``mask``, ``features`` to read (default all); the GRU
        needs only features, a twentieth of the bytes. ``patches_dtype=np.uint16`` returns
        patches as stored, half the memory of float32 (e.g. to convert on the GPU). Each chunk
        touched is decoded once.
        """
        wanted = self._fields(fields)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self._n):
            raise IndexError(f"row indices must lie in [0, {self._n}) for {self.path}")
        rows, inverse = np.unique(idx, return_inverse=True)
        big = {name: self._gather(name, rows, patches_dtype)[inverse] for name in wanted}
        return Batch(
            rows=idx,
            label=self.meta("label")[idx],
            source_index=self.meta("source_index")[idx],
            parcel_id=self.meta("parcel_id")[idx],
            status=self._status_names[self.meta("status")[idx]],
            n_pixels=self.meta("n_pixels")[idx],
            cloud_fraction=self.meta("cloud_fraction")[idx].astype(np.float32),
            n_clear_dates=self.meta("n_clear_dates")[idx],
            geometry_repaired=self.meta("geometry_repaired")[idx],
            **big,
        )

    def iter_batches(
        self,
        batch_size: int,
        indices: Sequence[int] | np.ndarray | None = None,
        shuffle: bool = False,
        seed: int = 0,
        *,
        fields: Iterable[str] | None = None,
        drop_last: bool = False,
        buffer_mb: float = 256.0,
        prefetch: int = 1,
        patches_dtype: Any = np.float32,
    ) -> Iterator[Batch]:
        """Batches of ``batch_size`` rows (the last may be smaller unless ``drop_last``).

        Whole chunks are loaded, a group of them at a time (about ``buffer_mb`` of decoded
        arrays, at least one chunk). ``prefetch`` groups are read ahead on as many threads
        while the current one is consumed (decoding releases the GIL, so a GPU-fed loop can
        use several; 0 reads in the caller's thread); memory is ``(1 + prefetch) x
        buffer_mb``. With ``shuffle`` the order of the chunks and the rows within each group
        are shuffled, which keeps memory bounded; a batch then mixes parcels from a few places
        of the layer rather than from everywhere. Without it rows come in store order.
        ``fields`` and ``patches_dtype`` as in :meth:`read`.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}.")
        wanted = self._fields(fields)
        rows = np.arange(self._n) if indices is None else np.asarray(indices, np.int64).ravel()
        if rows.size and (rows.min() < 0 or rows.max() >= self._n):
            raise IndexError(f"row indices must lie in [0, {self._n}) for {self.path}")
        rng = np.random.default_rng(seed)
        groups = self._groups(rows, wanted, buffer_mb, rng if shuffle else None, patches_dtype)
        depth = max(0, int(prefetch))
        with cf.ThreadPoolExecutor(max(1, depth), thread_name_prefix="store-read") as pool:
            ahead: deque[cf.Future[Batch]] = deque()
            upcoming = iter(groups)
            for group_rows in itertools.islice(upcoming, depth):
                ahead.append(pool.submit(self.read, group_rows, wanted, patches_dtype))
            carry: Batch | None = None
            for group_rows in groups:
                if depth:
                    loaded = ahead.popleft().result()
                    following = next(upcoming, None)
                    if following is not None:
                        ahead.append(pool.submit(self.read, following, wanted, patches_dtype))
                else:
                    loaded = self.read(group_rows, wanted, patches_dtype)
                batch = loaded if carry is None else Batch.concat([carry, loaded])
                full = len(batch) // batch_size * batch_size
                for start in range(0, full, batch_size):
                    yield batch.take(slice(start, start + batch_size))
                carry = batch.take(slice(full, None)) if full < len(batch) else None
            if carry is not None and not drop_last:
                yield carry

    def _groups(
        self,
        rows: np.ndarray,
        wanted: tuple[str, ...],
        buffer_mb: float,
        rng: Any,
        patches_dtype: Any,
    ) -> list[np.ndarray]:
        """Rows split into groups of whole chunks, in chunk order (shuffled with ``rng``)."""
        if not rows.size:
            return []
        chunk = self.chunk_parcels
        order = np.argsort(rows // chunk, kind="stable")
        rows = rows[order]
        keys = rows // chunk
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        per_chunk = np.split(rows, starts[1:])
        if rng is not None:
            per_chunk = [per_chunk[i] for i in rng.permutation(len(per_chunk))]
        row_bytes = sum(self._row_bytes(name, patches_dtype) for name in wanted) or 1
        per_group = max(1, int(buffer_mb * 2**20 // (row_bytes * chunk)))
        groups = []
        for g in range(0, len(per_chunk), per_group):
            group = np.concatenate(per_chunk[g : g + per_group])
            groups.append(rng.permutation(group) if rng is not None else group)
        return groups

    def _row_bytes(self, name: str, patches_dtype: Any) -> int:
        """Decoded bytes of one row of ``name`` as :meth:`read` returns it."""
        shape = self.group[name].shape[1:]
        itemsize = {"mask": 1, "patches": np.dtype(patches_dtype).itemsize}.get(name, 4)
        return int(np.prod(shape)) * itemsize

    def _fields(self, wanted: Iterable[str] | None) -> tuple[str, ...]:
        if wanted is None:
            return CHUNKED_FIELDS
        wanted = tuple(wanted)
        unknown = [w for w in wanted if w not in CHUNKED_FIELDS]
        if unknown:
            raise KeyError(f"unknown fields {unknown}; choose among {', '.join(CHUNKED_FIELDS)}")
        return wanted

    def _gather(self, name: str, rows: np.ndarray, patches_dtype: Any) -> np.ndarray:
        """Sorted unique ``rows`` of ``name``, decoding each chunk touched once."""
        array = self.group[name]
        dtype = patches_dtype if name == "patches" else array.dtype
        out = np.empty((len(rows), *array.shape[1:]), dtype=dtype)
        if not len(rows):
            return out
        chunk = array.chunks[0]
        keys = rows // chunk
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        for s, e in zip(starts, [*starts[1:], len(rows)], strict=True):
            lo, hi = int(rows[s]), int(rows[e - 1]) + 1
            block = array[lo:hi]
            out[s:e] = block[rows[s:e] - lo]
        return out

    def bytes_on_disk(self) -> int:
        return _du(self.path)

    def bytes_per_parcel(self) -> float:
        return self.bytes_on_disk() / self._n if self._n else 0.0

    def bytes_by_array(self) -> dict[str, int]:
        """Compressed bytes of each array (where the space goes)."""
        return {name: _du(self.path / name) for name in self.group.array_keys()}


def _read_root_attrs(path: Path) -> dict[str, Any]:
    """Root attributes of a zarr v2 group folder, read as JSON (no zarr import needed)."""
    if not path.is_dir():
        raise StoreError(f"{path} is not a folder, so not a parcel store.")
    if not (path / ".zgroup").is_file():
        raise StoreError(f"{path} is not a parcel store (not a zarr group: no .zgroup).")
    attrs_file = path / ".zattrs"
    if not attrs_file.is_file():
        return {}
    try:
        attrs = json.loads(attrs_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"Cannot read the attributes of {path}: {exc}") from exc
    return attrs if isinstance(attrs, dict) else {}
