"""The paper's patch extractor and handcrafted features, streamed block by block.

For every parcel and every date (Garnot et al. 2019, section 3.1):

1. the bounding-box window of the polygon on the stack grid; the polygon is rasterised into it
   (pixels whose centre lies inside) and every other pixel is set to 0;
2. cloudy pixels (SCL classes 3, 8, 9, 10; see :mod:`.stack`) are replaced by linear
   interpolation in time between the previous and the next clear observation *of that pixel*,
   weighted by the days between them; at the ends of the series the nearest clear observation
   is used;
3. the window is resized to ``patch_size`` x ``patch_size`` (32) with a separable triangle
   filter: bilinear interpolation when enlarging (most parcels), an area-weighted antialiasing
   filter as wide as the reduction factor when shrinking (large parcels), as PIL's bilinear
   resize does. It is applied as a *normalised convolution*: values x mask and the mask itself
   are filtered and divided, so the zeros outside the parcel never darken the parcel's border
   pixels. Output pixels with at least half of their weight on the parcel keep the parcel's
   values (``mask``); the others are 0.

Handcrafted features (the GRU's input): per date, the mean and the standard deviation
(population, ddof=0) of each band over the parcel's *clear* pixels at native resolution, i.e.
``(T, 20)`` = 10 means then 10 stds. A date on which no pixel of the parcel is clear gets its
features interpolated in time from the neighbouring dates, like pixels.

Values are in the canonical unit of :mod:`.stack` (reflectance x 10000, offset removed).

Streaming: parcels are sorted by their top row; the stack is read in full-width row chunks,
every date of a chunk read in parallel threads, the next chunk read while the parcels of the
current one are processed. Once a chunk's parcels are done it is cut down to the rows that
parcels still pending need (at most one parcel height), so memory is bounded by ``memory_mb``
(two chunks and that tail, plus GDAL's block cache, which is capped while extracting) whatever
the number of parcels. When the budget holds two chunks as tall as the files' internal blocks,
chunks are aligned to them and each pixel of each date is decoded once; thinner chunks make
GDAL decode some blocks again (the log says so). The parcels of a chunk are
processed in groups of similar window size, each group in a few large array operations (which
release the GIL, so processing threads, one per core within the budget, overlap each other
and the readers; each group in flight adds up to about 64 MB). Only parcels taller than the
budget allows are read on their own (their rows decoded a second time; the log
says how many).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import functools
import logging
import math
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .progress import CancelFn, ProgressFn, check_cancelled, never_cancelled, no_progress
from .rasterize import _wkb_rings, burn_order, polygon_masks
from .stack import PAPER_BANDS, Stack, StackError, open_stack

LOG = logging.getLogger(__name__)

N_BANDS = len(PAPER_BANDS)
N_FEATURES = 2 * N_BANDS

OK = "ok"
OUTSIDE = "outside_stack"
PARTLY_OUTSIDE = "partly_outside"
TOO_SMALL = "too_small"
NO_CLEAR = "no_clear_observation"
INVALID = "invalid_geometry"
TOO_LARGE = "too_large"
STATUS_TEXT = {
    OK: "extracted",
    PARTLY_OUTSIDE: "extracted from the part of the parcel inside the stack",
    OUTSIDE: "the parcel does not overlap the image stack",
    TOO_SMALL: "the parcel contains no pixel centre (smaller than a pixel)",
    NO_CLEAR: "no pixel of the parcel is clear on any date",
    INVALID: "empty, missing or non-polygon geometry",
    TOO_LARGE: "the parcel's window of the stack is larger than the memory budget",
}
USABLE = frozenset({OK, PARTLY_OUTSIDE})
# Rows of previous chunks kept for the parcels still pending, at least, when choosing chunks as
# tall as the files' blocks (taller parcels are read on their own).
MIN_TAIL_ROWS = 64
# GDAL's block cache while reading chunks of whole blocks (each block decoded once).
ALIGNED_GDAL_CACHE_MB = 64
PARCELS_IN_FLIGHT = 32  # at most per processing group
# Bound on the float32 values a processing group holds at once (its stacked windows twice, the
# rows resized, the patches): 16 MB each, about 64 MB per group in flight; groups of more were
# no faster.
GROUP_VALUES = 1 << 22
# GDAL keeps decoded blocks in a cache of 5% of the RAM by default, outside any budget of ours;
# while extracting it is capped to this share of ``memory_mb`` (and restored afterwards). Chunks
# aligned to the files' blocks (a large enough budget) need no cache at all; thinner chunks
# re-decode some blocks (measured +14% time at 1 GB on the benchmark, peak 2.4 -> 1.1 GB).
GDAL_CACHE_SHARE = 0.125
# Memory budget per parcel-processing thread when their number follows the cores: each holds a
# group of up to about 64 MB in flight, and one more waits (``_stream``).
PROCESS_WORKER_MB = 256


class ParcelError(ValueError):
    """The parcel layer cannot be used; the message says what to do."""


@dataclass(frozen=True)
class ExtractConfig:
    patch_size: int = 32
    # Budget for the stack's pixels in memory: GDAL's block cache (capped at GDAL_CACHE_SHARE of
    # it while extracting) plus the row buffer (the rest).
    memory_mb: float = 2048.0
    workers: int = 0  # threads reading dates; 0 = one per core
    # Threads processing groups of parcels (:meth:`_Extractor.process_batch`); 0 = one per
    # core, at most one per PROCESS_WORKER_MB of ``memory_mb`` (a group in flight holds up to
    # about 64 MB), at least 2. Its large array operations release the GIL, so they overlap
    # each other and the readers: on 2 cores, 14,222 parcels of the 2048 px benchmark took
    # 13.3 s with two, 17.9 s with one. A fixed 2 had left extraction, the larger half of a
    # classification, on 2 cores of any machine.
    process_workers: int = 0
    clear_date_fraction: float = 0.5  # a date is clear for a parcel when this share is clear
    # False: the handcrafted features only, no 32 x 32 patches (what a feature model such as
    # ``gru`` reads). Skips the pixels' time interpolation and the resize, most of the work.
    patches: bool = True

    def gdal_cache_mb(self) -> int:
        return max(16, int(self.memory_mb * GDAL_CACHE_SHARE))

    def buffer_mb(self) -> float:
        return max(self.memory_mb - self.gdal_cache_mb(), 1.0)

    def n_workers(self) -> int:
        return self.workers if self.workers > 0 else max(1, os.cpu_count() or 1)

    def n_process_workers(self) -> int:
        if self.process_workers > 0:
            return self.process_workers
        by_memory = max(2, int(self.memory_mb // PROCESS_WORKER_MB))
        return max(1, min(os.cpu_count() or 1, by_memory))


@dataclass
class ParcelData:
    """Everything extracted for one parcel. Arrays are None when the status is not usable."""

    index: int  # 0-based position of the parcel in the input layer
    status: str
    n_pixels: int
    cloud_fraction: np.ndarray  # (T,) share of the parcel's pixels not clear, per date
    n_clear_dates: int
    patches: np.ndarray | None = None  # (T, 10, P, P) float32, 0 outside the parcel
    mask: np.ndarray | None = None  # (P, P) bool, parcel pixels of the patch
    features: np.ndarray | None = None  # (T, 20) float32: means of the 10 bands, then stds
    geometry_repaired: bool = False
    centroid: tuple[float, float] | None = None  # in the stack's CRS; None without a geometry

    @property
    def usable(self) -> bool:
        return self.status in USABLE


@dataclass
class _Job:
    index: int
    geometry: Any
    row0: int
    row1: int
    col0: int
    col1: int
    partly_outside: bool
    repaired: bool
    centroid: tuple[float, float] | None = None
    rings: list[np.ndarray] = field(default_factory=list)  # map coordinates, GDAL's burn order


@dataclass
class _Chunk:
    row0: int
    row1: int
    values: np.ndarray  # (T, 10, rows, cols)
    clear: np.ndarray  # (T, rows, cols)


@dataclass
class ExtractionSummary:
    """Counts by status, and how much was read; filled in while :func:`extract` runs."""

    counts: dict[str, int] = field(default_factory=dict)
    rows_read: int = 0  # summed over the column strips
    rows_reread: int = 0
    peak_buffer_mb: float = 0.0
    strips: int = 0  # column strips the area was read in (1: whole rows)
    aligned: bool = True  # every chunk was of whole blocks: each block decoded about once

    def add(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1


# -- numerical building blocks ---------------------------------------------------------------


def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a 1-D triangle-filter resize (pixel-centre aligned).

    Support 1 input pixel when enlarging (bilinear), ``n_in / n_out`` when shrinking
    (antialiasing); rows sum to 1, so a constant stays constant.
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    inputs = np.arange(n_in) + 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(inputs[None, :] - centres[:, None]) / support)
    weights /= weights.sum(axis=1, keepdims=True)
    return weights.astype(np.float32)


def resize_masked(
    values: np.ndarray, mask: np.ndarray, size: int, assume_zero_outside: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Resize (..., h, w) ``values`` of the pixels where ``mask`` (h, w) holds to size x size.

    Normalised convolution: the outside never leaks into the parcel's values. Returns the
    resized values (0 outside) and the resized boolean mask. ``assume_zero_outside`` skips
    zeroing ``values`` outside the mask when the caller guarantees it.
    """
    h, w = mask.shape
    lead = values.shape[:-2]
    ry = resample_matrix(h, size)
    rx_t = np.ascontiguousarray(resample_matrix(w, size).T)
    weight = mask.astype(np.float32)
    coverage = ry @ weight @ rx_t
    if not assume_zero_outside:
        values = values * weight
    # Columns first as one 2-D product, then rows as a batched one: the fastest order here.
    columns = (values.reshape(-1, w) @ rx_t).reshape(-1, h, size)
    filtered = np.matmul(ry, columns).reshape(*lead, size, size)
    keep = coverage >= min(0.5, 0.5 * float(coverage.max()))
    scale = np.zeros_like(coverage)
    np.divide(1.0, coverage, out=scale, where=keep)
    filtered *= scale  # divides where kept, zeroes the rest, in place
    return filtered, keep


