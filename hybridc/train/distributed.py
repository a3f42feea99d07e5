"""Data-parallel training across processes (torchrun or torch.multiprocessing) with DDP.

How a global batch is split: every process holds the whole dataset (the DeviceLoader keeps it on the device)
and draws the *same* global batch (same seed, same position); process r takes samples r, r+W, r+2W, ...
Each process's loss is its sum of per-sample losses times W / B_global, so DDP's gradient *average* over the
W processes is exactly the gradient of the mean loss over the global batch, whatever B_global mod W is. The
EP backward is a custom autograd Function that returns ordinary parameter gradients, so DDP's gradient hooks
fire unchanged and all-reduce them.

BatchNorm in digital blocks: on CUDA it is converted to SyncBatchNorm (statistics over the global batch, as in
one process). On CPU (gloo) SyncBatchNorm is not supported by PyTorch, so each process normalises with its own
shard's statistics, and the running statistics are those of rank 0 (DDP broadcasts buffers from rank 0):
expect small differences from a one-process run for models with BatchNorm, none for models without.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from hybridc.errors import HybridcError


class DistributedError(HybridcError):
    """The distributed environment is incomplete or inconsistent."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job. `world_size == 1` means no process group (plain training)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes the run directory and prints."""
        return self.rank == 0


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    """`auto` -> CUDA when available else CPU; `cuda` without a GPU is an error, not a silent CPU run."""
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise DistributedError(
                "--device cuda was requested but no CUDA GPU is available (use --device cpu or auto)"
            )
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if pref not in ("auto", "cpu"):
        raise DistributedError(f"unknown device {pref!r}; use auto, cpu or cuda")
    return torch.device("cpu")


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment variables (0, 1, 0 when absent)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise DistributedError(
            f"malformed torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {exc}"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return rank, world, local


def init_distributed(
    device_pref: str = "auto", timeout_s: float = 1800.0
) -> tuple[DistContext, torch.device]:
    """Join the process group described by the environment (if any) and pick this process's device.

    Backend: nccl for CUDA, gloo for CPU. An already-initialised group (e.g. a test that called
    `init_process_group` itself) is reused.
    """
    rank, world, local = env_world()
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    device = resolve_device(device_pref, local)
    if world == 1:
        return DistContext(), device
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise DistributedError(
                "WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are not set; launch with "
                "`torchrun --nproc-per-node N -m hybridc train ...`"
            )
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s)
        )
    else:
        backend = dist.get_backend()
    return DistContext(rank=rank, world_size=world, local_rank=local, backend=backend), device


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (after a final barrier so no process exits while others still talk)."""
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This process's samples of a global batch: every `world_size`-th one, starting at `rank`."""
    return x[ctx.rank :: ctx.world_size] if ctx.enabled else x


def loss_scale(global_batch: int, ctx: DistContext) -> float:
    """Factor turning a *sum* of per-sample losses on a shard into this process's share of the global mean:
    after DDP averages the W gradients, the result is ∇ mean over the global batch."""
    return ctx.world_size / global_batch


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over processes in place (a no-op for one process)."""
    if ctx.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_flag(flag: bool, device: torch.device, ctx: DistContext) -> bool:
    """True on every process when `flag` is true on any (used to stop all processes at the same batch)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def wrap_ddp(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` (SyncBatchNorm on CUDA); the model itself when not distributed."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DDP(model, device_ids=[device.index], output_device=device.index)
    return DDP(model)


def free_port() -> int:
    """A free TCP port on localhost (for tests and single-node launches without torchrun)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
