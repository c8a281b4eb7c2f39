"""Extraction beyond one machine: spatial blocks of parcels as tasks on a dask.distributed cluster.

A country is about a hundred Sentinel-2 tiles and millions of parcels; one machine extracts a
tile in minutes (benchmarks/). Here the parcels are cut into spatial blocks (squares of the
stack's grid, ``block_px`` pixels a side, by the centre of each parcel's bounding box); each block
is one task that runs the ordinary streamed :func:`~.extract.extract` on its parcels, on any
worker, and returns its parcels' results. Blocks are submitted a few at a time (``in_flight``
per worker thread) and results come back as they finish, so the client's memory stays bounded
whatever the number of parcels; the caller writes them (e.g. :func:`~.store.write_store`, which
takes parcels in any order). A parcel's result depends only on the parcel and the stack (the
extractor's chunking never changes it, see the tests), so a cluster run gives exactly the
results of one process.

The workers must see the stack's files at the same paths (a shared file system, or the same
layout on every machine; ``/vsis3/``-style GDAL paths also work) and have this package
importable. Start a cluster with ``dask scheduler`` and ``dask worker ADDRESS --nthreads 1``
(the extractor uses its own threads), then pass ``--scheduler ADDRESS`` to the command line.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .extract import ExtractConfig, ParcelData, extract, read_parcels
from .progress import CancelFn, ProgressFn, check_cancelled, never_cancelled, no_progress
from .stack import Stack, open_stack

LOG = logging.getLogger(__name__)

DEFAULT_BLOCK_PX = 2048  # 20.5 km at 10 m: thousands of parcels, one row buffer of a worker


def blocks(gdf: Any, stack: Stack, block_px: int = DEFAULT_BLOCK_PX) -> list[np.ndarray]:
    """Input positions of the parcels grouped into square blocks of the stack grid, in row-major
    block order. Parcels without a usable geometry or outside the grid go to the nearest block
    (the extractor gives them their status)."""
    if block_px < 1:
        raise ValueError(f"block_px must be >= 1, not {block_px}")
    gdf = gdf if gdf.crs is None or gdf.crs == stack.grid.crs else gdf.to_crs(stack.grid.crs)
    bounds = gdf.geometry.bounds.to_numpy(dtype=np.float64)  # NaN for empty geometries
    t = stack.grid.transform
    cx = np.nan_to_num((bounds[:, 0] + bounds[:, 2]) / 2, nan=t.c)
    cy = np.nan_to_num((bounds[:, 1] + bounds[:, 3]) / 2, nan=t.f)
    n_rows = max(1, math.ceil(stack.grid.height / block_px))
    n_cols = max(1, math.ceil(stack.grid.width / block_px))
    col = np.clip(((cx - t.c) / t.a) // block_px, 0, n_cols - 1).astype(np.int64)
    row = np.clip(((cy - t.f) / t.e) // block_px, 0, n_rows - 1).astype(np.int64)
    key = row * n_cols + col
    order = np.argsort(key, kind="stable")
    cuts = np.flatnonzero(np.diff(key[order])) + 1
    return [part for part in np.split(order, cuts) if len(part)]


def _extract_block(
    parcels: Any, stack_source: str, positions: np.ndarray, config: ExtractConfig
) -> list[ParcelData]:
    """One task: extract the parcels of a block; indices mapped back to input positions."""
    out = []
    for data in extract(parcels, stack_source, config):
        data.index = int(positions[data.index])
        out.append(data)
    return out


def _classify_block(
    parcels: Any, stack_source: str, positions: np.ndarray, classifier: Any, config: Any
) -> tuple[list[Any], Any]:
    """One task: classify the parcels of a block; indices mapped back to input positions."""
    from .predict import PredictSummary

    summary = PredictSummary()
    out = []
    for prediction in classifier.classify(parcels, stack_source, config, summary=summary):
        prediction.index = int(positions[prediction.index])
        out.append(prediction)
    return out, summary


def _client(scheduler: Any) -> tuple[Any, bool]:
    try:
        from distributed import Client
    except ImportError:
        raise ValueError(
            "running on a cluster needs dask.distributed: pip install 'dask[distributed]'"
        ) from None
    if isinstance(scheduler, Client):
        return scheduler, False
    return Client(scheduler), True


def _run_blocks(
    client: Any,
    gdf: Any,
    parts: list[np.ndarray],
    submit: Any,
    in_flight: int,
    is_cancelled: CancelFn,
) -> Iterator[Any]:
    """Submit ``submit(block, positions)`` for each block, at most ``in_flight`` per worker
    thread at a time; yield each task's result as it finishes. Leftovers are cancelled."""
    from distributed import as_completed

    limit = max(1, in_flight * max(1, sum(client.nthreads().values())))
    pending = iter(parts)
    running = as_completed()

    def submit_next() -> None:
        positions = next(pending, None)
        if positions is not None:
            running.add(submit(gdf.iloc[positions], positions))

    try:
        for _ in range(limit):
            submit_next()
        for future in running:
            check_cancelled(is_cancelled)
            result = future.result()
            future.release()
            submit_next()
            yield result
    finally:
        leftover = list(running.futures)  # cancelled or failed: nothing keeps running
        if leftover:
            client.cancel(leftover)


