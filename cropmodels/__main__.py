"""Command line of the core: ``python -m cropmodels <command> ...``.

Each command is a function taking the parsed arguments and returning an exit code; commands
are added to ``build_parser`` the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable

from . import __version__
from .device import DEVICE_HELP

Command = Callable[[argparse.Namespace], int]
LOG = logging.getLogger(__name__)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import collect

    report = collect(args.device)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.to_text())
    return 1 if report.missing or report.default_device == "none" else 0


def _models_table(n_classes: int) -> list[dict[str, object]]:
    from .architectures import (
        get_model,
        get_spec,
        list_models,
        parameter_count,
        temporal_parameter_ratio,
    )

    rows = []
    for name in list_models():
        spec = get_spec(name)
        model = get_model(name, n_classes=n_classes)
        hp = model.hparams
        hidden = hp.get("hidden_size", hp.get("hidden_channels", hp.get("d_model")))
        rows.append(
            {
                "name": name,
                "title": spec.title,
                "input_kind": spec.input_kind,
                "kernels": ":".join(map(str, hp["kernels"])) if "kernels" in hp else None,
                "hidden": hidden,
                "temporal_ratio_total": temporal_parameter_ratio(model),
                "temporal_ratio_encoder": temporal_parameter_ratio(model, of="encoder"),
                "parameters": parameter_count(model),
                "paper_parameters": spec.paper_parameter_count,
                "paper_temporal_ratio": spec.paper.temporal_ratio if spec.paper else None,
            }
        )
    return rows


def _bundled_rows() -> list[dict[str, object]]:
    """One row per bundled model (``resources/models``), from its card alone (no torch)."""
    from .modelcard import ModelFileError, bundled_models, model_paths, read_card

    rows: list[dict[str, object]] = []
    for path in bundled_models():
        weights, _ = model_paths(path)
        row: dict[str, object] = {"name": path.stem, "card": str(path)}
        try:
            card = read_card(path)
        except ModelFileError as exc:
            row["error"] = str(exc)
            rows.append(row)
            continue
        cv = card.metrics.get("cross_validation", {}).get("summary", {})
        row.update(
            architecture=card.architecture,
            parameters=card.parameter_count,
            classes=[{"code": c.code, "name": c.name, "colour": c.colour} for c in card.classes],
            n_dates=len(card.date_grid or []),
            overall_accuracy=cv.get("overall_accuracy"),
            fscore=cv.get("fscore"),
            weights_bytes=weights.stat().st_size if weights.is_file() else None,
        )
        rows.append(row)
    return rows


def _print_bundled(rows: list[dict[str, object]]) -> None:
    from .resources import MODELS_DIR

    def pm(stats: object) -> str:
        if not isinstance(stats, dict) or stats.get("mean") is None:
            return "-"
        return f"{100 * stats['mean']:.1f} ± {100 * (stats.get('std') or 0.0):.1f}"

    if not rows:
        print(f"No bundled models in {MODELS_DIR} (make models builds them).")
        return
    print(f"Bundled models ({MODELS_DIR}), CV mean ± std over the test folds (%):\n")
    lines = [("name", "parameters", "classes", "dates", "CV OA", "CV F-score", "weights")]
    for r in rows:
        if "error" in r:
            lines.append((str(r["name"]), "unreadable card", "", "", "", "", ""))
            continue
        lines.append(
            (
                str(r["name"]),
                f"{r['parameters']:,}",
                ", ".join(str(c["name"]) for c in r["classes"]),  # type: ignore[union-attr]
                str(r["n_dates"]),
                pm(r["overall_accuracy"]),
                pm(r["fscore"]),
                f"{r['weights_bytes'] / 1e6:.2f} MB" if r["weights_bytes"] else "missing",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    for r in rows:
        if "error" in r:
            print(f"\n{r['error']}")


def cmd_models(args: argparse.Namespace) -> int:
    if args.bundled:
        rows = _bundled_rows()
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            _print_bundled(rows)
        return 1 if any("error" in r for r in rows) else 0
    try:
        rows = _models_table(args.n_classes)
    except ImportError as exc:
        print(f"cannot build the models: {exc} (install torch; see `python -m cropmodels doctor`)")
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"Table 1 of Garnot et al. (IGARSS 2019), rebuilt from the registry ({args.n_classes} "
        "classes)\n"
    )
    header = (
        "name",
        "title",
        "input",
        "kernels",
        "hidden",
        "temporal",
        "(encoder) (paper)",
        "parameters",
        "paper",
        "difference",
    )
    lines = [header]
    for r in rows:
        paper = r["paper_parameters"]
        if paper is None:
            paper_text, diff_text = "-", "beyond the paper"
        else:
            diff = r["parameters"] - paper
            paper_text = f"{paper:,}"
            diff_text = "exact" if diff == 0 else f"{diff:+,} ({diff / paper:+.2%})"
        lines.append(
            (
                r["name"],
                r["title"],
                r["input_kind"],
                r["kernels"] or "-",
                str(r["hidden"] or "-"),
                f"{r['temporal_ratio_total']:.2f}",
                f"{r['temporal_ratio_encoder']:.2f}"
                + (f" ({r['paper_temporal_ratio']})" if r["paper_temporal_ratio"] else ""),
                f"{r['parameters']:,}",
                paper_text,
                diff_text,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    print(
        "\ntemporal: share of all parameters in the recurrent (or attention) module, as stored in "
        "model cards.\n(encoder): the same share without the classifier MLP; this is how Table 1's "
        "ratio column\n  (0 / 0.7 / 0.8 / 0.9 / 1) was computed: GRU shows 1 there although its "
        "MLP holds 12% of its parameters.\nconvlstm: hidden is 16 channels (Table 1 says 64, read "
        "as its 4 x 16 gate kernels);\n  no natural design gives 95,353 exactly, see "
        "cropmodels/architectures/convlstm.py.\npse_ltae: hidden is d_model; Garnot and Landrieu "
        "2020, the authors' follow-up, for comparison."
    )
    print()
    _print_bundled(_bundled_rows())
    return 0


def _label_codes(gdf, field: str) -> list[int | None]:
    """Integer class codes of ``field``; empty values are unlabelled."""
    if field not in gdf.columns:
        raise ValueError(
            f"The parcel layer has no field {field!r}; its fields are: "
            f"{', '.join(c for c in gdf.columns if c != gdf.geometry.name)}."
        )
    codes: list[int | None] = []
    for value in gdf[field].tolist():
        if value is None or (isinstance(value, float) and value != value):
            codes.append(None)
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if number != number or number != int(number):
            raise ValueError(
                f"Field {field!r} holds {value!r}, which is not an integer class code; the "
                "label field must hold crop codes (e.g. WorldCereal or LPIS codes)."
            )
        codes.append(int(number))
    return codes


def cmd_extract(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .extract import ExtractConfig, ExtractionSummary, check_parcels, extract, read_parcels
    from .stack import open_stack
    from .store import write_store

    stack = open_stack(args.stack)
    gdf = read_parcels(args.parcels, layer=args.layer)
    check_parcels(gdf, stack)
    labels = _label_codes(gdf, args.label_field) if args.label_field else None
    if args.id_field and args.id_field not in gdf.columns:
        raise ValueError(f"The parcel layer has no field {args.id_field!r}.")
    ids = gdf[args.id_field].tolist() if args.id_field else None
    config = ExtractConfig(memory_mb=args.memory_mb, workers=args.workers)
    summary = ExtractionSummary()
    with tqdm(total=len(gdf), unit="parcel", desc="extract", disable=args.quiet) as bar:

        def progress(fraction: float, message: str) -> None:
            bar.update(round(fraction * len(gdf)) - bar.n)

        if args.scheduler:
            from .cluster import extract_on_cluster

            results = extract_on_cluster(gdf, args.stack, args.scheduler, config)
        else:
            results = extract(gdf, stack, config, summary=summary)
        store = write_store(
            results,
            args.out,
            n_parcels=len(gdf),
            stack_description=stack.describe(),
            dates=[d.date for d in stack.dates],
            parcel_ids=ids,
            labels=labels,
            label_field=args.label_field,
            chunk_parcels=args.chunk_parcels,
            overwrite=args.overwrite,
            progress=progress,
        )
    counts = ", ".join(f"{n} {status}" for status, n in sorted(store.counts.items()))
    print(f"Wrote {store.path}: {store.n_parcels} parcels x {len(stack)} dates ({counts})")
    print(
        f"{store.n_labelled} labelled; {store.bytes_on_disk / 2**20:.1f} MiB on disk, "
        f"{store.bytes_per_parcel / 1e3:.1f} kB per parcel"
    )
    return 0


def cmd_build_stack(args: argparse.Namespace) -> int:
    from .buildstack import build_stack

    if not args.parcels and not args.bounds:
        raise ValueError("give --parcels (or --bounds) for the extent of the stack")
    bar, progress = _tqdm_progress(args, "build-stack")
    with bar:
        result = build_stack(
            args.source if len(args.source) > 1 else args.source[0], args.out,
            parcels=args.parcels, bounds=tuple(args.bounds) if args.bounds else None,
            bounds_crs=args.bounds_crs, start=args.start, end=args.end,
            max_cloud=args.max_cloud, overwrite=args.overwrite, progress=progress,
        )  # fmt: skip
    print(
        f"Wrote {result.folder}: {len(result.written)} dates, {result.width} x {result.height} "
        f"px ({result.crs}); {len(result.skipped)} dates left out (see build_stack.json)"
    )
    return 0


def _tqdm_progress(args: argparse.Namespace, desc: str):
    """A tqdm bar driven by the core's ``progress(fraction, message)`` callback."""
    from tqdm import tqdm

    bar = tqdm(total=1000, desc=desc, disable=args.quiet,
               bar_format="{percentage:3.0f}%|{bar:20}| {elapsed} {desc}")  # fmt: skip

    def progress(fraction: float, message: str) -> None:
        bar.set_description_str(message, refresh=False)
        bar.update(max(0, round(fraction * 1000) - bar.n))

    return bar, progress


