"""A realistic synthetic Sentinel-2 stack and parcel layer for the benchmarks, cached on disk.

What makes it realistic enough for timing, memory and compression figures:

* per-date 10-band uint16 GeoTIFFs laid out like a Sentinel-2 L2A tile (EPSG:32631, 10 m,
  DEFLATE + horizontal predictor, 512 x 512 internal tiles, pixel interleaved), the six 20 m
  bands computed at 20 m and duplicated 2 x 2 as after nearest-neighbour resampling;
* reflectance from per-parcel crop phenology (double-logistic vegetation fraction per crop type,
  sowing date and vigour jittered per parcel, grassland mowing, rapeseed flowering) mixing a soil
  and a vegetation spectrum, smooth within-field variation, roads/farmyards/woods between fields,
  and sensor noise, so it compresses like real data and the features are not trivial;
* SCL sidecars (``scl/S2_YYYYMMDD_SCL.tif``, native 20 m) with smooth cloud blobs (classes 8,
  9, thin edges 10), their displaced shadows (3), and clear dates, partly cloudy and mostly
  cloudy dates in realistic proportions; cloudy reflectances brightened, shadows darkened;
* parcels: a Voronoi tessellation of jittered seeds in 1.6 km farm blocks bounded by roads, the
  seed spacing drawn per block so fields range from about 0.5 to 10 ha; fields shrunk by a few
  metres (ditches, hedges), some cells and blocks left out (farmyards, woods), never aligned to
  pixels. Attributes ``parcel_id``, ``crop_code``, ``crop_name``.

The cache lives under ``build/bench-data/<name>/`` and is rebuilt when its ``manifest.json``
(written last) is missing or was made by another generator version.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "build" / "bench-data"
GENERATOR_VERSION = 1
PIXEL = 10.0
ORIGIN = (499980.0, 5700000.0)  # upper-left corner of Sentinel-2 tile 31UDS
CRS = "EPSG:32631"
BLOCK = 512  # GeoTIFF internal tile
FARM_BLOCK_M = 1600.0
BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
BANDS_20M = (3, 4, 5, 7, 8, 9)  # indices of B05, B06, B07, B8A, B11, B12
BANDS_10M = (0, 1, 2, 6)

#                    B02   B03   B04   B05   B06   B07   B08   B8A   B11   B12
SOIL = np.array([900, 1150, 1400, 1600, 1750, 1850, 1950, 2050, 2900, 2400], np.float32)
GREEN = np.array([250, 550, 280, 900, 2700, 3500, 3900, 4100, 1900, 950], np.float32)
YELLOW = np.array([500, 1300, 1200, 1500, 2300, 2800, 3100, 3200, 2100, 1200], np.float32)
ROAD = np.array([1100, 1250, 1350, 1450, 1500, 1550, 1650, 1700, 2100, 1900], np.float32)
FOREST = np.array([200, 400, 250, 650, 1800, 2300, 2600, 2700, 1300, 600], np.float32)
CLOUD = np.array([7000, 6900, 6800, 6900, 6900, 6900, 6900, 6800, 4800, 3600], np.float32)


@dataclass(frozen=True)
class Crop:
    code: int
    name: str
    share: float
    sos: float  # day of year of green-up (half rise)
    eos: float  # day of year of senescence (half fall)
    vmin: float
    vmax: float


CROPS: tuple[Crop, ...] = (
    Crop(1110, "Winter wheat", 0.24, 75, 190, 0.25, 0.92),
    Crop(1120, "Winter barley", 0.08, 65, 172, 0.25, 0.90),
    Crop(1200, "Maize", 0.22, 160, 265, 0.03, 0.92),
    Crop(9120, "Grassland", 0.22, 85, 305, 0.50, 0.88),
    Crop(5100, "Potatoes", 0.10, 140, 235, 0.03, 0.86),
    Crop(8100, "Sugar beet", 0.08, 140, 290, 0.03, 0.92),
    Crop(4351, "Winter rapeseed", 0.06, 60, 175, 0.35, 0.90),
)


@dataclass(frozen=True)
class SyntheticSpec:
    size: int = 2048  # pixels per side (a Sentinel-2 tile is 10980)
    dates: int = 24
    seed: int = 0
    year: int = 2019

    @property
    def name(self) -> str:
        return f"s2_{self.size}px_{self.dates}d_seed{self.seed}_v{GENERATOR_VERSION}"


@dataclass(frozen=True)
class SyntheticData:
    root: Path
    stack: Path
    parcels: Path
    manifest: dict

    @property
    def n_parcels(self) -> int:
        return int(self.manifest["n_parcels"])


def ensure_dataset(
    spec: SyntheticSpec, cache: Path = CACHE, *, regenerate: bool = False, log=print
) -> SyntheticData:
    """The cached dataset for ``spec``, generated first when missing or stale."""
    root = cache / spec.name
    manifest_path = root / "manifest.json"
    if not regenerate and manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("generator_version") == GENERATOR_VERSION:
            return SyntheticData(root, root / "stack", root / "parcels.gpkg", manifest)
    if root.exists():
        shutil.rmtree(root)
    started = time.perf_counter()
    log(f"generating the synthetic stack {root} (once; cached) ...")
    manifest = _generate(spec, root, log)
    manifest["generation_seconds"] = round(time.perf_counter() - started, 1)
    manifest_path.write_text(json.dumps(manifest, indent=2))
    log(f"generated in {manifest['generation_seconds']} s")
    return SyntheticData(root, root / "stack", root / "parcels.gpkg", manifest)


# -- smooth random fields --------------------------------------------------------------------


def _upsample_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation weights, pixel-centre aligned."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
    hi = np.clip(lo + 1, 0, n_in - 1)
    w = np.clip(pos - lo, 0.0, 1.0).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] += 1.0 - w
    m[np.arange(n_out), hi] += w
    return m


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Zero-mean, unit-std random field varying over about ``scale_px`` pixels."""
    h, w = shape
    gh, gw = max(2, math.ceil(h / scale_px) + 1), max(2, math.ceil(w / scale_px) + 1)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    field = _upsample_matrix(h, gh) @ coarse @ _upsample_matrix(w, gw).T
    field -= field.mean()
    field /= field.std() + 1e-6
    return field


