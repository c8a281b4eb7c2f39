"""Small but structurally faithful Sentinel-2 L2A products and STAC items for tests.

A product made here has the real folder tree of a compact (PSD 14+) L2A product::

    S2B_MSIL2A_20180723T105029_N0208_R051_T31UDS_20180723T140017.SAFE/
      MTD_MSIL2A.xml  manifest.safe  INSPIRE.xml  DATASTRIP/...  AUX_DATA/  HTML/
      GRANULE/L2A_T31UDS_A007164_20180723T105031/
        MTD_TL.xml  QI_DATA/MSK_CLDPRB_20m.jp2
        QI_DATA/MSK_SNWPRB_20m.jp2
        IMG_DATA/R10m/T31UDS_20180723T105029_B02_10m.jp2 (B02 B03 B04 B08 AOT WVP)
        IMG_DATA/R20m/T31UDS_20180723T105029_B05_20m.jp2 (B02-B07 B8A B11 B12 SCL AOT WVP)
        IMG_DATA/R60m/T31UDS_20180723T105029_B01_60m.jp2 (B01 SCL AOT WVP)

with lossless JPEG 2000 band files (GDAL's JP2OpenJPEG, REVERSIBLE=YES), MTD_MSIL2A.xml with
the fields GDAL's SENTINEL2 driver and the plugin read (product info, granule list, special
values, quantification, BOA_ADD_OFFSET_VALUES_LIST from baseline 04.00, spectral information,
quality indicators) and MTD_TL.xml with the tile geocoding. The pixel values come from the
caller (the bundled real Flanders sample): 10 m bands as given, 20 m bands and SCL taken from
every other pixel (the sample's 20 m bands and SCL are 2 x 2 duplicates, so nothing is lost).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.transform import Affine

from sample_data import read_date

BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
R10 = ("B02", "B03", "B04", "B08")
R20 = ("B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12")
PHYSICAL = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
RESOLUTION = (60, 10, 10, 10, 20, 20, 20, 10, 20, 60, 60, 20, 20)
EARTH_SEARCH = {"B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
                "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B8A": "nir08",
                "B11": "swir16", "B12": "swir22"}  # fmt: skip
CLOUDY = (3, 8, 9, 10)


def write_jp2(path: Path, data: np.ndarray, crs, transform: Affine) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = data.shape
    profile = {"driver": "JP2OpenJPEG", "width": width, "height": height, "count": 1,
               "dtype": data.dtype.name, "crs": crs, "transform": transform}  # fmt: skip
    with rasterio.open(path, "w", **profile, REVERSIBLE="YES", QUALITY=100) as ds:
        ds.write(data, 1)
    return path


def _coarse(transform: Affine, factor: int) -> Affine:
    return Affine(transform.a * factor, 0, transform.c, 0, transform.e * factor, transform.f)


def product_name(date: str, time: str, baseline: str, orbit: int, tile: str, sat: str) -> str:
    return (f"{sat}_MSIL2A_{date}T{time}_N{baseline.replace('.', '')}_R{orbit:03d}_T{tile}_"
            f"{date}T140017")  # fmt: skip


def make_product(
    folder: Path,
    values: np.ndarray,
    scl: np.ndarray,
    crs,
    transform: Affine,
    *,
    date: str = "20180723",
    time: str = "105029",
    tile: str = "31UDS",
    baseline: str = "02.08",
    orbit: int = 51,
    sat: str = "S2B",
    zipped: bool = False,
) -> Path:
    """An L2A product of ``values`` (10, H, W; reflectance x 10000, 0 = no data) and ``scl``
    (H, W) on the 10 m grid ``transform``. From baseline 04.00 the stored DN are values + 1000
    (where observed) and the metadata says BOA_ADD_OFFSET = -1000, as in real products."""
    offset = 1000 if float(baseline) >= 4.0 else 0
    name = product_name(date, time, baseline, orbit, tile, sat)
    safe = folder / f"{name}.SAFE"
    if safe.exists():
        shutil.rmtree(safe)
    granule_time = f"{int(time) + 2:06d}"
    granule = f"L2A_T{tile}_A007164_{date}T{granule_time}"
    img = safe / "GRANULE" / granule / "IMG_DATA"
    stem = f"T{tile}_{date}T{time}"
    stored = np.where(values > 0, values.astype(np.int64) + offset, 0).astype(np.uint16)
    image_files = []
    for band in R10:
        rel = f"GRANULE/{granule}/IMG_DATA/R10m/{stem}_{band}_10m"
        write_jp2(safe / f"{rel}.jp2", stored[BANDS.index(band)], crs, transform)
        image_files.append(rel)
    t20 = _coarse(transform, 2)
    for band in R20:
        rel = f"GRANULE/{granule}/IMG_DATA/R20m/{stem}_{band}_20m"
        write_jp2(safe / f"{rel}.jp2", stored[BANDS.index(band), ::2, ::2], crs, t20)
        image_files.append(rel)
    rel = f"GRANULE/{granule}/IMG_DATA/R20m/{stem}_SCL_20m"
    write_jp2(safe / f"{rel}.jp2", scl[::2, ::2].astype(np.uint8), crs, t20)
    image_files.append(rel)
    t60 = _coarse(transform, 6)
    for band, data in (("B01", stored[0, ::6, ::6]), ("SCL", scl[::6, ::6].astype(np.uint8))):
        rel = f"GRANULE/{granule}/IMG_DATA/R60m/{stem}_{band}_60m"
        write_jp2(safe / f"{rel}.jp2", data, crs, t60)
        image_files.append(rel)
    for res, factor in ((10, 1), (20, 2), (60, 6)):  # aerosol and water vapour, constant
        for band, value in (("AOT", 120), ("WVP", 1800)):
            rel = f"GRANULE/{granule}/IMG_DATA/R{res}m/{stem}_{band}_{res}m"
            flat = np.full(scl[::factor, ::factor].shape, value, np.uint16)
            write_jp2(safe / f"{rel}.jp2", flat, crs, _coarse(transform, factor))
            image_files.append(rel)
    prob = (np.isin(scl[::2, ::2], CLOUDY) * 90).astype(np.uint8)
    write_jp2(img.parent / "QI_DATA" / "MSK_CLDPRB_20m.jp2", prob, crs, t20)
    write_jp2(img.parent / "QI_DATA" / "MSK_SNWPRB_20m.jp2", prob * 0, crs, t20)

    cloud_pct = float(np.isin(scl, (8, 9, 10)).mean() * 100)
    nodata_pct = float((scl == 0).mean() * 100)
    start = dt.datetime.strptime(date + time, "%Y%m%d%H%M%S").isoformat() + ".024Z"
    (safe / "MTD_MSIL2A.xml").write_text(
        _mtd_msil2a(
            name, start, baseline, orbit, sat, tile, image_files, offset, cloud_pct, nodata_pct
        ),
        encoding="utf-8",
    )
    (safe / "GRANULE" / granule / "MTD_TL.xml").write_text(
        _mtd_tl(tile, start, crs, transform, values.shape[1:], cloud_pct), encoding="utf-8"
    )
    (safe / "manifest.safe").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<xfdu:XFDU xmlns:xfdu="urn:ccsds:schema:xfdu:1" '
        'version="esa/safe/sentinel/1.1/sentinel-2/msi/archive_l2a_user_product"/>\n',
        encoding="utf-8",
    )
    (safe / "INSPIRE.xml").write_text('<?xml version="1.0"?>\n<gmd:MD_Metadata/>\n')
    for sub in ("DATASTRIP", "AUX_DATA", "HTML", "rep_info", f"GRANULE/{granule}/AUX_DATA"):
        (safe / sub).mkdir(parents=True, exist_ok=True)
    if not zipped:
        return safe
    archive = folder / f"{name}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(safe.rglob("*")):
            zf.write(path, path.relative_to(folder).as_posix())
    shutil.rmtree(safe)
    return archive


def product_from_sample(folder: Path, date: str, **kwargs) -> Path:
    """The product of one date of the bundled sample (same pixels as ``stack/S2_<date>.tif``)."""
    values, scl, profile = read_date(date)
    return make_product(folder, values, scl, profile["crs"], profile["transform"], date=date,
                        **kwargs)  # fmt: skip


def crop(values: np.ndarray, scl: np.ndarray, transform: Affine, cols: slice, rows: slice):
    """A part of the sample's grid (a tile of a made-up tiling), its transform shifted."""
    return (values[:, rows, cols], scl[rows, cols],
            transform * Affine.translation(cols.start or 0, rows.start or 0))  # fmt: skip


