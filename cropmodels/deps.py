"""What the core needs beyond the distribution, and how it gets into a user's QGIS.

QGIS brings its Python, numpy and the GDAL stack; torch and a few small packages do not come
with it. This module holds everything about them that needs no QGIS, so it is testable on its
own and shared by ``python -m cropmodels doctor`` and the plugin:

* :data:`REQUIREMENTS` and :func:`missing` (``importlib.util.find_spec``: nothing is imported);
* where they are installed: a per-profile *user base* (:func:`dependencies_dir`), whose
  site-packages (:func:`site_dir`) the plugin puts on ``sys.path`` (:func:`add_to_sys_path`);
* which torch build to install: ``nvidia-smi`` parsed (:func:`parse_nvidia_smi`), the CPU or a
  CUDA wheel index chosen from the driver's CUDA version (:func:`recommend_build`);
* the pip command (:func:`pip_command`, :func:`pip_environment`) under a constraints file that
  pins numpy and the GDAL stack to the versions QGIS runs (:func:`constraints_lines`);
* the Python interpreter to run pip with, which inside QGIS is not ``sys.executable``
  (:func:`find_python`).

Why ``pip install --user`` with ``PYTHONUSERBASE=<profile folder>`` rather than ``--target``:
``--target`` ignores what is installed and would put a second numpy (zarr, scikit-learn and
scipy depend on it) in front of QGIS's. A user install sees QGIS's packages as installed, so
it installs only what QGIS lacks or has too old (torch, sympy, typing-extensions, ...), never
uninstalls a system package, and the constraints make pip refuse, with a message, anything that
would need another numpy or GDAL. The user base is private to the plugin: only the plugin puts
it on ``sys.path``. Running the installation itself is :mod:`.installer`.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath

# -- what the core needs ------------------------------------------------------------------------

PIP = "pip"
SYSTEM = "system"

TORCH_VERSION = "2.13.0"
"""The torch the models are tested with; pinned because model files and CUDA builds are."""


@dataclass(frozen=True)
class Requirement:
    """One package the core needs: ``name`` on PyPI, the pip ``spec``, the ``module`` that
    :func:`missing` looks for, and where it comes from: ``pip`` (the installer installs it) or
    ``system`` (it comes with QGIS or the distribution; pip must not replace it)."""

    name: str
    spec: str
    module: str
    purpose: str
    source: str = PIP
    hint: str = ""


REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("torch", f"torch=={TORCH_VERSION}", "torch", "runs the models"),
    Requirement("safetensors", "safetensors>=0.4", "safetensors", "reads the model files"),
    Requirement("zarr", "zarr>=2.16,<3", "zarr", "parcel stores (training, batch inference)"),
    Requirement("tqdm", "tqdm>=4.60", "tqdm", "progress bars of the command line"),
    Requirement("threadpoolctl", "threadpoolctl>=3.1", "threadpoolctl", "extraction threads"),
    Requirement("scikit-learn", "scikit-learn>=1.3,<1.8", "sklearn", "metrics, folds, RF baseline"),
)
"""Installed by the plugin's installer (and listed in requirements.txt for the venv)."""

_GEO_HINT = (
    "comes with QGIS or the distribution, not from pip (one GDAL per process): Debian/Ubuntu "
    "'apt install python3-{deb}', OSGeo4W 'python3-{deb}', conda 'conda install {name}'"
)
SYSTEM_REQUIREMENTS: tuple[Requirement, ...] = tuple(
    Requirement(name, name, module, purpose, SYSTEM, _GEO_HINT.format(deb=deb, name=name))
    for name, module, deb, purpose in (
        ("numpy", "numpy", "numpy", "arrays"),
        ("rasterio", "rasterio", "rasterio", "reads the image stack"),
        ("geopandas", "geopandas", "geopandas", "reads parcel layers outside QGIS"),
        ("shapely", "shapely", "shapely", "parcel geometries"),
        ("pyproj", "pyproj", "pyproj", "coordinate systems"),
    )
)

