"""Training data as examples in batches (the :class:`hfasr.optim.BatchData` protocol).

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

import torch
from torch import Tensor

from hfasr.data.batching import Batch, batch_by_frames, make_batches


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
        """Minibatches of ``batch_size`` frames of a random order (``randperm`` with ``generator``)."""
        order = torch.randperm(len(self), generator=generator)
        return [order[s : s + batch_size] for s in range(0, len(self), batch_size)]

    def batch(self, indices: Sequence[int] | Tensor) -> Batch:
        if isinstance(indices, range):
            idx = torch.arange(indices.start, indices.stop, indices.step)
        else:
            idx = torch.as_tensor(indices, dtype=torch.long)
        if self.index is not None:
            idx = self.index[idx]
        rows = self.data.spliced(idx, self.context).to(self.device)
        return Batch((rows,), self.data.targets[idx].to(self.device), int(idx.numel()))

    def subset(self, indices: Sequence[int]) -> FrameRows:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return FrameRows(self.data, self.context, self.chunk_size, self.device,
                         idx if self.index is None else self.index[idx])
