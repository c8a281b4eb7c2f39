"""The corpus of bad parcel layers and image stacks of issue 13 (see tests/data/bad/README.md).

Each builder writes one bad case into a folder (a test's ``tmp_path``) from the real Flanders
sample and returns its path; the few cases better committed as files (a truncated GeoTIFF,
layers of odd geometries) live in ``tests/data/bad``. Small on purpose: stacks keep a few
dates of the sample (:data:`FEW_DATES`) so a run takes a second.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import rasterio

from helpers import ROOT
from sample_data import PARCELS, SCL, STACK, copy_dates, read_date, write_raster

PARCELS_PATH = PARCELS

BAD = ROOT / "tests" / "data" / "bad"
BAD_PARCELS = BAD / "parcels"
BAD_STACKS = BAD / "stacks"
# Committed files (regenerate with ``python tests/bad_inputs.py``).
BAD_GEOMETRIES = BAD_PARCELS / "bad_geometries.geojson"
POINTS = BAD_PARCELS / "points.geojson"
LINES = BAD_PARCELS / "lines.geojson"
TRUNCATED = BAD_STACKS / "S2_20180723_truncated.tif"
# Spread over the 2018 season (the bundled models' grid runs from mid-January to October).
FEW_DATES = ("20180228", "20180419", "20180521", "20180628", "20180723", "20180802",
             "20180918", "20181021")  # fmt: skip
# Rows of BAD_GEOMETRIES, in order, and the status each must end with.
BAD_GEOMETRY_STATUS = {
    "good": "ok",
    "empty": "invalid_geometry",
    "null": "invalid_geometry",
    "bowtie": "ok",  # self-intersecting: repaired (make_valid) and classified
    "multipart": "ok",
    "tiny": "too_small",
    "huge": "too_large",
    "outside": "outside_stack",
    "partly_outside": "partly_outside",
}
DATE_TAGS = ("ACQUISITION_DATE", "ACQUISITION_DATETIME")
STACK_ORIGIN = (501360.0, 5629680.0)  # top-left corner of the sample's 64 x 64 px, 10 m grid


def sha256(path: Path) -> str:
    """Digest of a file, or of every file under a folder (names and contents)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def checksums(paths: Iterable[Path]) -> dict[str, str]:
    return {str(p): sha256(Path(p)) for p in paths}


def leftovers(folder: Path, keep: Iterable[Path] = ()) -> list[str]:
    """Files in ``folder`` (not below it) that a failed run must not leave, e.g. temporary
    ``.out.xxxx.gpkg`` files: everything except ``keep``."""
    kept = {Path(k).name for k in keep}
    return sorted(p.name for p in folder.iterdir() if p.name not in kept)


# -- parcel layers ---------------------------------------------------------------------------


def sample_parcels():
    import geopandas as gpd

    return gpd.read_file(PARCELS)


