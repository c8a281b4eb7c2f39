"""Which torch device a run uses, why, and what happens when that device fails.

One rule for every entry point (predict, train, evaluate, the command line, the plugin's
algorithms and panel), so they agree on what ``auto`` means and say the same thing when a GPU
cannot be used:

* a device is asked for as ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:func:`choose_device`);
  ``auto`` takes the first CUDA GPU when torch sees one, else the CPU, and the choice carries a
  sentence saying why, for logs and the Diagnostics dialog;
* a CUDA failure that is not a lack of memory (no kernel image for this GPU, a driver error, an
  illegal access) makes :func:`run_with_cpu_fallback` run the same work again on the CPU, with a
  warning, instead of failing the whole run;
* CUDA out of memory halves the batch and retries (:func:`run_with_oom_backoff` for a whole run,
  :func:`process_in_batches` for a loop over items); only when one item per batch still does
  not fit is :class:`DeviceOutOfMemoryError` raised, which the CPU fallback also catches.

torch is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

if TYPE_CHECKING:
    import torch

LOG = logging.getLogger(__name__)

R = TypeVar("R")
Notify = Callable[[str], None]

DEVICE_CHOICES = ("auto", "cpu", "cuda")
"""The spellings every ``device`` option accepts, besides ``cuda:N`` for the N-th GPU."""

DEVICE_HELP = (
    "auto (the first CUDA GPU when torch sees one, else the CPU), cpu, cuda (the first GPU) "
    "or cuda:N (the N-th GPU, from 0)"
)

_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class DeviceChoice:
    """The device a run uses and a sentence saying why (for logs and diagnostics)."""

    device: torch.device
    reason: str
    asked: str = "auto"

    def __str__(self) -> str:
        return f"{self.device} ({self.reason})"


class DeviceOutOfMemoryError(RuntimeError):
    """Out of device memory even at the smallest batch size; the message says what to do."""


def normalise_spec(spec: str | None) -> str:
    """``" CUDA:1 "`` -> ``"cuda:1"``; ``None``/``""`` -> ``"auto"``. Raises ValueError
    (naming the accepted spellings) for anything else, without importing torch."""
    text = "auto" if spec is None else str(spec).strip().lower()
    text = text or "auto"
    match = _SPEC.match(text)
    if not match or (match.group(2) is not None and match.group(1) != "cuda"):
        raise ValueError(f"unknown device {spec!r}: use {DEVICE_HELP}")
    return text


def cuda_unavailable_reason(torch_module: Any = None) -> str | None:
    """Why torch cannot use CUDA here, in words a user can act on; None when it can."""
    if torch_module is None:
        try:
            import torch as torch_module
        except Exception as exc:  # a broken install raises more than ImportError
            return f"torch is not importable ({type(exc).__name__}: {exc})"
    version = torch_module.__version__
    built_for = getattr(torch_module.version, "cuda", None)
    if built_for is None:
        return (
            f"this torch build ({version}) is CPU-only; install a CUDA build to use an NVIDIA "
            "GPU (in QGIS: Diagnostics > Install dependencies…)"
        )
    if torch_module.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU from torch"
    return (
        f"torch {version} is built for CUDA {built_for} but finds no usable GPU: no NVIDIA GPU, "
        f"no driver, or a driver older than CUDA {built_for} needs (see nvidia-smi)"
    )


def describe_cuda_device(index: int) -> str:
    """``"NVIDIA H100 80GB HBM3, 79.1 GiB"``."""
    import torch

    props = torch.cuda.get_device_properties(index)
    return f"{props.name}, {props.total_memory / 2**30:.1f} GiB"


def choose_device(spec: str | None = "auto") -> DeviceChoice:
    """The device for ``spec`` (see :data:`DEVICE_HELP`) and why it was chosen.

    Raises ValueError with an actionable message when a GPU is asked for that torch cannot use
    (CPU-only build, no driver, ``cuda:3`` on a one-GPU machine).
    """
    import torch

    text = normalise_spec(spec)
    if text == "cpu":
        return DeviceChoice(torch.device("cpu"), "the CPU was asked for", text)
    why_not = cuda_unavailable_reason(torch)
    if text == "auto":
        if why_not is not None:
            return DeviceChoice(torch.device("cpu"), f"no usable CUDA GPU: {why_not}", text)
        count = torch.cuda.device_count()
        more = f"; {count} GPUs, pick another with cuda:N" if count > 1 else ""
        return DeviceChoice(
            torch.device("cuda:0"), f"first CUDA GPU ({describe_cuda_device(0)}){more}", text
        )
    if why_not is not None:
        raise ValueError(
            f"device {spec!r} asked for but torch {torch.__version__} sees no CUDA GPU: "
            f"{why_not}. Use device 'cpu' (or 'auto')."
        )
    index = int(text.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        seen = "; ".join(f"cuda:{i} ({describe_cuda_device(i)})" for i in range(count))
        raise ValueError(
            f"device {spec!r} asked for but torch sees {count} CUDA GPU"
            f"{'s' if count != 1 else ''}: {seen}. Use one of those, or 'auto'."
        )
    return DeviceChoice(
        torch.device("cuda", index), f"asked for ({describe_cuda_device(index)})", text
    )


# -- failures -----------------------------------------------------------------------------------

_OOM_WORDS = ("out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed")
_CUDA_WORDS = ("cuda", "cudnn", "cublas", "cufft", "nvrtc", "no kernel image", "nvidia driver")


def is_oom_error(exc: BaseException) -> bool:
    """True for torch's out-of-memory error (any accelerator) and cuBLAS/cuDNN allocation
    failures, which report lack of memory as a plain RuntimeError."""
    if isinstance(exc, DeviceOutOfMemoryError):
        return False  # already final: do not halve again
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:
        pass
    return isinstance(exc, RuntimeError) and any(w in str(exc).lower() for w in _OOM_WORDS)


def is_cuda_error(exc: BaseException) -> bool:
    """True for a CUDA failure other than a lack of memory: torch's accelerator errors, and the
    RuntimeError/AssertionError torch raises when CUDA cannot start (no driver, CPU build)."""
    if is_oom_error(exc):
        return False
    try:
        import torch

        names = ((torch, "AcceleratorError"), (torch.cuda, "CudaError"))
        classes = tuple(getattr(m, n) for m, n in names if hasattr(m, n))
        if classes and isinstance(exc, classes):
            return True
    except ImportError:
        pass
    return isinstance(exc, RuntimeError | AssertionError) and any(
        w in str(exc).lower() for w in _CUDA_WORDS
    )


def free_cuda_memory() -> None:
    """Return cached blocks to the driver after an out-of-memory error (no-op without CUDA)."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # never let cleanup hide the real problem
        LOG.debug("could not empty the CUDA cache", exc_info=True)


