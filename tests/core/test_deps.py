"""The dependency check, the torch build choice and the pip command (no QGIS, no network)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cropmodels import deps
from cropmodels.deps import (
    CPU_BUILD,
    REQUIREMENTS,
    add_to_sys_path,
    build_by_key,
    constraints_lines,
    find_python,
    find_shadowing,
    missing,
    parse_nvidia_smi,
    pip_command,
    pip_environment,
    python_candidates,
    recommend_build,
    torch_requirement,
    torch_wheels,
)
from helpers import ROOT, SYSTEM_PYTHON, run_python

# -- what is missing --------------------------------------------------------------------------


def test_missing_names_what_qgis_python_lacks():
    """Debian's Python, which QGIS embeds, has numpy and the GDAL stack but no torch."""
    result = run_python(
        "import json, sys\n"
        "from cropmodels.deps import missing\n"
        "print(json.dumps([r.name for r in missing()]))\n"
        "print('torch' in sys.modules)\n",
        python=SYSTEM_PYTHON,
    )
    assert result.returncode == 0, result.stderr
    names, imported = result.stdout.strip().splitlines()
    assert set(json.loads(names)) >= {"torch", "safetensors"}
    assert "numpy" not in json.loads(names)
    assert imported == "False"


def test_missing_in_a_subprocess_whose_path_hides_the_venv():
    """The same interpreter that has torch, with the folder that holds it taken off sys.path:
    torch is reported missing, what the system has is not, and nothing is imported."""
    result = run_python(
        "import json, site, sys\n"
        "venv = site.getsitepackages()[0] if sys.prefix != sys.base_prefix else None\n"
        "from cropmodels.deps import missing\n"
        "before = [r.name for r in missing()]\n"
        "sys.path[:] = [p for p in sys.path if p != venv]\n"
        "after = [r.name for r in missing()]\n"
        "print(json.dumps([before, after, sorted(m for m in ('torch', 'safetensors', 'zarr')"
        " if m in sys.modules)]))\n"
    )
    assert result.returncode == 0, result.stderr
    before, after, imported = json.loads(result.stdout)
    assert before == []
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests do not run in a venv: nothing to hide")
    assert {"torch", "safetensors", "zarr", "tqdm", "scikit-learn"} <= set(after)
    assert not {"numpy", "rasterio", "shapely", "pyproj"} & set(after)
    assert imported == []


def test_missing_with_an_explicit_path(tmp_path: Path):
    (tmp_path / "safetensors").mkdir()
    (tmp_path / "safetensors" / "__init__.py").write_text("")
    found = missing(deps.REQUIREMENTS, path=[str(tmp_path)])
    assert "safetensors" not in [r.name for r in found]
    assert "torch" in [r.name for r in found]


def test_requirements_txt_lists_the_same_runtime_packages():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    specs = [line for line in lines if line and not line.startswith("#")]
    runtime = specs[: len(REQUIREMENTS)]
    assert runtime == [r.spec for r in REQUIREMENTS]


def test_missing_packages_are_described_with_how_to_get_them():
    lines = deps.describe_missing([REQUIREMENTS[0], deps.SYSTEM_REQUIREMENTS[1]])
    assert lines[0] == "torch (runs the models): installed by the plugin's installer"
    assert lines[1].startswith("rasterio (reads the image stack): comes with QGIS")
    assert "apt install python3-rasterio" in lines[1]


# -- nvidia-smi and the torch build -------------------------------------------------------------

SMI_550 = """\
Tue Nov 25 10:12:31 2025
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |
|                                         |                        |               MIG M. |
|=========================================+========================+======================|
|   0  NVIDIA GeForce RTX 3060        Off |   00000000:01:00.0  On |                  N/A |
|  0%   41C    P8             15W /  170W |     512MiB /  12288MiB |      2%      Default |
|                                         |                        |                  N/A |
+-----------------------------------------+------------------------+----------------------+
"""

