"""What several benchmarks share. Imports only the standard library at module level (bench_gpu
runs where only torch and numpy are installed)."""

from __future__ import annotations

import json
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


def write_record(path: str | Path, record: dict[str, Any]) -> None:
    """``record`` as indented JSON at ``path`` (folders made), and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"written to {out}")