# -- parcels ---------------------------------------------------------------------------------


def _clip(poly: np.ndarray, normal: np.ndarray, offset: float) -> np.ndarray:
    """Part of the convex polygon ``poly`` (k, 2) where ``point . normal <= offset``."""
    side = poly @ normal - offset
    if (side <= 0).all():
        return poly
    out = []
    for i in range(len(poly)):
        a, b = poly[i], poly[(i + 1) % len(poly)]
        sa, sb = side[i], side[(i + 1) % len(poly)]
        if sa <= 0:
            out.append(a)
        if (sa < 0 < sb) or (sb < 0 < sa):
            out.append(a + (b - a) * (sa / (sa - sb)))
    return np.array(out) if len(out) >= 3 else np.empty((0, 2))


def jittered_voronoi(
    sx: np.ndarray, sy: np.ndarray, bounds: tuple[float, float, float, float]
) -> list[np.ndarray]:
    """Voronoi cells (vertex arrays) of seeds on a jittered grid, within ``bounds``.

    Half-plane clipping against the 24 nearest grid neighbours, which is exact for jitter
    below half a cell (shapely 1.8's GEOS voronoi_diagram crashes on this platform).
    """
    left, bottom, right, top = bounds
    ny, nx = sx.shape
    frame = np.array([[left, bottom], [right, bottom], [right, top], [left, top]], float)
    cells = []
    for j in range(ny):
        for i in range(nx):
            seed = np.array([sx[j, i], sy[j, i]])
            poly = frame
            for dj in range(-2, 3):
                for di in range(-2, 3):
                    jj, ii = j + dj, i + di
                    if (dj == di == 0) or not (0 <= jj < ny and 0 <= ii < nx):
                        continue
                    other = np.array([sx[jj, ii], sy[jj, ii]])
                    normal = other - seed
                    poly = _clip(poly, normal, float(normal @ (seed + other) / 2))
                    if not len(poly):
                        break
            if len(poly) >= 3:
                cells.append(poly)
    return cells


