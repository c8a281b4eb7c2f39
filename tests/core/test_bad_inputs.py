"""Issue 13, bad parcel layers and stacks, through the command line (``python -m cropmodels``).

Every case ends in exit code 2 with one ``error:`` line saying what is wrong and what to do
(no traceback), or in a per-parcel status with the rest of the run fine. Inputs are checksummed
before and after; a failed run leaves nothing in the output folder. The corpus is described in
tests/data/bad/README.md and built by tests/bad_inputs.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import bad_inputs as bad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from cropmodels.__main__ import main
from cropmodels.extract import STATUS_TEXT
from cropmodels.store import Store
from helpers import ROOT
from sample_data import PARCELS, STACK

MODEL = "gru"  # the fastest bundled model
STATUSES = set(STATUS_TEXT) | {"ok"}


@pytest.fixture(scope="module")
def few(tmp_path_factory) -> Path:
    """Eight real dates of the 2018 season, with their cloud masks."""
    return bad.few_dates(tmp_path_factory.mktemp("few") / "stack")


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def classify(parcels: Path, stack: Path, out: Path, capsys, *extra: str) -> tuple[int, str, str]:
    args = ["classify", "--parcels", parcels, "--stack", stack, "--model", MODEL,
            "--out", out, "--device", "cpu", "--quiet", *extra]  # fmt: skip
    return cli(args, capsys)


def assert_refused(code: int, err: str, *phrases: str) -> str:
    """Exit code 2, exactly one ``error:`` line naming the problem, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    return errors[0]


