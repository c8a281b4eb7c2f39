"""Fail loudly if the venv sees a numpy or GDAL other than the system's (pip replaced one)."""

from __future__ import annotations

import sys


def main() -> int:
    problems = []
    for module in ("numpy", "rasterio", "osgeo", "pyproj", "shapely", "geopandas"):
        try:
            mod = __import__(module)
        except ImportError as exc:
            problems.append(f"{module} is not importable ({exc}); install the Debian package.")
            continue
        path = getattr(mod, "__file__", "") or ""
        if not path.startswith("/usr/lib/python3/"):
            problems.append(f"{module} comes from {path}, not from the system; pip replaced it.")
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        problems.append(f"torch is not importable ({exc}).")
    if problems:
        sys.stderr.write("Environment check failed:\n  " + "\n  ".join(problems) + "\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
