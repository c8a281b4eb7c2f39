"""Inference throughput of every registry model, against a plain forward and the machine's FLOPs.

For each model, in the same run and interleaved (so that a busy machine slows both alike):

- ``plain``: the model as trained, ``eval()`` + ``torch.inference_mode()``, float32;
- ``fast``: :func:`cropmodels.inference.for_inference` (folded BatchNorm, pool before ReLU,
  channels-last convolutions, :class:`~cropmodels.inference.InferenceGRU`), with the share of
  parcels whose predicted class is the plain model's (must be 1.0) and the largest probability
  difference;
- ``threaded``: ``fast`` as classification runs it on a CPU, each batch split over one thread
  per core with one torch thread each (:class:`cropmodels.predict._CpuForwardPool`), the goal
  figure;
- the model's FLOPs per parcel (``torch.utils.flop_counter``) and the machine's float32 matrix
  product rate (a 2048 x 2048 ``torch.mm``), whose ratio is a ceiling in parcels per second.

Batches of 256 parcels x 24 dates (the paper's T31TFM series), random inputs, 19 classes.
Prints ``name: value (goal ...)`` lines and writes ``benchmarks/results/infer.json``; asserts
nothing about speed.

    .venv/bin/python benchmarks/bench_infer.py [--models cnn_gru9,gru] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from _common import trained_like, write_record  # noqa: E402

BATCH = 256
DATES = 24
N_CLASSES = 19
GOAL_MODEL, GOAL = "cnn_gru9", 1000.0


def matmul_gflops(repeats: int) -> float:
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * 2048**3 / statistics.median(times) / 1e9


def bench_model(name: str, repeats: int) -> dict[str, float]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cropmodels.architectures import FEATURES, get_spec
    from cropmodels.inference import for_inference

    model = trained_like(name, N_CLASSES)
    fast = for_inference(model)
    if get_spec(name).input_kind == FEATURES:
        x = torch.randn(BATCH, DATES, 20)
    else:
        x = torch.randn(BATCH, DATES, 10, 32, 32)
    doy = torch.arange(1, 1 + 10 * DATES, 10).expand(BATCH, -1)
    from cropmodels.predict import _CpuForwardPool

    pool = None if get_spec(name).input_kind == FEATURES else _CpuForwardPool.start()

    def slice_forward(a: int, b: int):
        with torch.inference_mode():  # thread-local: entered on the worker
            return fast(x[a:b], doy=doy[a:b]).numpy()

    def threaded():
        if pool is None:
            return fast(x, doy=doy)
        return torch.from_numpy(pool.map_slices(slice_forward, 0, BATCH))

    runs = {"plain": lambda: model(x, doy=doy), "fast": lambda: fast(x, doy=doy),
            "threaded": threaded}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            reference = model(x, doy=doy)
        flops = counter.get_total_flops() / BATCH
        got = fast(x, doy=doy)
        got_threaded = threaded()
        for _ in range(repeats):
            for key, run in runs.items():
                start = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - start)
    if pool is not None:
        pool.close()
    p_ref, p_got = torch.softmax(reference, 1), torch.softmax(got, 1)
    p_threaded = torch.softmax(got_threaded, 1)
    return {
        "plain_parcels_per_s": BATCH / statistics.median(times["plain"]),
        "fast_parcels_per_s": BATCH / statistics.median(times["fast"]),
        # as classify runs it on a CPU: slices on one thread per core, one torch thread each
        "threaded_parcels_per_s": BATCH / statistics.median(times["threaded"]),
        "same_class_share": float(
            min((reference.argmax(1) == g.argmax(1)).float().mean() for g in (got, got_threaded))
        ),
        "max_probability_difference": float(
            max((p_ref - p_got).abs().max(), (p_ref - p_threaded).abs().max())
        ),
        "mflop_per_parcel": flops / 1e6,
    }


def main() -> int:
    import torch

    from cropmodels.architectures import list_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated subset of the registry")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per variant")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "infer.json"))
    args = parser.parse_args()
    if os.getloadavg()[0] > 0.5:
        print(
            f"note: the machine is busy (load average {os.getloadavg()[0]:.1f}); speeds are "
            "low, the ratios measured side by side less affected"
        )
    names = args.models.split(",") if args.models else list_models()
    gflops = matmul_gflops(args.repeats)
    print(f"machine: {gflops:.0f} GFLOP/s float32 matrix product, {torch.get_num_threads()} "
          "torch threads")  # fmt: skip
    results = {}
    for name in names:
        r = results[name] = bench_model(name, args.repeats)
        r["ceiling_parcels_per_s"] = gflops * 1e3 / r["mflop_per_parcel"]
        r["best_parcels_per_s"] = max(r["fast_parcels_per_s"], r["threaded_parcels_per_s"])
        speedup = r["best_parcels_per_s"] / r["plain_parcels_per_s"]
        print(
            f"{name}: {r['threaded_parcels_per_s']:.0f} parcels/s threaded (as classify runs), "
            f"{r['fast_parcels_per_s']:.0f} fast, "
            f"{r['plain_parcels_per_s']:.0f} plain (x{speedup:.2f}), "
            f"{r['mflop_per_parcel']:.0f} MFLOP/parcel, ceiling {r['ceiling_parcels_per_s']:.0f}; "
            f"same class {r['same_class_share']:.3f}, max dp {r['max_probability_difference']:.1e}",
            flush=True,
        )  # fmt: skip
    summary = {}
    if GOAL_MODEL in results:
        r = results[GOAL_MODEL]
        summary = {
            f"{GOAL_MODEL}_parcels_per_s": r["threaded_parcels_per_s"],
            f"{GOAL_MODEL}_speedup_vs_plain_fp32": r["threaded_parcels_per_s"]
            / r["plain_parcels_per_s"],
            f"{GOAL_MODEL}_share_of_flop_ceiling": r["threaded_parcels_per_s"]
            / r["ceiling_parcels_per_s"],
        }
        print(
            f"{GOAL_MODEL}_parcels_per_s: {r['threaded_parcels_per_s']:.0f} "
            f"(goal >= {GOAL:.0f}; as classify runs it on this CPU)"
        )
        print(
            f"{GOAL_MODEL}_speedup_vs_plain_fp32: "
            f"{summary[f'{GOAL_MODEL}_speedup_vs_plain_fp32']:.2f} (informative)"
        )
        print(
            f"{GOAL_MODEL}_share_of_flop_ceiling: "
            f"{summary[f'{GOAL_MODEL}_share_of_flop_ceiling']:.2f} (informative)"
        )
    record = {
        "benchmark": "inference parcels per second, plain fp32 vs cropmodels.inference",
        "batch": BATCH,
        "dates": DATES,
        "classes": N_CLASSES,
        "device_name": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average": os.getloadavg()[0],
        "matmul_gflops": gflops,
        "summary": summary,
        "results": results,
    }
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