def refused_cleanly(inputs: list[Path], run, out_dir: Path, *phrases: str) -> str:
    """Run a failing command: inputs unchanged, nothing left in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    before = bad.checksums(inputs)
    code, _, err = run()
    line = assert_refused(code, err, *phrases)
    assert bad.checksums(inputs) == before
    assert bad.leftovers(out_dir) == []
    return line


def statuses(path: Path) -> list[str]:
    return gpd.read_file(path)["status"].tolist()


def check_rows(path: Path, expected: list[str] | None = None) -> gpd.GeoDataFrame:
    """Every row has a documented status; classified rows have probabilities summing to 1,
    the others no class."""
    out = gpd.read_file(path)
    p = out[[c for c in out.columns if c.startswith("p_")]].to_numpy(dtype=np.float64)
    for row, probs in zip(out.itertuples(), p, strict=True):
        assert row.status in STATUSES
        if row.status in ("ok", "partly_outside"):
            assert probs.sum() == pytest.approx(1.0, abs=1e-4)
            assert row.crop_class
        else:
            assert np.isnan(probs).all()
            assert pd.isna(row.crop_class)
    if expected is not None:
        assert out["status"].tolist() == expected
    return out


# -- parcel layers ---------------------------------------------------------------------------


def test_parcels_in_another_crs_are_reprojected(tmp_path, few, capsys):
    parcels = bad.parcels_other_crs(tmp_path / "in")
    before = bad.checksums([parcels, few])
    code, _, err = classify(parcels, few, tmp_path / "out.gpkg", capsys)
    assert code == 0, err
    assert bad.checksums([parcels, few]) == before
    result = check_rows(tmp_path / "out.gpkg", ["ok"] * 18)
    assert result.crs.to_epsg() == 3857  # the output keeps the layer's CRS


def test_parcels_without_crs_are_refused(tmp_path, few, capsys):
    parcels = bad.parcels_without_crs(tmp_path / "in")
    refused_cleanly(
        [parcels, few], lambda: classify(parcels, few, tmp_path / "o" / "x.gpkg", capsys),
        tmp_path / "o", "no coordinate reference system", "set its CRS",
    )  # fmt: skip


def test_parcels_all_outside_the_stack_are_refused(tmp_path, few, capsys):
    parcels = bad.parcels_shifted(tmp_path / "in", 100_000)
    refused_cleanly(
        [parcels, few], lambda: classify(parcels, few, tmp_path / "o" / "x.gpkg", capsys),
        tmp_path / "o", "None of the 18 parcels overlaps the image stack", "covering the parcels",
    )  # fmt: skip
    store = tmp_path / "o" / "s.store"
    refused_cleanly(
        [parcels, few],
        lambda: cli(
            ["extract", "--parcels", parcels, "--stack", few, "--out", store, "--quiet"], capsys
        ),
        tmp_path / "o",
        "overlaps the image stack",
    )


def test_parcels_partly_outside_get_their_status(tmp_path, few, capsys):
    parcels = bad.parcels_shifted(tmp_path / "in", 100_000, first=3)
    code, out, err = classify(parcels, few, tmp_path / "out.gpkg", capsys)
    assert code == 0, err
    assert "15 classified" in out
    assert "3 outside_stack" in out
    check_rows(tmp_path / "out.gpkg", ["outside_stack"] * 3 + ["ok"] * 15)


def test_bad_geometries_get_a_status_each_and_the_rest_is_classified(tmp_path, few, capsys):
    before = bad.checksums([bad.BAD_GEOMETRIES])
    code, _, err = classify(bad.BAD_GEOMETRIES, few, tmp_path / "out.gpkg", capsys)
    assert code == 0, err
    assert bad.checksums([bad.BAD_GEOMETRIES]) == before
    # the 100 km square covers the whole stack: classified from it within the default budget
    expected = {**bad.BAD_GEOMETRY_STATUS, "huge": "partly_outside"}
    result = check_rows(tmp_path / "out.gpkg", list(expected.values()))
    assert result["case"].tolist() == list(expected)


@pytest.mark.slow
def test_a_parcel_larger_than_the_memory_budget_is_too_large(tmp_path, capsys):
    # 118 dates x 64 x 64 px as float32 is 19 MB; a budget of 16 MB (17 with the row buffer)
    # holds every real parcel but not the 100 km square over the whole stack
    code, out, err = classify(bad.BAD_GEOMETRIES, STACK, tmp_path / "out.gpkg", capsys,
                              "--memory-mb", "16")  # fmt: skip
    assert code == 0, err
    assert "1 too_large" in out
    check_rows(tmp_path / "out.gpkg", list(bad.BAD_GEOMETRY_STATUS.values()))


@pytest.mark.parametrize(("layer", "kind"), [(bad.POINTS, "point"), (bad.LINES, "linestring")])
def test_point_and_line_layers_are_refused(tmp_path, few, capsys, layer, kind):
    line = refused_cleanly(
        [layer, few], lambda: classify(layer, few, tmp_path / "o" / "x.gpkg", capsys),
        tmp_path / "o", f"has {kind}", "give a polygon layer",
    )  # fmt: skip
    assert line.count("\n") == 0


def test_non_ascii_and_spaces_in_every_path(tmp_path, capsys):
    folder = tmp_path / "données d'essai é"
    parcels = folder / "parcelles ü ç.gpkg"
    parcels.parent.mkdir(parents=True)
    shutil.copy(PARCELS, parcels)
    stack = bad.few_dates(folder / "pile d'images ñ", bad.FEW_DATES[:4])
    out = folder / "sortie ø" / "résultat 1.gpkg"
    out.parent.mkdir()
    code, _, err = classify(parcels, stack, out, capsys)
    assert code == 0, err
    check_rows(out, ["ok"] * 18)
    store = folder / "sortie ø" / "magasin ß.store"
    code, _, err = cli(["extract", "--parcels", parcels, "--stack", stack, "--out", store,
                              "--label-field", "crop_code", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    assert len(Store(store)) == 18


def test_label_field_with_nulls_leaves_those_parcels_unlabelled(tmp_path, few, capsys):
    parcels = bad.parcels_with_labels(tmp_path / "in", [1200, None, 9120])
    store = tmp_path / "s.store"
    code, out, err = cli(["extract", "--parcels", parcels, "--stack", few, "--out", store,
                          "--label-field", "crop_code", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    assert "12 labelled" in out
    assert (Store(store).labels == -1).sum() == 6


def test_unknown_label_codes_are_refused_by_training_with_what_to_do(tmp_path, few, capsys):
    parcels = bad.parcels_with_labels(tmp_path / "in", [1200, 9120, 4444])
    store = tmp_path / "s.store"
    code, _, err = cli(["extract", "--parcels", parcels, "--stack", few, "--out", store,
                        "--label-field", "crop_code", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    class_map = tmp_path / "classes.csv"
    class_map.write_text("source_code,code,name\n1200,1200,Maize\n9120,9120,Grass\n", "utf-8")
    before = bad.checksums([store, class_map])
    out = tmp_path / "o"
    out.mkdir()
    code, _, err = cli(["train", "--store", store, "--model", MODEL, "--out", out / "m",
                        "--class-map", class_map, "--no-cv", "--epochs", "1", "--device", "cpu",
                        "--quiet"], capsys)  # fmt: skip
    assert_refused(code, err, "4444 (6 parcels)", "--unknown-codes exclude|other")
    assert bad.checksums([store, class_map]) == before
    assert bad.leftovers(out) == []


# -- stacks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "phrases"),
    [
        (bad.stack_unparseable_date, ("Cannot tell the date of S2_latest.tif", "file name")),
        (bad.stack_wrong_band_count, ("has 7 bands without band names", "exactly ten")),
        (bad.stack_missing_band, ("lacks B8A", "ten bands")),
        (bad.stack_missing_band_file, ("The images of 2018-06-28", "lack B8A",
                                        "add the missing files")),
        (bad.stack_truncated, ("Cannot read the image of 2018-07-23",
                               "S2_20180723_truncated.tif", "Download or copy it again")),
        (bad.stack_header_truncated, ("Cannot open S2_20180723.tif as a raster",
                                      "Download or copy it again")),
        (bad.stack_truncated_mask, ("Cannot open S2_20180419_SCL.tif as a raster",
                                    "Download or copy it again")),
        (bad.stack_out_of_season, ("do not overlap the season", "use a stack covering")),
    ],
    ids=["unparseable_date", "wrong_band_count", "missing_band", "missing_band_file",
         "truncated_tiff", "truncated_header", "truncated_mask", "out_of_season"],
)  # fmt: skip
def test_bad_stacks_are_refused(tmp_path, capsys, build, phrases):
    stack = build(tmp_path / "stack")
    out = tmp_path / "o"
    refused_cleanly([stack, PARCELS], lambda: classify(PARCELS, stack, out / "x.gpkg", capsys),
                    out, *phrases)  # fmt: skip
    if build is bad.stack_out_of_season:
        return  # extraction knows no model, hence no season
    refused_cleanly(
        [stack, PARCELS],
        lambda: cli(
            [
                "extract",
                "--parcels",
                PARCELS,
                "--stack",
                stack,
                "--out",
                out / "s.store",
                "--quiet",
            ],
            capsys,
        ),
        out,
        *phrases[:1],
    )


def test_missing_dates_are_resampled_and_clear_dates_reported(tmp_path, capsys):
    stack = bad.stack_missing_dates(tmp_path / "stack")
    code, out, err = classify(PARCELS, stack, tmp_path / "out.gpkg", capsys)
    assert code == 0, err
    assert "the stack's 3 dates" in out
    assert "differ from the model's 24-date grid" in out
    result = check_rows(tmp_path / "out.gpkg", ["ok"] * 18)
    assert result["n_clear_dates"].between(1, 3).all()


def test_dates_on_other_grids_and_crs_are_warped(tmp_path, capsys, caplog):
    stack = bad.stack_other_grid_and_crs(tmp_path / "stack")
    before = bad.checksums([stack])
    caplog.set_level("INFO")
    code, _, err = classify(PARCELS, stack, tmp_path / "out.gpkg", capsys)
    assert code == 0, err
    assert bad.checksums([stack]) == before
    assert "is on another grid" in caplog.text
    assert "is on another CRS" in caplog.text
    check_rows(tmp_path / "out.gpkg", ["ok"] * 18)


def test_cloudy_dates_lower_the_clear_date_count(tmp_path, few, capsys):
    stack = bad.stack_cloudy(tmp_path / "stack")
    code, _, err = classify(PARCELS, stack, tmp_path / "cloudy.gpkg", capsys)
    assert code == 0, err
    code, _, err = classify(PARCELS, few, tmp_path / "clear.gpkg", capsys)
    assert code == 0, err
    cloudy = check_rows(tmp_path / "cloudy.gpkg", ["ok"] * 18)
    clear = gpd.read_file(tmp_path / "clear.gpkg")
    assert (cloudy["n_clear_dates"] <= 4).all()  # every other date of 8 is all cloud
    assert (cloudy["n_clear_dates"] <= clear["n_clear_dates"]).all()


def test_all_dates_cloudy_gives_no_class_to_anyone(tmp_path, capsys):
    stack = bad.stack_cloudy(tmp_path / "stack", all_dates=True)
    code, out, err = classify(PARCELS, stack, tmp_path / "out.gpkg", capsys)
    assert code == 0, err
    assert "0 classified" in out
    check_rows(tmp_path / "out.gpkg", ["no_clear_observation"] * 18)


def test_parcels_over_nodata_get_no_class(tmp_path, capsys):
    stack = bad.stack_nodata_over(tmp_path / "stack", slice(0, 32), slice(0, 64))
    code, _, err = classify(PARCELS, stack, tmp_path / "out.gpkg", capsys)
    assert code == 0, err
    result = check_rows(tmp_path / "out.gpkg")
    top = result.geometry.bounds["miny"] >= bad.STACK_ORIGIN[1] - 320  # wholly in rows 0-31
    assert top.any()
    assert (result.loc[top, "status"] == "no_clear_observation").all()
    assert (result.loc[top, "n_clear_dates"] == 0).all()
    assert (result.loc[~top, "status"] == "ok").any()


@pytest.mark.slow
def test_a_refusal_in_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "cropmodels", "classify", "--parcels", str(bad.POINTS),
         "--stack", str(STACK), "--model", MODEL, "--out", str(out / "x.gpkg"), "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: The parcel layer has point geometries; the parcels must be polygons: give a "
        "polygon layer (the parcels' outlines)."
    ]
    assert bad.leftovers(out) == []