def interpolate_in_time(
    values: np.ndarray, clear: np.ndarray, days: np.ndarray, inplace: bool = False
) -> np.ndarray:
    """Fill the non-clear observations of each pixel by linear interpolation in time.

    ``values`` (T, C, P), ``clear`` (T, P) bool, ``days`` (T,) increasing day numbers. Between
    the previous and next clear dates of a pixel the value is linear in days; before the first
    and after the last clear date it is the nearest clear value; a pixel never clear is NaN.
    Only the non-clear entries are computed, so clear series cost nothing. ``inplace`` fills
    ``values`` itself (float32) instead of a copy.
    """
    out = values if inplace else values.astype(np.float32, copy=True)
    if clear.all():
        return out
    t_count = values.shape[0]
    steps = np.arange(t_count)[:, None]
    prev = np.maximum.accumulate(np.where(clear, steps, -1), axis=0)
    nxt = np.minimum.accumulate(np.where(clear, steps, t_count)[::-1], axis=0)[::-1]
    t, p = np.nonzero(~clear)
    before, after = prev[t, p], nxt[t, p]
    has_before, has_after = before >= 0, after < t_count
    b = np.where(has_before, before, after).clip(0, t_count - 1)
    a = np.where(has_after, after, before).clip(0, t_count - 1)
    vb = values[b, :, p]  # (K, C)
    va = values[a, :, p]
    span = days[a] - days[b]
    w = np.divide(days[t] - days[b], span, out=np.zeros_like(span), where=span > 0)
    filled = vb + w.astype(np.float32)[:, None] * (va - vb)
    filled[~(has_before | has_after)] = np.nan
    out[t, :, p] = filled
    return out


def parcel_features(values: np.ndarray, clear: np.ndarray, days: np.ndarray) -> np.ndarray:
    """(T, 20) per-date mean and std of each band over the clear pixels; see module docstring."""
    weights = clear[:, None, :].astype(np.float32)
    count = weights.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (values * weights).sum(axis=2) / count
        var = (((values - mean[:, :, None]) ** 2) * weights).sum(axis=2) / count
    feats = np.concatenate([mean, np.sqrt(np.maximum(var, 0.0))], axis=1)
    observed = count[:, 0] > 0
    if not observed.all():
        feats = interpolate_in_time(feats[:, :, None], observed[:, None], days)[:, :, 0]
    return feats.astype(np.float32)


@functools.lru_cache(maxsize=1024)
def _resamplers(n_in: int, n_out: int) -> np.ndarray:
    """:func:`resample_matrix`, cached and read-only."""
    m = resample_matrix(n_in, n_out)
    m.flags.writeable = False
    return m


@functools.lru_cache(maxsize=1024)
def _resamplers_t(n_in: int, n_out: int) -> np.ndarray:
    """The transposed :func:`resample_matrix` as :func:`resize_masked` uses it, cached."""
    m = np.ascontiguousarray(resample_matrix(n_in, n_out).T)
    m.flags.writeable = False
    return m


