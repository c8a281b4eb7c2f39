"""The core is QGIS-free and light to import: the plugin can load and explain what is missing
before torch is even installed."""

from __future__ import annotations

import json
import pkgutil

import pytest

import cropmodels
from helpers import blocking, run_python


def all_core_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(cropmodels.__path__, prefix="cropmodels."))


def test_every_core_module_imports_without_qgis_or_qt():
    modules = all_core_modules()
    assert "cropmodels.doctor" in modules
    code = blocking("qgis", "PyQt5", "PyQt6", "processing") + (
        "import importlib\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print('ok')\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_package_import_does_not_import_torch():
    result = run_python(
        "import sys, cropmodels, cropmodels.doctor, cropmodels.progress\n"
        "print(sorted(m for m in ('torch', 'qgis', 'rasterio') if m in sys.modules))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_doctor_cli_reports_versions_as_json():
    result = run_python(
        "from cropmodels.__main__ import main; raise SystemExit(main(['doctor', '--json']))"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    names = {p["name"]: p for p in report["packages"]}
    assert names["torch"]["version"].startswith("2.13")
    assert names["numpy"]["version"]
    assert report["gdal"].startswith("3.")
    assert report["missing"] == []
    # No GPU in CI: the CPU build says why CUDA is off, and auto resolves to cpu.
    assert report["default_device"] in {"cpu", "cuda:0"}
    if not report["cuda_available"]:
        assert report["cuda_reason"]
        assert report["default_device"] == "cpu"


def test_doctor_text_answers_the_usual_questions():
    """Versions of the stack, CUDA or why not, the GPU the driver sees, the torch build to
    install, and which device a run would use and why."""
    result = run_python("from cropmodels.__main__ import main; raise SystemExit(main(['doctor']))")
    assert result.returncode == 0, result.stderr
    labels = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert {"Python", "numpy", "torch", "safetensors", "GDAL", "PROJ", "CUDA", "GPU",
            "Recommended", "Device"} <= labels  # fmt: skip
    device = next(line for line in result.stdout.splitlines() if line.startswith("Device"))
    assert "a run with device 'auto' uses " in device
    assert ": " in device.split("uses ", 1)[1]  # and why
    report = json.loads(
        run_python(
            "from cropmodels.__main__ import main; raise SystemExit(main(['doctor', '--json']))"
        ).stdout
    )
    assert report["default_device_reason"]
    assert report["torch_build"].startswith("2.13")
    assert report["recommended_build"] in {"CPU", "CUDA 12.6", "CUDA 12.8", "CUDA 13.0"}
    assert report["nvidia_smi"]
    torch_pkg = next(p for p in report["packages"] if p["name"] == "torch")
    assert torch_pkg["location"].endswith(("site-packages", "dist-packages"))


def test_doctor_explains_a_device_that_cannot_be_used():
    result = run_python(
        "from cropmodels.__main__ import main; raise SystemExit(main(['doctor', '--device', "
        "'cuda:7']))"
    )
    device = next(line for line in result.stdout.splitlines() if line.startswith("Device"))
    if "uses cuda" not in device:
        assert result.returncode == 1
        assert "a run with device 'cuda:7' uses none: device 'cuda:7' asked for" in device


def test_doctor_names_a_missing_package_and_fails():
    code = blocking("safetensors") + (
        "from cropmodels.__main__ import main\nraise SystemExit(main(['doctor']))\n"
    )
    result = run_python(code)
    assert result.returncode == 1
    assert "safetensors MISSING" in " ".join(result.stdout.split())


def test_cli_without_command_shows_help():
    result = run_python("from cropmodels.__main__ import main; raise SystemExit(main([]))")
    assert result.returncode == 2
    assert "doctor" in result.stdout


@pytest.mark.gpu
def test_doctor_reports_the_gpu_and_auto_picks_it():
    import torch

    from cropmodels.doctor import collect

    report = collect()
    assert report.cuda_available
    assert report.default_device == "cuda:0"
    assert report.devices[0]["name"] == torch.cuda.get_device_name(0)
    assert report.devices[0]["memory_gib"] > 1
