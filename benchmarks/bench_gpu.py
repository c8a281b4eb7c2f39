"""The GPU figures of the performance issue, in one short run on a lent GPU.

Needs only PyTorch with CUDA and numpy (no GDAL stack), so that it runs as it is on the device
machine's own Python. Random inputs of the paper's shape (24 dates, 10 bands, 32 x 32 px),
19 classes, BatchNorm statistics as after training:

1. **Inference** of ``cnn_gru9`` as ``classify`` runs it on CUDA (``for_inference`` on the
   device, float16 autocast): parcels per second at batches of 256 to 8,192
   - with the inputs already on the GPU (the model alone; goal >= 50,000 parcels/s),
   - from pinned host memory as float32 (what ``classify`` sends) and as uint16 (the quantised
     values a store holds, converted on the GPU: half the bytes over the bus),
   and the share of parcels whose class is the float32 model's.
2. Every registry model at the goal model's best batch size, inputs on the GPU.
3. **One training epoch of 120,000 parcels** of ``cnn_gru9`` with the paper's protocol (batch
   32, Adam, float16 autocast with gradient scaling, as ``cropmodels.train`` trains on CUDA):
   seconds per epoch. Batches are drawn at random from 16,384 distinct parcels held on the GPU
   as uint16 and normalised there (the epoch's 120,000 would take 59 GB), so this measures the
   GPU's share; reading a store is measured on the CPU by ``bench_extract.py``.

    python3 benchmarks/bench_gpu.py [--quick] [--out FILE]

Writes ``benchmarks/results/gpu.json`` (``$OUT/gpu.json`` when ``OUT`` is set, as on the device
machine). Without CUDA it says so and measures nothing (``make bench`` runs it too);
``--device cpu --sizes 4 --epoch 64`` runs every step on the CPU, to check the script where
there is no GPU (a test does): its figures mean nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from _common import timed_calls, trained_like, write_record  # noqa: E402

DATES = 24
N_CLASSES = 19
GOAL_MODEL = "cnn_gru9"
INFER_GOAL = 50_000
EPOCH = 120_000
POOL = 16_384


def inputs(name: str, n: int, device):
    import torch

    from cropmodels.architectures import FEATURES, get_spec

    if get_spec(name).input_kind == FEATURES:
        return torch.randn(n, DATES, 20, device=device)
    return torch.randn(n, DATES, 10, 32, 32, device=device)


def synchronizer(device):
    import torch

    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def rate(run, n: int, seconds: float, sync) -> float:
    """Items per second of ``run()`` (which handles ``n`` items), after two warm-up calls."""
    calls, elapsed = timed_calls(run, seconds, sync)
    return n * calls / elapsed


def bench_inference(device, sizes: list[int], seconds: float) -> dict:
    import torch

    from cropmodels.inference import for_inference
    from cropmodels.train import AMP_EXCLUDED

    cuda = device.type == "cuda"
    model = trained_like(GOAL_MODEL, N_CLASSES, device)
    fast = for_inference(model, device)
    amp = cuda and GOAL_MODEL not in AMP_EXCLUDED
    out: dict = {}
    for n in sizes:
        try:
            out[n] = r = infer_at(model, fast, amp, n, device, seconds)
        except torch.cuda.OutOfMemoryError:
            out[n] = {"error": "out of memory"}
            print(f"{GOAL_MODEL} batch {n}: out of memory", flush=True)
        else:
            print(f"{GOAL_MODEL} batch {n}: {r['on_gpu_parcels_per_s']:,.0f} parcels/s on the "
                  f"GPU, {r['from_host_float32_parcels_per_s']:,.0f} from host float32, "
                  f"{r['from_host_uint16_parcels_per_s']:,.0f} from host uint16; same class "
                  f"{r['same_class_share_vs_fp32']:.4f}", flush=True)  # fmt: skip
        if cuda:
            torch.cuda.empty_cache()
    return out


def infer_at(model, fast, amp: bool, n: int, device, seconds: float) -> dict:
    """The inference figures at batch ``n`` (see the module docstring)."""
    import torch

    sync = synchronizer(device)
    doy = torch.arange(1, 1 + 10 * DATES, 10, device=device).expand(n, -1)
    # host copies: float32 as classify sends them, uint16 as a store holds the values
    offset, scale = 3000.0, 1000.0
    host_u16 = (inputs(GOAL_MODEL, n, "cpu") * scale + offset).clamp_(0, 65535).round_()
    host_u16 = host_u16.to(torch.int32).to(torch.uint16)
    host_f32 = host_u16.to(torch.float32)
    if device.type == "cuda":
        host_u16, host_f32 = host_u16.pin_memory(), host_f32.pin_memory()
    x_model = (host_f32.to(device) - offset) / scale

    def forward(xt):
        with torch.inference_mode(), torch.autocast(device.type, torch.float16, enabled=amp):
            return fast(xt, doy=doy)

    def from_f32():
        return forward((host_f32.to(device, non_blocking=True) - offset) / scale)

    def from_u16():
        xt = host_u16.to(device, non_blocking=True).to(torch.float32)
        return forward((xt - offset) / scale)

    with torch.inference_mode():
        reference = model(x_model, doy=doy).argmax(1)
        same = float((forward(x_model).argmax(1) == reference).float().mean())
    return {
        "on_gpu_parcels_per_s": rate(lambda: forward(x_model), n, seconds, sync),
        "from_host_float32_parcels_per_s": rate(from_f32, n, seconds, sync),
        "from_host_uint16_parcels_per_s": rate(from_u16, n, seconds, sync),
        "same_class_share_vs_fp32": same,
    }


def bench_models(device, batch: int, seconds: float) -> dict:
    import torch

    from cropmodels.architectures import list_models
    from cropmodels.inference import for_inference
    from cropmodels.train import AMP_EXCLUDED

    cuda = device.type == "cuda"
    out = {}
    for name in list_models():
        fast = for_inference(trained_like(name, N_CLASSES, device), device)
        x = inputs(name, batch, device)
        doy = torch.arange(1, 1 + 10 * DATES, 10, device=device).expand(batch, -1)
        amp = cuda and name not in AMP_EXCLUDED

        def run(fast=fast, x=x, doy=doy, amp=amp):
            with torch.inference_mode(), torch.autocast(device.type, torch.float16, enabled=amp):
                return fast(x, doy=doy)

        try:
            out[name] = rate(run, batch, seconds, synchronizer(device))
            print(f"{name}: {out[name]:,.0f} parcels/s (batch {batch})", flush=True)
        except torch.cuda.OutOfMemoryError:
            out[name] = None
            print(f"{name}: out of memory at batch {batch}", flush=True)
        del fast, x
        if cuda:
            torch.cuda.empty_cache()
    return out


def bench_epoch(device, n_parcels: int) -> dict:
    """One epoch of ``n_parcels`` at batch 32, as cropmodels.train trains on CUDA."""
    import torch

    from cropmodels.architectures import get_model

    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = get_model(GOAL_MODEL, n_classes=N_CLASSES).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    pool = min(POOL, n_parcels)
    gen = torch.Generator(device=device).manual_seed(0)
    stored = torch.randint(0, 6000, (pool, DATES, 10, 32, 32), device=device, generator=gen,
                           dtype=torch.int32).to(torch.uint16)  # fmt: skip
    labels = torch.randint(0, N_CLASSES, (pool,), device=device, generator=gen)
    mean = torch.full((DATES, 10, 1, 1), 3000.0, device=device)
    std = torch.full((DATES, 10, 1, 1), 1700.0, device=device)
    doy = torch.arange(1, 1 + 10 * DATES, 10, device=device).expand(32, -1)
    order = torch.randint(0, pool, (n_parcels,), device=device, generator=gen)

    def step(idx) -> torch.Tensor:
        x = (stored[idx].to(torch.float32) - mean) / std
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, torch.float16, enabled=cuda):
            logits = model(x, doy=doy[: len(idx)])
        loss = torch.nn.functional.cross_entropy(logits.float(), labels[idx])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss

    sync = synchronizer(device)
    for i in range(min(5, n_parcels // 32)):  # warm-up (cuDNN algorithm choice)
        step(order[i * 32 : (i + 1) * 32])
    sync()
    start = time.perf_counter()
    total = torch.zeros((), device=device)
    for s in range(0, n_parcels, 32):
        total += step(order[s : s + 32]).detach()
    sync()
    seconds = time.perf_counter() - start
    result = {
        "parcels": n_parcels,
        "batch": 32,
        "seconds": seconds,
        "samples_per_s": n_parcels / seconds,
        "mean_loss": float(total) / -(-n_parcels // 32),
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
    }
    print(f"one epoch of {n_parcels:,} parcels ({GOAL_MODEL}, batch 32, AMP): {seconds:.1f} s, "
          f"{result['samples_per_s']:,.0f} samples/s", flush=True)  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes, 1/10 of an epoch")
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per figure")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu only checks")
    parser.add_argument("--sizes", help="comma-separated inference batch sizes")
    parser.add_argument("--epoch", type=int, help=f"parcels per epoch (default {EPOCH:,})")
    default_out = Path(os.environ["OUT"]) / "gpu.json" if os.environ.get("OUT") else (
        ROOT / "benchmarks" / "results" / "gpu.json")  # fmt: skip
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here, nothing measured (run it where a GPU is: "
              "benchmarks/README.md)")  # fmt: skip
        return 0
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{device.type} (a check of the script, not a GPU figure)"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    sizes = [1024, 4096] if args.quick else [256, 1024, 4096, 8192]
    if args.sizes:
        sizes = [int(v) for v in args.sizes.split(",")]
    n_epoch = args.epoch or (EPOCH // 10 if args.quick else EPOCH)
    inference = bench_inference(device, sizes, args.seconds)
    best = max((r["on_gpu_parcels_per_s"], n) for n, r in inference.items() if "error" not in r)
    print(f"{GOAL_MODEL}_gpu_parcels_per_s: {best[0]:,.0f} (goal >= {INFER_GOAL:,}; batch "
          f"{best[1]}, inputs on the GPU)", flush=True)  # fmt: skip
    models = bench_models(device, best[1], args.seconds)
    epoch = bench_epoch(device, n_epoch)
    print(f"{GOAL_MODEL}_epoch_seconds: {epoch['seconds'] * EPOCH / n_epoch:.1f} (one epoch of "
          f"{EPOCH:,} parcels; measured on {n_epoch:,})")  # fmt: skip
    record = {
        "benchmark": "gpu",
        "device_name": name,
        "torch": torch.__version__,
        "inference": {str(k): v for k, v in inference.items()},
        "models_parcels_per_s": models,
        "epoch": epoch,
    }
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
