"""What this Python environment can run: versions of the stack and which device torch would use.

Used by ``python -m cropmodels doctor`` and by the plugin's diagnostics. Every probe is guarded:
a missing or broken package is reported, never raised, because this is what users run when
something is wrong.
"""

from __future__ import annotations

import importlib
import platform
import sys
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Package:
    name: str
    version: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.version is not None


@dataclass
class Report:
    python: str
    platform: str
    packages: list[Package] = field(default_factory=list)
    gdal: str | None = None
    proj: str | None = None
    cuda_available: bool = False
    cuda_reason: str = ""
    devices: list[dict[str, Any]] = field(default_factory=list)
    default_device: str = "cpu"

    @property
    def missing(self) -> list[str]:
        return [p.name for p in self.packages if not p.ok]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["missing"] = self.missing
        return data

    def to_text(self) -> str:
        lines = [f"Python      {self.python} ({self.platform})"]
        for pkg in self.packages:
            shown = pkg.version if pkg.ok else f"MISSING ({pkg.error})"
            lines.append(f"{pkg.name:<11} {shown}")
        lines.append(f"GDAL        {self.gdal or 'unknown'}")
        lines.append(f"PROJ        {self.proj or 'unknown'}")
        lines.append(
            f"CUDA        {'available' if self.cuda_available else 'not available'}"
            f"{': ' + self.cuda_reason if self.cuda_reason else ''}"
        )
        for dev in self.devices:
            lines.append(f"  {dev['id']}: {dev['name']}, {dev['memory_gib']:.1f} GiB")
        lines.append(f"Device      a run with device 'auto' uses {self.default_device}")
        return "\n".join(lines)


# Packages the core needs, in the order users care about them.
REQUIRED = ("numpy", "torch", "safetensors", "rasterio", "geopandas", "shapely", "pyproj")


def _probe(name: str) -> Package:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # a broken install raises more than ImportError
        return Package(name, None, f"{type(exc).__name__}: {exc}")
    return Package(name, str(getattr(module, "__version__", "unknown")))


def _gdal_proj() -> tuple[str | None, str | None]:
    gdal_version = proj_version = None
    try:
        import rasterio

        gdal_version = rasterio.__gdal_version__
    except Exception:
        pass
    try:
        import pyproj

        proj_version = pyproj.proj_version_str
    except Exception:
        pass
    return gdal_version, proj_version


def _cuda(report: Report) -> None:
    try:
        import torch
    except Exception as exc:
        report.cuda_reason = f"torch is not importable ({exc})"
        return
    if torch.version.cuda is None:
        report.cuda_reason = f"this torch build ({torch.__version__}) is CPU-only"
        return
    if not torch.cuda.is_available():
        report.cuda_reason = (
            "torch has CUDA support but sees no usable GPU (driver or device missing)"
        )
        return
    report.cuda_available = True
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        report.devices.append(
            {"id": f"cuda:{index}", "name": props.name, "memory_gib": props.total_memory / 2**30}
        )
    report.default_device = "cuda:0"


def collect() -> Report:
    """Probe the environment. Importing torch here is deliberate: this is the diagnosis."""
    report = Report(python=sys.version.split()[0], platform=platform.platform())
    report.packages = [_probe(name) for name in REQUIRED]
    report.gdal, report.proj = _gdal_proj()
    _cuda(report)
    return report
