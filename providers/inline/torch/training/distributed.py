"""Several processes on one job (torchrun): who this process is, its device, and the model wrapped for data
parallelism (DDP) or sharded (FSDP).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address); a plain process is rank 0 of 1.
Every process reads the same rows in the same order and takes its own share of each batch
(:func:`.data.shard`); gradients are averaged across them, so each scales its loss by the world size to keep
the batch's loss a mean over the whole batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .spec import DistributedSpec

log = logging.getLogger(__name__)

# How long a collective waits for a peer; a dead peer otherwise holds the others for gloo's default 30 minutes.
_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    size: int
    backend: str | None  # None: a single process
    strategy: str  # none, ddp or fsdp

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched() -> tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun's environment; (0, 0, 1) for a plain process."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


def device_for(requested: torch.device, local_rank: int, size: int) -> torch.device:
    """Each process of a CUDA job on its own GPU: the one its local rank names."""
    if size > 1 and requested.type == "cuda":
        return torch.device("cuda", local_rank)
    return requested


def start(spec: DistributedSpec, device: torch.device) -> World:
    rank, local_rank, size = launched()
    if size == 1:
        return World(0, 0, 1, None, "none")
    backend = spec.backend if spec.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("the nccl backend needs CUDA GPUs; this job runs on the CPU (use gloo)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=_TIMEOUT)
    strategy = spec.strategy
    if strategy == "none":
        log.info("%d processes and no strategy named: data parallel (ddp)", size)
        strategy = "ddp"
    return World(rank, local_rank, size, backend, strategy)


def stop(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: Any, world: World, spec: DistributedSpec, device: torch.device) -> Any:
    """The model as this process trains it: itself alone, under DDP, or sharded by FSDP."""
    if not world.distributed:
        return model
    if world.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    return _fsdp(model, spec, device)


def _fsdp(model: Any, spec: DistributedSpec, device: torch.device) -> Any:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    options: dict[str, Any] = {"mesh": mesh}
    if spec.fsdp_cpu_offload:
        if device.type == "cuda":
            options["offload_policy"] = CPUOffloadPolicy()
        else:
            log.info("fsdp_cpu_offload: the parameters already live on the CPU")
    if spec.fsdp_wrap_blocks:
        blocks = decoder_blocks(model)
        for block in blocks:
            fully_shard(block, **options)
        log.info("fsdp: one unit per decoder block (%d)", len(blocks))
    fully_shard(model, **options)
    return model


def decoder_blocks(model: Any) -> list[torch.nn.Module]:
    """The model's repeated blocks: the entries of its largest ModuleList (model.layers, transformer.h, ...)."""
    lists = [list(module) for module in model.modules() if isinstance(module, torch.nn.ModuleList)]
    if not lists:
        raise ValueError("fsdp_wrap_blocks: the model has no list of decoder blocks to wrap one by one")
    return max(lists, key=len)


def unwrapped(model: Any) -> Any:
    """The model under a DDP wrapper (FSDP changes the model in place)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


@contextmanager
def accumulating(model: Any, world: World, last: bool) -> Iterator[None]:
    """Skip the gradient exchange on all but a step's last micro-batch."""
    if not world.distributed or last:
        with nullcontext():
            yield
        return
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
        return
    # FSDP2: hold the gradient reduce-scatter until the last micro-batch.
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def total(world: World, *values: float) -> list[float]:
    """The sums of these numbers over every process."""
    if not world.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    if world.backend == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.tolist()]


def gather(world: World, value: Any) -> list[Any]:
    """Every process's ``value`` (small, picklable), in rank order."""
    if not world.distributed:
        return [value]
    values: list[Any] = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def sharded_state_dict(model: Any, world: World) -> dict[str, Any] | None:
    """Under FSDP, the whole model's weights gathered on the CPU (a collective: every process calls it; the
    main one gets them, the others None). None without FSDP: the model then holds its whole weights itself."""
    if not (world.strategy == "fsdp" and world.distributed):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state: dict[str, Any] = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    return state if world.main else None
