"""Where training runs: the device, mixed precision, and data parallelism across processes (torchrun).

One `Runtime` per process, made by `runtime()` from the command-line options and torchrun's environment
(RANK, WORLD_SIZE, LOCAL_RANK; MASTER_ADDR / MASTER_PORT for the rendezvous):

    torchrun --nproc_per_node K --no-python prumux-deploy train finetune OUT ...

Every process builds the same global batch (same seeded order), keeps its own slice of rows (a multiple
of N, so mux groups never straddle processes), and DistributedDataParallel averages the gradients, so a
K-process run takes the same optimizer steps as a 1-process run up to float rounding. Losses that are a
mean over a data-dependent count (real tokens, retrieval positions) are normalised by the global count
(`mean_of`), so that holds for them too. Only rank 0 writes checkpoints, logs and progress bars.
Backends: NCCL on CUDA, gloo on the CPU (torch.distributed).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from prumux_deploy.devices import resolve_device
from prumux_deploy.errors import PruMuxError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runtime:
    device: torch.device
    precision: str = "fp32"
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # --- mixed precision ---------------------------------------------------------------------------
    def autocast(self):
        """torch.autocast for bf16 / fp16 (weights and optimizer state stay fp32); nothing for fp32."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def grad_scaler(self):
        """A gradient scaler for fp16 (small gradients underflow in half precision); disabled otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    # --- data parallelism ----------------------------------------------------------------------------
    def shard(self, batch: dict, micro_steps: int = 1) -> list[dict]:
        """This process's rows of a global batch for each of `micro_steps` micro-batches (grad accumulation):
        the batch is cut into micro-batches first, then each micro-batch into one slice per process, so a
        micro-batch is the same rows whatever the process count. Tensors go to the device."""
        micro = batch["input_ids"].shape[0] // micro_steps
        per = micro // self.world_size
        starts = [m * micro + self.rank * per for m in range(micro_steps)]
        return [{k: v[s:s + per].to(self.device) for k, v in batch.items()} for s in starts]

    def global_sum(self, value) -> torch.Tensor:
        """Sum of a (detached) tensor over all processes; the value itself in a 1-process run."""
        value = torch.as_tensor(value, dtype=torch.float64, device=self.device).detach().clone()
        if self.distributed:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def mean_of(self, local_sum: torch.Tensor, local_count) -> torch.Tensor:
        """This process's share of a mean over all processes: local_sum * K / global count. With DDP
        averaging gradients over the K processes, the update is that of the global mean."""
        return local_sum * (self.world_size / self.global_sum(local_count).to(local_sum.dtype).clamp(min=1))

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel around a module (the module itself in a 1-process run). Unused parameters
        are expected: masked training skips sub-layers whose gates are off."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)

    def no_sync(self, module, last_micro_step: bool):
        """Skip DDP's gradient all-reduce on all but the last micro-step of an accumulated step."""
        if self.distributed and not last_micro_step and hasattr(module, "no_sync"):
            return module.no_sync()
        return contextlib.nullcontext()

    def all_gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """Rows computed by different processes (zeros elsewhere) -> the full tensor on every process."""
        if self.distributed:
            local = local.to(self.device)
            dist.all_reduce(local, op=dist.ReduceOp.SUM)
        return local.cpu()

    def barrier(self):
        if self.distributed:
            dist.barrier()


_RUNTIME: Runtime | None = None


def runtime(device: str = "auto", precision: str = "fp32") -> Runtime:
    """The process's Runtime; joins torchrun's process group the first time (env:// rendezvous)."""
    global _RUNTIME
    if precision not in PRECISIONS:
        raise PruMuxError(f"`precision` {precision!r}: choose fp32, bf16 or fp16")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    if precision == "fp16" and dev.type != "cuda":
        raise PruMuxError("`precision` fp16 needs a CUDA device (half-precision training with a gradient scaler); "
                          "on the CPU use `precision` bf16")
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    _RUNTIME = Runtime(dev, precision, rank, world)
    return _RUNTIME


def current() -> Runtime:
    """The Runtime the stages run under (a 1-process CPU fp32 one if none was made)."""
    return _RUNTIME or Runtime(torch.device("cpu"))


def shutdown():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
