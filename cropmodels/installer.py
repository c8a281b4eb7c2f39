"""Run pip for :mod:`.deps`: stream its output, report progress, cancel, explain failures.

QGIS-free so that the same code installs in a test (a real pip, a small real wheel, a
temporary profile) and in the plugin, where a ``QgsTask`` calls :meth:`Installer.run` on a
worker thread and :meth:`Installer.cancel` from the GUI thread.

After pip succeeds the installation is checked, not assumed: copies of QGIS's numpy/GDAL stack
are removed from the user base (:func:`remove_shadowing`), then a fresh interpreter with the
user base in front of its path imports every installed module (:func:`verify`), which is where
a torch that cannot load (a missing Visual C++ runtime, a CUDA wheel on an old driver) shows.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .deps import (
    CPU_BUILD,
    PROTECTED,
    REQUIREMENTS,
    Requirement,
    TorchBuild,
    canonical_name,
    find_shadowing,
    no_window_flags,
    pip_command,
    pip_environment,
    site_dir,
    write_constraints,
)

LOG = logging.getLogger(__name__)

LineFn = Callable[[str], None]
ProgressFn = Callable[[float, str], None]


@dataclass
class InstallPlan:
    """What to install where: the interpreter running pip, the user base, the torch build and,
    for an offline installation, a folder of wheels."""

    python: str
    userbase: Path
    build: TorchBuild = CPU_BUILD
    wheel_dir: Path | None = None
    requirements: tuple[Requirement, ...] = REQUIREMENTS

    @property
    def site(self) -> Path:
        return site_dir(self.userbase)

    @property
    def constraints(self) -> Path:
        return self.userbase / "constraints.txt"

    @property
    def log_path(self) -> Path:
        return self.userbase / "install.log"

    def command(self) -> list[str]:
        return pip_command(
            self.python, self.constraints, self.build,
            wheel_dir=self.wheel_dir, requirements=self.requirements,
        )  # fmt: skip

    def display_command(self) -> str:
        """The command as a user would type it in a POSIX shell (for the log only: it is run
        as an argument list, never through a shell)."""
        return f"PYTHONUSERBASE={shlex.quote(str(self.userbase))} {shlex.join(self.command())}"


@dataclass
class InstallResult:
    ok: bool
    cancelled: bool
    message: str
    log_path: Path | None = None
    returncode: int | None = None
    removed: list[str] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)


class PipProgress:
    """Turns pip's output lines into a rising ``(fraction, message)``.

    pip prints no totals, so the fractions are phases: resolving (to 0.3), downloading (to
    0.8, per wheel), installing (0.85), installed (0.95); the check after pip brings 1.0.
    """

    def __init__(self) -> None:
        self.fraction = 0.0
        self.collected = 0
        self.downloaded = 0

    def _rise(self, fraction: float, message: str) -> tuple[float, str]:
        self.fraction = max(self.fraction, min(fraction, 0.99))
        return self.fraction, message

    def feed(self, line: str) -> tuple[float, str] | None:
        text = line.strip()
        if match := re.match(
            r"(?:Collecting|Processing|Requirement already satisfied:) (\S+)", text
        ):
            self.collected += 1
            what = match.group(1)
            what = Path(what).name if what.endswith(".whl") else what
            return self._rise(0.02 + 0.28 * (1 - 1 / (1 + self.collected / 4)),
                              f"resolving {what}")  # fmt: skip
        if match := re.match(r"Downloading (\S+)(?: \(([^)]+)\))?", text):
            self.downloaded += 1
            size = f" ({match.group(2)})" if match.group(2) else ""
            share = self.downloaded / max(self.collected, self.downloaded, 1)
            return self._rise(0.3 + 0.5 * share, f"downloading {Path(match.group(1)).name}{size}")
        if match := re.match(r"Installing collected packages: (.*)", text):
            n = len([p for p in match.group(1).split(",") if p.strip()])
            return self._rise(0.85, f"installing {n} package{'s' if n != 1 else ''}")
        if text.startswith("Successfully installed"):
            return self._rise(0.95, "installed")
        return None


# -- failures ------------------------------------------------------------------------------------

_NETWORK = (
    "NewConnectionError", "Failed to establish a new connection", "Temporary failure in name "
    "resolution", "Name or service not known", "getaddrinfo failed", "ConnectTimeout",
    "ReadTimeoutError", "ProxyError", "Network is unreachable", "SSLError",
    "CERTIFICATE_VERIFY_FAILED",
)  # fmt: skip


def explain_failure(output: Sequence[str], returncode: int, plan: InstallPlan) -> str:
    """A message saying what went wrong and what to do, from pip's output."""
    text = "\n".join(output)
    tail = "\n".join(line for line in output[-8:] if line.strip())
    log = f"\n\nThe whole log: {plan.log_path}"
    if "No module named pip" in text:
        return (
            f"The Python QGIS runs on ({plan.python}) has no pip. Install it (Debian/Ubuntu: "
            "'sudo apt install python3-pip'; OSGeo4W: the 'python3-pip' package), then try "
            f"again.{log}"
        )
    pinned = re.search(r"The user requested \(constraint\) ([A-Za-z0-9_.-]+)==(\S+)", text)
    if pinned and ("ResolutionImpossible" in text or "conflict" in text):
        name, version = pinned.groups()
        needs = re.findall(rf"^\s*(\S+ \S+) depends on ({re.escape(name)}\S*)", text, re.M | re.I)
        who = "; ".join(f"{a} needs {b}" for a, b in needs) or f"a package needs another {name}"
        return (
            f"The packages need a different {name} than the {version} QGIS runs on ({who}). The "
            f"installer never replaces QGIS's {name}, which would break QGIS. Use a QGIS with a "
            f"newer {name}, or a wheel folder with versions that support {name} {version}.{log}"
        )
    if any(word in text for word in _NETWORK):
        return (
            "pip could not reach the package index: no internet connection, a proxy, or a "
            "certificate problem. Set the proxy in pip's configuration (pip.ini / pip.conf), or "
            "download the wheels on a computer with internet ('pip download' with the command "
            f"in the log) and install from that folder (offline).{log}"
        )
    if "No space left on device" in text or "Errno 28" in text:
        return (
            f"The disk holding {plan.userbase} is full. torch needs about 1 GB (CPU) or 5 GB "
            f"(CUDA) during installation: free some space and try again.{log}"
        )
    if "Permission denied" in text or "Errno 13" in text or "Access is denied" in text:
        return f"pip cannot write to {plan.userbase}: check the folder's permissions.{log}"
    missing = re.search(r"No matching distribution found for (\S+)", text)
    if missing:
        what = missing.group(1)
        py = f"Python {sys.version_info[0]}.{sys.version_info[1]} on {sys.platform}"
        if plan.wheel_dir is not None:
            advice = (
                f"The wheel folder {plan.wheel_dir} must hold a wheel of every package for "
                f"{py} (torch of the chosen build: {plan.build.label})."
            )
        elif what.startswith("torch"):
            advice = (
                f"PyTorch may publish no {plan.build.label} wheel of this torch for {py}: "
                "choose another build (CPU, or another CUDA version)."
            )
        else:
            advice = f"There may be no wheel of it for {py}."
        return f"pip found no installable {what}. {advice}{log}"
    return f"pip failed (exit code {returncode}). Its last lines:\n{tail}{log}"


