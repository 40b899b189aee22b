"""Output-space curvature operators (:class:`hfasr.optim.curvature.OutputCurvature`): the
PSD blocks H_z that criteria hand to Hessian-free optimization.

- :class:`SoftmaxFisher`: per-frame ``diag(y) − y yᵀ`` (the exact Gauss-Newton block of softmax
  cross-entropy; the convex curvature of CTC and an option of the sequence criteria).
- :class:`SquaredError`: the identity (least squares).
- :class:`Sum`: a weighted sum of operators (e.g. a sequence criterion plus CE smoothing).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class SoftmaxFisher:
    """Per-frame softmax Fisher ``diag(y) − y yᵀ`` (CE exact GGN; CTC and sequence option ``fisher``).

    ``logits``: (..., K); ``mask``: (...) bool/float marking valid frames (padding contributes
    nothing); ``scale`` multiplies the whole operator (e.g. κ² or a frame weight).
    """

    def __init__(self, logits: Tensor, mask: Tensor | None = None, scale: float = 1.0) -> None:
        self.y = torch.softmax(logits.detach(), dim=-1)
        w = torch.ones(logits.shape[:-1], dtype=logits.dtype, device=logits.device) if mask is None else mask.to(logits.dtype)
        self.w = (w * scale).unsqueeze(-1)

    def hvp(self, u: Tensor) -> Tensor:
        y = self.y
        return self.w * (y * u - y * (y * u).sum(-1, keepdim=True))

    def sample(self, generator: torch.Generator) -> Tensor:
        # k ~ y per frame, s = e_k − y:  E[s sᵀ] = diag(y) − y yᵀ
        y = self.y
        flat = y.reshape(-1, y.shape[-1])
        k = torch.multinomial(flat.float().cpu(), 1, generator=generator).to(y.device)
        s = -flat.clone()
        s.scatter_add_(1, k, torch.ones_like(k, dtype=y.dtype))
        return self.w.sqrt() * s.reshape(y.shape)


class SquaredError:
    """H_z = scale·I on valid frames (linear outputs with ½‖z − t‖²); mainly for tests."""

    def __init__(self, outputs: Tensor, mask: Tensor | None = None, scale: float = 1.0) -> None:
        w = torch.ones(outputs.shape[:-1], dtype=outputs.dtype, device=outputs.device) if mask is None else mask.to(outputs.dtype)
        self.w = (w * scale).unsqueeze(-1)
        self.shape = outputs.shape

    def hvp(self, u: Tensor) -> Tensor:
        return self.w * u

    def sample(self, generator: torch.Generator) -> Tensor:
        r = torch.randint(0, 2, self.shape, generator=generator).to(self.w) * 2 - 1
        return self.w.sqrt() * r


class Sum:
    """Weighted sum of PSD operators acting on the same outputs (e.g. criterion + CE smoothing)."""

    def __init__(self, terms: list[tuple[float, Any]]) -> None:
        self.terms = terms

    def hvp(self, u: Tensor) -> Tensor:
        return sum(w * c.hvp(u) for w, c in self.terms)

    def sample(self, generator: torch.Generator) -> Tensor:
        # independent samples: E[(Σ √w_i s_i)(…)ᵀ] = Σ w_i H_i
        return sum((w**0.5) * c.sample(generator) for w, c in self.terms)
