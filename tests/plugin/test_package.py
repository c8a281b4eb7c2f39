"""The zip users install with "Install from ZIP", loaded by a real headless QGIS."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

import plugin_zip
from qgisprofile import (
    PLUGIN_NAME,
    enable_plugin,
    install_zip,
    run_qgis_process,
    venv_site_packages,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plugin_zip_file(tmp_path_factory) -> Path:
    return plugin_zip.build(tmp_path_factory.mktemp("dist") / f"{PLUGIN_NAME}.zip")


def test_zip_holds_the_plugin_and_nothing_else(plugin_zip_file: Path):
    with zipfile.ZipFile(plugin_zip_file) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
    assert all(n.startswith(f"{PLUGIN_NAME}/") for n in names)
    rel = {n.split("/", 1)[1] for n in names}
    required = {"metadata.txt", "__init__.py", "LICENSE", "README.md", "plugin/main.py",
                "cropmodels/__init__.py", "resources/icons/icon.png"}  # fmt: skip
    assert required <= rel
    tops = {r.split("/", 1)[0] for r in rel}
    assert tops <= {"metadata.txt", "__init__.py", "LICENSE", "README.md",
                    "plugin", "cropmodels", "resources"}  # fmt: skip
    assert not [r for r in rel if "__pycache__" in r or r.endswith((".pyc", ".pyo"))]


def test_zip_is_readable_by_others(plugin_zip_file: Path):
    assert plugin_zip_file.stat().st_mode & 0o777 == 0o644


def test_zip_is_reproducible(plugin_zip_file: Path, tmp_path: Path):
    again = plugin_zip.build(tmp_path / "again.zip")
    assert again.read_bytes() == plugin_zip_file.read_bytes()


@pytest.fixture(scope="module")
def profile(plugin_zip_file: Path, tmp_path_factory) -> Path:
    config = tmp_path_factory.mktemp("qgis-config")
    install_zip(plugin_zip_file, config)
    enable_plugin(config, venv_site_packages())
    return config


def test_qgis_process_lists_the_installed_plugin(profile: Path):
    result = run_qgis_process(["plugins"], profile, venv_site_packages())
    assert result.returncode == 0, result.stderr
    # "*" marks loaded plugins that implement a Processing provider.
    assert f"* {PLUGIN_NAME}" in result.stdout


def test_qgis_process_lists_and_runs_the_provider_algorithms(profile: Path, tmp_path: Path):
    listing = run_qgis_process(["list"], profile, venv_site_packages())
    assert listing.returncode == 0, listing.stderr
    assert "cropclassifier:diagnostics" in listing.stdout

    out = tmp_path / "diag.json"
    run = run_qgis_process(
        ["--json", "run", "cropclassifier:diagnostics", "--", f"OUTPUT={out}"],
        profile,
        venv_site_packages(),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(run.stdout)["results"]
    assert results["DEVICE"] == "cpu"
    assert json.loads(out.read_text())["qgis"].startswith("3.22")


def test_plugin_loads_and_explains_when_torch_is_missing(profile: Path):
    """QGIS's own Python has no torch until the user installs it: the plugin still loads
    and the diagnostics name what is missing."""
    run = run_qgis_process(["--json", "run", "cropclassifier:diagnostics"], profile)
    assert run.returncode == 0, run.stdout + run.stderr
    missing = json.loads(run.stdout)["results"]["MISSING"].split(",")
    assert "torch" in missing


def test_qgis_process_classifies_the_sample(profile: Path, sample_model: Path, tmp_path: Path):
    """The headless command of the README, on the bundled real sample."""
    from sample_data import PARCELS, STACK

    out = tmp_path / "out.gpkg"
    run = run_qgis_process(
        ["--json", "run", "cropclassifier:classify_parcels", "--", f"PARCELS={PARCELS}",
         f"STACK={STACK}", f"MODEL={sample_model}", "DEVICE=auto", f"OUTPUT={out}"],
        profile,
        venv_site_packages(),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(run.stdout)["results"]
    assert results["N_CLASSIFIED"] == 18
    assert results["DEVICE_USED"] == "cpu"
    assert Path(results["OUTPUT"]) == out
    assert out.is_file()
    assert out.with_suffix(".qml").is_file()


def test_qgis_process_explains_a_missing_model(profile: Path, tmp_path: Path):
    from sample_data import PARCELS, STACK

    run = run_qgis_process(
        ["run", "cropclassifier:classify_parcels", "--", f"PARCELS={PARCELS}",
         f"STACK={STACK}", "MODEL=nope", f"OUTPUT={tmp_path / 'o.gpkg'}"],
        profile,
        venv_site_packages(),
    )  # fmt: skip
    assert run.returncode != 0
    assert "'nope' is neither a bundled model" in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert not (tmp_path / "o.gpkg").exists()