def _add_training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, help="parcel store written by 'extract'")
    p.add_argument("--epochs", type=int, default=50, help="epochs per training (paper: 50)")
    p.add_argument("--batch-size", type=int, default=32, help="paper: 32")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (paper: 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of folds, weights and batches")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (paper: 5)")
    p.add_argument("--only-folds", help="run only these folds, e.g. '1,2' (1-based; quick runs)")
    p.add_argument("--grouping", choices=("stratified", "spatial"), default="stratified",
                   help="spatial: folds of whole blocks of parcel centroids")  # fmt: skip
    p.add_argument("--parcels", help="the parcel layer the store was extracted from (spatial "
                   "folds; by default the centroids recorded in the store)")  # fmt: skip
    p.add_argument("--layer", help="layer inside --parcels")
    p.add_argument("--block-size", type=float, default=1000.0, help="spatial block side (m)")
    p.add_argument("--class-map", help="CSV source_code,code,name[,colour] mapping label codes")
    p.add_argument("--merge-rare", action="store_true",
                   help="merge classes with fewer parcels than folds into 'Other' (default: "
                   "drop them, with a warning)")  # fmt: skip
    p.add_argument("--unknown-codes", choices=("error", "exclude", "other"), default="error",
                   help="label codes outside the store's classes or --class-map")  # fmt: skip
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--workdir", help="checkpoint folder; rerunning the same command resumes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _training_inputs(args: argparse.Namespace, model: str, workdir: str) -> tuple:
    """(TrainConfig, groups or None, ClassMap or None) from the shared options."""
    from .store import Store
    from .train import TrainConfig, blocks_from_parcels, blocks_from_store, read_class_map

    only = None
    if args.only_folds:
        try:
            only = [int(k) - 1 for k in args.only_folds.split(",") if k.strip()]
        except ValueError:
            raise ValueError(f"--only-folds must be like '1,3', not {args.only_folds!r}") from None
    hparams = {}
    if getattr(args, "hparams", None):
        try:
            hparams = json.loads(args.hparams)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--hparams is not a JSON object: {exc}") from None
        if not isinstance(hparams, dict):
            raise ValueError("--hparams must be a JSON object, e.g. '{\"hidden_size\": 64}'")
    config = TrainConfig(
        model=model, hparams=hparams, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, n_folds=args.folds, folds=only, grouping=args.grouping,
        block_size_m=args.block_size, merge_rare=args.merge_rare,
        unknown_codes=args.unknown_codes, device=args.device, amp=not args.no_amp,
        workdir=args.workdir or workdir, name=getattr(args, "name", None),
        final_fit=getattr(args, "final_fit", "holdout"),
    )  # fmt: skip
    groups = None
    if args.grouping == "spatial":
        store = Store(args.store)
        if args.parcels:
            groups = blocks_from_parcels(args.parcels, store, args.block_size, args.layer)
        else:  # the centroids recorded at extraction
            groups = blocks_from_store(store, args.block_size)
    elif args.parcels:
        print("note: --parcels is only used with --grouping spatial", file=sys.stderr)
    class_map = read_class_map(args.class_map) if args.class_map else None
    return config, groups, class_map


