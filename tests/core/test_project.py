"""Project-level contracts: metadata QGIS needs, one version, the licence, the constraints."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import numpy
import pytest

import cropmodels
import plugin_zip
from helpers import ROOT, SYSTEM_PYTHON


def read_metadata() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "metadata.txt", encoding="utf-8")
    return parser["general"]


def test_metadata_has_what_the_plugin_repository_requires():
    general = plugin_zip.check_metadata(ROOT)
    assert general["name"] == "Parcel Crop Classifier"
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["category"] == "Analysis"
    assert general["hasProcessingProvider"] == "yes"
    assert "IGARSS 2019" in general["about"]
    assert (ROOT / general["icon"]).is_file()


def test_one_version_everywhere():
    assert read_metadata()["version"] == cropmodels.__version__


def test_licence_is_gpl2_or_later():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "GNU GENERAL PUBLIC LICENSE" in text
    assert "Version 2, June 1991" in text
    assert "any later version" in text


def test_metadata_check_names_missing_keys(tmp_path: Path):
    meta = (ROOT / "metadata.txt").read_text(encoding="utf-8")
    kept = [line for line in meta.splitlines() if not line.startswith(("email=", "tracker="))]
    (tmp_path / "metadata.txt").write_text("\n".join(kept), encoding="utf-8")
    with pytest.raises(ValueError, match="email, tracker"):
        plugin_zip.check_metadata(tmp_path)


def test_zip_build_refuses_an_incomplete_tree(tmp_path: Path):
    shutil.copy(ROOT / "metadata.txt", tmp_path)
    with pytest.raises(ValueError, match="lacks"):
        plugin_zip.build(tmp_path / "out.zip", root=tmp_path)
    assert not (tmp_path / "out.zip").exists()


def test_constraints_pin_the_system_numpy_and_gdal_stack(tmp_path: Path):
    out = tmp_path / "constraints.txt"
    subprocess.run(
        [SYSTEM_PYTHON, str(ROOT / "scripts" / "write_constraints.py"), str(out)], check=True
    )
    pins = dict(
        line.split("==") for line in out.read_text().splitlines() if not line.startswith("#")
    )
    assert pins["numpy"] == numpy.__version__
    assert pins["rasterio"] == metadata.version("rasterio")
    assert "GDAL" in pins


def test_venv_uses_the_system_numpy_and_gdal():
    """pip never replaced them: the modules load from the Debian packages QGIS uses."""
    import osgeo
    import rasterio

    for module in (numpy, rasterio, osgeo):
        assert module.__file__.startswith("/usr/lib/python3/"), module.__file__
