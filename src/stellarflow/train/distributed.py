"""One code path for 1 and N processes: the launch environment, collectives, shards.

``torchrun`` (and thus ``srun torchrun`` under Slurm) starts one process per device and
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
:func:`init_distributed` reads them: without them (or with ``WORLD_SIZE=1``) the run is a
plain single process and every collective below is the identity; with them it joins the
process group (NCCL on CUDA, gloo on CPU) and pins the process to ``cuda:LOCAL_RANK``.

Nothing here changes global torch state except the process group itself and, on CUDA,
the current device; :func:`distributed_session` tears the group down again.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from stellarflow.data.shards import shard_range
from stellarflow.train.config import TrainingError

__all__ = [
    "Distributed",
    "LaunchError",
    "distributed_session",
    "init_distributed",
    "process_device",
    "shard_range",
]

logger = logging.getLogger(__name__)

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class LaunchError(TrainingError):
    """The distributed launch environment is inconsistent (see the message for the fix)."""


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in the job.

    Attributes:
        rank: global rank, 0..world_size-1.
        world_size: number of processes (1 = a plain single process).
        local_rank: rank on this node (selects the GPU).
        backend: "nccl", "gloo", or "" for a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files, logs progress and draws figures."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there is more than one process (collectives do something)."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every process (no-op for a single process)."""
        if self.active:
            torch.distributed.barrier()

    def sum(self, values: Sequence[float], device: torch.device | None = None) -> list[float]:
        """Sum floats over processes, in float64; every rank gets the same result."""
        if not self.active:
            return [float(v) for v in values]
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self._device(device))
        torch.distributed.all_reduce(tensor)
        return [float(v) for v in tensor.cpu()]

    def any(self, flag: bool, device: torch.device | None = None) -> bool:
        """Whether ``flag`` is true on any process."""
        return self.sum([float(flag)], device)[0] > 0

    def broadcast_flag(self, flag: bool, device: torch.device | None = None) -> bool:
        """Rank 0's ``flag`` on every rank (for decisions such as a wall-clock limit)."""
        if not self.active:
            return bool(flag)
        tensor = torch.tensor([float(flag)], device=self._device(device))
        torch.distributed.broadcast(tensor, src=0)
        return bool(tensor.item() > 0)

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank, in place."""
        if not self.active:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(tensor.data, src=0)

    def average_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over processes (one flat all-reduce).

        A parameter without a gradient counts as a zero gradient, so that every rank sends
        the same buffer, and keeps ``grad=None`` (the model's structure, hence which
        parameters are used, is the same on every rank).
        """
        if not self.active or not parameters:
            return
        had = [p.grad is not None for p in parameters]
        flat = torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                for p in parameters
            ]
        )
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p, has_grad in zip(parameters, had, strict=True):
            n = p.numel()
            if has_grad:
                p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def _device(self, device: torch.device | None) -> torch.device:
        if self.backend == "nccl":
            return device if device is not None else torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def _int_env(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{name}={value!r} is not an integer; launch with torchrun") from None


def init_distributed(device: str = "auto") -> Distributed:
    """Join the process group described by torchrun's environment variables.

    Args:
        device: the requested device ("auto", "cpu", "cuda", "cuda:N"): CUDA -> NCCL and
            ``cuda:LOCAL_RANK``; CPU -> gloo.

    Returns:
        The process's place in the job; ``Distributed()`` (rank 0 of 1) without torchrun.

    Raises:
        LaunchError: ``WORLD_SIZE`` > 1 without ``RANK``/``LOCAL_RANK``/``MASTER_ADDR``/
            ``MASTER_PORT``, a rank out of range, CUDA requested but unavailable, or fewer
            GPUs on the node than processes.
    """
    if "WORLD_SIZE" not in os.environ:
        stray = [name for name in ("RANK", "LOCAL_RANK") if name in os.environ]
        if stray and _int_env(stray[0]) != 0:
            raise LaunchError(
                f"{stray[0]} is set without WORLD_SIZE; launch with torchrun (which sets "
                "both) or unset it for a single process"
            )
        return Distributed()
    world_size = _int_env("WORLD_SIZE")
    if world_size < 1:
        raise LaunchError(f"WORLD_SIZE must be >= 1, got {world_size}")
    if world_size == 1:
        return Distributed()
    missing = [name for name in _ENV if name not in os.environ]
    if missing:
        raise LaunchError(
            f"WORLD_SIZE={world_size} is set but {missing} are not; launch with `torchrun "
            "--nproc-per-node K stellarflow ...` (it sets all of them) or unset WORLD_SIZE"
        )
    rank, local_rank = _int_env("RANK"), _int_env("LOCAL_RANK")
    if not 0 <= rank < world_size or local_rank < 0:
        raise LaunchError(
            f"RANK={rank} / LOCAL_RANK={local_rank} do not fit WORLD_SIZE={world_size}"
        )
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if wants_cuda:
        if not torch.cuda.is_available():
            raise LaunchError(
                f"--device {device} was requested but no CUDA GPU is available; use --device cpu"
            )
        if local_rank >= torch.cuda.device_count():
            raise LaunchError(
                f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPUs; "
                "use --nproc-per-node <= the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if wants_cuda else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    logger.info("rank %d of %d (local %d, %s)", rank, world_size, local_rank, backend)
    return Distributed(rank, world_size, local_rank, backend)


def process_device(dist: Distributed, device: str) -> str:
    """The device string for this process: ``cuda:LOCAL_RANK`` under NCCL, else ``device``."""
    if dist.backend == "nccl":
        return f"cuda:{dist.local_rank}"
    if dist.backend == "gloo" and device == "auto":
        return "cpu"
    return device


@contextlib.contextmanager
def distributed_session(device: str = "auto") -> Iterator[Distributed]:
    """:func:`init_distributed`, and tear the process group down on exit if it made it."""
    existed = torch.distributed.is_available() and torch.distributed.is_initialized()
    dist = init_distributed(device)
    try:
        yield dist
    finally:
        if dist.active and not existed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
