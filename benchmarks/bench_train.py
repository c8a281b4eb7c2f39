"""Training throughput of every registry model: samples per second of a full training step.

One step = forward + cross-entropy + backward + Adam update on a batch of 32 parcels of 24 dates
(the paper's setting: T31TFM has 24 dates), random inputs of the right shape (patches
(32, 24, 10, 32, 32) or features (32, 24, 20)), 19 classes. On CUDA the step runs as training
does: float16 autocast with gradient scaling. Prints ``name: samples/s`` lines and writes
``benchmarks/results/train.json``. Timings only; nothing here asserts a speed.

    .venv/bin/python benchmarks/bench_train.py [--device cpu|cuda|auto] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from _common import timed_calls  # noqa: E402

BATCH = 32
DATES = 24
N_CLASSES = 19


def bench_model(name: str, device, seconds: float, warmup: int = 2) -> dict[str, float]:
    import torch

    from cropmodels.architectures import FEATURES, get_model, get_spec, parameter_count

    torch.manual_seed(0)
    model = get_model(name, n_classes=N_CLASSES).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    if get_spec(name).input_kind == FEATURES:
        x = torch.randn(BATCH, DATES, 20, device=device)
    else:
        x = torch.randn(BATCH, DATES, 10, 32, 32, device=device)
    y = torch.randint(0, N_CLASSES, (BATCH,), device=device)
    doy = torch.arange(1, 1 + 10 * DATES, 10, device=device).expand(BATCH, -1)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            logits = model(x, doy=doy)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    steps, elapsed = timed_calls(step, seconds, sync, warmup)
    return {
        "samples_per_s": BATCH * steps / elapsed,
        "step_ms": 1000 * elapsed / steps,
        "steps": steps,
        "parameters": parameter_count(model),
    }


def main() -> int:
    import torch

    from cropmodels.architectures import list_models
    from cropmodels.train import resolve_device

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model")
    parser.add_argument("--models", help="comma-separated subset of the registry")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train.json"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    names = args.models.split(",") if args.models else list_models()
    results = {}
    for name in names:
        results[name] = bench_model(name, device, args.seconds)
        print(f"{name}: {results[name]['samples_per_s']:.1f}", flush=True)
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    record = {
        "benchmark": "training samples per second (forward + backward + Adam step)",
        "batch": BATCH,
        "dates": DATES,
        "classes": N_CLASSES,
        "device": str(device),
        "device_name": device_name,
        "torch_threads": torch.get_num_threads(),
        "mixed_precision": device.type == "cuda",
        "torch": torch.__version__,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    if not isinstance(previous, dict) or "by_device" not in previous:
        previous = {"by_device": {}}
    previous["by_device"][device.type] = record
    out.write_text(json.dumps(previous, indent=2) + "\n", encoding="utf-8")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