def _padded(n: int) -> int:
    """Padded window side for processing groups: the next multiple of 4 below 32, of 8 below 64,
    of 16 below 128... (at most 25% more). A function of the parcel's own size only."""
    step = max(4, 1 << max(0, n.bit_length() - 3))
    return -(-n // step) * step


def _fill_in_time(flat: np.ndarray, clear: np.ndarray, todo: np.ndarray, days: np.ndarray) -> None:
    """:func:`interpolate_in_time` for a stack of parcels, in place.

    ``flat`` (B, T, C, P) float32, ``clear`` (B, T, P) the observations to keep, ``todo``
    (B, T, P) those to fill; every pixel with an entry to fill has a clear one. Same arithmetic
    as :func:`interpolate_in_time`, entry for entry.
    """
    t_count = flat.shape[1]
    steps = np.arange(t_count, dtype=np.int16)[None, :, None]
    prev = np.maximum.accumulate(np.where(clear, steps, np.int16(-1)), axis=1)
    nxt = np.minimum.accumulate(np.where(clear, steps, np.int16(t_count))[:, ::-1], axis=1)
    nxt = nxt[:, ::-1]
    b, t, p = np.nonzero(todo)
    before, after = prev[b, t, p].astype(np.intp), nxt[b, t, p].astype(np.intp)
    first = np.where(before >= 0, before, after)
    last = np.where(after < t_count, after, before)
    v_first = flat[b, first, :, p]  # (K, C)
    v_last = flat[b, last, :, p]
    span = days[last] - days[first]
    w = np.divide(days[t] - days[first], span, out=np.zeros_like(span), where=span > 0)
    flat[b, t, :, p] = v_first + w.astype(np.float32)[:, None] * (v_last - v_first)


def _groups(jobs: list[_Job], t_count: int, size: int) -> list[list[_Job]]:
    """Processing groups: parcels of the same padded window size, memory bounded."""
    by_size: dict[tuple[int, int], list[_Job]] = {}
    for j in jobs:
        key = (_padded(j.row1 - j.row0), _padded(j.col1 - j.col0))
        by_size.setdefault(key, []).append(j)
    groups = []
    for (hb, wb), members in by_size.items():
        per_parcel = t_count * N_BANDS * (2 * hb * wb + size * wb + size * size)
        n = max(1, min(PARCELS_IN_FLIGHT, GROUP_VALUES // per_parcel))
        groups.extend(members[s : s + n] for s in range(0, len(members), n))
    return groups


# -- parcels ---------------------------------------------------------------------------------


def read_parcels(parcels: Any, layer: str | None = None) -> Any:
    """A GeoDataFrame from any OGR source (path) or an existing GeoDataFrame."""
    import geopandas as gpd

    if isinstance(parcels, gpd.GeoDataFrame):
        return parcels
    path = Path(parcels)
    if not path.exists():
        raise ParcelError(f"The parcel file {path} does not exist.")
    noise = logging.getLogger("fiona._env")
    noise.addFilter(_null_geometry_noise)
    try:
        return gpd.read_file(path, layer=layer) if layer else gpd.read_file(path)
    except Exception as exc:  # fiona raises many types
        raise ParcelError(f"Cannot read parcels from {path}: {exc}") from exc
    finally:
        noise.removeFilter(_null_geometry_noise)


def _null_geometry_noise(record: logging.LogRecord) -> bool:
    """Drop fiona's ERROR record for each null geometry it reads ("Pointer 'hGeom' is NULL"):
    not an error here, such a parcel gets the status invalid_geometry."""
    return "'hGeom' is NULL" not in record.getMessage()


def _polygonal(geom: Any) -> tuple[Any | None, bool]:
    """(polygonal geometry or None, repaired?)."""
    from shapely.geometry import GeometryCollection, MultiPolygon, Polygon
    from shapely.validation import make_valid

    if geom is None or geom.is_empty:
        return None, False
    repaired = False
    if not geom.is_valid:
        geom, repaired = make_valid(geom), True
    if isinstance(geom, Polygon | MultiPolygon):
        return (geom if not geom.is_empty else None), repaired
    if isinstance(geom, GeometryCollection):
        parts = [g for g in geom.geoms if isinstance(g, Polygon | MultiPolygon) and not g.is_empty]
        if parts:
            polys = [p for g in parts for p in (g.geoms if isinstance(g, MultiPolygon) else [g])]
            return MultiPolygon(polys), True
    return None, repaired


POLYGONAL = frozenset({"Polygon", "MultiPolygon", "GeometryCollection"})


def check_parcels(gdf: Any, stack: Stack) -> None:
    """Raise :class:`ParcelError` when the layer as a whole cannot be classified: it has no
    polygon at all (a point or line layer, or only empty geometries), or none of its parcels
    overlaps the stack (another area, or a wrong CRS). A few bad parcels among good ones are
    not an error: they get their status. Called before any pixel is read or file written.

    Cheap on a usable layer: it stops at the first polygon over the stack, compared in the
    layer's own CRS with the stack's extent reprojected (densified, so a little generous: a
    parcel just beyond a corner of the stack passes here and gets ``outside_stack``).
    """
    if not len(gdf):
        return
    if gdf.crs is None:
        raise ParcelError(
            "The parcel layer has no coordinate reference system; set its CRS (Layer "
            "Properties > Source, or a .prj beside a shapefile) and run again."
        )
    left, bottom, right, top = stack.grid.bounds
    crs_text = stack.grid.crs.to_string()
    if gdf.crs != stack.grid.crs:
        from pyproj import Transformer

        to_layer = Transformer.from_crs(stack.grid.crs.to_wkt(), gdf.crs, always_xy=True)
        left, bottom, right, top = to_layer.transform_bounds(
            left, bottom, right, top, densify_pts=21
        )
        crs_text = gdf.crs.to_string()
    present = False
    other_kinds: set[str] = set()
    span = [math.inf, math.inf, -math.inf, -math.inf]
    for geom in gdf.geometry.values:
        if geom is None or geom.is_empty:
            continue
        present = True
        if geom.geom_type not in POLYGONAL:
            other_kinds.add(geom.geom_type)
            continue
        minx, miny, maxx, maxy = geom.bounds
        if minx < right and maxx > left and miny < top and maxy > bottom:
            return  # a polygon over the stack: the layer can be classified
        span = [min(span[0], minx), min(span[1], miny), max(span[2], maxx), max(span[3], maxy)]
    if not present:
        raise ParcelError(
            f"None of the {len(gdf)} features of the parcel layer has a geometry (all are "
            "empty or null); give a layer of parcel polygons."
        )
    if math.isinf(span[0]):  # not a single polygon
        names = " and ".join(sorted(k.lower() for k in other_kinds))
        raise ParcelError(
            f"The parcel layer has {names} geometries; the parcels must be polygons: give a "
            "polygon layer (the parcels' outlines)."
        )
    extent = ", ".join(f"{v:.6g}" for v in span)
    raise ParcelError(
        f"None of the {len(gdf)} parcels overlaps the image stack: in {crs_text} the parcels "
        f"span ({extent}), the stack ({left:.6g}, {bottom:.6g}, {right:.6g}, {top:.6g}). Use "
        "a stack covering the parcels, and check that the layer's CRS is right."
    )


def _plan(
    gdf: Any, stack: Stack, memory_mb: float = math.inf
) -> tuple[list[_Job], list[tuple[int, str, bool, tuple[float, float] | None]]]:
    """Windows of the usable parcels, and (index, status, repaired, centroid) of the others.

    A parcel whose window of the stack would alone take more than ``memory_mb`` as float32
    values (a mistaken polygon over a whole tile, say) is ``too_large``: reading it could
    exhaust the memory, and no crop parcel is that large.
    """
    transform = stack.grid.transform
    if transform.b != 0 or transform.d != 0:
        raise StackError("Rotated image grids are not supported; warp the stack north-up first.")
    if gdf.crs is None:
        raise ParcelError(
            "The parcel layer has no coordinate reference system; set its CRS (Layer "
            "Properties > Source) before classifying."
        )
    if gdf.crs != stack.grid.crs:
        LOG.info("Reprojecting %d parcels from %s to %s", len(gdf), gdf.crs, stack.grid.crs)
        gdf = gdf.to_crs(stack.grid.crs)
    failed: list[tuple[int, str, bool, tuple[float, float] | None]] = []
    kept: list[tuple[int, Any, bool, list[tuple[np.ndarray, bool]]]] = []
    for index, geom in enumerate(gdf.geometry.values):
        geom, repaired = _polygonal(geom)
        table = _wkb_rings(geom.wkb) if geom is not None else []
        if not any(len(coords) for coords, _ in table):
            failed.append((index, INVALID, repaired, None))
            continue
        kept.append((index, geom, repaired, table))
    if not kept:
        return [], failed
    bounds, centres = _bounds_and_centroids([table for *_, table in kept])
    x0, y0 = transform.c, transform.f
    dx, dy = transform.a, -transform.e
    eps = 1e-6
    col0 = np.floor((bounds[:, 0] - x0) / dx + eps).astype(np.int64)
    col1 = np.ceil((bounds[:, 2] - x0) / dx - eps).astype(np.int64)
    row0 = np.floor((y0 - bounds[:, 3]) / dy + eps).astype(np.int64)
    row1 = np.ceil((y0 - bounds[:, 1]) / dy - eps).astype(np.int64)
    c0, c1 = np.maximum(col0, 0), np.minimum(col1, stack.grid.width)
    r0, r1 = np.maximum(row0, 0), np.minimum(row1, stack.grid.height)
    outside = (c0 >= c1) | (r0 >= r1)
    partly = (c0 != col0) | (c1 != col1) | (r0 != row0) | (r1 != row1)
    jobs: list[_Job] = []
    for k, (index, geom, repaired, table) in enumerate(kept):
        centre = (float(centres[k, 0]), float(centres[k, 1]))
        if outside[k]:
            failed.append((index, OUTSIDE, repaired, centre))
            continue
        window_bytes = len(stack) * N_BANDS * 4 * int(r1[k] - r0[k]) * int(c1[k] - c0[k])
        if window_bytes > memory_mb * 2**20:
            failed.append((index, TOO_LARGE, repaired, centre))
            continue
        jobs.append(
            _Job(index, geom, int(r0[k]), int(r1[k]), int(c0[k]), int(c1[k]), bool(partly[k]),
                 repaired, centre, burn_order(table))
        )  # fmt: skip
    failed.sort()
    return jobs, failed


def _bounds_and_centroids(tables: list[list[tuple[np.ndarray, bool]]]) -> tuple[np.ndarray, ...]:
    """(P, 4) bounds and (P, 2) area centroids of P polygonal parcels from their rings, in a few
    array operations (per parcel, shapely 1.8's properties cost more than everything else of
    planning). Holes count negatively, as in GEOS; coordinates are taken relative to each
    parcel's first vertex so that projected coordinates keep their precision."""
    rings = [(coords, exterior) for table in tables for coords, exterior in table if len(coords)]
    lengths = np.array([len(c) for c, _ in rings])
    owner = np.repeat(np.arange(len(tables)), [sum(len(c) > 0 for c, _ in t) for t in tables])
    coords = np.concatenate([c for c, _ in rings])
    ring_start = np.cumsum(lengths) - lengths
    first_ring = np.searchsorted(owner, np.arange(len(tables)))
    parcel_start = ring_start[first_ring]
    bounds = np.column_stack(
        [
            np.minimum.reduceat(coords[:, 0], parcel_start),
            np.minimum.reduceat(coords[:, 1], parcel_start),
            np.maximum.reduceat(coords[:, 0], parcel_start),
            np.maximum.reduceat(coords[:, 1], parcel_start),
        ]
    )
    origin = coords[parcel_start]  # (P, 2)
    local = coords - origin[np.repeat(owner, lengths)]
    x, y = local[:, 0], local[:, 1]
    last = np.zeros(len(coords), dtype=bool)
    last[ring_start + lengths - 1] = True
    nxt = np.minimum(np.arange(len(coords)) + 1, len(coords) - 1)
    cross = np.where(last, 0.0, x * y[nxt] - x[nxt] * y)
    twice_area = np.add.reduceat(cross, ring_start)
    mx = np.add.reduceat((x + x[nxt]) * cross, ring_start)  # 6 A cx
    my = np.add.reduceat((y + y[nxt]) * cross, ring_start)
    sign = np.where([exterior for _, exterior in rings], 1.0, -1.0) * np.sign(twice_area)
    area = np.bincount(owner, sign * twice_area, minlength=len(tables))
    sx = np.bincount(owner, sign * mx, minlength=len(tables))
    sy = np.bincount(owner, sign * my, minlength=len(tables))
    with np.errstate(invalid="ignore", divide="ignore"):
        centres = origin + np.column_stack([sx, sy]) / (3.0 * area[:, None])
    flat = ~(np.abs(area) > 0)  # degenerate: the middle of the bounds
    centres[flat] = (bounds[flat, :2] + bounds[flat, 2:]) / 2
    return bounds, centres


# -- the streamed extraction -----------------------------------------------------------------


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """numpy's BLAS on one thread while extracting: the products here are small, and a
    multi-threaded OpenBLAS spends more time spinning than computing next to our own threads.
    (Process-wide while active; torch's own thread pool is not affected.)"""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _enter_gdal_env() -> None:
    import rasterio

    rasterio.Env().__enter__()  # lives as long as the worker thread


class _Extractor:
    def __init__(self, stack: Stack, config: ExtractConfig) -> None:
        import rasterio

        self.stack = stack
        self.config = config
        self.days = np.array([e.date.toordinal() for e in stack.dates], dtype=np.float64)
        self.offsets = np.array([e.offset for e in stack.dates], np.float32)[:, None, None]
        self.factors = np.array([e.factor for e in stack.dates], np.float32)[:, None, None]
        self.rescale = bool(np.any(self.offsets != 0) or np.any(self.factors != 1))
        dtypes, block_rows, block_cols = [], 1, 1
        for entry in stack.dates:
            with rasterio.open(entry.bands[0].path) as ds:
                dtypes.append(np.dtype(ds.dtypes[entry.bands[0].index - 1]))
                rows, cols = ds.block_shapes[entry.bands[0].index - 1]
                block_rows, block_cols = max(block_rows, rows), max(block_cols, cols)
        self.dtype = np.result_type(*dtypes)
        self.float_source = bool(np.issubdtype(self.dtype, np.floating))
        self.block_rows = min(block_rows, stack.grid.height)
        self.block_cols = min(block_cols, stack.grid.width)
        self._local = threading.local()
        self._readers: list[Any] = []
        self._lock = threading.Lock()
        self.pool = cf.ThreadPoolExecutor(config.n_workers(), thread_name_prefix="stack-read")
        self.prefetch = cf.ThreadPoolExecutor(1, thread_name_prefix="stack-prefetch")
        # Parcels are processed beside the readers; each worker keeps one GDAL environment,
        # else every rasterisation would set one up.
        self.workers = cf.ThreadPoolExecutor(
            config.n_process_workers(), thread_name_prefix="parcel", initializer=_enter_gdal_env
        )

    def close(self) -> None:
        self.workers.shutdown(wait=True, cancel_futures=True)
        self.prefetch.shutdown(wait=True, cancel_futures=True)
        self.pool.shutdown(wait=True, cancel_futures=True)
        for reader in self._readers:
            reader.close()

    def _reader(self) -> Any:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = self.stack.reader()
            self._local.reader = reader
            with self._lock:
                self._readers.append(reader)
        return reader

    def read(self, row0: int, row1: int, col0: int, col1: int) -> _Chunk:
        from rasterio.windows import Window

        window = Window(col0, row0, col1 - col0, row1 - row0)
        t_count = len(self.stack)
        values = np.empty((t_count, N_BANDS, row1 - row0, col1 - col0), dtype=self.dtype)
        clear = np.empty((t_count, row1 - row0, col1 - col0), dtype=bool)

        def one(t: int) -> None:
            self._reader().read(t, window, out=values[t], out_clear=clear[t])

        list(self.pool.map(one, range(t_count)))
        return _Chunk(row0, row1, values, clear)

    def inside(self, job: _Job) -> np.ndarray:
        """(h, w) bool over the job's window: pixel centres inside its polygon (GDAL's rule,
        :mod:`cropmodels.rasterize`). Per parcel, so overlapping parcels each get all theirs."""
        window = (job.row0, job.row1, job.col0, job.col1)
        return polygon_masks([job.rings], self.stack.grid.transform, [window])[0]

    def process(
        self, job: _Job, vals: np.ndarray, clr: np.ndarray, inside: np.ndarray | None = None
    ) -> ParcelData:
        """Patches and features of one parcel from its (T, 10, h, w) window of the stack.

        ``inside`` (h, w) bool is the rasterised polygon when the caller has it already. The
        reference for :meth:`process_batch`, which extraction uses.
        """
        t_count = len(self.stack)
        if inside is None:
            inside = self.inside(job)
        n_pixels = int(inside.sum())
        status = PARTLY_OUTSIDE if job.partly_outside else OK
        if n_pixels == 0:
            return ParcelData(job.index, TOO_SMALL, 0, np.ones(t_count, np.float32), 0,
                              geometry_repaired=job.repaired)  # fmt: skip
        # Work on the whole window (T, 10, h*w): no gather/scatter of the parcel's pixels.
        h, w = inside.shape
        window = vals.astype(np.float32)
        if self.rescale:
            window += self.offsets[:, :, :, None]
            window *= self.factors[:, :, :, None]
        if self.float_source:
            np.nan_to_num(window, copy=False)  # NaN (never clear) must not poison the sums
        flat = window.reshape(t_count, N_BANDS, h * w)
        ins = inside.reshape(-1)
        clear_in = clr.reshape(t_count, -1) & ins  # clear observations of the parcel
        clear_share = (clear_in.sum(axis=1) / n_pixels).astype(np.float32)
        n_clear_dates = int((clear_share >= self.config.clear_date_fraction).sum())
        cloud_fraction = 1.0 - clear_share
        if not clear_in.any():
            return ParcelData(job.index, NO_CLEAR, n_pixels, cloud_fraction, 0,
                              geometry_repaired=job.repaired)  # fmt: skip
        feats = parcel_features(flat, clear_in, self.days)
        if not self.config.patches:
            return ParcelData(job.index, status, n_pixels, cloud_fraction, n_clear_dates,
                              features=feats, geometry_repaired=job.repaired)  # fmt: skip
        # Pixels outside count as clear so that only the parcel's cloudy entries are filled.
        interpolate_in_time(flat, clear_in | ~ins, self.days, inplace=True)
        mask = (clear_in.any(axis=0) & ins).reshape(h, w)  # inside and clear at least once
        window = np.where(mask, window, np.float32(0))
        patches, patch_mask = resize_masked(
            window, mask, self.config.patch_size, assume_zero_outside=True
        )
        return ParcelData(
            job.index,
            status,
            n_pixels,
            cloud_fraction,
            n_clear_dates,
            patches=patches,
            mask=patch_mask,
            features=feats,
            geometry_repaired=job.repaired,
        )

    def process_batch(
        self,
        jobs: list[_Job],
        buffer: list[_Chunk],
        col0: int,
    ) -> list[ParcelData]:
        """:meth:`process` for a group of parcels at once, in a few large array operations.

        The windows (taken from the chunks of ``buffer``, whose columns start at ``col0``) are
        stacked zero-padded into (B, T, 10, Hb, Wb); padding counts as outside the parcels.
        Padded sizes depend on each parcel's own window only (:func:`_padded`) and every step
        works per parcel, so a parcel's result does not depend on the others of its group.
        Same results as :meth:`process` up to float rounding (exactly the same masks).
        """
        t_count = len(self.stack)
        size = self.config.patch_size
        results: list[ParcelData | None] = [None] * len(jobs)
        live: list[tuple[int, np.ndarray]] = []
        shape = (
            max(_padded(j.row1 - j.row0) for j in jobs),
            max(_padded(j.col1 - j.col0) for j in jobs),
        )
        windows = [(j.row0, j.row1, j.col0, j.col1) for j in jobs]
        masks = polygon_masks([j.rings for j in jobs], self.stack.grid.transform, windows, shape)
        for k, job in enumerate(jobs):
            inside = masks[k, : job.row1 - job.row0, : job.col1 - job.col0]
            if not inside.any():
                results[k] = ParcelData(job.index, TOO_SMALL, 0, np.ones(t_count, np.float32),
                                        0, geometry_repaired=job.repaired)  # fmt: skip
            else:
                live.append((k, inside))
        if not live:
            return results  # type: ignore[return-value]
        n_live = len(live)
        hb = max(_padded(inside.shape[0]) for _, inside in live)
        wb = max(_padded(inside.shape[1]) for _, inside in live)
        # Windows gathered in the stack's own type (a plain copy, the gather being bound by
        # memory latency), then converted in one pass: faster than converting while gathering.
        raw = np.zeros((n_live, t_count, N_BANDS, hb, wb), self.dtype)
        clear = np.zeros((n_live, t_count, hb, wb), bool)
        ins = np.zeros((n_live, hb, wb), bool)
        ry = np.zeros((n_live, size, hb), np.float32)
        rx_t = np.zeros((n_live, wb, size), np.float32)
        resamplers = []
        for i, (k, inside) in enumerate(live):
            job = jobs[k]
            h, w = inside.shape
            c0, c1 = job.col0 - col0, job.col1 - col0
            for c in buffer:
                a, b = max(job.row0, c.row0), min(job.row1, c.row1)
                if a < b:
                    rows = slice(a - job.row0, b - job.row0)
                    raw[i, :, :, rows, :w] = c.values[:, :, a - c.row0 : b - c.row0, c0:c1]
                    clear[i, :, rows, :w] = c.clear[:, a - c.row0 : b - c.row0, c0:c1]
            ins[i, :h, :w] = inside
            ry_i, rx_t_i = _resamplers(h, size), _resamplers_t(w, size)
            ry[i, :, :h] = ry_i
            rx_t[i, :w] = rx_t_i
            resamplers.append((ry_i, rx_t_i))
        values = raw.astype(np.float32, copy=False)
        del raw
        if self.rescale:
            values += self.offsets[None, :, :, :, None]
            values *= self.factors[None, :, :, :, None]
        if self.float_source:
            np.nan_to_num(values, copy=False)
        area = hb * wb
        flat = values.reshape(n_live, t_count, N_BANDS, area)
        clear &= ins[:, None]  # clear observations of the parcels
        clear_flat = clear.reshape(n_live, t_count, area)
        n_pixels = ins.reshape(n_live, area).sum(axis=1)
        counts = clear_flat.sum(axis=2)  # (B, T)
        clear_share = (counts / n_pixels[:, None]).astype(np.float32)
        n_clear_dates = (clear_share >= self.config.clear_date_fraction).sum(axis=1)
        cloud_fraction = 1.0 - clear_share
        # Features: sums over each parcel's clear pixels as (10, area) @ (area, 1) products.
        weights = clear_flat.astype(np.float32)[:, :, :, None]  # (B, T, area, 1)
        count = counts.astype(np.float32)[:, :, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.matmul(flat, weights)[..., 0] / count  # (B, T, 10)
            dev = flat - mean[..., None]
            np.square(dev, out=dev)
            var = np.matmul(dev, weights)[..., 0] / count
        del dev, weights
        feats = np.concatenate([mean, np.sqrt(np.maximum(var, 0.0))], axis=2)  # (B, T, 20)
        observed = counts > 0
        usable = observed.any(axis=1)
        if not observed[usable].all():  # dates without a clear pixel: interpolated in time
            part = np.ascontiguousarray(feats[usable].transpose(1, 2, 0))  # (T, 20, B')
            part = interpolate_in_time(part, observed[usable].T, self.days, inplace=True)
            feats[usable] = part.transpose(2, 0, 1)
        feats = feats.astype(np.float32, copy=False)
        if not self.config.patches:
            for i, (k, _) in enumerate(live):
                job = jobs[k]
                status = PARTLY_OUTSIDE if job.partly_outside else OK
                results[k] = ParcelData(
                    job.index,
                    status if usable[i] else NO_CLEAR,
                    int(n_pixels[i]),
                    cloud_fraction[i],
                    int(n_clear_dates[i]) if usable[i] else 0,
                    features=feats[i] if usable[i] else None,
                    geometry_repaired=job.repaired,
                )
            return results  # type: ignore[return-value]
        # Time interpolation of the parcels' cloudy pixels; pixels never clear become outside.
        mask = clear.any(axis=1)  # (B, hb, wb): inside and clear at least once
        mask_flat = mask.reshape(n_live, 1, area)
        todo = mask_flat & ~clear_flat  # (B, T, area)
        if todo.any():
            _fill_in_time(flat, clear_flat | ~mask_flat, todo, self.days)
        values *= mask[:, None, None]  # zero outside (and in the padding)
        # Resize: rows as small products, then columns as one product per parcel (writes the
        # patches in place, the fastest order here); normalised by the parcel's coverage,
        # computed per parcel exactly as resize_masked does (same masks).
        n_out = t_count * N_BANDS
        rows = np.matmul(ry[:, None], values.reshape(n_live, n_out, hb, wb))  # (B, n, P, wb)
        del values, flat
        patches = np.matmul(rows.reshape(n_live, n_out * size, wb), rx_t)
        del rows
        patches = patches.reshape(n_live, t_count, N_BANDS, size, size)
        for i, (k, inside) in enumerate(live):
            job = jobs[k]
            status = PARTLY_OUTSIDE if job.partly_outside else OK
            if not usable[i]:
                results[k] = ParcelData(job.index, NO_CLEAR, int(n_pixels[i]), cloud_fraction[i],
                                        0, geometry_repaired=job.repaired)  # fmt: skip
                continue
            h, w = inside.shape
            weight = mask[i, :h, :w].astype(np.float32)
            ry_i, rx_t_i = resamplers[i]
            coverage = ry_i @ weight @ rx_t_i
            keep = coverage >= min(0.5, 0.5 * float(coverage.max()))
            scale = np.zeros_like(coverage)
            np.divide(1.0, coverage, out=scale, where=keep)
            patch = patches[i]
            patch *= scale
            results[k] = ParcelData(
                job.index,
                status,
                int(n_pixels[i]),
                cloud_fraction[i],
                int(n_clear_dates[i]),
                patches=patch,
                mask=keep,
                features=feats[i],
                geometry_repaired=job.repaired,
            )
        return results  # type: ignore[return-value]


def extract(
    parcels: Any,
    stack: str | Path | Stack,
    config: ExtractConfig | None = None,
    progress: ProgressFn = no_progress,
    is_cancelled: CancelFn = never_cancelled,
    summary: ExtractionSummary | None = None,
) -> Iterator[ParcelData]:
    """Yield one :class:`ParcelData` per parcel (in streaming order; ``index`` says which).

    ``parcels``: a path to any OGR source or a GeoDataFrame (any CRS; reprojected to the
    stack's). Raises :class:`~.progress.Cancelled` between chunks when ``is_cancelled()``.
    """
    config = config or ExtractConfig()
    stack = open_stack(stack)
    gdf = read_parcels(parcels)
    # The whole budget: GDAL's cache and the row buffer (at least 17 MB, see ExtractConfig).
    jobs, failed = _plan(gdf, stack, config.gdal_cache_mb() + config.buffer_mb())
    summary = summary if summary is not None else ExtractionSummary()
    total = len(gdf)
    t_count = len(stack)
    done = 0
    for index, status, repaired, centroid in failed:
        summary.add(status)
        done += 1
        yield ParcelData(index, status, 0, np.ones(t_count, np.float32), 0,
                         geometry_repaired=repaired, centroid=centroid)  # fmt: skip
    if not jobs:
        progress(1.0, "no parcel overlaps the stack")
        return

    import rasterio

    ex = _Extractor(stack, config)
    try:
        strips = _strips(ex, jobs, config)
        summary.strips = len(strips)
        summary.aligned = all(chunking.aligned for _, chunking in strips)
        if len(strips) > 1:
            LOG.info("Reading the stack in %d column strips: whole rows of blocks of the area "
                     "do not fit in the memory budget", len(strips))  # fmt: skip
        # GDAL_CACHEMAX is process-wide in GDAL; rasterio restores the previous value on exit.
        # Chunks of whole blocks decode each block once and need no more cache than the blocks
        # being decoded.
        cache_mb = ALIGNED_GDAL_CACHE_MB if summary.aligned else config.gdal_cache_mb()
        with rasterio.Env(GDAL_CACHEMAX=min(cache_mb, config.gdal_cache_mb())), _one_blas_thread():
            centres = {j.index: j.centroid for j in jobs}
            for strip, chunking in strips:
                for data in _stream(
                    ex, strip, chunking, config, summary, progress, is_cancelled, done, total
                ):
                    data.centroid = centres[data.index]
                    yield data
                done += len(strip)
    finally:
        ex.close()
    repaired = sum(1 for j in jobs if j.repaired) + sum(1 for f in failed if f[2])
    if repaired:
        LOG.info("%d invalid parcel geometries were repaired (make_valid) before extraction",
                 repaired)  # fmt: skip
    LOG.info("Extraction: %s", ", ".join(f"{v} {k}" for k, v in sorted(summary.counts.items())))


@dataclass(frozen=True)
class _Chunking:
    col0: int
    col1: int
    chunk_rows: int
    max_parcel_rows: int  # taller parcels are read on their own
    aligned: bool  # chunks of whole blocks: each block decoded once


def _chunking(ex: _Extractor, jobs: list[_Job], config: ExtractConfig) -> _Chunking:
    """Row chunks for the memory budget: the chunk being processed, the next one being read
    ahead, and the tail of the previous ones that parcels still pending need (at most one
    parcel height: chunks are trimmed to it); 20% for the parcels in flight and temporaries."""
    col0 = min(j.col0 for j in jobs)
    col1 = max(j.col1 for j in jobs)
    bytes_per_row = len(ex.stack) * (N_BANDS * ex.dtype.itemsize + 1) * (col1 - col0)
    budget_rows = max(6, int(config.buffer_mb() * 2**20 * 0.8 // bytes_per_row))
    chunk_rows = max(1, budget_rows // 6)
    block = ex.block_rows
    if chunk_rows < block <= (budget_rows - MIN_TAIL_ROWS) // 2:
        chunk_rows = block  # two whole blocks fit: read block rows, decode each block once
    aligned = chunk_rows >= block
    if aligned:
        chunk_rows = chunk_rows // block * block
    return _Chunking(col0, col1, chunk_rows, max(budget_rows - 2 * chunk_rows, 1), aligned)


def _strips(
    ex: _Extractor, jobs: list[_Job], config: ExtractConfig
) -> list[tuple[list[_Job], _Chunking]]:
    """The parcels in column strips, each narrow enough for chunks of whole blocks, with the
    chunking of each.

    Chunks span the parcels' columns. When rows of whole blocks that wide do not fit in the
    memory budget (a wide area: 2745 columns of 24 dates need 1.9 GB, a whole Sentinel-2 tile
    four times that), the chunks would be thinner than the blocks and GDAL would decode each
    block once per chunk crossing it (3 times at 2745 columns and 2 GB, 12 times for a tile).
    Instead the area is cut into strips of whole block columns, as wide as the budget allows
    less the widest parcel: a parcel belongs to the strip where its window starts and its
    strip reads as far right as its parcels reach, so only the block column at each strip's
    right edge is decoded twice. Parcels wider than half the strip width end in a last strip
    of their own (read as before). One strip when whole rows fit, the files are in strips
    (blocks as wide as the area: nothing to gain), or the budget holds no aligned strip.
    """
    whole = _chunking(ex, jobs, config)
    block = ex.block_cols
    if whole.aligned or len(jobs) < 2 or block >= whole.col1 - whole.col0:
        return [(jobs, whole)]
    per_column = len(ex.stack) * (N_BANDS * ex.dtype.itemsize + 1)
    rows = 2 * ex.block_rows + MIN_TAIL_ROWS  # what _chunking needs for whole blocks
    max_width = int(config.buffer_mb() * 2**20 * 0.8 // (per_column * rows))
    widths = np.array([j.col1 - j.col0 for j in jobs])
    margin = int(min(widths.max(), max_width // 2))
    step = (max_width - margin) // block * block
    if step < block:
        return [(jobs, whole)]
    base = whole.col0 // block * block
    strips: dict[int, list[_Job]] = {}
    wide = []
    for job, width in zip(jobs, widths, strict=True):
        if width > margin:
            wide.append(job)
        else:
            strips.setdefault((job.col0 - base) // step, []).append(job)
    parts = [strips[k] for k in sorted(strips)] + ([wide] if wide else [])
    return [(part, _chunking(ex, part, config)) for part in parts]


def select_dates(
    results: Iterable[ParcelData], indices: Sequence[int], clear_date_fraction: float = 0.5
) -> Iterator[ParcelData]:
    """Keep only the dates at ``indices`` (positions in the stack) of each extracted parcel.

    Clouds are interpolated over every date of the stack before dates are dropped, so a kept
    date that is cloudy over a parcel is filled from each pixel's nearest clear observations
    on *any* date of the stack: extracting the whole stack and keeping a date grid uses every
    clear observation, which extracting a stack made of the grid's dates alone would not.
    ``n_clear_dates`` is recounted over the kept dates (``clear_date_fraction`` as in
    :class:`ExtractConfig`). Closing this generator closes ``results``.
    """
    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim != 1 or not len(idx) or np.any(np.diff(idx) <= 0) or idx[0] < 0:
        raise ValueError("indices must be increasing non-negative date positions")
    try:
        for data in results:
            if idx[-1] >= len(data.cloud_fraction):
                raise ValueError(
                    f"date position {int(idx[-1])} is beyond the {len(data.cloud_fraction)} "
                    "dates extracted"
                )
            cloud = data.cloud_fraction[idx]
            yield dataclasses.replace(
                data,
                cloud_fraction=cloud,
                n_clear_dates=int(((1.0 - cloud) >= clear_date_fraction).sum())
                if data.n_clear_dates
                else 0,
                patches=None if data.patches is None else data.patches[idx],
                features=None if data.features is None else data.features[idx],
            )
    finally:
        close = getattr(results, "close", None)
        if callable(close):
            close()


def _stream(
    ex: _Extractor,
    jobs: list[_Job],
    chunking: _Chunking,
    config: ExtractConfig,
    summary: ExtractionSummary,
    progress: ProgressFn,
    is_cancelled: CancelFn,
    done: int,
    total: int,
) -> Iterator[ParcelData]:
    stack = ex.stack
    t_count = len(stack)
    col0, col1 = chunking.col0, chunking.col1
    chunk_rows, max_parcel_rows = chunking.chunk_rows, chunking.max_parcel_rows
    if not chunking.aligned:
        LOG.info(
            "The memory budget holds %d rows per chunk, fewer than the files' %d-row blocks; "
            "GDAL may decode some blocks more than once. A larger budget avoids it.",
            chunk_rows, ex.block_rows,
        )  # fmt: skip

    tall = [j for j in jobs if j.row1 - j.row0 > max_parcel_rows]
    jobs = [j for j in jobs if j.row1 - j.row0 <= max_parcel_rows]
    if tall:
        LOG.warning(
            "%d parcels are taller than the memory budget allows for the row buffer "
            "(%d rows); they are read on their own. Raise the memory budget to avoid it.",
            len(tall), max_parcel_rows,
        )  # fmt: skip

    def emit(data: ParcelData) -> ParcelData:
        nonlocal done
        summary.add(data.status)
        done += 1
        if done % 64 == 0 or done == total:
            progress(done / total, f"{done} of {total} parcels")
        return data

    # Row chunks, aligned to the files' blocks, that some parcel needs.
    needed = sorted({k for j in jobs for k in range(j.row0 // chunk_rows,
                                                    (j.row1 - 1) // chunk_rows + 1)})  # fmt: skip
    by_bottom = sorted(jobs, key=lambda j: j.row1)
    row0s = np.array([j.row0 for j in by_bottom])
    pending = np.ones(len(by_bottom), dtype=bool)
    cursor = 0
    buffer: list[_Chunk] = []
    held: tuple[_Chunk, ...] = ()
    # Groups submitted to the workers and not yet yielded: one per worker and one waiting.
    inflight: collections.deque[cf.Future[list[ParcelData]]] = collections.deque()
    max_inflight = config.n_process_workers() + 1

    def chunk_range(k: int) -> tuple[int, int]:
        return k * chunk_rows, min((k + 1) * chunk_rows, stack.grid.height)

    future = ex.prefetch.submit(ex.read, *chunk_range(needed[0]), col0, col1) if needed else None
    for position, _k in enumerate(needed):
        check_cancelled(is_cancelled)
        assert future is not None
        chunk = future.result()
        summary.rows_read += chunk.row1 - chunk.row0
        # The groups of the previous chunk hold it whole: finish them before reading ahead, so
        # that only its trimmed tail, this chunk and the next are in memory.
        while inflight:
            yield from map(emit, inflight.popleft().result())
        held = ()  # nor keep it here
        if position + 1 < len(needed):
            future = ex.prefetch.submit(ex.read, *chunk_range(needed[position + 1]), col0, col1)
        buffer.append(chunk)
        mb = sum(c.values.nbytes + c.clear.nbytes for c in buffer) / 2**20
        summary.peak_buffer_mb = max(summary.peak_buffer_mb, mb)
        ready = []
        while cursor < len(by_bottom) and by_bottom[cursor].row1 <= chunk.row1:
            ready.append(by_bottom[cursor])
            pending[cursor] = False
            cursor += 1
        held = tuple(buffer)  # the chunks of this step, for the groups still in flight later
        for group in _groups(ready, t_count, config.patch_size):
            check_cancelled(is_cancelled)
            inflight.append(ex.workers.submit(ex.process_batch, group, held, col0))
            while len(inflight) > max_inflight:
                yield from map(emit, inflight.popleft().result())
        lowest = int(row0s[pending].min()) if pending.any() else stack.grid.height
        buffer = [_trimmed(c, lowest) for c in buffer if c.row1 > lowest]
    while inflight:
        yield from map(emit, inflight.popleft().result())

    for job in tall:
        check_cancelled(is_cancelled)
        chunk = ex.read(job.row0, job.row1, job.col0, job.col1)
        summary.rows_reread += job.row1 - job.row0
        done_tall = ex.workers.submit(ex.process_batch, [job], (chunk,), job.col0)
        yield from map(emit, done_tall.result())


def _trimmed(chunk: _Chunk, row0: int) -> _Chunk:
    """The rows of ``chunk`` from ``row0`` on, copied so that the rest can be freed (the groups
    in flight keep their reference to the whole chunk until they finish)."""
    if row0 <= chunk.row0:
        return chunk
    cut = row0 - chunk.row0
    return _Chunk(
        row0,
        chunk.row1,
        np.ascontiguousarray(chunk.values[:, :, cut:]),
        np.ascontiguousarray(chunk.clear[:, cut:]),
    )


def _process_buffered(
    ex: _Extractor, buffer: list[_Chunk], job: _Job, inside: np.ndarray | None, *, col0: int
) -> ParcelData:
    parts = [c for c in buffer if c.row1 > job.row0 and c.row0 < job.row1]
    values, clear = _window(parts, job, col0, "values"), _window(parts, job, col0, "clear")
    return ex.process(job, values, clear, inside)


def _window(parts: list[_Chunk], job: _Job, col0: int, name: str) -> np.ndarray:
    """The job's window from the buffered chunks (a view when one chunk holds it all)."""
    c0, c1 = job.col0 - col0, job.col1 - col0
    pieces = []
    for c in parts:
        a, b = max(job.row0, c.row0) - c.row0, min(job.row1, c.row1) - c.row0
        pieces.append(getattr(c, name)[..., a:b, c0:c1])
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=-2)
