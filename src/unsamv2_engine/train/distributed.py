"""Multi-process training with PyTorch DDP, launched by ``torchrun`` (one process per GPU).

``torchrun --nproc_per_node N -m unsamv2_engine finetune ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` joins the process group
through ``env://`` with NCCL on CUDA and gloo on the CPU. Without those variables everything here is
a no-op on a single process.

How a step stays identical to the single-process run with the same global batch:

* the global micro-batch (``batch_size`` images) is cut into contiguous equal shares, one per rank
  (:func:`shard`); every sample's augmentation, clicks and dropout are seeded from
  ``(seed, epoch, index)``, never from the process;
* the loss normaliser is the number of objects averaged across ranks (docs/model-reference.md §4.4), and DDP
  averages gradients across ranks, so the update equals that of one process over all objects;
* only rank 0 writes files and reports progress (:attr:`DistContext.is_main`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from unsamv2_engine.errors import InputError

__all__ = ["DistContext", "current_context", "init_distributed", "launched_by_torchrun", "shard", "shutdown"]

T = TypeVar("T")
# Validation and checkpoint writing happen on rank 0 while the others wait in a barrier.
_TIMEOUT = _dt.timedelta(hours=2)


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


@dataclass(frozen=True)
class DistContext:
    """The place of this process in the run (rank 0 of 1 without DDP) and the collectives it needs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _reduce(self, value: float, op: dist.ReduceOp) -> float:
        if not self.enabled:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op)
        return float(t.item())

    def mean(self, value: float) -> float:
        """The mean of ``value`` over all ranks."""
        return self._reduce(value, dist.ReduceOp.SUM) / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (a cancel request, a bad loss)."""
        return self._reduce(1.0 if flag else 0.0, dist.ReduceOp.MAX) > 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def wrap(self, module: nn.Module, *, find_unused_parameters: bool) -> nn.Module:
        """``module`` in ``DistributedDataParallel`` (itself without DDP)."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False,
                                       find_unused_parameters=find_unused_parameters)

    @contextlib.contextmanager
    def accumulating(self, module: nn.Module, accumulate: bool) -> Iterator[None]:
        """Skip the gradient all-reduce of the forward/backward inside (all but the last of a step)."""
        if accumulate and self.enabled and hasattr(module, "no_sync"):
            with module.no_sync():
                yield
        else:
            yield


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The contiguous share of ``items`` that ``rank`` processes; ``len(items)`` must divide evenly."""
    if len(items) % world_size:
        raise InputError(f"{len(items)} items cannot be shared equally by {world_size} processes")
    per = len(items) // world_size
    return list(items[rank * per:(rank + 1) * per])


def init_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the ``torchrun`` process group (if launched by it) and pick this process's device.

    ``device`` is the device asked for; on CUDA each process takes ``cuda:LOCAL_RANK``. Returns
    the context and the device to train on. Without ``torchrun`` it returns a single-process context.
    """
    if not launched_by_torchrun():
        return DistContext(device=device), device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise RuntimeError(f"process {rank} wants cuda:{local_rank} but only {torch.cuda.device_count()} GPUs are "
                               "visible; start torchrun with --nproc_per_node at most the number of GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise InputError(f"multi-process training runs on CUDA (nccl) or the CPU (gloo), not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world, timeout=_TIMEOUT)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device), device


def current_context(device: torch.device) -> DistContext:
    """The context of an already initialised process group (single process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext(device=device)
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def shutdown() -> None:
    """Leave the process group (no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
