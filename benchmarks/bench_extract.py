"""Extraction speed, memory and store size on a synthetic full-resolution stack.

Prints ratios measured in one run (``name: value (goal ...)``) and writes every figure to
``benchmarks/results/extract.json``; it asserts nothing about times. See benchmarks/README.md.

    .venv/bin/python benchmarks/bench_extract.py                  # 2745 px (1/16 tile), 24 dates
    .venv/bin/python benchmarks/bench_extract.py --size 2048      # a smaller area, faster
    .venv/bin/python benchmarks/bench_extract.py --profile        # + where extraction time goes

Every measurement runs in a fresh Python process (``--child``), so peak resident memory
(``ru_maxrss``) and GDAL's block cache belong to that measurement alone. All of them read the
same files, already in the OS page cache (a warm-up pass reads every file first).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from synthetic import SyntheticData, SyntheticSpec, ensure_dataset  # noqa: E402

RESULTS = HERE / "results" / "extract.json"
PAPER_PARCELS = 199_464
PAPER_DATES = 24
PAPER_RAW_BYTES = PAPER_PARCELS * PAPER_DATES * 10 * 32 * 32 * 2  # 98.0 GB as uint16


# -- measurements, each in its own process ---------------------------------------------------


def _rss_mb() -> float:
    """Current resident set (MB) from /proc; the baseline after imports."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads: robust to a busy machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _parcels(data: SyntheticData, subset: str) -> Any:
    """The parcel GeoDataFrame: ``all``, ``every4`` (a spread quarter) or ``quadrant``."""
    import geopandas as gpd

    gdf = gpd.read_file(data.parcels)
    if subset == "every4":
        return gdf.iloc[::4].reset_index(drop=True)
    if subset == "quadrant":  # the parcels of the top-left quarter of the area
        xmin, ymin, xmax, ymax = gdf.total_bounds
        c = gdf.geometry.centroid
        keep = (c.x < (xmin + xmax) / 2) & (c.y > (ymin + ymax) / 2)
        return gdf[keep.to_numpy()].reset_index(drop=True)
    return gdf


def child_read(data: SyntheticData, threads: int) -> dict[str, Any]:
    """Reference: decode every band of every date, block by block, and every SCL block."""
    import rasterio

    from cropmodels.stack import open_stack

    stack = open_stack(data.stack)
    base = _rss_mb()

    def one(entry: Any) -> int:
        n = 0
        paths = {entry.bands[0].path, *([entry.cloud.path] if entry.cloud else [])}
        for path in sorted(paths):
            with rasterio.open(path) as ds:
                for _, window in ds.block_windows(1):
                    n += ds.read(window=window).nbytes
        return n

    cpu = _cpu_seconds()
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(threads) as pool:
        decoded = sum(pool.map(one, stack.dates))
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_seconds": _cpu_seconds() - cpu,
        "threads": threads,
        "decoded_bytes": decoded,
        "baseline_rss_mb": base,
        "peak_rss_mb": _peak_rss_mb(),
    }


def child_extract(data: SyntheticData, subset: str, memory_mb: float) -> dict[str, Any]:
    from cropmodels.extract import ExtractConfig, ExtractionSummary, extract
    from cropmodels.stack import open_stack

    gdf = _parcels(data, subset)
    stack = open_stack(data.stack)
    config = ExtractConfig(memory_mb=memory_mb)
    summary = ExtractionSummary()
    base = _rss_mb()
    cpu = _cpu_seconds()
    started = time.perf_counter()
    n = 0
    for _ in extract(gdf, stack, config, summary=summary):
        n += 1
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_seconds": _cpu_seconds() - cpu,
        "subset": subset,
        "n_parcels": n,
        "workers": config.n_workers(),
        "memory_mb": memory_mb,
        "counts": summary.counts,
        "rows_read": summary.rows_read,
        "rows_reread": summary.rows_reread,
        "peak_buffer_mb": summary.peak_buffer_mb,
        "baseline_rss_mb": base,
        "peak_rss_mb": _peak_rss_mb(),
    }


