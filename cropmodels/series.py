"""Importers of pixel / point time series (no parcel geometry) into a parcel store.

Real labelled Sentinel-2 data often comes as one pixel per sample (WorldCereal points, the
Victoria pixel set) rather than polygons over an image stack. Turning such series into a store
lets the training protocol, the GRU and the Random-Forest baseline run on real spectra:

* ``features`` (T, 20): the pixel's 10 values as the per-date "means" and 0 as the "stds"
  (a one-pixel parcel has no spread);
* ``patches`` (T, 10, P, P): the one-pixel parcel resized to P x P, i.e. a constant patch, with
  ``mask`` all True. The CNN-based models can then run, but degenerately: a constant patch has
  no spatial structure, so they reduce to per-date spectral MLPs. Useful to exercise them, not
  to compare them;
* status ``ok`` for every sample, ``n_clear_dates`` = T and ``cloud_fraction`` 0 (composites and
  gap-filled series have no cloud information left).

Labels must be integer class codes; sources with codes beyond int32 (WorldCereal ``ewoc_code``,
e.g. 6000000000) are renumbered 1..K by :func:`compact_codes`, keeping the original code and
name in the store's class list (``source_code``).
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .extract import N_BANDS, OK, ParcelData
from .progress import CancelFn, ProgressFn, never_cancelled, no_progress
from .stack import PAPER_BANDS

INT32_MAX = 2**31 - 1


@dataclass
class SeriesData:
    """N pixel time series on one date grid, with labels; ready for :func:`series_to_store`."""

    values: np.ndarray  # (N, T, 10) reflectance x 10000, bands in PAPER_BANDS order
    dates: list[str]  # T ISO dates
    labels: np.ndarray | None = None  # (N,) int class codes, -1 = unlabelled
    classes: list[dict[str, Any]] | None = None  # {"code", "name", ["colour", "source_code"]}
    parcel_ids: list[str] | None = None
    lon: np.ndarray | None = None  # (N,) WGS84, when known (for spatial folds)
    lat: np.ndarray | None = None
    source: dict[str, Any] = field(default_factory=dict)
    label_field: str = "label"

    def __post_init__(self) -> None:
        values = np.asarray(self.values)
        if values.ndim != 3 or values.shape[2] != N_BANDS:
            raise ValueError(
                f"series values must be (N, T, {N_BANDS}) in the band order "
                f"{', '.join(PAPER_BANDS)}; got shape {values.shape}"
            )
        if values.shape[1] != len(self.dates):
            raise ValueError(f"{values.shape[1]} steps but {len(self.dates)} dates")
        if self.labels is not None and len(self.labels) != len(values):
            raise ValueError(f"{len(self.labels)} labels for {len(values)} series")
        self.values = values

    def __len__(self) -> int:
        return int(self.values.shape[0])


def series_to_store(
    series: SeriesData,
    out: str | Path,
    *,
    patch_size: int = 32,
    chunk_parcels: int = 64,
    overwrite: bool = False,
    progress: ProgressFn = no_progress,
    is_cancelled: CancelFn = never_cancelled,
) -> Any:
    """Write ``series`` as a store (see the module docstring); returns the ``StoreSummary``."""
    from .store import write_store

    values = series.values.astype(np.float32)
    n, t, _ = values.shape
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, not {patch_size}")
    labels = None if series.labels is None else [int(v) for v in series.labels]
    if labels is not None:
        too_big = sorted({v for v in labels if abs(v) > INT32_MAX})
        if too_big:
            raise ValueError(
                f"label codes {too_big[:5]} do not fit in int32; renumber them with "
                "cropmodels.series.compact_codes first"
            )

    def results() -> Iterator[ParcelData]:
        mask = np.ones((patch_size, patch_size), dtype=bool)
        zeros = np.zeros((t, N_BANDS), np.float32)
        for i in range(n):
            pixel = values[i]  # (T, 10)
            patches = np.broadcast_to(pixel[:, :, None, None], (t, N_BANDS, patch_size, patch_size))
            yield ParcelData(
                index=i,
                status=OK,
                n_pixels=1,
                cloud_fraction=np.zeros(t, np.float32),
                n_clear_dates=t,
                patches=patches,
                mask=mask,
                features=np.concatenate([pixel, zeros], axis=1),
            )

    description = {
        "source": series.source.get("path", "pixel time series"),
        "kind": "pixel time series (no geometry): features = pixel values with std 0, patches "
        "= the pixel repeated over a constant patch",
        "bands": list(PAPER_BANDS),
        "unit": "reflectance x 10000",
        **{k: v for k, v in series.source.items() if k != "path"},
    }
    return write_store(
        results(),
        out,
        n_parcels=n,
        stack_description=description,
        dates=series.dates,
        parcel_ids=series.parcel_ids,
        labels=labels,
        label_field=series.label_field,
        classes=series.classes,
        patch_size=patch_size,
        chunk_parcels=chunk_parcels,
        overwrite=overwrite,
        progress=progress,
        is_cancelled=is_cancelled,
    )


def compact_codes(
    codes: Sequence[int], names: Mapping[int, str] | None = None
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Renumber class codes 1..K in increasing order of the original code.

    Returns the new codes (N,) and the class list ``{"code", "name", "source_code"}``: the
    original code stays in the store's attributes, so a model card can still name it.
    """
    codes = np.asarray(codes, dtype=np.int64)
    unique = np.unique(codes[codes >= 0])
    lookup = {int(c): i + 1 for i, c in enumerate(unique)}
    new = np.array([lookup.get(int(c), -1) for c in codes], dtype=np.int64)
    names = names or {}
    classes = [
        {"code": lookup[int(c)], "name": str(names.get(int(c), c)), "source_code": int(c)}
        for c in unique
    ]
    return new, classes


