"""End-to-end scale: extraction + classification at N, 2N and 4N parcels, and the paper's tile.

On a synthetic full-resolution stack of ``bench_extract.py`` (by default 2745 x 2745 px, 1/16 of
a Sentinel-2 tile, 24 dates, about 25,000 Voronoi fields with roads, clouds, DEFLATE; see
``benchmarks/README.md``), each run is
``cropmodels.predict.classify`` (the streamed extractor feeding batches to the model, in one
process, as ``classify_parcels`` runs) with ``cnn_gru9`` on every 4th parcel (N), every 2nd
(2N) and all (4N), each in a fresh process for its own peak memory. Printed:

- ``time_ratio_2n`` and ``time_ratio_4n``: time at 2N and 4N / time at N (goal: linear, 2 and 4);
- ``peak_rss_ratio_4n``: peak resident memory at 4N / at N (goal: flat, ~1);
- ``paper_tile_minutes``: 199,464 parcels x 24 dates (the paper's tile) at the 4N rate (goal <= 5
  minutes on 2 cores);
- ``overlap_ratio``: end-to-end time / (extraction alone + inference alone) at 4N: 1 means the
  two ran one after the other, lower means they overlapped.

The model has random weights and a neutral card (speed does not depend on training).

    .venv/bin/python benchmarks/bench_scale.py [--model cnn_gru9]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from synthetic import SyntheticSpec, ensure_dataset  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
PAPER_PARCELS = 199_464
SUBSETS = {"n": 4, "2n": 2, "4n": 1}  # every k-th parcel


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(model_name: str, step: int, task: str, size: int = 2745) -> dict[str, Any]:
    import geopandas as gpd
    import torch
    from bench_classify import card_for

    from cropmodels.architectures import get_model
    from cropmodels.extract import ExtractConfig, extract
    from cropmodels.predict import Classifier, PredictConfig
    from cropmodels.stack import open_stack
    from cropmodels.store import season_days

    # "<task>@1": one core for extraction (one reader, one processing thread) and one for the
    # model (one torch thread), as on a machine with cores for both; "ahead"/"inline": read
    # ahead on or off. Where the system allows, the cores are pinned: every thread starts on
    # the first core (threads inherit it), and classify's main thread, which runs the model,
    # moves to the second once the extractor's threads exist (they are made before the first
    # parcel comes out). Without pinning, extraction "alone" used both cores.
    one_core = task.endswith("@1")
    task = task.removesuffix("@1")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pinned = one_core and len(cores) >= 2
    if pinned:
        os.sched_setaffinity(0, {cores[0]})
    extract_config = ExtractConfig()
    config = PredictConfig(read_ahead={"ahead": True, "inline": False}.get(task))
    if one_core:
        torch.set_num_threads(1)
        extract_config = ExtractConfig(workers=1, process_workers=1)
        config = PredictConfig(read_ahead=config.read_ahead, workers=1, process_workers=1)

    data = ensure_dataset(SyntheticSpec(size=size), log=lambda _m: None)
    gdf = gpd.read_file(data.parcels).iloc[::step].reset_index(drop=True)
    stack = open_stack(data.stack)
    grid = season_days([d.date for d in stack.dates])
    torch.manual_seed(0)
    card = card_for(model_name, len(stack), grid)
    classifier = Classifier(get_model(model_name, n_classes=3).eval(), card, torch.device("cpu"))
    started = time.perf_counter()
    n = 0
    if task in ("classify", "ahead", "inline"):
        for _ in classifier.classify(gdf, stack, config):
            if pinned and n == 0:  # this thread (the model's) to the other core
                os.sched_setaffinity(0, {cores[1]})
            n += 1
    elif task == "extract":
        for _ in extract(gdf, stack, extract_config):
            n += 1
    else:  # inference alone on random inputs of the same count, run as classify runs it
        from cropmodels.predict import _CpuForwardPool
        from cropmodels.train import _forward

        batch = 64
        x = torch.randn(batch, len(stack), 10, 32, 32)
        doy = torch.as_tensor(grid).expand(batch, -1)
        pool = _CpuForwardPool.start()

        def compute(a: int, b: int) -> Any:
            with torch.inference_mode():
                logits = _forward(classifier.model, x[a:b], None, doy[a:b])
                return torch.softmax(logits, dim=1).numpy()

        try:
            while n < len(gdf):
                pool.map_slices(compute, 0, batch) if pool else compute(0, batch)
                n += batch
        finally:
            if pool is not None:
                pool.close()
    return {
        "seconds": time.perf_counter() - started,
        "n_parcels": len(gdf),
        "peak_rss_mb": _peak_rss_mb(),
        "pinned": pinned,
    }


def run_child(model: str, step: int, task: str, size: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", task, "--step", str(step),
           "--model", model, "--size", str(size)]  # fmt: skip
    env = {**os.environ, "PROJ_DATA": os.environ.get("PROJ_DATA", "/usr/share/proj")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"step {task} every {step} failed ({done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(name: str, value: float, goal: str, results: dict[str, Any]) -> None:
    results.setdefault("figures", {})[name] = value
    print(f"{name}: {value:.3f} ({goal})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn_gru9")
    parser.add_argument(
        "--size",
        type=int,
        default=2745,
        help="pixels per side of the synthetic stack (default 2745: 1/16 of a Sentinel-2 tile)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--step", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.model, args.step, args.child, args.size)))
        return 0
    data = ensure_dataset(SyntheticSpec(size=args.size))
    if os.getloadavg()[0] > 0.5:
        print(f"note: the machine is busy (load average {os.getloadavg()[0]:.1f})")
    results: dict[str, Any] = {
        "benchmark": "scale",
        "model": args.model,
        "data": {k: data.manifest[k] for k in ("spec", "n_parcels", "parcel_area_ha")},
        "load_average_before": os.getloadavg(),
        "runs": {},
    }
    for label, step in SUBSETS.items():
        r = results["runs"][label] = run_child(args.model, step, "classify", args.size)
        print(f"{label}: {r['n_parcels']:,} parcels classified in {r['seconds']:.1f} s "
              f"({r['n_parcels'] / r['seconds']:.0f} parcels/s), peak {r['peak_rss_mb']:.0f} MB",
              flush=True)  # fmt: skip
    runs = results["runs"]
    report("time_ratio_2n", runs["2n"]["seconds"] / runs["n"]["seconds"], "goal: ~2", results)
    report("time_ratio_4n", runs["4n"]["seconds"] / runs["n"]["seconds"], "goal: ~4", results)
    report("peak_rss_ratio_4n", runs["4n"]["peak_rss_mb"] / runs["n"]["peak_rss_mb"],
           "goal: flat, ~1", results)  # fmt: skip
    rate = runs["4n"]["n_parcels"] / runs["4n"]["seconds"]
    report("paper_tile_minutes", PAPER_PARCELS / rate / 60,
           f"goal <= 5; {PAPER_PARCELS:,} parcels x 24 dates at {rate:.0f} parcels/s",
           results)  # fmt: skip
    alone = {task: run_child(args.model, 1, task, args.size) for task in ("extract", "infer")}
    results["alone"] = alone
    print(f"alone: extraction {alone['extract']['seconds']:.1f} s, inference "
          f"{alone['infer']['seconds']:.1f} s")  # fmt: skip
    report("overlap_ratio",
           runs["4n"]["seconds"] / (alone["extract"]["seconds"] + alone["infer"]["seconds"]),
           "informative: 1 = one after the other; 2 cores are shared by both", results)  # fmt: skip
    report("end_to_end_vs_larger_ratio",
           runs["4n"]["seconds"] / max(alone["extract"]["seconds"], alone["infer"]["seconds"]),
           "informative: 1 = the smaller of extraction and inference hidden entirely",
           results)  # fmt: skip
    # The overlap itself, on one core each (what a machine with cores for both sees): 2N
    # parcels, extraction alone, the model alone, and classify with and without reading ahead.
    one = {t: run_child(args.model, 2, f"{t}@1", args.size)
           for t in ("extract", "infer", "inline", "ahead")}  # fmt: skip
    results["one_core_each"] = one
    larger = max(one["extract"]["seconds"], one["infer"]["seconds"])
    seconds = {t: r["seconds"] for t, r in one.items()}
    print(f"one core each, {one['ahead']['n_parcels']:,} parcels: extraction "
          f"{seconds['extract']:.1f} s, inference {seconds['infer']:.1f} s, classify "
          f"{seconds['inline']:.1f} s inline, {seconds['ahead']:.1f} s reading ahead")  # fmt: skip
    report("one_core_each_ahead_vs_inline_ratio", seconds["ahead"] / seconds["inline"],
           "informative: < 1 = reading ahead overlaps the two", results)  # fmt: skip
    report("one_core_each_end_to_end_vs_larger_ratio", one["ahead"]["seconds"] / larger,
           "goal: ~1 = the smaller of extraction and inference hidden", results)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
