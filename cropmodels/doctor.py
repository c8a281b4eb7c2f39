"""What this Python environment can run: versions of the stack and which device torch would use.

Used by ``python -m cropmodels doctor`` and by the plugin's diagnostics. Every probe is guarded:
a missing or broken package is reported, never raised, because this is what users run when
something is wrong.
"""

from __future__ import annotations

import importlib
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .deps import ALL_REQUIREMENTS, Requirement, query_nvidia_smi, recommend_build
from .device import check_device_works, choose_device, cuda_unavailable_reason


@dataclass
class Package:
    name: str
    version: str | None
    error: str | None = None
    location: str | None = None

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
    torch_build: str | None = None
    cuda_available: bool = False
    cuda_reason: str = ""
    devices: list[dict[str, Any]] = field(default_factory=list)
    nvidia_smi: str = ""
    recommended_build: str = ""
    recommended_reason: str = ""
    device_asked: str = "auto"
    default_device: str = "cpu"
    default_device_reason: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        return [p.name for p in self.packages if not p.ok]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["missing"] = self.missing
        return data

    def to_text(self, extra_rows: Sequence[tuple[str, str]] = ()) -> str:
        """The report as aligned ``label  value`` lines; ``extra_rows`` (e.g. the QGIS version)
        come first, in the same columns."""
        return format_rows([*extra_rows, *self.rows()])

    def rows(self) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = [("Python", f"{self.python} ({self.platform})")]
        for pkg in self.packages:
            rows.append((pkg.name, pkg.version if pkg.ok else f"MISSING ({pkg.error})"))
        rows += [("GDAL", self.gdal or "unknown"), ("PROJ", self.proj or "unknown")]
        if self.torch_build:
            rows.append(("torch build", self.torch_build))
        rows.append((
            "CUDA",
            f"{'available' if self.cuda_available else 'not available'}"
            f"{': ' + self.cuda_reason if self.cuda_reason else ''}",
        ))  # fmt: skip
        rows += [("", f"{d['id']}: {d['name']}, {d['memory_gib']:.1f} GiB") for d in self.devices]
        if self.nvidia_smi:
            rows.append(("GPU", self.nvidia_smi))
        if self.recommended_build:
            rows.append(
                (
                    "Recommended",
                    f"{self.recommended_build} build of torch: {self.recommended_reason}",
                )
            )
        rows.append((
            "Device",
            f"a run with device '{self.device_asked}' uses {self.default_device}"
            f"{': ' + self.default_device_reason if self.default_device_reason else ''}",
        ))  # fmt: skip
        rows += [("Note", note) for note in self.notes]
        where = [(p.name, p.location) for p in self.packages if p.ok and p.location]
        if where:
            rows.append(("Loaded from", ""))
            rows += [(f"  {name}", str(location)) for name, location in where]
        return rows


def format_rows(rows: Sequence[tuple[str, str]]) -> str:
    width = max((len(label) for label, _ in rows), default=0)
    return "\n".join(f"{label:<{width}} {value}".rstrip() for label, value in rows)


def _probe(requirement: Requirement) -> Package:
    try:
        module = importlib.import_module(requirement.module)
    except Exception as exc:  # a broken install raises more than ImportError
        return Package(requirement.name, None, f"{type(exc).__name__}: {exc}")
    where = getattr(module, "__file__", None)
    location = None
    if where:  # the folder on sys.path it came from
        path = Path(where).parent
        location = str(path.parent if Path(where).name == "__init__.py" else path)
    return Package(requirement.name, str(getattr(module, "__version__", "unknown")), None, location)


def _gdal_proj(report: Report) -> None:
    """GDAL as QGIS loads it (``osgeo``), else rasterio's; PROJ from pyproj. Two different
    GDALs in one process (a rasterio wheel bundling its own) is worth a note."""
    osgeo_gdal = rasterio_gdal = None
    try:
        from osgeo import gdal

        osgeo_gdal = gdal.__version__
    except Exception:
        pass
    try:
        import rasterio

        rasterio_gdal = rasterio.__gdal_version__
    except Exception:
        pass
    report.gdal = osgeo_gdal or rasterio_gdal
    if osgeo_gdal and rasterio_gdal and osgeo_gdal != rasterio_gdal:
        report.notes.append(
            f"rasterio brings its own GDAL {rasterio_gdal} beside QGIS's {osgeo_gdal}: install "
            "rasterio from the same distribution as QGIS"
        )
    try:
        import pyproj

        report.proj = pyproj.proj_version_str
    except Exception:
        pass


def _cuda(report: Report) -> None:
    try:
        import torch
    except Exception as exc:
        report.cuda_reason = f"torch is not importable ({exc})"
        return
    report.torch_build = f"{torch.__version__}, " + (
        f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
    )
    reason = cuda_unavailable_reason(torch)
    if reason is not None:
        report.cuda_reason = reason
        return
    report.cuda_available = True
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        report.devices.append(
            {"id": f"cuda:{index}", "name": props.name, "memory_gib": props.total_memory / 2**30}
        )


def _device(report: Report, device: str) -> None:
    report.device_asked = device
    try:
        choice = choose_device(device)
    except ValueError as exc:  # an unknown spelling, or a GPU torch cannot use
        report.default_device = "none"
        report.default_device_reason = str(exc)
        return
    except Exception as exc:  # torch missing or broken
        report.default_device = "none"
        report.default_device_reason = f"torch is not importable ({type(exc).__name__}: {exc})"
        return
    choice = check_device_works(choice)
    report.default_device = str(choice.device)
    report.default_device_reason = choice.reason


def _gpu(report: Report) -> None:
    info, said = query_nvidia_smi()
    report.nvidia_smi = said
    choice = recommend_build(info)
    report.recommended_build = choice.build.label
    report.recommended_reason = choice.reason
    if info is not None and info.gpus and report.torch_build and "CPU-only" in report.torch_build:
        report.notes.append(
            f"an NVIDIA GPU is present but torch is a CPU build: install the "
            f"{choice.build.label} build to use it"
        )


def collect(device: str = "auto") -> Report:
    """Probe the environment. Importing torch here is deliberate: this is the diagnosis.
    ``device`` is the device option to explain (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
    report = Report(python=sys.version.split()[0], platform=platform.platform())
    report.packages = [_probe(r) for r in ALL_REQUIREMENTS]
    _gdal_proj(report)
    _cuda(report)
    _gpu(report)
    _device(report, device)
    return report