# -- after pip -----------------------------------------------------------------------------------


def remove_shadowing(site: Path, userbase: Path) -> list[str]:
    """Delete copies of :data:`PROTECTED` packages from ``site`` (they would shadow QGIS's;
    the constraints keep pip from installing them, this is the belt to those braces).

    Each distribution goes by its RECORD (only files inside ``userbase``), then whatever of
    its folders is left. Returns the names removed.
    """
    removed: list[str] = []
    modules_of = {canonical_name(d): m for d, m in PROTECTED.items()}
    root = userbase.resolve()
    for entry in find_shadowing(site):
        if entry.name.endswith((".dist-info", ".egg-info")):
            record = entry / "RECORD"
            if record.is_file():
                for line in record.read_text(encoding="utf-8", errors="replace").splitlines():
                    rel = line.split(",")[0]
                    target = (site / rel).resolve()
                    if rel and root in target.parents and target.is_file():
                        target.unlink()
            key = canonical_name(entry.name.split("-")[0])
            for module in modules_of.get(key, ()):
                for leftover in (site / module, site / f"{module}.libs"):
                    if leftover.is_dir():
                        shutil.rmtree(leftover, ignore_errors=True)
                (site / f"{module}.py").unlink(missing_ok=True)
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.exists():
            entry.unlink()
        removed.append(entry.name)
    return removed


