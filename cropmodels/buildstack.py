"""A season of downloads turned into a small per-date stack over the parcels.

:func:`build_stack` reads any stack :func:`~.stack.open_stack` understands (typically a folder
of Sentinel-2 L2A products or a STAC ItemCollection), only over the parcels' extent, and writes
the layout of the bundled sample, which every other command reads back::

    OUT/S2_20180723.tif          10 bands B02..B12, uint16, reflectance x 10000, 0 = no data
    OUT/scl/S2_20180723_SCL.tif  Sen2Cor scene classification on the same 10 m grid
    OUT/build_stack.json         what was read, what was kept and why dates were left out

Values are written in the canonical unit, *with the processing-baseline offset already
removed* (tags ``REFLECTANCE_SCALE=0.0001``, ``BOA_ADD_OFFSET_APPLIED=YES``), so that dates
from before and after baseline 04.00 share one unit in the output and in any GIS. Observed
pixels are kept within [1, 65535]: the few negative reflectances baseline 04.00 can encode
(very dark water or shadow) become 1, as before 04.00, and 0 stays no data.

A date is left out when no parcel pixel was observed on it, or when the share of parcel pixels
that are not clear (cloud, cloud shadow, cirrus, no data; from SCL) exceeds ``max_cloud``.
The folder is written completely or not at all: built in a hidden sibling folder, renamed into
place at the end; cancelling or an error leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .progress import CancelFn, ProgressFn, check_cancelled, never_cancelled, no_progress
from .stack import PAPER_BANDS, Stack, StackError, open_stack, to_canonical

LOG = logging.getLogger(__name__)

MANIFEST = "build_stack.json"
SCL_LEGEND = (
    "0 no data, 1 saturated or defective, 2 dark area, 3 cloud shadow, 4 vegetation, "
    "5 not vegetated, 6 water, 7 unclassified, 8 cloud medium probability, "
    "9 cloud high probability, 10 thin cirrus, 11 snow or ice"
)


@dataclass
class BuildResult:
    folder: Path
    written: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    width: int = 0
    height: int = 0
    crs: str = ""


def build_stack(
    source: Any,
    out_dir: str | Path,
    *,
    parcels: Any = None,
    bounds: tuple[float, float, float, float] | None = None,
    bounds_crs: Any = None,
    start: str | dt.date | None = None,
    end: str | dt.date | None = None,
    max_cloud: float = 1.0,
    margin_m: float = 20.0,
    overwrite: bool = False,
    block_rows: int = 512,
    progress: ProgressFn = no_progress,
    is_cancelled: CancelFn = never_cancelled,
) -> BuildResult:
    """Write the per-date stack of ``source`` over the parcels (or ``bounds``) to ``out_dir``.

    ``source``: whatever :func:`~.stack.open_stack` takes (a folder of L2A products, a STAC
    ItemCollection, a list of them, ...). ``parcels``: a path to any OGR source or a
    GeoDataFrame; its extent, widened by ``margin_m`` metres, is the output's extent, and the
    cloud fraction is measured over its polygons. Without parcels, ``bounds`` (in
    ``bounds_crs``) gives the extent and the cloud fraction is measured over all of it.
    ``start``/``end``: dates kept (inclusive). ``max_cloud``: 0..1.
    """
    if not 0.0 <= max_cloud <= 1.0:
        raise StackError(f"max_cloud is a fraction between 0 and 1, not {max_cloud}.")
    out = Path(out_dir)
    _check_target(out, overwrite)
    gdf = None
    if parcels is not None:
        from .extract import read_parcels

        gdf = read_parcels(parcels)
        if gdf.crs is None:
            raise StackError("The parcel layer has no coordinate reference system; set it first.")
        gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
        if gdf.empty:
            raise StackError("The parcel layer has no geometry to build a stack over.")
        bounds, bounds_crs = _widened(gdf, margin_m), gdf.crs
    elif bounds is None:
        raise StackError("Give the parcels (or an extent) that the stack should cover.")
    progress(0.0, "reading the products' metadata")
    stack = open_stack(source, bounds=bounds, bounds_crs=bounds_crs, start=start, end=end)
    if any(e.binary_mask for e in stack.dates):
        raise StackError(
            "build_stack copies Sen2Cor SCL masks; this stack has binary cloud masks. Use it as "
            "it is (clip it with bounds when extracting) instead."
        )
    inside = _parcel_mask(gdf, stack)
    n_inside = int(inside.sum())
    if n_inside == 0:
        raise StackError("No parcel pixel centre lies on the stack's grid; check the parcels.")

    result = BuildResult(out, crs=stack.grid.crs.to_string(), width=stack.grid.width,
                         height=stack.grid.height)  # fmt: skip
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        (tmp / "scl").mkdir(parents=True)
        for t, entry in enumerate(stack.dates):
            check_cancelled(is_cancelled)
            stamp = entry.date.strftime("%Y%m%d")
            progress(t / len(stack), f"{entry.date}: reading")
            image, scl = tmp / f"S2_{stamp}.tif", tmp / "scl" / f"S2_{stamp}_SCL.tif"
            clear, observed, has_scl = _write_date(
                stack, t, image, scl, inside, block_rows, is_cancelled,
                lambda f, t=t: progress((t + f) / len(stack), f"{stack.dates[t].date}: reading"),
            )  # fmt: skip
            cloud = 1.0 - clear / n_inside
            info = {
                "date": entry.date.isoformat(),
                "cloud_fraction": round(cloud, 4),
                "observed_fraction": round(observed / n_inside, 4),
                "sources": entry.files,
            }
            reason = None
            if observed == 0:
                reason = "no parcel pixel observed (outside the products' swath or no data)"
            elif cloud > max_cloud:
                reason = f"cloud fraction {cloud:.0%} over the parcels > {max_cloud:.0%}"
            if reason:
                image.unlink()
                scl.unlink(missing_ok=True)
                result.skipped.append({**info, "reason": reason})
                LOG.info("%s left out: %s", entry.date, reason)
                continue
            if not has_scl:
                scl.unlink(missing_ok=True)
            result.written.append({**info, "file": image.name})
        if not result.written:
            raise StackError(
                f"No date kept out of {len(stack)}: "
                + "; ".join(f"{s['date']}: {s['reason']}" for s in result.skipped[:5])
                + (" ..." if len(result.skipped) > 5 else "")
                + ". Raise the maximum cloud fraction or widen the date range."
            )
        _write_manifest(tmp / MANIFEST, stack, result, source, start, end, max_cloud)
        check_cancelled(is_cancelled)
        _install(tmp, out, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    progress(1.0, f"{len(result.written)} dates written, {len(result.skipped)} left out")
    LOG.info(
        "Stack written to %s: %d dates, %d x %d px; %d dates left out",
        out, len(result.written), result.width, result.height, len(result.skipped),
    )  # fmt: skip
    return result


def _widened(gdf: Any, margin_m: float) -> tuple[float, float, float, float]:
    left, bottom, right, top = (float(v) for v in gdf.total_bounds)
    margin = margin_m
    if gdf.crs.is_geographic:
        margin = margin_m / 111_000.0  # about, in degrees: a margin, not a measure
    return left - margin, bottom - margin, right + margin, top + margin


def _parcel_mask(gdf: Any, stack: Stack) -> np.ndarray:
    """Pixel centres inside a parcel (as the extractor counts them); all pixels without."""
    grid = stack.grid
    if gdf is None:
        return np.ones((grid.height, grid.width), dtype=bool)
    from rasterio.features import geometry_mask

    geoms = gdf.to_crs(grid.crs).geometry if gdf.crs != grid.crs else gdf.geometry
    return geometry_mask(
        [g for g in geoms if g is not None and not g.is_empty],
        out_shape=(grid.height, grid.width),
        transform=grid.transform,
        invert=True,
    )


def _write_date(
    stack: Stack,
    t: int,
    image: Path,
    scl_path: Path,
    inside: np.ndarray,
    block_rows: int,
    is_cancelled: CancelFn,
    progress: Any,
) -> tuple[int, int, bool]:
    """Write date ``t``; return the parcel pixels clear, observed, and whether SCL exists."""
    import rasterio
    from rasterio.windows import Window

    entry = stack.dates[t]
    grid = stack.grid
    base = {"driver": "GTiff", "width": grid.width, "height": grid.height, "crs": grid.crs,
            "transform": grid.transform, "nodata": 0, "compress": "deflate", "predictor": 2,
            "tiled": True, "blockxsize": 256, "blockysize": 256}  # fmt: skip
    sources = entry.parts or (entry,)
    tags = {
        "ACQUISITION_DATE": entry.date.isoformat(),
        "REFLECTANCE_SCALE": "0.0001",
        "BOA_ADD_OFFSET_APPLIED": "YES",
        "SOURCE_BOA_ADD_OFFSETS": ",".join(f"{p.offset:g}" for p in sources),
        "SOURCE_FILES": ";".join(sorted({os.path.basename(p.bands[0].path) for p in sources})),
        "SOFTWARE": "Parcel Crop Classifier build_stack",
    }
    clear_count = observed_count = 0
    has_scl = entry.cloud is not None
    with (
        stack.reader() as reader,
        rasterio.open(image, "w", **base, count=len(PAPER_BANDS), dtype="uint16") as dst,
        rasterio.open(scl_path, "w", **base, count=1, dtype="uint8") as dst_scl,
    ):
        dst.update_tags(**tags)
        for i, band in enumerate(PAPER_BANDS, start=1):
            dst.set_band_description(i, band)
        dst_scl.set_band_description(1, "SCL")
        dst_scl.update_tags(1, CLASSES=SCL_LEGEND)
        dst_scl.update_tags(ACQUISITION_DATE=entry.date.isoformat())
        for row0 in range(0, grid.height, block_rows):
            check_cancelled(is_cancelled)
            rows = min(block_rows, grid.height - row0)
            window = Window(0, row0, grid.width, rows)
            values, clear, mask = reader.read_with_mask(t, window)
            observed = np.ones(values.shape[1:], dtype=bool)
            if entry.nodata is not None:
                observed &= ~np.any(values == np.asarray(entry.nodata, values.dtype), axis=0)
            if np.issubdtype(values.dtype, np.floating):
                observed &= ~np.any(np.isnan(values), axis=0)
            canonical = to_canonical(values, entry)
            out = np.where(observed, np.clip(np.rint(canonical), 1, 65535), 0).astype(np.uint16)
            dst.write(out, window=window)
            if mask is not None:
                dst_scl.write(np.asarray(mask, dtype=np.uint8)[None], window=window)
            part = inside[row0 : row0 + rows]
            clear_count += int(np.count_nonzero(clear & part))
            observed_count += int(np.count_nonzero(observed & part))
            progress((row0 + rows) / grid.height)
    return clear_count, observed_count, has_scl


def _write_manifest(path, stack, result, source, start, end, max_cloud) -> None:
    sources = source if isinstance(source, list | tuple) else [source]
    data = {
        "sources": [str(s) for s in sources],
        "start": str(start) if start else None,
        "end": str(end) if end else None,
        "max_cloud": max_cloud,
        "crs": result.crs,
        "transform": list(stack.grid.transform)[:6],
        "width": result.width,
        "height": result.height,
        "unit": "reflectance x 10000, processing-baseline offset removed, 0 = no data",
        "dates": result.written,
        "left_out": result.skipped,
        "notes": list(stack.notes),
    }
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def is_built_stack(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def _check_target(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise StackError(f"{out} exists and is not a folder; choose a folder for the stack.")
    if not any(out.iterdir()):
        return  # an empty folder (e.g. made by QGIS for the output) is replaced
    if not is_built_stack(out):
        raise StackError(
            f"{out} exists and is not empty; refusing to write into it. Choose a new or empty "
            "folder."
        )
    if not overwrite:
        raise StackError(
            f"The stack {out} already exists; allow overwriting (--overwrite) to replace it."
        )


def _install(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished folder into place; an old stack is removed once the new one is."""
    _check_target(out, overwrite)
    if out.exists() and not any(out.iterdir()):
        out.rmdir()
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
