"""Utterance data sets, and training data as examples in batches (:class:`hfasr.optim.BatchData`).

- :class:`UtteranceSet`: the utterances of one split in memory: features, one supervision each
  (CTC token ids; a lattice with its alignment for sequence training) and transcripts;
  :func:`read_cuts` reads the features and transcripts of a feature manifest.
- :class:`Utterances`: whole utterances of known lengths, grouped longest first into batches of
  at most ``max_frames`` padded frames (:func:`~hfasr.data.batching.make_batches`) and collated
  by a task's function (sequence training, CTC, hybrid BLSTM / MDLSTM).
- :class:`FrameRows`: the frames of a :class:`~hfasr.data.frames.FrameData` as examples, spliced
  with ``context`` frames on each side when a batch is collated (frame-level DNN).

Both hand a task's drivers an index-based view of the data: the first-order driver asks for a
shuffled plan (:meth:`Utterances.shuffled` / :meth:`FrameRows.shuffled`), the HF objective for
the fixed plan, a curvature sample and subsets. Only indices are kept; a batch's tensors are
built when it is collated (``cache=True`` keeps the batches of the fixed plan).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hfasr.data.batching import Batch, batch_by_frames, make_batches
from hfasr.errors import DataError


@dataclass
class UtteranceSet:
    """Utterances of one split: ``feats[i]`` (T_i, F), ``sups[i]`` (the task's supervision),
    ``texts[i]`` (the transcript), ``cut_ids[i]``."""

    cut_ids: list[str]
    feats: list[Tensor]
    sups: list[Any]
    texts: list[str]

    def __post_init__(self) -> None:
        if not len(self.cut_ids) == len(self.feats) == len(self.sups) == len(self.texts):
            raise ValueError("cut_ids, feats, sups and texts must have the same length")

    @classmethod
    def from_pairs(cls, cut_ids: Sequence[str], utts: Sequence[tuple[Tensor, Any]],
                   texts: Sequence[str] | None = None) -> UtteranceSet:
        """From ``(features, supervision)`` pairs (texts default to empty)."""
        return cls(list(cut_ids), [x for x, _ in utts], [s for _, s in utts],
                   list(texts) if texts is not None else [""] * len(utts))

    def __len__(self) -> int:
        return len(self.cut_ids)

    @property
    def utts(self) -> list[tuple[Tensor, Any]]:
        """``(features, supervision)`` pairs."""
        return list(zip(self.feats, self.sups))

    @property
    def lengths(self) -> list[int]:
        return [int(x.shape[0]) for x in self.feats]

    @property
    def num_frames(self) -> int:
        return sum(self.lengths)

    def text_of(self) -> dict[str, str]:
        """cut id → transcript."""
        return dict(zip(self.cut_ids, self.texts))

    def subset(self, idx: Sequence[int]) -> UtteranceSet:
        return UtteranceSet([self.cut_ids[i] for i in idx], [self.feats[i] for i in idx],
                            [self.sups[i] for i in idx], [self.texts[i] for i in idx])


def read_cuts(data_dir: str | Path, task: str, split: str, progress: bool = False
              ) -> tuple[list[tuple[str, Tensor, str]], Path]:
    """``(cut_id, features (T, F), transcript)`` of every cut of the split's feature manifest
    (``<data_dir>/<task>_feats_<split>.jsonl.gz``) and its path; DataError naming the manifest
    when it is missing, truncated or corrupt, and naming the cut and the manifest for a cut
    without features or transcript, or with unreadable, non-finite or absurd features."""
    from tqdm import tqdm

    from hfasr.data.corpora import load_cuts
    from hfasr.data.features import cut_features
    from hfasr.data.frames import feats_manifest_path

    manifest = feats_manifest_path(data_dir, task, split)
    if not manifest.is_file():
        raise DataError(f"feature manifest not found: {manifest}; run `hfasr features` first")
    out = []
    for cut in tqdm(load_cuts(manifest), desc=f"load {task}/{split}", disable=not progress, leave=False):
        if not cut.has_features:
            raise DataError(f"cut '{cut.id}' of {manifest} has no features")
        text = " ".join(s.text or "" for s in cut.supervisions).strip()
        if not text:
            raise DataError(f"cut '{cut.id}' of {manifest} has no transcript")
        out.append((cut.id, torch.from_numpy(cut_features(cut, manifest)).float(), text))
    if not out:
        raise DataError(f"{manifest}: no cuts")
    return out, manifest


class Utterances:
    """Utterances ``0 .. len(lengths) - 1`` (or the subset ``index`` of them).

    Args:
        lengths: frames per utterance (all utterances of the split).
        collate: ``collate(utterance indices) -> Batch`` (indices into ``lengths``).
        max_frames: padded frames per batch.
        cache: keep the collated batches of the fixed plan (:meth:`plan` without indices).
    """

    def __init__(self, lengths: Sequence[int], collate: Callable[[list[int]], Batch], max_frames: int,
                 cache: bool = False, index: Sequence[int] | None = None) -> None:
        self.lengths = [int(n) for n in lengths]
        self._collate = collate
        self.max_frames = int(max_frames)
        self.cache = cache
        self.index = list(range(len(self.lengths))) if index is None else [int(i) for i in index]
        self._sizes = [self.lengths[i] for i in self.index]
        self._cached: dict[tuple[int, ...], Batch] = {}
        self._fixed: set[tuple[int, ...]] = set()

    def __len__(self) -> int:
        return len(self.index)

    def sizes(self) -> list[int]:
        return self._sizes

    def plan(self, indices: Sequence[int] | None = None, max_padding: float | None = None) -> list[list[int]]:
        batches = make_batches(self._sizes, self.max_frames, max_padding, indices)
        if indices is None and self.cache:
            self._fixed = {tuple(b) for b in batches}
        return batches

    def shuffled(self, generator: torch.Generator, max_frames: int | None = None) -> list[list[int]]:
        """Minibatches of a random order (``randperm`` with ``generator``), consecutive utterances
        grouped up to ``max_frames`` (default: the data's) padded frames."""
        order = torch.randperm(len(self), generator=generator).tolist()
        return batch_by_frames(self._sizes, order, max_frames or self.max_frames)

    def batch(self, indices: Sequence[int]) -> Batch:
        key = tuple(int(i) for i in indices)
        hit = self._cached.get(key)
        if hit is not None:
            return hit
        b = self._collate([self.index[i] for i in key])
        if key in self._fixed:
            self._cached[key] = b
        return b

    def subset(self, indices: Sequence[int]) -> Utterances:
        return Utterances(self.lengths, self._collate, self.max_frames, self.cache, [self.index[i] for i in indices])


class FrameRows:
    """The frames of a :class:`~hfasr.data.frames.FrameData` (or the subset ``index``) as
    examples: a batch's input is the spliced rows ``(N, (2c+1)·F)`` on ``device``, its target the
    pdf ids, its count the number of frames; the fixed plan is consecutive chunks of
    ``chunk_size`` frames."""

    def __init__(self, data, context: int, chunk_size: int = 8192, device: torch.device | str = "cpu",
                 index: Tensor | None = None) -> None:
        self.data = data
        self.context = int(context)
        self.chunk_size = int(chunk_size)
        self.device = torch.device(device)
        self.index = index

    def __len__(self) -> int:
        return self.data.num_frames if self.index is None else int(self.index.numel())

    def sizes(self) -> Sequence[int]:
        return [1] * len(self)

    def plan(self, indices: Sequence[int] | None = None, max_padding: float | None = None) -> list[Sequence[int]]:
        c = self.chunk_size
        if indices is None:
            return [range(s, min(s + c, len(self))) for s in range(0, len(self), c)]
        idx = list(indices)
        return [idx[s : s + c] for s in range(0, len(idx), c)]

    def shuffled(self, generator: torch.Generator, batch_size: int) -> list[Tensor]:
        """Minibatches of ``batch_size`` frames of a random order (``randperm`` with ``generator``;
        for :class:`~hfasr.data.stream.StreamedFrameData`, shuffled within blocks of utterances)."""
        # the data decides the order of all its frames (streamed data: within blocks of utterances)
        order = self.data.shuffled_frames(generator) if self.index is None else torch.randperm(len(self), generator=generator)
        return [order[s : s + batch_size] for s in range(0, len(self), batch_size)]

    def batch(self, indices: Sequence[int] | Tensor) -> Batch:
        if isinstance(indices, range):
            idx = torch.arange(indices.start, indices.stop, indices.step)
        else:
            idx = torch.as_tensor(indices, dtype=torch.long)
        if self.index is not None:
            idx = self.index[idx]
        rows = self.data.spliced(idx, self.context).to(self.device)
        return Batch((rows,), self.data.targets[idx].long().to(self.device), int(idx.numel()))

    def subset(self, indices: Sequence[int]) -> FrameRows:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return FrameRows(self.data, self.context, self.chunk_size, self.device,
                         idx if self.index is None else self.index[idx])
