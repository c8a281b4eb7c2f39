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
