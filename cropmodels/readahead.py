"""Run an iterator on a background thread, a bounded number of items ahead of its consumer.

Classification uses it so that extraction (GDAL decoding and numpy, which release the GIL)
runs while the model computes: the end-to-end time then approaches the larger of the two
instead of their sum, on machines with the cores for both.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

_POLL_SECONDS = 0.05


class _Failed:
    """An exception raised by the source, carried to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()

# Producer thread -> the thread consuming it, so that a log handler listening to one run's
# thread (the Processing log) also gets what the producer logs for that run.
_OWNERS: dict[int, int] = {}


def owner_thread(ident: int) -> int:
    """The thread a :func:`read_ahead` producer (thread ``ident``) works for, else ``ident``."""
    return _OWNERS.get(ident, ident)


def read_ahead(source: Iterator[T], size: int, name: str = "read-ahead") -> Iterator[T]:
    """Yield the items of ``source`` in order, produced on a thread at most ``size`` ahead.

    An exception in ``source`` (such as :class:`~.progress.Cancelled`) is raised here, at the
    item where it happened. Closing this generator early (the consumer stops, fails or is
    cancelled) stops the thread and closes ``source`` on it, so its ``finally`` blocks (thread
    pools, open files) run before this returns. ``size`` < 1 runs ``source`` inline instead.
    """
    if size < 1:
        yield from source
        return
    items: queue.Queue[object] = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    consumer = owner_thread(threading.get_ident())

    def produce() -> None:
        _OWNERS[threading.get_ident()] = consumer
        try:
            for item in source:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failed(exc))
        finally:
            close = getattr(source, "close", None)
            try:
                if callable(close):
                    close()
            finally:
                _OWNERS.pop(threading.get_ident(), None)

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = items.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if not thread.is_alive() and items.empty():
                    raise RuntimeError(
                        f"{name}: the producer thread ended without a result"
                    ) from None
                continue
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting to put, let it close the source
            with contextlib.suppress(queue.Empty):
                items.get(timeout=_POLL_SECONDS)
        thread.join()
