"""Multi-process runs (DistributedDataParallel), set up from submitit's JobEnvironment.

One task per GPU (or per CPU process with gloo): SLURM starts `tasks_per_node × nodes`
copies of the job; each reads its rank from submitit's JobEnvironment and joins the group
at the first node's address. The config's `pretrain.batch_size` stays the effective batch
(lr = blr × batch / 256, as MAE): every rank draws the same global batch, augmentation and
masks from the epoch's generator and trains on its slice, so the gradients DDP averages are
those of the whole batch — the same math as one process.

The evals run under the same group: the fine-tune trains its share of each batch under DDP,
the probe and k-NN extract features from their shares and gather them (`gather_share`), and
the main process's choices (a cached encoder or baseline, a resumed checkpoint) reach the
other ranks by `from_main`, so that every rank goes through the same collectives.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bench.data.shards import share


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Rank()


def current() -> Rank:
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Rank(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def init_from_submitit(device_type: str) -> Rank:
    """Join the process group of a multi-task SLURM job (no-op for a single task)."""
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks == 1:
        return SINGLE
    os.environ["LOCAL_RANK"] = str(env.local_rank)
    job = env.job_id.split("_")[0]
    port = 20000 + int(job) % 20000 if job.isdigit() else 29500
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo",
                            init_method=f"tcp://{env.hostnames[0]}:{port}",
                            rank=env.global_rank, world_size=env.num_tasks)
    return Rank(env.global_rank, env.num_tasks, env.local_rank)


def shutdown() -> None:
    """Leave the process group. After a clean finish every rank first meets the others at a barrier:
    a gloo rank that tears down while a peer still holds its connection can abort that peer
    ("terminate called without an active exception", exit -6). With an exception in flight there is
    no barrier, since a peer that died would leave it waiting for ever."""
    if dist.is_available() and dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def mean_across(value: torch.Tensor, rank: Rank) -> torch.Tensor:
    """The mean of a scalar over all ranks (the value itself for one process)."""
    if rank.world == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / rank.world


def any_across(flag: bool, rank: Rank, device) -> bool:
    """True on every rank as soon as one rank's flag is set (e.g. a preemption signal)."""
    if rank.world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t)
    return bool(t.item())


def sum_across(values: torch.Tensor, rank: Rank) -> torch.Tensor:
    """The sum over all ranks (the values themselves for one process)."""
    if rank.world == 1:
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values


def from_main(values: list, rank: Rank, device) -> list[int]:
    """The main process's `values` (small integers or flags) on every rank: a broadcast from rank 0."""
    if rank.world == 1:
        return [int(v) for v in values]
    t = torch.tensor([int(v) for v in values], device=device)
    dist.broadcast(t, src=0)
    return [int(v) for v in t.tolist()]


def gather_share(part: torch.Tensor, n: int, rank: Rank) -> torch.Tensor:
    """The whole batch of n rows on every rank, from each rank's rows share(n, rank, world) of it
    (bench.data.shards): the shares, padded to one size for all_gather, put back in batch order."""
    if rank.world == 1:
        return part
    sizes = [len(range(n)[share(n, r, rank.world)]) for r in range(rank.world)]
    padded = part.new_zeros((max(sizes), *part.shape[1:]))
    padded[:len(part)] = part
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:size] for p, size in zip(parts, sizes)])
