"""Discovering a Sentinel-2 image stack: dates, bands, cloud mask, grid, CRS, scale and offset.

A stack is what the analyst points the plugin at. Accepted forms:

* a folder of per-date rasters whose file names hold the date (``S2_20180723.tif``,
  ``T31TFM_2019-03-05_B05.tif``) or whose tags do (``ACQUISITION_DATE``); one file per date with
  all ten bands, or one file per date and band (20 m bands are resampled to the 10 m grid);
* one multi-band raster (GeoTIFF or VRT) whose band descriptions carry date and band,
  e.g. ``20190305_B02`` ... ``20190305_SCL``;
* a JSON descriptor listing files, dates and, optionally, cloud masks, scale and offset;
* Sentinel-2 L2A products as downloaded (.SAFE folders, their .zip, a folder of them) and STAC
  items (an ItemCollection or item JSON files), read in place: see :mod:`.scenes`. A day with
  several acquisitions (tiles, orbits) is one date whose ``parts`` are mosaicked when read.

Any of them can be limited to an extent (``bounds``: only those windows are ever read) and to
a date range (``start``, ``end``): see :func:`open_stack`.

Cloud masks are Sen2Cor scene classifications (SCL): a band called SCL, a file whose name holds
``SCL`` next to the images, or one in a sibling folder (``../scl``). Classes 3 (cloud shadow),
8, 9 (cloud medium/high probability) and 10 (thin cirrus) are cloudy; 0 (no data) and 1
(saturated/defective) are not observations at all.

Values are converted to one canonical unit, *reflectance x 10000 with the L2A offset removed*,
so that data from before and after processing baseline 04.00 (which adds ``BOA_ADD_OFFSET =
-1000``) are comparable: ``canonical = (DN + offset) * scale / 1e-4``.

Every date is read on the grid of the first date; a date on another grid or CRS is warped to it
and the log says so: bands of another resolution in the same CRS (20 m bands) by nearest
neighbour, which keeps measured values; another CRS by bilinear; cloud masks always by nearest.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LOG = logging.getLogger(__name__)

PAPER_BANDS: tuple[str, ...] = (
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B11",
    "B12",
)
CLOUD_CLASSES: tuple[int, ...] = (3, 8, 9, 10)
NOT_OBSERVED_CLASSES: tuple[int, ...] = (0, 1)
UNCLASSIFIED = 7  # the SCL class of an observed pixel that no mask classifies
CANONICAL_SCALE = 1e-4
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
MASK_FOLDER_NAMES = ("scl", "SCL", "masks", "mask", "clouds", "cloud")

_DATE_RE = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?!\d)")
_BAND_RE = re.compile(r"(?<![A-Z0-9])B(\d{1,2})(A?)(?![0-9])")
_SCL_RE = re.compile(r"(?<![A-Z])SCL(?![A-Z])")
_DATE_TAGS = (
    "ACQUISITION_DATE", "ACQUISITION_DATETIME", "DATE_ACQUIRED", "SENSING_TIME",
    "DATATAKE_SENSING_START", "PRODUCT_START_TIME", "DATE", "TIFFTAG_DATETIME",
)  # fmt: skip


class StackError(ValueError):
    """The stack cannot be used; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class BandRef:
    """One band of one file (1-based ``index`` as in GDAL)."""

    path: str
    index: int


@dataclass(frozen=True)
class DateEntry:
    date: dt.date
    bands: tuple[BandRef, ...]  # the ten bands, in PAPER_BANDS order
    cloud: BandRef | None
    scale: float = CANONICAL_SCALE
    offset: float = 0.0
    nodata: float | None = None
    binary_mask: bool = False  # the mask is cloud (non-zero) / clear (zero), not SCL
    # A mosaic: several acquisitions of this day (tiles, orbits), best first. ``bands``,
    # ``cloud`` and ``scale`` are those of the first part, ``offset`` the lowest of the parts
    # (values of the others are shifted to it when read); see :meth:`StackReader.read`.
    parts: tuple[DateEntry, ...] = ()

    @property
    def factor(self) -> float:
        """Multiplier from ``DN + offset`` to the canonical unit."""
        return self.scale / CANONICAL_SCALE

    @property
    def files(self) -> list[str]:
        """Every file this date reads (bands and masks of every part)."""
        entries = self.parts or (self,)
        refs = [r for e in entries for r in (*e.bands, *([e.cloud] if e.cloud else []))]
        return list(dict.fromkeys(r.path for r in refs))


@dataclass(frozen=True)
class Grid:
    crs: Any  # rasterio.crs.CRS
    transform: Any  # affine.Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        from rasterio.transform import array_bounds

        return array_bounds(self.height, self.width, self.transform)

    def same_as(self, other: Grid) -> bool:
        return (
            self.width == other.width
            and self.height == other.height
            and self.crs == other.crs
            and self.transform.almost_equals(other.transform, precision=1e-6)
        )


