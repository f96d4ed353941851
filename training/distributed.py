"""torchrun awareness: one code path for a single process and for N ranks (gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.errors import PhonerecError


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def main_rank() -> bool:
    """Rank 0 of a torchrun job (or no job), from the environment, before any process group exists:
    the one process that writes outputs."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def _device_kind(device: str) -> str:
    """'cpu' or 'cuda' for a --device value; one line where CUDA was asked for and is not here."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        why = "this torch is a CPU build" if torch.version.cuda is None else "no GPU is visible"
        raise PhonerecError(f"--device cuda: CUDA is not available on this machine ({why}); use --device cpu "
                            "(or auto)")
    return device


def init(device: str = "auto") -> Context:
    """Join the torchrun job if there is one (RANK/WORLD_SIZE set), else run alone."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = _device_kind(device)
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30),
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return Context(rank=rank, world=world, local_rank=local, device=dev)


def local(device: str = "auto") -> Context:
    """A context of one process on this machine's device, whatever torchrun set: for the work rank 0
    does alone after the ranks are done (train's choice of the decoding)."""
    device = _device_kind(device)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device("cuda", local_rank) if device == "cuda" else torch.device(device)
    return Context(device=dev)


def all_sum(ctx: Context, values: list[float]) -> list[float]:
    """Sum a few numbers over ranks (one collective)."""
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    if ctx.distributed:
        dist.all_reduce(t)
    return t.tolist()


def broadcast_bytes(ctx: Context, data: bytes | None) -> bytes | None:
    """Rank 0's bytes (None: rank 0 has none) on every rank; collective. Ranks on other machines
    need not see rank 0's disk (a checkpoint to resume from, the model to decode with). Sent as
    a length and a uint8 tensor: nothing is pickled."""
    if not ctx.distributed:
        return data
    n = torch.tensor([-1 if data is None else len(data)], dtype=torch.int64, device=ctx.device)
    dist.broadcast(n, src=0)
    if int(n) < 0:
        return None
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if ctx.is_main and int(n) else \
        torch.empty(int(n), dtype=torch.uint8)
    buf = buf.to(ctx.device)
    dist.broadcast(buf, src=0)
    return data if ctx.is_main else buf.cpu().numpy().tobytes()


def file_from_rank0(ctx: Context, path: Path) -> bytes | None:
    """The file's bytes as rank 0 reads them (None where rank 0 has no such file), on every rank;
    collective. A checkpoint needs to be on rank 0's disk only."""
    return broadcast_bytes(ctx, path.read_bytes() if ctx.is_main and path.is_file() else None)


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def shutdown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
