"""Class sharding over ``torch.distributed`` ranks.

Classes are independent in both matching strategies (each class has its own random streams,
loss copy and optimiser), so rank ``r`` of ``W`` distils classes ``r, r + W, r + 2W, ...`` and
the results are combined with one ``all_reduce`` of zero-filled tensors: adding zeros is exact,
so every rank ends with bit-for-bit the tensors a single process computes. No pickling is
involved (``gather_object`` would unpickle what other ranks send).

Works with any backend the process group was created with: gloo on CPU, NCCL on CUDA (tensors
are moved to the current CUDA device for NCCL).
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["world", "shard", "class_seed", "all_reduce_sum", "any_rank", "broadcast_module", "init_from_env", "barrier",
           "shutdown"]


def world() -> Tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(num_items: int, rank: int, world_size: int) -> List[int]:
    """The items (classes, evaluation runs) rank ``rank`` owns: ``rank, rank + world_size, ...``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in 0..{world_size - 1}, got {rank}")
    return list(range(rank, num_items, world_size))


def class_seed(seed: int, k: int, stream: int = 0) -> int:
    """A seed for class ``k``'s random stream ``stream``, independent of how classes are sharded."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(k), int(stream)]).generate_state(1)[0])


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over ranks (identity without a process group); returns a new tensor on ``t``'s device."""
    if world()[1] == 1:
        return t.clone()
    buf = t.detach().to(_comm_device()).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (``flag`` itself without a process group); every rank
    must call it."""
    if world()[1] == 1:
        return bool(flag)
    return bool(all_reduce_sum(torch.tensor([float(bool(flag))])).item() > 0)


def broadcast_module(module: nn.Module, src: int = 0) -> nn.Module:
    """Overwrite every parameter and buffer of ``module`` with rank ``src``'s (in place)."""
    if world()[1] == 1:
        return module
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            buf = t.detach().to(_comm_device()).clone()
            dist.broadcast(buf, src)
            t.copy_(buf.to(t.device))
    return module


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if world()[1] > 1:
        dist.barrier()


def init_from_env(backend: Optional[str] = None) -> bool:
    """Initialise the default process group from ``torchrun``'s environment (``WORLD_SIZE`` > 1).

    ``backend`` defaults to NCCL when CUDA is available, else gloo. Returns whether a group was
    created here (the caller then destroys it).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def shutdown(created: bool, clean: bool = True) -> None:
    """Destroy the process group ``init_from_env`` created (no-op when ``created`` is false).

    With ``clean`` (the run succeeded) every rank first waits at a barrier: a rank that tears
    gloo down while its peer is still sending or writing can abort the peer at exit
    ("terminate called without an active exception"). After an error no barrier is
    attempted, since the other ranks may never reach it.
    """
    if not created:
        return
    if clean:
        barrier()
        _fence()
    dist.destroy_process_group()


def _fence() -> None:
    """Wait, through the process group's store rather than gloo, until every rank has left the last
    barrier. Gloo's barrier can return on one rank while its last message to a peer is still in
    flight; a rank that then destroys its group aborted the peer in 1 of 15 two-rank runs on a
    loaded 2-core machine ("terminate called without an active exception"). A store that fails here
    (its host gone) only skips the wait: every rank's work is done by now."""
    rank, size = world()
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # a restarted job's keys are its own
    keys = [f"ddmetrics/shutdown/{attempt}/{r}" for r in range(size)]
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set(keys[rank], "1")
        store.wait(keys)
    except RuntimeError:
        pass