def make_parcels(spec: SyntheticSpec, rng: np.random.Generator):
    """GeoDataFrame of field polygons (see module docstring), in a block-by-block order."""
    import geopandas as gpd
    from shapely.geometry import Polygon, box

    x0, y0 = ORIGIN
    extent = spec.size * PIXEL
    n_blocks = math.ceil(extent / FARM_BLOCK_M)
    road_half, margin = 6.0, 2.5
    geoms, codes = [], []
    shares = np.array([c.share for c in CROPS])
    shares /= shares.sum()
    for by in range(n_blocks):
        for bx in range(n_blocks):
            if rng.random() < 0.07:  # a wood or a village: no fields in this block
                continue
            left, top = x0 + bx * FARM_BLOCK_M, y0 - by * FARM_BLOCK_M
            right = min(left + FARM_BLOCK_M, x0 + extent)
            bottom = max(top - FARM_BLOCK_M, y0 - extent)
            if right - left < 200 or top - bottom < 200:
                continue
            cell = math.exp(rng.uniform(math.log(100.0), math.log(330.0)))
            aspect = math.exp(rng.uniform(-0.6, 0.6))  # elongated fields
            cx, cy = cell * math.sqrt(aspect), cell / math.sqrt(aspect)
            nx = max(1, round((right - left) / cx))
            ny = max(1, round((top - bottom) / cy))
            gx = left + (np.arange(nx) + 0.5) * (right - left) / nx
            gy = bottom + (np.arange(ny) + 0.5) * (top - bottom) / ny
            sx, sy = np.meshgrid(gx, gy)
            sx = sx + rng.uniform(-0.3, 0.3, sx.shape) * (right - left) / nx
            sy = sy + rng.uniform(-0.3, 0.3, sy.shape) * (top - bottom) / ny
            inner = box(left + road_half, bottom + road_half, right - road_half, top - road_half)
            cells = [Polygon(c) for c in jittered_voronoi(sx, sy, (left, bottom, right, top))]
            for c in cells:
                if rng.random() < 0.05:  # farmyard, pond, copse
                    continue
                field = c.intersection(inner).buffer(-margin, join_style=2)
                if field.is_empty or field.area < 4000 or field.geom_type != "Polygon":
                    continue
                geoms.append(field)
                codes.append(CROPS[rng.choice(len(CROPS), p=shares)].code)
    names = {c.code: c.name for c in CROPS}
    return gpd.GeoDataFrame(
        {
            "parcel_id": np.arange(1, len(geoms) + 1),
            "crop_code": codes,
            "crop_name": [names[c] for c in codes],
        },
        geometry=geoms,
        crs=CRS,
    )


# -- reflectance -----------------------------------------------------------------------------


