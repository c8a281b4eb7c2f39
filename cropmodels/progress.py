"""Progress and cancellation as plain callables, so the core never depends on QGIS or tqdm.

Long-running functions take ``progress(fraction, message)`` and ``is_cancelled()``; the plugin
adapts them to ``QgsProcessingFeedback`` / ``QgsTask``, the CLI to tqdm.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


class Cancelled(Exception):  # noqa: N818 - reads naturally as "raise Cancelled"
    """Raised when ``is_cancelled()`` became true; the core leaves nothing half-written."""


def no_progress(fraction: float, message: str) -> None:
    """Default progress callback: ignore."""


def never_cancelled() -> bool:
    """Default cancellation callback: never."""
    return False


def check_cancelled(is_cancelled: CancelFn) -> None:
    """Raise :class:`Cancelled` if the caller asked to stop."""
    if is_cancelled():
        raise Cancelled("cancelled by the user")
