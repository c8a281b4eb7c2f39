"""Property-based tests (hypothesis) of issue 13: random parcel geometries and random stack
descriptions never crash the pipeline nor give a silently wrong answer.

- geometries (degenerate, tiny, huge, multi-part, self-intersecting, partly or wholly outside,
  empty, null): every parcel gets exactly one result with a documented status that agrees with
  where the parcel lies; classified parcels have probabilities summing to 1, independent of
  the other parcels of the layer; the others get no class; a layer that cannot be classified
  at all is a ParcelError, and only then;
- stack descriptions (dates in any order, possibly twice; bands in any order, named in the
  band descriptions; per-date cloud fractions from 0 to 1; per-date files or one multi-band
  raster): either a StackError for what is really wrong (a date twice) or exactly the
  extraction of the same data laid out canonically.

Example counts are small (the suite must stay fast); each example runs in well under a second.
"""

from __future__ import annotations

import datetime as dt
import functools
import tempfile
from pathlib import Path

import bad_inputs as bad
import geopandas as gpd
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.validation import make_valid

from cropmodels.extract import (
    INVALID,
    OUTSIDE,
    PARTLY_OUTSIDE,
    STATUS_TEXT,
    ExtractConfig,
    ParcelError,
    check_parcels,
    extract,
)
from cropmodels.predict import CLASSIFIED, STATUSES, Classifier, PredictConfig
from cropmodels.stack import StackError, open_stack
from sample_data import BANDS, read_date, write_raster

X0, Y0 = bad.STACK_ORIGIN
SIZE = 640.0  # the sample stack: 64 x 64 px of 10 m
CRS = "EPSG:32631"
SETTINGS = settings(
    deadline=None,
    max_examples=12,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run: a failure is reproducible
    database=None,
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return open_stack(bad.few_dates(tmp_path_factory.mktemp("few") / "stack"))


@pytest.fixture(scope="module")
def classifier():
    return Classifier.load("gru", device="cpu")


# -- geometries ------------------------------------------------------------------------------

# metres from the stack's top-left corner: mostly over the stack, sometimes around or beyond it
coords = st.one_of(
    st.floats(min_value=0.0, max_value=SIZE - 50.0),
    st.floats(min_value=-400.0, max_value=SIZE + 400.0),
)
sizes = st.sampled_from([0.5, 3.0, 9.0, 15.0, 40.0, 40.0, 120.0, 400.0, 5000.0])


@st.composite
def boxes(draw) -> Polygon:
    x, y = draw(coords), draw(coords)
    w, h = draw(sizes), draw(sizes)
    shape = box(X0 + x, Y0 - y - h, X0 + x + w, Y0 - y)
    angle = draw(st.sampled_from([0.0, 0.0, 17.0, 45.0]))
    return affinity.rotate(shape, angle) if angle else shape


@st.composite
def polygons(draw):
    """Any polygon-ish thing a parcel layer may hold, or None (a null geometry)."""
    kind = draw(st.sampled_from(["box", "box", "random", "bowtie", "multi", "line-thin",
                                 "empty", "null"]))  # fmt: skip
    if kind == "box":
        return draw(boxes())
    if kind == "random":  # 3 to 7 random vertices: often self-intersecting
        points = draw(st.lists(st.tuples(coords, coords), min_size=3, max_size=7))
        return Polygon([(X0 + x, Y0 - y) for x, y in points])
    if kind == "bowtie":
        x, y, s = draw(coords), draw(coords), draw(sizes)
        return Polygon([(X0 + x, Y0 - y), (X0 + x + s, Y0 - y - s), (X0 + x + s, Y0 - y),
                        (X0 + x, Y0 - y - s)])  # fmt: skip
    if kind == "multi":
        return MultiPolygon([draw(boxes()), draw(boxes())])
    if kind == "line-thin":  # zero area: collinear vertices
        x, y, s = draw(coords), draw(coords), draw(sizes)
        return Polygon([(X0 + x, Y0 - y), (X0 + x + s, Y0 - y), (X0 + x + 2 * s, Y0 - y)])
    if kind == "empty":
        return Polygon()
    return None


def _where(geom) -> str:
    """Where a (repaired) geometry's bounding box lies against the stack: 'none' (no usable
    polygon), 'outside', 'inside' or 'across' (the edge)."""
    if geom is None or geom.is_empty:
        return "none"
    if not geom.is_valid:
        geom = make_valid(geom)
    polys = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type in ("Polygon",
             "MultiPolygon") and not g.is_empty]  # fmt: skip
    if not polys:
        return "none"
    minx, miny, maxx, maxy = MultiPolygon(
        [p for g in polys for p in getattr(g, "geoms", [g])]
    ).bounds
    left, bottom, right, top = X0, Y0 - SIZE, X0 + SIZE, Y0
    eps = 1e-3
    if minx >= right - eps or maxx <= left + eps or miny >= top - eps or maxy <= bottom + eps:
        return "outside"
    if minx >= left - eps and maxx <= right + eps and miny >= bottom - eps and maxy <= top + eps:
        return "inside"
    return "across"


