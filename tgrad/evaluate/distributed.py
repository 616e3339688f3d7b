"""The evaluation job under torchrun: the process group (NCCL on GPUs, gloo on CPU), each
rank's device, and the collective calls the job makes; a single process needs none."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class _Group:
    rank: int
    world: int
    local_rank: int
    created: bool


def _join_group(device: str) -> _Group:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (NCCL for CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Group(0, 1, 0, False)
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return _Group(dist.get_rank(), dist.get_world_size(), local_rank, False)
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo")
    return _Group(rank, world, local_rank, True)


def _device_for(device: str, group: _Group) -> torch.device:
    chosen = torch.device(device)
    if chosen.type == "cuda" and chosen.index is None and group.world > 1:
        return torch.device("cuda", group.local_rank)
    return chosen


def _all_gather(value, group: _Group) -> list:
    if group.world == 1:
        return [value]
    import torch.distributed as dist

    gathered: list = [None] * group.world
    dist.all_gather_object(gathered, value)
    return gathered


def _gather_to_zero(value, group: _Group) -> list | None:
    if group.world == 1:
        return [value]
    import torch.distributed as dist

    gathered: list | None = [None] * group.world if group.rank == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def _barrier(group: _Group) -> None:
    if group.world > 1:
        import torch.distributed as dist

        dist.barrier()
