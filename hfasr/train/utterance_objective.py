"""An :class:`~hfasr.optim.hf.HFObjective` over whole utterances, for criteria that return the
loss, the gradient with respect to the logits and an output-space curvature (sequence criteria,
CTC). Models map padded features (B, T, F) + lengths to logits (B, T, K).

Data: a list of utterances ``(feats (T, F), supervision)``; the objective batches them by
length (``max_frames`` per batch). The gradient (and ρ / backtracking / line-search losses) run
over all utterances of its set; the curvature batch is a random fraction of them drawn with
the optimizer's generator. Losses are normalised per frame.

Distributed (``shard=(rank, world)``, under an initialised ``torch.distributed`` process group):
every rank is given the same utterance lists; they are grouped into batches exactly as one
process would group them (:func:`make_batches`) and whole batches are dealt to the ranks
(:func:`shard_batches`: deterministic, balanced by frames), so rank r computes only its batches.
Losses and frame counts, gradients, squared gradients (Martens' preconditioner: per batch, hence
the same as one process's) and G v products are summed over ranks and divided by the global
frame count, so every rank runs the same CG on the same numbers. The curvature sample is drawn
over the global utterance list with the optimizer's generator (in step on all ranks) and dealt
to the ranks by length (balanced by frames, so every rank's G v share costs about the same);
each rank linearizes the model on its share. The held-out set is sharded like the gradient set.
Batches (not single utterances) are dealt for the gradient so that Martens' per-batch squared
gradients match one process's; the price is a load imbalance of up to one batch per rank. One process and N processes thus agree to float tolerance (summation order), with one
exception: the Chapelle-Erhan preconditioner's random samples are drawn per rank (from a seed
drawn with the shared generator), so its estimate differs from one process's (same expectation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from hfasr.optim.curvature import OutputCurvature
from hfasr.optim.distributed import all_reduce_, is_distributed
from hfasr.optim.gn import GaussNewton, ModelGaussNewton, SumGaussNewton, flatten


CURVATURE_MAX_PADDING = 0.1  # curvature batches: padded frames ≤ 1.1 × real frames


@dataclass
class CriterionResult:
    loss: Tensor  # summed over frames/utterances (scalar)
    grad: Tensor  # (B, T, K) ∂loss/∂logits
    frames: int
    curvature: Callable[[], OutputCurvature]  # PSD operator at these logits


CriterionFn = Callable[[Tensor, Tensor, list[Any]], CriterionResult]


def pad_batch(feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
    x = torch.zeros(len(feats), int(lens.max()), feats[0].shape[1], dtype=feats[0].dtype)
    for i, f in enumerate(feats):
        x[i, : f.shape[0]] = f
    return x, lens


def batch_by_frames(lengths: Sequence[int], order: Sequence[int], max_frames: int,
                    max_padding: float | None = None) -> list[list[int]]:
    """Indices in ``order`` grouped into consecutive batches of at most ``max_frames`` padded
    frames (a longer utterance is a batch of its own).

    ``max_padding``: also start a new batch once the padded frames would exceed
    ``(1 + max_padding)`` × the real frames (a frame-wise model spends its time on padding too).
    """
    batches, cur, cur_max, cur_sum = [], [], 0, 0
    for i in order:
        T = int(lengths[i])
        padded = max(cur_max, T) * (len(cur) + 1)
        if cur and (padded > max_frames or (max_padding is not None and padded > (1 + max_padding) * (cur_sum + T))):
            batches.append(cur)
            cur, cur_max, cur_sum = [], 0, 0
        cur.append(int(i))
        cur_max = max(cur_max, T)
        cur_sum += T
    if cur:
        batches.append(cur)
    return batches


def make_batches(utts: Sequence[tuple[Tensor, Any]], max_frames: int, max_padding: float | None = None
                 ) -> list[list[int]]:
    """Indices of ``utts`` (features first) in batches of at most ``max_frames`` padded frames,
    longest first (:func:`batch_by_frames`)."""
    lengths = [int(u[0].shape[0]) for u in utts]
    order = sorted(range(len(utts)), key=lambda i: (-lengths[i], i))
    return batch_by_frames(lengths, order, max_frames, max_padding)


def shard_batches(batches: Sequence[list[int]], lengths: Sequence[int], rank: int, world: int) -> list[list[int]]:
    """The batches of ``rank`` among ``world`` ranks: each batch (in order) goes to the rank with
    the fewest frames so far (ties: lowest rank). Deterministic: every rank computes the same
    assignment from the same lengths."""
    load = [0] * world
    mine = []
    for b in batches:
        r = min(range(world), key=lambda k: (load[k], k))
        load[r] += sum(int(lengths[i]) for i in b)
        if r == rank:
            mine.append(list(b))
    return mine


def _sum_scalars(values: Sequence[float], device: torch.device) -> list[float]:
    """Python scalars summed over ranks in one collective (float64, on ``device`` so that nccl works)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


