"""Sentinel-2 L2A scenes from STAC items (an ItemCollection saved from a search, item JSON
files, or a folder of them), whose assets are Cloud-Optimised GeoTIFFs (or JP2), local or
remote.

* **Assets**: the ``eo`` common names of earth-search (``blue``, ``green``, ``red``,
  ``rededge1``..``rededge3``, ``nir``, ``nir08``, ``swir16``, ``swir22``, ``scl``), or band
  names (``B02``..``B12``, ``B8A``, ``SCL`` as on the Planetary Computer, ``B02_10m``,
  ``SCL_20m`` as on the Copernicus Data Space), or the asset's ``eo:bands`` name. GeoTIFF
  assets are preferred to JP2 alternates (``blue-jp2``), native resolutions to resampled ones.
* **Hrefs**: relative ones are relative to the JSON file; ``http(s)://`` is read through
  GDAL's ``/vsicurl/`` and ``s3://`` through ``/vsis3/``, window by window (HTTP range
  requests): with an extent, only the blocks the parcels need are fetched.
* **Values**: DN offset = ``raster:bands`` ``offset / scale`` (earth-search: -0.1 / 0.0001 =
  -1000), or -1000 when only ``s2:processing_baseline`` >= 04.00 says so; 0 when the item says
  ``earthsearch:boa_offset_applied: true`` (the offset is already in the pixel values, whatever
  ``raster:bands`` says). Scale from ``raster:bands`` ``scale``, else 1e-4.
* **Grid** from the projection extension (``proj:epsg``/``proj:code``, ``proj:transform``,
  ``proj:shape``) when present, so that no file is opened just to describe the stack; the item's
  ``bbox`` drops items away from the extent before anything else.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from .scenes import Scene, read_json
from .stack import (
    CANONICAL_SCALE,
    PAPER_BANDS,
    BandRef,
    Grid,
    StackError,
    _baseline_at_least_4,
    band_name,
    is_scl,
)

COMMON_NAMES = {
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "rededge1": "B05",
    "rededge2": "B06",
    "rededge3": "B07",
    "nir": "B08",
    "nir08": "B8A",
    "swir16": "B11",
    "swir22": "B12",
    "scl": "SCL",
}
NATIVE = {b: (10 if b in ("B02", "B03", "B04", "B08") else 20) for b in PAPER_BANDS} | {"SCL": 20}
_RES_RE = re.compile(r"_(\d{2})m$")
_TILE_RE = re.compile(r"(?:^|[_-])T?(\d{1,2}[C-X][A-Z]{2})(?:[_-]|$)")


def is_stac_file(path: Path) -> bool:
    """A JSON file holding a STAC Item or an ItemCollection (FeatureCollection of items)."""
    if not (path.is_file() and path.suffix.lower() in (".json", ".geojson")):
        return False
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:200_000]
    except OSError:
        return False
    if '"assets"' not in head:
        return False
    try:
        data = read_json(path)
    except StackError:
        return False
    return _is_item(data) or (
        isinstance(data, dict)
        and data.get("type") == "FeatureCollection"
        and any(_is_item(f) for f in data.get("features", []))
    )


def items_in(folder: Path) -> list[Path]:
    """STAC JSON files in a folder that holds no raster (a folder of saved items)."""
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if any(p.suffix.lower() in (".tif", ".tiff", ".jp2", ".vrt") for p in files):
        return []
    return [p for p in files if is_stac_file(p)]


def _is_item(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and data.get("type") == "Feature"
        and isinstance(data.get("assets"), dict)
    )


def read_items(path: Path) -> list[Scene]:
    """The scenes of the item or ItemCollection in ``path``."""
    data = read_json(path)
    features = [data] if _is_item(data) else list(data.get("features", []))
    scenes = []
    for i, item in enumerate(features):
        if _is_item(item):
            scenes.append(item_scene(item, path.parent, f"{path}#{item.get('id', i)}"))
    if not scenes:
        raise StackError(f"{path} holds no STAC item with assets.")
    return scenes


def item_scene(item: dict[str, Any], base: Path, where: str) -> Scene:
    """One STAC item as a scene; ``base``: folder that relative hrefs are relative to."""
    props = item.get("properties") or {}
    item_id = str(item.get("id", where))
    when = _datetime(props.get("datetime") or props.get("start_datetime"))
    if when is None:
        raise StackError(f"STAC item {item_id}: no datetime property.")
    chosen = _choose_assets(item.get("assets") or {})
    missing = [b for b in PAPER_BANDS if b not in chosen]
    if missing:
        names = ", ".join(sorted(item.get("assets") or {})) or "none"
        raise StackError(
            f"STAC item {item_id} lacks the Sentinel-2 bands {', '.join(missing)} (its assets: "
            f"{names}). Use a Sentinel-2 L2A collection (earth-search sentinel-2-l2a, Planetary "
            "Computer sentinel-2-l2a, ...)."
        )
    first_key = chosen["B02"]
    first = item["assets"][first_key]
    scale, offset = _scale_offset(props, first)
    refs = tuple(
        BandRef(gdal_href(item["assets"][chosen[b]]["href"], base), 1) for b in PAPER_BANDS
    )
    cloud = None
    if "SCL" in chosen:
        cloud = BandRef(gdal_href(item["assets"][chosen["SCL"]]["href"], base), 1)
    bbox = item.get("bbox")
    lonlat = None
    if isinstance(bbox, list) and len(bbox) == 4:
        lonlat = (float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3]))
    return Scene(
        date=when.date(),
        tile=_tile(props, item_id),
        bands=refs,
        cloud=cloud,
        scale=scale,
        offset=offset,
        source=item_id,
        nodata=_nodata(first),
        time=when,
        orbit=_int(props.get("sat:relative_orbit") or props.get("s2:relative_orbit")),
        baseline=_baseline(props),
        cloud_percent=_number(props.get("eo:cloud_cover")),
        nodata_percent=_number(props.get("s2:nodata_pixel_percentage")),
        grid=_grid(props, first),
        lonlat_bbox=lonlat,
    )


def gdal_href(href: str, base: Path) -> str:
    """An asset href as a path GDAL opens: remote through /vsicurl/ or /vsis3/."""
    if href.startswith(("/vsi", "http://", "https://")):
        return href if href.startswith("/vsi") else f"/vsicurl/{href}"
    if href.startswith("s3://"):
        return "/vsis3/" + href[len("s3://") :]
    if href.startswith("file://"):
        href = href[len("file://") :]
    path = Path(href)
    return str(path if path.is_absolute() else (base / path).resolve())


def _asset_band(key: str, asset: dict[str, Any]) -> str | None:
    name = key.lower().removesuffix("-jp2")
    if name in COMMON_NAMES:
        return COMMON_NAMES[name]
    text = _RES_RE.sub("", key)
    if is_scl(text):
        return "SCL"
    found = band_name(text) if re.fullmatch(r"[Bb]\d{1,2}[Aa]?", text) else None
    if found:
        return found
    for band in asset.get("eo:bands") or []:
        for field in ("name", "common_name"):
            value = str(band.get(field, ""))
            if value.lower() in COMMON_NAMES:
                return COMMON_NAMES[value.lower()]
            if re.fullmatch(r"[Bb]\d{1,2}[Aa]?", value):
                return band_name(value)
    return None


def _resolution(key: str, asset: dict[str, Any]) -> float | None:
    match = _RES_RE.search(key)
    if match:
        return float(match[1])
    for rb in asset.get("raster:bands") or []:
        if rb.get("spatial_resolution"):
            return float(rb["spatial_resolution"])
    return _number(asset.get("gsd"))


def _choose_assets(assets: dict[str, Any]) -> dict[str, str]:
    """Band -> asset key: GeoTIFF before JP2, native resolution before others."""
    best: dict[str, tuple[tuple[int, float], str]] = {}
    for key, asset in assets.items():
        if not isinstance(asset, dict) or not asset.get("href"):
            continue
        band = _asset_band(key, asset)
        if band not in NATIVE:
            continue
        kind = f"{asset.get('type', '')} {asset['href']}".lower()
        jp2 = "jp2" in kind or key.lower().endswith("-jp2")
        res = _resolution(key, asset)
        rank = (1 if jp2 else 0, abs((res or NATIVE[band]) - NATIVE[band]))
        if band not in best or rank < best[band][0]:
            best[band] = (rank, key)
    return {band: key for band, (_, key) in best.items()}


def _scale_offset(props: dict[str, Any], asset: dict[str, Any]) -> tuple[float, float]:
    rb = (asset.get("raster:bands") or [{}])[0] or {}
    scale = _number(rb.get("scale")) or CANONICAL_SCALE
    if props.get("earthsearch:boa_offset_applied") is True:
        return scale, 0.0
    offset = _number(rb.get("offset"))
    if offset is not None and _number(rb.get("scale")):
        return scale, offset / scale
    return scale, (-1000.0 if _baseline_at_least_4(_baseline(props) or "") else 0.0)


def _baseline(props: dict[str, Any]) -> str | None:
    value = props.get("s2:processing_baseline") or props.get("processing:version")
    return str(value) if value is not None else None


def _nodata(asset: dict[str, Any]) -> float | None:
    rb = (asset.get("raster:bands") or [{}])[0] or {}
    value = rb.get("nodata", 0)
    return _number(value) if value is not None else None


def _grid(props: dict[str, Any], asset: dict[str, Any]) -> Grid | None:
    """The asset's grid from the projection extension, or None (the file is read instead)."""
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    def get(key: str) -> Any:
        return asset.get(key, props.get(key))

    code = get("proj:code") or (f"EPSG:{get('proj:epsg')}" if get("proj:epsg") else None)
    transform, shape = get("proj:transform"), get("proj:shape")
    if not code or not transform or not shape or len(transform) < 6 or len(shape) != 2:
        return None
    try:
        crs = CRS.from_user_input(code)
    except Exception:  # any unreadable code: the file is read instead
        return None
    return Grid(crs, Affine(*[float(v) for v in transform[:6]]), int(shape[1]), int(shape[0]))


def _tile(props: dict[str, Any], item_id: str) -> str:
    for key in ("s2:mgrs_tile", "sentinel:mgrs_tile", "tileId"):
        if props.get(key):
            return str(props[key]).removeprefix("T")
    if str(props.get("grid:code", "")).startswith("MGRS-"):
        return str(props["grid:code"])[5:]
    zone, band, square = (props.get(k) for k in ("mgrs:utm_zone", "mgrs:latitude_band",
                                                  "mgrs:grid_square"))  # fmt: skip
    if zone and band and square:
        return f"{int(zone):02d}{band}{square}"
    match = _TILE_RE.search(item_id)
    return match[1] if match else item_id


def _datetime(text: Any) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None
