"""torch.distributed for the recipes, launched by ``torchrun`` (gloo on CPU, nccl on GPU).

    torchrun --nproc_per_node 2 -m training.clip output=runs/ddp batch_size=256

Data parallel the way open_clip does it: every rank takes its slice of each global batch, encodes
it, gathers the embeddings of all ranks *with gradient* (``torch.distributed.nn.all_gather``) and
computes the loss of the whole global batch; gradients are then averaged over ranks. Because the
gather's backward sums over ranks, this reproduces single-process training on the global batch
exactly (up to float summation order), as long as nothing before the gather couples the samples of
a batch (BatchNorm in a trained backbone does, as in any DDP run). Only rank 0 writes logs,
checkpoints and the final model.

>>> rank, world = init_from_env(torch.device("cpu"))   # (0, 1) when not launched by torchrun
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def init_from_env(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); no-op otherwise. Idempotent."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return rank_world()


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def shard(x: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (``tensor_split``: sizes differ by at most one)."""
    rank, world = rank_world()
    return x if world == 1 else x.tensor_split(world)[rank]


def gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated in rank order, differentiable (gradients flow back to each rank)."""
    rank, world = rank_world()
    if world == 1:
        return x
    import torch.distributed.nn

    return torch.cat(torch.distributed.nn.all_gather(x), 0)


def average_gradients(model: torch.nn.Module) -> None:
    """Mean of every trainable parameter's gradient over ranks, in one flat all-reduce."""
    import torch.distributed as dist

    _, world = rank_world()
    if world == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (filling caches on disk), the other ranks after it, reading them."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def barrier() -> None:
    import torch.distributed as dist

    if rank_world()[1] > 1:
        dist.barrier()


def destroy() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
