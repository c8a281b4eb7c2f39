"""Sentinel-2 Level-2A products as downloaded (Copernicus Browser, Data Space, SciHub):
``S2B_MSIL2A_20180723T105029_N0208_R051_T31UDS_20180723T140017.SAFE`` folders or their .zip.

What is read, and from where (no file is unpacked: members of a zip are read by GDAL through
``/vsizip/``, the metadata with Python's ``zipfile``):

* ``MTD_MSIL2A.xml`` (product metadata): ``PRODUCT_START_TIME`` (the acquisition date, UTC),
  ``PROCESSING_BASELINE``, ``SENSING_ORBIT_NUMBER``, ``BOA_QUANTIFICATION_VALUE`` (10000: the
  scale), ``BOA_ADD_OFFSET_VALUES_LIST/BOA_ADD_OFFSET[@band_id]`` (-1000 from baseline 04.00;
  ``band_id`` indexes ``Spectral_Information_List``), ``Cloud_Coverage_Assessment`` and
  ``NODATA_PIXEL_PERCENTAGE`` (ranking of two acquisitions of one day). Older products named it
  ``*MTD_SAFL2A*.xml``; the same fields are read.
* the band files ``GRANULE/<granule>/IMG_DATA/R10m/T31UDS_20180723T105029_B02_10m.jp2``:
  B02, B03, B04, B08 from R10m, B05, B06, B07, B8A, B11, B12 and SCL from R20m (the 20 m bands
  are read on the 10 m grid by nearest neighbour, like the per-date stacks). The tile comes
  from the file names; each granule is one scene (compact products hold one).

GDAL's SENTINEL2 driver exposes the same files as per-resolution subdatasets; reading the JP2
files directly keeps every band at its native resolution and each file's own georeferencing.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from .scenes import Scene
from .stack import CANONICAL_SCALE, PAPER_BANDS, BandRef, StackError, _baseline_at_least_4

NATIVE_10M = ("B02", "B03", "B04", "B08")
# band_id in BOA_ADD_OFFSET_VALUES_LIST -> band, when Spectral_Information_List is missing
BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
            "B12")  # fmt: skip
_MTD_RE = re.compile(r"(^|/)(MTD_MSIL2A|[^/]*MTD_SAFL2A[^/]*)\.xml$", re.IGNORECASE)
_L1C_RE = re.compile(r"(^|/)(MTD_MSIL1C|[^/]*MTD_SAFL1C[^/]*)\.xml$", re.IGNORECASE)
_BAND_FILE_RE = re.compile(
    r"(?:^|/)GRANULE/([^/]+)/IMG_DATA/R(\d{2})m/([^/]*?)_(B\d[\dA]|SCL)_(\d{2})m\.jp2$",
    re.IGNORECASE,
)
_TILE_RE = re.compile(r"(?:^|_)T(\d{2}[A-Z]{3})(?:_|$)")
_NAME_RE = re.compile(r"S2[A-Z]_MSIL2A_(\d{8})T\d{6}_N\d{4}_R(\d{3})_T(\d{2}[A-Z]{3})_")


class _Files:
    """The members of a product, in a folder or a zip, by path relative to the product."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zipped = path.is_file() and zipfile.is_zipfile(path)
        if self.zipped:
            with zipfile.ZipFile(path) as zf:
                self.names = [n for n in zf.namelist() if not n.endswith("/")]
        else:
            root = path.parent if path.is_file() else path
            self.root = root
            self.names = [
                Path(d, f).relative_to(root).as_posix()
                for d, _, files in os.walk(root)
                for f in files
            ]

    def read(self, name: str) -> bytes:
        if self.zipped:
            with zipfile.ZipFile(self.path) as zf:
                return zf.read(name)
        return (self.root / name).read_bytes()

    def gdal_path(self, name: str) -> str:
        if self.zipped:
            return f"/vsizip/{self.path.resolve().as_posix()}/{name}"
        return str(self.root / name)


