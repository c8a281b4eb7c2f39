"""Stacks made of what analysts download: Sentinel-2 L2A products and STAC items.

A *scene* is one acquisition of one tile: a granule of a product (:mod:`.s2products`) or a STAC
item (:mod:`.stac`). Its bands are read where they are (JP2 files in a .SAFE folder or, through
GDAL's ``/vsizip/``, inside the .zip; asset hrefs, remote ones through ``/vsicurl/``), nothing
is unpacked or copied. Scenes become one :class:`~.stack.Stack`:

* **Grid**: 10 m, in the CRS most scenes share (ties: the first tile in name order), on the
  lattice of their tiles; it covers the union of the scenes, or only ``bounds`` when given
  (the parcels' extent), so that only the windows the parcels need are ever read. Scenes that
  miss the extent are left out. Tiles in another CRS are warped (bilinear; SCL nearest).
* **Dates**: one observation per day. Several scenes of one day (adjacent tiles, or the same
  tile from two orbits or two processings) form one mosaic date: ranked by their clear fraction
  over the extent (read from SCL when an extent is given, else from the metadata's cloud and
  no-data percentages), each pixel takes the first scene where it is clear, or else the first
  that observed it. Overlapping tiles of one datatake hold the same pixels, so for tiles the
  order does not matter; for two orbits it favours the clearer acquisition and fills its
  clouds and swath gaps from the other.
* **Values**: the scale and the processing-baseline offset (``BOA_ADD_OFFSET``, -1000 from
  baseline 04.00) of each scene travel with it (:class:`~.stack.DateEntry`), so products from
  before and after 04.00 read as the same reflectance.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .stack import (
    CLOUD_CLASSES,
    NOT_OBSERVED_CLASSES,
    BandRef,
    DateEntry,
    Grid,
    Stack,
    StackError,
    as_date,
    crop_grid,
)

LOG = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)  # compared and hashed by identity
class Scene:
    """One acquisition of one tile."""

    date: dt.date
    tile: str
    bands: tuple[BandRef, ...]  # PAPER_BANDS order, each at its native resolution
    cloud: BandRef | None  # SCL (20 m)
    scale: float
    offset: float  # in DN, e.g. -1000 from processing baseline 04.00
    source: str  # the product or item, for messages
    nodata: float | None = 0.0
    time: dt.datetime | None = None
    orbit: int | None = None
    baseline: str | None = None
    cloud_percent: float | None = None  # from the metadata, over the whole tile
    nodata_percent: float | None = None
    grid: Grid | None = None  # of bands[0] (10 m) when the metadata says it; else read
    lonlat_bbox: tuple[float, float, float, float] | None = None  # footprint, when known

    @property
    def label(self) -> str:
        orbit = f" R{self.orbit:03d}" if self.orbit is not None else ""
        time = f" {self.time:%H:%M}" if self.time else ""
        return f"T{self.tile}{orbit}{time} ({Path(self.source).name})"

    def entry(self) -> DateEntry:
        return DateEntry(self.date, self.bands, self.cloud, self.scale, self.offset, self.nodata)


def source_kind(path: Path) -> str | None:
    """'products' or 'stac' when ``path`` is something :func:`open_scenes` reads, else None
    (a per-date raster folder, a multi-band raster or a stack descriptor)."""
    from . import s2products, stac

    if s2products.is_product(path) or s2products.products_in(path):
        return "products"
    if stac.is_stac_file(path) or stac.items_in(path):
        return "stac"
    return None


def scenes_of(path: Path) -> list[Scene]:
    """Every scene at ``path``: a product, a folder of products, STAC JSON or a folder of it."""
    from . import s2products, stac

    if not path.exists():
        raise StackError(f"{path} does not exist.")
    if s2products.is_product(path):
        return s2products.read_product(path)
    if stac.is_stac_file(path):
        return stac.read_items(path)
    products = s2products.products_in(path)
    if products:
        return [scene for p in products for scene in s2products.read_product(p)]
    items = stac.items_in(path)
    if items:
        return [scene for p in items for scene in stac.read_items(p)]
    raise StackError(
        f"{path} is neither a Sentinel-2 L2A product (.SAFE folder or .zip) nor STAC item JSON, "
        "nor a folder holding them."
    )


def open_scenes(sources: Sequence[Path], options: dict[str, Any]) -> Stack:
    """The stack made of every scene in ``sources`` (see the module's docstring)."""
    if not sources:
        raise StackError("No Sentinel-2 product or STAC item was given.")
    scenes = [scene for path in sources for scene in scenes_of(Path(path))]
    label = str(sources[0]) if len(sources) == 1 else f"{len(sources)} sources: {sources[0]}, ..."
    if not scenes:
        raise StackError(f"No Sentinel-2 L2A acquisition found in {label}.")
    notes: list[str] = []
    start, end = as_date(options.get("start")), as_date(options.get("end"))
    dated = [s for s in scenes if (not start or s.date >= start) and (not end or s.date <= end)]
    if not dated:
        first, last = min(s.date for s in scenes), max(s.date for s in scenes)
        raise StackError(
            f"None of the {len(scenes)} acquisitions in {label} ({first} to {last}) lies "
            f"between {start or 'the first'} and {end or 'the last'}."
        )
    bounds, bounds_crs = options.get("bounds"), options.get("bounds_crs")
    if bounds is not None:
        dated = _near(dated, bounds, bounds_crs)
        if not dated:
            raise StackError(
                f"No acquisition in {label} covers the extent {tuple(bounds)}; check that the "
                "parcels lie on the downloaded tiles."
            )
    grids = {s: _scene_grid(s) for s in dated}
    grid = _common_grid(list(grids.values()))
    where = f"the tiles of {label}"
    if bounds is not None:
        grid = crop_grid(grid, bounds, bounds_crs, where)
    inside = [s for s in dated if _overlaps(grids[s], grid)]
    if len(inside) < len(dated):
        notes.append(
            f"{len(dated) - len(inside)} acquisitions do not overlap the extent and are not used."
        )
    if not inside:
        raise StackError(f"No acquisition in {label} overlaps the requested extent.")

    by_date: dict[dt.date, list[Scene]] = {}
    for scene in inside:
        by_date.setdefault(scene.date, []).append(scene)
    entries = []
    for date in sorted(by_date):
        day = by_date[date]
        if len(day) == 1:
            entries.append(day[0].entry())
            continue
        ranked = _ranked(day, grid if bounds is not None else None, grids)
        entries.append(_mosaic(date, ranked))
        how = "clear fraction over the extent" if bounds is not None else "metadata cloud cover"
        notes.append(
            f"{date}: {len(ranked)} acquisitions mosaicked, one observation per pixel (the first "
            f"clear one, ranked by {how}): " + ", ".join(s.label for s in ranked)
        )
    crs_names = sorted({g.crs.to_string() for g in grids.values()})
    if len(crs_names) > 1:
        notes.append(
            f"Tiles in {', '.join(crs_names)}: all read on a {grid.crs.to_string()} grid (other "
            "CRS warped, bilinear for reflectance, nearest for SCL)."
        )
    offsets = sorted({s.offset for s in inside})
    if len(offsets) > 1 or offsets[0]:
        notes.append(
            "Processing-baseline offsets applied per acquisition (BOA_ADD_OFFSET "
            + ", ".join(f"{o:g}" for o in offsets)
            + "): every date reads as the same reflectance."
        )
    return Stack(
        source=label,
        grid=grid,
        dates=entries,
        cloud_classes=tuple(options.get("cloud_classes", CLOUD_CLASSES)),
        notes=notes,
    )


# -- helpers ---------------------------------------------------------------------------------


def _scene_grid(scene: Scene) -> Grid:
    if scene.grid is not None:
        return scene.grid
    import rasterio

    ref = scene.bands[0]
    try:
        with rasterio.open(ref.path) as ds:
            return Grid(ds.crs, ds.transform, ds.width, ds.height)
    except rasterio.errors.RasterioIOError as exc:
        raise StackError(f"Cannot open {ref.path} ({scene.source}): {exc}") from exc


def _near(scenes: list[Scene], bounds: Sequence[float], bounds_crs: Any) -> list[Scene]:
    """Scenes whose lon/lat footprint (when known) meets the extent: the others are left out
    before any of their files is opened (a STAC search result can hold hundreds)."""
    if bounds_crs is None or not any(s.lonlat_bbox for s in scenes):
        return scenes
    from rasterio.warp import transform_bounds

    w, s_, e, n = transform_bounds(bounds_crs, "EPSG:4326", *bounds, densify_pts=21)
    kept = []
    for scene in scenes:
        box = scene.lonlat_bbox
        if box is None or (box[0] <= e and box[2] >= w and box[1] <= n and box[3] >= s_):
            kept.append(scene)
    return kept


def _common_grid(grids: list[Grid]) -> Grid:
    """10 m grid in the CRS most scenes share, covering all of them, on their lattice."""
    from rasterio.transform import Affine
    from rasterio.warp import transform_bounds

    counts = Counter(g.crs.to_string() for g in grids)
    best = max(counts.values())
    majority = sorted(
        (g for g in grids if counts[g.crs.to_string()] == best),
        key=lambda g: (g.crs.to_string(), g.transform.c, -g.transform.f),
    )
    ref = majority[0]
    crs, t = ref.crs, ref.transform
    res_x, res_y = t.a, -t.e
    lefts, bottoms, rights, tops = [], [], [], []
    for g in grids:
        b = g.bounds if g.crs == crs else transform_bounds(g.crs, crs, *g.bounds, densify_pts=21)
        lefts.append(b[0])
        bottoms.append(b[1])
        rights.append(b[2])
        tops.append(b[3])
    eps = 1e-6
    col0 = math.floor((min(lefts) - t.c) / res_x + eps)
    col1 = math.ceil((max(rights) - t.c) / res_x - eps)
    row0 = math.floor((t.f - max(tops)) / res_y + eps)
    row1 = math.ceil((t.f - min(bottoms)) / res_y - eps)
    transform = Affine(res_x, 0.0, t.c + col0 * res_x, 0.0, -res_y, t.f - row0 * res_y)
    return Grid(crs, transform, col1 - col0, row1 - row0)


def _overlaps(scene_grid: Grid, grid: Grid) -> bool:
    from rasterio.warp import transform_bounds

    b = scene_grid.bounds
    if scene_grid.crs != grid.crs:
        b = transform_bounds(scene_grid.crs, grid.crs, *b, densify_pts=21)
    g = grid.bounds
    return b[0] < g[2] and b[2] > g[0] and b[1] < g[3] and b[3] > g[1]


def _ranked(day: list[Scene], extent: Grid | None, grids: dict[Scene, Grid]) -> list[Scene]:
    """Best first: the largest clear fraction over ``extent`` (from SCL), or without an extent
    (or SCL) the least cloud and no data by the metadata; ties by tile, then time."""

    def score(scene: Scene) -> float:
        if extent is not None and scene.cloud is not None:
            measured = _clear_fraction(scene, extent, grids[scene])
            if measured is not None:
                return measured
        cloud = scene.cloud_percent if scene.cloud_percent is not None else 50.0
        nodata = scene.nodata_percent if scene.nodata_percent is not None else 0.0
        return max(0.0, 100.0 - cloud - nodata) / 100.0

    scored = [(score(s), s) for s in day]
    scored.sort(key=lambda p: (-p[0], p[1].tile, p[1].time or dt.datetime.min))
    return [s for _, s in scored]


def _clear_fraction(scene: Scene, extent: Grid, scene_grid: Grid) -> float | None:
    """Share of the extent where the scene's SCL says clear (pixels it does not cover count as
    not clear); read at the SCL's own resolution, a window only."""
    import numpy as np
    import rasterio
    from rasterio.warp import transform_bounds
    from rasterio.windows import from_bounds

    assert scene.cloud is not None
    b = extent.bounds
    if scene_grid.crs != extent.crs:
        b = transform_bounds(extent.crs, scene_grid.crs, *b, densify_pts=21)
    try:
        with rasterio.open(scene.cloud.path) as ds:
            full = from_bounds(*b, transform=ds.transform)
            area = max(float(full.width * full.height), 1.0)
            window = full.round_offsets().round_lengths()
            window = window.intersection(rasterio.windows.Window(0, 0, ds.width, ds.height))
            scl = ds.read(scene.cloud.index, window=window)
    except (rasterio.errors.RasterioIOError, rasterio.errors.WindowError):
        return None
    bad = np.array(CLOUD_CLASSES + NOT_OBSERVED_CLASSES)
    return float(np.count_nonzero(~np.isin(scl, bad))) / area


def _mosaic(date: dt.date, ranked: list[Scene]) -> DateEntry:
    scales = {s.scale for s in ranked}
    if len(scales) > 1:
        raise StackError(
            f"The acquisitions of {date} have different reflectance scales ({sorted(scales)}): "
            + ", ".join(s.label for s in ranked)
        )
    first = ranked[0]
    return DateEntry(
        date=date,
        bands=first.bands,
        cloud=first.cloud,
        scale=first.scale,
        offset=min(s.offset for s in ranked),
        nodata=first.nodata,
        parts=tuple(s.entry() for s in ranked),
    )


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StackError(f"Cannot read {path}: {exc}") from exc