@SETTINGS
@given(st.lists(polygons(), min_size=1, max_size=6))
def test_random_geometries_each_get_one_sound_result(stack, classifier, geoms):
    gdf = gpd.GeoDataFrame({"k": range(len(geoms))}, geometry=gpd.GeoSeries(geoms), crs=CRS)
    where = [_where(g) for g in geoms]
    for w in where:
        event(f"a parcel {w}")
    refused: ParcelError | None = None
    try:
        check_parcels(gdf, stack)
    except ParcelError as exc:
        refused = exc
    if refused is not None:  # only when no geometry is a polygon over the stack
        assert all(w in ("none", "outside") for w in where), (where, refused)
        assert "\n" not in str(refused)
        return
    config = PredictConfig(device="cpu")
    results = list(classifier.classify(gdf, stack, config))
    assert sorted(p.index for p in results) == list(range(len(geoms)))
    for p in results:
        w = where[p.index]
        assert p.status in STATUSES
        assert p.status in STATUS_TEXT or p.status == "ok"
        assert 0 <= p.n_clear_dates <= len(stack)
        if p.status in CLASSIFIED:
            assert p.probabilities is not None
            assert np.isfinite(p.probabilities).all()
            assert (p.probabilities >= 0).all()
            assert p.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        else:
            assert p.probabilities is None
        # the status agrees with where the parcel is (up to the pixel grid)
        if w == "none":
            assert p.status == INVALID
        elif w == "outside":
            assert p.status == OUTSIDE
        elif w == "inside":
            assert p.status not in (OUTSIDE, PARTLY_OUTSIDE, INVALID)
        else:
            assert p.status not in ("ok", INVALID)
    # a parcel's class does not depend on the other parcels of the layer
    for p in results:
        if p.classified and len(geoms) > 1:
            alone = list(classifier.classify(gdf.iloc[[p.index]], stack, config))
            assert len(alone) == 1
            assert alone[0].status == p.status
            np.testing.assert_allclose(alone[0].probabilities, p.probabilities, atol=1e-4)


# -- stack descriptions ----------------------------------------------------------------------


@functools.cache
def _date(date: str) -> tuple[np.ndarray, dict]:
    values, _, profile = read_date(date)
    return values, profile


@st.composite
def stack_descriptions(draw) -> dict:
    dates = draw(st.lists(st.sampled_from(bad.FEW_DATES), min_size=1, max_size=4))
    return {
        "dates": dates,  # file order; a date may come twice
        "band_orders": [draw(st.permutations(range(10))) for _ in dates],
        "cloud": [draw(st.sampled_from([0.0, 0.0, 0.3, 0.7, 1.0])) for _ in dates],
        "layout": draw(st.sampled_from(["folder", "multiband"])),
        "seed": draw(st.integers(0, 2**16)),
    }