def child_output_floor(data: SyntheticData, subset: str, threads: int) -> dict[str, Any]:
    """A floor under any extractor of this output: allocate and write, once, the float32
    (T, 10, 32, 32) patches and (T, 20) features of every parcel, on the extractor's threads,
    as the extractor hands out one fresh array per parcel. No reading, no computing."""
    import numpy as np

    from cropmodels.stack import open_stack

    n = len(_parcels(data, subset))
    t_count = len(open_stack(data.stack))

    def one(count: int) -> int:
        written = 0
        for _ in range(count):
            patches = np.empty((t_count, 10, 32, 32), np.float32)
            patches.fill(1.0)
            features = np.empty((t_count, 20), np.float32)
            features.fill(1.0)
            written += patches.nbytes + features.nbytes
        return written

    shares = [n // threads + (1 if k < n % threads else 0) for k in range(threads)]
    cpu = _cpu_seconds()
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(threads) as pool:
        written = sum(pool.map(one, shares))
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": _cpu_seconds() - cpu,
        "n_parcels": n,
        "threads": threads,
        "written_bytes": written,
    }


def child_exactextract(data: SyntheticData, subset: str) -> dict[str, Any]:
    from exactextract import exact_extract

    from cropmodels.stack import open_stack

    gdf = _parcels(data, subset)
    stack = open_stack(data.stack)
    files = [e.bands[0].path for e in stack.dates]  # 10 bands each: 10 x T rasters
    base = _rss_mb()
    cpu = _cpu_seconds()
    started = time.perf_counter()
    frame = exact_extract(files, gdf, ["mean", "stdev"], output="pandas")
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_seconds": _cpu_seconds() - cpu,
        "subset": subset,
        "n_parcels": len(frame),
        "n_columns": frame.shape[1],
        "rasters": f"{len(files)} files x 10 bands",
        "baseline_rss_mb": base,
        "peak_rss_mb": _peak_rss_mb(),
    }


def child_store(data: SyntheticData, subset: str, memory_mb: float) -> dict[str, Any]:
    import shutil

    from cropmodels.extract import ExtractConfig, extract
    from cropmodels.stack import open_stack
    from cropmodels.store import Store, write_store

    gdf = _parcels(data, subset)
    stack = open_stack(data.stack)
    out = data.root / f"store_{subset}.zarr"
    started = time.perf_counter()
    summary = write_store(
        extract(gdf, stack, ExtractConfig(memory_mb=memory_mb)),
        out,
        n_parcels=len(gdf),
        stack_description=stack.describe(),
        dates=[e.date.isoformat() for e in stack.dates],
        parcel_ids=list(gdf["parcel_id"]),
        labels=list(gdf["crop_code"]),
        label_field="crop_code",
        overwrite=True,
    )
    seconds = time.perf_counter() - started
    store = Store(out)
    started = time.perf_counter()
    n_read = sum(len(b) for b in store.iter_batches(32, store.usable_indices(), shuffle=True))
    read_seconds = time.perf_counter() - started
    result = {
        "seconds_extract_and_write": seconds,
        "subset": subset,
        "n_parcels": summary.n_parcels,
        "n_usable": summary.n_usable,
        "bytes_on_disk": summary.bytes_on_disk,
        "bytes_per_parcel": summary.bytes_per_parcel,
        "bytes_by_array": store.bytes_by_array(),
        "n_dates": len(store.dates),
        "iter_batches_seconds": read_seconds,
        "iter_batches_parcels": n_read,
        "peak_rss_mb": _peak_rss_mb(),
    }
    shutil.rmtree(out)
    return result


