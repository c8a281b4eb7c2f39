"""cropmodels.rasterize.polygon_mask selects exactly GDAL's pixels (rasterio.features.rasterize
without all_touched), including the ties GDAL resolves by rule: vertices on pixel centres and
corners, horizontal edges on a centre line, rings in either order, holes and several parts.
(Checked once on 8,722 such polygons, ten seeds: no pixel differs; the test runs two seeds.)"""

from __future__ import annotations

import numpy as np
import pytest
from rasterio import features
from rasterio.transform import from_origin
from shapely import affinity
from shapely.geometry import LineString, MultiPolygon, Polygon, box
from shapely.geometry.polygon import orient

from cropmodels import rasterize
from cropmodels.rasterize import polygon_mask

GRID = from_origin(500_040.0, 5_600_330.0, 10.0, 10.0)


def _gdal(geometry, row0, row1, col0, col1):
    window = from_origin(GRID.c + col0 * GRID.a, GRID.f + row0 * GRID.e, GRID.a, -GRID.e)
    burnt = features.rasterize(
        [(geometry, 1)], out_shape=(row1 - row0, col1 - col0), transform=window, dtype="uint8"
    )
    return burnt > 0


def _window(geometry, margin=1):
    minx, miny, maxx, maxy = geometry.bounds
    col0 = int(np.floor((minx - GRID.c) / GRID.a)) - margin
    col1 = int(np.ceil((maxx - GRID.c) / GRID.a)) + margin
    row0 = int(np.floor((GRID.f - maxy) / -GRID.e)) - margin
    row1 = int(np.ceil((GRID.f - miny) / -GRID.e)) + margin
    return row0, row1, col0, col1


def _random_polygons(n, seed=0):
    """Star-shaped polygons snapped in turn to nothing, pixel centres, pixel corners and the
    half-pixel grid; some with a hole, some with a second part, in both orientations."""
    rng = np.random.default_rng(seed)
    origin = np.array([GRID.c, GRID.f])
    out = []
    for k in range(n):
        centre = origin + np.array([rng.integers(5, 60) * 10.0, -rng.integers(5, 60) * 10.0])
        count = rng.integers(3, 14)
        angles = np.sort(rng.uniform(0, 2 * np.pi, count))
        radii = rng.uniform(3, 150, count)
        points = centre + np.c_[radii * np.cos(angles), radii * np.sin(angles)]
        snap = k % 4
        if snap == 1:  # pixel centres
            points = np.round((points - origin) / 10 - 0.5) * 10 + 5 + origin
        elif snap == 2:  # pixel corners
            points = np.round((points - origin) / 10) * 10 + origin
        elif snap == 3:
            points = np.round((points - origin) / 5) * 5 + origin
        polygon = Polygon(points)
        if not polygon.is_valid:
            polygon = polygon.buffer(0)
        if polygon.is_empty or polygon.geom_type != "Polygon":
            continue
        if k % 5 == 0 and polygon.area > 3000:  # a hole, each ring either way round
            hole = list(affinity.scale(polygon, 0.4, 0.4).exterior.coords)
            exterior = list(polygon.exterior.coords)
            if k % 3 == 1:
                hole = hole[::-1]
            if k % 4 == 1:
                exterior = exterior[::-1]
            polygon = Polygon(exterior, [hole])
        if k % 2:
            polygon = orient(polygon, -1.0)
        if k % 9 == 0:
            second = box(centre[0] + 300, centre[1], centre[0] + 335, centre[1] + 25)
            polygon = MultiPolygon([polygon, second])
        out.append(polygon)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_same_pixels_as_gdal(seed):
    polygons = _random_polygons(600, seed)
    assert len(polygons) > 450
    for polygon in polygons:
        window = _window(polygon)
        np.testing.assert_array_equal(polygon_mask(polygon, GRID, *window), _gdal(polygon, *window))


