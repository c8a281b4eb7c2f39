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


# -- tiny real models for prediction tests ----------------------------------------------------

LEGEND = {  # the sample's crops: names from its WorldCereal legend, colours for the map
    9120: ("Permanent grass crops", "#4daf4a"),
    1200: ("Maize", "#ffd92f"),
    7900: ("Other leguminous crops", "#984ea3"),
    2130: ("Cabbages", "#1b9e77"),
    5100: ("Potatoes", "#a65628"),
}


def extract_sample_store(folder: Path) -> Path:
    """The bundled sample extracted into a store (labels: ``crop_code``), built once."""
    from cropmodels.extract import extract, read_parcels
    from cropmodels.stack import open_stack
    from cropmodels.store import write_store

    out = folder / "flanders.store"
    if out.exists():
        return out
    stack = open_stack(STACK)
    gdf = read_parcels(PARCELS)
    write_store(
        extract(gdf, stack),
        out,
        n_parcels=len(gdf),
        stack_description=stack.describe(),
        dates=[d.date for d in stack.dates],
        parcel_ids=gdf["parcel_id"].tolist(),
        labels=gdf["crop_code"].tolist(),
        label_field="crop_code",
    )
    return out


def train_sample_model(folder: Path, architecture: str = "gru", epochs: int = 1) -> Path:
    """A real model trained for ``epochs`` on the sample (3 folds so that Maize and the
    leguminous crops keep their class; cabbages and potatoes merge into Other). Returns the
    card's path. Tiny and quick: for tests of prediction, not of accuracy."""
    from cropmodels.train import TrainConfig, read_class_map, train_model

    folder.mkdir(parents=True, exist_ok=True)
    store = extract_sample_store(folder)
    class_map = folder / "classes.csv"
    class_map.write_text(
        "source_code,code,name,colour\n"
        + "".join(f"{c},{c},{n},{col}\n" for c, (n, col) in LEGEND.items()),
        encoding="utf-8",
    )
    config = TrainConfig(
        model=architecture, epochs=epochs, n_folds=3, merge_rare=True, device="cpu",
        name=f"{architecture}_flanders_test",
    )  # fmt: skip
    out = folder / f"{architecture}_flanders_test"
    train_model(store, config, out, cv=False, report=False,
                class_map=read_class_map(class_map))  # fmt: skip
    return out.with_suffix(".json")
