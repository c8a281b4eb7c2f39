"""``make demo``: install the plugin zip into a fresh QGIS profile and use it headless.

Real QGIS through ``qgis_process``: the plugin is unpacked into a profile under build/, enabled,
listed, and its provider's algorithms are shown and run. The core's command line rebuilds
Table 1 and extracts the bundled real Sentinel-2 sample into a store. Then the main job:
``qgis_process run cropclassifier:classify_parcels`` classifies the sample's parcels with the
recommended bundled model, and QGIS renders the result over a true-colour date to
``build/demo/classified_map.png`` (copied to ``docs/classified_map.png`` for the README).
"""

from __future__ import annotations

import argparse
import json
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
DEMO = ROOT / "build" / "demo"
DOCS_MAP = ROOT / "docs" / "classified_map.png"
MAP_DATE = "20180723"  # clear over the whole sample (see its README)


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
    model, trained_note = demo_model()

    step(f"qgis_process run {PROVIDER_ID}:classify_parcels on the sample")
    DEMO.mkdir(parents=True, exist_ok=True)
    out = DEMO / "classified.gpkg"
    for stale in (out, out.with_suffix(".qml")):
        stale.unlink(missing_ok=True)
    args_run = ["--json", "run", f"{PROVIDER_ID}:classify_parcels", "--",
                f"PARCELS={SAMPLE / 'parcels.gpkg'}", f"STACK={SAMPLE / 'stack'}",
                f"MODEL={model}", "DEVICE=auto", "DECLARED_FIELD=crop_code",
                f"OUTPUT={out}"]  # fmt: skip
    print("qgis_process " + " ".join(args_run[1:]))
    report = json.loads(qgis(args_run, args.config, pythonpath))
    for line in report["log"].get("info", []) + report["log"].get("warning", []):
        print(f"  {line}")
    print(json.dumps(report["results"], indent=2))
    print_parcels(out)

    step("QGIS renders the classified parcels over a true-colour date")
    png = DEMO / "classified_map.png"
    render = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_map.py"), "--classified", str(out),
         "--image", str(SAMPLE / "stack" / f"S2_{MAP_DATE}.tif"), "--out", str(png),
         "--title", "Flanders sample: parcels classified by crop",
         "--note", map_note(report["results"], trained_note),
         "--image-name", "Sentinel-2 true colour, 2018-07-23"],
        cwd=ROOT, check=False,
    )  # fmt: skip
    if render.returncode != 0:
        raise SystemExit(f"rendering the map failed with exit {render.returncode}")
    DOCS_MAP.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, DOCS_MAP)
    print(f"copied to {DOCS_MAP.relative_to(ROOT)}")
    qml = out.with_suffix(".qml").name
    print("\nDemo finished: the plugin installs from its zip and runs headless in QGIS, "
          f"classifies the real sample's parcels ({out.relative_to(ROOT)}, styled by {qml}) "
          f"and QGIS drew them ({png.relative_to(ROOT)}).")  # fmt: skip
    return 0


def demo_model() -> tuple[str, str]:
    """The recommended bundled model (best cross-validated F-score in its card)."""
    sys.path.insert(0, str(ROOT))
    from cropmodels.predict import bundled_model_names

    names = bundled_model_names()
    if not names:
        raise SystemExit("no bundled model in resources/models: run 'make models' first")
    step(f"Model: the bundled model {names[0]!r} (bundled: {', '.join(names)})")
    print("The bundled models were trained on sub-parcels of these 18 parcels, so the map "
          "below shows the pipeline at work, not an accuracy: the parcels are not new to "
          "them.")  # fmt: skip
    return names[0], (
        f"Model: bundled {names[0]}, trained on sub-parcels of these parcels (not new to it)."
    )


def map_note(results: dict, trained_note: str) -> str:
    return (
        f"{results['N_CLASSIFIED']} of {results['N_CLASSIFIED'] + results['N_UNCLASSIFIED']} "
        "LPIS parcels (2018) classified from 118 Sentinel-2 L2A dates (Aug 2017 - Nov 2018) by "
        "the plugin's classify_parcels in qgis_process.\n\n"
        "Fill opacity = confidence: paler parcels are less certain.\n"
        "Red outline: the prediction disagrees with the declared crop "
        f"({results['N_DISAGREEING']} of them).\n\n"
        f"{trained_note}\n\nBackground: true colour of 23 July 2018 (B04, B03, B02, "
        "2-98% stretch). Contains modified Copernicus Sentinel data (2017-2018); parcels: "
        "Flemish LPIS via WorldCereal."
    )


def print_parcels(out: Path) -> None:
    """The classified parcels, most suspicious declaration first."""
    import geopandas as gpd

    table = gpd.read_file(out).sort_values("check_rank")
    print(f"\n{'parcel':>6}  {'declared':<24} {'predicted':<24} {'conf.':>5}  agrees")
    for row in table.itertuples():
        agrees = "-" if row.agrees != row.agrees or row.agrees is None else str(bool(row.agrees))
        print(f"{row.parcel_id:>6}  {row.crop_name:<24} {row.crop_class!s:<24} "
              f"{row.confidence:>5.2f}  {agrees}")  # fmt: skip


def core(args: list[str]) -> None:
    """Run ``python -m cropmodels ARGS`` from the source tree, stopping the demo on failure."""
    result = subprocess.run([sys.executable, "-m", "cropmodels", *args], cwd=ROOT, check=False)
    if result.returncode != 0:
        raise SystemExit(f"python -m cropmodels {args[0]} failed with exit {result.returncode}")


if __name__ == "__main__":
    raise SystemExit(main())