def _as_device(device: torch.device | str) -> torch.device:
    import torch

    return device if isinstance(device, torch.device) else torch.device(device)


def run_with_cpu_fallback(
    fn: Callable[[torch.device], R],
    device: torch.device | str | DeviceChoice,
    *,
    notify: Notify | None = None,
) -> tuple[R, torch.device]:
    """``fn(device)``; if it fails with a CUDA error (or :class:`DeviceOutOfMemoryError`), run
    ``fn(cpu)`` again and return ``(result, device actually used)``.

    ``fn`` must be safe to call twice (start from scratch, write outputs only at the end).
    The fallback is logged as a warning and passed to ``notify`` (e.g. a Processing
    feedback's ``reportError``/``pushWarning``). Errors on the CPU, and errors that are not
    CUDA's, propagate unchanged.
    """
    import torch

    dev = _as_device(device.device if isinstance(device, DeviceChoice) else device)
    if dev.type != "cuda":
        return fn(dev), dev
    try:
        return fn(dev), dev
    except Exception as exc:
        if not (is_cuda_error(exc) or isinstance(exc, DeviceOutOfMemoryError)):
            raise
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        message = (
            f"{dev} failed ({type(exc).__name__}: {first_line}); running again on the CPU, "
            "which is slower. Run Diagnostics to see why the GPU cannot be used."
        )
    free_cuda_memory()  # outside the except block: the traceback's tensors are released
    LOG.warning("%s", message)
    if notify is not None:
        notify(message)
    cpu = torch.device("cpu")
    return fn(cpu), cpu


def working_device(spec: str | None = "auto") -> torch.device:
    """:func:`choose_device`, then :func:`check_device_works`, logged: the device a run uses.
    ValueError when a GPU is asked for that torch cannot use."""
    choice = check_device_works(choose_device(spec))
    LOG.info("device %s: %s", choice.device, choice.reason)
    return choice.device


def check_device_works(choice: DeviceChoice, *, notify: Notify | None = None) -> DeviceChoice:
    """``choice`` if a small convolution and matrix product run on it, else the CPU.

    Catches at the start what would otherwise fail a long run later: a GPU this torch build
    has no kernels for ("no kernel image is available"), a driver that cannot start CUDA. The
    fallback is logged as a warning and passed to ``notify``.
    """
    import torch

    if choice.device.type != "cuda":
        return choice
    try:
        x = torch.ones((2, 3, 8, 8), device=choice.device)
        w = torch.ones((4, 3, 3, 3), device=choice.device)
        y = torch.nn.functional.conv2d(x, w).flatten(1)
        float((y @ y.T).sum().item())
    except Exception as exc:
        if not (is_cuda_error(exc) or is_oom_error(exc)):
            raise
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = f"{choice.device} failed a test computation ({first_line}); using the CPU"
    else:
        return choice
    LOG.warning("%s", reason)
    if notify is not None:
        notify(reason)
    free_cuda_memory()
    return DeviceChoice(torch.device("cpu"), reason, choice.asked)