SMI_570_TWO_GPUS = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 570.86.15              Driver Version: 570.86.15      CUDA Version: 12.8     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|=========================================+========================+======================|
|   0  NVIDIA H100 80GB HBM3          On  |   00000000:19:00.0 Off |                    0 |
| N/A   31C    P0             71W /  700W |       1MiB /  81559MiB |      0%      Default |
+-----------------------------------------+------------------------+----------------------+
|   1  NVIDIA H100 80GB HBM3          On  |   00000000:3B:00.0 Off |                    0 |
| N/A   30C    P0             70W /  700W |       1MiB /  81559MiB |      0%      Default |
+-----------------------------------------+------------------------+----------------------+
"""

SMI_470 = """\
+-----------------------------------------------------------------------------+
| NVIDIA-SMI 470.182.03   Driver Version: 470.182.03   CUDA Version: 11.4     |
|-------------------------------+----------------------+----------------------+
| GPU  Name        Persistence-M| Bus-Id        Disp.A | Volatile Uncorr. ECC |
| Fan  Temp  Perf  Pwr:Usage/Cap|         Memory-Usage | GPU-Util  Compute M. |
|===============================+======================+======================|
|   0  Tesla T4            Off  | 00000000:00:04.0 Off |                    0 |
| N/A   36C    P8     9W /  70W |      0MiB / 15109MiB |      0%      Default |
+-------------------------------+----------------------+----------------------+
"""

SMI_Q_580 = """\
==============NVSMI LOG==============

Timestamp                                 : Tue Nov 25 10:15:02 2025
Driver Version                            : 580.65.06
CUDA Version                              : 13.0

Attached GPUs                             : 1
GPU 00000000:01:00.0
    Product Name                          : NVIDIA RTX A4000
    Product Brand                         : NVIDIA RTX
    FB Memory Usage
        Total                             : 16376 MiB
        Reserved                          : 250 MiB
        Used                              : 3 MiB
