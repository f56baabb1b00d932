"""Data-parallel training across processes: start-up from ``torchrun``'s environment, and helpers.

``torchrun`` with ``nproc_per_node=K`` (``scoretut ddpm train ...``) starts ``K`` copies of the command with
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in their environment. :func:`setup` turns that into
a process group (NCCL on GPUs, one GPU per process; gloo on the CPU) and returns this process's
place in it. :func:`scoretut.train.train` then notices the group: it wraps the model in
:class:`~torch.nn.parallel.DistributedDataParallel` (gradients are averaged across processes
after every backward pass, so all copies take the same optimiser step), logs the loss averaged
over processes, and lets only rank 0 print or write files. Without ``torchrun`` (or with
``WORLD_SIZE=1``) nothing here does anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from scoretut.errors import UsageError
from scoretut.runtime import device_from_arg

__all__ = ["World", "all_gather", "all_mean", "is_main", "setup", "teardown", "world"]


@dataclass(frozen=True)
class World:
    """This process's ``rank`` among ``size`` processes, and the device it computes on."""

    rank: int
    size: int
    device: torch.device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not an integer; launch with torchrun") from None


def setup(device: str = "auto", timeout_s: float = 1800.0) -> World:
    """Join the process group described by ``torchrun``'s environment (if any) and pick a device.

    With ``WORLD_SIZE > 1``: CUDA (``device`` ``auto`` or ``cuda``) gives process ``LOCAL_RANK``
    the GPU ``cuda:LOCAL_RANK`` and the NCCL backend; a CPU ``device`` uses gloo. Otherwise the
    device is :func:`scoretut.runtime.device_from_arg` of ``device`` and no group is created.
    """
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return World(0, 1, device_from_arg(device))
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    base = device_from_arg(device)
    if base.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local} has no GPU ({torch.cuda.device_count()} visible); "
                             "start torchrun with fewer processes per node")  # fmt: skip
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev, backend = base, "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=size, timeout=timedelta(seconds=timeout_s))
    return World(rank, size, dev)


def teardown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """``(rank, size)`` of the current process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the process that logs and writes files."""
    return world()[0] == 0


def all_mean(value: float, device: torch.device | str) -> float:
    """The mean of ``value`` over all processes (``value`` itself in a single process); ``device``
    is where the process group's backend reduces (the training device)."""
    _, size = world()
    if size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / size


def all_gather(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, …]`` on every process (``[obj]`` in a single process)."""
    _, size = world()
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out
