"""Lattices as tensors and their forward-backward (log and expectation semirings), batched.

- :class:`~hfasr.lattice.tensors.Lattice`: one state-level lattice, top-sorted, as plain tensors
  (per arc: source, destination, frame, pdf, transition-id, word, graph cost).
- :class:`~hfasr.lattice.fb.LatticeBatch`: many lattices merged into one disjoint graph and
  processed level by level (all arcs entering states of one topological level in one vectorized
  op), on CPU or CUDA.
"""

from hfasr.lattice.fb import LatticeBatch
from hfasr.lattice.tensors import Lattice

__all__ = ["Lattice", "LatticeBatch"]
