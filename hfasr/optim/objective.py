"""A ready-made :class:`~hfasr.optim.hf.HFObjective` for models on in-memory tensors.

Rows of the data tensors are the examples (frames for a frame-level DNN). The gradient is the
mean over all rows (or a configured fraction), computed in chunks; the curvature batch is a
random fraction of the rows drawn with the optimizer's generator; held-out rows (optional) serve
ρ / backtracking / line search when the optimizer is configured so.

Martens' preconditioner needs per-example squared gradients; computing them per row is
expensive, so each chunk counts as one "example": ``g2 = Σ_c (Σ_{i∈c} ∇ℓ_i)² / N``, which
equals the per-row estimator when rows within a chunk are uncorrelated in expectation up to
the squared mean (documented approximation; the Chapelle-Erhan preconditioner is unbiased).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from hfasr.optim.curvature import OutputCurvature
from hfasr.optim.distributed import ReducedGaussNewton, all_reduce_, all_reduce_scalars
from hfasr.optim.gn import GaussNewton, flatten

LossFn = Callable[..., tuple[Tensor, int]]  # (outputs, *targets) -> (summed loss, count)
CurvFn = Callable[..., OutputCurvature]  # (outputs, *targets) -> PSD operator on summed loss


class TensorObjective:
    """HF objective for ``model(x)`` on rows of tensors ``data = (x, *targets)``."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        curvature_fn: CurvFn,
        data: Sequence[Tensor],
        heldout: Sequence[Tensor] | None = None,
        curvature_fraction: float = 0.02,
        curvature_min_rows: int = 256,
        chunk_size: int = 8192,
        shard: tuple[int, int] | None = None,
    ) -> None:
        """``shard=(first_row, total_rows)``: this process holds rows ``first_row ..`` of a
        dataset of ``total_rows`` rows split over ``torch.distributed`` ranks; losses, gradients
        and G v are then summed over ranks and the curvature batch is sampled globally, so the
        result equals a single process holding all rows (exactly so for Martens' preconditioner
        when shard sizes are multiples of ``chunk_size``, since its squared gradients are per
        chunk). Held-out data, if any, is sharded the same way."""
        self.model = model
        self.shard = shard
        self.loss_fn = loss_fn
        self.curvature_fn = curvature_fn
        self.data = tuple(data)
        self.heldout = tuple(heldout) if heldout is not None else None
        self.curvature_fraction = curvature_fraction
        self.curvature_min_rows = curvature_min_rows
        self.chunk_size = chunk_size
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._curv_idx: Tensor | None = None

    def _chunks(self, data: Sequence[Tensor]):
        n = data[0].shape[0]
        for s in range(0, n, self.chunk_size):
            yield tuple(t[s : s + self.chunk_size] for t in data)

    def gradient(self, generator: torch.Generator) -> tuple[float, Tensor, Tensor | None]:
        self.model.eval()
        total, count = 0.0, 0
        gsum = None
        g2 = None
        for chunk in self._chunks(self.data):
            loss, n = self.loss_fn(self.model(chunk[0]), *chunk[1:])
            grads = torch.autograd.grad(loss, self.params)
            fg = flatten(grads).detach()
            gsum = fg if gsum is None else gsum + fg
            g2 = fg * fg if g2 is None else g2 + fg * fg
            total += float(loss.detach())
            count += n
        if self.shard is not None:
            all_reduce_(gsum)
            all_reduce_(g2)
            total, count = all_reduce_scalars(total, count)
        return total / count, gsum / count, g2 / count

    def curvature(self, generator: torch.Generator) -> GaussNewton:
        n = self.data[0].shape[0]
        first, total = (0, n) if self.shard is None else self.shard
        m = min(total, max(self.curvature_min_rows, math.ceil(self.curvature_fraction * total)))
        idx = torch.randperm(total, generator=generator)[:m].sort().values
        idx = idx[(idx >= first) & (idx < first + n)] - first  # this shard's part of the global sample
        self._curv_idx = idx
        x, *targets = (t[idx] for t in self.data)
        self.model.eval()
        with torch.no_grad():
            _, count = self.loss_fn(self.model(x), *targets) if len(idx) else (None, 0)
        if self.shard is not None:
            (count,) = all_reduce_scalars(count)

        def fn(params: tuple[Tensor, ...]) -> Tensor:
            return functional_call(self.model, dict(zip(self.names, params)), (x,))

        gn = GaussNewton(fn, [p.detach() for p in self.params], lambda z: self.curvature_fn(z, *targets), normalizer=count)
        return gn if self.shard is None else ReducedGaussNewton(gn)

    @torch.no_grad()
    def _mean_loss(self, data: Sequence[Tensor]) -> float:
        self.model.eval()
        total, count = 0.0, 0
        for chunk in self._chunks(data):
            loss, n = self.loss_fn(self.model(chunk[0]), *chunk[1:])
            total += float(loss)
            count += n
        if self.shard is not None:
            total, count = all_reduce_scalars(total, count)
        return total / count

    def loss(self, role: str) -> float:
        if role == "gradient":
            return self._mean_loss(self.data)
        if role == "curvature":
            if self._curv_idx is None:
                raise RuntimeError("curvature() must be called before loss('curvature')")
            return self._mean_loss(tuple(t[self._curv_idx] for t in self.data))
        if role == "heldout":
            if self.heldout is None:
                raise ValueError("this HF configuration uses held-out data but the objective has none")
            return self._mean_loss(self.heldout)
        raise ValueError(f"unknown data role {role!r}")


def softmax_ce(outputs: Tensor, targets: Tensor) -> tuple[Tensor, int]:
    """Summed cross-entropy of logits (N, K) against class ids (N,) and the frame count."""
    return torch.nn.functional.cross_entropy(outputs, targets, reduction="sum"), int(targets.shape[0])


class SubsetObjective:
    """HF on successive data subsets: update k uses subset ``k mod K`` for its gradient and its
    curvature batch; held-out data (a separate objective) serves ρ / backtracking / line search.

    Gradient reuse across subsets (SAG / dynamic weights), the CG warm start and the damping are
    carried by :class:`~hfasr.optim.hf.HessianFree` (``HFConfig.gradient_reuse`` etc.), which
    reads :attr:`subset` after :meth:`gradient`.
    """

    def __init__(self, subsets: Sequence, heldout=None) -> None:
        if not subsets:
            raise ValueError("SubsetObjective needs at least one subset")
        self.subsets = list(subsets)
        self.heldout = heldout
        self.subset = 0

    @property
    def num_subsets(self) -> int:
        return len(self.subsets)

    def begin_update(self, update: int) -> None:
        self.subset = update % len(self.subsets)

    def gradient(self, generator: torch.Generator):
        return self.subsets[self.subset].gradient(generator)

    def curvature(self, generator: torch.Generator) -> GaussNewton:
        return self.subsets[self.subset].curvature(generator)

    def loss(self, role: str) -> float:
        if role == "heldout":
            if self.heldout is None:
                raise ValueError("this HF configuration uses held-out data but the objective has none")
            return self.heldout.loss("gradient")
        return self.subsets[self.subset].loss(role)