@dataclass
class Stack:
    """A described stack: everything needed to read any window of any date on one grid."""

    source: str
    grid: Grid
    dates: list[DateEntry]
    cloud_classes: tuple[int, ...] = CLOUD_CLASSES
    not_observed_classes: tuple[int, ...] = NOT_OBSERVED_CLASSES
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.dates)

    @property
    def day_of_year(self) -> list[int]:
        return [d.date.timetuple().tm_yday for d in self.dates]

    @property
    def has_cloud_mask(self) -> bool:
        return any(d.cloud is not None for d in self.dates)

    def describe(self) -> dict[str, Any]:
        """JSON-able description recorded with extracted data (stores, model cards)."""
        return {
            "source": self.source,
            "crs": self.grid.crs.to_string(),
            "transform": list(self.grid.transform)[:6],
            "width": self.grid.width,
            "height": self.grid.height,
            "bands": list(PAPER_BANDS),
            "unit": "reflectance x 10000 (offset removed)",
            "cloud_classes": list(self.cloud_classes),
            "not_observed_classes": list(self.not_observed_classes),
            "dates": [
                {
                    "date": d.date.isoformat(),
                    "files": sorted({b.path for e in (d.parts or (d,)) for b in e.bands}),
                    "cloud_mask": d.cloud.path if d.cloud else None,
                    "scale": d.scale,
                    "offset": d.offset,
                    "nodata": d.nodata,
                }
                for d in self.dates
            ],
            "notes": list(self.notes),
        }

    def reader(self) -> StackReader:
        return StackReader(self)


