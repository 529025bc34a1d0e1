"""Multi-process training under ``torchrun``: who this process is, and the few collectives the engine needs.

Design (kept deliberately simple):

* Every rank runs the engine over the same recipe. Rank 0 holds the run folder's lock, decides
  whether each stage is cached, and is the only one that writes into the cache, the manifest and
  the report.
* Stages whose registry entry says ``distributed=True`` (they train with :func:`compressor.train.fit.fit`)
  run on every rank: the model is wrapped in DistributedDataParallel, the training set is sharded
  with a DistributedSampler, and metrics are reduced across ranks. Non-zero ranks write their copy
  of the stage's files into a private scratch folder that is deleted afterwards.
* Every other stage (export, benchmark, evaluate, ...) runs on rank 0 alone while the other ranks
  wait; they then read rank 0's result from the cache. A benchmark is thus never disturbed by
  idle ranks competing for the cores.
* Without ``torchrun`` (no ``WORLD_SIZE`` in the environment, or 1) nothing here does anything.

Ranks share the run folder, so multi-node runs need it on a shared file system.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

# Non-zero ranks wait for rank 0's single-process stages (exports, benchmarks) inside a collective,
# so the time-out must cover the longest of those, not just a training step.
WAIT_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a ``torchrun`` job (one process, rank 0 of 1, without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def from_env(environ: dict[str, str] | None = None) -> DistInfo:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as set by ``torchrun``."""
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return SINGLE
    return DistInfo(rank=int(env["RANK"]), world_size=world, local_rank=int(env.get("LOCAL_RANK", "0")))


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    """One GPU per rank on CUDA (``cuda:LOCAL_RANK``); the CPU is shared."""
    if info.enabled and device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return device


@contextlib.contextmanager
def process_group(info: DistInfo, device: torch.device) -> Iterator[None]:
    """Initialise the default process group for the job (NCCL on CUDA, gloo on CPU) and tear it down."""
    import torch.distributed as dist

    if not info.enabled or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=info.rank, world_size=info.world_size, timeout=WAIT_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(info: DistInfo, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks."""
    if not info.enabled:
        return values
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.tolist()]
