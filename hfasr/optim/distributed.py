"""Distributed HF over ``torch.distributed`` (gloo on CPU, nccl on GPU).

Every rank holds a shard of the data. Losses (sums and counts), gradients, squared gradients
and Gauss-Newton products are all-reduced (summed), so every rank sees the global quantities
and runs the *same* CG iterations, backtracking, line search and damping updates on identical
numbers: no broadcast is needed and the parameters stay in sync. A single process (or an
uninitialised process group) is the special case where every reduction is the identity, so
1-process and N-process runs agree to float tolerance on the same data.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_(t: Tensor) -> Tensor:
    """Sum ``t`` over ranks in place (identity without a process group); returns ``t``."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_scalars(*values: float, dtype=torch.float64) -> list[float]:
    """Sum Python scalars over ranks (one collective for all of them)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=dtype)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


class ReducedGaussNewton:
    """Wraps a per-shard :class:`~hfasr.optim.gn.GaussNewton` whose normalizer is the global
    count, summing its products (and preconditioner samples) over ranks."""

    def __init__(self, local) -> None:
        self.local = local
        self.normalizer = local.normalizer

    def __call__(self, v: Tensor, structural_mu: float = 0.0) -> Tensor:
        return all_reduce_(self.local(v, structural_mu))

    def sample_gradient(self, generator: torch.Generator) -> Tensor:
        return all_reduce_(self.local.sample_gradient(generator))