def _scl(fraction: float, rng: np.random.Generator) -> np.ndarray:
    """An SCL layer: class 9 (cloud) on about ``fraction`` of the pixels, 4 (vegetation) else."""
    return np.where(rng.random((64, 64)) < fraction, 9, 4).astype(np.uint8)


def _write(description: dict, folder: Path) -> tuple[Path, Path]:
    """The described stack, and the same data laid out canonically (the reference: one 10-band
    file per date, bands in order, SCL sidecars in ``scl``)."""
    rng = np.random.default_rng(description["seed"])
    reference, stack = folder / "reference", folder / "stack"
    (reference / "scl").mkdir(parents=True)
    (stack / "scl").mkdir(parents=True)
    series_values, series_names = [], []
    for date, order, cloud in zip(description["dates"], description["band_orders"],
                                  description["cloud"], strict=True):  # fmt: skip
        values, profile = _date(date)
        scl = _scl(cloud, rng)
        mask_profile = {**profile, "nodata": None}
        write_raster(reference / f"S2_{date}.tif", values, profile, descriptions=list(BANDS))
        write_raster(reference / "scl" / f"S2_{date}_SCL.tif", scl[None], mask_profile)
        names = [BANDS[i] for i in order]
        if description["layout"] == "folder":
            name = f"S2_{date}.tif" if not (stack / f"S2_{date}.tif").exists() else f"T_{date}.tif"
            write_raster(stack / name, values[list(order)], profile, descriptions=names)
            write_raster(stack / "scl" / f"S2_{date}_SCL.tif", scl[None], mask_profile)
        else:
            series_values += [values[list(order)], scl[None].astype(values.dtype)]
            series_names += [f"{date}_{n}" for n in names] + [f"{date}_SCL"]
    if description["layout"] == "multiband":
        path = stack / "series.tif"
        _, profile = _date(description["dates"][0])
        write_raster(path, np.concatenate(series_values), profile, descriptions=series_names)
        return path, reference
    return stack, reference


def _by_index(results) -> dict:
    return {r.index: r for r in results}


@SETTINGS
@given(stack_descriptions())
def test_random_stack_descriptions_read_the_same_data_or_refuse(description):
    twice = len(set(description["dates"])) < len(description["dates"])
    event(f"{description['layout']}, {'a date twice' if twice else 'dates once'}")
    with tempfile.TemporaryDirectory() as folder:
        source, reference = _write(description, Path(folder))
        if twice:  # the same date twice: which image is meant is ambiguous
            with pytest.raises(StackError, match=r"twice|Two images|both hold"):
                open_stack(source)
            return
        stack = open_stack(source)
        expected_dates = sorted(dt.date.fromisoformat(f"{d[:4]}-{d[4:6]}-{d[6:]}")
                                for d in description["dates"])  # fmt: skip
        assert [e.date for e in stack.dates] == expected_dates
        config = ExtractConfig(workers=1)
        got = _by_index(extract(bad.PARCELS_PATH, stack, config))
        want = _by_index(extract(bad.PARCELS_PATH, open_stack(reference), config))
    assert sorted(got) == sorted(want) == list(range(18))
    clouds = dict(zip(description["dates"], description["cloud"], strict=True))
    all_cloud = all(clouds[d] == 1.0 for d in clouds)
    for i, w in want.items():
        g = got[i]
        assert g.status == w.status
        assert g.status in STATUSES
        if all_cloud:
            assert g.status == "no_clear_observation"
        assert g.n_clear_dates == w.n_clear_dates
        np.testing.assert_allclose(g.cloud_fraction, w.cloud_fraction)
        if w.usable:
            np.testing.assert_allclose(g.features, w.features, rtol=1e-6)
            np.testing.assert_allclose(g.patches, w.patches, rtol=1e-6)
        else:
            assert g.patches is None