# -- known sources ------------------------------------------------------------------------------


def load_worldcereal_points(path: str | Path) -> SeriesData:
    """A WorldCereal point set ``data.npz`` (see ``shared/data/worldcereal_points``).

    Requires one date grid for every sample (the monthly composites of a set share it). Codes
    are renumbered by :func:`compact_codes` (``ewoc`` codes exceed int32); names come from the
    file's ``crop_name``.
    """
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path} as a WorldCereal points .npz: {exc}") from exc
    needed = {"X", "dates", "crop_code"}
    missing = needed - set(data.files)
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)}; is it a WorldCereal points data.npz?")
    dates = np.asarray(data["dates"])
    if dates.ndim == 2:
        if not (dates == dates[0]).all():
            raise ValueError(f"{path}: the samples do not share one date grid")
        dates = dates[0]
    codes = np.asarray(data["crop_code"], dtype=np.int64)
    names: dict[int, str] = {}
    if "crop_name" in data.files:
        for c, name in zip(codes, data["crop_name"], strict=True):
            names.setdefault(int(c), str(name))
    labels, classes = compact_codes(codes, names)
    scheme = str(data["label_scheme"]) if "label_scheme" in data.files else "unknown"
    source: dict[str, Any] = {"path": str(path), "label_scheme": scheme}
    if "bands_present" in data.files:
        source["bands_present"] = [bool(b) for b in data["bands_present"]]
    return SeriesData(
        values=np.asarray(data["X"]),
        dates=[str(d)[:10] for d in dates],
        labels=labels,
        classes=classes,
        parcel_ids=[str(s) for s in data["sample_id"]] if "sample_id" in data.files else None,
        lon=np.asarray(data["lon"], float) if "lon" in data.files else None,
        lat=np.asarray(data["lat"], float) if "lat" in data.files else None,
        source=source,
        label_field="crop_code",
    )


VICTORIA_YEAR = 2017


