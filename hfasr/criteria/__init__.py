"""Training criteria: each gives the loss and the output-space curvature (the convexified
Gauss-Newton block) that HF needs. Import the lattice-based sequence criteria from
:mod:`hfasr.criteria.sequence`; the curvature operators are in :mod:`hfasr.criteria.curvature`."""

from hfasr.criteria.ctc import CtcLoss, TokenTable, ctc_curvature, ctc_loss
from hfasr.criteria.curvature import SoftmaxFisher, SquaredError, Sum

__all__ = ["CtcLoss", "SoftmaxFisher", "SquaredError", "Sum", "TokenTable", "ctc_curvature", "ctc_loss"]
