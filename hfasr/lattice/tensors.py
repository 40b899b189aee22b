"""One lattice as plain tensors (what sequence training stores and reads).

States are numbered in topological order (every arc goes from a lower to a higher state id),
state 0 is the start state. Each arc carries the frame it emits at (``pdf >= 0``) or is an
epsilon arc (``pdf == -1``, no frame consumed). ``graph_cost`` is the decoding graph's cost
(−log of LM, pronunciation and transition probabilities, Kaldi's ``value1``); acoustic scores
are *not* stored: they are recomputed from the current model's outputs at every evaluation.
Lattices are saved with :meth:`Lattice.to_dict` / :meth:`Lattice.from_dict` (tensors only, so
``torch.load(weights_only=True)`` reads them).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class Lattice:
    num_states: int
    num_frames: int
    src: Tensor  # (A,) long
    dst: Tensor  # (A,) long
    frame: Tensor  # (A,) long: frame index of an emitting arc (ignored when pdf == -1)
    pdf: Tensor  # (A,) long: pdf id, -1 for epsilon arcs
    graph_cost: Tensor  # (A,) float64
    final_cost: Tensor  # (S,) float64: +inf for non-final states
    tid: Tensor | None = None  # (A,) long: transition-id (0 = epsilon)
    word: Tensor | None = None  # (A,) long: word id (0 = epsilon)

    def __post_init__(self) -> None:
        self._level: Tensor | None = None

    @property
    def num_arcs(self) -> int:
        return int(self.src.numel())

    def validate(self, name: str = "lattice") -> None:
        """Check top-sorting, frame consistency and finals; raise ValueError naming ``name``."""
        S = self.num_states
        if self.num_arcs and (int(self.src.min()) < 0 or int(self.dst.max()) >= S):
            raise ValueError(f"{name}: arc state ids out of range [0, {S})")
        if self.num_arcs and bool((self.src >= self.dst).any()):
            raise ValueError(f"{name}: not topologically sorted (an arc goes from state s to t <= s)")
        if not bool(torch.isfinite(self.final_cost).any()):
            raise ValueError(f"{name}: no final state")
        emit = self.pdf >= 0
        if bool(emit.any()) and (int(self.frame[emit].min()) < 0 or int(self.frame[emit].max()) >= self.num_frames):
            raise ValueError(f"{name}: arc frame outside [0, {self.num_frames})")
        # Each state has one time; emitting arcs advance it by one frame.
        t = self.state_times()
        if bool(emit.any()) and not bool((t[self.src[emit]] == self.frame[emit]).all()):
            raise ValueError(f"{name}: an emitting arc's frame differs from its source state's time")
        fin = torch.isfinite(self.final_cost)
        if not bool((t[fin] == self.num_frames).all()):
            raise ValueError(f"{name}: a final state is reached before the last frame")

    def _arcs_by_source(self) -> tuple[list[int], list[int], Tensor | None]:
        """Source and destination lists of the arcs in stable source order (and that order, or
        None when the arcs already are in source order, as written lattices normally are)."""
        src = self.src
        order = None
        if src.numel() > 1 and not bool((src[1:] >= src[:-1]).all()):
            order = torch.argsort(src, stable=True)
            return src[order].tolist(), self.dst[order].tolist(), order
        return src.tolist(), self.dst.tolist(), order

    def state_times(self) -> Tensor:
        """Frames consumed on any path from the start to each state (consistent in a lattice).

        Arcs are visited in source order (states are top-sorted, so a source's time is final when
        its arcs are visited); a state takes its time from the first arc reaching it from a
        reached state; unreachable states get −1.
        """
        src, dst, order = self._arcs_by_source()
        emit = self.pdf >= 0
        em = (emit if order is None else emit[order]).tolist()
        tt = [-1] * self.num_states
        tt[0] = 0
        for s, d, e in zip(src, dst, em):
            ts = tt[s]
            if ts >= 0 and tt[d] < 0:
                tt[d] = ts + e
        return torch.tensor(tt, dtype=torch.long)

    def levels(self) -> Tensor:
        """Topological level of each state: 1 + the largest level among its predecessors
        (cached)."""
        if self._level is None:
            src, dst, _ = self._arcs_by_source()
            lev = [0] * self.num_states
            for s, d in zip(src, dst):
                v = lev[s] + 1
                if v > lev[d]:  # noqa: PLR1730 (cheaper than max() in this loop)
                    lev[d] = v
            self._level = torch.tensor(lev, dtype=torch.long)
        return self._level

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> Lattice:
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})