_VERIFY = r"""
import importlib, json, sys
site, modules = sys.argv[1], sys.argv[2:]
sys.path.insert(0, site)
out = {"modules": {}, "errors": {}}
for name in modules:
    try:
        module = importlib.import_module(name)
    except BaseException as exc:
        out["errors"][name] = f"{type(exc).__name__}: {exc}"
        continue
    out["modules"][name] = {"version": str(getattr(module, "__version__", "")),
                            "file": str(getattr(module, "__file__", ""))}
try:
    import numpy
    out["numpy"] = {"version": numpy.__version__, "file": numpy.__file__}
except BaseException as exc:
    out["errors"]["numpy"] = f"{type(exc).__name__}: {exc}"
torch = sys.modules.get("torch")
if torch is not None:
    info = {"cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if info["cuda_available"]:
        info["device"] = torch.cuda.get_device_name(0)
    out["torch"] = info
print("VERIFY-JSON " + json.dumps(out))
"""


def verify(plan: InstallPlan, timeout: float = 600.0) -> tuple[bool, str, dict[str, Any]]:
    """Import every requirement in a fresh interpreter with the user base in front of its path,
    as the plugin will; (ok, message, details)."""
    modules = [r.module for r in plan.requirements]
    env = dict(os.environ)
    env.pop("PYTHONUSERBASE", None)
    try:
        done = subprocess.run(
            [plan.python, "-c", _VERIFY, str(plan.site), *modules],
            capture_output=True, text=True, timeout=timeout, check=False, env=env,
            **no_window_flags(),
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"The installed packages could not be checked: {exc}", {}
    line = next((x for x in done.stdout.splitlines() if x.startswith("VERIFY-JSON ")), None)
    if line is None:
        said = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return False, "Checking the installation crashed: " + " / ".join(said), {}
    details = json.loads(line.removeprefix("VERIFY-JSON "))
    errors = details["errors"]
    numpy_file = details.get("numpy", {}).get("file", "")
    if numpy_file and Path(numpy_file).resolve().is_relative_to(plan.site.resolve()):
        errors["numpy"] = f"numpy would be imported from {numpy_file}, not from QGIS"
    if errors:
        problems = "; ".join(f"{k}: {v}" for k, v in errors.items())
        hint = ""
        if "DLL" in problems or "WinError" in problems:
            hint = (
                " On Windows this usually means the Microsoft Visual C++ Redistributable "
                "(x64) is missing: install it and restart QGIS."
            )
        return False, f"pip finished but the packages do not import: {problems}.{hint}", details
    versions = ", ".join(f"{k} {v['version']}".strip() for k, v in details["modules"].items())
    torch_info = details.get("torch")
    gpu = ""
    if torch_info:
        if torch_info.get("cuda_available"):
            gpu = f"; CUDA {torch_info['cuda_build']} works on {torch_info.get('device')}"
        elif torch_info.get("cuda_build"):
            gpu = f"; torch is built for CUDA {torch_info['cuda_build']} but sees no usable GPU"
        else:
            gpu = "; CPU build"
    return True, f"Installed and checked: {versions}{gpu}.", details


# -- the installer ---------------------------------------------------------------------------------


class Installer:
    """Runs one :class:`InstallPlan`. :meth:`run` blocks (call it on a worker thread);
    :meth:`cancel` may be called from any thread and stops pip within seconds."""

    def __init__(
        self,
        plan: InstallPlan,
        *,
        on_line: LineFn | None = None,
        on_progress: ProgressFn | None = None,
    ) -> None:
        self.plan = plan
        self.on_line = on_line
        self.on_progress = on_progress
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._cancelled = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def _line(self, text: str) -> None:
        LOG.debug("pip: %s", text)
        if self.on_line is not None:
            self.on_line(text)

    def _progress(self, fraction: float, message: str) -> None:
        if self.on_progress is not None:
            self.on_progress(fraction, message)

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            process = self._process
        if process is not None and process.poll() is None:
            _interrupt(process)
            timer = threading.Timer(5.0, _kill, args=(process,))
            timer.daemon = True
            timer.start()

    def _cancelled_result(self, code: int | None) -> InstallResult:
        return InstallResult(
            False, True,
            "Installation cancelled. Nothing was activated; what pip had finished stays in "
            f"{self.plan.userbase} and is reused by the next installation.",
            self.plan.log_path, code,
        )  # fmt: skip

    def run(self) -> InstallResult:
        plan = self.plan
        try:
            plan.userbase.mkdir(parents=True, exist_ok=True)
            write_constraints(plan.constraints, exclude=[str(plan.site)])
        except OSError as exc:
            return InstallResult(False, False, f"Cannot write to {plan.userbase}: {exc}.")
        output: list[str] = []
        self._progress(0.01, f"starting pip ({plan.build.label})")
        with open(plan.log_path, "w", encoding="utf-8") as log:

            def emit(text: str) -> None:
                output.append(text)
                log.write(text + "\n")
                log.flush()
                self._line(text)

            emit(f"$ {plan.display_command()}")
            pins = plan.constraints.read_text(encoding="utf-8").split("\n")
            emit("constraints (QGIS's own versions): " + ", ".join(p for p in pins[1:] if p))
            with self._lock:
                if self._cancelled:
                    return self._cancelled_result(None)
                try:
                    self._process = subprocess.Popen(
                        plan.command(),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        env=pip_environment(plan.userbase), text=True, encoding="utf-8",
                        errors="replace", bufsize=1, **_process_group(),
                    )  # fmt: skip
                except OSError as exc:
                    emit(f"cannot start {plan.python}: {exc}")
                    return InstallResult(
                        False, False,
                        f"Cannot start {plan.python} ({exc}). See 'Installing torch inside QGIS' "
                        "in the plugin's README to install by hand.",
                        plan.log_path,
                    )  # fmt: skip
                process = self._process
            progress = PipProgress()
            assert process.stdout is not None
            for raw in process.stdout:
                line = raw.rstrip("\r\n")
                emit(line)
                step = progress.feed(line)
                if step is not None:
                    self._progress(*step)
            code = process.wait()
            emit(f"pip exited with code {code}")
            if self._cancelled:
                return self._cancelled_result(code)
            if code != 0:
                return InstallResult(
                    False, False, explain_failure(output, code, plan), plan.log_path, code
                )
            removed = remove_shadowing(plan.site, plan.userbase)
            if removed:
                emit(f"removed copies of QGIS's own packages: {', '.join(removed)}")
            self._progress(0.97, "checking the installation")
            ok, message, details = verify(plan)
            emit(message)
        if self._cancelled:
            return self._cancelled_result(code)
        self._progress(1.0, "done" if ok else "failed")
        if not ok:
            message += f"\n\nThe whole log: {plan.log_path}"
        return InstallResult(
            ok, False, message, plan.log_path, code, removed, details.get("modules", {})
        )


def _process_group() -> dict[str, Any]:
    """pip in its own process group, so cancelling also stops what pip started."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
    return {"start_new_session": True}


def _interrupt(process: subprocess.Popen[str]) -> None:
    """Ask pip to stop as Ctrl+C would: it removes its temporary files."""
    try:
        if os.name == "nt":
            process.send_signal(signal.CTRL_BREAK_EVENT)
        else:
            os.killpg(process.pid, signal.SIGINT)
    except (OSError, ProcessLookupError):
        pass


def _kill(process: subprocess.Popen[str]) -> None:
    if process.poll() is not None:
        return
    try:
        if os.name == "nt":
            process.kill()
        else:
            os.killpg(process.pid, signal.SIGKILL)
    except (OSError, ProcessLookupError):
        pass


__all__ = [
    "InstallPlan",
    "InstallResult",
    "Installer",
    "PipProgress",
    "explain_failure",
    "remove_shadowing",
    "verify",
]