def load_victoria_pixels(folder: str | Path) -> SeriesData:
    """The Victoria pixel set (Pelletier et al. 2019; GPL-3.0, test-only): 73 dates x 10 bands.

    Reads ``train_dataset.csv`` and ``test_dataset.csv`` (both, in that order; the upstream
    split is not polygon-disjoint, so it is merged and re-split by the caller's folds) or a
    compact ``pixels.npz`` (``X`` (N, 73, 10), ``lc_id``, ``objectid``) with the same content.
    Labels are the ``class_map.txt`` values (1, 2, 3, 7, 8, 10, 12, 13), ``lc_id`` being the
    index into its sorted rows (inferred upstream mapping, see the data README). The dates are
    not published: a regular 5-day grid over ``VICTORIA_YEAR`` is assumed (73 x 5 = 365 days).
    """
    folder = Path(folder)
    class_rows = _read_class_map(folder / "class_map.txt")
    if (folder / "pixels.npz").is_file():
        data = np.load(folder / "pixels.npz", allow_pickle=False)
        values, lc_id, objectid = data["X"], data["lc_id"], data["objectid"]
    else:
        parts = [_read_victoria_csv(folder / f"{s}_dataset.csv") for s in ("train", "test")]
        values = np.concatenate([p[0] for p in parts])
        lc_id = np.concatenate([p[1] for p in parts])
        objectid = np.concatenate([p[2] for p in parts])
    if lc_id.min() < 0 or lc_id.max() >= len(class_rows):
        raise ValueError(f"lc_id outside 0..{len(class_rows) - 1} in {folder}")
    codes = np.array([class_rows[i]["code"] for i in lc_id], dtype=np.int64)
    start = dt.date(VICTORIA_YEAR, 1, 1)
    dates = [(start + dt.timedelta(days=5 * i)).isoformat() for i in range(values.shape[1])]
    return SeriesData(
        values=values,
        dates=dates,
        labels=codes,
        classes=class_rows,
        parcel_ids=[f"{o}_{i}" for i, o in enumerate(objectid)],
        source={
            "path": str(folder),
            "dates_note": f"dates not published; regular 5-day grid over {VICTORIA_YEAR} assumed",
            "objectid": "source polygon of each pixel (parcel_id prefix)",
            "licence": "GPL-3.0 (test-only data)",
        },
        label_field="lc_id -> class_map value",
    )


def victoria_object_ids(series: SeriesData) -> np.ndarray:
    """The source polygon of each Victoria pixel, to group folds by polygon (no leakage)."""
    if series.parcel_ids is None:
        raise ValueError("these series have no parcel ids")
    return np.array([int(p.split("_")[0]) for p in series.parcel_ids], dtype=np.int64)


def _read_victoria_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], np.asarray(rows[1:], dtype=np.float64)
    if header[:2] != ["lc_id", "objectid"] or (len(header) - 2) % N_BANDS:
        raise ValueError(f"{path}: expected columns lc_id, objectid, b0 ... (dates x 10 bands)")
    values = body[:, 2:].reshape(len(body), -1, N_BANDS)  # b(10 t + k): date-major
    return np.rint(values).astype(np.uint16), body[:, 0].astype(int), body[:, 1].astype(int)


def _read_class_map(path: Path) -> list[dict[str, Any]]:
    out = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rgb = [int(v) for v in re.findall(r"\d+", row["colour"])]
            colour = "#{:02x}{:02x}{:02x}".format(*rgb[:3]) if len(rgb) >= 3 else None
            item: dict[str, Any] = {"code": int(row["value"]), "name": row["class"].strip()}
            if colour:
                item["colour"] = colour
            out.append(item)
    return sorted(out, key=lambda c: c["code"])


__all__ = [
    "SeriesData",
    "compact_codes",
    "load_victoria_pixels",
    "load_worldcereal_points",
    "series_to_store",
    "victoria_object_ids",
]
