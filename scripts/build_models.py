"""``make models``: retrain every bundled model from scratch on the real Flanders sample.

Steps (everything under ``--work``, default ``build/models``; the models into ``--out``,
default ``resources/models/<name>/``):

1. **Samples.** The sample's 18 labelled regions are split into spatially compact sub-parcels
   of about 0.2 ha (``scripts/make_subparcels.py``) -> ``subparcels.gpkg``.
2. **Classes.** A class is kept when it has at least ``--min-regions`` (3) source regions, so
   that each cross-validation fold can train, validate and test it on *different* regions;
   the others are excluded and the cards say so. Names and colours come from the WorldCereal
   legend and palette (``cropmodels.nomenclature``).
3. **Date grid.** The paper used 24 dates from January to October. Here: 24 acquisitions of
   January-October 2018 (the LPIS year), one per ~12.7-day window where the window has a date
   on which at least half of the labelled pixels are clear land (SCL 4, 5 or 6), the clearest
   one; the slots of windows without one go to the clearest remaining dates, farthest from
   those chosen first. Snow (SCL 11) counts as not clear here: on 2018-09-23 Sen2Cor calls 99 %
   of this Flemish patch snow, which is cloud.
4. **Extraction.** Every sub-parcel is extracted from all 118 dates (clouds interpolated in time
   from every clear observation), then the grid's dates are kept -> ``subparcels.store``.
5. **Baseline.** The paper's Random Forest on the handcrafted features, on the same folds.
6. **Training.** Each architecture: the paper's protocol (5-fold CV 3:1:1, Adam 1e-3, batch 32,
   50 epochs, best validation F-score epoch), folds grouped by source region; then the shipped
   model, trained on all samples for the median of the folds' best epochs. CPU, fixed seed and
   thread count: the same inputs give the same weights. Each model is staged under
   ``--work`` and moved into ``--out`` when complete.
7. ``resources/models/README.md``: the table of the bundled models.

    nice -n 5 .venv/bin/python scripts/build_models.py [--models gru,cnn] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from make_subparcels import MIN_PIECE_PX, TARGET_PX, write_subparcels  # noqa: E402

SAMPLE = ROOT / "resources" / "sample" / "flanders_s2"
CLEAR_LAND = (4, 5, 6)  # SCL vegetation, not vegetated, water
# Relative training time of each architecture on one CPU thread (measured), to start the
# longest first when models train on several processes.
EXPECTED_COST = {"pse_ltae": 10.0, "convlstm": 4.0, "cnn": 2.0, "cnn_gru7": 2.0,
                 "cnn_gru8": 2.0, "cnn_gru9": 2.0, "gru": 0.2}  # fmt: skip
LOG = logging.getLogger("build_models")

SAMPLE_SOURCE = (
    "resources/sample/flanders_s2 (copy of ../shared/data/flanders_s2): WorldCereal test resource "
    "00002806639B424A from github.com/WorldCereal/worldcereal-classification, commit "
    "81f5ffa415d64a011556b7387b7d69b6b86886a4 (files added in 5db1e24d, removed in 7e47e955)"
)
IMAGERY = (
    "Sentinel-2 L2A (Sen2Cor, processing baseline < 04.00, from Google Earth Engine), tile "
    "31UDS, 64 x 64 px at 10 m (640 m x 640 m = 40.96 ha, south-east of Ieper, West Flanders, "
    "Belgium, EPSG:32631), 118 dates 2017-08-04..2018-11-27, 10 bands B02-B12 (20 m bands "
    "duplicated to 10 m), SCL scene classification"
)
LABELS = (
    "Flemish LPIS 2018 declarations (2018_BE_LPIS-Flanders_POLY_110) rasterised by WorldCereal "
    "(CT crop-type raster); 18 connected regions of one crop code (4-connectivity, >= 4 px), "
    "22.3 ha labelled; a region is not an LPIS parcel (neighbouring fields of one crop merge, "
    "12 of 18 regions are cut by the patch border)"
)
LICENCE = (
    "Sample: MIT (Copyright (c) 2023 ESA WorldCereal, LICENSE-WorldCereal-MIT.txt). Contains "
    "modified Copernicus Sentinel data (2017-2018), free and open under the Copernicus data "
    "terms. Flemish LPIS (Landbouwgebruikspercelen, Departement Landbouw & Visserij): Flemish "
    "open data, believed to be under the 'Modellicentie Gratis Hergebruik' (not checked)."
)
LIMITATIONS = (
    "A demonstration of the pipeline, not a production classifier: trained on one 41 ha patch "
    "of one Flemish landscape in one year (2018, a drought summer), from a few source regions "
    "per class (sub-parcels of one region are not independent samples), for the classes listed "
    "only. Expect it to fail elsewhere, in other years and on other crops; retrain on your own "
    "labelled parcels (python -m cropmodels train) for real use."
)


# -- date grid ----------------------------------------------------------------------------------


def clear_share_by_date(stack: Any, inside: np.ndarray) -> np.ndarray:
    """Per date of ``stack``, the share of the pixels ``inside`` ((H, W) bool on the stack grid)
    whose SCL class is clear land (:data:`CLEAR_LAND`); 0 for a date without SCL."""
    import rasterio

    out = np.zeros(len(stack), dtype=np.float64)
    n = max(1, int(inside.sum()))
    for t, entry in enumerate(stack.dates):
        if entry.cloud is None:
            continue
        with rasterio.open(entry.cloud.path) as ds:
            scl = ds.read(entry.cloud.index, out_shape=inside.shape)
        out[t] = np.isin(scl[inside], CLEAR_LAND).sum() / n
    return out


def choose_date_grid(
    dates: list[dt.date],
    clear_share: np.ndarray,
    n: int = 24,
    start: dt.date = dt.date(2018, 1, 1),
    end: dt.date = dt.date(2018, 10, 31),
    min_share: float = 0.5,
) -> list[int]:
    """Positions of ``n`` dates of ``dates`` in ``[start, end]``, spread through the season.

    The season is cut into ``n`` equal windows; each window gives its clearest date with at
    least ``min_share`` clear (ties: the earlier); the slots of windows without such a date go to
    the clearest remaining such dates, the one farthest (in days) from those already chosen
    first. Deterministic; raises ValueError when fewer than ``n`` dates qualify.
    """
    share = np.asarray(clear_share, dtype=np.float64)
    good = [
        i for i, d in enumerate(dates) if start <= d <= end and share[i] >= min_share
    ]  # fmt: skip
    if len(good) < n:
        raise ValueError(
            f"only {len(good)} dates between {start} and {end} have at least {min_share:.0%} of "
            f"the labelled pixels clear; {n} are needed"
        )
    span = (end - start).days + 1
    chosen: list[int] = []
    for k in range(n):
        lo, hi = span * k / n, span * (k + 1) / n
        window = [i for i in good if lo <= (dates[i] - start).days < hi]
        if window:
            chosen.append(max(window, key=lambda i: (share[i], -i)))
    while len(chosen) < n:
        rest = [i for i in good if i not in chosen]

        def gap(i: int) -> int:
            return min(abs((dates[i] - dates[j]).days) for j in chosen)

        chosen.append(max(rest, key=lambda i: (gap(i), share[i], -i)))
    return sorted(chosen)


# -- helpers ------------------------------------------------------------------------------------


def compact_stack_description(stack: Any, kept: list[int], sample: Path) -> dict[str, Any]:
    """What the store and the cards record about the stack: its grid and dates, without the
    118 file paths (and with paths relative to the repository)."""
    described = stack.describe()
    return {
        "source": _relative(sample / "stack"),
        "crs": described["crs"],
        "transform": described["transform"],
        "width": described["width"],
        "height": described["height"],
        "bands": described["bands"],
        "unit": described["unit"],
        "cloud_classes": described["cloud_classes"],
        "not_observed_classes": described["not_observed_classes"],
        "n_dates_extracted": len(stack),
        "first_date": stack.dates[0].date.isoformat(),
        "last_date": stack.dates[-1].date.isoformat(),
        "dates_kept": [stack.dates[i].date.isoformat() for i in kept],
        "cloud_mask": "Sen2Cor SCL sidecars (scl/S2_YYYYMMDD_SCL.tif)",
        "notes": described["notes"],
    }


def _touching_same_class(parcels_path: Path) -> str:
    """'maize 8/11, ...': regions of one crop code whose polygons touch (at a corner: regions
    are 4-connected components, so same-crop regions never share an edge)."""
    import geopandas as gpd

    from cropmodels import nomenclature

    gdf = gpd.read_file(parcels_path, layer="parcels").sort_values("parcel_id")
    pairs = []
    rows = list(gdf.itertuples())
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            if a.crop_code == b.crop_code and a.geometry.intersects(b.geometry):
                pairs.append(f"{nomenclature.name(int(a.crop_code))} {a.parcel_id}/{b.parcel_id}")
    return ", ".join(pairs)


def _relative(path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def _file_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


# -- the build ----------------------------------------------------------------------------------


def build(args: argparse.Namespace) -> dict[str, Any]:
    import geopandas as gpd
    import torch
    from rasterio import features

    from cropmodels import nomenclature
    from cropmodels.architectures import list_models
    from cropmodels.extract import ExtractConfig, extract, select_dates
    from cropmodels.stack import open_stack
    from cropmodels.store import Store, write_store
    from cropmodels.train import (
        ClassMap,
        Experiment,
        TrainConfig,
        random_forest_cv,
    )

    torch.set_num_threads(args.threads)  # the Random Forest and the sequential path
    work, out_dir, sample = Path(args.work), Path(args.out), Path(args.sample)
    work.mkdir(parents=True, exist_ok=True)
    names = list_models() if args.models == "all" else args.models.split(",")
    for name in names:
        if name not in list_models():
            raise SystemExit(f"unknown architecture {name!r}; choose from {list_models()}")

    # 1. sub-parcels
    t0 = time.monotonic()
    subs_path = work / "subparcels.gpkg"
    subs = write_subparcels(subs_path, sample, target_px=args.target_px, seed=args.seed)
    LOG.info("%d sub-parcels -> %s", len(subs), subs_path)

    # 2. classes: enough source regions to test each on a region it was not trained on
    census = (
        subs.groupby("crop_code")
        .agg(
            samples=("subparcel_id", "size"),
            regions=("source_parcel_id", "nunique"),
            pixels=("n_pixels", "sum"),
        )
        .reset_index()
    )
    kept_codes = sorted(int(c) for c in census.crop_code[census.regions >= args.min_regions])
    classes = nomenclature.crop_classes(kept_codes)
    class_map = ClassMap({c.code: (c.code, c.name, c.colour) for c in classes})
    per_class, excluded = [], []
    for row in census.itertuples():
        entry = {
            "code": int(row.crop_code),
            "name": nomenclature.name(int(row.crop_code)),
            "samples": int(row.samples),
            "source_regions": int(row.regions),
            "pixels": int(row.pixels),
            "area_ha": round(int(row.pixels) * 0.01, 2),
        }
        if int(row.crop_code) in kept_codes:
            per_class.append(entry)
        else:
            entry["reason"] = (
                f"only {int(row.regions)} source region(s): a class needs at least "
                f"{args.min_regions} so that every fold can train, validate and test it on "
                "different regions; the legend's 'Other crops' (9000) is not these crops, so "
                "they were not merged into it"
            )
            excluded.append(entry)

    # 3. date grid over the labelled pixels
    stack = open_stack(sample / "stack")
    grid = stack.grid
    inside = features.rasterize(
        [(g, 1) for g in subs.geometry],
        out_shape=(grid.height, grid.width),
        transform=grid.transform,
        fill=0,
    ).astype(bool)
    dates = [e.date for e in stack.dates]
    share = clear_share_by_date(stack, inside)
    kept = choose_date_grid(dates, share, n=args.n_dates)
    LOG.info("date grid: %s", ", ".join(dates[i].isoformat() for i in kept))

    # 4. extraction: all dates (cloud interpolation), then the grid
    store_path = work / "subparcels.store"
    parcels = gpd.read_file(subs_path, layer="subparcels")
    stack_description = compact_stack_description(stack, kept, sample)
    config_x = ExtractConfig()
    write_store(
        select_dates(extract(parcels, stack, config_x), kept, config_x.clear_date_fraction),
        store_path,
        n_parcels=len(parcels),
        stack_description=stack_description,
        dates=[dates[i] for i in kept],
        parcel_ids=list(parcels["subparcel_id"]),
        labels=list(parcels["crop_code"]),
        label_field="crop_code",
        classes=[vars(c) for c in nomenclature.crop_classes(sorted(census.crop_code.astype(int)))],
        overwrite=True,
    )
    store = Store(store_path)
    groups = parcels["source_parcel_id"].to_numpy()[store.source_index]
    prep_seconds = time.monotonic() - t0
    LOG.info("store %s ready in %.1f s", store_path, prep_seconds)

    base_config = TrainConfig(
        model="gru", epochs=args.epochs, seed=args.seed, n_folds=args.folds,
        grouping="spatial", unknown_codes="exclude", final_fit="all", device=args.device,
        cache_mb=4096.0,
    )  # fmt: skip
    # paths relative to the repository (the working directory) in what the cards record
    store_for_training = Path(_relative(store_path))

    # 5. Random-Forest baseline on the same folds
    experiment = Experiment.prepare(
        store_for_training, base_config, groups=groups, class_map=class_map
    )
    t_rf = time.monotonic()
    forest = random_forest_cv(experiment, seed=args.seed, n_jobs=args.threads)
    forest.config["description"] = (
        "100 trees on the flattened T x 20 handcrafted features, fitted on each fold's 3 "
        "training parts (scikit-learn defaults)"
    )
    rf_seconds = time.monotonic() - t_rf
    parts = experiment.parts
    fold_census = [
        {
            c.name: int(np.sum((parts == k) & (experiment.plan.y == i)))
            for i, c in enumerate(experiment.plan.classes)
        }
        for k in range(args.folds)
    ]

    date_info = {
        "dates": [dates[i].isoformat() for i in kept],
        "season_days": [int(dates[i].timetuple().tm_yday) for i in kept],
        "clear_share": [round(float(share[i]), 3) for i in kept],
        "choice": (
            f"{args.n_dates} dates as in the paper (24 dates, January-October): the 2018 season "
            "January-October (the LPIS year) cut into 24 equal windows, in each the acquisition "
            "with the largest share of the labelled pixels clear (SCL 4, 5, 6; snow counts as "
            "not clear: Sen2Cor flags 2018-09-23 as 99 % snow, which is cloud), among dates at "
            "least half clear; windows without one give their slot to the clearest remaining "
            "dates farthest from those chosen. Clouds on the kept dates are interpolated from "
            "all 118 dates before the others are dropped. A stack with other dates must be "
            "resampled to this grid (linear in time, cloud-aware) before classification."
        ),
    }
    samples_info = {
        "method": (
            "each labelled region of parcels.gpkg split into spatially compact sub-parcels of "
            f"about {args.target_px} px (0.2 ha): k-means on the pixel centres with "
            f"n_pixels // {args.target_px} clusters (regions under {2 * args.target_px} px "
            f"stay whole), fragments and pieces under {MIN_PIECE_PX} px joined to a "
            "neighbouring piece, polygonised along pixel edges (scripts/make_subparcels.py, "
            f"seed {args.seed})"
        ),
        "n_samples": int(sum(e["samples"] for e in per_class)),
        "per_class": per_class,
        "excluded_classes": excluded,
        "file": f"{_relative(subs_path)} (made by make models, not shipped)",
    }
    touching = _touching_same_class(sample / "parcels.gpkg")
    folds_info = (
        f"{args.folds} parts by scikit-learn StratifiedGroupKFold, groups = source region "
        "(parcel_id of parcels.gpkg): all sub-parcels of a region are in the same part, so "
        "pieces of one region are never on both sides of a split. "
        + (
            "Regions of the same crop that touch at a pixel corner are still different groups "
            f"({touching}), so a few pieces near those corners neighbour pieces of another "
            "part. "
            if touching
            else ""
        )
        + "Samples per class and part: "
        + "; ".join(
            f"part {k + 1}: " + ", ".join(f"{n} {v}" for n, v in c.items())
            for k, c in enumerate(fold_census)
        )
    )
    description = (
        f"Trained on {samples_info['n_samples']} sub-parcels (about 0.2 ha each) cut from "
        f"{sum(e['source_regions'] for e in per_class)} labelled regions of a 41 ha Sentinel-2 "
        "patch in West Flanders (Flemish LPIS 2018): "
        + ", ".join(
            f"{e['name']} {e['samples']} from {e['source_regions']} regions" for e in per_class
        )
        + ". Excluded: "
        + ", ".join(f"{e['name']} ({e['source_regions']} region)" for e in excluded)
        + f". {args.n_dates} dates of 2018 "
        f"({date_info['dates'][0]}..{date_info['dates'][-1]}). Cross-validation folds are "
        "grouped by source region. " + LIMITATIONS
    )
    provenance = {
        "training_data": {
            "description": description,
            "source": SAMPLE_SOURCE,
            "imagery": IMAGERY,
            "labels": LABELS,
            "licence": LICENCE,
            "nomenclature": nomenclature.LEGEND_SOURCE,
            "samples": samples_info,
            "folds": folds_info,
            "date_grid": date_info,
        },
        "limitations": LIMITATIONS,
        "built_by": "make models (scripts/build_models.py)",
        "torch_threads": args.threads,
    }

    # 6. the networks, longest first, on --jobs single-threaded processes
    from dataclasses import replace

    staging = work / "staging"
    tasks = []
    for name in sorted(names, key=lambda n: (-EXPECTED_COST.get(n, 1.0), names.index(n))):
        config = replace(
            base_config, model=name, name=name, workdir=_relative(work / "checkpoints")
        )
        folder = staging / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        tasks.append(
            (name, str(store_for_training), config, groups, class_map, provenance, forest,
             str(folder), args.threads)
        )  # fmt: skip
    if args.jobs > 1 and len(tasks) > 1:
        import concurrent.futures as cf
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            done = list(pool.map(_train_task, tasks))
    else:
        done = [_train_task(task) for task in tasks]
    results: dict[str, Any] = {}
    for name, record in sorted(done, key=lambda r: names.index(r[0])):
        target = out_dir / name
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging / name), str(target))
        record["weights_bytes"] = _file_size(target / f"{name}.safetensors")
        record["card_bytes"] = _file_size(target / f"{name}.json")
        record["folder_bytes"] = sum(_file_size(p) for p in target.iterdir())
        results[name] = record
    return {
        "models": results,
        "random_forest": {
            "summary": forest.summary,
            "confusion_matrix": forest.confusion_matrix,
            "seconds": round(rf_seconds, 1),
        },
        "preparation_seconds": round(prep_seconds, 1),
        "n_samples": samples_info["n_samples"],
        "per_class": per_class,
        "excluded_classes": excluded,
        "date_grid": date_info["dates"],
        "threads": args.threads,
        "jobs": args.jobs,
    }


def _train_task(task: tuple) -> tuple[str, dict[str, Any]]:
    """Train one architecture (in a worker process): CV, shipped model, card and report."""
    import torch

    from cropmodels.train import train_model

    name, store, config, groups, class_map, provenance, forest, folder, threads = task
    from cropmodels.train import _git_revision

    _git_revision()  # the commit as the run starts, before anything is written
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        logging.getLogger("cropmodels").setLevel(logging.WARNING)
    torch.set_num_threads(threads)
    LOG.info("training %s", name)
    t = time.monotonic()
    result = train_model(
        store, config, Path(folder) / name, groups=groups, class_map=class_map,
        provenance=provenance, baselines={"random_forest": forest},
        progress=_progress_logger(name),
    )  # fmt: skip
    seconds = time.monotonic() - t
    summary = result.cv.summary
    LOG.info(
        "%s: OA %.1f ± %.1f, F %.1f ± %.1f, %.0f s", name,
        100 * summary["overall_accuracy"]["mean"], 100 * summary["overall_accuracy"]["std"],
        100 * summary["fscore"]["mean"], 100 * summary["fscore"]["std"], seconds,
    )  # fmt: skip
    return name, {
        "parameters": result.card.parameter_count,
        "classes": [c.name for c in result.card.classes],
        "overall_accuracy": summary["overall_accuracy"],
        "fscore": summary["fscore"],
        "precision": summary["precision"],
        "recall": summary["recall"],
        "per_class_fscore": result.cv.per_class,
        "final_epochs": result.card.metrics["final_model"]["epochs"],
        "train_seconds": round(seconds, 1),
        "weights_sha256": result.card.weights_sha256,
    }


def _progress_logger(name: str):
    last = [-1]

    def progress(fraction: float, message: str) -> None:
        step = int(fraction * 10)
        if step != last[0]:
            last[0] = step
            LOG.info("%s %3.0f%%: %s", name, 100 * fraction, message)

    return progress


def pm(stats: dict[str, float]) -> str:
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def write_models_readme(out_dir: Path, summary: dict[str, Any]) -> Path:
    """``<out>/README.md``: the table of every bundled model (read back from the cards)."""
    from cropmodels.modelcard import bundled_models, read_card

    rows = []
    times = {n: m.get("train_seconds") for n, m in summary.get("models", {}).items()}
    for path in bundled_models(out_dir):
        card = read_card(path)
        cv = card.metrics["cross_validation"]["summary"]
        weights = path.with_suffix(".safetensors")
        rows.append(
            f"| `{card.name}` | {card.parameter_count:,} | {len(card.classes)} | "
            f"{pm(cv['overall_accuracy'])} | {pm(cv['fscore'])} | "
            f"{pooled_accuracy(card.metrics['cross_validation']['confusion_matrix'])} | "
            f"{card.metrics['final_model']['epochs']} | {weights.stat().st_size / 1e6:.2f} MB | "
            f"{_minutes(times.get(card.name))} |"
        )
    card0 = read_card(bundled_models(out_dir)[0]) if rows else None
    forest = card0.metrics.get("baselines", {}).get("random_forest", {}) if card0 else {}
    rf, rf_matrix = forest.get("summary"), forest.get("confusion_matrix")
    lines = [
        "# Bundled models",
        "",
        "Made by `make models` (`scripts/build_models.py`); do not edit by hand. One folder per",
        "architecture: `<name>.safetensors` (weights), `<name>.json` (the card: classes, date",
        "grid, normalisation, provenance, metrics, sha256 of the weights), `<name>.report.md`",
        "with its figures (training report).",
        "",
    ]
    if card0 is not None:
        data = card0.provenance["training_data"]
        lines += [data["description"], "", "Classes: " + ", ".join(
            f"{c.name} ({c.code}, `{c.colour}`)" for c in card0.classes) + ".", ""]  # fmt: skip
    lines += [
        "CV: 5-fold cross-validation (train:val:test 3:1:1, folds grouped by source region), "
        "mean ± std over the test folds, in %; F-score is the unweighted class average. The "
        "shipped model is trained on all samples for the median of the folds' best epochs "
        "(epochs). Pooled OA: the test predictions of all folds together (each sample tested "
        "once), from the summed confusion matrix. Training time: CV and shipped model, on one "
        f"CPU thread per model, {summary.get('jobs', 1)} models at once on a 2-core machine "
        "shared with other work.",
        "",
        "| model | parameters | classes | CV OA | CV F-score | pooled OA | epochs | weights "
        "| training |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]
    if rf:
        lines += [
            f"| Random Forest (baseline, not shipped) | - | - | {pm(rf['overall_accuracy'])} | "
            f"{pm(rf['fscore'])} | {pooled_accuracy(rf_matrix)} | - | - | - |"
        ]
    path = out_dir / "README.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def pooled_accuracy(matrix: Any) -> str:
    """Share of all test predictions that are right, from a summed confusion matrix, in %."""
    if not matrix:
        return "-"
    m = np.asarray(matrix, dtype=float)
    return f"{100 * np.trace(m) / m.sum():.1f}"


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f} min"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", default=str(SAMPLE))
    parser.add_argument("--work", default=str(ROOT / "build" / "models"))
    parser.add_argument("--out", default=str(ROOT / "resources" / "models"))
    parser.add_argument("--models", default="all", help="comma-separated architectures")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per model "
                        "(fixed: it changes float sums, hence the weights)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2, help="models trained at once, each in "
                        "its own process (results do not depend on it)")  # fmt: skip
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-dates", type=int, default=24)
    parser.add_argument("--target-px", type=int, default=TARGET_PX)
    parser.add_argument("--min-regions", type=int, default=3)
    parser.add_argument("--readme-only", action="store_true", help="only rewrite OUT/README.md "
                        "from the cards and WORK/summary.json")  # fmt: skip
    args = parser.parse_args()
    for key in ("sample", "work", "out"):  # resolved, then run from the repository root
        setattr(args, key, str(Path(getattr(args, key)).resolve()))
    os.chdir(ROOT)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("cropmodels").setLevel(logging.WARNING)
    if args.readme_only:
        summary = json.loads((Path(args.work) / "summary.json").read_text(encoding="utf-8"))
        print(f"wrote {write_models_readme(Path(args.out), summary)}")
        return 0
    t = time.monotonic()
    summary = build(args)
    summary["total_seconds"] = round(time.monotonic() - t, 1)
    out_dir = Path(args.out)
    (Path(args.work) / "summary.json").write_text(
        json.dumps(summary, indent=1, default=float), encoding="utf-8"
    )
    if args.models == "all":
        readme = write_models_readme(out_dir, summary)
        print(f"wrote {readme}")
    for name, m in summary["models"].items():
        print(
            f"{name:10s} {m['parameters']:>7,} params  OA {pm(m['overall_accuracy'])}  "
            f"F {pm(m['fscore'])}  {m['train_seconds']:.0f} s  weights {m['weights_bytes']:,} B"
        )
    rf = summary["random_forest"]["summary"]
    print(f"random forest      OA {pm(rf['overall_accuracy'])}  F {pm(rf['fscore'])}")
    print(f"total {summary['total_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