# -- XML -------------------------------------------------------------------------------------


def _mtd_msil2a(name, start, baseline, orbit, sat, tile, image_files, offset, cloud_pct,
                nodata_pct) -> str:  # fmt: skip
    psd = "psd-15" if offset else "psd-14"
    ns = f"https://{psd}.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd"
    day = start[:10].replace("-", "")
    datastrip = f"{sat}_OPER_MSI_L2A_DS_MPS__{day}T140017_S{day}T105031_N{baseline}"
    granule_id = f"{sat}_OPER_MSI_L2A_TL_MPS__{day}T140017_A007164_T{tile}_N{baseline}"
    compact = "<PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT>"
    files = "\n".join(f"            <IMAGE_FILE>{f}</IMAGE_FILE>" for f in image_files)
    offsets = ""
    if offset:
        offsets = (
            "      <BOA_ADD_OFFSET_VALUES_LIST>\n"
            + "\n".join(
                f'        <BOA_ADD_OFFSET band_id="{i}">-{offset}</BOA_ADD_OFFSET>'
                for i in range(13)
            )
            + "\n      </BOA_ADD_OFFSET_VALUES_LIST>\n"
        )
    spectral = "\n".join(
        f'        <Spectral_Information bandId="{i}" physicalBand="{b}">'
        f"<RESOLUTION>{r}</RESOLUTION></Spectral_Information>"
        for i, (b, r) in enumerate(zip(PHYSICAL, RESOLUTION, strict=True))
    )
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-2A_User_Product xmlns:n1="{ns}">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{start}</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>{start}</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{name}.SAFE</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-2A</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI2A</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <GENERATION_TIME>{start[:10]}T14:00:17.000000Z</GENERATION_TIME>
      <Datatake datatakeIdentifier="G{sat}_{day}T105029_007164_N{baseline}">
        <SPACECRAFT_NAME>Sentinel-2{sat[-1]}</SPACECRAFT_NAME>
        <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
        <DATATAKE_SENSING_START>{start}</DATATAKE_SENSING_START>
        <SENSING_ORBIT_NUMBER>{orbit}</SENSING_ORBIT_NUMBER>
        <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
      </Datatake>
      <Query_Options completeSingleTile="true">{compact}</Query_Options>
      <Product_Organisation>
        <Granule_List>
          <Granule datastripIdentifier="{datastrip}" granuleIdentifier="{granule_id}"
                   imageFormat="JPEG2000">
{files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>
      <Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX></Special_Values>
      <QUANTIFICATION_VALUES_LIST>
        <BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>
        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>
        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>
      </QUANTIFICATION_VALUES_LIST>
{offsets}      <Reflectance_Conversion><U>0.968019941697828</U></Reflectance_Conversion>
      <Spectral_Information_List>
{spectral}
      </Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
  <n1:Quality_Indicators_Info>
    <Cloud_Coverage_Assessment>{cloud_pct:.6f}</Cloud_Coverage_Assessment>
    <Image_Content_QI>
      <NODATA_PIXEL_PERCENTAGE>{nodata_pct:.6f}</NODATA_PIXEL_PERCENTAGE>
      <CLOUDY_PIXEL_PERCENTAGE>{cloud_pct:.6f}</CLOUDY_PIXEL_PERCENTAGE>
    </Image_Content_QI>
  </n1:Quality_Indicators_Info>
</n1:Level-2A_User_Product>
"""


def _mtd_tl(tile, start, crs, transform, shape, cloud_pct) -> str:
    rows, cols = shape
    sizes = "\n".join(
        f'      <Size resolution="{r}"><NROWS>{rows * 10 // r}</NROWS><NCOLS>{cols * 10 // r}'
        f"</NCOLS></Size>"
        for r in (10, 20, 60)
    )
    positions = "\n".join(
        f'      <Geoposition resolution="{r}"><ULX>{transform.c:.0f}</ULX><ULY>{transform.f:.0f}'
        f"</ULY><XDIM>{r}</XDIM><YDIM>-{r}</YDIM></Geoposition>"
        for r in (10, 20, 60)
    )
    epsg = rasterio.crs.CRS.from_user_input(crs).to_epsg()
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-2A_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-2A_Tile_Metadata.xsd">
  <n1:General_Info>
    <TILE_ID metadataLevel="Brief">T{tile}</TILE_ID>
    <SENSING_TIME metadataLevel="Standard">{start}</SENSING_TIME>
  </n1:General_Info>
  <n1:Geometric_Info>
    <Tile_Geocoding metadataLevel="Brief">
      <HORIZONTAL_CS_NAME>WGS84 / UTM zone {epsg % 100}N</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>EPSG:{epsg}</HORIZONTAL_CS_CODE>
{sizes}
{positions}
    </Tile_Geocoding>
  </n1:Geometric_Info>
  <n1:Quality_Indicators_Info metadataLevel="Standard">
    <Image_Content_QI>
      <CLOUDY_PIXEL_PERCENTAGE>{cloud_pct:.6f}</CLOUDY_PIXEL_PERCENTAGE>
    </Image_Content_QI>
  </n1:Quality_Indicators_Info>
</n1:Level-2A_Tile_ID>
"""


# -- STAC ------------------------------------------------------------------------------------


def write_cog(path: Path, data: np.ndarray, crs, transform: Affine, nodata=0) -> Path:
    """A Cloud-Optimised GeoTIFF (GDAL's COG driver)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.tif")
    height, width = data.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1, "nodata": nodata,
               "dtype": data.dtype.name, "crs": crs, "transform": transform}  # fmt: skip
    with rasterio.open(tmp, "w", **profile) as ds:
        ds.write(data, 1)
    rasterio.shutil.copy(tmp, path, driver="COG")
    tmp.unlink()
    return path


def stac_item(
    folder: Path,
    date: str,
    *,
    values: np.ndarray | None = None,
    scl: np.ndarray | None = None,
    crs=None,
    transform: Affine | None = None,
    tile: str = "31UDS",
    baseline: str = "02.08",
    offset_applied: bool | None = None,
    raster_offset: bool = True,
    names: dict[str, str] | None = None,
    with_proj: bool = True,
) -> dict:
    """An earth-search style item (assets blue..swir22, scl as local COGs, relative hrefs).

    From baseline 04.00 the stored DN are values + 1000 unless ``offset_applied`` (then the
    item says ``earthsearch:boa_offset_applied: true`` and stores the values as they are,
    while ``raster:bands`` still declares offset -0.1, as earth-search does)."""
    if values is None:
        values, scl, profile = read_date(date)
        crs, transform = profile["crs"], profile["transform"]
    names = names or {**EARTH_SEARCH, "SCL": "scl"}
    shift = 1000 if float(baseline) >= 4.0 and not offset_applied else 0
    stored = np.where(values > 0, values.astype(np.int64) + shift, 0).astype(np.uint16)
    item_id = f"S2B_{tile}_{date}_0_L2A"
    sub = folder / item_id
    assets: dict[str, dict] = {}
    epsg = rasterio.crs.CRS.from_user_input(crs).to_epsg()
    for i, band in enumerate(BANDS):
        factor = 1 if band in R10 else 2
        data = stored[i, ::factor, ::factor]
        t = _coarse(transform, factor)
        write_cog(sub / f"{band}.tif", data, crs, t)
        rb = {"nodata": 0, "data_type": "uint16", "spatial_resolution": 10 * factor}
        if raster_offset:
            rb |= {"scale": 0.0001, "offset": -0.1 if float(baseline) >= 4.0 else 0.0}
        asset = {"href": f"{item_id}/{band}.tif",
                 "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                 "roles": ["data", "reflectance"], "raster:bands": [rb]}  # fmt: skip
        if with_proj:
            asset |= {"proj:shape": list(data.shape), "proj:transform": list(t)[:6]}
        assets[names[band]] = asset
        # the JP2 alternate of earth-search: same band, must not be preferred
        assets[f"{names[band]}-jp2"] = {"href": f"https://example.invalid/{band}.jp2",
                                        "type": "image/jp2", "roles": ["data"]}  # fmt: skip
    if scl is not None:
        write_cog(sub / "SCL.tif", scl[::2, ::2].astype(np.uint8), crs, _coarse(transform, 2))
        assets[names["SCL"]] = {"href": f"{item_id}/SCL.tif", "type": "image/tiff",
                                "roles": ["data"]}  # fmt: skip
    props = {
        "datetime": f"{date[:4]}-{date[4:6]}-{date[6:]}T10:56:58.624000Z",
        "platform": "sentinel-2b",
        "constellation": "sentinel-2",
        "eo:cloud_cover": float(np.isin(scl, (8, 9, 10)).mean() * 100) if scl is not None else 0,
        "proj:epsg": epsg,
        "mgrs:utm_zone": int(tile[:2]),
        "mgrs:latitude_band": tile[2],
        "mgrs:grid_square": tile[3:],
        "grid:code": f"MGRS-{tile}",
        "s2:processing_baseline": baseline,
    }
    if offset_applied is not None:
        props["earthsearch:boa_offset_applied"] = offset_applied
    from rasterio.warp import transform_bounds

    h, w = values.shape[1:]
    bounds = rasterio.transform.array_bounds(h, w, transform)
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "bbox": list(transform_bounds(crs, "EPSG:4326", *bounds)),
        "geometry": None,
        "properties": props,
        "assets": assets,
        "links": [],
    }


def item_collection(path: Path, items: Sequence[dict]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": list(items)}, indent=1))
    return path
