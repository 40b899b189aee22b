"""Frame-level cross-entropy: the criterion, dev-set evaluation and pdf priors.

:class:`FrameCE` is the ``ce`` criterion of ``hfasr train``: summed softmax cross-entropy of
per-frame logits against pdf targets (frames with target :data:`~hfasr.data.frames.IGNORE_INDEX`
are padding and count for nothing), plus the output-space curvature Hessian-free needs (the
softmax Fisher, which is the exact Gauss-Newton block of CE).

Priors: ``log_prior[k] = log max(count_k / N, floor)`` over the training alignments; hybrid
decoding divides the posteriors by them (:func:`hfasr.models.compute_loglikes`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from hfasr.data.frames import IGNORE_INDEX, FrameData

log = logging.getLogger(__name__)


class FrameCE:
    """Softmax cross-entropy per frame: ``loss(logits (..., K), targets (...)) -> (sum, frames)``."""

    name = "ce"

    def loss(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, int]:
        """Summed CE over valid frames and their number."""
        logits = logits.reshape(-1, logits.shape[-1])
        targets = targets.reshape(-1)
        n = int((targets != IGNORE_INDEX).sum())
        return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum"), n

    @staticmethod
    def correct(logits: Tensor, targets: Tensor) -> int:
        """Frames whose arg-max pdf is the target."""
        return int((logits.argmax(-1) == targets).sum())

    def curvature(self, logits: Tensor, targets: Tensor):
        """Softmax Fisher ``diag(y) − y yᵀ`` per valid frame (HF's Gauss-Newton block)."""
        from hfasr.optim.curvature import SoftmaxFisher

        return SoftmaxFisher(logits, mask=targets != IGNORE_INDEX)


@torch.no_grad()
def evaluate_frames(frame_fn: Callable[[Tensor], Tensor], data: FrameData, context: int,
                    criterion: FrameCE | None = None, chunk: int = 8192,
                    device: str | torch.device = "cpu") -> tuple[float, float]:
    """Mean per-frame loss and frame accuracy of ``frame_fn`` (spliced rows → logits) on all
    frames of ``data``, in order."""
    criterion = criterion or FrameCE()
    total, correct, count = 0.0, 0, 0
    for rows, y in data.frame_batches(chunk, context, generator=None):
        rows, y = rows.to(device), y.to(device)
        z = frame_fn(rows)
        loss, n = criterion.loss(z, y)
        total += float(loss)
        correct += criterion.correct(z, y)
        count += n
    return total / max(count, 1), correct / max(count, 1)


def compute_log_prior(counts: Tensor, floor: float = 1e-5) -> tuple[Tensor, int]:
    """``log max(count / total, floor)`` (float32) and the number of floored pdfs."""
    if floor <= 0:
        raise ValueError(f"prior floor must be > 0, got {floor}")
    p = counts.double() / counts.sum().clamp_min(1)
    floored = int((p < floor).sum())
    return p.clamp_min(floor).log().float(), floored


def save_prior(path: str | Path, log_prior: Tensor) -> None:
    """Atomically write ``{"log_prior": FloatTensor(num_pdfs)}``."""
    from hfasr.models import atomic_save

    atomic_save({"log_prior": log_prior.float().cpu()}, path)


def prior_from_data(data: FrameData, floor: float = 1e-5) -> Tensor:
    """Log priors of the pdf targets of ``data`` (logs how many pdfs were floored)."""
    log_prior, floored = compute_log_prior(data.pdf_counts(), floor)
    if floored:
        log.info("prior: %d of %d pdfs below the floor %g (unseen in training: %d)", floored,
                 data.num_pdfs, floor, int((data.pdf_counts() == 0).sum()))
    return log_prior
