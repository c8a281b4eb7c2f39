"""Helpers shared by core and plugin tests (no QGIS import here)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"


def run_python(code: str, *, python: str = sys.executable, cwd: Path = ROOT, env=None):
    """Run a snippet in a fresh interpreter: imports and sys.modules start clean."""
    return subprocess.run(
        [python, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


# A meta-path finder that makes the named top-level packages unimportable, as on a machine
# (or a QGIS) that lacks them. Prepend it to a snippet run with run_python.
BLOCK_IMPORTS = """
import sys
class _Blocker:
    def __init__(self, names):
        self.names = set(names)
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by the test)", name=name)
        return None
sys.meta_path.insert(0, _Blocker({names!r}))
"""


def blocking(*names: str) -> str:
    return BLOCK_IMPORTS.format(names=list(names))


def build_wheel(
    folder: Path, name: str, version: str = "0.1", requires: tuple[str, ...] = (),
    code: str = "VALUE = 42\n",
) -> Path:  # fmt: skip
    """A small real pure-Python wheel (METADATA, WHEEL, RECORD with hashes), written by hand so
    that building it needs neither the network nor a build backend."""
    import base64
    import hashlib
    import zipfile

    dist = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    files = {
        f"{name}/__init__.py": code.encode(),
        f"{dist}/METADATA": metadata.encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    files[f"{dist}/RECORD"] = ("\n".join([*record, f"{dist}/RECORD,,"]) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel
