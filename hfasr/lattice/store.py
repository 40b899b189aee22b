"""Compact lattice storage: many lattices packed into a few flat tensors, on disk and in memory.

:class:`PackedLattices` holds the lattices of a shard (or of a whole split, once the shards are
concatenated) as one tensor per field, with per-lattice offsets:

========================  =========  ==================================================
field                     dtype      per
========================  =========  ==================================================
``src``, ``dst``          int32      arc (state ids local to the lattice, top-sorted)
``tid``                   int32      arc (transition-id, 0 = epsilon)
``graph_cost``            float32    arc
``word``                  int32      arc, only when asked for (``keep_words``)
``state_time``            int32      state (frames consumed before it)
``final_state``           int32      final state (sparse: finals are few)
``final_cost``            float32    final state
``num_states``            int32      lattice
``num_frames``            int32      lattice
``arc_offsets``           int64      lattice + 1
``final_offsets``         int64      lattice + 1
``state_offsets``         int64      lattice + 1
========================  =========  ==================================================

so 16 bytes per arc and 4 per state (about 18.5 per arc at 0.6 states per arc; 4 more per arc
with words), where :class:`~hfasr.lattice.tensors.Lattice` with int64 / float64 fields takes
about 60. The pdf and the frame of an arc are not stored: they are ``tid2pdf[tid]`` (−1 for
epsilon arcs) and ``state_time[src]``, computed when a lattice is used. ``store[i]`` is a :class:`PackedLattice`, a view
that behaves like a :class:`Lattice` (its tensors are slices of the packed ones, or computed on
access); :class:`~hfasr.lattice.fb.LatticeBatch` casts to int64 / float64 when it builds a batch,
so the forward-backward runs in double precision as before; only the stored graph costs are
rounded to float32 (the decoder's costs are float32: exact). Topological levels (needed by
every batch) are cached per state as int32 (4 bytes per state) in memory, not in
:class:`LatticeShards`.

On disk, one shard is ``store.to_dict()`` saved with :func:`hfasr.fileio.save_torch` (tensors
and plain data only: ``torch.load(weights_only=True)`` reads it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from hfasr.errors import DataError
from hfasr.lattice.tensors import Lattice

FORMAT = "hfasr-packed-lattices-1"
_ARC_FIELDS = ("src", "dst", "tid", "graph_cost")


def _offsets(sizes: Sequence[int]) -> Tensor:
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(torch.as_tensor(list(sizes), dtype=torch.long), 0)])


class PackedLattices:
    """Lattices packed into flat tensors (module docstring). ``tid2pdf``: (num_tids + 1,) pdf of
    each transition-id (index 0 unused)."""

    def __init__(self, cut_ids: list[str], num_states: Tensor, num_frames: Tensor, arc_offsets: Tensor,
                 src: Tensor, dst: Tensor, tid: Tensor, graph_cost: Tensor, state_time: Tensor,
                 final_offsets: Tensor, final_state: Tensor, final_cost: Tensor, tid2pdf: Tensor,
                 word: Tensor | None = None) -> None:
        self.cut_ids = list(cut_ids)
        self.num_states, self.num_frames = num_states, num_frames
        self.arc_offsets, self.final_offsets = arc_offsets, final_offsets
        self.src, self.dst, self.tid, self.graph_cost = src, dst, tid, graph_cost
        self.state_time = state_time
        self.final_state, self.final_cost, self.word = final_state, final_cost, word
        self.state_offsets = _offsets(num_states.tolist())
        t2p = torch.as_tensor(tid2pdf).to(torch.int32).clone()
        if t2p.numel():
            t2p[0] = -1  # tid 0: epsilon
        self.tid2pdf = t2p
        # topological level of every state (int32), computed on first use per lattice and kept
        # when cache_levels (allocated on first use; LatticeShards turns the cache off)
        self.cache_levels = True
        self._levels: Tensor | None = None
        self._has_levels: Tensor | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def from_lattices(cls, cut_ids: Sequence[str], lattices: Sequence[Lattice | dict], tid2pdf: Tensor,
                      keep_words: bool = False) -> PackedLattices:
        """Pack :class:`Lattice` objects (or their ``to_dict()``); each needs ``tid``."""
        lats = [Lattice.from_dict(x) if isinstance(x, dict) else x for x in lattices]
        if len(lats) != len(cut_ids):
            raise ValueError(f"{len(cut_ids)} cut ids but {len(lats)} lattices")
        for cid, lat in zip(cut_ids, lats):
            if lat.tid is None:
                raise ValueError(f"lattice of '{cid}' has no transition ids: it cannot be packed")
            if lat.num_states >= 2**31 or lat.num_frames >= 2**31:
                raise ValueError(f"lattice of '{cid}' is too large for int32 state ids")
        i32, f32 = torch.int32, torch.float32

        def cat(xs: list[Tensor], dt: torch.dtype) -> Tensor:
            return torch.cat([x.to(dt) for x in xs]) if xs else torch.zeros(0, dtype=dt)

        fin = [torch.isfinite(lat.final_cost) for lat in lats]
        word = None
        if keep_words:
            word = cat([lat.word if lat.word is not None else torch.zeros(lat.num_arcs, dtype=i32) for lat in lats], i32)
        return cls(
            list(cut_ids), torch.tensor([lat.num_states for lat in lats], dtype=i32),
            torch.tensor([lat.num_frames for lat in lats], dtype=i32), _offsets([lat.num_arcs for lat in lats]),
            cat([lat.src for lat in lats], i32), cat([lat.dst for lat in lats], i32),
            cat([lat.tid for lat in lats], i32), cat([lat.graph_cost for lat in lats], f32),
            cat([_state_time(lat) for lat in lats], i32), _offsets([int(f.sum()) for f in fin]),
            cat([torch.nonzero(f).squeeze(1) for f in fin], i32),
            cat([lat.final_cost[f] for lat, f in zip(lats, fin)], f32), tid2pdf, word)

    @classmethod
    def concat(cls, parts: Sequence[PackedLattices]) -> PackedLattices:
        """One store with the lattices of ``parts`` in order (same ``tid2pdf``)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        words = all(p.word is not None for p in parts)

        def cat(name: str) -> Tensor:
            return torch.cat([getattr(p, name) for p in parts])

        def offs(name: str) -> Tensor:
            base, out = 0, [torch.zeros(1, dtype=torch.long)]
            for p in parts:
                o = getattr(p, name)
                out.append(o[1:] + base)
                base += int(o[-1])
            return torch.cat(out)

        return cls([c for p in parts for c in p.cut_ids], cat("num_states"), cat("num_frames"), offs("arc_offsets"),
                   cat("src"), cat("dst"), cat("tid"), cat("graph_cost"), cat("state_time"), offs("final_offsets"),
                   cat("final_state"), cat("final_cost"), parts[0].tid2pdf, cat("word") if words else None)

    # ------------------------------------------------------------------ disk
    def to_dict(self) -> dict:
        d = {"format": FORMAT, "cut_ids": list(self.cut_ids), "num_states": self.num_states,
             "num_frames": self.num_frames, "arc_offsets": self.arc_offsets, "final_offsets": self.final_offsets,
             "state_time": self.state_time, "final_state": self.final_state, "final_cost": self.final_cost,
             "tid2pdf": self.tid2pdf}
        for k in _ARC_FIELDS:
            d[k] = getattr(self, k)
        if self.word is not None:
            d["word"] = self.word
        return d

    @classmethod
    def from_dict(cls, d: dict, name: str = "lattice shard", check: bool = True) -> PackedLattices:
        """Inverse of :meth:`to_dict`, checked (DataError naming ``name``; ``check=False`` skips
        the pass over the transition ids, for a shard already checked once)."""
        try:
            if d.get("format") != FORMAT:
                raise ValueError(f"format {d.get('format')!r}, expected {FORMAT!r}")
            st = cls(list(d["cut_ids"]), d["num_states"], d["num_frames"], d["arc_offsets"], d["src"], d["dst"],
                     d["tid"], d["graph_cost"], d["state_time"], d["final_offsets"], d["final_state"],
                     d["final_cost"], d["tid2pdf"], d.get("word"))
            if check:
                st.check()
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, IndexError) as e:
            raise DataError(f"{name}: not a lattice shard written by `hfasr lattices` ({type(e).__name__}: {e})") from e
        return st

    def check(self) -> None:
        """Consistent sizes and dtypes (ValueError otherwise); per-lattice topology is checked by
        :meth:`Lattice.validate` where needed."""
        n, A = len(self.cut_ids), int(self.src.numel())
        for k, dt in (("num_states", torch.int32), ("num_frames", torch.int32), ("src", torch.int32),
                      ("dst", torch.int32), ("state_time", torch.int32), ("tid", torch.int32),
                      ("graph_cost", torch.float32), ("final_state", torch.int32), ("final_cost", torch.float32)):
            if getattr(self, k).dtype != dt:
                raise ValueError(f"{k} is {getattr(self, k).dtype}, expected {dt}")
        if self.num_states.numel() != n or self.num_frames.numel() != n or self.arc_offsets.numel() != n + 1 \
                or self.final_offsets.numel() != n + 1:
            raise ValueError("per-lattice arrays disagree with the number of cut ids")
        if int(self.arc_offsets[-1]) != A or any(int(getattr(self, k).numel()) != A for k in _ARC_FIELDS):
            raise ValueError("arc arrays disagree with the arc offsets")
        if int(self.state_time.numel()) != int(self.num_states.sum()):
            raise ValueError("state times disagree with the numbers of states")
        if self.word is not None and int(self.word.numel()) != A:
            raise ValueError("word labels disagree with the arc offsets")
        if int(self.final_offsets[-1]) != self.final_state.numel() or self.final_cost.numel() != self.final_state.numel():
            raise ValueError("final-state arrays disagree with the final offsets")
        if A and (int(self.tid.min()) < 0 or int(self.tid.max()) >= self.tid2pdf.numel()):
            raise ValueError("a transition id outside tid2pdf")

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.cut_ids)

    def __getitem__(self, i: int) -> PackedLattice:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return PackedLattice(self, i % len(self))

    @property
    def num_arcs(self) -> int:
        return int(self.src.numel())

    @property
    def total_frames(self) -> int:
        return int(self.num_frames.sum())

    def nbytes(self) -> int:
        """Bytes of the tensors held (the level cache included)."""
        ts = [self.num_states, self.num_frames, self.arc_offsets, self.final_offsets, self.state_offsets,
              self.state_time, self.final_state, self.final_cost, self.tid2pdf,
              *(t for t in (self._levels, self._has_levels) if t is not None),
              *(getattr(self, k) for k in _ARC_FIELDS)]
        if self.word is not None:
            ts.append(self.word)
        return sum(t.numel() * t.element_size() for t in ts)

    def lattice(self, i: int) -> Lattice:
        """Lattice ``i`` as a plain :class:`Lattice` (int32 / float32 tensors, dense finals)."""
        return self[i].lattice()

    def _levels_of(self, i: int, lat: PackedLattice) -> Tensor:
        if not self.cache_levels:
            return lat.lattice().levels().to(torch.int32)
        if self._levels is None or self._has_levels is None:
            self._levels = torch.full((int(self.state_offsets[-1]),), -1, dtype=torch.int32)
            self._has_levels = torch.zeros(len(self.cut_ids), dtype=torch.bool)
        s0, s1 = int(self.state_offsets[i]), int(self.state_offsets[i + 1])
        if not bool(self._has_levels[i]):
            self._levels[s0:s1] = lat.lattice().levels().to(torch.int32)
            self._has_levels[i] = True
        return self._levels[s0:s1]


