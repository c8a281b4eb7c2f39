"""Other inference routes for a patch model, against the one ``classify`` runs on a CPU.

The performance issue asked to try, besides what :mod:`cropmodels.inference` does, "torch.compile,
dynamic int8 for the recurrent and linear layers, ONNX Runtime; keep what wins". This measures
each on one torch thread (``classify`` runs one forward thread per core, each with one torch
thread), batches of 64 parcels x 24 dates, random inputs, BatchNorm statistics as after
training, timed interleaved in the same run:

- ``fast``: :func:`cropmodels.inference.for_inference`, the reference (what ships);
- ``compiled``: ``torch.compile(fast)`` (Inductor; needs a C++ compiler at run time), with the
  time of its first call (the compilation, from an empty cache as on a user's first run);
- ``dynamic_int8``: ``torch.ao.quantization.quantize_dynamic`` of the GRU and Linear layers,
  against the plain model it rewrites (``fast`` replaces the GRU by a module of its own);
- ``int8_encoder``: ``fast`` with its per-date convolutional encoder statically quantised to
  int8 (eager mode, conv + BatchNorm + ReLU fused, oneDNN engine), calibrated on the timed
  inputs themselves: a best case for its predictions;
- ``onnxruntime``: the plain model exported to ONNX and run by ONNX Runtime's CPU provider on
  one thread, when ``onnxruntime`` and ``onnx`` are importable (they are not dependencies).

For each: parcels per second, the ratio to ``fast``, the share of parcels whose predicted class
is the plain fp32 model's and the largest probability difference. Writes
``benchmarks/results/alternatives.json``; asserts nothing about speed.

    .venv/bin/python benchmarks/bench_alternatives.py [--model cnn_gru9] [--no-compile]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from _common import trained_like, write_record  # noqa: E402

BATCH = 64
DATES = 24
N_CLASSES = 19


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def int8_encoder(model, fast, frames):
    """``fast`` with the plain model's encoder quantised (fused, calibrated on ``frames``)."""
    import copy

    import torch
    import torch.ao.quantization as tq
    from torch import nn

    if not (isinstance(model.spatial, nn.Sequential) and hasattr(fast.spatial, "encoder")):
        raise TypeError("the model's encoder is not a per-image convolutional encoder")
    torch.backends.quantized.engine = "onednn"
    spatial = copy.deepcopy(model.spatial).eval()
    for i, block in enumerate(spatial):  # (Conv2d, BatchNorm2d, ReLU, MaxPool2d) blocks
        spatial[i] = tq.fuse_modules(block, [["0", "1", "2"]])
    wrapped = tq.QuantWrapper(spatial).eval()
    wrapped.qconfig = tq.get_default_qconfig("onednn")
    prepared = tq.prepare(wrapped)
    with torch.inference_mode():
        prepared(frames)
    quantised = tq.convert(prepared)
    out = copy.deepcopy(fast)
    out.spatial = type(fast.spatial)(quantised)  # ChunkedEncoder around the int8 encoder
    return out


