"""The HF objective: a model, a criterion on batches, and data in batches (knows no speech).

:class:`BatchObjective` is the one :class:`~hfasr.optim.hf.HFObjective` of hfasr. It needs

- a model, called as ``model(*batch.inputs)`` (outputs, e.g. per-frame logits);
- a :class:`BatchCriterion`: the summed loss of a batch (differentiable in the outputs) and
  its output-space curvature (a PSD :class:`~hfasr.optim.curvature.OutputCurvature`);
- :class:`BatchData`: a set of examples (frames, utterances, ...) that it can group into
  batches (:meth:`BatchData.plan`) and collate (:meth:`BatchData.batch`).

Every loss is normalised by the summed :attr:`Batch.count` of its batches (frames, utterances).
The gradient, and the ρ / backtracking / line-search losses, run over all batches of their
set; the curvature batch is a random ``curvature_fraction`` of the examples (at least
``curvature_min``, at most ``curvature_max_frames`` in summed sizes when set), drawn with the optimizer's generator and re-batched with at most
:data:`CURVATURE_MAX_PADDING` padding, one Gauss-Newton linearization per batch, summed.

Martens' preconditioner needs per-example squared gradients; each batch counts as one
example: ``g2 = Σ_b (Σ_{i∈b} ∇ℓ_i)² / N``.

Distributed (``distributed=True`` under an initialised ``torch.distributed`` process group):
every rank holds the same :class:`BatchData`; the batches are planned exactly as one process
plans them and whole batches are dealt to the ranks (:func:`shard_batches`: deterministic,
balanced by example sizes), so rank r collates and computes only its batches. Losses and
counts, gradients, squared gradients and G v products are summed over ranks, so every rank runs
the same CG on the same numbers. The curvature sample is drawn over all examples with the
shared generator (in step on every rank) and dealt to the ranks by size. One process and N
processes thus agree to float tolerance (summation order); the Chapelle-Erhan preconditioner's
random samples are drawn per rank (same expectation, different estimate).

:class:`TensorRows` is the :class:`BatchData` of in-memory tensors whose rows are the examples
(frames of a frame-level DNN); :func:`tensor_objective` builds an objective on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call

from hfasr.optim.curvature import OutputCurvature
from hfasr.optim.distributed import (
    ReducedGaussNewton,
    all_reduce_,
    all_reduce_scalars,
    is_distributed,
    world_size,
)
from hfasr.optim.distributed import rank as dist_rank
from hfasr.optim.gn import GaussNewton, ModelGaussNewton, SumGaussNewton, flatten

CURVATURE_MAX_PADDING = 0.1  # curvature batches: padded frames ≤ 1.1 × real frames


class Batch(Protocol):
    """One batch, as :class:`BatchData` collates it (e.g. :class:`hfasr.data.batching.Batch`):
    ``model(*inputs)`` gives the outputs; ``target`` is read by the criterion only; ``count`` is
    what the summed loss is normalised by (frames, utterances); ``lengths`` are the valid output
    positions per sequence, for structural damping (``model.structural_weights``), or None."""

    inputs: tuple[Any, ...]
    target: Any
    count: int
    lengths: Tensor | None


@dataclass
class RowBatch:
    """The :class:`Batch` of :class:`TensorRows`."""

    inputs: tuple[Any, ...]
    target: Any
    count: int
    lengths: Tensor | None = None


class BatchCriterion(Protocol):
    """A loss on batches and its convex output-space curvature."""

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        """Summed loss of the batch (scalar), differentiable with respect to ``outputs``."""
        ...

    def curvature(self, outputs: Tensor, batch: Batch) -> OutputCurvature:
        """PSD curvature of the summed loss with respect to the outputs, at ``outputs``."""
        ...


class BatchData(Protocol):
    """Examples that an objective reads in batches."""

    def __len__(self) -> int:
        """Number of examples."""
        ...

    def sizes(self) -> Sequence[int]:
        """Cost of every example (e.g. frames): balances the ranks of a distributed run."""
        ...

    def plan(self, indices: Sequence[int] | None = None, max_padding: float | None = None
             ) -> list[Sequence[int]]:
        """The examples ``indices`` (default: all) grouped into batches, deterministically."""
        ...

    def batch(self, indices: Sequence[int]) -> Batch:
        """Collate the examples ``indices`` into one :class:`Batch`."""
        ...

    def subset(self, indices: Sequence[int]) -> BatchData:
        """The examples ``indices`` as a data set of their own."""
        ...


def _where(batch) -> str:
    """`` (examples a, b, ...)`` when the batch names its examples (``batch.names``), else ``""``."""
    names = getattr(batch, "names", None)
    if not names:
        return ""
    return f" (in the batch of {', '.join(names[:5])}{' ...' if len(names) > 5 else ''})"


def shard_batches(batches: Sequence[Sequence[int]], sizes: Sequence[int], rank: int, world: int
                  ) -> list[Sequence[int]]:
    """The batches of ``rank`` among ``world`` ranks: each batch (in order) goes to the rank with
    the least size so far (ties: lowest rank). Deterministic: every rank computes the same
    assignment from the same sizes."""
    load = [0] * world
    mine = []
    for b in batches:
        r = min(range(world), key=lambda k: (load[k], k))
        load[r] += sum(int(sizes[i]) for i in b)
        if r == rank:
            mine.append(b)
    return mine


class BatchObjective:
    """HF objective over :class:`BatchData` (see the module docstring).

    Args:
        model: ``model(*batch.inputs)`` → outputs.
        criterion: the :class:`BatchCriterion`.
        data: the gradient data.
        heldout: held-out data (ρ / backtracking / line search), or None.
        curvature_fraction, curvature_min: size of the curvature sample (examples).
        curvature_max_frames: > 0 caps the sample's summed example sizes (frames): the first
            examples of its random order that fit (at least one). The sample's linearizations
            are held through CG, so without a cap its memory grows with the corpus.
        structural: call the model with ``return_preacts=True`` in the curvature batch and wire
            ``model.structural_weights(acts, batch.lengths)`` into the Gauss-Newton product
            (HFConfig's ``structural_damping`` μ > 0 uses it).
        jvp_mode: ``"auto"`` (the model's hand-written J v when it has ``linearize``, else
            ``torch.func.linearize``), ``"model"``, ``"linearize"`` or ``"double-vjp"``.
        distributed: shard over the ranks of the process group (default: when one is initialised
            with more than one rank).
    """

    def __init__(self, model: nn.Module, criterion: BatchCriterion, data: BatchData,
                 heldout: BatchData | None = None, curvature_fraction: float = 0.1,
                 curvature_min: int = 8, structural: bool = False, jvp_mode: str = "auto",
                 distributed: bool | None = None, curvature_max_frames: int = 0) -> None:
        if len(data) == 0:
            raise ValueError("BatchObjective needs at least one example")
        if jvp_mode == "auto":
            jvp_mode = "model" if callable(getattr(model, "linearize", None)) else "linearize"
        if jvp_mode not in ("model", "linearize", "double-vjp"):
            raise ValueError(f"jvp_mode must be 'auto', 'model', 'linearize' or 'double-vjp', got {jvp_mode!r}")
        if jvp_mode == "double-vjp" and structural:
            raise ValueError("jvp_mode 'double-vjp' does not support structural damping")
        self.model = model
        self.criterion = criterion
        self.data = data
        self.heldout = heldout
        self.curvature_fraction = curvature_fraction
        self.curvature_min = curvature_min
        self.curvature_max_frames = int(curvature_max_frames)
        self.structural = structural
        self.jvp_mode = jvp_mode
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.distributed = is_distributed() if distributed is None else distributed
        self.rank, self.world = (dist_rank(), world_size()) if self.distributed else (0, 1)
        self._plan = self._mine(data, data.plan())
        self._held_plan = self._mine(heldout, heldout.plan()) if heldout is not None else None
        self._curv: list[int] | None = None

    # --- helpers -------------------------------------------------------------------------------
    def _mine(self, data: BatchData, plan: list[Sequence[int]]) -> list[Sequence[int]]:
        return shard_batches(plan, data.sizes(), self.rank, self.world) if self.distributed else plan

    def _numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def _sum(self, *values: float) -> list[float]:
        if not self.distributed:
            return list(values)
        return all_reduce_scalars(*values, device=self.params[0].device)

    def _outputs(self, batch: Batch) -> Tensor:
        return self.model(*batch.inputs)

    # --- HFObjective ---------------------------------------------------------------------------
    def gradient(self, generator: torch.Generator) -> tuple[float, Tensor, Tensor | None]:
        self.model.eval()
        total, count = 0.0, 0
        gsum = g2 = None
        for idx in self._plan:
            batch = self.data.batch(idx)
            try:
                loss = self.criterion.loss(self._outputs(batch), batch)
            except FloatingPointError as e:
                raise FloatingPointError(f"{e}{_where(batch)}") from e
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"non-finite loss ({value}) at the current parameters{_where(batch)}")
            fg = flatten(torch.autograd.grad(loss, self.params)).detach()
            gsum = fg if gsum is None else gsum + fg
            g2 = fg * fg if g2 is None else g2 + fg * fg
            total += value
            count += batch.count
        if self.distributed:
            if gsum is None:  # this rank owns no batch
                gsum = torch.zeros(self._numel(), dtype=self.params[0].dtype, device=self.params[0].device)
                g2 = gsum.clone()
            all_reduce_(gsum)
            all_reduce_(g2)
            total, count = self._sum(total, count)
        return total / count, gsum / count, g2 / count

    def curvature(self, generator: torch.Generator):
        n = len(self.data)
        m = min(n, max(self.curvature_min, math.ceil(self.curvature_fraction * n)))
        drawn = torch.randperm(n, generator=generator)[:m]
        if self.curvature_max_frames:  # the first examples of the random order, up to the size cap
            all_sizes = self.data.sizes()
            sizes = torch.as_tensor([int(all_sizes[i]) for i in drawn.tolist()], dtype=torch.long)
            keep = max(1, int((sizes.cumsum(0) <= self.curvature_max_frames).sum()))
            drawn = drawn[:keep]
        idx = drawn.sort().values.tolist()
        if self.distributed:
            sizes = self.data.sizes()
            by_size = sorted(idx, key=lambda i: (-int(sizes[i]), i))
            idx = sorted(b[0] for b in shard_batches([[i] for i in by_size], sizes, self.rank, self.world))
        self._curv = idx
        batches = [self.data.batch(b) for b in self.data.plan(idx, CURVATURE_MAX_PADDING)] if idx else []
        (count,) = self._sum(sum(b.count for b in batches))
        self.model.eval()
        parts = [self._linearize(b, count) for b in batches]
        local = None if not parts else parts[0] if len(parts) == 1 else SumGaussNewton(parts)
        if not self.distributed:
            return local
        return ReducedGaussNewton(local, count, self._numel(), self.params[0].detach(), self.rank)

    def _linearize(self, batch: Batch, normalizer: float) -> GaussNewton:
        """G v on one batch at the current parameters, divided by ``normalizer``."""
        kwargs = {"return_preacts": True} if self.structural else {}

        def fn(params: tuple[Tensor, ...]):
            return functional_call(self.model, dict(zip(self.names, params)), batch.inputs, kwargs)

        def curv(z: Tensor) -> OutputCurvature:
            return self.criterion.curvature(z, batch)

        sw = None
        if self.structural:
            def sw(acts: list[Tensor]) -> list[Tensor]:
                return self.model.structural_weights(acts, batch.lengths)  # type: ignore[operator]

        params = [p.detach() for p in self.params]
        if self.jvp_mode == "model":
            return ModelGaussNewton(self.model, self.names, fn, params, curv, normalizer=normalizer,
                                    structural_weights=sw, args=batch.inputs, kwargs=kwargs)
        return GaussNewton(fn, params, curv, normalizer=normalizer, structural_weights=sw,
                           jvp_mode=self.jvp_mode)

    @torch.no_grad()
    def _mean(self, data: BatchData, plan: Sequence[Sequence[int]]) -> float:
        self.model.eval()
        total, count = 0.0, 0
        for idx in plan:
            batch = data.batch(idx)
            total += float(self.criterion.loss(self._outputs(batch), batch))
            count += batch.count
        total, count = self._sum(total, count)
        return total / count

    def loss(self, role: str) -> float:
        if role == "gradient":
            return self._mean(self.data, self._plan)
        if role == "curvature":
            if self._curv is None:
                raise RuntimeError("curvature() must be called before loss('curvature')")
            return self._mean(self.data, self.data.plan(self._curv) if self._curv else [])
        if role == "heldout":
            if self.heldout is None or self._held_plan is None:
                raise ValueError("this HF configuration uses held-out data but the objective has none")
            return self._mean(self.heldout, self._held_plan)
        raise ValueError(f"unknown data role {role!r}")


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

    def curvature(self, generator: torch.Generator):
        return self.subsets[self.subset].curvature(generator)

    def loss(self, role: str) -> float:
        if role == "heldout":
            if self.heldout is None:
                raise ValueError("this HF configuration uses held-out data but the objective has none")
            return self.heldout.loss("gradient")
        return self.subsets[self.subset].loss(role)


def split_heldout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(held-out, rest)`` example indices, each sorted: a random ``round(fraction · n)`` held
    out, drawn with ``torch.Generator().manual_seed(seed)``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = round(fraction * n)
    return sorted(perm[:k]), sorted(perm[k:])


def make_objective(model: nn.Module, criterion: BatchCriterion, data: BatchData, *,
                   heldout_fraction: float = 0.0, num_subsets: int = 1, seed: int = 0,
                   heldout: BatchData | None = None, **kwargs: Any) -> BatchObjective | SubsetObjective:
    """The HF objective of a training run: a held-out ``heldout_fraction`` of ``data``
    (:func:`split_heldout` with ``seed``) and, with ``num_subsets`` K > 1, K interleaved
    subsets of the rest (every K-th example). ``heldout`` (other data, e.g. held-out
    speakers) replaces the split: all of ``data`` then feeds the gradient. ``kwargs`` go to
    :class:`BatchObjective`."""
    if heldout is not None:
        held_idx, grad_idx = [], list(range(len(data)))
    else:
        held_idx, grad_idx = split_heldout(len(data), heldout_fraction, seed)
    if not grad_idx:
        raise ValueError(f"heldout_fraction = {heldout_fraction} leaves no example for the gradient")
    held = heldout if heldout is not None else (data.subset(held_idx) if held_idx else None)
    if num_subsets <= 1:
        return BatchObjective(model, criterion, data.subset(grad_idx) if held_idx else data, held, **kwargs)
    if len(grad_idx) < num_subsets:
        raise ValueError(f"num_subsets = {num_subsets} but only {len(grad_idx)} examples for the gradient")
    parts = [BatchObjective(model, criterion, data.subset(grad_idx[k::num_subsets]), None, **kwargs)
             for k in range(num_subsets)]
    held_obj = BatchObjective(model, criterion, held, None, **kwargs) if held is not None else None
    return SubsetObjective(parts, held_obj)


# ------------------------------------------------------------------------------- tensor rows
class TensorRows:
    """:class:`BatchData` whose examples are the rows of tensors ``(x, *targets)``: batches are
    consecutive chunks of ``chunk_size`` rows; a batch's inputs are ``(x[rows],)``, its target
    the tuple of the target rows, its count the number of rows."""

    def __init__(self, tensors: Sequence[Tensor], chunk_size: int = 8192) -> None:
        self.tensors = tuple(tensors)
        if not self.tensors or any(t.shape[0] != self.tensors[0].shape[0] for t in self.tensors):
            raise ValueError("TensorRows needs tensors with the same number of rows")
        self.chunk_size = int(chunk_size)

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def sizes(self) -> Sequence[int]:
        return [1] * len(self)

    def plan(self, indices: Sequence[int] | None = None, max_padding: float | None = None
             ) -> list[Sequence[int]]:
        c = self.chunk_size
        if indices is None:
            return [range(s, min(s + c, len(self))) for s in range(0, len(self), c)]
        idx = list(indices)
        return [idx[s : s + c] for s in range(0, len(idx), c)]

    def batch(self, indices: Sequence[int]) -> RowBatch:
        if isinstance(indices, range) and indices.step == 1:
            rows = [t[indices.start : indices.stop] for t in self.tensors]
        else:
            sel = torch.as_tensor(list(indices), dtype=torch.long, device=self.tensors[0].device)
            rows = [t[sel] for t in self.tensors]
        return RowBatch((rows[0],), tuple(rows[1:]), int(rows[0].shape[0]))

    def subset(self, indices: Sequence[int]) -> TensorRows:
        sel = torch.as_tensor(list(indices), dtype=torch.long, device=self.tensors[0].device)
        return TensorRows([t[sel] for t in self.tensors], self.chunk_size)


class RowCriterion:
    """:class:`BatchCriterion` from plain functions of ``(outputs, *targets)``: ``loss_fn``
    returns ``(summed loss, count)`` (the count is not used: :class:`TensorRows` counts rows),
    ``curvature_fn`` the output curvature of the summed loss."""

    def __init__(self, loss_fn: Callable[..., tuple[Tensor, int]],
                 curvature_fn: Callable[..., OutputCurvature]) -> None:
        self.loss_fn = loss_fn
        self.curvature_fn = curvature_fn

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return self.loss_fn(outputs, *batch.target)[0]

    def curvature(self, outputs: Tensor, batch: Batch) -> OutputCurvature:
        return self.curvature_fn(outputs, *batch.target)


def tensor_objective(model: nn.Module, loss_fn: Callable[..., tuple[Tensor, int]],
                     curvature_fn: Callable[..., OutputCurvature], data: Sequence[Tensor],
                     heldout: Sequence[Tensor] | None = None, curvature_fraction: float = 0.02,
                     curvature_min: int = 256, chunk_size: int = 8192, **kwargs: Any) -> BatchObjective:
    """A :class:`BatchObjective` for ``model(x)`` on the rows of ``data = (x, *targets)``
    (:class:`TensorRows`), e.g. spliced frames and their pdf targets."""
    return BatchObjective(model, RowCriterion(loss_fn, curvature_fn), TensorRows(data, chunk_size),
                          TensorRows(heldout, chunk_size) if heldout is not None else None,
                          curvature_fraction=curvature_fraction, curvature_min=curvature_min, **kwargs)


def softmax_ce(outputs: Tensor, targets: Tensor) -> tuple[Tensor, int]:
    """Summed cross-entropy of logits (N, K) against class ids (N,) and the frame count."""
    return torch.nn.functional.cross_entropy(outputs, targets, reduction="sum"), int(targets.shape[0])