class PackedLattice:
    """Lattice ``i`` of a :class:`PackedLattices`: the :class:`Lattice` attributes, as views of
    the packed tensors (``pdf`` and the dense ``final_cost`` computed on access)."""

    __slots__ = ("index", "store")

    def __init__(self, store: PackedLattices, index: int) -> None:
        self.store, self.index = store, index

    def _arcs(self, name: str) -> Tensor:
        st, i = self.store, self.index
        return getattr(st, name)[int(st.arc_offsets[i]):int(st.arc_offsets[i + 1])]

    @property
    def num_states(self) -> int:
        return int(self.store.num_states[self.index])

    @property
    def num_frames(self) -> int:
        return int(self.store.num_frames[self.index])

    @property
    def num_arcs(self) -> int:
        st, i = self.store, self.index
        return int(st.arc_offsets[i + 1] - st.arc_offsets[i])

    @property
    def src(self) -> Tensor:
        return self._arcs("src")

    @property
    def dst(self) -> Tensor:
        return self._arcs("dst")

    @property
    def frame(self) -> Tensor:
        st, i = self.store, self.index
        times = st.state_time[int(st.state_offsets[i]):int(st.state_offsets[i + 1])]
        return times[self.src.long()]

    @property
    def tid(self) -> Tensor:
        return self._arcs("tid")

    @property
    def graph_cost(self) -> Tensor:
        return self._arcs("graph_cost")

    @property
    def word(self) -> Tensor | None:
        return None if self.store.word is None else self._arcs("word")

    @property
    def pdf(self) -> Tensor:
        return self.store.tid2pdf[self.tid.long()]

    @property
    def final_cost(self) -> Tensor:
        st, i = self.store, self.index
        f0, f1 = int(st.final_offsets[i]), int(st.final_offsets[i + 1])
        out = torch.full((self.num_states,), math.inf, dtype=torch.float32)
        out[st.final_state[f0:f1].long()] = st.final_cost[f0:f1]
        return out

    def levels(self) -> Tensor:
        return self.store._levels_of(self.index, self)

    def lattice(self) -> Lattice:
        return Lattice(num_states=self.num_states, num_frames=self.num_frames, src=self.src, dst=self.dst,
                       frame=self.frame, pdf=self.pdf, graph_cost=self.graph_cost, final_cost=self.final_cost,
                       tid=self.tid, word=self.word)

    def validate(self, name: str = "lattice") -> None:
        self.lattice().validate(name)

    def state_times(self) -> Tensor:
        return self.lattice().state_times()

    def to_dict(self) -> dict:
        return self.lattice().to_dict()


def _state_time(lat: Lattice) -> Tensor:
    """Frames consumed before each state, from the arcs' frames (epsilon arcs first, so that an
    emitting arc's frame wins; a state without outgoing arcs gets 0: no arc reads its time)."""
    t = torch.zeros(lat.num_states, dtype=torch.long)
    emit = lat.pdf >= 0
    t[lat.src[~emit].long()] = lat.frame[~emit].long()
    t[lat.src[emit].long()] = lat.frame[emit].long()
    return t


def compact_lattice(lat: Lattice) -> Lattice:
    """``lat`` with int32 index fields and float32 costs (a regenerated lattice kept in memory)."""
    i32 = torch.int32
    return Lattice(num_states=lat.num_states, num_frames=lat.num_frames, src=lat.src.to(i32), dst=lat.dst.to(i32),
                   frame=lat.frame.to(i32), pdf=lat.pdf.to(i32), graph_cost=lat.graph_cost.float(),
                   final_cost=lat.final_cost.float(), tid=None if lat.tid is None else lat.tid.to(i32), word=None)


# ---------------------------------------------------------------------------------- lattice dirs
INDEX_FORMAT = "hfasr-lattice-index-1"


def shard_path(lat_dir, split: str, job: int):
    """``<lat_dir>/lats_<split>.<job>.pt`` (job counted from 1, as Kaldi's ``lat.JOB.gz``)."""
    from pathlib import Path

    return Path(lat_dir) / f"lats_{split}.{job}.pt"


def index_path(lat_dir, split: str):
    """``<lat_dir>/lats_<split>.index.pt``: the shards of a split and the lattice meta data."""
    from pathlib import Path

    return Path(lat_dir) / f"lats_{split}.index.pt"


def legacy_path(lat_dir, split: str):
    """``<lat_dir>/lats_<split>.pt``: the single-file format of earlier versions (still read)."""
    from pathlib import Path

    return Path(lat_dir) / f"lats_{split}.pt"


def read_shard(path, key: str | None = None, mmap: bool = False, check: bool = True) -> tuple[PackedLattices, dict]:
    """(lattices, shard dict without the packed tensors) of one shard file; with ``key``, a
    shard written for other inputs (model, graph, cuts, beams) is a DataError. ``mmap``: the
    packed tensors are memory-mapped from the file (read by the OS as batches touch them, shared
    by the processes of a machine, evictable) instead of read into memory."""
    from hfasr.fileio import load_torch

    what = "a lattice shard written by `hfasr lattices`"
    keys = ("format", "cut_ids", "key")
    if mmap:
        d = _load_mmap(path, what, keys)
    else:
        d = load_torch(path, what, keys)  # a tampered or truncated file is a DataError naming it
    if key is not None and d["key"] != key:
        raise DataError(f"{path}: this shard was written by another `hfasr lattices` run than its index "
                        f"lists (a later run was interrupted); rerun `hfasr lattices`")
    st = PackedLattices.from_dict(d, str(path), check=check)
    return st, {"key": d["key"], "failed": dict(d.get("failed") or {})}


def _load_mmap(path, what: str, keys: tuple[str, ...]) -> dict:
    """:func:`hfasr.fileio.load_torch` (``weights_only``, errors naming the file), memory-mapped."""
    from pathlib import Path

    if not Path(path).is_file():
        raise DataError(f"{path}: not found (expected {what})")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated, not a torch file, or pickled objects refused
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"{path}: cannot read {what}: the file is truncated, corrupt or holds more than "
                        f"tensors and plain data ({type(e).__name__}: {msg[:200]})") from e
    if not isinstance(d, dict) or any(k not in d for k in keys):
        raise DataError(f"{path}: expected {what} (a dict with keys {list(keys)})")
    return d


def shard_key(path):
    """The key of a complete shard file, or None when there is none (or it cannot be read).
    Memory-mapped: the tensors are not read."""
    from pathlib import Path

    if not Path(path).is_file():
        return None
    try:
        d = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 (truncated, foreign or not a torch file: not a complete shard)
        return None
    return d.get("key") if isinstance(d, dict) and d.get("format") == FORMAT else None


def load_lattice_dir(lat_dir, split: str, mmap: bool = False) -> dict:
    """The lattices of ``split`` in ``lat_dir``: the sharded format (index + shards) or, when
    there is no index, the single-file format of earlier versions (converted to the packed
    form in memory). Returns the meta data of the index (``tid2pdf``, ``tid2phone``,
    ``silence_phones``, ``acoustic_scale``, ``beam``, ``lattice_beam``, ``failed`` ...) with
    ``"cut_ids"``, ``"stores"`` (one :class:`PackedLattices` per shard, not copied into one) and
    ``"lattices"`` (their :class:`PackedLattice` views, in order). DataError naming the file on
    anything missing or foreign. ``mmap``: the shards are memory-mapped (:func:`read_shard`):
    only the int32 level cache (4 bytes per state) is private memory of the process."""
    from hfasr.fileio import load_torch

    ip = index_path(lat_dir, split)
    if not ip.is_file():
        old = legacy_path(lat_dir, split)
        if old.is_file():
            return _load_legacy(old)
        raise DataError(f"lattices of split '{split}' not found in {lat_dir} (no {ip.name}); run `hfasr lattices` first")
    need = ("format", "shards", "tid2pdf", "tid2phone", "silence_phones", "acoustic_scale")
    meta = load_torch(ip, "a lattice index written by `hfasr lattices`", need)
    if meta["format"] != INDEX_FORMAT:
        raise DataError(f"{ip}: format {meta['format']!r}, expected {INDEX_FORMAT!r}; rerun `hfasr lattices`")
    parts, failed = [], {}
    for sh in meta["shards"]:
        p = ip.parent / sh["file"]
        st, info = read_shard(p, sh["key"], mmap=mmap)
        if st.cut_ids != list(sh["cut_ids"]):
            raise DataError(f"{p}: its cut ids differ from those {ip.name} lists; rerun `hfasr lattices`")
        parts.append(st)
        failed.update(info["failed"])
    return _with_stores(dict(meta, failed=failed), parts, ip)


def _with_stores(meta: dict, stores: list[PackedLattices], path) -> dict:
    try:
        scale = float(meta["acoustic_scale"])
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: bad acoustic_scale") from e
    if not math.isfinite(scale):
        raise DataError(f"{path}: bad acoustic_scale")
    meta.update(cut_ids=[c for st in stores for c in st.cut_ids], stores=stores,
                 lattices=[st[i] for st in stores for i in range(len(st))])
    return meta


