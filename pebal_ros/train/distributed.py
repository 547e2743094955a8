"""Single-process or ``torchrun`` multi-process execution, with one object describing where we run.

``torchrun --nproc_per_node N`` starts N processes and sets RANK, WORLD_SIZE and LOCAL_RANK; when
they are present (and WORLD_SIZE > 1) the process group is initialised from them (``env://``), with
NCCL when every rank has its own CUDA device and gloo otherwise (CPU processes, or more ranks than
GPUs). Without them everything degenerates to a single process: rank 0 of 1, no process group.
Only rank 0 writes files and prints; :attr:`DistInfo.is_main` is the test for that.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` picks the local rank's GPU if CUDA is usable, else the CPU; ``cpu``/``cuda``/``cuda:N`` are honoured."""
    pref = (preference or "auto").lower()
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {preference!r} requested but CUDA is not available "
                               "(use --device cpu or auto)")
        if pref == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device(pref)
    if pref == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {preference!r}; use auto, cpu, cuda or cuda:N")


def setup(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Initialise the process group if launched by ``torchrun`` with several ranks; return where we run."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(0, 1, 0, dev, None)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    # NCCL needs one GPU per rank; with more ranks than GPUs on a node, share them over gloo.
    backend = "nccl" if dev.type == "cuda" and local_world <= torch.cuda.device_count() else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank, world_size, local_rank, dev, backend)


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def mean_over_ranks(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average scalar statistics over all ranks (for logging only; gradients are averaged by DDP)."""
    if not info.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=info.device if info.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= info.world_size
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def replica_divergence(model: nn.Module, info: DistInfo) -> float:
    """Largest |p_rank - p_rank0| over all trainable parameters and ranks (0.0 means in sync).

    DDP keeps replicas identical by construction; measuring it once at the end of training is a
    cheap guard against a rank silently training on its own (e.g. a parameter DDP did not register).
    """
    if not info.distributed:
        return 0.0
    params = [p.detach() for p in unwrap(model).parameters() if p.requires_grad]
    if not params:
        return 0.0
    flat = torch.cat([p.reshape(-1).to(torch.float64) for p in params])
    if info.backend != "nccl":
        flat = flat.cpu()
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff.item())