def is_product(path: Path) -> bool:
    """A .SAFE folder, a folder or zip holding one product's metadata, or MTD_MSIL2A.xml."""
    name = path.name.upper()
    if path.is_file():
        if name.endswith(".ZIP"):
            return _zip_holds_product(path)
        return bool(_MTD_RE.search(path.name) or _L1C_RE.search(path.name))
    if path.is_dir():
        if name.endswith(".SAFE"):
            return True
        return any(
            _MTD_RE.search(p.name) or _L1C_RE.search(p.name) for p in path.iterdir() if p.is_file()
        )
    return False


def products_in(folder: Path) -> list[Path]:
    """The products inside ``folder`` (.SAFE folders and product zips), sorted; also .SAFE
    folders one level down in folders named like a product (``S2B_MSIL2A_.../X.SAFE``, as some
    unzip tools leave a download)."""
    if not folder.is_dir() or is_product(folder):
        return []
    found = []
    for path in sorted(folder.iterdir()):
        if is_product(path):
            found.append(path)
        elif path.is_dir() and path.name.upper().startswith("S2"):
            found += sorted(
                p for p in path.iterdir() if p.is_dir() and p.name.upper().endswith(".SAFE")
            )
    return found


def _zip_holds_product(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(_MTD_RE.search(n) or _L1C_RE.search(n) for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def read_product(path: Path) -> list[Scene]:
    """The scenes (one per granule) of the L2A product at ``path``."""
    path = Path(path)
    try:
        files = _Files(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise StackError(f"Cannot read the product {path}: {exc}") from exc
    mtd = sorted((n for n in files.names if _MTD_RE.search(n)), key=lambda n: n.count("/"))
    if not mtd:
        if any(_L1C_RE.search(n) for n in files.names):
            raise StackError(
                f"{path.name} is a Level-1C product (top-of-atmosphere). The classifier needs "
                "Level-2A surface reflectance: download the S2MSI2A product of the same date."
            )
        raise StackError(
            f"{path} holds no MTD_MSIL2A.xml: is it a complete Sentinel-2 L2A product?"
        )
    mtd_name = mtd[0]
    prefix = mtd_name.rsplit("/", 1)[0] + "/" if "/" in mtd_name else ""
    try:
        root = ET.fromstring(files.read(mtd_name))
    except (ET.ParseError, OSError, KeyError) as exc:
        raise StackError(f"Cannot read {mtd_name} in {path}: {exc}") from exc
    meta = _metadata(root, path)

    granules: dict[str, dict[str, dict[int, str]]] = {}
    for name in files.names:
        if prefix and not name.startswith(prefix):
            continue
        match = _BAND_FILE_RE.search(name)
        if match:
            granule, band, res = match[1], match[4].upper(), int(match[5])
            granules.setdefault(granule, {}).setdefault(band, {})[res] = name
    if not granules:
        raise StackError(
            f"{path} has no band files under GRANULE/*/IMG_DATA/R10m and R20m; the download may "
            "be incomplete."
        )
    scenes = []
    for granule in sorted(granules):
        found = granules[granule]
        refs, missing = [], []
        for band in PAPER_BANDS:
            native = 10 if band in NATIVE_10M else 20
            name = found.get(band, {}).get(native)
            if name is None:
                missing.append(f"{band} ({native} m)")
            else:
                refs.append(BandRef(files.gdal_path(name), 1))
        if missing:
            raise StackError(f"{path.name}, granule {granule}, lacks {', '.join(missing)}.")
        scl = found.get("SCL", {})
        scl_name = scl.get(20) or scl.get(60)
        tile = _tile(Path(found["B02"][10]).name) or _tile(granule) or meta["tile"] or "?"
        scenes.append(
            Scene(
                date=meta["date"],
                tile=tile,
                bands=tuple(refs),
                cloud=BandRef(files.gdal_path(scl_name), 1) if scl_name else None,
                scale=meta["scale"],
                offset=meta["offset"],
                source=str(path),
                nodata=0.0,
                time=meta["time"],
                orbit=meta["orbit"],
                baseline=meta["baseline"],
                cloud_percent=meta["cloud"],
                nodata_percent=meta["nodata"],
            )
        )
    return scenes


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _text(root: ET.Element, *names: str) -> str | None:
    """Text of the first element with one of these local names (namespaces ignored)."""
    for name in names:
        for el in root.iter():
            if _local(el.tag) == name and el.text and el.text.strip():
                return el.text.strip()
    return None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _metadata(root: ET.Element, path: Path) -> dict:
    start = _text(root, "PRODUCT_START_TIME", "DATATAKE_SENSING_START", "SENSING_TIME")
    when = None
    if start:
        try:
            when = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
        except ValueError:
            when = None
    uri = _text(root, "PRODUCT_URI", "PRODUCT_URI_2A") or path.name
    named = _NAME_RE.search(uri) or _NAME_RE.search(path.name)
    if when is not None:
        date = when.date()
    elif named:
        date = dt.datetime.strptime(named[1], "%Y%m%d").date()
    else:
        raise StackError(f"{path}: no PRODUCT_START_TIME in the metadata nor a date in the name.")
    baseline = _text(root, "PROCESSING_BASELINE")
    quantification = _float(_text(root, "BOA_QUANTIFICATION_VALUE", "QUANTIFICATION_VALUE"))
    scale = 1.0 / quantification if quantification else CANONICAL_SCALE
    orbit_text = _text(root, "SENSING_ORBIT_NUMBER")
    return {
        "date": date,
        "time": when,
        "baseline": baseline,
        "scale": scale,
        "offset": _offset(root, path, baseline),
        "orbit": int(orbit_text) if orbit_text and orbit_text.isdigit() else None,
        "tile": named[3] if named else None,
        "cloud": _float(_text(root, "Cloud_Coverage_Assessment", "CLOUDY_PIXEL_PERCENTAGE")),
        "nodata": _float(_text(root, "NODATA_PIXEL_PERCENTAGE")),
    }


def _offset(root: ET.Element, path: Path, baseline: str | None) -> float:
    """BOA_ADD_OFFSET of the ten bands (one value: they are all -1000 in every baseline so
    far); 0 before baseline 04.00, which had no offset."""
    ids: dict[str, str] = {}
    for el in root.iter():
        if _local(el.tag) == "Spectral_Information":
            band_id, physical = el.get("bandId"), el.get("physicalBand")
            if band_id is not None and physical:
                ids[band_id] = _band(physical)
    offsets: dict[str, float] = {}
    for el in root.iter():
        if _local(el.tag) == "BOA_ADD_OFFSET" and el.get("band_id") is not None:
            band_id = el.get("band_id", "")
            band = ids.get(band_id) or (
                BAND_IDS[int(band_id)] if band_id.isdigit() and int(band_id) < 13 else None
            )
            value = _float(el.text)
            if band and value is not None:
                offsets[band] = value
    if not offsets:
        return -1000.0 if _baseline_at_least_4(baseline or "") else 0.0
    values = {offsets.get(b) for b in PAPER_BANDS}
    if None in values:
        missing = [b for b in PAPER_BANDS if b not in offsets]
        raise StackError(f"{path.name}: BOA_ADD_OFFSET_VALUES_LIST lacks {', '.join(missing)}.")
    if len(values) > 1:
        raise StackError(
            f"{path.name} gives different BOA_ADD_OFFSET values per band "
            f"({', '.join(f'{b} {offsets[b]:g}' for b in PAPER_BANDS)}); one offset per date is "
            "supported. Convert the product to reflectance first."
        )
    return float(values.pop())  # type: ignore[arg-type]


def _band(physical: str) -> str:
    """'B2' -> 'B02', 'B8A' -> 'B8A'."""
    text = physical.upper()
    if text.endswith("A"):
        return text
    return f"B{int(text[1:]):02d}" if text[1:].isdigit() else text


def _tile(name: str) -> str | None:
    match = _TILE_RE.search(name)
    return match[1] if match else None