def onnx_session(model, x, doy):
    """An ONNX Runtime session (one thread) of the plain model, or the reason there is none."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime or onnx not installed (pip install onnxruntime onnx)"
    import copy

    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, doy):
            return self.inner(x, doy=doy)

    # A copy: exporting changed the model it was given (its logits moved by 0.2).
    folder = tempfile.mkdtemp()
    try:
        path = os.path.join(folder, "model.onnx")
        torch.onnx.export(
            Wrapped(copy.deepcopy(model)), (x[:2], doy[:2]), path, input_names=["x", "doy"],
            output_names=["logits"], dynamic_axes={"x": {0: "b"}, "doy": {0: "b"}}, dynamo=False,
        )  # fmt: skip
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    names = [i.name for i in session.get_inputs()]  # doy is dropped when the model ignores it
    feed = {"x": x.numpy(), "doy": doy.numpy()}
    feed = {k: v for k, v in feed.items() if k in names}
    return (lambda: torch.from_numpy(session.run(None, feed)[0])), None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn_gru9")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "alternatives.json"))
    args = parser.parse_args()
    # Compile from scratch, as a user's first run does: a cache of our own, removed at the end.
    cache = tempfile.mkdtemp(prefix="inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    try:
        return run_all(args)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def run_all(args: argparse.Namespace) -> int:
    import torch

    from cropmodels.inference import for_inference

    warnings.filterwarnings("ignore")  # torch.ao's deprecation notices, ONNX export tracing
    torch.set_num_threads(1)
    model = trained_like(args.model, N_CLASSES)
    fast = for_inference(model)
    x = torch.randn(BATCH, DATES, 10, 32, 32)
    doy = torch.arange(1, 1 + 10 * DATES, 10).expand(BATCH, -1).contiguous()
    runs: dict[str, Callable[[], torch.Tensor]] = {
        "plain": lambda: model(x, doy=doy),
        "fast": lambda: fast(x, doy=doy),
    }
    notes: dict[str, str] = {}
    extra: dict[str, float] = {}
    if args.no_compile:
        notes["compiled"] = "skipped (--no-compile)"
    elif shutil.which("c++") is None and shutil.which("g++") is None:
        notes["compiled"] = "no C++ compiler: torch.compile's CPU code generation needs one"
    else:
        compiled = torch.compile(fast)
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                compiled(x, doy=doy)
        except Exception as exc:  # a compiler error is a finding here, not a crash
            notes["compiled"] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        else:
            extra["compiled_first_call_seconds"] = time.perf_counter() - start
            runs["compiled"] = lambda: compiled(x, doy=doy)
    dynamic = torch.ao.quantization.quantize_dynamic(
        model, {torch.nn.GRU, torch.nn.Linear}, dtype=torch.qint8
    )
    runs["dynamic_int8"] = lambda: dynamic(x, doy=doy)
    try:
        quantised = int8_encoder(model, fast, x.reshape(-1, 10, 32, 32))
    except (TypeError, AttributeError, RuntimeError) as exc:
        notes["int8_encoder"] = f"not applicable: {exc}"
    else:
        runs["int8_encoder"] = lambda: quantised(x, doy=doy)
    session, why = onnx_session(model, x, doy)
    if session is None:
        notes["onnxruntime"] = why
    else:
        runs["onnxruntime"] = session

    with torch.inference_mode():
        reference = torch.softmax(model(x, doy=doy), 1)
        results: dict[str, dict[str, float]] = {}
        for name, run in runs.items():
            p = torch.softmax(run().float(), 1)
            results[name] = {
                "same_class_share": float((p.argmax(1) == reference.argmax(1)).float().mean()),
                "max_probability_difference": float((p - reference).abs().max()),
                "seconds": [],
            }
        for _ in range(args.repeats):  # interleaved: a busy moment slows every route alike
            for name, run in runs.items():
                results[name]["seconds"].append(timed(run))
    base = BATCH / statistics.median(results["fast"]["seconds"])
    print(f"{args.model}, one torch thread, batches of {BATCH} parcels x {DATES} dates")
    for name, r in results.items():
        r["parcels_per_s"] = BATCH / statistics.median(r.pop("seconds"))
        r["ratio_to_fast"] = r["parcels_per_s"] / base
        print(
            f"{name}_vs_fast_ratio: {r['ratio_to_fast']:.2f} ({r['parcels_per_s']:.0f} parcels/s; "
            f"same class {r['same_class_share']:.3f}, max dp {r['max_probability_difference']:.1e})"
        )
    if "compiled_first_call_seconds" in extra:
        print(f"compiled_first_call_seconds: {extra['compiled_first_call_seconds']:.1f}")
    for name, why in notes.items():
        print(f"{name}: {why}")
    record = {
        "benchmark": "alternative inference routes vs cropmodels.inference, one torch thread",
        "model": args.model,
        "batch": BATCH,
        "dates": DATES,
        "torch": torch.__version__,
        "load_average": os.getloadavg()[0],
        "results": results,
        "notes": notes,
        **extra,
    }
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
