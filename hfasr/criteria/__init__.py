"""Training criteria: each gives the loss and the output-space curvature (the convexified
Gauss-Newton block) that HF needs (DESIGN.md). Import the lattice-based sequence criteria from
:mod:`hfasr.criteria.sequence`."""

from hfasr.criteria.ctc import CtcObjective, TokenTable, ctc_curvature, ctc_greedy, ctc_loss

__all__ = ["CtcObjective", "TokenTable", "ctc_curvature", "ctc_greedy", "ctc_loss"]