def write_layer(gdf, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    gdf.to_file(path)
    return path


def parcels_other_crs(folder: Path) -> Path:
    """The sample parcels in Web Mercator (the stack is UTM 31N): reprojected, must work."""
    return write_layer(sample_parcels().to_crs("EPSG:3857"), folder / "parcels_3857.gpkg")


def parcels_without_crs(folder: Path) -> Path:
    """A shapefile without .prj: no CRS at all."""
    import geopandas as gpd

    gdf = sample_parcels()
    gdf = gpd.GeoDataFrame({"parcel_id": gdf["parcel_id"]}, geometry=list(gdf.geometry))
    path = write_layer(gdf, folder / "no_crs.shp")
    path.with_suffix(".prj").unlink(missing_ok=True)
    return path


def parcels_shifted(folder: Path, dx: float, dy: float = 0.0, first: int | None = None) -> Path:
    """The sample parcels moved by (dx, dy) metres: all of them, or the first ``first``."""
    gdf = sample_parcels()
    n = len(gdf) if first is None else first
    moved = gdf.geometry.iloc[:n].translate(dx, dy)
    gdf = gdf.set_geometry([*moved.values, *gdf.geometry.iloc[n:].values], crs=gdf.crs)
    return write_layer(gdf, folder / f"shifted_{int(dx)}_{n}.gpkg")


def bad_geometries_gdf():
    """One row per case of :data:`BAD_GEOMETRY_STATUS` (the committed BAD_GEOMETRIES)."""
    import geopandas as gpd
    from shapely.geometry import MultiPolygon, Polygon, box

    x0, y0 = STACK_ORIGIN
    parcels = sample_parcels()
    good = parcels.geometry.iloc[5]
    a, b = parcels.geometry.iloc[6], parcels.geometry.iloc[7]
    bowtie = Polygon([(x0 + 100, y0 - 300), (x0 + 200, y0 - 400),
                      (x0 + 200, y0 - 300), (x0 + 100, y0 - 400)])  # fmt: skip
    tiny = box(x0 + 301, y0 - 309, x0 + 304, y0 - 306)  # 3 m square, no pixel centre inside
    huge = box(x0 - 50_000, y0 - 50_000, x0 + 50_000, y0 + 50_000)  # 100 km square
    outside = box(x0 + 5000, y0 + 5000, x0 + 5100, y0 + 5100)
    partly = box(x0 - 50, y0 - 600, x0 + 60, y0 - 500)  # half of it west of the stack
    geometries = {
        "good": good,
        "empty": Polygon(),
        "null": None,
        "bowtie": bowtie,
        "multipart": MultiPolygon([*_parts(a), *_parts(b)]),
        "tiny": tiny,
        "huge": huge,
        "outside": outside,
        "partly_outside": partly,
    }
    assert list(geometries) == list(BAD_GEOMETRY_STATUS)
    return gpd.GeoDataFrame(
        {"case": list(geometries), "crop_code": [1200] * len(geometries)},
        geometry=gpd.GeoSeries(list(geometries.values())),
        crs=parcels.crs,
    )


def _parts(geom) -> list:
    return list(getattr(geom, "geoms", [geom]))


def points_gdf():
    gdf = sample_parcels()[["parcel_id", "crop_code", "geometry"]].copy()
    gdf["geometry"] = gdf.geometry.representative_point()
    return gdf


def lines_gdf():
    gdf = sample_parcels()[["parcel_id", "crop_code", "geometry"]].copy()
    gdf["geometry"] = gdf.geometry.boundary
    return gdf


def parcels_with_labels(folder: Path, codes: list[int | None]) -> Path:
    """The sample parcels with ``crop_code`` replaced by ``codes`` (None: null)."""
    gdf = sample_parcels()
    gdf["crop_code"] = [codes[i % len(codes)] for i in range(len(gdf))]
    gdf["crop_code"] = gdf["crop_code"].astype("Int64")
    return write_layer(gdf, folder / "labels.gpkg")


# -- stacks ----------------------------------------------------------------------------------


def few_dates(folder: Path, dates: Iterable[str] = FEW_DATES) -> Path:
    """A stack folder of a few real dates with their SCL sidecars (``folder/scl``)."""
    return copy_dates(list(dates), folder)


def write_date(folder: Path, name: str, values: np.ndarray, profile: dict,
               descriptions=None, tags=None) -> Path:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    return write_raster(folder / name, values, profile, descriptions, tags)


def without_date_tags(profile_tags: dict) -> dict:
    return {k: v for k, v in profile_tags.items() if k not in DATE_TAGS}


def stack_unparseable_date(folder: Path) -> Path:
    """A date file named ``S2_latest.tif`` without an acquisition date tag."""
    stack = few_dates(folder, FEW_DATES[:3])
    values, _, profile = read_date(FEW_DATES[3])
    write_date(stack, "S2_latest.tif", values, profile, descriptions=_bands())
    return stack


def stack_wrong_band_count(folder: Path) -> Path:
    """One date with seven unnamed bands."""
    stack = few_dates(folder, FEW_DATES[:3])
    values, _, profile = read_date(FEW_DATES[3])
    write_date(stack, f"S2_{FEW_DATES[3]}.tif", values[:7], profile)
    return stack


def stack_missing_band(folder: Path) -> Path:
    """One date whose bands are named but B8A is not there."""
    stack = few_dates(folder, FEW_DATES[:3])
    values, _, profile = read_date(FEW_DATES[3])
    keep = [i for i, b in enumerate(_bands()) if b != "B8A"]
    write_date(stack, f"S2_{FEW_DATES[3]}.tif", values[keep], profile,
               descriptions=[_bands()[i] for i in keep])  # fmt: skip
    return stack


def stack_missing_band_file(folder: Path) -> Path:
    """One date as one file per band (``S2_<date>_B02.tif`` ...) without its B8A file."""
    stack = few_dates(folder, FEW_DATES[:3])
    values, _, profile = read_date(FEW_DATES[3])
    for i, band in enumerate(_bands()):
        if band != "B8A":
            write_date(stack, f"S2_{FEW_DATES[3]}_{band}.tif", values[i : i + 1], profile)
    return stack


def stack_truncated_mask(folder: Path) -> Path:
    """A cloud mask sidecar (``scl/S2_<date>_SCL.tif``) cut after its first 200 bytes."""
    stack = few_dates(folder, FEW_DATES[:3])
    mask = stack / "scl" / f"S2_{FEW_DATES[1]}_SCL.tif"
    mask.write_bytes(mask.read_bytes()[:200])
    return stack


def stack_missing_dates(folder: Path) -> Path:
    """Three dates of the season only (the model's grid has 24): resampled in time."""
    return few_dates(folder, ("20180419", "20180628", "20180918"))


def stack_other_grid_and_crs(folder: Path) -> Path:
    """Two dates on the sample grid, one on a 20 m grid and one in EPSG:3857: warped."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    stack = few_dates(folder, FEW_DATES[:2])
    values, _, profile = read_date(FEW_DATES[2])
    coarse = values.reshape(10, 32, 2, 32, 2).mean(axis=(2, 4)).astype(np.uint16)
    t = profile["transform"]
    p20 = {**profile, "width": 32, "height": 32,
           "transform": rasterio.Affine(20.0, 0.0, t.c, 0.0, -20.0, t.f)}  # fmt: skip
    write_date(stack, f"S2_{FEW_DATES[2]}.tif", coarse, p20, descriptions=_bands())
    values, _, profile = read_date(FEW_DATES[3])
    bounds = rasterio.transform.array_bounds(64, 64, profile["transform"])
    dst_t, w, h = calculate_default_transform(profile["crs"], "EPSG:3857", 64, 64, *bounds)
    out = np.zeros((10, h, w), np.uint16)
    reproject(values, out, src_transform=profile["transform"], src_crs=profile["crs"],
              dst_transform=dst_t, dst_crs="EPSG:3857", resampling=Resampling.bilinear,
              src_nodata=0, dst_nodata=0)  # fmt: skip
    p3857 = {**profile, "crs": "EPSG:3857", "transform": dst_t, "width": w, "height": h}
    write_date(stack, f"S2_{FEW_DATES[3]}.tif", out, p3857, descriptions=_bands())
    return stack


def stack_truncated(folder: Path) -> Path:
    """A few good dates and the committed truncated GeoTIFF as one more date."""
    stack = few_dates(folder, FEW_DATES[:3])
    shutil.copy(TRUNCATED, stack / TRUNCATED.name)
    return stack


def stack_header_truncated(folder: Path) -> Path:
    """A date file cut after its first 200 bytes: GDAL cannot even open it."""
    stack = few_dates(folder, FEW_DATES[:3])
    (stack / "S2_20180723.tif").write_bytes((STACK / "S2_20180723.tif").read_bytes()[:200])
    return stack


def stack_wide(folder: Path, dates: Iterable[str] = FEW_DATES[:4], tiles: int = 16) -> Path:
    """The sample's first dates tiled ``tiles`` x ``tiles`` times (1024 x 1024 px from the
    same top-left corner): a parcel over all of it needs 4 x 10 x 1024 x 1024 float32 values,
    168 MB, more than a 64 MB budget, while the sample's parcels stay where they were."""
    for date in dates:
        values, scl, profile = read_date(date)
        big = {**profile, "width": 64 * tiles, "height": 64 * tiles, "tiled": True,
               "blockxsize": 256, "blockysize": 256}  # fmt: skip
        write_date(folder, f"S2_{date}.tif", np.tile(values, (1, tiles, tiles)), big,
                   descriptions=_bands())  # fmt: skip
        write_date(folder / "scl", f"S2_{date}_SCL.tif", np.tile(scl, (tiles, tiles))[None],
                   {**big, "nodata": None})  # fmt: skip
    return folder


