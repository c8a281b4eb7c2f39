"""read_ahead: an iterator run on a background thread, in order, bounded, closed cleanly."""

from __future__ import annotations

import threading
import time

import pytest

from cropmodels.progress import Cancelled
from cropmodels.readahead import read_ahead


class Source:
    """A generator that records how far it got, on which thread, and whether it was closed."""

    def __init__(self, n: int, fail_at: int | None = None, error: type = ValueError) -> None:
        self.n, self.fail_at, self.error = n, fail_at, error
        self.produced = 0
        self.threads: set[str] = set()
        self.closed_on: str | None = None

    def __iter__(self):
        try:
            for i in range(self.n):
                self.threads.add(threading.current_thread().name)
                if i == self.fail_at:
                    raise self.error(f"failed at {i}")
                self.produced += 1
                yield i
        finally:
            self.closed_on = threading.current_thread().name


def test_items_come_in_order_from_another_thread():
    source = Source(1000)
    assert list(read_ahead(iter(source), 8, "test-ahead")) == list(range(1000))
    assert source.threads == {"test-ahead"}
    assert source.closed_on == "test-ahead"


def test_size_zero_runs_the_source_inline():
    source = Source(5)
    assert list(read_ahead(iter(source), 0)) == list(range(5))
    assert source.threads == {threading.current_thread().name}


@pytest.mark.parametrize("error", [ValueError, Cancelled, MemoryError])
def test_an_error_is_raised_at_its_item(error):
    got = []

    def consume() -> None:
        for item in read_ahead(iter(Source(10, fail_at=5, error=error)), 3):
            got.append(item)

    with pytest.raises(error, match="failed at 5"):
        consume()
    assert got == [0, 1, 2, 3, 4]


def test_the_producer_stays_at_most_size_ahead():
    source = Source(100)
    stream = read_ahead(iter(source), 4)
    assert next(stream) == 0
    time.sleep(0.3)  # the producer fills the queue, then waits
    assert source.produced <= 1 + 4 + 1  # taken, queued, and one waiting to be put
    stream.close()


def test_closing_early_stops_the_thread_and_closes_the_source_on_it():
    before = threading.active_count()
    source = Source(10_000)
    stream = read_ahead(iter(source), 2, "test-ahead")
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert source.closed_on == "test-ahead"  # its finally blocks ran before close returned
    assert source.produced < 10_000
    assert threading.active_count() == before


def test_a_consumer_failure_closes_the_source():
    source = Source(10_000)

    def consume() -> None:
        for item in read_ahead(iter(source), 2):
            if item == 3:
                raise RuntimeError("consumer failed")

    with pytest.raises(RuntimeError, match="consumer"):
        consume()
    assert source.closed_on is not None


def test_the_producer_thread_is_owned_by_its_consumer_for_logging():
    """A log handler listening to one run's thread (the Processing log) can tell that records
    of the producer thread belong to that run: owner_thread maps it to the consumer."""
    import logging

    from cropmodels.readahead import owner_thread

    records: list[logging.LogRecord] = []
    owners: list[int] = []  # asked as a handler does, while the record is emitted
    handler = logging.Handler()

    def emit(record: logging.LogRecord) -> None:
        records.append(record)
        owners.append(owner_thread(record.thread))

    handler.emit = emit  # type: ignore[method-assign]
    logger = logging.getLogger("cropmodels.test_readahead")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    def logging_source():
        for i in range(3):
            logger.info("item %d", i)
            yield i

    try:
        assert list(read_ahead(logging_source(), 2)) == [0, 1, 2]
    finally:
        logger.removeHandler(handler)
    me = threading.get_ident()
    assert len(records) == 3
    assert all(r.thread != me for r in records)
    assert owners == [me, me, me]
    producer = records[0].thread
    assert owner_thread(producer) == producer  # forgotten once the producer ended
