"""GMM input features: stored fbank -> global CMVN -> DCT (MFCC) -> utterance CMN -> deltas.

Diagonal-covariance GMMs want decorrelated features, so by default the log-mel fbank is turned
into 13 cepstra (Kaldi's MFCC DCT and liftering) before deltas are appended (39 dims).

:func:`load_feats` reads a CutSet's features into one contiguous float32 matrix with per-cut
offsets (:class:`FeatureBank`), which the vectorised statistics of :mod:`hfasr.gmm.train` index
directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hfasr.config import bounded, check_ranges
from hfasr.errors import DataError


def delta_scales(order: int, window: int) -> list[np.ndarray]:
    """Kaldi's ``DeltaFeatures`` filters: ``scales[i]`` gives the order-i coefficient."""
    scales = [np.array([1.0])]
    denom = 2.0 * sum(j * j for j in range(1, window + 1))
    for i in range(1, order + 1):
        prev = scales[-1]
        cur = np.zeros(len(prev) + 2 * window)
        for j in range(-window, window + 1):
            cur[j + window : j + window + len(prev)] += j * prev
        scales.append(cur / denom)
    return scales


def add_deltas(x: np.ndarray, order: int = 2, window: int = 2) -> np.ndarray:
    """``compute-deltas``: append order-1..``order`` deltas (frame indices clamped at the edges)."""
    if order == 0:
        return x
    T = x.shape[0]
    out = [x]
    for sc in delta_scales(order, window)[1:]:
        half = (len(sc) - 1) // 2
        idx = np.clip(np.arange(T)[:, None] + np.arange(-half, half + 1)[None, :], 0, T - 1)
        out.append(np.einsum("tkd,k->td", x[idx], sc))
    return np.concatenate(out, axis=1).astype(np.float32)


def dct_matrix(num_ceps: int, num_bins: int, lifter: float = 22.0) -> np.ndarray:
    """``[num_bins, num_ceps]``: Kaldi's MFCC DCT-II (orthonormal) with cepstral liftering."""
    n = np.arange(num_bins)
    k = np.arange(num_ceps)[:, None]
    m = np.sqrt(2.0 / num_bins) * np.cos(np.pi / num_bins * (n + 0.5) * k)
    m[0] = np.sqrt(1.0 / num_bins)
    if lifter > 0:
        m *= (1.0 + 0.5 * lifter * np.sin(np.pi * np.arange(num_ceps) / lifter))[:, None]
    return m.T.astype(np.float32)


@dataclass
class FeatureOptions:
    """How raw fbank becomes GMM input (stored in the GMM dir's config)."""

    # "global" (train mean/std), "global+utt" (then per-utterance mean removal), "none"
    cmvn: str = bounded("global+utt", choices=("global", "global+utt", "none"))
    num_ceps: int = bounded(13, ge=0)  # > 0: DCT of the log-mel fbank to this many cepstra (MFCC); 0: fbank as is
    delta_order: int = bounded(2, ge=0)  # 0: static only; 2: + deltas + delta-deltas (Kaldi's add-deltas)
    delta_window: int = bounded(2, ge=1)

    def __post_init__(self) -> None:
        check_ranges(self)


def transform(x: np.ndarray, opts: FeatureOptions, mean: np.ndarray | None, std: np.ndarray | None) -> np.ndarray:
    """One utterance's ``[T, F]`` fbank -> global CMVN -> DCT -> utterance CMN -> deltas."""
    x = np.asarray(x, dtype=np.float32)
    if opts.cmvn in ("global", "global+utt"):
        if mean is None or std is None:
            raise DataError("global CMVN requested but no stats given")
        x = (x - mean) / std
    elif opts.cmvn != "none":
        raise DataError(f"unknown cmvn option '{opts.cmvn}' (global, global+utt, none)")
    if opts.num_ceps > 0:
        if opts.num_ceps > x.shape[1]:
            raise DataError(f"num_ceps={opts.num_ceps} exceeds the {x.shape[1]} fbank bins")
        x = x @ dct_matrix(opts.num_ceps, x.shape[1])
    if opts.cmvn == "global+utt":
        x = x - x.mean(axis=0, keepdims=True)
    return add_deltas(x, opts.delta_order, opts.delta_window)


@dataclass
class FeatureBank:
    """All frames of a CutSet in one matrix: cut i is ``data[offsets[i]:offsets[i+1]]``."""

    cut_ids: list[str]
    texts: list[str]
    data: torch.Tensor  # [N, D] float32
    offsets: np.ndarray  # [num_cuts + 1] int64

    def __len__(self) -> int:
        return len(self.cut_ids)

    def feats(self, i: int) -> torch.Tensor:
        return self.data[self.offsets[i] : self.offsets[i + 1]]

    def num_frames(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    @property
    def dim(self) -> int:
        return int(self.data.shape[1])


def load_stats_np(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from hfasr.data.features import load_stats

    mean, std = load_stats(path)
    return mean.numpy(), std.clamp_min(1e-5).numpy()


def load_feats(cuts, opts: FeatureOptions, mean: np.ndarray | None, std: np.ndarray | None,
               desc: str = "features", progress: bool = True) -> FeatureBank:
    """Load and transform the features of every cut (in CutSet order)."""
    ids, texts, mats = [], [], []
    for cut in tqdm(cuts, desc=desc, disable=not progress, leave=False):
        if not cut.has_features:
            raise DataError(f"cut '{cut.id}' has no features; run `hfasr features` first")
        x = cut.load_features()
        if x.shape[0] != cut.num_frames:
            raise DataError(f"cut '{cut.id}': loaded {x.shape[0]} frames, manifest says {cut.num_frames}")
        ids.append(cut.id)
        texts.append(" ".join(s.text or "" for s in cut.supervisions))
        mats.append(transform(x, opts, mean, std))
    if not mats:
        raise DataError("no cuts to load features from")
    offsets = np.zeros(len(mats) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([m.shape[0] for m in mats])
    return FeatureBank(ids, texts, torch.from_numpy(np.concatenate(mats, axis=0)), offsets)
