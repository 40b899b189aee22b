"""Lattices as tensors and their forward-backward (log and expectation semirings), batched.

- :class:`~hfasr.lattice.tensors.Lattice`: one state-level lattice, top-sorted, as plain tensors
  (per arc: source, destination, frame, pdf, transition-id, word, graph cost).
- :class:`~hfasr.lattice.fb.LatticeBatch`: many lattices merged into one disjoint graph and
  processed level by level (all arcs entering states of one topological level in one vectorized
  op), on CPU or CUDA.
- :class:`~hfasr.lattice.store.PackedLattices`: many lattices packed into flat int32 / float32
  tensors (a shard of ``hfasr lattices``; about 18.5 bytes per arc on disk, 21 in memory).
"""

from hfasr.lattice.fb import LatticeBatch
from hfasr.lattice.store import PackedLattices
from hfasr.lattice.tensors import Lattice

__all__ = ["Lattice", "LatticeBatch", "PackedLattices"]
