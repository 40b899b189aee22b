"""Frame-level training data read from disk on demand (``stream_buffer_utts`` of a CE config).

:class:`~hfasr.data.frames.FrameData` holds every feature frame of a split in memory (about
176 bytes per frame with its targets; 19 GB for 100 h with speed perturbation).
:class:`StreamedFrameData` keeps only what batching needs per frame: the pdf targets (int32, 4
bytes per frame) and the utterance offsets. Features are read from the lhotse archives when a
batch needs them, through a cache of at most ``cache_utts`` utterances.

The first-order CE driver's minibatch plan (:meth:`shuffled_frames`) shuffles the utterances,
groups them into blocks of ``buffer_utts`` and shuffles the frames *within* each block (the
bounded shuffle buffer of streaming trainers), so a block's minibatches touch only its
utterances and the cache holds about one block. Loading makes one pass over the split. It
checks every cut as :class:`FrameData` does, and accumulates the float64 statistics of the
global input normalisation (after per-utterance mean removal when ``utt_cmn``).

The plan is a permutation of frame indices drawn with the driver's checkpointed generator, and
a batch's rows depend only on its indices. A resumed run therefore trains on the same rows as
an uninterrupted one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from hfasr.data.frames import AlignedCuts, FrameDataConfig


def read_cached(cache: OrderedDict, size: int, cut, manifest: Path, length: int, key: int,
                utt_cmn: bool = False) -> Tensor:
    """Read the checked features of ``cut`` (first ``length`` frames, mean-removed with
    ``utt_cmn``) into the LRU ``cache`` under ``key``, evicting beyond ``size`` entries."""
    from hfasr.data.features import cut_features

    x = torch.from_numpy(cut_features(cut, manifest)).float()[:length]
    if utt_cmn:
        x = x - x.mean(0, keepdim=True)
    cache[key] = x
    while len(cache) > size:
        cache.popitem(last=False)
    return x


class StreamedFrameData:
    """The frames of one split with features on disk (module docstring). Offers the part of
    :class:`~hfasr.data.frames.FrameData`'s interface that frame-level DNN training uses:
    ``cut_ids``, ``offsets``, ``lengths``, ``targets``, ``num_frames``, ``feat_dim``,
    ``num_pdfs``, :meth:`pdf_counts` and :meth:`spliced`."""

    streamed = True

    def __init__(self, cuts: Sequence, manifest: Path, lengths: Sequence[int], targets: Tensor, num_pdfs: int,
                 feat_dim: int, utt_cmn: bool, buffer_utts: int, cache_utts: int | None = None) -> None:
        from hfasr.data.features import FeatureRef

        self._cuts = [c if isinstance(c, FeatureRef) else FeatureRef(c) for c in cuts]  # not the cuts
        self.cut_ids = [c.id for c in self._cuts]
        self.manifest = manifest
        lens = torch.as_tensor(list(lengths), dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
        self.targets = targets  # (N,) int32
        self.num_pdfs, self._feat_dim = int(num_pdfs), int(feat_dim)
        self.utt_cmn = bool(utt_cmn)
        self.buffer_utts = int(buffer_utts)
        self.cache_utts = int(cache_utts or 2 * buffer_utts)
        self._cache: OrderedDict[int, Tensor] = OrderedDict()
        self.loads = 0  # utterances read from disk (tests, diagnostics)
        self.mean: Tensor | None = None  # global normalisation statistics of load()
        self.std: Tensor | None = None

    # --- sizes -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.cut_ids)

    @property
    def num_frames(self) -> int:
        return int(self.offsets[-1])

    @property
    def feat_dim(self) -> int:
        return self._feat_dim

    @property
    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def pdf_counts(self) -> Tensor:
        return torch.bincount(self.targets.long(), minlength=self.num_pdfs).double()

    # --- access ----------------------------------------------------------------------------
    def utterance_features(self, u: int) -> Tensor:
        """Features (T, F) of utterance ``u`` (mean-removed with ``utt_cmn``), through the cache."""
        x = self._cache.get(u)
        if x is not None:
            self._cache.move_to_end(u)
            return x
        x = read_cached(self._cache, self.cache_utts, self._cuts[u], self.manifest, int(self.lengths[u]), u,
                        self.utt_cmn)
        self.loads += 1
        return x

    def spliced(self, idx: Tensor, context: int) -> Tensor:
        """Spliced rows (len(idx), (2c+1)·F) of global frame indices ``idx``, as
        :meth:`FrameData.spliced` gives them (edge frames replicated within each utterance)."""
        idx = idx.long()
        u = torch.searchsorted(self.offsets, idx, right=True) - 1
        out = torch.empty(idx.shape[0], (2 * context + 1) * self.feat_dim)
        for utt in torch.unique(u).tolist():
            sel = (u == utt).nonzero().flatten()
            x = self.utterance_features(utt)
            t = idx[sel] - self.offsets[utt]
            src = (t[:, None] + torch.arange(-context, context + 1)[None, :]).clamp(0, x.shape[0] - 1)
            out[sel] = x[src].reshape(sel.shape[0], -1)
        return out

    def shuffled_frames(self, generator: torch.Generator) -> Tensor:
        """A permutation of all frame indices: utterances shuffled, grouped into blocks of
        ``buffer_utts``, frames shuffled within each block."""
        order = torch.randperm(len(self), generator=generator)
        parts = []
        for s in range(0, len(order), self.buffer_utts):
            block = order[s : s + self.buffer_utts]
            frames = torch.cat([torch.arange(int(self.offsets[u]), int(self.offsets[u + 1])) for u in block.tolist()])
            parts.append(frames[torch.randperm(frames.numel(), generator=generator)])
        return torch.cat(parts)

    # --- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, data_dir: str | Path, task: str, split: str, ali_dir: str | Path,
             cfg: FrameDataConfig | None = None, utt_cmn: bool = False, buffer_utts: int = 256,
             progress: bool = False) -> StreamedFrameData:
        """One pass over the split (the checks of :meth:`FrameData.load`); keeps the targets
        and the float64 mean / standard deviation of the (mean-removed with ``utt_cmn``) frames."""
        from hfasr.data.features import FeatureRef

        aligned = AlignedCuts(data_dir, task, split, ali_dir, cfg, mmap_alignment=True, lazy=True)
        cuts, lengths, targets = [], [], []
        s1 = s2 = None
        n = 0
        for cut, _, x, y, _ in aligned.iterate(progress):
            if utt_cmn:
                x = x - x.mean(0, keepdim=True)
            xd = x.double()
            s1 = xd.sum(0) if s1 is None else s1 + xd.sum(0)
            s2 = (xd * xd).sum(0) if s2 is None else s2 + (xd * xd).sum(0)
            n += x.shape[0]
            cuts.append(FeatureRef(cut))
            lengths.append(int(x.shape[0]))
            targets.append(y.to(torch.int32))
        data = cls(cuts, aligned.manifest, lengths, torch.cat(targets), aligned.num_pdfs, int(s1.numel()),
                   utt_cmn, buffer_utts)
        mean = s1 / n
        var = (s2 - n * mean * mean) / max(n - 1, 1)  # unbiased, as torch.std
        data.mean, data.std = mean.float(), var.clamp(min=0).sqrt().float().clamp(min=1e-5)
        del aligned, targets, x, xd, y
        from hfasr.heap import trim_heap

        trim_heap()  # the alignment file's freed tensors (module hfasr.heap)
        return data