def _load_legacy(path) -> dict:
    from hfasr.fileio import load_torch

    need = ("cut_ids", "lattices", "tid2pdf", "tid2phone", "silence_phones", "acoustic_scale")
    d = load_torch(path, "a lattice file written by `hfasr lattices`", need)
    if not isinstance(d["lattices"], list) or len(d["cut_ids"]) != len(d["lattices"]):
        raise DataError(f"{path}: cut ids and lattices differ in number")
    try:
        store = PackedLattices.from_lattices(list(d["cut_ids"]), d["lattices"], d["tid2pdf"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise DataError(f"{path}: not a lattice file written by `hfasr lattices` ({type(e).__name__}: {e})") from e
    d.pop("lattices")
    d.setdefault("failed", {})
    return _with_stores(d, [store], path)


FAULT_AROUND = 64 * 1024  # bytes a page fault on a file mapping maps around it (Linux's default)


class LatticeShards:
    """The lattices of a split, memory-mapped shard by shard, with bounded resident memory.

    A memory-mapped shard costs no private memory, but every page a batch touches stays
    resident (and counts in the process's RSS) until the map is dropped: a pass over the
    training set would end with the whole split resident. :meth:`get` therefore counts the
    bytes of the lattices it hands out, plus the kernel's fault-around window (64 KiB mapped per
    array a lattice touches, :data:`FAULT_AROUND`), and once that exceeds ``map_budget_mb`` drops
    the shards' resident pages (``madvise(MADV_DONTNEED)`` on the read-only file mappings:
    cheap, the views stay valid; where that is unavailable, every shard is mapped afresh and the
    old maps go once no batch holds a view of them). Counting the lattice bytes alone let a
    64 MB budget hold up to ~500 MB of mapped pages (16x synth: 32 shards, random access). Topological levels are
    computed when a lattice is handed to a batch, not cached: a cache (4 private bytes per state)
    would grow with the corpus (160 MB at 32k synth utterances), computing them costs about
    0.4 ms per lattice.
    A lattice dir of the single-file format of earlier versions is held in memory as read.

    ``meta``: :func:`load_lattice_dir`'s dict (``tid2pdf``, ``acoustic_scale``, ...), without the
    lattice views; ``cut_ids``: the lattices' cut ids in order.
    """

    def __init__(self, lat_dir, split: str, map_budget_mb: float = 64.0) -> None:
        meta = load_lattice_dir(lat_dir, split, mmap=True)  # every shard checked once
        self.stores: list[PackedLattices] = meta.pop("stores")
        meta.pop("lattices")
        self.cut_ids: list[str] = meta.pop("cut_ids")
        self.meta = meta
        self._where = {c: (s, i) for s, st in enumerate(self.stores) for i, c in enumerate(st.cut_ids)}
        ip = index_path(lat_dir, split)
        self._files = [(ip.parent / sh["file"], sh["key"]) for sh in meta.get("shards", [])] if ip.is_file() else []
        self.budget = map_budget_mb * 2**20 if self._files else math.inf
        self.touched = 0.0  # bytes (with fault-around) handed out since the pages were last dropped
        self.remaps = 0  # times the shards' pages were dropped or the shards mapped afresh (tests, diagnostics)
        self._ranges: list[tuple[int, int]] = []  # address ranges of the shard files' mappings
        for st in self.stores:
            st.cache_levels = False
        if self._files:
            self._remap()  # drop the pages that checking the shards touched (their transition ids)

    def __len__(self) -> int:
        return len(self.cut_ids)

    def __contains__(self, cut_id: str) -> bool:
        return cut_id in self._where

    def get(self, cut_id: str) -> PackedLattice:
        """The lattice of ``cut_id`` (KeyError when it has none)."""
        s, i = self._where[cut_id]
        st = self.stores[s]
        a0, a1 = int(st.arc_offsets[i]), int(st.arc_offsets[i + 1])
        nbytes = ((a1 - a0) * (20 if st.word is not None else 16) + 4 * int(st.num_states[i])
                  + FAULT_AROUND * (6 if st.word is not None else 5))
        if self.touched + nbytes > self.budget and self.touched > 0:
            self._drop()
            st = self.stores[s]
        self.touched += nbytes
        return st[i]

    def _remap(self) -> None:
        """Map every shard afresh (the old maps go once no view of them is left)."""
        from hfasr.heap import file_mappings

        for s, (path, key) in enumerate(self._files):
            new, _ = read_shard(path, key, mmap=True, check=False)
            new.cache_levels = False
            self.stores[s] = new
        maps = file_mappings([p for p, _ in self._files])
        # each shard's mapping: the one holding its arc arrays (older maps of a file may still be alive)
        self._ranges = []
        for st, (path, _) in zip(self.stores, self._files):
            ptr = st.src.data_ptr()
            hit = [r for r in maps[str(path)] if r[0] <= ptr < r[1]]
            if len(hit) != 1:
                self._ranges = []  # not found in /proc/self/maps: remap instead of dropping pages
                break
            self._ranges.append(hit[0])
        self.touched = 0.0
        self.remaps += 1

    def _drop(self) -> None:
        """Drop the shards' resident pages (the lattice tensors are never written to)."""
        from hfasr.heap import drop_mapped_pages

        if self._ranges and drop_mapped_pages(self._ranges):
            self.touched = 0.0
            self.remaps += 1
        else:
            self._remap()
