"""An :class:`~hfasr.optim.hf.HFObjective` over whole utterances, for criteria that return the
loss, the gradient with respect to the logits and an output-space curvature (sequence criteria,
CTC). Models map padded features (B, T, F) + lengths to logits (B, T, K).

Data: a list of utterances ``(feats (T, F), supervision)``; the objective batches them by
length (``max_frames`` per batch). The gradient (and ρ / backtracking / line-search losses) run
over all utterances of its set; the curvature batch is a random fraction of them drawn with
the optimizer's generator. Losses are normalised per frame.
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
from hfasr.optim.gn import GaussNewton, flatten


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


def make_batches(utts: Sequence[tuple[Tensor, Any]], max_frames: int) -> list[list[int]]:
    """Indices grouped into batches of at most ``max_frames`` padded frames, longest first."""
    order = sorted(range(len(utts)), key=lambda i: -utts[i][0].shape[0])
    batches, cur, cur_max = [], [], 0
    for i in order:
        T = utts[i][0].shape[0]
        if cur and max(cur_max, T) * (len(cur) + 1) > max_frames:
            batches.append(cur)
            cur, cur_max = [], 0
        cur.append(i)
        cur_max = max(cur_max, T)
    if cur:
        batches.append(cur)
    return batches


class UtteranceObjective:
    """HF objective over utterances (see the module docstring)."""

    def __init__(self, model: nn.Module, criterion: CriterionFn, utts: Sequence[tuple[Tensor, Any]],
                 heldout: Sequence[tuple[Tensor, Any]] | None = None, curvature_fraction: float = 0.1,
                 curvature_min_utts: int = 8, max_frames: int = 20000, structural: bool = False) -> None:
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
        return total / frames, gsum / frames, g2 / frames

    def curvature(self, generator: torch.Generator) -> GaussNewton:
        n = len(self.utts)
        m = min(n, max(self.curvature_min_utts, math.ceil(self.curvature_fraction * n)))
        idx = torch.randperm(n, generator=generator)[:m].sort().values.tolist()
        self._curv = idx
        x, lens, sups = self._run(self.utts, idx)
        self.model.eval()

        def fn(params: tuple[Tensor, ...]) -> Tensor:
            return functional_call(self.model, dict(zip(self.names, params)), (x, lens))

        holder: dict = {}

        def curv(z: Tensor) -> OutputCurvature:
            res = self.criterion(z, lens, sups)
            holder["frames"] = res.frames
            return res.curvature()

        with torch.no_grad():
            frames = int(lens.sum())
        return GaussNewton(fn, [p.detach() for p in self.params], curv, normalizer=frames)

    @torch.no_grad()
    def _mean(self, utts, batches) -> float:
        self.model.eval()
        total, frames = 0.0, 0
        for idx in batches:
            x, lens, sups = self._run(utts, idx)
            res = self.criterion(self.model(x, lens), lens, sups)
            total += float(res.loss)
            frames += res.frames
        return total / frames

    def loss(self, role: str) -> float:
        if role == "gradient":
            return self._mean(self.utts, self._batches)
        if role == "curvature":
            if self._curv is None:
                raise RuntimeError("curvature() must be called before loss('curvature')")
            return self._mean(self.utts, [self._curv])
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