ALL_REQUIREMENTS = SYSTEM_REQUIREMENTS[:1] + REQUIREMENTS + SYSTEM_REQUIREMENTS[1:]

PROTECTED: Mapping[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "GDAL": ("osgeo",),
    "rasterio": ("rasterio",),
    "fiona": ("fiona",),
    "shapely": ("shapely",),
    "pyproj": ("pyproj",),
    "pandas": ("pandas",),
    "geopandas": ("geopandas",),
    "scipy": ("scipy",),
    "matplotlib": ("matplotlib", "mpl_toolkits"),
    "affine": ("affine",),
    "PyQt5": ("PyQt5",),
    "pyogrio": ("pyogrio",),
}
"""Distributions QGIS and the geo stack bring, with their import names: pip is constrained to
the versions QGIS runs and an installation must never leave a copy of them where it would
shadow QGIS's (:func:`find_shadowing`)."""


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def is_importable(module: str, path: Sequence[str] | None = None) -> bool:
    """Whether top-level ``module`` can be found on ``path`` (default ``sys.path``), without
    importing it. Finders that refuse (raise) count as not importable."""
    try:
        if path is None:
            return importlib.util.find_spec(module) is not None
        return importlib.machinery.PathFinder.find_spec(module, list(path)) is not None
    except (ImportError, ValueError):
        return False


def missing(
    requirements: Iterable[Requirement] = ALL_REQUIREMENTS, path: Sequence[str] | None = None
) -> list[Requirement]:
    """The requirements whose module cannot be found. Cheap: nothing is imported, so the
    plugin can call it on the GUI thread at load."""
    return [r for r in requirements if not is_importable(r.module, path)]


def describe_missing(absent: Iterable[Requirement]) -> list[str]:
    """One line per missing requirement: name, what it is for, how it is installed."""
    lines = []
    for r in absent:
        how = "installed by the plugin's installer" if r.source == PIP else r.hint
        lines.append(f"{r.name} ({r.purpose}): {how}")
    return lines


# -- where: the per-profile user base ------------------------------------------------------------

DEPENDENCIES_FOLDER = ("python", "dependencies", "parcel-crop-classifier")
"""Below the QGIS profile folder. ``python/`` of a profile is on QGIS's ``sys.path``, so the
folder name has a hyphen: it can never be imported as a package by accident."""


def dependencies_dir(profile_dir: str | os.PathLike[str]) -> Path:
    """The user base for a QGIS profile (``QgsApplication.qgisSettingsDirPath()``)."""
    return Path(profile_dir).joinpath(*DEPENDENCIES_FOLDER)


def site_dir(userbase: str | os.PathLike[str]) -> Path:
    """Where ``pip install --user`` puts packages when ``PYTHONUSERBASE=userbase``: the
    interpreter's user scheme (``lib/python3.X/site-packages`` on Linux, ``Python3X/
    site-packages`` on Windows), so a new QGIS with another Python gets a fresh folder."""
    get_scheme = getattr(sysconfig, "get_preferred_scheme", None)
    scheme = get_scheme("user") if get_scheme else f"{os.name}_user"
    return Path(sysconfig.get_path("purelib", scheme, vars={"userbase": str(userbase)}))


def find_shadowing(site: str | os.PathLike[str]) -> list[Path]:
    """Entries in ``site`` that would shadow a :data:`PROTECTED` package (a numpy folder, a
    ``numpy-*.dist-info``, an ``osgeo`` folder, ...)."""
    site = Path(site)
    if not site.is_dir():
        return []
    modules = {m for names in PROTECTED.values() for m in names}
    dists = {canonical_name(d) for d in PROTECTED}
    found = []
    for entry in sorted(site.iterdir()):
        stem = entry.name.split(".")[0]
        if entry.name.endswith((".dist-info", ".egg-info")):
            if canonical_name(entry.name.split("-")[0]) in dists:
                found.append(entry)
        elif stem in modules:
            found.append(entry)
    return found


