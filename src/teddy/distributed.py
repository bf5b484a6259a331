"""Data-parallel training with torch.distributed: NCCL on GPUs, gloo on CPU.

A stage that wants N processes calls `launch`, which starts torchrun
(`python -m torch.distributed.run --standalone --nproc_per_node N`) on this module; each
process calls `init_from_env`, runs the same stage function and only rank 0 writes outputs.
Every process draws the same epoch plan (same seed) and trains on its own contiguous share of
each batch (teddy.student_data.StudentData); DDP averages the gradients, and the loss of each
share is weighted by its size, so the update equals one process on the whole batch (up to
float summation order; BatchNorm statistics are per process, as with gradient accumulation).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from teddy.errors import TeddyError


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def in_launched_process() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group torchrun described in the environment; returns this process's
    device (cuda:LOCAL_RANK on GPU). A no-op outside torchrun."""
    if not in_launched_process() or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if rank_world()[1] == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if rank_world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def processes_for(cfg: dict, device: torch.device) -> int:
    """How many processes a student run uses: evaluate.processes, else gpus_per_job on CUDA.
    Asking for more GPUs than are visible is an error."""
    gpus = int(cfg.get("gpus_per_job", 0))
    processes = int(cfg["evaluate"].get("processes") or (gpus if device.type == "cuda" else 1) or 1)
    if device.type == "cuda" and processes > torch.cuda.device_count():
        raise TeddyError(f"{processes} processes asked (gpus_per_job / evaluate.processes) but "
                         f"{torch.cuda.device_count()} GPUs are visible")
    return max(1, processes)


def _fd(stream):
    """The stream's file descriptor (the stage's log file), so the processes log there too."""
    try:
        stream.flush()
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def launch(processes: int, target: str, *args, **kwargs) -> None:
    """Run `target` ("module:function") in `processes` torchrun processes and wait."""
    with tempfile.TemporaryDirectory(prefix="teddy-ddp-") as tmp:
        call = Path(tmp) / "call.pt"
        torch.save({"target": target, "args": args, "kwargs": kwargs}, call)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "--module", "teddy.distributed", str(call)]
        proc = subprocess.run(cmd, stdout=_fd(sys.stdout), stderr=_fd(sys.stderr))
    if proc.returncode != 0:
        raise TeddyError(f"{target} failed in one of its {processes} processes (exit {proc.returncode}); "
                         f"see the log above")


def main(call_path: str) -> None:
    call = torch.load(call_path, weights_only=False)
    module, name = call["target"].split(":")
    try:
        getattr(importlib.import_module(module), name)(*call["args"], **call["kwargs"])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