def stack_cloudy(folder: Path, all_dates: bool = False) -> Path:
    """Dates whose SCL says cloud (class 9) everywhere: every date, or every other one."""
    stack = few_dates(folder)
    for i, date in enumerate(FEW_DATES):
        if all_dates or i % 2:
            scl = stack / "scl" / f"S2_{date}_SCL.tif"
            with rasterio.open(scl, "r+") as ds:
                ds.write(np.full((1, ds.height, ds.width), 9, np.uint8))
    return stack


def stack_nodata_over(folder: Path, rows: slice, cols: slice) -> Path:
    """Every date holds no data (0) in ``rows`` x ``cols`` of the grid."""
    stack = few_dates(folder)
    for date in FEW_DATES:
        with rasterio.open(stack / f"S2_{date}.tif", "r+") as ds:
            data = ds.read()
            data[:, rows, cols] = 0
            ds.write(data)
    return stack


def stack_out_of_season(folder: Path) -> Path:
    """Four dates in late November and December: no year puts them in the models' season
    (mid-January to late October)."""
    stack = folder
    for date, source in (("20181125", "20181127"), ("20181205", "20181127"),
                         ("20181215", "20181127"), ("20181225", "20181127")):  # fmt: skip
        values, scl, profile = read_date(source)
        write_date(stack, f"S2_{date}.tif", values, profile, descriptions=_bands())
        write_date(stack / "scl", f"S2_{date}_SCL.tif", scl[None], {**profile, "nodata": None})
    return stack


def _bands() -> list[str]:
    return ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]


# -- the committed files ---------------------------------------------------------------------


def write_committed() -> None:
    """(Re)write the committed files of tests/data/bad from the sample."""
    BAD_PARCELS.mkdir(parents=True, exist_ok=True)
    BAD_STACKS.mkdir(parents=True, exist_ok=True)
    for gdf, path in ((bad_geometries_gdf(), BAD_GEOMETRIES), (points_gdf(), POINTS),
                      (lines_gdf(), LINES)):  # fmt: skip
        path.unlink(missing_ok=True)
        gdf.to_file(path, driver="GeoJSON", COORDINATE_PRECISION=2)
    data = (STACK / "S2_20180723.tif").read_bytes()
    TRUNCATED.write_bytes(data[: len(data) // 2])
    assert SCL.is_dir()


if __name__ == "__main__":
    write_committed()