class BackoffResult(NamedTuple):
    """What :func:`run_with_oom_backoff` returns: the value and the batch size that worked."""

    value: Any
    batch_size: int


def _oom_message(batch_size: int, exc: BaseException) -> str:
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (
        f"out of device memory even with a batch of {batch_size} ({first_line}). Close other "
        "programs using the GPU, or run on the CPU (device 'cpu')."
    )


class OomBackoff:
    """A batch size that halves after each out-of-memory error and stays halved.

    One object per run: memory that ran out once will run out again, so later batches start
    at the size that worked. :meth:`run` is for work that restarts from scratch at a new size,
    :meth:`map` for a loop over items (only the failed slice is redone).
    """

    def __init__(
        self, batch_size: int, *, min_batch_size: int = 1, notify: Notify | None = None
    ) -> None:
        if batch_size < 1 or min_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {min_batch_size}")
        self.size = max(batch_size, min_batch_size)
        self.min_batch_size = min_batch_size
        self.notify = notify
        self.halvings = 0

    def _check(self, exc: Exception) -> None:
        """Re-raise unless ``exc`` is an out-of-memory error that a smaller batch may cure."""
        if not is_oom_error(exc):
            raise exc
        if self.size <= self.min_batch_size:
            raise DeviceOutOfMemoryError(_oom_message(self.size, exc)) from exc

    def _halve(self, then: str) -> None:
        free_cuda_memory()
        smaller = max(self.min_batch_size, self.size // 2)
        message = f"out of device memory with a batch of {self.size}; {then} {smaller}"
        LOG.warning("%s", message)
        if self.notify is not None:
            self.notify(message)
        self.size = smaller
        self.halvings += 1

    def run(self, fn: Callable[[int], R]) -> R:
        """``fn(size)``, retried at half the size after each out-of-memory error."""
        while True:
            try:
                return fn(self.size)
            except Exception as exc:
                self._check(exc)
            # Retry outside the except block, so the failed attempt's tensors can be freed.
            self._halve("retrying with")

    def map(self, fn: Callable[[int, int], R], n_items: int) -> list[R]:
        """``[fn(start, stop) for each batch]`` over ``range(n_items)``, in item order."""
        results: list[R] = []
        start = 0
        while start < n_items:
            stop = min(n_items, start + self.size)
            try:
                results.append(fn(start, stop))
            except Exception as exc:
                self._check(exc)
            else:
                start = stop
                continue
            self._halve("continuing with batches of")
        return results


def run_with_oom_backoff(
    fn: Callable[[int], R],
    batch_size: int,
    *,
    min_batch_size: int = 1,
    notify: Notify | None = None,
) -> BackoffResult:
    """``fn(batch_size)``, halving ``batch_size`` after each out-of-memory error.

    For work that restarts from scratch at a new batch size (e.g. a whole prediction run).
    Returns ``BackoffResult(value, batch_size_that_worked)``; raises
    :class:`DeviceOutOfMemoryError` when ``min_batch_size`` itself does not fit. Other errors
    propagate unchanged. Each halving is logged as a warning and passed to ``notify``.
    """
    backoff = OomBackoff(batch_size, min_batch_size=min_batch_size, notify=notify)
    value = backoff.run(fn)
    return BackoffResult(value, backoff.size)


def process_in_batches(
    fn: Callable[[int, int], R],
    n_items: int,
    batch_size: int,
    *,
    min_batch_size: int = 1,
    notify: Notify | None = None,
) -> list[R]:
    """``[fn(start, stop) for each batch of items]``, halving the batch on out-of-memory.

    The failed slice is retried at half the size and the smaller size is kept for the rest of
    the run, so nothing already done is redone. Results come back in item order, one per
    successful call. Raises :class:`DeviceOutOfMemoryError` when ``min_batch_size`` items do
    not fit. Use :class:`OomBackoff` directly to keep the size across several loops.
    """
    backoff = OomBackoff(batch_size, min_batch_size=min_batch_size, notify=notify)
    return backoff.map(fn, n_items)


__all__ = [
    "DEVICE_CHOICES",
    "DEVICE_HELP",
    "BackoffResult",
    "DeviceChoice",
    "DeviceOutOfMemoryError",
    "OomBackoff",
    "check_device_works",
    "choose_device",
    "cuda_unavailable_reason",
    "describe_cuda_device",
    "free_cuda_memory",
    "is_cuda_error",
    "is_oom_error",
    "normalise_spec",
    "process_in_batches",
    "run_with_cpu_fallback",
    "run_with_oom_backoff",
]
