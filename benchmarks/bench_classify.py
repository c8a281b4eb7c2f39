"""Classification speed of every registry model, and how fast a cancel is honoured.

* ``<model>_model_parcels_per_s``: inference alone (``for_inference``, no_grad, softmax, one
  forward per batch) on random inputs of 24 dates (the paper's setting), batches of 32, on the
  chosen device;
* ``<model>_end_to_end_parcels_per_s``: ``Classifier.classify`` on the bundled real sample (18
  parcels x 118 dates, extraction included), the time-sized batches of the default config;
* ``<model>_cancel_seconds``: a run on 8 copies of the sample is cancelled after 1 s; the time
  until ``classify`` stops (goal <= 1 s).

Models carry random weights and neutral normalisation: speed does not depend on training.
Prints ``name: value`` lines and writes ``benchmarks/results/classify.json``; asserts nothing.

    .venv/bin/python benchmarks/bench_classify.py [--device cpu|cuda|auto] [--models gru,cnn]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "resources" / "sample" / "flanders_s2"
BATCH = 32
DATES = 24


def card_for(name: str, n_dates: int, grid: list[int]):
    """A neutral card: 3 classes, mean 0 / std 1 for every date of the sample's grid."""
    from cropmodels.architectures import FEATURES, get_spec
    from cropmodels.modelcard import CropClass, ModelCard
    from cropmodels.stack import PAPER_BANDS

    spec = get_spec(name)
    width = 20 if spec.input_kind == FEATURES else 10
    return ModelCard(
        name=f"{name}_bench", architecture=name, hparams={}, n_bands=10,
        bands=list(PAPER_BANDS),
        classes=[CropClass(1, "a", "#ff0000"), CropClass(2, "b", "#00ff00"),
                 CropClass(3, "c", "#0000ff")],
        input_kind=spec.input_kind,
        normalisation={"mean": [[0.0] * width] * n_dates, "std": [[1000.0] * width] * n_dates},
        date_grid=grid, patch_size=32 if spec.input_kind != FEATURES else None,
    )  # fmt: skip


def model_throughput(name: str, device, seconds: float) -> float:
    import torch

    from cropmodels.architectures import FEATURES, get_model, get_spec
    from cropmodels.inference import for_inference
    from cropmodels.train import _forward

    # the model as Classifier runs it (folded BatchNorm, channels-last...), one forward per batch
    model = for_inference(get_model(name, n_classes=3).eval(), device)
    shape = (BATCH, DATES, 20) if get_spec(name).input_kind == FEATURES else (
        BATCH, DATES, 10, 32, 32)  # fmt: skip
    x = torch.randn(*shape, device=device)
    mask = torch.ones(BATCH, 32, 32, dtype=torch.bool, device=device)
    doy = torch.arange(1, DATES + 1, device=device).expand(BATCH, -1)
    n, start = 0, time.perf_counter()
    with torch.no_grad():
        while True:
            torch.softmax(_forward(model, x, mask, doy).float(), dim=1)
            if device.type == "cuda":
                torch.cuda.synchronize()
            n += BATCH
            if time.perf_counter() - start > seconds:
                break
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    import geopandas as gpd
    import pandas as pd

    from cropmodels.architectures import get_model, list_models
    from cropmodels.predict import Classifier, PredictConfig, resolve_device
    from cropmodels.progress import Cancelled
    from cropmodels.stack import open_stack
    from cropmodels.store import season_days

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", help="comma-separated (default: all)")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    os.environ.setdefault("PROJ_DATA", "/usr/share/proj")
    device = resolve_device(args.device)
    names = args.models.split(",") if args.models else list_models()
    stack = open_stack(SAMPLE / "stack")
    grid = season_days([d.date for d in stack.dates])
    parcels = gpd.read_file(SAMPLE / "parcels.gpkg")
    many = gpd.GeoDataFrame(pd.concat([parcels] * 8, ignore_index=True), crs=parcels.crs)
    results: dict[str, float] = {}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for name in names:
        results[f"{name}_model_parcels_per_s"] = model_throughput(name, device, args.seconds)
        card = card_for(name, len(grid), grid)
        classifier = Classifier(get_model(name, n_classes=3), card, device)
        config = PredictConfig(device=str(device))
        list(classifier.classify(parcels, stack, config))  # warm up (page cache, kernels)
        start = time.perf_counter()
        list(classifier.classify(parcels, stack, config))
        results[f"{name}_end_to_end_parcels_per_s"] = len(parcels) / (time.perf_counter() - start)
        flag: dict[str, float] = {}
        timer = threading.Timer(1.0, lambda f=flag: f.setdefault("at", time.perf_counter()))
        timer.start()
        try:
            list(classifier.classify(many, stack, config, is_cancelled=lambda f=flag: "at" in f))
            results[f"{name}_cancel_seconds"] = float("nan")  # finished before the cancel
        except Cancelled:
            results[f"{name}_cancel_seconds"] = time.perf_counter() - flag["at"]
        timer.cancel()
        for key in (f"{name}_model_parcels_per_s", f"{name}_end_to_end_parcels_per_s"):
            print(f"{key}: {results[key]:.1f}")
        print(f"{name}_cancel_seconds: {results[f'{name}_cancel_seconds']:.2f} (goal <= 1)")
    out = ROOT / "benchmarks" / "results" / "classify.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": str(device), "load_average_at_start": load,
                               "machine": platform.platform(), "cpus": os.cpu_count(),
                               "results": results}, indent=1))  # fmt: skip
    if load is not None and load > (os.cpu_count() or 1) * 0.5:
        print(f"note: the machine was busy (load {load:.1f}); wall-clock figures are pessimistic")
    return 0


if __name__ == "__main__":
    sys.exit(main())
