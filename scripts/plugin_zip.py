"""Build the plugin zip that QGIS's "Install from ZIP" accepts.

One top folder (the plugin's Python package name) holding metadata.txt, __init__.py, LICENSE,
README.md, plugin/, cropmodels/ and resources/; never tests, caches, venvs or build output.
The zip is reproducible: entries sorted, fixed timestamps.
"""

from __future__ import annotations

import argparse
import configparser
import os
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_NAME = "parcel_crop_classifier"
TOP_FILES = ("metadata.txt", "__init__.py", "LICENSE", "README.md")
TOP_DIRS = ("plugin", "cropmodels", "resources")
EXCLUDED_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
EXCLUDED_SUFFIXES = {".pyc", ".pyo", ".orig", ".rej", ".swp"}
REQUIRED_METADATA = (
    "name", "qgisMinimumVersion", "description", "about", "version",
    "author", "email", "repository", "tracker",
)  # fmt: skip
ZIP_DATE = (2019, 7, 28, 0, 0, 0)  # IGARSS 2019; any fixed date makes the zip reproducible


def check_metadata(root: Path = ROOT) -> configparser.SectionProxy:
    """Raise ValueError naming what the QGIS plugin repository would reject."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(root / "metadata.txt", encoding="utf-8")
    if "general" not in parser:
        raise ValueError("metadata.txt has no [general] section")
    general = parser["general"]
    missing = [key for key in REQUIRED_METADATA if not general.get(key, "").strip()]
    if missing:
        raise ValueError(f"metadata.txt lacks required keys: {', '.join(missing)}")
    icon = general.get("icon")
    if icon and not (root / icon).is_file():
        raise ValueError(f"metadata.txt names icon {icon!r}, which does not exist")
    return general


def plugin_files(root: Path = ROOT) -> list[Path]:
    files = [root / name for name in TOP_FILES]
    for top in TOP_DIRS:
        for dirpath, dirnames, filenames in os.walk(root / top):
            dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
            files.extend(
                Path(dirpath) / f for f in filenames if Path(f).suffix not in EXCLUDED_SUFFIXES
            )
    return sorted(files)


def build(out: Path, root: Path = ROOT) -> Path:
    missing = [n for n in (*TOP_FILES, *TOP_DIRS) if not (root / n).exists()]
    if missing:
        raise ValueError(f"the plugin folder lacks {', '.join(missing)}")
    check_metadata(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; the zip is meant to be shared
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in plugin_files(root):
                info = zipfile.ZipInfo(f"{PLUGIN_NAME}/{path.relative_to(root).as_posix()}")
                info.date_time = ZIP_DATE
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, path.read_bytes())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / f"{PLUGIN_NAME}.zip")
    args = parser.parse_args(argv)
    try:
        out = build(args.out)
    except ValueError as exc:
        print(f"package: {exc}", file=sys.stderr)
        return 1
    with zipfile.ZipFile(out) as zf:
        count = len(zf.namelist())
    print(f"Wrote {out} ({count} files, {out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