def _on_cluster(
    parcels: Any,
    stack: str | Path,
    scheduler: Any,
    task: Any,
    extra: tuple[Any, ...],
    *,
    scatter: tuple[Any, ...] = (),
    count: Any = len,
    block_px: int,
    in_flight: int,
    progress: ProgressFn,
    is_cancelled: CancelFn,
) -> Iterator[Any]:
    """``task(block, stack_source, positions, *scattered, *extra)`` for every spatial block of
    ``parcels``, on the cluster; yields each task's result as it finishes. ``scatter``: objects
    sent to every worker once; ``count(result)``: parcels in a result, for ``progress``."""
    stack_source = str(stack)
    gdf = read_parcels(parcels)
    parts = blocks(gdf, open_stack(stack_source), block_px)
    client, own = _client(scheduler)
    try:
        LOG.info("%d parcels in %d blocks on a dask cluster", len(gdf), len(parts))
        shared = [client.scatter(item, broadcast=True) for item in scatter]

        def submit(block: Any, positions: np.ndarray) -> Any:
            return client.submit(task, block, stack_source, positions, *shared, *extra,
                                 pure=False)  # fmt: skip

        done = 0
        for result in _run_blocks(client, gdf, parts, submit, in_flight, is_cancelled):
            yield result
            done += count(result)
            progress(done / max(len(gdf), 1), f"{done} of {len(gdf)} parcels")
    finally:
        if own:
            client.close()


def extract_on_cluster(
    parcels: Any,
    stack: str | Path,
    scheduler: Any,
    config: ExtractConfig | None = None,
    *,
    block_px: int = DEFAULT_BLOCK_PX,
    in_flight: int = 2,
    progress: ProgressFn = no_progress,
    is_cancelled: CancelFn = never_cancelled,
) -> Iterator[ParcelData]:
    """Like :func:`~.extract.extract` (same results, any order), run as tasks on a dask cluster.

    ``scheduler``: the scheduler's address (``tcp://host:8786``) or a ``distributed.Client``.
    """
    for results in _on_cluster(
        parcels, stack, scheduler, _extract_block, (config or ExtractConfig(),),
        block_px=block_px, in_flight=in_flight, progress=progress, is_cancelled=is_cancelled,
    ):  # fmt: skip
        yield from results


def classify_on_cluster(
    parcels: Any,
    stack: str | Path,
    classifier: Any,
    scheduler: Any,
    config: Any = None,
    *,
    block_px: int = DEFAULT_BLOCK_PX,
    in_flight: int = 2,
    summary: Any = None,
    progress: ProgressFn = no_progress,
    is_cancelled: CancelFn = never_cancelled,
) -> Iterator[Any]:
    """Like :meth:`~.predict.Classifier.classify` (same predictions, any order), each spatial
    block a task on a dask cluster; the classifier (model and card) is sent to every worker
    once. ``summary`` (a :class:`~.predict.PredictSummary`) receives the merged counts."""
    from .predict import PredictConfig

    for predictions, part in _on_cluster(
        parcels, stack, scheduler, _classify_block, (config or PredictConfig(),),
        scatter=(classifier,), count=lambda result: len(result[0]), block_px=block_px,
        in_flight=in_flight, progress=progress, is_cancelled=is_cancelled,
    ):  # fmt: skip
        if summary is not None:
            for prediction in predictions:
                summary.add(prediction)
            summary.device = summary.device or part.device
            summary.batch_size = max(summary.batch_size, part.batch_size)
            summary.notes.extend(n for n in part.notes if n not in summary.notes)
        yield from predictions
