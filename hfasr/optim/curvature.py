"""The output-space curvature protocol: H_z in Gauss-Newton products G v = Jᵀ H_z J v.

A criterion hands the optimizer one :class:`OutputCurvature` per curvature batch, evaluated
at the current parameters; CG then calls :meth:`OutputCurvature.hvp` once per iteration with a
tangent of the model outputs. Every implementation must be positive semi-definite, so that G is
(the convexified Gauss-Newton matrix: Kingsbury et al. 2012 for sequence criteria, Cho et al. 2015 for CTC).

:meth:`OutputCurvature.sample` draws a vector s with E[s sᵀ] = H_z (a random factor), used by
the Chapelle-Erhan preconditioner to estimate diag(G) without bias.

The implementations (softmax Fisher, squared error, weighted sums) live with the criteria, in
:mod:`hfasr.criteria.curvature`.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class OutputCurvature(Protocol):
    """A PSD linear operator on tangents of the model outputs (same shape as the outputs)."""

    def hvp(self, u: Tensor) -> Tensor:
        """Return H_z u (PSD in u)."""
        ...

    def sample(self, generator: torch.Generator) -> Tensor:
        """Return a random s with E[s sᵀ] = H_z."""
        ...