def add_to_sys_path(
    site: str | os.PathLike[str], sys_path: list[str] | None = None
) -> tuple[bool, str | None]:
    """Put ``site`` on ``sys.path`` (at the front) if it exists; returns (added, warning).

    Front, because pip put there only what QGIS lacks or has too old for torch (sympy,
    typing-extensions), and those must win over the older system copies. That is safe only
    while nothing there shadows QGIS's numpy/GDAL stack: if something does (an installation
    made by other means), the folder goes to the end instead and the warning says why.
    ``.pth`` files are deliberately not processed (setuptools ships one that patches distutils).
    """
    sys_path = sys.path if sys_path is None else sys_path
    site = Path(site)
    if not site.is_dir():
        return False, None
    entry = str(site)
    while entry in sys_path:
        sys_path.remove(entry)
    shadowing = find_shadowing(site)
    warning = None
    if shadowing:
        sys_path.append(entry)
        warning = (
            f"{site} holds {', '.join(p.name for p in shadowing)}, which would shadow the "
            "packages QGIS runs with; it was added at the end of sys.path. Reinstall the "
            "dependencies to clean it."
        )
    else:
        sys_path.insert(0, entry)
    sys.path_importer_cache.pop(entry, None)  # a cached "not a folder" from before it existed
    importlib.invalidate_caches()
    return True, warning


# -- which torch build ---------------------------------------------------------------------------

TORCH_INDEX = "https://download.pytorch.org/whl"


@dataclass(frozen=True)
class TorchBuild:
    """A torch wheel flavour: ``cpu`` or ``cuXYZ`` (CUDA X.Y runtime bundled in the wheel),
    served by PyTorch's index ``https://download.pytorch.org/whl/<key>``."""

    key: str
    label: str
    cuda: tuple[int, int] | None = None

    @property
    def index_url(self) -> str:
        return f"{TORCH_INDEX}/{self.key}"


CPU_BUILD = TorchBuild("cpu", "CPU")
CUDA_BUILDS: tuple[TorchBuild, ...] = (
    TorchBuild("cu126", "CUDA 12.6", (12, 6)),
    TorchBuild("cu128", "CUDA 12.8", (12, 8)),
    TorchBuild("cu130", "CUDA 13.0", (13, 0)),
)
"""The CUDA builds PyTorch publishes for :data:`TORCH_VERSION` (update with it). Each wheel
bundles its CUDA runtime; the NVIDIA driver only has to support that CUDA version."""


def available_builds(platform: str = sys.platform) -> tuple[TorchBuild, ...]:
    """CPU everywhere; CUDA builds on Linux and Windows (PyTorch has none for macOS)."""
    return (CPU_BUILD,) if platform == "darwin" else (CPU_BUILD, *CUDA_BUILDS)


def build_by_key(key: str) -> TorchBuild:
    for build in (CPU_BUILD, *CUDA_BUILDS):
        if build.key == key:
            return build
    known = ", ".join(b.key for b in (CPU_BUILD, *CUDA_BUILDS))
    raise ValueError(f"unknown torch build {key!r}; known: {known}")


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_mib: int | None = None


@dataclass(frozen=True)
class NvidiaSmi:
    """What ``nvidia-smi`` says: driver version, the highest CUDA version the driver supports,
    and the GPUs."""

    driver: str | None
    cuda: tuple[int, int] | None
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        names = ", ".join(
            g.name + (f" ({g.memory_mib / 1024:.0f} GiB)" if g.memory_mib else "")
            for g in self.gpus
        )
        cuda = ".".join(map(str, self.cuda)) if self.cuda else "unknown"
        return f"{names or 'no GPU listed'}; driver {self.driver or 'unknown'}, CUDA {cuda}"


