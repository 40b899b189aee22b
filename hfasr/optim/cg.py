"""Preconditioned conjugate gradient with Martens' (2010) quadratic-progress stopping rule.

Solves ``A x = b`` for SPD ``A`` given as a function, i.e. minimises
``φ(x) = ½ xᵀ A x − bᵀ x``. Follows ``conjgrad_1.m`` of Martens' published HF code: negative-curvature guard, iterates stored at i = ⌈5·1.3^j⌉ (and the last one) for
CG-backtracking, stop when the relative progress of φ over the last k = max(10, ⌈0.1 i⌉)
iterations falls below k·ε.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


def storage_schedule(max_iters: int, first: float = 5.0, mult: float = 1.3) -> list[int]:
    """Iterations ⌈first·mult^j⌉ (deduplicated) at which CG keeps its iterate, up to max_iters."""
    out: list[int] = []
    nxt = first
    while math.ceil(nxt) <= max_iters:
        i = math.ceil(nxt)
        if not out or i != out[-1]:
            out.append(i)
        nxt *= mult
    return out


def should_stop(phis: list[float], i: int, tol: float, min_iters: int = 1) -> bool:
    """Martens' rule at iteration ``i`` (1-based) given φ_1..φ_i in ``phis``."""
    k = max(10, math.ceil(0.1 * i))
    if i < min_iters or i <= k:
        return False
    phi_i, phi_old = phis[i - 1], phis[i - 1 - k]
    return phi_old < 0 and phi_i < 0 and (phi_i - phi_old) / phi_i < k * tol


@dataclass
class CGResult:
    x: Tensor  # last iterate
    iterates: list[tuple[int, Tensor]]  # (iteration, x) stored for backtracking, in order; last included
    phis: list[float]  # φ after each iteration
    iters: int
    stop: str  # "progress" | "max_iters" | "neg_curvature" | "converged" | "non_finite"
    phi0: float = 0.0  # φ(x0)
    extra: dict = field(default_factory=dict)


def pcg(
    A: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor | None = None,
    precond: Tensor | None = None,
    max_iters: int = 250,
    min_iters: int = 1,
    tol: float = 5e-4,
    store_first: float = 5.0,
    store_mult: float = 1.3,
) -> CGResult:
    """Preconditioned CG on ``A x = b``; ``precond`` is the diagonal M (we apply M⁻¹)."""
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = A(x) - b if x0 is not None and bool(x0.abs().sum() > 0) else -b.clone()
    phi0 = float(0.5 * torch.dot(r - b, x))
    y = r / precond if precond is not None else r
    p = -y
    ry = torch.dot(r, y)
    schedule = set(storage_schedule(max_iters, store_first, store_mult))
    iterates: list[tuple[int, Tensor]] = []
    phis: list[float] = []
    stop = "max_iters"
    i = 0
    for i in range(1, max_iters + 1):
        Ap = A(p)
        pAp = torch.dot(p, Ap)
        if not torch.isfinite(pAp):
            stop = "non_finite"
            i -= 1
            break
        if pAp <= 0:
            stop = "neg_curvature"
            i -= 1
            break
        alpha = ry / pAp
        x = x + alpha * p
        r = r + alpha * Ap
        y = r / precond if precond is not None else r
        ry_new = torch.dot(r, y)
        beta = ry_new / ry
        p = -y + beta * p
        ry = ry_new
        phis.append(float(0.5 * torch.dot(r - b, x)))
        if i in schedule:
            iterates.append((i, x.clone()))
        if ry <= 0 or not math.isfinite(phis[-1]):
            stop = "converged" if ry <= 0 else "non_finite"
            break
        if should_stop(phis, i, tol, min_iters):
            stop = "progress"
            break
    if i > 0 and (not iterates or iterates[-1][0] != i):
        iterates.append((i, x.clone()))
    if i == 0:
        iterates = [(0, x.clone())]
    return CGResult(x=x, iterates=iterates, phis=phis, iters=i, stop=stop, phi0=phi0)
