"""Install the plugin zip into a QGIS profile and drive ``qgis_process`` headless.

Shared by ``make demo`` and the tests, so both exercise exactly what a user does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Sequence
from pathlib import Path

PLUGIN_NAME = "parcel_crop_classifier"
PROFILE = "default"


def qgis_process_command() -> list[str]:
    """The qgis_process executable.

    Debian's ``/usr/bin/qgis_process`` is a shell wrapper that appends ``$QGIS_OPTS`` from
    ``/etc/default/qgis`` (``--noversioncheck``, meant for the desktop), which qgis_process 3.22
    rejects ("Command --noversioncheck not known!"). The real binary next to it works.
    """
    for name in ("qgis_process.bin", "qgis_process"):
        found = shutil.which(name)
        if found:
            return [found]
    raise FileNotFoundError(
        "qgis_process not found: install the Debian package 'qgis' (make test does it)."
    )


def plugins_dir(config_dir: Path, profile: str = PROFILE) -> Path:
    return config_dir / "profiles" / profile / "python" / "plugins"


def install_zip(zip_path: Path, config_dir: Path, profile: str = PROFILE) -> Path:
    """Unpack the plugin zip into the profile, as QGIS's "Install from ZIP" does."""
    target = plugins_dir(config_dir, profile)
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path) as zf:
        tops = {name.split("/", 1)[0] for name in zf.namelist()}
        if tops != {PLUGIN_NAME}:
            raise ValueError(f"{zip_path}: expected one top folder {PLUGIN_NAME!r}, got {tops}")
        shutil.rmtree(target / PLUGIN_NAME, ignore_errors=True)
        zf.extractall(target)
    return target / PLUGIN_NAME


def qgis_env(config_dir: Path, extra_pythonpath: Sequence[str] = ()) -> dict[str, str]:
    """Environment for a headless qgis_process using ``config_dir`` as its settings root."""
    env = dict(os.environ)
    env["QGIS_CUSTOM_CONFIG_PATH"] = str(config_dir)
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    env.setdefault("PROJ_DATA", "/usr/share/proj")
    env.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")
    Path(env["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)
    if extra_pythonpath:
        parts = [*extra_pythonpath, env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in parts if p)
    return env


def venv_site_packages() -> list[str]:
    """The running interpreter's site-packages when it is a venv (QGIS's Python lacks them).

    QGIS embeds the system Python, which does not see the venv that holds torch; passing the
    venv's site-packages on PYTHONPATH lets qgis_process import torch in development.
    """
    if sys.prefix == sys.base_prefix:
        return []
    return [sysconfig.get_paths()["purelib"]]


def run_qgis_process(
    args: Sequence[str],
    config_dir: Path,
    extra_pythonpath: Sequence[str] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*qgis_process_command(), *args],
        env=qgis_env(config_dir, extra_pythonpath),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def enable_plugin(config_dir: Path, extra_pythonpath: Sequence[str] = ()) -> None:
    result = run_qgis_process(["plugins", "enable", PLUGIN_NAME], config_dir, extra_pythonpath)
    if result.returncode != 0:
        raise RuntimeError(
            f"qgis_process could not enable {PLUGIN_NAME} (exit {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
