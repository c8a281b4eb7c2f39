"""Dependencies inside QGIS: the check at load, the installer dialog and task, the Diagnostics
dialog, and the error algorithms raise when torch is missing (headless QGIS, real pip)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qgis.core import Qgis, QgsApplication, QgsProcessingException
from qgis.PyQt.QtWidgets import QApplication, QPushButton

import parcel_crop_classifier
from helpers import SYSTEM_PYTHON, build_wheel
from parcel_crop_classifier.cropmodels import deps
from parcel_crop_classifier.cropmodels.deps import Requirement
from parcel_crop_classifier.plugin import deps_check
from parcel_crop_classifier.plugin.diagnostics_dialog import DiagnosticsDialog
from parcel_crop_classifier.plugin.installer_dialog import INSTALL_TEXT, InstallDialog

SMI_CUDA_12_8 = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 570.86.15              Driver Version: 570.86.15      CUDA Version: 12.8     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|=========================================+========================+======================|
|   0  NVIDIA RTX 4000 Ada Generation Off |   00000000:01:00.0  On |                  Off |
| 30%   38C    P8              9W /  130W |     289MiB /  20475MiB |      1%      Default |
+-----------------------------------------+------------------------+----------------------+
"""

TINY = Requirement("tinypkg", "tinypkg==0.1", "tinypkg", "a test package")
HAS_PIP = not subprocess.run([SYSTEM_PYTHON, "-m", "pip", "--version"],
                             capture_output=True, check=False).returncode  # fmt: skip