class ShardGaussNewton:
    """G v on the curvature sample split over ranks: this rank's part (``local``, a
    :class:`GaussNewton` normalised by the *global* sample frame count, or None when this rank
    owns none of the sampled utterances) summed over ranks."""

    def __init__(self, local: GaussNewton | None, normalizer: float, numel: int, like: Tensor, rank: int) -> None:
        self.local = local
        self.normalizer = float(normalizer)
        self.numel = numel
        self.like = like
        self.rank = rank

    def _zeros(self) -> Tensor:
        return torch.zeros(self.numel, dtype=self.like.dtype, device=self.like.device)

    def __call__(self, v: Tensor, structural_mu: float = 0.0) -> Tensor:
        out = self.local(v, structural_mu) if self.local is not None else self._zeros()
        return all_reduce_(out)

    def sample_gradient(self, generator: torch.Generator) -> Tensor:
        # every rank draws the same seed from the shared generator (keeping it in step), then
        # samples its own outputs from a rank-specific generator
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        g = torch.Generator().manual_seed(seed + 1_000_003 * self.rank)
        out = self.local.sample_gradient(g) if self.local is not None else self._zeros()
        return all_reduce_(out)


class UtteranceObjective:
    """HF objective over utterances (see the module docstring)."""

    def __init__(self, model: nn.Module, criterion: CriterionFn, utts: Sequence[tuple[Tensor, Any]],
                 heldout: Sequence[tuple[Tensor, Any]] | None = None, curvature_fraction: float = 0.1,
                 curvature_min_utts: int = 8, max_frames: int = 20000, structural: bool = False,
                 shard: tuple[int, int] | None = None) -> None:
        """``shard=(rank, world)``: distributed over ``torch.distributed`` ranks (module
        docstring); ``utts`` and ``heldout`` are then the full lists, identical on every rank."""
        self.model = model
        self.criterion = criterion
        self.utts = list(utts)
        self.heldout = list(heldout) if heldout is not None else None
        self.curvature_fraction = curvature_fraction
        self.curvature_min_utts = curvature_min_utts
        self.max_frames = max_frames
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._batches = make_batches(self.utts, max_frames)
        self._held_batches = make_batches(self.heldout, max_frames) if self.heldout else None
        self._curv: list[int] | None = None
        self.shard = shard
        if shard is not None:
            r, w = shard
            if not 0 <= r < w:
                raise ValueError(f"shard=(rank, world) needs 0 <= rank < world, got {shard}")
            self._lengths = [int(u[0].shape[0]) for u in self.utts]
            self._batches = shard_batches(self._batches, self._lengths, r, w)
            if self._held_batches is not None:
                self._held_batches = shard_batches(self._held_batches, [int(u[0].shape[0]) for u in self.heldout], r, w)

    def _device(self) -> torch.device:
        return self.params[0].device

    def _run(self, utts, idx):
        x, lens = pad_batch([utts[i][0] for i in idx])
        return x, lens, [utts[i][1] for i in idx]

    def gradient(self, generator: torch.Generator) -> tuple[float, Tensor, Tensor | None]:
        self.model.eval()
        total, frames = 0.0, 0
        gsum = g2 = None
        for idx in self._batches:
            x, lens, sups = self._run(self.utts, idx)
            logits = self.model(x, lens)
            res = self.criterion(logits, lens, sups)
            grads = torch.autograd.grad(logits, self.params, grad_outputs=res.grad.to(logits.dtype))
            fg = flatten(grads).detach()
            gsum = fg if gsum is None else gsum + fg
            g2 = fg * fg if g2 is None else g2 + fg * fg
            total += float(res.loss)
            frames += res.frames
        if self.shard is not None:
            if gsum is None:  # this rank owns no batch
                gsum = torch.zeros(sum(p.numel() for p in self.params), dtype=self.params[0].dtype,
                                   device=self._device())
                g2 = gsum.clone()
            all_reduce_(gsum)
            all_reduce_(g2)
            total, frames = _sum_scalars([total, frames], self._device())
        return total / frames, gsum / frames, g2 / frames

    def curvature(self, generator: torch.Generator) -> GaussNewton:
        n = len(self.utts)
        m = min(n, max(self.curvature_min_utts, math.ceil(self.curvature_fraction * n)))
        idx = torch.randperm(n, generator=generator)[:m].sort().values.tolist()
        if self.shard is not None:
            return self._shard_curvature(idx)
        self._curv = idx
        return self._linearize(idx, sum(int(self.utts[i][0].shape[0]) for i in idx))

    def _gauss_newton(self, fn, curv, normalizer: float, x: Tensor, lens: Tensor) -> GaussNewton:
        """G v at the current parameters: the model's hand-written J v when it has one
        (``model.linearize``: DNN, BLSTM, MDLSTM), else ``torch.func.linearize``."""
        params = [p.detach() for p in self.params]
        if callable(getattr(self.model, "linearize", None)):
            return ModelGaussNewton(self.model, self.names, fn, params, curv, normalizer=normalizer, args=(x, lens))
        return GaussNewton(fn, params, curv, normalizer=normalizer)

    def _linearize(self, idx: list[int], normalizer: float) -> GaussNewton | SumGaussNewton:
        """G v on the utterances ``idx`` / ``normalizer``: one :class:`GaussNewton` per batch of
        similar lengths (at most 10% padding), summed, so that no product is spent on padding."""
        sub = [self.utts[i] for i in idx]
        parts = []
        self.model.eval()
        for b in make_batches(sub, self.max_frames, max_padding=CURVATURE_MAX_PADDING):
            x, lens, sups = self._run(sub, b)

            def fn(params: tuple[Tensor, ...], x=x, lens=lens) -> Tensor:
                return functional_call(self.model, dict(zip(self.names, params)), (x, lens))

            def curv(z: Tensor, lens=lens, sups=sups) -> OutputCurvature:
                return self.criterion(z, lens, sups).curvature()

            parts.append(self._gauss_newton(fn, curv, normalizer, x, lens))
        return parts[0] if len(parts) == 1 else SumGaussNewton(parts)

    def _shard_curvature(self, idx: list[int]) -> ShardGaussNewton:
        """This rank's part of the global curvature sample ``idx``, normalised by its global frame count."""
        frames = sum(self._lengths[i] for i in idx)
        by_length = sorted(idx, key=lambda i: (-self._lengths[i], i))
        mine = sorted(b[0] for b in shard_batches([[i] for i in by_length], self._lengths, *self.shard))
        self._curv = mine
        local = self._linearize(mine, frames) if mine else None
        numel = sum(p.numel() for p in self.params)
        return ShardGaussNewton(local, frames, numel, self.params[0].detach(), self.shard[0])

    @torch.no_grad()
    def _mean(self, utts, batches) -> float:
        self.model.eval()
        total, frames = 0.0, 0
        for idx in batches:
            if not idx:
                continue
            x, lens, sups = self._run(utts, idx)
            res = self.criterion(self.model(x, lens), lens, sups)
            total += float(res.loss)
            frames += res.frames
        if self.shard is not None:
            total, frames = _sum_scalars([total, frames], self._device())
        return total / frames

    def loss(self, role: str) -> float:
        if role == "gradient":
            return self._mean(self.utts, self._batches)
        if role == "curvature":
            if self._curv is None:
                raise RuntimeError("curvature() must be called before loss('curvature')")
            return self._mean(self.utts, [[self._curv[j] for j in b] for b in
                                          make_batches([self.utts[i] for i in self._curv], self.max_frames)])
        if role == "heldout":
            if self.heldout is None:
                raise ValueError("this HF configuration uses held-out data but the objective has none")
            return self._mean(self.heldout, self._held_batches)
        raise ValueError(f"unknown data role {role!r}")


def sequence_criterion_fn(crit) -> CriterionFn:
    """Adapt a :class:`~hfasr.criteria.sequence.SequenceCriterion` to :data:`CriterionFn`."""

    def fn(logits: Tensor, lens: Tensor, sups: list) -> CriterionResult:
        out = crit(logits, lens, sups)
        return CriterionResult(out.loss.detach(), out.grad, out.frames, lambda: crit.curvature(logits.detach(), out))

    return fn