def _refuse_existing(paths, overwrite: bool) -> None:
    """The command line's convention for outputs (as ``extract``, ``classify`` and
    ``build-stack``): an existing output is replaced only with ``--overwrite``."""
    existing = [str(p) for p in paths if os.path.lexists(p)]
    if existing and not overwrite:
        raise ValueError(
            f"{', '.join(existing)} already exists; add --overwrite to replace it, or choose "
            "another --out"
        )


def _interrupted(workdir: str) -> int:
    print(
        f"interrupted: finished epochs are kept in {workdir}; run the same command again to resume",
        file=sys.stderr,
    )
    return 130


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import distributed
    from .modelcard import model_paths
    from .progress import Cancelled
    from .train import train_model

    out = Path(args.out)
    if out.suffix in (".json", ".safetensors"):
        out = out.with_suffix("")
    workdir = args.workdir or str(out.with_name(out.name + ".work"))
    _refuse_existing(model_paths(out), args.overwrite)  # before hours of training, not after
    # Under torchrun (several processes): join the group; only rank 0 writes and prints.
    dist = distributed.setup(args.device)
    if dist is not None and not dist.main:
        args.quiet = True
    config, groups, class_map = _training_inputs(args, args.model, workdir)
    bar, progress = _tqdm_progress(args, f"train {args.model}")
    try:
        with bar:
            result = train_model(
                args.store, config, out, cv=not args.no_cv, groups=groups,
                class_map=class_map, progress=progress,
            )  # fmt: skip
    except (KeyboardInterrupt, Cancelled):
        return _interrupted(workdir)
    finally:
        distributed.shutdown()
    if dist is not None and not dist.main:
        return 0
    plan = result.plan
    if dist is not None:
        share = result.history[-1]["train_samples"] if result.history else 0
        print(
            f"Trained data-parallel on {dist.world} processes ({dist.backend}); process 0 "
            f"trained on {share} parcels per epoch"
        )
    print(
        f"Wrote {out}.safetensors and {out}.json ({result.card.parameter_count:,} parameters, "
        f"{len(plan.classes)} classes, {len(plan.rows)} parcels)"
    )
    for note in plan.notes:
        print(f"note: {note}")
    if result.cv is not None:
        s = result.cv.summary
        print(
            f"{config.n_folds}-fold CV ({config.grouping}): "
            + ", ".join(
                f"{m} {100 * s[m]['mean']:.1f} ± {100 * s[m]['std']:.1f}"
                for m in ("overall_accuracy", "fscore", "precision", "recall")
            )
        )
    if result.report_path:
        print(f"Report: {result.report_path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .evaluate import evaluate_model, json_safe
    from .files import write_text_atomic
    from .report import pct, plot_confusion, table

    if args.out:
        names = ("metrics.json", "report.md", "confusion.png")
        _refuse_existing([Path(args.out) / n for n in names], args.overwrite)
    bar, progress = _tqdm_progress(args, "evaluate")
    with bar:
        metrics = evaluate_model(
            args.model, args.store, device=args.device, batch_size=args.batch_size,
            progress=progress,
        )  # fmt: skip
    if args.json:
        print(json.dumps(json_safe(metrics), indent=2))
    else:
        print(
            f"{metrics['model']} on {metrics['n']} parcels: OA {pct(metrics['overall_accuracy'])}, "
            f"F-score {pct(metrics['fscore'])}, precision {pct(metrics['precision'])}, recall "
            f"{pct(metrics['recall'])} (excluded: {metrics['excluded']})"
        )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "metrics.json", json.dumps(json_safe(metrics), indent=1))
        png = plot_confusion(metrics["confusion_matrix"], metrics["classes"],
                             out / "confusion.png", metrics["model"])  # fmt: skip
        rows = [[n, pct(f), s] for n, f, s in zip(metrics["classes"],
                metrics["per_class_fscore"], metrics["support"], strict=True)]  # fmt: skip
        text = "\n".join([
            f"# Evaluation of {metrics['model']} on {metrics['store']}", "",
            table(["OA", "F-score", "Precision", "Recall", "parcels"], [[
                pct(metrics["overall_accuracy"]), pct(metrics["fscore"]),
                pct(metrics["precision"]), pct(metrics["recall"]), metrics["n"]]]),
            "", f"Excluded: {metrics['excluded']}", "",
            table(["class", "F-score", "parcels"], rows), "", f"![confusion]({png.name})", "",
        ])  # fmt: skip
        write_text_atomic(out / "report.md", text)
        print(f"Report: {out / 'report.md'}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .progress import Cancelled
    from .train import PAPER_MODELS, SHUFFLED_MODELS, reproduce_paper

    def names(text: str | None, default: tuple[str, ...]) -> list[str]:
        if text is None:
            return list(default)
        return [] if text.strip().lower() == "none" else [n.strip() for n in text.split(",")]

    workdir = args.workdir or str(Path(args.out) / "work")
    config, groups, class_map = _training_inputs(args, "gru", workdir)
    bar, progress = _tqdm_progress(args, "reproduce")
    try:
        with bar:
            result = reproduce_paper(
                args.store, args.out, config,
                models=names(args.models, PAPER_MODELS),
                shuffled=names(args.shuffled, SHUFFLED_MODELS),
                forest=not args.no_rf, groups=groups, class_map=class_map, progress=progress,
            )  # fmt: skip
    except (KeyboardInterrupt, Cancelled):
        return _interrupted(workdir)
    print(result.tables.read_text(encoding="utf-8").split("## Table 3")[0])
    print(f"Tables: {result.tables}\nResults: {result.results_json}")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from .predict import PredictConfig, classify_to_file, describe_counts

    config = PredictConfig(
        device=args.device, batch_size=args.batch_size, memory_mb=args.memory_mb,
        workers=args.workers, min_clear_dates=args.min_clear_dates,
        read_ahead={"auto": None, "on": True, "off": False}[args.read_ahead],
    )  # fmt: skip
    bar, progress = _tqdm_progress(args, "classify")
    with bar:
        result = classify_to_file(
            args.parcels, args.stack, args.model, args.out, config, layer=args.layer,
            declared_field=args.declared_field, overwrite=args.overwrite,
            scheduler=args.scheduler, progress=progress,
        )  # fmt: skip
    s = result.summary
    print(
        f"Wrote {result.path}: {result.n_parcels} parcels, {s.n_classified} classified "
        f"({describe_counts(s.counts)}); device {s.device}, {s.batch_size} parcels per batch"
    )
    for note in s.notes:
        print(f"note: {note}")
    for original, new in result.renamed.items():
        print(f"note: the layer already has a field {original!r}; the prediction is in {new!r}")
    if result.n_disagreeing is not None:
        print(
            f"{result.n_disagreeing} parcels disagree with {args.declared_field!r}; they come "
            "first in the output, most confident first"
        )
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = argparse.ArgumentParser(
        prog="python -m cropmodels",
        description="Parcel crop classification after Garnot et al. (IGARSS 2019).",
    )
    parser.add_argument("--version", action="version", version=f"cropmodels {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, Command] = {}

    p = sub.add_parser("doctor", help="report versions, missing packages and the device in use")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--device", default="auto", help=f"the device option to explain: {DEVICE_HELP}")
    commands["doctor"] = cmd_doctor

    p = sub.add_parser(
        "models", help="print the architectures (Table 1 from the registry) and the bundled models"
    )
    p.add_argument("--n-classes", type=int, default=19, help="output classes (19 in Table 1)")
    p.add_argument("--bundled", action="store_true",
                   help="only the trained models shipped in resources/models")  # fmt: skip
    p.add_argument("--json", action="store_true", help="machine-readable output")
    commands["models"] = cmd_models

    p = sub.add_parser(
        "extract",
        help="extract patches and features of every parcel into a store",
        description="For every parcel and date: the bounding-box patch of the 10 bands, pixels "
        "outside the parcel zeroed, clouds interpolated in time, resized to 32x32; and the "
        "per-date band means and stds. Written to a chunked, compressed store (a folder).",
    )
    p.add_argument("--parcels", required=True, help="parcel polygons (any OGR source)")
    p.add_argument("--layer", help="layer name inside the parcel source (GeoPackage)")
    p.add_argument("--stack", required=True, help="folder of per-date rasters, multi-band "
                   "raster, JSON descriptor, L2A products or STAC items")  # fmt: skip
    p.add_argument("--out", required=True, help="store folder to create")
    p.add_argument("--label-field", help="field holding the integer crop code of each parcel")
    p.add_argument("--id-field", help="field holding the parcel id (default: its position)")
    p.add_argument(
        "--memory-mb", type=float, default=2048, help="memory budget for the stack's pixels (MiB)"
    )
    p.add_argument("--workers", type=int, default=0, help="threads (default: one per core)")
    p.add_argument("--chunk-parcels", type=int, default=64, help="parcels per store chunk")
    p.add_argument(
        "--scheduler",
        help="dask.distributed scheduler address (tcp://host:8786): "
        "extract spatial blocks of parcels on its workers (see cropmodels.cluster)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    commands["extract"] = cmd_extract

    p = sub.add_parser(
        "build-stack",
        help="turn Sentinel-2 L2A products or STAC items into a per-date stack over the parcels",
        description="Reads Sentinel-2 L2A products (.SAFE folders or their .zip, as downloaded; "
        "a folder of them) or STAC items (an ItemCollection JSON, item JSON files) over the "
        "parcels' extent only, mosaics tiles and orbits of one day, removes the processing-"
        "baseline offset, and writes OUT/S2_YYYYMMDD.tif (10 bands) and OUT/scl/ masks, the "
        "layout --stack reads. Dates with no parcel pixel observed, or more cloud over the "
        "parcels than --max-cloud, are left out.",
    )
    p.add_argument("source", nargs="+", help="products, folders of products, or STAC JSON")
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--parcels", help="parcel polygons (any OGR source): extent and cloud cover")
    p.add_argument("--bounds", type=float, nargs=4, metavar=("LEFT", "BOTTOM", "RIGHT", "TOP"),
                   help="extent instead of --parcels")  # fmt: skip
    p.add_argument("--bounds-crs", help="CRS of --bounds, e.g. EPSG:4326 (default: the tiles')")
    p.add_argument("--start", help="first date kept, YYYY-MM-DD")
    p.add_argument("--end", help="last date kept, YYYY-MM-DD")
    p.add_argument("--max-cloud", type=float, default=1.0,
                   help="largest share (0-1) of parcel pixels not clear on a date")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace a stack built before")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    commands["build-stack"] = cmd_build_stack

    p = sub.add_parser(
        "train",
        help="cross-validate a model on a store and write the model file and a report",
        description="The paper's protocol: 5-fold CV (train:val:test 3:1:1), Adam lr 1e-3, "
        "batch 32, 50 epochs, best validation F-score epoch; then the shipped model trained on "
        "4/5 of the parcels with the 5th for early stopping. Writes OUT.safetensors, OUT.json "
        "(card with normalisation and CV metrics) and OUT.report.md with figures.",
    )
    p.add_argument("--model", default="cnn_gru9", help="architecture (see 'models')")
    p.add_argument("--out", required=True, help="model file stem, e.g. models/cnn_gru9")
    p.add_argument("--name", help="model name in the card (default: model_store)")
    p.add_argument("--hparams", help="JSON object overriding hyper-parameters")
    p.add_argument("--no-cv", action="store_true", help="skip cross-validation (no metrics)")
    p.add_argument("--final-fit", choices=("holdout", "all"), default="holdout",
                   help="the shipped model: 'holdout' trains on 4/5 with the 5th choosing the "
                   "epoch; 'all' on every parcel for the CV's median best epoch")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    _add_training_options(p)
    commands["train"] = cmd_train

    p = sub.add_parser(
        "evaluate",
        help="metrics of a model file on the labelled parcels of a store",
        description="Overall accuracy, class-averaged F-score, precision, recall, per-class "
        "F-score and confusion matrix of MODEL on the store's labelled, usable parcels.",
    )
    p.add_argument("--store", required=True, help="labelled parcel store")
    p.add_argument("--model", required=True, help="model file (.json, .safetensors or stem)")
    p.add_argument("--out", help="folder for metrics.json, report.md and confusion.png")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace the reports of --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    commands["evaluate"] = cmd_evaluate

    p = sub.add_parser(
        "reproduce",
        help="the paper's experiment on a store: Tables 2, 3 and 4 beside the published ones",
        description="Cross-validates the six architectures, their time-shuffled variants "
        "(Table 4) and a Random Forest on the handcrafted features, all on the same folds, "
        "and writes OUT/tables.md, OUT/results.json and confusion matrices.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--models", help="comma-separated architectures (default: the six)")
    p.add_argument("--shuffled", help="time-shuffled ones (default: convlstm,cnn_gru7,"
                   "cnn_gru9,gru; 'none' to skip)")  # fmt: skip
    p.add_argument("--no-rf", action="store_true", help="skip the Random-Forest baseline")
    _add_training_options(p)
    commands["reproduce"] = cmd_reproduce

    p = sub.add_parser(
        "classify",
        help="classify every parcel of a layer with a model and write the classes",
        description="Extracts each parcel's patches from the stack, runs the model in batches "
        "(CUDA when present) and writes every input field plus crop_code, crop_class, "
        "confidence, margin, p_<class>, n_clear_dates and status (and agrees with "
        "--declared-field). Stack dates that differ from the model's are resampled in time.",
    )
    p.add_argument("--parcels", required=True, help="parcel polygons (any OGR source)")
    p.add_argument("--layer", help="layer name inside the parcel source (GeoPackage)")
    p.add_argument("--stack", required=True, help="folder of per-date rasters, multi-band "
                   "raster or JSON descriptor")  # fmt: skip
    p.add_argument("--model", required=True, help="bundled model name or model file (.json)")
    p.add_argument("--out", required=True, help="output file, e.g. classified.gpkg")
    p.add_argument("--declared-field", help="field with the declared crop code: adds 'agrees' "
                   "and orders the parcels suspicious first")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--batch-size", type=int, default=0, help="parcels per batch (0: from "
                   "free memory)")  # fmt: skip
    p.add_argument("--min-clear-dates", type=int, default=1, help="parcels with fewer mostly "
                   "clear dates get no class")  # fmt: skip
    p.add_argument(
        "--memory-mb", type=float, default=2048, help="memory budget for the stack's pixels (MiB)"
    )
    p.add_argument("--workers", type=int, default=0, help="threads (default: one per core)")
    p.add_argument(
        "--read-ahead", choices=("auto", "on", "off"), default="auto",
        help="extract the next batch on its own thread while the model runs (auto: with a GPU "
        "or 4 cores or more)",
    )  # fmt: skip
    p.add_argument(
        "--scheduler",
        help="dask.distributed scheduler address (tcp://host:8786): "
        "classify spatial blocks of parcels on its workers (see cropmodels.cluster)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    commands["classify"] = cmd_classify

    return parser, commands


def _find_proj_data() -> None:
    """A venv's pyproj looks for PROJ's database under the venv and misses the system's;
    point it at the distribution's copy (what QGIS uses) unless the user chose one."""
    if "PROJ_DATA" in os.environ or "PROJ_LIB" in os.environ:
        return
    for candidate in ("/usr/share/proj", "/usr/local/share/proj"):
        if os.path.isfile(os.path.join(candidate, "proj.db")):
            os.environ["PROJ_DATA"] = candidate
            return


def main(argv: list[str] | None = None) -> int:
    _find_proj_data()
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    from .errors import user_message
    from .progress import Cancelled

    # One line on stderr for the user (what is wrong, what to do); the traceback to the log,
    # shown with --verbose.
    try:
        return commands[args.command](args)
    except (KeyboardInterrupt, Cancelled):
        LOG.debug("interrupted", exc_info=True)
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:  # StackError, ModelFileError, ..., OSError, MemoryError, bugs
        LOG.debug("%s failed", args.command, exc_info=True)
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1


if __name__ == "__main__":
    sys.exit(main())
