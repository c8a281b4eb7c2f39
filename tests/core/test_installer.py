"""The installer with the real pip, offline, into a temporary profile folder.

The wheels are small real ones built by hand (tests/helpers.py); the interpreter is Debian's
Python, the one QGIS embeds here, so this is the code path the plugin runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cropmodels.deps import Requirement, dependencies_dir, site_dir
from cropmodels.installer import (
    Installer,
    InstallPlan,
    PipProgress,
    explain_failure,
    remove_shadowing,
)
from helpers import SYSTEM_PYTHON, build_wheel

pytestmark = pytest.mark.skipif(
    subprocess.run([SYSTEM_PYTHON, "-m", "pip", "--version"], capture_output=True).returncode,
    reason="the system Python has no pip",
)

TINY = Requirement("tinypkg", "tinypkg==0.1", "tinypkg", "a test package")
NEEDS_NUMPY = Requirement("tinydep", "tinydep==0.1", "tinydep", "depends on numpy")
NEEDS_NEW_NUMPY = Requirement("newnumpy", "newnumpy", "newnumpy", "depends on numpy>=99")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    build_wheel(folder, "tinypkg", "0.1", code="VALUE = 42\n")
    build_wheel(folder, "tinydep", "0.1", requires=("numpy>=1.0", "tinypkg"),
                code="import numpy, tinypkg\nVALUE = tinypkg.VALUE + 1\n")  # fmt: skip
    build_wheel(folder, "newnumpy", "0.1", requires=("numpy>=99",))
    return folder


def plan_for(tmp_path: Path, wheels: Path, *requirements: Requirement) -> InstallPlan:
    profile = tmp_path / "profiles" / "default"
    return InstallPlan(python=SYSTEM_PYTHON, userbase=dependencies_dir(profile),
                       wheel_dir=wheels, requirements=requirements)  # fmt: skip


def test_offline_install_into_a_profile_folder(tmp_path: Path, wheels: Path):
    plan = plan_for(tmp_path, wheels, NEEDS_NUMPY)
    lines: list[str] = []
    steps: list[tuple[float, str]] = []
    result = Installer(plan, on_line=lines.append, on_progress=lambda f, m: steps.append((f, m)))
    outcome = result.run()
    assert outcome.ok, outcome.message
    assert not outcome.cancelled
    assert outcome.returncode == 0
    assert outcome.message.startswith("Installed and checked: tinydep")

    # pip put it where the plugin will look, and only it: QGIS's numpy was used, not copied.
    site = site_dir(plan.userbase)
    assert site == plan.site
    names = sorted(p.name for p in site.iterdir())
    assert names == ["tinydep", "tinydep-0.1.dist-info", "tinypkg", "tinypkg-0.1.dist-info"]
    assert any("Requirement already satisfied: numpy" in line for line in lines)
    assert lines[0].startswith(f"$ PYTHONUSERBASE={plan.userbase} {SYSTEM_PYTHON} -m pip install")
    assert "--user" in lines[0]
    assert any(line.startswith("constraints (QGIS's own versions): numpy==") for line in lines)

    # Progress rose to the end, and everything is in the log file.
    fractions = [f for f, _ in steps]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    log = plan.log_path.read_text()
    assert "Successfully installed tinydep-0.1 tinypkg-0.1" in log

    # A fresh QGIS-like interpreter with the folder in front of its path imports it.
    check = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import tinydep, "
         "numpy; print(tinydep.VALUE, numpy.__file__)", str(site)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    value, numpy_file = check.stdout.split()
    assert value == "43"
    assert not numpy_file.startswith(str(plan.userbase))

    # Installing again is a no-op for pip ("already satisfied") and still succeeds.
    again = Installer(plan).run()
    assert again.ok, again.message
    assert "Requirement already satisfied: tinydep" in plan.log_path.read_text()


def test_a_package_needing_another_numpy_fails_with_a_clear_message(tmp_path, wheels):
    import numpy

    plan = plan_for(tmp_path, wheels, NEEDS_NEW_NUMPY)
    outcome = Installer(plan).run()
    assert not outcome.ok
    assert not outcome.cancelled
    assert outcome.returncode == 1
    assert f"different numpy than the {numpy.__version__} QGIS runs on" in outcome.message
    assert "newnumpy 0.1 needs numpy>=99" in outcome.message
    assert "never replaces QGIS's numpy" in outcome.message
    assert str(plan.log_path) in outcome.message
    assert not (plan.site / "numpy").exists()


def test_a_missing_wheel_offline_says_what_the_folder_must_hold(tmp_path, wheels):
    plan = plan_for(tmp_path, wheels, Requirement("absent", "absent==1.0", "absent", "x"))
    outcome = Installer(plan).run()
    assert not outcome.ok
    assert "pip found no installable absent==1.0" in outcome.message
    assert f"The wheel folder {wheels} must hold a wheel of every package" in outcome.message


def test_cancel_stops_pip_promptly(tmp_path: Path, wheels: Path):
    """A stand-in interpreter that prints one line and then hangs, as pip does while it
    downloads a 2 GB wheel; cancel stops it (a real process, really signalled)."""
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho 'Collecting torch==2.13.0+cu128'\nexec sleep 120\n")
    fake.chmod(0o755)
    plan = InstallPlan(python=str(fake), userbase=tmp_path / "deps", requirements=(TINY,))
    started = threading.Event()
    installer = Installer(plan, on_line=lambda line: "Collecting" in line and started.set())
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(result=installer.run()))
    worker.start()
    assert started.wait(30)
    begin = time.monotonic()
    installer.cancel()
    worker.join(30)
    assert not worker.is_alive()
    assert time.monotonic() - begin < 10
    result = outcome["result"]
    assert result.cancelled
    assert not result.ok
    assert "cancelled" in result.message


def test_cancel_before_start(tmp_path: Path, wheels: Path):
    installer = Installer(plan_for(tmp_path, wheels, TINY))
    installer.cancel()
    result = installer.run()
    assert result.cancelled
    assert result.returncode is None


def test_an_interpreter_that_cannot_start_is_explained(tmp_path: Path):
    plan = InstallPlan(python=str(tmp_path / "no-python"), userbase=tmp_path / "deps")
    outcome = Installer(plan).run()
    assert not outcome.ok
    assert "Cannot start" in outcome.message
    assert "README" in outcome.message


def test_remove_shadowing_deletes_a_stray_numpy_by_its_record(tmp_path: Path):
    userbase = tmp_path / "deps"
    site = site_dir(userbase)
    (site / "numpy" / "core").mkdir(parents=True)
    (site / "numpy" / "__init__.py").write_text("")
    (site / "numpy" / "core" / "x.so").write_text("")
    dist = site / "numpy-2.3.0.dist-info"
    dist.mkdir()
    (dist / "RECORD").write_text(
        "numpy/__init__.py,,\nnumpy/core/x.so,,\nnumpy-2.3.0.dist-info/RECORD,,\n"
        "../../../../etc/passwd,,\n"
    )
    (site / "torch").mkdir()
    removed = remove_shadowing(site, userbase)
    assert removed == ["numpy", "numpy-2.3.0.dist-info"]
    assert sorted(p.name for p in site.iterdir()) == ["torch"]


def test_progress_follows_pip_phases():
    progress = PipProgress()
    log = [
        "Looking in indexes: https://pypi.org/simple, https://download.pytorch.org/whl/cu128",
        "Collecting torch==2.13.0+cu128",
        "  Downloading https://download.pytorch.org/whl/cu128/torch-2.13.0%2Bcu128-cp311-cp311-"
        "manylinux_2_28_x86_64.whl (2519.6 MB)",
        "Collecting safetensors>=0.4",
        "  Downloading safetensors-0.8.0-cp38-abi3-manylinux_2_17_x86_64.whl (485 kB)",
        "Requirement already satisfied: numpy>=1.24 in /usr/lib/python3/dist-packages",
        "Processing /media/usb/wheels/tqdm-4.70.1-py3-none-any.whl",
        "Installing collected packages: safetensors, torch",
        "Successfully installed safetensors-0.8.0 torch-2.13.0+cu128",
    ]
    steps = [s for s in (progress.feed(line) for line in log) if s is not None]
    fractions = [f for f, _ in steps]
    assert fractions == sorted(fractions)
    assert steps[0][1] == "resolving torch==2.13.0+cu128"
    assert steps[1][1] == (
        "downloading torch-2.13.0%2Bcu128-cp311-cp311-manylinux_2_28_x86_64.whl (2519.6 MB)"
    )
    assert steps[-3][1] == "resolving tqdm-4.70.1-py3-none-any.whl"
    assert steps[-2] == (0.85, "installing 2 packages")
    assert steps[-1] == (0.95, "installed")


@pytest.mark.parametrize(
    ("output", "words"),
    [
        (["WARNING: Retrying (Retry(total=4)) after connection broken by 'NewConnectionError("
          "'<pip._vendor.urllib3.connection.HTTPSConnection>: Failed to establish a new "
          "connection: [Errno -3] Temporary failure in name resolution')'"],
         "could not reach the package index"),
        (["/usr/bin/python3: No module named pip"], "apt install python3-pip"),
        (["ERROR: Could not install packages due to an OSError: [Errno 28] No space left on "
          "device"], "is full"),
        (["ERROR: No matching distribution found for torch==2.13.0+cu130"],
         "choose another build"),
        (["something else", "ERROR: it broke"], "pip failed (exit code 1). Its last lines:"),
    ],
)  # fmt: skip
def test_failures_are_explained(tmp_path: Path, output, words):
    plan = InstallPlan(python="/usr/bin/python3", userbase=tmp_path)
    message = explain_failure(output, 1, plan)
    assert words in message
    assert message.endswith(f"The whole log: {plan.log_path}")


def test_plan_describes_its_command(tmp_path: Path):
    plan = InstallPlan(python="/usr/bin/python3", userbase=tmp_path / "a b")
    shown = plan.display_command()
    assert shown.startswith(f"PYTHONUSERBASE='{tmp_path / 'a b'}' /usr/bin/python3 -m pip")
    assert plan.command()[0] == "/usr/bin/python3"
    assert json.dumps(plan.command())  # a plain list of strings
    assert os.fspath(plan.constraints).endswith("constraints.txt")
    assert sys.platform != "linux" or "torch==2.13.0+cpu" in plan.command()
