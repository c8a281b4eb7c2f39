"""What several benchmarks share. Imports only the standard library at module level (bench_gpu
runs where only torch and numpy are installed)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def trained_like(name: str, n_classes: int, device: Any = None) -> Any:
    """Registry model ``name`` in eval mode, seeded, with BatchNorm running statistics as after
    training (not the identity a fresh model has, which folding would make trivial)."""
    import torch

    from cropmodels.architectures import get_model

    torch.manual_seed(0)
    model = get_model(name, n_classes=n_classes).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model if device is None else model.to(device)


def timed_calls(
    run: Callable[[], object], seconds: float, sync: Callable[[], object], warmup: int = 2
) -> tuple[int, float]:
    """(calls, elapsed seconds) of ``run()`` called until at least ``seconds`` and 3 calls have
    passed, after ``warmup`` calls; ``sync()`` after each (``torch.cuda.synchronize`` on a GPU,
    whose calls return before the work is done)."""
    for _ in range(warmup):
        run()
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        run()
        calls += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 3:
            return calls, elapsed


def write_record(path: str | Path, record: dict[str, Any]) -> None:
    """``record`` as indented JSON at ``path`` (folders made), and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"written to {out}")