def wait_for(condition, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("condition not met in time")
        QApplication.processEvents()
        time.sleep(0.02)


# -- require() for Processing algorithms -------------------------------------------------------


def test_require_passes_when_everything_is_importable():
    deps_check.require(("torch", "safetensors"))
    deps_check.require(("scikit-learn", "zarr"))  # package names work too


def test_require_says_what_is_missing_and_how_to_install_it():
    with pytest.raises(QgsProcessingException) as info:
        deps_check.require(("torch", "no_such_module_for_this_test"))
    message = str(info.value)
    assert "cannot import: no_such_module_for_this_test" in message
    assert "torch" not in message.split("cannot import:")[1].split(".")[0]
    assert "Diagnostics… > Install dependencies…" in message
    assert str(deps_check.dependencies_dir()) in message


def test_missing_message_for_a_package_that_comes_with_qgis():
    rasterio = next(r for r in deps.SYSTEM_REQUIREMENTS if r.name == "rasterio")
    message = deps_check.missing_message([rasterio])
    assert "apt install python3-rasterio" in message
    assert "Install dependencies" not in message  # pip would bring a second GDAL


def test_activate_puts_the_profile_folder_first():
    site = deps_check.site_dir()
    assert str(site).startswith(QgsApplication.qgisSettingsDirPath().rstrip("/"))
    site.mkdir(parents=True, exist_ok=True)
    try:
        assert deps_check.activate()
        assert sys.path[0] == str(site)
    finally:
        while str(site) in sys.path:
            sys.path.remove(str(site))
        site.rmdir()


# -- the installer dialog ---------------------------------------------------------------------


def test_dialog_recommends_the_cuda_build_the_driver_supports(tmp_path: Path):
    dialog = InstallDialog(nvidia_smi_text=SMI_CUDA_12_8, python=SYSTEM_PYTHON,
                           userbase=tmp_path / "deps", platform="linux")  # fmt: skip
    assert dialog.build_combo.currentData() == "cu128"
    assert dialog.build_combo.currentText() == "CUDA 12.8 (recommended)"
    assert "NVIDIA RTX 4000 Ada Generation" in dialog.gpu_label.text()
    assert "driver 570.86.15 supports CUDA 12.8" in dialog.build_reason.text()
    command = dialog.command.toPlainText()
    assert command.startswith(f"PYTHONUSERBASE={tmp_path / 'deps'} {SYSTEM_PYTHON} -m pip")
    assert "torch==2.13.0+cu128" in command
    assert "--extra-index-url https://download.pytorch.org/whl/cu128" in command
    assert dialog.install_button.isEnabled()
    assert not dialog.cancel_button.isEnabled()

    # The choice is shown and changeable.
    dialog.build_combo.setCurrentIndex(dialog.build_combo.findData("cpu"))
    assert "torch==2.13.0+cpu" in dialog.command.toPlainText()
    assert dialog.build_reason.text().startswith("Chosen by hand; recommended: CUDA 12.8")
    assert dialog.plan().build.key == "cpu"


def test_dialog_without_a_gpu_or_on_macos_defaults_to_the_cpu(tmp_path: Path):
    failed = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    dialog = InstallDialog(nvidia_smi_text=failed, python=SYSTEM_PYTHON,
                           userbase=tmp_path, platform="linux")  # fmt: skip
    assert dialog.build_combo.currentData() == "cpu"
    assert dialog.gpu_label.text() == "no NVIDIA GPU found"
    mac = InstallDialog(nvidia_smi_text="", python=SYSTEM_PYTHON, userbase=tmp_path,
                        platform="darwin")  # fmt: skip
    assert [mac.build_combo.itemData(i) for i in range(mac.build_combo.count())] == ["cpu"]


def test_a_wheel_folder_makes_it_offline_and_picks_the_build_it_holds(tmp_path: Path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    dialog = InstallDialog(nvidia_smi_text=SMI_CUDA_12_8, python=SYSTEM_PYTHON,
                           userbase=tmp_path / "deps", platform="linux")  # fmt: skip
    dialog.wheel_dir.setFilePath(str(wheels))
    assert dialog.build_combo.currentData() == "cpu"  # the folder has no CUDA 12.8 wheel
    assert "torch-2.13.0+cpu" in dialog.wheels_label.text()
    command = dialog.command.toPlainText()
    assert f"--no-index --find-links {wheels}" in command
    assert "extra-index-url" not in command


@pytest.mark.skipif(not HAS_PIP, reason="the system Python has no pip")
def test_install_a_small_wheel_through_the_dialog_and_task(tmp_path: Path):
    """The code path of the Install button, with the task run synchronously."""
    wheels = tmp_path / "wheels"
    build_wheel(wheels, "tinypkg", "0.1")
    userbase = deps.dependencies_dir(tmp_path / "profile")
    dialog = InstallDialog(nvidia_smi_text="", python=SYSTEM_PYTHON, userbase=userbase,
                           requirements=(TINY,))  # fmt: skip
    dialog.wheel_dir.setFilePath(str(wheels))
    outcomes: list[bool] = []
    dialog.installed.connect(outcomes.append)
    task = dialog.start(run_in_background=False)
    assert task is not None
    assert outcomes == [True]
    assert task.result.ok, task.result.message
    assert "Successfully installed tinypkg-0.1" in dialog.log.toPlainText()
    assert dialog.status.text().startswith("Installed and checked: tinypkg")
    if "torch" in sys.modules:  # other tests imported it into this process
        assert "restart QGIS to use the new installation" in dialog.status.text()
    assert dialog.progress.value() == 100
    assert (deps.site_dir(userbase) / "tinypkg" / "__init__.py").is_file()
    assert dialog.install_button.isEnabled()  # ready for another run


@pytest.mark.skipif(os.name == "nt", reason="uses a shell script as a stand-in interpreter")
def test_cancel_in_the_dialog_stops_the_background_task(tmp_path: Path):
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho 'Collecting torch==2.13.0+cpu'\nexec sleep 120\n")
    fake.chmod(0o755)
    dialog = InstallDialog(nvidia_smi_text="", python=str(fake), userbase=tmp_path / "deps",
                           requirements=(TINY,))  # fmt: skip
    outcomes: list[bool] = []
    dialog.installed.connect(outcomes.append)
    dialog.start()  # in QGIS's task manager, as the Install button does
    wait_for(lambda: "Collecting torch" in dialog.log.toPlainText())
    assert dialog.cancel_button.isEnabled()
    assert not dialog.install_button.isEnabled()
    dialog.cancel()
    wait_for(lambda: outcomes, timeout=30)
    assert outcomes == [False]
    assert dialog.last_result.cancelled
    assert "cancelled" in dialog.status.text()
    assert dialog.install_button.isEnabled()


# -- the diagnostics dialog ---------------------------------------------------------------------


def test_diagnostics_dialog_reports_versions_device_and_copies(qgis_iface):
    opened: list[bool] = []
    dialog = DiagnosticsDialog(open_installer=lambda: opened.append(True), run_in_background=False)
    text = dialog.report_text()
    labels = {line.split()[0] for line in text.splitlines() if line.strip()}
    assert {"QGIS", "GDAL", "PROJ", "numpy", "torch", "CUDA", "Device", "Installed"} <= labels
    assert "a run with device 'auto' uses cpu: no usable CUDA GPU" in text
    dialog.copy()
    assert QApplication.clipboard().text() == text
    assert dialog.install_button.text() == "Change the PyTorch build…"  # nothing missing here
    dialog.install_button.click()
    assert opened == [True]


def test_diagnostics_dialog_opens_before_torch_is_probed(qgis_iface):
    dialog = DiagnosticsDialog(run_in_background=True)
    assert "Probing PyTorch" in dialog.report_text()  # the GUI thread did not wait
    wait_for(lambda: dialog.report is not None)
    assert "Device" in dialog.report_text()
    assert dialog.refresh_button.isEnabled()


# -- the plugin at load ------------------------------------------------------------------------


def notices(bar) -> list[QPushButton]:
    return [b for item in bar.items() for b in item.findChildren(QPushButton)
            if b.objectName() == "installDependenciesButton"]  # fmt: skip


def test_no_notice_when_everything_is_there(qgis_iface):
    plugin = parcel_crop_classifier.classFactory(qgis_iface)
    plugin.initGui()
    try:
        assert notices(qgis_iface.messageBar()) == []
    finally:
        plugin.unload()


def test_missing_packages_are_offered_in_the_message_bar(qgis_iface, monkeypatch):
    absent = Requirement("nosuchpkg", "nosuchpkg", "nosuchpkg_for_this_test", "testing")
    monkeypatch.setattr(deps_check, "ALL_REQUIREMENTS", (*deps.ALL_REQUIREMENTS, absent))
    bar = qgis_iface.messageBar()
    plugin = parcel_crop_classifier.classFactory(qgis_iface)
    plugin.initGui()
    try:
        (button,) = notices(bar)
        assert button.text() == INSTALL_TEXT
        assert "nosuchpkg" in bar.items()[-1].text()
        # The other entries stay usable: Diagnostics opens and names what is missing.
        plugin.show_diagnostics()
        report = plugin.dependencies.diagnostics.report_text()
        assert "Missing" in report
        assert "nosuchpkg (testing)" in report
        button.click()
        assert plugin.dependencies.installer is not None
        assert plugin.dependencies.installer.isVisible()
    finally:
        plugin.unload()
    assert notices(bar) == []


def test_a_missing_system_package_is_explained_without_an_install_button(qgis_iface, monkeypatch):
    absent = Requirement("rasterio_x", "rasterio_x", "rasterio_x_for_this_test", "testing",
                         deps.SYSTEM, "comes with QGIS: apt install python3-x")  # fmt: skip
    monkeypatch.setattr(deps_check, "ALL_REQUIREMENTS", (*deps.ALL_REQUIREMENTS, absent))
    bar = qgis_iface.messageBar()
    bar.clear_messages()
    plugin = parcel_crop_classifier.classFactory(qgis_iface)
    plugin.initGui()
    try:
        assert notices(bar) == []
        (warning,) = bar.get_messages(Qgis.Warning)
        assert "rasterio_x (testing)" in warning
        assert "apt install python3-x" in warning
    finally:
        plugin.unload()
