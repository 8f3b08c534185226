"""Multi-process training under ``torchrun``: process group, device, and small collectives.

``torchrun --nproc_per_node N -m lowrank.train train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` then joins the process group (NCCL on CUDA, gloo on CPU) and the
loop wraps the net in ``DistributedDataParallel``. Each rank draws its own share of the global
batch (see :class:`lowrank.data.PatchSampler`), so ``--batch`` is per process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "setup",
    "teardown",
    "barrier",
    "all_reduce_mean",
    "all_reduce_sum",
    "broadcast_object",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> tuple[DistInfo, torch.device]:
    """Join the process group if launched by ``torchrun`` and pick this process's device.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).

    Returns:
        ``(info, device)``; a single process gets ``DistInfo()`` and no process group.

    Raises:
        ValueError: ``cuda`` requested without a GPU.
    """
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want not in ("cpu", "cuda"):
        raise ValueError(f"--device {want!r}: use cpu or cuda")
    if want == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if want == "cuda":
        dev = torch.device("cuda", info.local_rank if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return info, dev


def teardown() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: float | torch.Tensor, device: torch.device) -> float | torch.Tensor:
    """The mean over the ranks of a Python number, or of a tensor (element-wise, on its device
    and without a host sync); the value itself in a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return value if isinstance(value, torch.Tensor) else float(value)
    if isinstance(value, torch.Tensor):
        t = value.detach().clone()
        dist.all_reduce(t)
        return t / dist.get_world_size()
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of a tensor over the ranks (the tensor itself in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = value.detach().clone()
    dist.all_reduce(t)
    return t


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s Python object on every rank (the object itself in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