def child_profile(data: SyntheticData, subset: str, memory_mb: float) -> dict[str, Any]:
    """cProfile of every thread (the extractor reads and processes parcels on worker threads).

    Per-thread profilers timed in thread CPU time (waiting for a core or the GIL does not
    count), then merged; times of functions run on several threads add up.
    """
    import cProfile
    import io
    import pstats
    import threading

    from cropmodels.extract import ExtractConfig, extract
    from cropmodels.stack import open_stack

    gdf = _parcels(data, subset)
    stack = open_stack(data.stack)
    profilers: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_thread_profiler(*_: Any) -> None:
        profiler = cProfile.Profile(time.thread_time)  # CPU time: waits do not count
        with lock:
            profilers.append(profiler)
        profiler.enable()  # replaces this hook for the rest of the thread

    main = cProfile.Profile(time.thread_time)
    threading.setprofile(start_thread_profiler)
    started = time.perf_counter()
    main.enable()
    for _ in extract(gdf, stack, ExtractConfig(memory_mb=memory_mb)):
        pass
    main.disable()
    seconds = time.perf_counter() - started
    threading.setprofile(None)  # the worker threads have ended (extract closes its pools)
    text = io.StringIO()
    stats = pstats.Stats(main, stream=text)
    for profiler in profilers:
        stats.add(profiler)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    wanted = {
        ("extract.py", "process"),
        ("extract.py", "resize_masked"),
        ("extract.py", "interpolate_in_time"),
        ("extract.py", "parcel_features"),
        ("features.py", "rasterize"),
        ("stack.py", "read"),
    }
    cumulative: dict[str, float] = {}
    for (path, _line, func), entry in stats.stats.items():  # type: ignore[attr-defined]
        if (Path(path).name, func) in wanted:
            name = f"{Path(path).name}:{func}"
            cumulative[name] = cumulative.get(name, 0.0) + entry[3]  # cumulative time
    return {
        "seconds_profiled": seconds,
        "subset": subset,
        "threads": len(profilers) + 1,
        "cpu_seconds_in": cumulative,
        "report": text.getvalue(),
    }


# -- orchestration ---------------------------------------------------------------------------


def run_child(args: argparse.Namespace, task: str, **options: Any) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        task,
        "--size",
        str(args.size),
        "--dates",
        str(args.dates),
        "--seed",
        str(args.seed),
        "--memory-mb",
        str(args.memory_mb),
    ]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "PROJ_DATA": os.environ.get("PROJ_DATA", "/usr/share/proj")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"benchmark step {task} {options} failed ({done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def warm_up(data: SyntheticData) -> float:
    """Read every file once so that every measurement starts from the page cache."""
    started = time.perf_counter()
    for folder in ("stack", "scl"):
        for path in sorted((data.root / folder).iterdir()):
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass
    return time.perf_counter() - started


def report(name: str, value: Any, goal: str, results: dict[str, Any]) -> None:
    results.setdefault("figures", {})[name] = value
    text = f"{value:.3f}" if isinstance(value, float) else f"{value:,}"
    print(f"{name}: {text} ({goal})", flush=True)


