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


def all_reduce_scalars(*values: float, dtype=torch.float64, device: torch.device | str = "cpu") -> list[float]:
    """Sum Python scalars over ranks in one collective (on ``device``, so that nccl works)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=dtype, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


class ReducedGaussNewton:
    """G v of a curvature sample split over ranks: this rank's part (``local``, a Gauss-Newton
    operator already divided by the *global* ``normalizer``, or None when this rank owns none of
    the sample) summed over ranks."""

    def __init__(self, local, normalizer: float, numel: int, like: Tensor, rank: int = 0) -> None:
        self.local = local
        self.normalizer = float(normalizer)
        self.numel = numel
        self.like = like
        self.rank = rank
        self.structural = bool(getattr(local, "structural", False))

    def _zeros(self) -> Tensor:
        return torch.zeros(self.numel, dtype=self.like.dtype, device=self.like.device)

    def __call__(self, v: Tensor, structural_mu: float = 0.0) -> Tensor:
        out = self.local(v, structural_mu) if self.local is not None else self._zeros()
        return all_reduce_(out)

    def sample_gradient(self, generator: torch.Generator) -> Tensor:
        # every rank draws the same seed from the shared generator (keeping it in step), then
        # samples its own outputs with a rank-specific generator
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        g = torch.Generator().manual_seed(seed + 1_000_003 * self.rank)
        out = self.local.sample_gradient(g) if self.local is not None else self._zeros()
        return all_reduce_(out)
