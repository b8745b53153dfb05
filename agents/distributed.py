"""What the agents need from several processes (accelerate / torch.distributed, gloo or NCCL):
everyone's prompts and rewards for advantage normalisation, and averaged gradients. With one
process every function is the identity."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def gather_prompts_and_rewards(prompts: Sequence[str], rewards: torch.Tensor) -> tuple[list[str], torch.Tensor, slice]:
    """Every process's prompts and rewards, concatenated in rank order, and this process's slice.
    All processes must pass the same number of samples."""
    if not is_distributed():
        return list(prompts), rewards, slice(0, len(prompts))
    gathered_prompts: list[list[str]] = [[] for _ in range(world_size())]
    dist.all_gather_object(gathered_prompts, list(prompts))
    gathered_rewards = [torch.empty_like(rewards) for _ in range(world_size())]
    dist.all_gather(gathered_rewards, rewards.contiguous())
    n = len(prompts)
    return [p for part in gathered_prompts for p in part], torch.cat(gathered_rewards), slice(rank() * n, (rank() + 1) * n)


def average_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over the processes (before the optimizer step); the
    gradients of a sharded denoiser (`FineTuning.shard`: DTensors) FSDP has averaged already."""
    if not is_distributed():
        return
    from torch.distributed.tensor import DTensor

    for p in parameters:
        if p.grad is not None and not isinstance(p.grad, DTensor):
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world_size()
