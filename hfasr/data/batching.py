"""Batching and padding of variable-length utterances (one implementation for every task).

- :func:`batch_by_frames`: indices, in a given order, grouped into batches of at most
  ``max_frames`` padded frames (optionally also bounding the padding).
- :func:`make_batches`: the same, longest first (the deterministic grouping used for gradient
  passes, dev evaluation and the curvature sample).
- :func:`pad_batch`: features ``[(T_i, F)]`` → ``(B, T_max, F)`` and lengths.
- :func:`pad_targets`: token sequences ``[(S_i,)]`` → ``(B, S_max)`` and lengths.
- :class:`Batch`: a collated batch of any task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class Batch:
    """A collated batch (what :class:`hfasr.optim.BatchObjective` and the first-order driver
    read): ``model(*inputs)`` gives the outputs; ``target`` is the supervision, read by the
    criterion only; ``count`` normalises the summed loss (frames, utterances); ``lengths``: valid
    output positions per sequence (structural damping), or None; ``names``: the utterances (for
    error messages), or None."""

    inputs: tuple[Any, ...]
    target: Any
    count: int
    lengths: Tensor | None = None
    names: list[str] | None = None


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
        if cur and (padded > max_frames
                    or (max_padding is not None and padded > (1 + max_padding) * (cur_sum + T))):
            batches.append(cur)
            cur, cur_max, cur_sum = [], 0, 0
        cur.append(int(i))
        cur_max = max(cur_max, T)
        cur_sum += T
    if cur:
        batches.append(cur)
    return batches


def make_batches(lengths: Sequence[int], max_frames: int, max_padding: float | None = None,
                 indices: Sequence[int] | None = None) -> list[list[int]]:
    """Indices (``indices``, default all of ``range(len(lengths))``) in batches of at most
    ``max_frames`` padded frames, longest first (ties: lower index first)."""
    idx = range(len(lengths)) if indices is None else indices
    order = sorted(idx, key=lambda i: (-int(lengths[i]), i))
    return batch_by_frames(lengths, order, max_frames, max_padding)


def pad_batch(feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Zero-padded ``(B, T_max, F)`` features and their lengths ``(B,)``."""
    if not feats:
        raise ValueError("pad_batch needs at least one utterance")
    lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
    x = feats[0].new_zeros(len(feats), int(lens.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        x[i, : f.shape[0]] = f
    return x, lens


def pad_targets(targets: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Zero-padded ``(B, max(1, S_max))`` long token ids and their lengths ``(B,)``."""
    S = max(1, max(int(t.shape[0]) for t in targets))
    out = torch.zeros(len(targets), S, dtype=torch.long)
    for i, t in enumerate(targets):
        out[i, : t.shape[0]] = t
    return out, torch.tensor([t.shape[0] for t in targets], dtype=torch.long)
