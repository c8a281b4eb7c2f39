"""Split labelled regions into spatially compact sub-parcels of realistic size (a GeoPackage).

The bundled Flanders sample has 18 labelled regions, far too few samples to train a network.
Each region (a connected area of one crop code, often several real fields, see the sample's
README) is cut into pieces of about ``target_px`` pixels (0.2 ha at 10 m, the size of a small
field), which become the training samples:

1. the region's pixels are those whose centre lies inside its polygon, on the stack grid;
2. a region of fewer than ``2 * target_px`` pixels stays whole (every region of the sample has at
   least 6 pixels; whole regions are real LPIS areas, however small); a larger one is split into
   ``n_pixels // target_px`` pieces by k-means on the pixel centres (compact, near-equal pieces,
   deterministic: fixed ``seed``, one thread);
3. pieces are made 4-connected (a stray fragment of a cluster joins the neighbouring piece with
   which it shares most pixel edges) and pieces below ``min_piece_px`` join a neighbour the same
   way, so every piece is one polygon of realistic size;
4. each piece is polygonised along pixel edges (the sample's polygons follow pixel edges, so the
   pieces tile their region exactly).

Pieces of one region are neighbours that share soil, weather, farmer and management: they must
never sit on both sides of a train/test split. Every piece keeps its region's ``parcel_id``
(``source_parcel_id``) to group the folds by.

    .venv/bin/python scripts/make_subparcels.py --out build/models/subparcels.gpkg
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "resources" / "sample" / "flanders_s2"
TARGET_PX = 20  # 0.2 ha at 10 m
MIN_PIECE_PX = 12  # 0.12 ha
LAYER = "subparcels"


def _grid(sample: Path) -> tuple[Any, Any, int, int]:
    import rasterio

    first = sorted((sample / "stack").glob("S2_*.tif"))[0]
    with rasterio.open(first) as ds:
        return ds.crs, ds.transform, ds.width, ds.height


def _edges_between(labels: np.ndarray, a: np.ndarray) -> dict[int, int]:
    """Number of 4-neighbour pixel edges between the pixels ``a`` (bool) and each label."""
    h, w = labels.shape
    padded = np.pad(labels, 1, constant_values=-1)
    counts: dict[int, int] = {}
    for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        neighbour = padded[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]
        values, n = np.unique(neighbour[a & (neighbour >= 0)], return_counts=True)
        for value, count in zip(values.tolist(), n.tolist(), strict=True):
            counts[value] = counts.get(value, 0) + count
    return counts


def _join(labels: np.ndarray, pixels: np.ndarray) -> bool:
    """Give ``pixels`` to the neighbouring piece sharing most edges with them; False if none."""
    counts = _edges_between(labels, pixels)
    own = set(np.unique(labels[pixels]).tolist())
    counts = {k: v for k, v in counts.items() if k not in own}
    if not counts:
        return False
    labels[pixels] = max(counts.items(), key=lambda kv: (kv[1], -kv[0]))[0]
    return True


def split_region(
    inside: np.ndarray, target_px: int = TARGET_PX, min_piece_px: int = MIN_PIECE_PX, seed: int = 0
) -> np.ndarray:
    """Piece label (0..k-1) of every pixel of one region, -1 outside (``inside`` (H, W) bool)."""
    from scipy import ndimage
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    labels = np.full(inside.shape, -1, dtype=np.int64)
    n = int(inside.sum())
    k = max(1, n // target_px)
    if n < 2 * target_px or k == 1:
        labels[inside] = 0
        return labels
    rows, cols = np.nonzero(inside)
    centres = np.stack([cols + 0.5, rows + 0.5], axis=1)
    with threadpool_limits(1):
        clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(centres)
    labels[rows, cols] = clusters
    four = ndimage.generate_binary_structure(2, 1)
    for _ in range(100):  # fragments, then small pieces, until every piece is whole and large
        changed = False
        for piece in np.unique(labels[labels >= 0]):
            parts, count = ndimage.label(labels == piece, structure=four)
            if count > 1:
                sizes = np.bincount(parts.ravel())[1:]
                for j in np.argsort(-sizes, kind="stable")[1:]:
                    changed |= _join(labels, parts == j + 1)
        if not changed:
            pieces, sizes = np.unique(labels[labels >= 0], return_counts=True)
            small = [p for p, s in zip(pieces, sizes, strict=True) if s < min_piece_px]
            if small and len(pieces) > 1:
                changed = _join(labels, labels == small[np.argmin(sizes[np.isin(pieces, small)])])
        if not changed:
            break
    # renumber in raster order of each piece's first pixel: deterministic and readable
    order = {}
    for value in labels[labels >= 0]:
        order.setdefault(int(value), len(order))
    out = np.full_like(labels, -1)
    for old, new in order.items():
        out[labels == old] = new
    return out


def make_subparcels(
    parcels: Any,
    crs: Any,
    transform: Any,
    width: int,
    height: int,
    *,
    target_px: int = TARGET_PX,
    min_piece_px: int = MIN_PIECE_PX,
    seed: int = 0,
    id_field: str = "parcel_id",
) -> Any:
    """GeoDataFrame of the sub-parcels of every polygon of ``parcels`` (any CRS) on the grid.

    Columns: ``subparcel_id`` (1..), ``source_parcel_id``, the source's ``crop_code`` and
    ``crop_name`` when present, ``piece`` and ``n_pieces`` (within the source), ``n_pixels``,
    ``area_m2``.
    """
    import geopandas as gpd
    from rasterio import features
    from shapely.geometry import shape

    gdf = parcels.to_crs(crs) if parcels.crs != crs else parcels
    gdf = gdf.sort_values(id_field, kind="stable")
    pixel_area = abs(transform.a * transform.e)
    records: list[dict[str, Any]] = []
    geometries = []
    for _, row in gdf.iterrows():
        inside = features.rasterize(
            [(row.geometry, 1)], out_shape=(height, width), transform=transform, fill=0
        ).astype(bool)
        if not inside.any():
            continue
        labels = split_region(inside, target_px, min_piece_px, seed)
        n_pieces = int(labels.max()) + 1
        for piece in range(n_pieces):
            mask = labels == piece
            polygons = [
                shape(geom)
                for geom, value in features.shapes(
                    mask.astype(np.uint8), mask=mask, transform=transform, connectivity=4
                )
                if value == 1
            ]
            if len(polygons) != 1:
                raise RuntimeError(f"piece {piece} of parcel {row[id_field]} is not one polygon")
            records.append(
                {
                    "subparcel_id": len(records) + 1,
                    "source_parcel_id": int(row[id_field]),
                    **{c: row[c] for c in ("crop_code", "crop_name") if c in gdf.columns},
                    "piece": piece + 1,
                    "n_pieces": n_pieces,
                    "n_pixels": int(mask.sum()),
                    "area_m2": float(mask.sum() * pixel_area),
                }
            )
            geometries.append(polygons[0])
    return gpd.GeoDataFrame(records, geometry=geometries, crs=crs)


def write_subparcels(
    out: Path,
    sample: Path = SAMPLE,
    *,
    target_px: int = TARGET_PX,
    min_piece_px: int = MIN_PIECE_PX,
    seed: int = 0,
) -> Any:
    """Split ``sample/parcels.gpkg`` on the sample's stack grid and write ``out`` (GeoPackage,
    layer ``subparcels``); returns the GeoDataFrame."""
    import geopandas as gpd

    crs, transform, width, height = _grid(sample)
    parcels = gpd.read_file(sample / "parcels.gpkg", layer="parcels")
    subs = make_subparcels(
        parcels, crs, transform, width, height,
        target_px=target_px, min_piece_px=min_piece_px, seed=seed,
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    subs.to_file(out, layer=LAYER, driver="GPKG")
    return subs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=Path, default=SAMPLE)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "models" / "subparcels.gpkg")
    parser.add_argument("--target-px", type=int, default=TARGET_PX)
    parser.add_argument("--min-piece-px", type=int, default=MIN_PIECE_PX)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    subs = write_subparcels(
        args.out, args.sample, target_px=args.target_px, min_piece_px=args.min_piece_px,
        seed=args.seed,
    )  # fmt: skip
    summary = subs.groupby("crop_name").agg(
        samples=("subparcel_id", "size"),
        regions=("source_parcel_id", "nunique"),
        pixels=("n_pixels", "sum"),
        smallest=("n_pixels", "min"),
        median=("n_pixels", "median"),
        largest=("n_pixels", "max"),
    )
    print(f"wrote {args.out}: {len(subs)} sub-parcels\n{summary.to_string()}")


if __name__ == "__main__":
    main()