_DRIVER = re.compile(r"Driver Version\s*:\s*([\d.]+)")
_CUDA = re.compile(r"CUDA Version\s*:\s*(\d+)\.(\d+)")
_GPU_ROW = re.compile(r"^\|\s+(\d+)\s+(.+?)\s+(?:On|Off)\s*\|", re.MULTILINE)
_MEMORY = re.compile(r"(\d+)\s*MiB\s*/\s*(\d+)\s*MiB")
_Q_GPU = re.compile(r"^GPU [0-9A-Fa-f:.]+\s*$", re.MULTILINE)
_Q_NAME = re.compile(r"^\s*Product Name\s*:\s*(.+?)\s*$", re.MULTILINE)
_Q_MEMORY = re.compile(r"FB Memory Usage\s*\n\s*Total\s*:\s*(\d+)\s*MiB")


def parse_nvidia_smi(text: str) -> NvidiaSmi | None:
    """Parse the output of plain ``nvidia-smi`` (the table) or ``nvidia-smi -q``.

    None when it names no driver (e.g. "NVIDIA-SMI has failed because it couldn't communicate
    with the NVIDIA driver").
    """
    driver = _DRIVER.search(text)
    if driver is None:
        return None
    cuda = _CUDA.search(text)
    gpus: list[Gpu] = []
    if _Q_GPU.search(text):  # nvidia-smi -q: one "GPU 00000000:01:00.0" section per GPU
        sections = _Q_GPU.split(text)[1:]
        for index, section in enumerate(sections):
            name = _Q_NAME.search(section)
            memory = _Q_MEMORY.search(section)
            gpus.append(
                Gpu(index, name.group(1) if name else "NVIDIA GPU",
                    int(memory.group(1)) if memory else None)
            )  # fmt: skip
    else:
        lines = text.splitlines()
        for i, line in enumerate(lines):
            row = _GPU_ROW.match(line)
            if row is None or row.group(2).strip().startswith("Name"):
                continue
            memory = _MEMORY.search(lines[i + 1]) if i + 1 < len(lines) else None
            gpus.append(Gpu(int(row.group(1)), row.group(2).strip(),
                            int(memory.group(2)) if memory else None))  # fmt: skip
    return NvidiaSmi(
        driver.group(1),
        (int(cuda.group(1)), int(cuda.group(2))) if cuda else None,
        tuple(gpus),
    )


def nvidia_smi_executable() -> str | None:
    found = shutil.which("nvidia-smi")
    if found or os.name != "nt":
        return found
    for candidate in (
        Path(os.environ.get("SYSTEMROOT", r"C:\Windows")) / "System32" / "nvidia-smi.exe",
        Path(os.environ.get("PROGRAMFILES", r"C:\Program Files"))
        / "NVIDIA Corporation" / "NVSMI" / "nvidia-smi.exe",
    ):  # fmt: skip
        if candidate.is_file():
            return str(candidate)
    return None


def no_window_flags() -> dict[str, int]:
    """Popen keyword arguments that keep Windows from flashing a console window."""
    return {"creationflags": subprocess.CREATE_NO_WINDOW} if os.name == "nt" else {}