def _logistic(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def vegetation_fraction(doy: float, crop: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """Vegetation cover of each parcel on day ``doy`` (double logistic, mowing for grass)."""
    sos, eos = params["sos"], params["eos"]
    vmin, vmax = params["vmin"], params["vmax"]
    v = vmin + (vmax - vmin) * (_logistic((doy - sos) / 9.0) - _logistic((doy - eos) / 7.0))
    grass = crop == 9120
    for cut in (140.0, 190.0, 245.0):  # mowing: sudden drop, regrowth over ~3 weeks
        since = doy - (cut + params["cut_shift"])
        drop = np.where((since >= 0) & (since < 25), 0.45 * (1 - since / 25.0), 0.0)
        v = np.where(grass, v - drop, v)
    return np.clip(v, 0.0, 1.0).astype(np.float32)


def _parcel_params(codes: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    by_code = {c.code: c for c in CROPS}
    n = len(codes)
    return {
        "sos": np.array([by_code[c].sos for c in codes]) + rng.normal(0, 7, n),
        "eos": np.array([by_code[c].eos for c in codes]) + rng.normal(0, 7, n),
        "vmin": np.array([by_code[c].vmin for c in codes]) * rng.uniform(0.7, 1.2, n),
        "vmax": np.array([by_code[c].vmax for c in codes]) * rng.uniform(0.85, 1.05, n),
        "cut_shift": rng.normal(0, 6, n),
        "soil": rng.uniform(0.8, 1.25, n).astype(np.float32),
    }


def _dates(spec: SyntheticSpec, rng: np.random.Generator) -> list[dt.date]:
    """``spec.dates`` acquisition dates spread over the season (like the paper's 24)."""
    start, end = dt.date(spec.year, 1, 20).toordinal(), dt.date(spec.year, 11, 30).toordinal()
    days = np.linspace(start, end, spec.dates) + rng.integers(-3, 4, spec.dates)
    days = np.unique(days.astype(int))
    while len(days) < spec.dates:  # only for absurd date counts
        days = np.unique(np.r_[days, rng.integers(start, end, spec.dates - len(days))])
    return [dt.date.fromordinal(int(d)) for d in np.sort(days)[: spec.dates]]


def _clouds(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(opacity 0..1, shadow bool) at 20 m for one date."""
    kind = rng.random()
    cover = (
        0.0 if kind < 0.35 else rng.uniform(0.05, 0.4) if kind < 0.75 else rng.uniform(0.5, 0.95)
    )
    if cover == 0.0:
        return np.zeros(shape, np.float32), np.zeros(shape, bool)
    field = smooth_field(rng, shape, 120.0) + 0.45 * smooth_field(rng, shape, 25.0)
    threshold = np.quantile(field[::8, ::8], 1.0 - cover)
    opacity = np.clip((field - threshold) / 0.6, 0.0, 1.0)
    dy, dx = rng.integers(8, 20), rng.integers(-20, -6)  # shadows cast away from the sun
    thick = np.roll(opacity > 0.3, (int(dy), int(dx)), axis=(0, 1))
    return opacity.astype(np.float32), thick & (opacity == 0)


def _generate(spec: SyntheticSpec, root: Path, log) -> dict:
    import rasterio
    from rasterio import features
    from rasterio.transform import from_origin

    rng = np.random.default_rng(spec.seed)
    (root / "stack").mkdir(parents=True)
    (root / "scl").mkdir()
    size = spec.size
    transform = from_origin(*ORIGIN, PIXEL, PIXEL)

    parcels = make_parcels(spec, rng)
    parcels.to_file(root / "parcels.gpkg", layer="parcels", driver="GPKG")
    labels = features.rasterize(
        ((g, i + 1) for i, g in enumerate(parcels.geometry)),
        out_shape=(size, size), transform=transform, fill=0, dtype="int32",
    )  # fmt: skip
    codes = parcels["crop_code"].to_numpy()
    params = _parcel_params(codes, rng)
    log(f"  {len(parcels)} parcels, {(labels > 0).mean():.0%} of the area in fields")

    # Static per-pixel fields: within-field vigour, soil brightness, what lies between fields.
    vigour = 1.0 + 0.07 * smooth_field(rng, (size, size), 25.0)
    soil_pix = np.ones(len(parcels) + 1, np.float32)
    soil_pix[1:] = params["soil"]
    soil_pix = soil_pix[labels] * (1.0 + 0.05 * smooth_field(rng, (size, size), 40.0))
    background = labels == 0
    woods = smooth_field(rng, (size, size), 60.0) > 0.6

    profile = {
        "driver": "GTiff", "dtype": "uint16", "count": 10, "width": size, "height": size,
        "crs": CRS, "transform": transform, "nodata": 0, "tiled": True,
        "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate", "predictor": 2,
        "interleave": "pixel", "num_threads": "all_cpus", "bigtiff": "if_safer",
    }  # fmt: skip
    scl_profile = {**profile, "count": 1, "dtype": "uint8", "predictor": 1}
    dates = _dates(spec, rng)
    clear_fraction = []
    half = (size + 1) // 2
    for t, date in enumerate(dates):
        doy = date.timetuple().tm_yday
        v_parcel = np.zeros(len(parcels) + 1, np.float32)
        v_parcel[1:] = vegetation_fraction(doy, codes, params)
        v = np.clip(v_parcel[labels] * vigour, 0.0, 1.0)
        flowering = np.zeros(len(parcels) + 1, np.float32)
        flowering[1:] = np.where(codes == 4351, np.exp(-(((doy - 120.0) / 10.0) ** 2)), 0.0)
        bloom = flowering[labels]
        light = np.float32(1.0 + rng.normal(0, 0.03))  # atmosphere / illumination of the day
        opacity20, shadow20 = _clouds(rng, (half, half))
        opacity = np.repeat(np.repeat(opacity20, 2, 0), 2, 1)[:size, :size]
        shadow = np.repeat(np.repeat(shadow20, 2, 0), 2, 1)[:size, :size]
        woods_v = 0.75 + 0.15 * math.sin((doy - 100) / 365 * 2 * math.pi)

        stack = np.empty((10, size, size), np.uint16)
        for b in range(10):
            coarse = b in BANDS_20M
            sl = (slice(None, None, 2), slice(None, None, 2)) if coarse else (slice(None),) * 2
            vb, sb, bg, wd = v[sl], soil_pix[sl], background[sl], woods[sl]
            refl = (1 - vb) * SOIL[b] * sb + vb * GREEN[b]
            refl += bloom[sl] * (YELLOW[b] - GREEN[b]) * vb
            other = np.where(wd, (1 - woods_v) * SOIL[b] + woods_v * FOREST[b], ROAD[b])
            refl = np.where(bg, other, refl) * light
            op = opacity[sl]
            refl = np.where(shadow[sl], refl * 0.35, refl)
            refl = (1 - op) * refl + op * CLOUD[b]
            noise = rng.standard_normal(refl.shape, dtype=np.float32)
            refl += noise * (12.0 + 0.01 * refl)
            values = np.clip(np.rint(refl), 1, 20000).astype(np.uint16)
            if coarse:
                values = np.repeat(np.repeat(values, 2, 0), 2, 1)[:size, :size]
            stack[b] = values

        scl = np.where(v > 0.3, 4, 5).astype(np.uint8)
        scl[background & woods] = 4
        scl[shadow] = 3
        scl[(opacity > 0) & (opacity <= 0.15)] = 10
        scl[(opacity > 0.15) & (opacity <= 0.5)] = 8
        scl[opacity > 0.5] = 9
        scl = np.repeat(np.repeat(scl[::2, ::2], 2, 0), 2, 1)[:size, :size]  # native 20 m
        clear_fraction.append(float(np.isin(scl, (4, 5)).mean()))

        stem = f"S2_{date:%Y%m%d}"
        with rasterio.open(root / "stack" / f"{stem}.tif", "w", **profile) as ds:
            ds.write(stack)
            ds.descriptions = BANDS
            ds.update_tags(ACQUISITION_DATE=date.isoformat(), REFLECTANCE_SCALE="0.0001")
        with rasterio.open(root / "scl" / f"{stem}_SCL.tif", "w", **scl_profile) as ds:
            ds.write(scl, 1)
            ds.descriptions = ("SCL",)
        log(f"  {date} ({t + 1}/{len(dates)}): {clear_fraction[-1]:.0%} clear")

    areas = parcels.geometry.area / 1e4
    return {
        "generator_version": GENERATOR_VERSION,
        "spec": asdict(spec),
        "crs": CRS,
        "origin": list(ORIGIN),
        "pixel_m": PIXEL,
        "n_parcels": len(parcels),
        "parcel_area_ha": {
            "min": round(float(areas.min()), 2),
            "median": round(float(areas.median()), 2),
            "max": round(float(areas.max()), 2),
        },
        "dates": [d.isoformat() for d in dates],
        "clear_fraction": [round(c, 3) for c in clear_fraction],
        "stack_bytes": sum(p.stat().st_size for p in (root / "stack").iterdir()),
        "scl_bytes": sum(p.stat().st_size for p in (root / "scl").iterdir()),
        "raw_bytes": spec.dates * size * size * 10 * 2,
    }
