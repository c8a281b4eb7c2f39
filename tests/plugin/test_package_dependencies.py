"""The installed plugin in a real headless QGIS (qgis_process, the system Python that has no
torch) picks up what the installer put in the profile's dependencies folder."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

import plugin_zip
from helpers import SYSTEM_PYTHON, build_wheel
from parcel_crop_classifier.cropmodels import deps
from parcel_crop_classifier.cropmodels.installer import Installer, InstallPlan
from qgisprofile import PLUGIN_NAME, PROFILE, enable_plugin, install_zip, run_qgis_process

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        subprocess.run(
            [SYSTEM_PYTHON, "-m", "pip", "--version"], capture_output=True, check=False
        ).returncode
        != 0,
        reason="the system Python has no pip",
    ),
]


def test_qgis_loads_packages_from_the_profile_dependencies_folder(tmp_path: Path):
    config = tmp_path / "qgis-config"
    install_zip(plugin_zip.build(tmp_path / f"{PLUGIN_NAME}.zip"), config)
    enable_plugin(config)

    # Stand-in for safetensors (the real one is a compiled wheel): installed with the real pip
    # by the installer, into the folder the plugin computes for this profile.
    wheels = tmp_path / "wheels"
    build_wheel(wheels, "safetensors", "0.4.99", code="__version__ = '0.4.99'\n")
    userbase = deps.dependencies_dir(config / "profiles" / PROFILE)
    requirement = deps.Requirement("safetensors", "safetensors==0.4.99", "safetensors", "test")
    plan = InstallPlan(SYSTEM_PYTHON, userbase, wheel_dir=wheels, requirements=(requirement,))
    result = Installer(plan).run()
    assert result.ok, result.message

    run = run_qgis_process(["--json", "run", "cropclassifier:diagnostics"], config)
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(run.stdout)["results"]
    missing = results["MISSING"].split(",")
    assert "torch" in missing  # QGIS's Python has no torch
    assert "safetensors" not in missing  # but it sees what the installer put in the profile
    assert re.search(r"^safetensors +0\.4\.99$", results["REPORT"], re.M)
    assert str(plan.site) in results["REPORT"]