def query_nvidia_smi(timeout: float = 15.0) -> tuple[NvidiaSmi | None, str]:
    """Run ``nvidia-smi``: (parsed output or None, a sentence saying what was found)."""
    exe = nvidia_smi_executable()
    if exe is None:
        return None, "nvidia-smi not found (no NVIDIA driver installed)"
    try:
        done = subprocess.run(
            [exe], capture_output=True, text=True, timeout=timeout, check=False, **no_window_flags()
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"nvidia-smi could not run ({exc})"
    info = parse_nvidia_smi(done.stdout)
    if info is None:
        said = (done.stdout + done.stderr).strip().splitlines()
        return None, f"nvidia-smi found no working driver ({said[0] if said else done.returncode})"
    return info, f"nvidia-smi: {info.describe()}"


@dataclass(frozen=True)
class BuildChoice:
    build: TorchBuild
    reason: str


def recommend_build(smi: NvidiaSmi | None, platform: str = sys.platform) -> BuildChoice:
    """CPU, or the newest CUDA build the driver supports.

    A driver reports the highest CUDA version it supports; a wheel for CUDA X.Y needs at most
    that. Within one major version a newer runtime also runs on an older driver (CUDA minor
    version compatibility), so a 12.4 driver gets the oldest 12.x build rather than the CPU,
    with the advice to update the driver.
    """
    if platform == "darwin":
        return BuildChoice(CPU_BUILD, "macOS: PyTorch publishes no CUDA builds")
    if smi is None:
        return BuildChoice(CPU_BUILD, "no NVIDIA GPU with a working driver found")
    if not smi.gpus:
        return BuildChoice(CPU_BUILD, f"nvidia-smi lists no GPU (driver {smi.driver})")
    if smi.cuda is None:
        return BuildChoice(CPU_BUILD, f"nvidia-smi does not say which CUDA {smi.driver} supports")
    gpu = smi.gpus[0].name
    drv = f"driver {smi.driver} supports CUDA {smi.cuda[0]}.{smi.cuda[1]}"
    fitting = [b for b in CUDA_BUILDS if b.cuda is not None and b.cuda <= smi.cuda]
    if fitting:
        best = max(fitting, key=lambda b: b.cuda or (0, 0))
        return BuildChoice(best, f"{gpu}: {drv}")
    same_major = [b for b in CUDA_BUILDS if b.cuda is not None and b.cuda[0] == smi.cuda[0]]
    if same_major:
        oldest = min(same_major, key=lambda b: b.cuda or (0, 0))
        return BuildChoice(
            oldest,
            f"{gpu}: {drv}; {oldest.label} runs on it through CUDA minor version "
            "compatibility (updating the NVIDIA driver is recommended)",
        )
    oldest = CUDA_BUILDS[0]
    return BuildChoice(
        CPU_BUILD,
        f"{gpu}: {drv}, older than the oldest CUDA build of torch {TORCH_VERSION} "
        f"({oldest.label}); update the NVIDIA driver to use the GPU",
    )


_TORCH_WHEEL = re.compile(r"^torch-([0-9][^-]*?)(?:\+([A-Za-z0-9.]+))?-", re.IGNORECASE)


def torch_wheels(folder: str | os.PathLike[str]) -> dict[str, str]:
    """``{file name: build key or ''}`` of the torch wheels of :data:`TORCH_VERSION` in a
    wheel folder ('' for a wheel without a ``+cpu``/``+cuXYZ`` label, as on PyPI)."""
    found = {}
    folder = Path(folder)
    if folder.is_dir():
        for wheel in sorted(folder.glob("torch-*.whl")):
            match = _TORCH_WHEEL.match(wheel.name)
            if match and match.group(1) == TORCH_VERSION:
                found[wheel.name] = match.group(2) or ""
    return found


def torch_requirement(
    build: TorchBuild, platform: str = sys.platform, wheel_dir: str | os.PathLike[str] | None = None
) -> str:
    """``torch==2.13.0+cu128``: the build pinned by its local version label, so pip cannot
    pick another flavour. Unpinned on macOS (PyPI's wheels are the only ones) and for a wheel
    folder that holds only unlabelled torch wheels."""
    base = f"torch=={TORCH_VERSION}"
    if platform == "darwin":
        return base
    if wheel_dir is not None:
        labels = set(torch_wheels(wheel_dir).values())
        if labels == {""}:
            return base
    return f"{base}+{build.key}"


# -- constraints: never another numpy or GDAL ---------------------------------------------------


def constraints_lines(exclude: Iterable[str | os.PathLike[str]] = ()) -> list[str]:
    """``name==version`` of each :data:`PROTECTED` distribution this interpreter has, looked
    up on ``sys.path`` minus ``exclude`` (the plugin's own folder, so that a stray copy there
    is never taken for QGIS's)."""
    excluded = {os.path.normcase(os.path.abspath(p)) for p in exclude}
    path = [p for p in sys.path if os.path.normcase(os.path.abspath(p or ".")) not in excluded]
    versions: dict[str, str] = {}
    for dist in metadata.distributions(path=path):
        name = dist.metadata["Name"] or ""
        key = canonical_name(name)
        if key in {canonical_name(d) for d in PROTECTED} and key not in versions:
            versions[key] = f"{name}=={dist.version}"
    return [versions[canonical_name(d)] for d in PROTECTED if canonical_name(d) in versions]


def write_constraints(path: str | os.PathLike[str], exclude: Iterable[str] = ()) -> Path:
    path = Path(path)
    header = "# numpy and the GDAL stack as QGIS runs them: pip may not replace them."
    path.write_text("\n".join([header, *constraints_lines(exclude)]) + "\n", encoding="utf-8")
    return path


# -- which Python runs pip ----------------------------------------------------------------------


def _looks_like_python(executable: str) -> bool:
    name = PurePath(executable).name.lower()
    return re.fullmatch(r"python(\d+(\.\d+)?)?(w)?(\.exe)?", name) is not None


def python_candidates(
    executable: str = sys.executable,
    exec_prefix: str = sys.exec_prefix,
    version: tuple[int, int] = (sys.version_info[0], sys.version_info[1]),
    platform: str = sys.platform,
) -> list[str]:
    """Interpreters that may be the Python QGIS embeds, most likely first.

    Inside QGIS ``sys.executable`` is often the QGIS program itself (``qgis-bin.exe``,
    ``.../QGIS.app/Contents/MacOS/QGIS``, ``/usr/bin/qgis``), and running it with ``-m pip``
    would start another QGIS. The interpreter is found from ``sys.exec_prefix`` instead:
    Linux ``<prefix>/bin/python3.X`` (``/usr/bin/python3.11`` for Debian's QGIS); Windows
    (OSGeo4W, standalone installer) ``<prefix>/python.exe`` in ``apps/Python3X``; macOS (the
    QGIS.app bundle) ``Contents/MacOS/bin/python3`` beside the QGIS program. Each candidate
    is checked by :func:`find_python` before use.
    """
    major, minor = version
    windows = platform.startswith("win")
    pure = PureWindowsPath if windows else PurePosixPath
    prefix, exe = pure(exec_prefix), pure(executable) if executable else None
    out: list[str] = []
    if exe is not None and _looks_like_python(str(exe)):
        out.append(str(exe))
    if windows:
        out += [str(prefix / "python.exe"), str(prefix / "python3.exe")]
        if exe is not None:
            out += [str(exe.parent / "python3.exe"), str(exe.parent / "python.exe")]
    else:
        if platform == "darwin" and exe is not None:
            out += [str(exe.parent / "bin" / f"python{major}.{minor}"),
                    str(exe.parent / "bin" / "python3")]  # fmt: skip
        out += [str(prefix / "bin" / f"python{major}.{minor}"), str(prefix / "bin" / "python3")]
        if exe is not None:
            out += [str(exe.parent / f"python{major}.{minor}"), str(exe.parent / "python3")]
    for name in (f"python{major}.{minor}", "python3", "python"):
        found = shutil.which(name)
        if found:
            out.append(found)
    unique: list[str] = []
    for c in out:
        if c not in unique:
            unique.append(c)
    return unique


_VERSION_CHECK = "import sys; print('%d.%d' % sys.version_info[:2])"


def python_version_of(python: str, timeout: float = 60.0) -> tuple[int, int] | None:
    """``(3, 11)`` if ``python`` runs, else None."""
    try:
        done = subprocess.run(
            [python, "-c", _VERSION_CHECK],
            capture_output=True, text=True, timeout=timeout, check=False, **no_window_flags(),
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.fullmatch(r"(\d+)\.(\d+)", done.stdout.strip())
    return (int(match.group(1)), int(match.group(2))) if match and done.returncode == 0 else None


def find_python(candidates: Sequence[str] | None = None) -> str:
    """The first candidate that exists and runs this interpreter's Python version.

    Raises FileNotFoundError naming the places tried; the message is meant for the user.
    """
    want = (sys.version_info[0], sys.version_info[1])
    tried = list(python_candidates() if candidates is None else candidates)
    for candidate in tried:
        if Path(candidate).is_file() and python_version_of(candidate) == want:
            return candidate
    raise FileNotFoundError(
        f"cannot find the Python {want[0]}.{want[1]} interpreter QGIS runs on (tried: "
        f"{', '.join(tried) or 'nothing'}). Install torch by hand with that interpreter: "
        "see the plugin's README, 'Installing torch inside QGIS'."
    )


# -- the pip command -----------------------------------------------------------------------------


def pip_command(
    python: str | os.PathLike[str],
    constraints: str | os.PathLike[str],
    build: TorchBuild = CPU_BUILD,
    *,
    wheel_dir: str | os.PathLike[str] | None = None,
    requirements: Sequence[Requirement] = REQUIREMENTS,
    platform: str = sys.platform,
) -> list[str]:
    """The argument list (no shell) that installs ``requirements`` into the user base given
    by :func:`pip_environment`.

    ``--user`` (see the module docstring), ``-c constraints`` (numpy and GDAL stay QGIS's),
    ``--only-binary :all:`` (never compile in a user's QGIS), the torch build pinned by its
    label with PyTorch's index for it as an *extra* index (PyPI, or the index the user's pip
    configuration names, serves the rest); with ``wheel_dir`` no index at all (offline).
    """
    specs = [
        torch_requirement(build, platform, wheel_dir) if r.module == "torch" else r.spec
        for r in requirements
    ]
    cmd = [
        str(python), "-m", "pip", "install", "--user",
        "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
        "--no-warn-script-location", "--only-binary", ":all:",
        "--upgrade-strategy", "only-if-needed", "-c", str(constraints),
    ]  # fmt: skip
    if wheel_dir is not None:
        cmd += ["--no-index", "--find-links", str(wheel_dir)]
    elif any(r.module == "torch" for r in requirements) and platform != "darwin":
        cmd += ["--extra-index-url", build.index_url]
    return cmd + specs


_UNSET_FOR_PIP = (
    "PYTHONNOUSERSITE",  # would hide the user base from pip's view of what is installed
    "PIP_REQUIRE_VIRTUALENV",  # would refuse to run outside a venv
    "PIP_TARGET", "PIP_PREFIX", "PIP_ROOT",  # contradict --user
)  # fmt: skip


def pip_environment(
    userbase: str | os.PathLike[str], base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for :func:`pip_command`: ``PYTHONUSERBASE`` is the install location.

    ``PIP_BREAK_SYSTEM_PACKAGES=1``: Debian marks its Python "externally managed" (PEP 668)
    and pip then refuses ``--user``; the marker protects the system site, which a user base
    that only this plugin puts on ``sys.path`` does not touch. Older pip ignores the variable.
    """
    env = dict(os.environ if base is None else base)
    for name in _UNSET_FOR_PIP:
        env.pop(name, None)
    env.update(
        PYTHONUSERBASE=str(userbase),
        PIP_BREAK_SYSTEM_PACKAGES="1",
        PIP_NO_INPUT="1",
        PYTHONUNBUFFERED="1",
        PYTHONIOENCODING="utf-8",
    )
    return env


__all__ = [
    "ALL_REQUIREMENTS",
    "CPU_BUILD",
    "CUDA_BUILDS",
    "PROTECTED",
    "REQUIREMENTS",
    "SYSTEM_REQUIREMENTS",
    "TORCH_VERSION",
    "BuildChoice",
    "Gpu",
    "NvidiaSmi",
    "Requirement",
    "TorchBuild",
    "add_to_sys_path",
    "available_builds",
    "build_by_key",
    "constraints_lines",
    "dependencies_dir",
    "describe_missing",
    "find_python",
    "find_shadowing",
    "is_importable",
    "missing",
    "parse_nvidia_smi",
    "pip_command",
    "pip_environment",
    "python_candidates",
    "query_nvidia_smi",
    "recommend_build",
    "site_dir",
    "torch_requirement",
    "torch_wheels",
    "write_constraints",
]