def test_windows_that_cut_the_polygon():
    polygon = Polygon([(500_103, 5_600_301), (500_411, 5_600_288), (500_377, 5_599_933)])
    row0, row1, col0, col1 = _window(polygon)
    for window in [
        (row0 + 5, row1, col0, col1),
        (row0, row1 - 7, col0 + 3, col1 - 9),
        (row0 + 10, row0 + 11, col0, col1),
        (row1 + 2, row1 + 5, col0, col1),  # below it: nothing
    ]:
        np.testing.assert_array_equal(polygon_mask(polygon, GRID, *window), _gdal(polygon, *window))
    assert polygon_mask(polygon, GRID, 3, 3, 0, 5).shape == (0, 5)


def test_rows_in_steps(monkeypatch):
    """Huge parcels are scanned a few rows at a time; the result does not change."""
    polygon = _random_polygons(40, seed=3)[7]
    window = _window(polygon)
    expected = _gdal(polygon, *window)
    monkeypatch.setattr(rasterize, "_CELLS_PER_STEP", 16)
    np.testing.assert_array_equal(polygon_mask(polygon, GRID, *window), expected)


def test_rectangle_on_the_grid_in_both_directions():
    """Horizontal edges on centre lines: GDAL fills the right-to-left ones as their own runs."""
    for shape in (
        box(500_095, 5_600_205, 500_195, 5_600_285),
        box(500_090, 5_600_200, 500_190, 5_600_280),
    ):
        for polygon in (orient(shape, 1.0), orient(shape, -1.0)):
            window = _window(polygon)
            np.testing.assert_array_equal(
                polygon_mask(polygon, GRID, *window), _gdal(polygon, *window)
            )


def test_not_a_polygon():
    with pytest.raises(TypeError, match="Polygon"):
        polygon_mask(LineString([(0, 0), (1, 1)]), GRID, 0, 2, 0, 2)
    empty = polygon_mask(Polygon(), GRID, 0, 2, 0, 3)
    assert empty.shape == (2, 3)
    assert not empty.any()


def test_group_masks_equal_one_parcel_at_a_time():
    """polygon_masks (the extractor's group call) gives each parcel exactly polygon_mask's
    pixels in the top left of its plane, and nothing beyond its own window."""
    polygons = _random_polygons(40, seed=3)
    windows = [_window(p, margin=k % 3) for k, p in enumerate(polygons)]
    shape = (max(w[1] - w[0] for w in windows) + 5, max(w[3] - w[2] for w in windows) + 2)
    rings = [rasterize._rings(p) for p in polygons]
    masks = rasterize.polygon_masks(rings, GRID, windows, shape)
    assert masks.shape == (len(polygons), *shape)
    for k, (polygon, (row0, row1, col0, col1)) in enumerate(zip(polygons, windows, strict=True)):
        h, w = row1 - row0, col1 - col0
        np.testing.assert_array_equal(masks[k, :h, :w], polygon_mask(polygon, GRID, *windows[k]))
        assert not masks[k, h:].any()
        assert not masks[k, :, w:].any()


def test_huge_parcel_is_filled_in_bands(monkeypatch):
    """A parcel whose parity counts exceed the per-step budget is filled a band of rows at a
    time, with the same pixels."""
    polygon = _random_polygons(1, seed=5)[0]
    window = _window(polygon)
    whole = polygon_mask(polygon, GRID, *window)
    monkeypatch.setattr(rasterize, "_CELLS_PER_STEP", 64)
    np.testing.assert_array_equal(polygon_mask(polygon, GRID, *window), whole)


def test_wkb_rings_read_z_and_every_part():
    """Rings from WKB: 3-D coordinates reduced to x, y; every part and hole, exterior first."""
    shell = [(0, 0, 1), (10, 0, 1), (10, 10, 1), (0, 10, 1), (0, 0, 1)]
    hole = [(2, 2, 1), (4, 2, 1), (4, 4, 1), (2, 2, 1)]
    multi = MultiPolygon([Polygon(shell, [hole]), box(20, 20, 30, 30)])
    table = rasterize.ring_table(multi)
    assert [exterior for _, exterior in table] == [True, False, True]
    np.testing.assert_array_equal(table[0][0], np.asarray(shell, float)[:, :2])
    np.testing.assert_array_equal(table[2][0], np.asarray(box(20, 20, 30, 30).exterior.coords))