"""

SMI_FAILED = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure "
    "that the latest NVIDIA driver is installed and running.\n"
)


def test_parse_the_current_nvidia_smi_table():
    info = parse_nvidia_smi(SMI_550)
    assert info.driver == "550.54.15"
    assert info.cuda == (12, 4)
    assert info.gpus == (deps.Gpu(0, "NVIDIA GeForce RTX 3060", 12288),)
    assert info.describe() == "NVIDIA GeForce RTX 3060 (12 GiB); driver 550.54.15, CUDA 12.4"


def test_parse_two_gpus_an_old_table_and_the_query_format():
    two = parse_nvidia_smi(SMI_570_TWO_GPUS)
    assert [g.name for g in two.gpus] == ["NVIDIA H100 80GB HBM3"] * 2
    assert [g.index for g in two.gpus] == [0, 1]
    assert two.gpus[1].memory_mib == 81559
    old = parse_nvidia_smi(SMI_470)
    assert (old.driver, old.cuda, old.gpus[0].name) == ("470.182.03", (11, 4), "Tesla T4")
    query = parse_nvidia_smi(SMI_Q_580)
    assert query.cuda == (13, 0)
    assert query.gpus == (deps.Gpu(0, "NVIDIA RTX A4000", 16376),)
    assert parse_nvidia_smi(SMI_FAILED) is None
    assert parse_nvidia_smi("") is None


@pytest.mark.parametrize(
    ("smi", "platform", "key", "words"),
    [
        (SMI_570_TWO_GPUS, "linux", "cu128", "driver 570.86.15 supports CUDA 12.8"),
        (SMI_Q_580, "win32", "cu130", "NVIDIA RTX A4000"),
        (SMI_550, "linux", "cu126", "minor version compatibility"),
        (SMI_470, "linux", "cpu", "update the NVIDIA driver"),
        (SMI_FAILED, "linux", "cpu", "no NVIDIA GPU with a working driver"),
        (SMI_570_TWO_GPUS, "darwin", "cpu", "macOS"),
    ],
)
def test_recommended_build_follows_the_driver(smi, platform, key, words):
    choice = recommend_build(parse_nvidia_smi(smi), platform)
    assert choice.build.key == key
    assert words in choice.reason


def test_builds_and_their_indexes():
    assert [b.key for b in deps.available_builds("linux")] == ["cpu", "cu126", "cu128", "cu130"]
    assert deps.available_builds("darwin") == (CPU_BUILD,)
    assert build_by_key("cu128").index_url == "https://download.pytorch.org/whl/cu128"
    assert build_by_key("cu128").label == "CUDA 12.8"
    with pytest.raises(ValueError, match="known: cpu, cu126"):
        build_by_key("cu999")


def test_query_nvidia_smi_reports_what_it_found():
    info, said = deps.query_nvidia_smi()
    assert said
    if info is None:
        assert "nvidia-smi" in said


# -- the pip command ----------------------------------------------------------------------------


def test_pip_command_for_the_cpu_build():
    cmd = pip_command("/usr/bin/python3.11", "/p/constraints.txt", CPU_BUILD, platform="linux")
    assert all(isinstance(a, str) for a in cmd)
    assert cmd[:5] == ["/usr/bin/python3.11", "-m", "pip", "install", "--user"]
    assert cmd[cmd.index("-c") + 1] == "/p/constraints.txt"
    assert cmd[cmd.index("--only-binary") + 1] == ":all:"
    assert cmd[cmd.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert "--index-url" not in cmd  # PyPI (or the user's configured index) serves the rest
    assert "--target" not in cmd
    assert "--no-index" not in cmd
    assert cmd[-len(REQUIREMENTS) :] == [
        "torch==2.13.0+cpu", "safetensors>=0.4", "zarr>=2.16,<3", "tqdm>=4.60",
        "threadpoolctl>=3.1", "scikit-learn>=1.3,<1.8",
    ]  # fmt: skip
    assert not any(a.startswith("numpy") for a in cmd)


def test_pip_command_for_a_cuda_build_on_windows():
    build = recommend_build(parse_nvidia_smi(SMI_570_TWO_GPUS), "win32").build
    cmd = pip_command(r"C:\OSGeo4W\apps\Python312\python.exe", r"C:\p\c.txt", build,
                      platform="win32")  # fmt: skip
    assert cmd[0] == r"C:\OSGeo4W\apps\Python312\python.exe"
    assert cmd[cmd.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cu128"
    assert "torch==2.13.0+cu128" in cmd


def test_pip_command_offline_from_a_wheel_folder(tmp_path: Path):
    for name in ("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "torch-2.13.0+cu128-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "torch-2.12.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"):  # fmt: skip
        (tmp_path / name).write_bytes(b"")
    assert set(torch_wheels(tmp_path).values()) == {"cpu", "cu128"}
    cmd = pip_command("python3", "c.txt", build_by_key("cu128"), wheel_dir=tmp_path,
                      platform="linux")  # fmt: skip
    assert cmd[cmd.index("--find-links") + 1] == str(tmp_path)
    assert "--no-index" in cmd
    assert "--extra-index-url" not in cmd
    assert "torch==2.13.0+cu128" in cmd


def test_torch_requirement_unpinned_where_wheels_carry_no_build_label(tmp_path: Path):
    (tmp_path / "torch-2.13.0-cp311-none-macosx_11_0_arm64.whl").write_bytes(b"")
    assert torch_requirement(CPU_BUILD, "linux", tmp_path) == "torch==2.13.0"
    assert torch_requirement(CPU_BUILD, "darwin") == "torch==2.13.0"
    assert torch_requirement(CPU_BUILD, "linux") == "torch==2.13.0+cpu"
    cmd = pip_command("python3", "c.txt", CPU_BUILD, platform="darwin")
    assert "--extra-index-url" not in cmd


def test_pip_environment_points_pip_at_the_user_base():
    env = pip_environment("/home/u/profile/deps", {"PATH": "/usr/bin", "PYTHONNOUSERSITE": "1",
                          "PIP_REQUIRE_VIRTUALENV": "true", "PIP_TARGET": "/x"})  # fmt: skip
    assert env["PYTHONUSERBASE"] == "/home/u/profile/deps"
    assert env["PIP_BREAK_SYSTEM_PACKAGES"] == "1"
    assert env["PATH"] == "/usr/bin"
    assert not {"PYTHONNOUSERSITE", "PIP_REQUIRE_VIRTUALENV", "PIP_TARGET"} & set(env)


def test_constraints_pin_the_numpy_qgis_runs_and_skip_the_plugin_folder(tmp_path, monkeypatch):
    import numpy

    lines = constraints_lines()
    assert f"numpy=={numpy.__version__}" in lines
    assert any(line.startswith("GDAL==") for line in lines)
    stray = tmp_path / "numpy-99.0.dist-info"
    stray.mkdir()
    (stray / "METADATA").write_text("Metadata-Version: 2.1\nName: numpy\nVersion: 99.0\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    assert "numpy==99.0" in constraints_lines()
    assert f"numpy=={numpy.__version__}" in constraints_lines(exclude=[tmp_path])


# -- the interpreter ----------------------------------------------------------------------------


def test_python_candidates_inside_qgis_on_linux():
    found = python_candidates("/usr/bin/qgis", "/usr", (3, 11), "linux")
    assert found[0] == "/usr/bin/python3.11"
    assert "/usr/bin/qgis" not in found


def test_python_candidates_inside_qgis_on_windows_and_macos():
    win = python_candidates(r"C:\OSGeo4W\bin\qgis-bin.exe", r"C:\OSGeo4W\apps\Python312",
                            (3, 12), "win32")  # fmt: skip
    assert win[0] == r"C:\OSGeo4W\apps\Python312\python.exe"
    assert not any(c.endswith("qgis-bin.exe") for c in win)
    mac = python_candidates(
        "/Applications/QGIS.app/Contents/MacOS/QGIS",
        "/Applications/QGIS.app/Contents/Frameworks",
        (3, 9),
        "darwin",
    )
    assert mac[0] == "/Applications/QGIS.app/Contents/MacOS/bin/python3.9"


def test_python_candidates_keep_a_real_interpreter_first():
    assert python_candidates("/opt/venv/bin/python", "/usr", (3, 11), "linux")[0] == (
        "/opt/venv/bin/python"
    )


def test_find_python_finds_this_interpreter_version():
    python = find_python()
    assert deps.python_version_of(python) == sys.version_info[:2]


def test_find_python_as_if_inside_qgis_on_linux():
    """sys.executable is the QGIS program: the interpreter comes from the prefix."""
    candidates = python_candidates("/usr/bin/qgis", "/usr", sys.version_info[:2], "linux")
    assert find_python(candidates) == f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"


def test_find_python_says_where_it_looked(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"tried: .*nope.*README"):
        find_python([str(tmp_path / "nope")])


# -- the user base on sys.path ---------------------------------------------------------------


def test_dependencies_dir_is_in_the_profile_and_not_importable(tmp_path: Path):
    base = deps.dependencies_dir(tmp_path / "profiles" / "default")
    assert base == tmp_path / "profiles/default/python/dependencies/parcel-crop-classifier"
    assert not base.name.isidentifier()
    site = deps.site_dir(base)
    assert base in site.parents
    assert f"{sys.version_info[0]}" in str(site.relative_to(base))


def test_add_to_sys_path_puts_a_clean_folder_first(tmp_path: Path):
    path = ["/usr/lib/python3/dist-packages"]
    assert add_to_sys_path(tmp_path / "missing", path) == (False, None)
    assert add_to_sys_path(tmp_path, path) == (True, None)
    assert add_to_sys_path(tmp_path, path) == (True, None)  # idempotent
    assert path == [str(tmp_path), "/usr/lib/python3/dist-packages"]


def test_a_folder_shadowing_numpy_goes_last_with_a_warning(tmp_path: Path):
    (tmp_path / "numpy").mkdir()
    (tmp_path / "numpy-2.3.0.dist-info").mkdir()
    (tmp_path / "torch").mkdir()
    assert [p.name for p in find_shadowing(tmp_path)] == ["numpy", "numpy-2.3.0.dist-info"]
    path = ["/usr/lib/python3/dist-packages"]
    added, warning = add_to_sys_path(tmp_path, path)
    assert added
    assert path[-1] == str(tmp_path)
    assert "numpy" in warning
    assert "Reinstall" in warning