def main(argv: list[str] | None = None) -> int:
    from cropmodels.extract import ExtractConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size",
        type=int,
        default=2745,
        help="pixels per side of the synthetic area (default 2745 = 27.45 km: 1/16 of a "
        "10980 px Sentinel-2 tile, as bench_scale.py; 2048 builds faster)",
    )
    parser.add_argument("--dates", type=int, default=24, help="dates in the stack (paper: 24)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--memory-mb",
        type=float,
        default=ExtractConfig.memory_mb,
        help="extractor memory budget (default: ExtractConfig.memory_mb)",
    )
    parser.add_argument("--regenerate", action="store_true", help="rebuild the cached data")
    parser.add_argument("--profile", action="store_true", help="also profile the extraction")
    parser.add_argument("--skip-exactextract", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--subset", default="all", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    spec = SyntheticSpec(size=args.size, dates=args.dates, seed=args.seed)

    if args.child:
        data = ensure_dataset(spec, log=lambda _m: None)
        tasks = {
            "read": lambda: child_read(data, args.threads),
            "extract": lambda: child_extract(data, args.subset, args.memory_mb),
            "exactextract": lambda: child_exactextract(data, args.subset),
            "floor": lambda: child_output_floor(data, args.subset, args.threads),
            "store": lambda: child_store(data, args.subset, args.memory_mb),
            "profile": lambda: child_profile(data, args.subset, args.memory_mb),
        }
        print(json.dumps(tasks[args.child](), default=str))
        return 0

    data = ensure_dataset(spec, regenerate=args.regenerate)
    workers = ExtractConfig().n_workers()
    m = data.manifest
    results: dict[str, Any] = {
        "benchmark": "extract",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # The code measured: extract.py and store.py change; keep figures traceable.
        "sources_sha256": {
            name: hashlib.sha256((ROOT / "cropmodels" / name).read_bytes()).hexdigest()[:16]
            for name in ("extract.py", "stack.py", "store.py")
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "data": {
            k: m[k]
            for k in (
                "spec",
                "n_parcels",
                "parcel_area_ha",
                "stack_bytes",
                "scl_bytes",
                "raw_bytes",
                "clear_fraction",
            )
        },
    }
    print(
        f"synthetic stack: {args.size} x {args.size} px x {args.dates} dates x 10 bands "
        f"({m['raw_bytes'] / 1e9:.2f} GB as uint16, {m['stack_bytes'] / 1e9:.2f} GB as DEFLATE "
        f"GeoTIFF), {m['n_parcels']:,} parcels of {m['parcel_area_ha']['min']}-"
        f"{m['parcel_area_ha']['max']} ha (median {m['parcel_area_ha']['median']}); "
        f"{workers} reader threads, memory budget {args.memory_mb:.0f} MB",
        flush=True,
    )
    results["load_average_before"] = os.getloadavg()
    if os.getloadavg()[0] > 0.5:
        print(
            f"note: the machine is busy (load average {os.getloadavg()[0]:.1f}); wall-clock "
            "ratios will be noisy, the CPU-time ratios printed beside them less so"
        )
    results["warm_up_seconds"] = warm_up(data)
    steps = results["steps"] = {}

    print("\n(a) reference: read every band of every date and every SCL with rasterio", flush=True)
    steps["read_1_thread"] = run_child(args, "read", threads=1)
    steps["read_n_threads"] = run_child(args, "read", threads=workers)
    for key in ("read_1_thread", "read_n_threads"):
        s = steps[key]
        print(
            f"  {s['threads']} thread(s): {s['seconds']:.2f} s "
            f"({s['decoded_bytes'] / s['seconds'] / 1e6:.0f} MB/s decoded)"
        )

    print("\n(b) extract(): patches + features of every parcel (iterator consumed)", flush=True)
    steps["extract_all"] = run_child(args, "extract", subset="all")
    b = steps["extract_all"]
    print(
        f"  {b['n_parcels']:,} parcels: {b['seconds']:.2f} s "
        f"({b['n_parcels'] / b['seconds']:.0f} parcels/s), {b['counts']}"
    )
    report(
        "extract_vs_read_ratio",
        b["seconds"] / steps["read_n_threads"]["seconds"],
        f"goal <= 1.5; reference read with the extractor's {workers} threads",
        results,
    )
    report(
        "extract_vs_read_1_thread_ratio",
        b["seconds"] / steps["read_1_thread"]["seconds"],
        "informative: reference read on one thread",
        results,
    )
    report(
        "extract_vs_read_cpu_ratio",
        b["cpu_seconds"] / steps["read_n_threads"]["cpu_seconds"],
        "informative: CPU time (all threads) instead of wall-clock time",
        results,
    )

    steps["output_floor"] = f = run_child(args, "floor", subset="all", threads=workers)
    print(
        f"  floor: writing the outputs once ({f['written_bytes'] / 1e9:.1f} GB of float32 "
        f"patches and features, {f['written_bytes'] / steps['read_n_threads']['decoded_bytes']:.1f}"
        f" x the decoded stack): {f['seconds']:.2f} s"
    )
    report(
        "output_floor_vs_read_ratio",
        f["seconds"] / steps["read_n_threads"]["seconds"],
        "informative: a floor under extract_vs_read_ratio for any extractor of these outputs",
        results,
    )

    if not args.skip_exactextract:
        print("\n(c) exactextract mean + stdev of 10 bands x T dates, same parcels", flush=True)
        steps["exactextract_all"] = run_child(args, "exactextract", subset="all")
        c = steps["exactextract_all"]
        print(f"  {c['n_parcels']:,} parcels x {c['n_columns']} statistics: {c['seconds']:.2f} s")
        report(
            "extract_vs_exactextract_ratio",
            b["seconds"] / c["seconds"],
            "goal <= 1.0; ours = read + cloud mask + time interpolation + 32x32 patches + "
            "mean/std features, exactextract = mean/std only, no cloud masking",
            results,
        )
        report(
            "extract_vs_exactextract_cpu_ratio",
            b["cpu_seconds"] / c["cpu_seconds"],
            "informative: CPU time; exactextract runs on one thread, extract() on several",
            results,
        )

    print("\n(d) peak memory (resident set) of extract() in its own process", flush=True)
    steps["extract_every4"] = run_child(args, "extract", subset="every4")
    steps["extract_quadrant"] = run_child(args, "extract", subset="quadrant")
    n4, n1, nq = steps["extract_all"], steps["extract_every4"], steps["extract_quadrant"]
    for key, s in (("N (every 4th)", n1), ("4N (all)", n4), ("N (top-left quarter)", nq)):
        print(
            f"  {key}: {s['n_parcels']:,} parcels, peak {s['peak_rss_mb']:.0f} MB "
            f"(after imports {s['baseline_rss_mb']:.0f} MB), row buffer peak "
            f"{s['peak_buffer_mb']:.0f} MB, {s['seconds']:.2f} s"
        )
    report(
        "peak_rss_ratio_4n_vs_n",
        n4["peak_rss_mb"] / n1["peak_rss_mb"],
        "goal: flat (~1); 4N = all parcels, N = every 4th, same area",
        results,
    )
    increment = (n4["peak_rss_mb"] - n4["baseline_rss_mb"]) / (
        n1["peak_rss_mb"] - n1["baseline_rss_mb"]
    )
    report(
        "peak_rss_increment_ratio_4n_vs_n",
        increment,
        "goal: flat (~1); the same without the memory held after imports",
        results,
    )
    report(
        "peak_rss_ratio_4x_area",
        n4["peak_rss_mb"] / nq["peak_rss_mb"],
        "informative: 4N on 4x the area vs N on a quarter; row buffer follows the width",
        results,
    )

    print("\n(e) store: extract + write_store of N (every 4th) parcels", flush=True)
    steps["store_every4"] = run_child(args, "store", subset="every4")
    s = steps["store_every4"]
    raw_per_parcel = s["n_dates"] * 10 * 32 * 32 * 2
    print(
        f"  {s['n_parcels']:,} parcels: {s['bytes_on_disk'] / 1e6:.1f} MB; by array (MB): "
        + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in sorted(s["bytes_by_array"].items()))
    )
    report(
        "store_bytes_per_parcel",
        round(s["bytes_per_parcel"]),
        f"{s['n_dates']} dates; raw uint16 patches are {raw_per_parcel:,}",
        results,
    )
    report(
        "store_compression_ratio",
        raw_per_parcel / s["bytes_per_parcel"],
        "raw uint16 patches / store bytes, all arrays included",
        results,
    )
    paper = PAPER_PARCELS * s["bytes_per_parcel"] * PAPER_DATES / s["n_dates"]
    report(
        "store_paper_dataset_gb",
        paper / 1e9,
        f"extrapolated to {PAPER_PARCELS:,} parcels x {PAPER_DATES} dates; "
        f"raw uint16 {PAPER_RAW_BYTES / 1e9:.1f} GB",
        results,
    )
    report(
        "store_write_overhead_ratio",
        s["seconds_extract_and_write"] / n1["seconds"],
        "informative: extract + write_store / extract alone, same parcels",
        results,
    )
    report(
        "store_read_parcels_per_second",
        s["iter_batches_parcels"] / s["iter_batches_seconds"],
        "informative: iter_batches(32, shuffle=True), patches+mask+features",
        results,
    )

    if args.profile:
        print("\n(f) profile of extract() on all parcels (every thread)", flush=True)
        steps["profile"] = run_child(args, "profile", subset="all")
        print(steps["profile"]["report"])
        shares = dict(steps["profile"]["cpu_seconds_in"])
        total = shares.pop("extract.py:process", 0.0) or 1.0
        reading = shares.pop("stack.py:read", 0.0)
        print(f"  CPU seconds (profiled, so inflated), all threads: parcel processing {total:.1f}")
        for name, seconds in sorted(shares.items(), key=lambda kv: -kv[1]):
            print(f"    {name}: {seconds:.2f} s ({seconds / total:.0%} of parcel processing)")
        print(f"  reading and decoding the stack (stack.py:read): {reading:.1f}")
        if "extract.py:parcel_features" in shares:
            report(
                "features_share_of_parcel_processing",
                shares["extract.py:parcel_features"] / total,
                "informative: handcrafted features alone, of the per-parcel CPU time",
                results,
            )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
