"""Data-parallel training on several processes (GPUs) with ``torch.distributed`` (DDP).

Launched by ``torchrun``, which sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``::

    torchrun --standalone --nproc_per_node 4 -m cropmodels train --store S --model cnn_gru9 ...

Every process reads the same store and runs the same protocol (same folds, same normalisation
statistics, same shuffled batch order); each batch of ``batch_size`` parcels is split across the
processes, and the gradients are averaged so that an update equals the one-process update of the
whole batch (the paper's batch of 32 stays a batch of 32, whatever the number of GPUs; raise
``--batch-size`` to use large GPUs fully). BatchNorm statistics are those of each process's
share of the batch (``SyncBatchNorm`` needs CUDA; not used, so results match one process
exactly only for models without BatchNorm). Validation and test parcels are split too and the
probabilities gathered. Only rank 0 writes checkpoints, models, reports and prints.

Backend: NCCL with one GPU per process (``cuda:LOCAL_RANK``) when the run's device is CUDA, gloo
on CPU (used by the tests: two CPU processes).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    backend: str

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Started by torchrun (or another launcher) with more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def setup(device: str = "auto") -> DistInfo | None:
    """Join the process group torchrun describes; None when running as a single process.

    ``device`` is the run's device choice: CUDA (auto with a GPU, cuda, cuda:N) -> NCCL and this
    process's GPU ``cuda:LOCAL_RANK``; cpu -> gloo.
    """
    if not launched():
        return None
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise ValueError(
            f"this torch {torch.__version__} build has no torch.distributed; run one process"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but torch sees no CUDA GPU; use cpu")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"process {local_rank} has no GPU: {torch.cuda.device_count()} visible; start "
                "torchrun with --nproc_per_node at most the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    info = current()
    assert info is not None
    LOG.info("process %d of %d (%s backend)", info.rank, info.world, info.backend)
    return info


def current() -> DistInfo | None:
    """This process's place in an initialised group of more than one process, else None."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed
        return None
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return DistInfo(
        rank=dist.get_rank(),
        world=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=str(dist.get_backend()),
    )


def is_main() -> bool:
    info = current()
    return info is None or info.main


def device_for(info: DistInfo | None, device: Any) -> Any:
    """The process's device: its own GPU under NCCL, else ``device`` unchanged."""
    import torch

    if info is not None and info.backend == "nccl":
        return torch.device("cuda", info.local_rank)
    return device


def share(n: int, info: DistInfo | None) -> slice:
    """This process's share of a batch of ``n`` items (interleaved: sizes differ by one at most)."""
    if info is None:
        return slice(None)
    return slice(info.rank, n, info.world)


def gather_rows(values: np.ndarray, n: int, info: DistInfo | None) -> np.ndarray:
    """Reassemble (n, ...) from every process's interleaved share ``values[rank::world]``."""
    if info is None:
        return values
    import torch.distributed as dist

    parts: list[Any] = [None] * info.world
    dist.all_gather_object(parts, values)
    out = np.empty((n, *values.shape[1:]), values.dtype)
    for rank, part in enumerate(parts):
        out[rank :: info.world] = part
    return out


def barrier(info: DistInfo | None) -> None:
    if info is not None:
        import torch.distributed as dist

        dist.barrier()


def shutdown() -> None:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
