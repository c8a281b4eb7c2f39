"""Paths of the bundled real Flanders sample and small builders of derived stacks for tests."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio

from helpers import ROOT

SAMPLE = ROOT / "resources" / "sample" / "flanders_s2"
STACK = SAMPLE / "stack"
SCL = SAMPLE / "scl"
PARCELS = SAMPLE / "parcels.gpkg"
PARCELS_WGS84 = SAMPLE / "parcels_wgs84.gpkg"
BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")


def sample_dates() -> list[str]:
    return sorted(p.stem.split("_")[1] for p in STACK.glob("S2_*.tif"))


def copy_dates(dates: Sequence[str], folder: Path, with_scl: bool = True) -> Path:
    """A stack folder with a few real dates (and their SCL sidecars in ``folder/scl``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for d in dates:
        shutil.copy(STACK / f"S2_{d}.tif", folder / f"S2_{d}.tif")
        if with_scl:
            (folder / "scl").mkdir(exist_ok=True)
            shutil.copy(SCL / f"S2_{d}_SCL.tif", folder / "scl" / f"S2_{d}_SCL.tif")
    return folder


def read_date(date: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(10, 64, 64) values, (64, 64) SCL and the raster profile of a real date."""
    with rasterio.open(STACK / f"S2_{date}.tif") as ds:
        values, profile = ds.read(), ds.profile
    with rasterio.open(SCL / f"S2_{date}_SCL.tif") as ds:
        scl = ds.read(1)
    return values, scl, profile


def write_raster(path: Path, data: np.ndarray, profile: dict, descriptions=None, tags=None) -> Path:
    profile = {**profile, "count": data.shape[0], "dtype": data.dtype.name}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        for i, desc in enumerate(descriptions or [], start=1):
            ds.set_band_description(i, desc)
        if tags:
            ds.update_tags(**tags)
    return path