class StackReader:
    """Open datasets of a stack; reads windows of one date on the stack grid.

    Not thread-safe: GDAL dataset handles must not be shared between threads, so every worker
    thread opens its own reader (cheap: opening is lazy, no pixel is decoded).
    """

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._exit = ExitStack()
        self._handles: dict[tuple[str, bool], Any] = {}
        # uint8 SCL value -> clear? (one lookup per pixel instead of np.isin)
        self._clear_lut = np.ones(256, dtype=bool)
        bad = [c for c in stack.cloud_classes + stack.not_observed_classes if 0 <= c < 256]
        self._clear_lut[bad] = False

    def __enter__(self) -> StackReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._exit.close()
        self._handles.clear()

    def _open(self, path: str, categorical: bool, nodata: float | None = None) -> Any:
        key = (path, categorical)
        if key not in self._handles:
            import rasterio
            from rasterio.enums import Resampling
            from rasterio.vrt import WarpedVRT

            src = self._exit.enter_context(rasterio.open(path))
            grid = self.stack.grid
            source_grid = _grid_of(src)
            aligned = _alignment(source_grid, grid)
            if source_grid.same_as(grid):
                self._handles[key] = src
            elif aligned is not None:  # a window of the file (or the file, of the grid)
                self._handles[key] = _WindowReader(src, *aligned)
            else:
                # Same CRS (a 20 m band on the 10 m grid): nearest keeps the measured values,
                # as Sen2Cor-style duplication does. Another CRS: bilinear for reflectance,
                # never mixing in no-data pixels.
                nearest = categorical or src.crs == grid.crs
                extra = {}
                if not nearest and src.nodata is None and nodata is not None:
                    extra = {"src_nodata": nodata, "nodata": nodata}
                self._handles[key] = self._exit.enter_context(
                    WarpedVRT(
                        src,
                        crs=grid.crs,
                        transform=grid.transform,
                        width=grid.width,
                        height=grid.height,
                        resampling=Resampling.nearest if nearest else Resampling.bilinear,
                        **extra,
                    )
                )
        return self._handles[key]

    def read(
        self,
        t: int,
        window: Any,
        out: np.ndarray | None = None,
        out_clear: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read date ``t`` in ``window`` (a rasterio Window on the stack grid).

        Returns ``values`` (10, h, w) in the source dtype, as stored (apply
        :func:`to_canonical`), and ``observed_clear`` (h, w) bool: the pixel was observed, is not
        nodata and is not cloud, cloud shadow or cirrus. ``out``/``out_clear`` receive them
        without a temporary copy when given (``out`` must have the source dtype).
        """
        entry = self.stack.dates[t]
        try:
            if entry.parts:
                values, clear, _ = self._read_mosaic(entry, window, out, out_clear, False)
                return values, clear
            values, clear, _, _ = self._read_one(entry, window, out, out_clear, False)
        except OSError as exc:  # rasterio's RasterioIOError: a damaged or truncated file
            raise _unreadable(entry, exc) from exc
        return values, clear

    def read_with_mask(self, t: int, window: Any) -> tuple[np.ndarray, np.ndarray, Any]:
        """:meth:`read`, plus the cloud mask values as stored (SCL classes), or None.

        In a mosaic the mask of each pixel comes from the part its values come from.
        """
        entry = self.stack.dates[t]
        try:
            if entry.parts:
                return self._read_mosaic(entry, window, None, None, True)
            values, clear, _, mask = self._read_one(entry, window, None, None, True)
        except OSError as exc:
            raise _unreadable(entry, exc) from exc
        return values, clear, mask

    def _read_one(
        self,
        entry: DateEntry,
        window: Any,
        out: np.ndarray | None,
        out_clear: np.ndarray | None,
        want_mask: bool,
        part: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
        """(values, observed and clear, observed, mask or None) of one acquisition; with
        ``part``, ``observed`` is its own array (else it may be ``clear`` itself)."""
        values = self._read_bands(entry, window, out)
        clear = out_clear if out_clear is not None else np.empty(values.shape[1:], dtype=bool)
        clear[...] = True
        if entry.nodata is not None:
            clear &= ~np.any(values == np.asarray(entry.nodata, dtype=values.dtype), axis=0)
        if np.issubdtype(values.dtype, np.floating):
            clear &= ~np.any(np.isnan(values), axis=0)
        observed = clear.copy() if part else clear
        mask = None
        if entry.cloud is not None:
            mask = self._open(entry.cloud.path, True).read(entry.cloud.index, window=window)
            if entry.binary_mask:
                clear &= mask == 0
            elif mask.dtype == np.uint8:
                clear &= self._clear_lut[mask]  # one lookup instead of np.isin
            else:
                bad = np.asarray(self.stack.cloud_classes + self.stack.not_observed_classes)
                clear &= ~np.isin(mask, bad)
        return values, clear, observed, (mask if want_mask else None)

    def _read_mosaic(
        self,
        entry: DateEntry,
        window: Any,
        out: np.ndarray | None,
        out_clear: np.ndarray | None,
        want_mask: bool,
    ) -> tuple[np.ndarray, np.ndarray, Any]:
        """One observation per pixel from the parts, best first: the first part where the
        pixel is clear; where none is, the first that observed it (cloudy). Values of parts
        with another offset are shifted to the entry's (the lowest), so one offset holds."""
        # A part without a mask, beside parts with SCL, says "unclassified" where it observed.
        masked = want_mask and any(p.cloud is not None for p in entry.parts)
        values, clear, observed, mask = self._read_part(entry, entry.parts[0], window, masked)
        for part in entry.parts[1:]:
            v, c, o, m = self._read_part(entry, part, window, masked)
            take = (c & ~clear) | (o & ~observed)
            if take.any():
                values[:, take] = v[:, take]
                if masked:
                    mask[take] = m[take]
                clear |= c
                observed |= o
        if out is not None:
            out[...] = values
            values = out
        if out_clear is not None:
            out_clear[...] = clear
            clear = out_clear
        return values, clear, mask

    def _read_part(
        self, entry: DateEntry, part: DateEntry, window: Any, want_mask: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
        values, clear, observed, mask = self._read_one(part, window, None, None, want_mask, True)
        if part.offset != entry.offset:
            values = _shifted(values, part.offset - entry.offset, observed)
        if want_mask and mask is None:
            mask = np.where(observed, UNCLASSIFIED, 0).astype(np.uint8)
        return values, clear, observed, mask

    def _read_bands(self, entry: DateEntry, window: Any, out: np.ndarray | None) -> np.ndarray:
        by_file: dict[str, list[tuple[int, int]]] = {}
        for position, ref in enumerate(entry.bands):
            by_file.setdefault(ref.path, []).append((position, ref.index))
        if len(by_file) == 1:
            ((path, pairs),) = by_file.items()
            ds = self._open(path, False, entry.nodata)
            indexes = [i for _, i in pairs]
            if out is not None and np.dtype(ds.dtypes[indexes[0] - 1]) == out.dtype:
                return ds.read(indexes, window=window, out=out)
            data = ds.read(indexes, window=window)
            if out is None:
                return data
            out[...] = data
            return out
        for path, pairs in by_file.items():
            data = self._open(path, False, entry.nodata).read([i for _, i in pairs], window=window)
            if out is None:
                out = np.empty((len(entry.bands), *data.shape[1:]), dtype=data.dtype)
            out[[p for p, _ in pairs]] = data
        assert out is not None
        return out


def _unreadable(entry: DateEntry, exc: OSError) -> StackError:
    """The error for a date whose pixels GDAL cannot decode (the file opened, so the damage is
    further in: a truncated download or copy), naming the file and what to do."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    named = [Path(f).name for f in entry.files if Path(f).name in text] or [
        Path(f).name for f in entry.files
    ]
    return StackError(
        f"Cannot read the image of {entry.date} ({', '.join(named)}): it is damaged or "
        f"incomplete ({text[:200]}). Download or copy it again, or remove it from the stack."
    )


class _WindowReader:
    """Reads a file on the stack grid's lattice (same CRS and pixel size, corners on whole
    pixels: the grid is a window of the file, or the file a window of the grid) by shifting
    windows: what the warper would compute for this case, about three times faster on
    GeoTIFFs. Grid pixels outside the file are 0 (no data)."""

    def __init__(self, src: Any, col_offset: int, row_offset: int) -> None:
        self.src = src
        self.col_offset = col_offset  # grid column of the file's first column
        self.row_offset = row_offset
        self.dtypes = src.dtypes
        self.count = src.count
        self.block_shapes = src.block_shapes

    def read(self, indexes: Any = None, window: Any = None, out: np.ndarray | None = None):
        from rasterio.windows import Window

        single = isinstance(indexes, int)
        bands = [indexes] if single else list(indexes)
        c0, r0 = int(window.col_off) - self.col_offset, int(window.row_off) - self.row_offset
        w, h = int(window.width), int(window.height)
        cs, rs = max(c0, 0), max(r0, 0)
        ce, re_ = min(c0 + w, self.src.width), min(r0 + h, self.src.height)
        shape = (len(bands), h, w)
        result = out.reshape(shape) if out is not None else None
        if (cs, rs, ce, re_) == (c0, r0, c0 + w, r0 + h):  # all inside: one direct read
            data = self.src.read(bands, window=Window(c0, r0, w, h), out=result)
        else:
            dtype = np.dtype(self.src.dtypes[bands[0] - 1])
            data = result if result is not None else np.empty(shape, dtype=dtype)
            data[...] = 0
            if ce > cs and re_ > rs:
                data[:, rs - r0 : re_ - r0, cs - c0 : ce - c0] = self.src.read(
                    bands, window=Window(cs, rs, ce - cs, re_ - rs)
                )
        return data[0] if single else data


def _alignment(source: Grid, grid: Grid) -> tuple[int, int] | None:
    """(column, row) of ``source``'s first pixel on ``grid`` when it lies on the grid's lattice
    (see :class:`_WindowReader`), else None."""
    t, g = source.transform, grid.transform
    if source.crs != grid.crs or t.b or t.d or g.b or g.d:
        return None
    if abs(t.a - g.a) > 1e-9 * abs(g.a) or abs(t.e - g.e) > 1e-9 * abs(g.e):
        return None
    col = (t.c - g.c) / g.a
    row = (t.f - g.f) / g.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(col), round(row)


def _shifted(values: np.ndarray, shift: float, observed: np.ndarray) -> np.ndarray:
    """``values + shift`` on observed pixels (no data stays as it is), within the dtype
    (offsets are whole DN: -1000 for every band of every baseline so far)."""
    if np.issubdtype(values.dtype, np.floating):
        wide = values.astype(np.float64)
        wide[:, observed] += shift
        return wide.astype(values.dtype)
    wide = values.astype(np.int64)
    wide[:, observed] += round(shift)
    info = np.iinfo(values.dtype)
    np.clip(wide, info.min, info.max, out=wide)
    return wide.astype(values.dtype)


def to_canonical(values: np.ndarray, entry: DateEntry) -> np.ndarray:
    """Source values -> float32 reflectance x 10000 with the offset removed."""
    out = values.astype(np.float32)
    if entry.offset:
        out += np.float32(entry.offset)
    factor = entry.factor
    if factor != 1.0:
        out *= np.float32(factor)
    return out


# -- discovery ------------------------------------------------------------------------------


def open_stack(source: str | Path | Stack | Sequence[str | Path], **options: Any) -> Stack:
    """Describe the stack at ``source`` (folder, multi-band raster or JSON descriptor), or
    the stack made of Sentinel-2 L2A products or STAC items (see :mod:`.scenes`: a .SAFE
    folder, its .zip, a folder of them, an ItemCollection or item JSON, or a list of these).

    ``options`` override what is read from the files: ``scale``, ``offset``, ``nodata``,
    ``cloud_classes``; and limit what is read: ``bounds`` (left, bottom, right, top, in
    ``bounds_crs``, default the stack's CRS) keeps the part of the grid covering that extent,
    ``start`` and ``end`` (dates, inclusive) the dates between them. Raises
    :class:`StackError` with an actionable message.
    """
    if isinstance(source, Stack):
        return source
    from . import scenes  # imports this module: imported here, not at the top

    if isinstance(source, list | tuple):
        stack = scenes.open_scenes([Path(s) for s in source], options)
    else:
        path = Path(source)
        if not path.exists():
            raise StackError(f"The image stack {path} does not exist.")
        if scenes.source_kind(path) is not None:
            stack = scenes.open_scenes([path], options)
        else:
            if path.is_dir():
                stack = _from_folder(path, options)
            elif path.suffix.lower() == ".json":
                stack = _from_descriptor(path, options)
            else:
                stack = _from_multiband(path, options)
            stack = limit_stack(stack, options)
    _check(stack)
    for note in stack.notes:
        LOG.info("%s", note)
    LOG.info(
        "Stack %s: %d dates (%s to %s), %d x %d px, %s, cloud mask %s",
        stack.source, len(stack), stack.dates[0].date, stack.dates[-1].date,
        stack.grid.width, stack.grid.height, stack.grid.crs.to_string(),
        "yes" if stack.has_cloud_mask else "no",
    )  # fmt: skip
    return stack


def as_date(value: str | dt.date | None) -> dt.date | None:
    """A date option given as ``YYYY-MM-DD`` text or a date (None stays None)."""
    if isinstance(value, dt.datetime):
        return value.date()
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value).strip()[:10])
    except ValueError as exc:
        raise StackError(f"{value!r} is not a date; write it as YYYY-MM-DD.") from exc


def crop_grid(
    grid: Grid, bounds: Sequence[float], bounds_crs: Any = None, where: str = "the stack"
) -> Grid:
    """The part of ``grid`` covering ``bounds`` (left, bottom, right, top, in ``bounds_crs``;
    default the grid's CRS), snapped outward to whole pixels of the grid."""
    import math

    from rasterio.transform import Affine
    from rasterio.warp import transform_bounds

    left, bottom, right, top = (float(v) for v in bounds)
    if not (left < right and bottom < top):
        raise StackError(f"The extent {tuple(bounds)} is empty; give left < right, bottom < top.")
    if bounds_crs is not None and bounds_crs != grid.crs:
        left, bottom, right, top = transform_bounds(
            bounds_crs, grid.crs, left, bottom, right, top, densify_pts=21
        )
    t = grid.transform
    if t.b or t.d:
        raise StackError("Rotated image grids are not supported; warp the stack north-up first.")
    eps = 1e-6
    col0 = max(math.floor((left - t.c) / t.a + eps), 0)
    col1 = min(math.ceil((right - t.c) / t.a - eps), grid.width)
    row0 = max(math.floor((top - t.f) / t.e + eps), 0)
    row1 = min(math.ceil((bottom - t.f) / t.e - eps), grid.height)
    if col0 >= col1 or row0 >= row1:
        covered = ", ".join(f"{v:.1f}" for v in grid.bounds)
        raise StackError(
            f"The extent ({left:.1f}, {bottom:.1f}, {right:.1f}, {top:.1f} in "
            f"{grid.crs.to_string()}) does not overlap {where} ({covered}). Check that the "
            "parcels and the images cover the same area."
        )
    transform = Affine(t.a, 0.0, t.c + col0 * t.a, 0.0, t.e, t.f + row0 * t.e)
    return Grid(grid.crs, transform, col1 - col0, row1 - row0)


def limit_stack(stack: Stack, options: dict[str, Any]) -> Stack:
    """Apply the ``bounds``/``bounds_crs`` and ``start``/``end`` options to a described stack."""
    start, end = as_date(options.get("start")), as_date(options.get("end"))
    if start or end:
        kept = [
            e for e in stack.dates if (not start or e.date >= start) and (not end or e.date <= end)
        ]
        if not kept:
            raise StackError(
                f"No date of {stack.source} lies between {start or 'the first'} and "
                f"{end or 'the last'} ({stack.dates[0].date} to {stack.dates[-1].date})."
            )
        stack.dates = kept
    if options.get("bounds") is not None:
        grid = crop_grid(stack.grid, options["bounds"], options.get("bounds_crs"), stack.source)
        if not grid.same_as(stack.grid):
            stack.notes.append(
                f"Limited to the requested extent: {grid.width} x {grid.height} px of "
                f"{stack.grid.width} x {stack.grid.height}."
            )
            stack.grid = grid
    return stack


def parse_date(text: str) -> dt.date | None:
    """First valid ``YYYYMMDD`` or ``YYYY-MM-DD`` in ``text`` (file names, tags)."""
    for match in _DATE_RE.finditer(text):
        try:
            return dt.date(int(match[1]), int(match[2]), int(match[3]))
        except ValueError:
            continue
    tiff = re.search(r"(\d{4}):(\d{2}):(\d{2})", text)  # TIFFTAG_DATETIME
    if tiff:
        try:
            return dt.date(int(tiff[1]), int(tiff[2]), int(tiff[3]))
        except ValueError:
            return None
    return None


def band_name(text: str) -> str | None:
    """Canonical Sentinel-2 band name in ``text``: ``B2``/``B02`` -> ``B02``, ``b8a`` -> ``B8A``."""
    match = _BAND_RE.search(text.upper())
    if not match:
        return None
    number = int(match[1])
    if not 1 <= number <= 12:
        return None
    return f"B{number}A" if match[2] else f"B{number:02d}"


def is_scl(text: str) -> bool:
    return bool(_SCL_RE.search(text.upper()))


def _grid_of(ds: Any) -> Grid:
    return Grid(ds.crs, ds.transform, ds.width, ds.height)


def _tag_date(ds: Any) -> dt.date | None:
    tags = ds.tags()
    for key in _DATE_TAGS:
        if key in tags:
            found = parse_date(tags[key])
            if found:
                return found
    return None


def _scale_offset(ds: Any, bidx: int, options: dict[str, Any]) -> tuple[float, float]:
    """Scale and offset of the file, from options, GDAL metadata or Sentinel-2 tags."""
    tags = ds.tags()
    scale = options.get("scale")
    offset = options.get("offset")
    gdal_scale, gdal_offset = ds.scales[bidx - 1], ds.offsets[bidx - 1]
    if scale is None:
        if gdal_scale not in (None, 1.0) or gdal_offset not in (None, 0.0):
            scale = float(gdal_scale)
            # GDAL: value = raw * scale + offset  ->  (raw + offset/scale) * scale
            offset = float(gdal_offset) / float(gdal_scale) if offset is None else offset
        elif "REFLECTANCE_SCALE" in tags:
            scale = float(tags["REFLECTANCE_SCALE"])
        elif "QUANTIFICATION_VALUE" in tags or "BOA_QUANTIFICATION_VALUE" in tags:
            scale = 1.0 / float(
                tags.get("BOA_QUANTIFICATION_VALUE", tags.get("QUANTIFICATION_VALUE"))
            )
        elif np.issubdtype(np.dtype(ds.dtypes[bidx - 1]), np.floating):
            scale = CANONICAL_SCALE
            LOG.warning(
                "%s holds floating-point values and says nothing about their scale; assuming "
                "reflectance x 10000. If they are reflectances in 0-1, give scale=1 in a JSON "
                "stack descriptor.", ds.name,
            )  # fmt: skip
        else:
            scale = CANONICAL_SCALE
    if offset is None:
        if "BOA_ADD_OFFSET" in tags:
            offset = float(tags["BOA_ADD_OFFSET"])
        elif _baseline_at_least_4(tags.get("PROCESSING_BASELINE", "")):
            offset = -1000.0
        else:
            offset = 0.0
    return float(scale), float(offset)


def _baseline_at_least_4(text: str) -> bool:
    try:
        return float(text.strip().lstrip("N").replace("_", ".")) >= 4.0 if text.strip() else False
    except ValueError:
        return False


def _match_bands(descriptions: Sequence[str | None], where: str) -> dict[str, int] | None:
    """Map paper band -> 1-based index by description; None when descriptions say nothing."""
    found: dict[str, int] = {}
    for index, desc in enumerate(descriptions, start=1):
        name = band_name(desc or "")
        if name in PAPER_BANDS and name not in found:
            found[name] = index
    if not found:
        return None
    missing = [b for b in PAPER_BANDS if b not in found]
    if missing:
        raise StackError(
            f"{where} names its bands but lacks {', '.join(missing)}. The models need the ten "
            f"bands {', '.join(PAPER_BANDS)}."
        )
    return found


def _open_raster(path: str | Path) -> Any:
    """``rasterio.open(path)``; a file GDAL cannot open (cut inside its header, not an image)
    is a :class:`StackError` naming it and saying what to do."""
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        return rasterio.open(path)
    except RasterioIOError as exc:
        raise StackError(
            f"Cannot open {Path(path).name} as a raster: it is damaged, incomplete or not an "
            f"image ({str(exc).splitlines()[0][:200]}). Download or copy it again, or remove it "
            "from the stack."
        ) from exc


def _date_file(
    path: Path, options: dict[str, Any]
) -> tuple[dt.date | None, list[BandRef], BandRef | None, dict[str, Any]]:
    """Inspect one raster: its date, the paper bands it holds, an SCL band, and its metadata."""
    with _open_raster(path) as ds:
        date = parse_date(path.name) or _tag_date(ds)
        descriptions = [
            d or ds.tags(i).get("BAND_NAME") or "" for i, d in enumerate(ds.descriptions, start=1)
        ]
        scl = None
        if is_scl(path.name) and ds.count == 1:
            return date, [], BandRef(str(path), 1), {}
        for i, desc in enumerate(descriptions, start=1):
            if is_scl(desc):
                scl = BandRef(str(path), i)
        matched = _match_bands(descriptions, str(path))
        single = band_name(path.stem)
        if matched is None and single and ds.count == 1:
            bands = [BandRef(str(path), 1)]
            names = [single]
        elif matched is None:
            count = ds.count - (1 if scl else 0)
            if count != len(PAPER_BANDS):
                raise StackError(
                    f"{path} has {ds.count} bands without band names. Name the bands "
                    f"({', '.join(PAPER_BANDS)}) in the band descriptions, or give exactly ten "
                    "bands in that order."
                )
            bands = [BandRef(str(path), i) for i in range(1, 11)]
            names = list(PAPER_BANDS)
        else:
            names = list(PAPER_BANDS)
            bands = [BandRef(str(path), matched[b]) for b in PAPER_BANDS]
        scale, offset = _scale_offset(ds, bands[0].index, options)
        meta = {
            "names": names,
            "grid": _grid_of(ds),
            "scale": scale,
            "offset": offset,
            "nodata": options.get("nodata", ds.nodata),
        }
        return date, bands, scl, meta


def _rasters_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES
    )


def _from_folder(folder: Path, options: dict[str, Any]) -> Stack:
    files = _rasters_in(folder)
    mask_files = [p for p in files if is_scl(p.name)]
    for name in MASK_FOLDER_NAMES:
        for candidate in (folder / name, folder.parent / name):
            if candidate.is_dir() and candidate.resolve() != folder.resolve():
                mask_files += [p for p in _rasters_in(candidate)]
    image_files = [p for p in files if p not in mask_files]
    if not image_files:
        raise StackError(
            f"No raster files ({', '.join(RASTER_SUFFIXES)}) in {folder}. Point the stack at the "
            "folder that holds one image per date (e.g. S2_20180723.tif)."
        )

    per_date: dict[dt.date, dict[str, Any]] = {}
    for path in image_files:
        date, bands, scl, meta = _date_file(path, options)
        if date is None:
            raise StackError(
                f"Cannot tell the date of {path.name}: put it in the file name (YYYYMMDD or "
                "YYYY-MM-DD) or in an ACQUISITION_DATE tag, or list the files in a JSON descriptor."
            )
        slot = per_date.setdefault(date, {"bands": {}, "scl": None, "meta": None, "files": []})
        slot["files"].append(path.name)
        for name, ref in zip(meta.get("names", []), bands, strict=True):
            if name in slot["bands"]:
                raise StackError(
                    f"Two images for {date} both hold {name}: {', '.join(slot['files'])}. "
                    "Keep one per date (mosaic them first) or list them in a JSON descriptor."
                )
            slot["bands"][name] = (ref, meta)
        if scl is not None:
            slot["scl"] = scl

    masks: dict[dt.date, BandRef] = {}
    for path in mask_files:
        date = parse_date(path.name)
        if date is not None:
            masks.setdefault(date, BandRef(str(path), 1))

    reference: Grid | None = None
    entries: list[DateEntry] = []
    notes: list[str] = []
    for date in sorted(per_date):
        slot = per_date[date]
        missing = [b for b in PAPER_BANDS if b not in slot["bands"]]
        if missing:
            raise StackError(
                f"The images of {date} ({', '.join(slot['files'])}) lack {', '.join(missing)}. "
                f"Every date needs the ten bands {', '.join(PAPER_BANDS)}: add the missing "
                "files or remove that date from the stack."
            )
        refs = tuple(slot["bands"][b][0] for b in PAPER_BANDS)
        first_meta = slot["bands"][PAPER_BANDS[0]][1]  # B02 is a 10 m band: its grid rules
        if reference is None:
            reference = first_meta["grid"]
        entries.append(
            DateEntry(
                date=date,
                bands=refs,
                cloud=slot["scl"] or masks.get(date),
                scale=first_meta["scale"],
                offset=first_meta["offset"],
                nodata=first_meta["nodata"],
            )
        )
    assert reference is not None
    notes += _grid_notes(entries, reference)
    return Stack(
        source=str(folder),
        grid=reference,
        dates=entries,
        cloud_classes=tuple(options.get("cloud_classes", CLOUD_CLASSES)),
        notes=notes,
    )


def _grid_notes(entries: Iterable[DateEntry], reference: Grid) -> list[str]:
    notes = []
    seen: dict[str, Grid] = {}
    for entry in entries:
        refs = [*entry.bands, *([entry.cloud] if entry.cloud else [])]
        for ref in refs:
            if ref.path not in seen:
                with _open_raster(ref.path) as ds:
                    seen[ref.path] = _grid_of(ds)
            grid = seen[ref.path]
            if not grid.same_as(reference):
                what = "CRS" if grid.crs != reference.crs else "grid"
                notes.append(
                    f"{Path(ref.path).name} ({entry.date}) is on another {what} "
                    f"({grid.crs.to_string()}, {abs(grid.transform.a):g} m); warped to the grid "
                    "of the first date."
                )
    return notes


def _from_multiband(path: Path, options: dict[str, Any]) -> Stack:
    with _open_raster(path) as ds:
        descriptions = [d or "" for d in ds.descriptions]
        dated = [(i, parse_date(d), d) for i, d in enumerate(descriptions, start=1)]
        grid = _grid_of(ds)
        if not any(date for _, date, _ in dated):
            # Not a time series: one date, from the file name or tags.
            date = parse_date(path.name) or _tag_date(ds)
            if date is None:
                raise StackError(
                    f"{path.name} is a single raster without dates in its band descriptions "
                    "(e.g. 20190305_B02) or in its name. Give a folder of per-date files or a "
                    "JSON descriptor instead."
                )
        else:
            date = None
        scale, offset = _scale_offset(ds, 1, options)
        nodata = options.get("nodata", ds.nodata)
    if date is not None:
        _, bands, scl, meta = _date_file(path, options)
        entries = [
            DateEntry(date, tuple(bands), scl, meta["scale"], meta["offset"], meta["nodata"])
        ]
        return Stack(str(path), grid, entries, tuple(options.get("cloud_classes", CLOUD_CLASSES)))

    groups: dict[dt.date, dict[str, int]] = {}
    for index, date, desc in dated:
        if date is None:
            raise StackError(
                f"Band {index} of {path.name} ({desc!r}) has no date while others do; describe "
                "every band as <YYYYMMDD>_<band>, e.g. 20190305_B02."
            )
        key = (
            "SCL"
            if is_scl(desc.replace(date.strftime("%Y%m%d"), ""))
            else band_name(_DATE_RE.sub("", desc))
        )
        if key is None:
            continue
        previous = groups.setdefault(date, {}).get(key)
        if previous is not None:
            raise StackError(
                f"Bands {previous} and {index} of {path.name} both hold {key} of {date}; "
                "describe each date's band once (e.g. 20190305_B02), keeping one image per date."
            )
        groups[date][key] = index
    entries = []
    for date in sorted(groups):
        names = groups[date]
        missing = [b for b in PAPER_BANDS if b not in names]
        if missing:
            raise StackError(f"{path.name} lacks {', '.join(missing)} for {date}.")
        cloud = BandRef(str(path), names["SCL"]) if "SCL" in names else None
        entries.append(
            DateEntry(
                date,
                tuple(BandRef(str(path), names[b]) for b in PAPER_BANDS),
                cloud,
                scale,
                offset,
                nodata,
            )
        )
    return Stack(str(path), grid, entries, tuple(options.get("cloud_classes", CLOUD_CLASSES)))


def _from_descriptor(path: Path, options: dict[str, Any]) -> Stack:
    """JSON: ``{"dates": [{"date": "2019-03-05", "path": "a.tif", "cloud_mask": "scl.tif"}],
    "scale": 1e-4, "offset": 0, "nodata": 0, "cloud_classes": [3, 8, 9, 10],
    "cloud_mask_kind": "scl" | "binary"}``; ``path`` may also map band names to files.
    Relative paths are relative to the descriptor."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StackError(f"Cannot read the stack descriptor {path}: {exc}") from exc
    if not isinstance(spec, dict) or not isinstance(spec.get("dates"), list) or not spec["dates"]:
        raise StackError(f"{path}: a stack descriptor needs a non-empty list 'dates'.")
    merged = {k: spec[k] for k in ("scale", "offset", "nodata", "cloud_classes") if k in spec}
    merged.update(options)
    binary = spec.get("cloud_mask_kind", "scl") == "binary"
    base = path.parent
    entries: list[DateEntry] = []
    reference: Grid | None = None
    for i, item in enumerate(spec["dates"]):
        try:
            date = dt.date.fromisoformat(str(item["date"]).replace("/", "-"))
        except (KeyError, ValueError) as exc:
            raise StackError(f"{path}: entry {i} needs a 'date' as YYYY-MM-DD ({exc}).") from exc
        files = item.get("path")
        if isinstance(files, dict):
            refs = []
            metas = []
            for band in PAPER_BANDS:
                if band not in files:
                    raise StackError(f"{path}: {date} lacks band {band}.")
                _, b, _, meta = _date_file(base / files[band], merged)
                refs.append(b[0])
                metas.append(meta)
            meta = metas[0]
            bands = refs
        elif isinstance(files, str):
            _, bands, _, meta = _date_file(base / files, merged)
        else:
            raise StackError(f"{path}: entry {i} ({date}) needs a 'path'.")
        if reference is None:
            reference = meta["grid"]
        mask = item.get("cloud_mask")
        entries.append(
            DateEntry(
                date,
                tuple(bands),
                BandRef(str(base / mask), 1) if mask else None,
                meta["scale"],
                meta["offset"],
                meta["nodata"],
                binary,
            )
        )
    entries.sort(key=lambda e: e.date)
    assert reference is not None
    return Stack(
        str(path),
        reference,
        entries,
        tuple(merged.get("cloud_classes", CLOUD_CLASSES)),
        notes=_grid_notes(entries, reference),
    )


def _check(stack: Stack) -> None:
    dates = [e.date for e in stack.dates]
    if len(set(dates)) != len(dates):
        raise StackError(f"{stack.source} lists some dates twice; keep one image per date.")
    if stack.grid.crs is None:
        raise StackError(
            f"{stack.source} has no coordinate reference system; assign one (e.g. with "
            "gdal_edit.py -a_srs EPSG:32631) before classifying."
        )
    if not stack.grid.crs.is_projected:
        LOG.warning(
            "%s is in a geographic CRS (%s); patches are built on its grid, whose pixels are "
            "not square on the ground. Sentinel-2 UTM tiles are preferable.",
            stack.source, stack.grid.crs.to_string(),
        )  # fmt: skip
    if not stack.has_cloud_mask:
        stack.notes.append(
            "No cloud mask (SCL) found: every pixel that is not nodata counts as clear."
        )
