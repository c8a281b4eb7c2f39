"""``make demo``: install the plugin zip into a fresh QGIS profile and use it headless.

Real QGIS through ``qgis_process``: the plugin is unpacked into a profile under build/, enabled,
listed, and its provider's algorithms are shown and run. Then the core's command line rebuilds
Table 1 and extracts the bundled real Sentinel-2 sample into a store.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from qgisprofile import (
    PLUGIN_NAME,
    enable_plugin,
    install_zip,
    run_qgis_process,
    venv_site_packages,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "resources" / "sample" / "flanders_s2"
PROVIDER_ID = "cropclassifier"


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def qgis(args: list[str], config: Path, pythonpath: list[str]) -> str:
    result = run_qgis_process(args, config, pythonpath)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"qgis_process {' '.join(args)} failed with exit {result.returncode}")
    return result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zip", type=Path, default=ROOT / "dist" / f"{PLUGIN_NAME}.zip")
    parser.add_argument("--config", type=Path, default=ROOT / "build" / "demo-qgis")
    args = parser.parse_args(argv)
    pythonpath = venv_site_packages()

    step(f"Installing {args.zip.name} into a fresh QGIS profile at {args.config}")
    shutil.rmtree(args.config, ignore_errors=True)
    installed = install_zip(args.zip, args.config)
    print(f"unpacked to {installed}")
    enable_plugin(args.config, pythonpath)

    step("qgis_process plugins")
    out = qgis(["plugins"], args.config, pythonpath)
    print(out.strip())
    if PLUGIN_NAME not in out:
        raise SystemExit(f"{PLUGIN_NAME} is not listed by qgis_process plugins")

    step(f"Algorithms of the '{PROVIDER_ID}' provider (qgis_process list)")
    listing = [
        line for line in qgis(["list"], args.config, pythonpath).splitlines()
        if line.strip().startswith(f"{PROVIDER_ID}:")
    ]  # fmt: skip
    if not listing:
        raise SystemExit(f"qgis_process list shows no {PROVIDER_ID}: algorithm")
    print("\n".join(listing))

    step(f"qgis_process run {PROVIDER_ID}:diagnostics")
    print(qgis(["run", f"{PROVIDER_ID}:diagnostics"], args.config, pythonpath).strip())

    step("The six architectures of Table 1, rebuilt from the registry")
    core(["models"])

    step("Patch extraction on the bundled real sample (Flanders, 118 dates, 18 LPIS parcels)")
    store = ROOT / "build" / "demo-store"
    core(["extract", "--parcels", str(SAMPLE / "parcels.gpkg"), "--stack", str(SAMPLE / "stack"),
          "--out", str(store), "--label-field", "crop_code", "--id-field", "parcel_id",
          "--overwrite", "--quiet"])  # fmt: skip
    print("\nDemo finished: the plugin installs from its zip and runs headless in QGIS, and the "
          "core extracts the real sample into a store.")  # fmt: skip
    return 0


def core(args: list[str]) -> None:
    """Run ``python -m cropmodels ARGS`` from the source tree, stopping the demo on failure."""
    result = subprocess.run([sys.executable, "-m", "cropmodels", *args], cwd=ROOT, check=False)
    if result.returncode != 0:
        raise SystemExit(f"python -m cropmodels {args[0]} failed with exit {result.returncode}")


if __name__ == "__main__":
    raise SystemExit(main())
