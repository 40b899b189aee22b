"""Feature-space augmentation of spliced frame rows for first-order frame-CE training.

Two cheap perturbations that target what a corpus with few training speakers lacks:

- **frequency warping** (``warp``): each row's filterbank axis is stretched by a factor drawn
  uniformly from ``[1 - warp, 1 + warp]`` (linear interpolation between bins, the same factor for
  every frame of the row's context window). A stretch of the mel axis approximates the spectral
  effect of a different vocal-tract length, as vocal tract length perturbation (VTLP; Jaitly &
  Hinton 2013) does by warping the filterbank's centre frequencies.
- **frequency masking** (``freq_masks`` bands of at most ``freq_width`` bins, SpecAugment's
  frequency masks; Park et al. 2019): the masked bins take the training set's mean, which the
  network's input normalisation maps to 0.

Rows are ``(N, (2c+1)·F)``; the random draws come from a generator seeded by the batch's
frame indices, so a resumed run draws the same perturbations (:class:`AugmentedRows`).
Augmentation changes the training function from one minibatch to the next: it is for the
first-order drivers only (Hessian-free needs one deterministic objective).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hfasr.config import bounded, check_ranges
from hfasr.data.batching import Batch
from hfasr.data.utterances import FrameRows


@dataclass
class AugmentConfig:
    """The ``augment:`` section of a CE training config (first-order DNN training only)."""

    warp: float = bounded(0.0, ge=0, lt=0.5)  # frequency-axis stretch factors drawn from [1 - warp, 1 + warp]; 0 = off
    freq_masks: int = bounded(0, ge=0)  # frequency bands masked per row (SpecAugment); 0 = off
    freq_width: int = bounded(0, ge=0)  # widest masked band, in bins (each band's width is drawn from 0..freq_width)
    prob: float = bounded(1.0, ge=0, le=1)  # fraction of rows perturbed (the others pass unchanged)

    def __post_init__(self) -> None:
        check_ranges(self)

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.warp > 0 or (self.freq_masks > 0 and self.freq_width > 0))


def warp_bins(x: Tensor, factor: Tensor) -> Tensor:
    """``x`` (N, W, F) with each row's bin axis stretched by ``factor`` (N,): output bin ``j`` reads
    input position ``j / factor`` (linear interpolation, clamped to the last bin). ``factor`` 1
    returns ``x`` unchanged; > 1 moves spectral features to higher bins (a shorter vocal tract)."""
    N, W, F = x.shape
    pos = (torch.arange(F, dtype=x.dtype, device=x.device)[None, :] / factor[:, None]).clamp(0, F - 1)  # (N, F)
    lo = pos.floor().long().clamp(max=F - 1)
    hi = (lo + 1).clamp(max=F - 1)
    w = (pos - lo.to(x.dtype))[:, None, :]  # (N, 1, F)
    lo = lo[:, None, :].expand(N, W, F)
    hi = hi[:, None, :].expand(N, W, F)
    return torch.gather(x, 2, lo) * (1 - w) + torch.gather(x, 2, hi) * w


def mask_bins(x: Tensor, fill: Tensor, masks: int, width: int, generator: torch.Generator) -> Tensor:
    """``x`` (N, W, F) with ``masks`` random bands of 0..``width`` bins per row set to ``fill`` (F,)."""
    N, _, F = x.shape
    bins = torch.arange(F)[None, :]
    keep = torch.ones(N, F, dtype=torch.bool)
    for _ in range(masks):
        wid = torch.randint(0, width + 1, (N, 1), generator=generator)
        start = (torch.rand(N, 1, generator=generator) * (F - wid + 1)).floor().long()
        keep &= ~((bins >= start) & (bins < start + wid))
    keep = keep.to(x.device)[:, None, :]
    return torch.where(keep, x, fill.to(x)[None, None, :])


def augment_rows(rows: Tensor, feat_dim: int, cfg: AugmentConfig, fill: Tensor,
                 generator: torch.Generator) -> Tensor:
    """Spliced rows ``(N, W·F)`` perturbed as ``cfg`` says (module docstring)."""
    if not cfg.active or rows.shape[0] == 0:
        return rows
    N = rows.shape[0]
    x = rows.reshape(N, -1, feat_dim)
    chosen = torch.rand(N, generator=generator) < cfg.prob
    out = x
    if cfg.warp > 0:
        factor = 1 + cfg.warp * (2 * torch.rand(N, generator=generator) - 1)
        factor = torch.where(chosen, factor, torch.ones_like(factor)).to(x)
        out = warp_bins(out, factor)
    if cfg.freq_masks > 0 and cfg.freq_width > 0:
        masked = mask_bins(out, fill, cfg.freq_masks, cfg.freq_width, generator)
        out = torch.where(chosen.to(x.device)[:, None, None], masked, out)
    return out.reshape(N, -1)


class AugmentedRows(FrameRows):
    """:class:`~hfasr.data.utterances.FrameRows` whose collated batches are perturbed
    (:func:`augment_rows`). A batch's draws are seeded by ``seed`` and its frame indices: the
    same minibatch plan (the drivers checkpoint it) gives the same perturbations after a resume."""

    def __init__(self, data, context: int, cfg: AugmentConfig, fill: Tensor, seed: int = 0,
                 chunk_size: int = 8192, device: torch.device | str = "cpu") -> None:
        super().__init__(data, context, chunk_size, device)
        self.cfg, self.fill, self.seed = cfg, fill.detach().float().cpu(), int(seed)

    def batch(self, indices: Sequence[int] | Tensor) -> Batch:
        b = super().batch(indices)
        idx = torch.as_tensor(list(indices) if isinstance(indices, range) else indices, dtype=torch.long)
        head = idx[:16].tolist()
        key = self.seed
        for v in head + [idx.numel()]:
            key = (key * 1_000_003 + int(v) + 1) % (2**61 - 1)
        g = torch.Generator().manual_seed(key)
        rows = augment_rows(b.inputs[0], self.data.feat_dim, self.cfg, self.fill, g)
        return Batch((rows,), b.target, b.count, b.lengths, b.names)
