"""The Hessian-free optimizer (truncated Newton with Gauss-Newton curvature), Martens 2010.

One :meth:`HessianFree.step` is one HF update:

1. mean loss and gradient g on the *gradient data* (the objective decides: whole set or a
   subset; on subsets, ``HFConfig.gradient_reuse`` may combine g with the gradients stored for
   the other subsets: SAG, dynamic weights, SAGA or age-decayed weights);
2. a curvature batch (sampled by the objective with the optimizer's generator) and its
   linearization :class:`~hfasr.optim.gn.GaussNewton`;
3. preconditioned CG on ``(G + λI + ηI [+ λμ S]) p = −g`` from ``ζ·p_prev`` with Martens'
   stopping rule, iterates stored at ⌈5·1.3^j⌉;
4. CG-backtracking over the stored iterates (gradient data or held-out data);
5. reduction ratio ρ = (f(θ+p) − f(θ)) / (q(p) − q(0)) with damping off in q, on the curvature
   batch, the gradient data or held-out data; Levenberg-Marquardt: ρ < ¼ → λ·3/2, ρ > ¾ → λ·2/3.
   Without structural damping, q's pᵀGp is CG's φ at the chosen iterate less the damping term
   (no extra G v product), and the curvature batch's linearization is freed as soon as CG ends,
   before the held-out passes (it is the largest buffer of a sequence-training update);
6. Armijo line search (c = 10⁻², α ← 0.8α) as a safeguard; the step is rejected if it fails.

The optimizer knows nothing of speech: an :class:`HFObjective` supplies losses, gradients and the
curvature batch. Everything needed to resume exactly (λ, the warm-start direction, the RNG
state, counters) is in :meth:`HessianFree.state_dict`. :meth:`HFStats.line` is one grep-able
line per update starting with ``hf-update`` (``hfasr train`` writes it to stdout and
``train.log``; the optimizer itself logs it at DEBUG level only).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

import torch
from torch import Tensor

from hfasr.config import bounded, check_ranges, ordered
from hfasr.optim.cg import pcg
from hfasr.optim.gn import flatten, unflatten

log = logging.getLogger(__name__)

Role = Literal["gradient", "curvature", "heldout"]


@dataclass
class HFConfig:
    """Hyper-parameters of :class:`HessianFree` (defaults from Martens 2010 and his published code)."""

    damping: float = bounded(1.0, gt=0)  # initial λ (G is normalised per frame/case; Martens' 45 was per case of an autoencoder)
    damping_min: float = bounded(1e-8, ge=0)  # λ is kept in [damping_min, damping_max]
    damping_max: float = bounded(1e8, gt=0, finite=False)
    lm_boost: float = bounded(1.5, ge=1)  # λ ← λ·boost when ρ < rho_low (or the step is rejected)
    lm_drop: float = bounded(2.0 / 3.0, gt=0, le=1)  # λ ← λ·drop when ρ > rho_high
    rho_low: float = bounded(0.25)
    rho_high: float = bounded(0.75)
    cg_max_iters: int = bounded(250, ge=1)  # Martens' ICML value; 50-150 are common for speed
    cg_min_iters: int = bounded(1, ge=0)
    cg_tol: float = bounded(5e-4, ge=0)  # ε of the quadratic-progress stopping rule
    warm_start: float = bounded(0.95, ge=0, le=1)  # ζ: CG starts from ζ × the previous update's last CG iterate
    backtracking: bool = True  # CG-backtracking over stored iterates
    line_search: bool = True  # Armijo line search
    armijo_c: float = bounded(1e-2, ge=0, lt=1)
    ls_shrink: float = bounded(0.8, gt=0, lt=1)
    ls_max: int = bounded(20, ge=0)  # reductions before the step is rejected
    preconditioner: Literal["none", "martens", "chapelle-erhan"] = "martens"
    precond_power: float = bounded(0.75, ge=0)  # M = (diag + λ + η)^power
    precond_samples: int = bounded(1, ge=1)  # Chapelle-Erhan: random backward passes per update
    # damping matrix: "identity" (Martens 2010: λI) or "diag" (Marquardt's scaling: λD with D the
    # curvature-diagonal estimate of the preconditioner, normalised to mean 1, plus damping_floor).
    # "diag" damps every parameter relative to its own curvature scale, for models whose diagonal
    # spans orders of magnitude (LSTM weights vs the output layer); see docs/hf-training.md.
    # "block": λD with D constant over each parameter tensor (a layer's weights, an LSTM level's
    # gate weights): the block's mean diagonal estimate over the largest block mean, plus
    # damping_floor; the stiffest block keeps λ, a block whose curvature is orders of magnitude
    # smaller (the lower levels of a deep MDLSTM) gets a proportionally smaller damping
    damping_matrix: Literal["identity", "diag", "block"] = "identity"
    damping_floor: float = bounded(1e-2, ge=0)
    l2: float = bounded(0.0, ge=0)  # η: L2 weight cost added to the objective (and to the curvature)
    structural_damping: float = bounded(0.0, ge=0)  # μ (RNNs): adds λμ J_aᵀ D J_a to the curvature
    rho_data: Literal["curvature", "gradient", "heldout"] = "curvature"
    backtrack_data: Literal["gradient", "heldout"] = "gradient"
    linesearch_data: Literal["gradient", "heldout"] = "gradient"
    # with held-out line search: also evaluate the gradient data's loss after the step (one more
    # pass over it, for the log and history only); off: ``HFStats.loss_after`` is None
    train_loss_after: bool = True
    seed: int = bounded(0, ge=0)  # seeds the generator handed to the objective (curvature sampling, preconditioner)
    # Reuse across successive data subsets (Dognin & Goel 2013 / US9483728B2); the objective
    # tells which subset its gradient came from through its ``subset`` attribute.
    # combine stored per-subset gradients: "none" (the fresh subset gradient only), "sag" (mean
    # of the stored ones), "dynamic" (SAG with an adapted fresh weight), "saga" (stale gradients
    # corrected: g_s − g_s,stored + mean of the stored ones) or "decay" (weights reuse_decay^age);
    # see _combine_gradients. No rule wins everywhere (bench/results/subset_hf.md): "none" is
    # fastest on synth and FSDD but stalls on AN4, where only "sag" / "dynamic" reach full-batch
    # HF's dev objective; "saga" and "decay" were never the fastest.
    gradient_reuse: Literal["none", "sag", "dynamic", "saga", "decay"] = "none"
    reuse_warm_start: bool = True  # False: CG starts from 0 every update
    reuse_damping: bool = True  # False: λ is reset to `damping` every update
    dsag_boost: float = bounded(1.5, gt=0)  # dynamic weighting: fresh-gradient weight ×boost when held-out loss rose
    dsag_drop: float = bounded(2.0 / 3.0, gt=0)  # ... ×drop when it fell (bounded below by the SAG weight 1/S)
    reuse_decay: float = bounded(0.5, gt=0, le=1)  # "decay": a stored gradient's weight is reuse_decay^(its age in updates); 1 = SAG

    def __post_init__(self) -> None:
        check_ranges(self)
        ordered(self, "damping_min", "damping")
        ordered(self, "damping", "damping_max")
        ordered(self, "rho_low", "rho_high")
        ordered(self, "cg_min_iters", "cg_max_iters")


class CurvatureOperator(Protocol):
    """A linearized Gauss-Newton matrix G (PSD), as every objective's :meth:`HFObjective.curvature`
    returns it: :class:`~hfasr.optim.gn.GaussNewton` (one batch), ``ModelGaussNewton`` (the
    model's hand-written J v), ``SumGaussNewton`` (several batches) and
    :class:`~hfasr.optim.distributed.ReducedGaussNewton` (summed over ranks)."""

    normalizer: float  # G is the summed curvature divided by this (frames, utterances)

    def __call__(self, v: Tensor, structural_mu: float = 0.0) -> Tensor:
        """G v for a flat parameter-space vector v (plus μ·J_aᵀ D J_a v with structural damping)."""
        ...

    def sample_gradient(self, generator: torch.Generator) -> Tensor:
        """Jᵀ s with E[s sᵀ] = H_z, unnormalised: (Jᵀ s)² / normalizer estimates diag(G)."""
        ...


class HFObjective(Protocol):
    """What :class:`HessianFree` needs from a problem; losses are means (per frame or case)."""

    def gradient(self, generator: torch.Generator) -> tuple[float, Tensor, Tensor | None]:
        """(mean loss, flat mean gradient, flat mean of per-example squared gradients or None)."""
        ...

    def curvature(self, generator: torch.Generator) -> CurvatureOperator:
        """Sample the curvature batch and linearize the model on it at the current parameters."""
        ...

    def loss(self, role: Role) -> float:
        """Mean loss at the current parameters on the gradient / curvature / held-out data."""
        ...


@dataclass
class HFStats:
    """Diagnostics of one update (also the fields of the ``hf-update`` log line)."""

    update: int
    loss_before: float
    loss_after: float | None  # None: not evaluated (HFConfig.train_loss_after off)
    rho: float
    damping_before: float
    damping_after: float
    cg_iters: int
    cg_stop: str
    chosen_iter: int  # CG iterate chosen by backtracking
    alpha: float  # line-search step size (0: rejected)
    accepted: bool
    g_dot_p: float
    heldout_before: float | None = None
    heldout_after: float | None = None
    seconds: float = 0.0
    products: int = 0  # G v products (CG + ρ + preconditioner samples)
    evals: dict = field(default_factory=dict)  # loss evaluations per role
    subset: int | None = None  # subset whose fresh gradient was used
    fresh_weight: float = 1.0  # weight of the fresh gradient in the combined one

    def line(self) -> str:
        ho = "" if self.heldout_after is None else f" heldout {self.heldout_before:.6g}->{self.heldout_after:.6g}"
        return (
            f"hf-update {self.update} loss {self.loss_before:.6g}->{'-' if self.loss_after is None else f'{self.loss_after:.6g}'}"
            f"{ho} rho {self.rho:.4g} "
            f"lambda {self.damping_before:.4g}->{self.damping_after:.4g} cg {self.cg_iters} ({self.cg_stop}) "
            f"chosen {self.chosen_iter} alpha {self.alpha:.4g} gTp {self.g_dot_p:.4g} "
            f"{'accepted' if self.accepted else 'rejected'} Gv {self.products} time {self.seconds:.2f}s"
            + ("" if self.subset is None else f" subset {self.subset} w {self.fresh_weight:.3g}")
        )


def damping_diagonal(cfg: HFConfig, diag: Tensor | None, block_sizes: list[int]) -> Tensor | None:
    """D of the damping term λD (None for ``identity``: λI). ``diag``: the curvature-diagonal
    estimate (flat, parameters in order); ``block_sizes``: numel of each parameter tensor.

    - ``diag``: D = diag / mean(diag) + floor (Marquardt's scaling, per parameter);
    - ``block``: D_b = mean_b(diag) / max_b' mean_b'(diag) + floor, constant over block b."""
    if cfg.damping_matrix == "identity":
        return None
    if cfg.damping_matrix not in ("diag", "block"):
        raise ValueError(f"unknown damping_matrix {cfg.damping_matrix!r}")
    assert diag is not None
    tiny = torch.finfo(diag.dtype).tiny
    if cfg.damping_matrix == "diag":
        return diag / diag.mean().clamp_min(tiny) + cfg.damping_floor
    if sum(block_sizes) != diag.numel():
        raise ValueError(f"block sizes sum to {sum(block_sizes)}, the diagonal has {diag.numel()} entries")
    means = torch.stack([b.mean() for b in diag.split(block_sizes)])
    scale = means / means.max().clamp_min(tiny) + cfg.damping_floor
    return torch.repeat_interleave(scale, torch.as_tensor(block_sizes, device=diag.device))


def levenberg_marquardt(lam: float, rho: float, cfg: HFConfig) -> float:
    """New damping from the reduction ratio: ρ < ¼ (or NaN, or a rejected step) → λ·3/2; ρ > ¾ → λ·2/3."""
    if math.isnan(rho) or rho < cfg.rho_low:
        return min(lam * cfg.lm_boost, cfg.damping_max)
    if rho > cfg.rho_high:
        return max(lam * cfg.lm_drop, cfg.damping_min)
    return lam


def backtrack(f: Callable[[int], float], last: int) -> int:
    """CG-backtracking: from stored iterate ``last`` move to earlier ones while ``f`` decreases."""
    j, fj = last, f(last)
    while j > 0:
        fprev = f(j - 1)
        if fprev < fj:
            j, fj = j - 1, fprev
        else:
            break
    return j


class HessianFree(torch.optim.Optimizer):
    """Hessian-free optimizer with ``torch.optim``'s shape (``param_groups``, ``state_dict``).

    Usage::

        opt = HessianFree(model.parameters(), HFConfig(damping=1.0))
        for update in range(n):
            stats = opt.step(objective)      # objective: an HFObjective over the same model
    """

    def __init__(self, params, config: HFConfig | None = None) -> None:
        self.config = config or HFConfig()
        super().__init__(params, asdict(self.config))
        self.params: list[Tensor] = [p for g in self.param_groups for p in g["params"]]
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.damping = self.config.damping
        self.prev_direction: Tensor | None = None
        self.updates = 0
        self.history: list[HFStats] = []
        self.stored_gradients: dict[int, Tensor] = {}  # subset → its last gradient (gradient reuse)
        self.stored_at: dict[int, int] = {}  # subset → value of ``updates`` when it was stored
        self.fresh_weight: float | None = None  # dynamic weighting state
        self._subset: int | None = None

    # ----------------------------------------------------------------------- subset reuse
    def _combine_gradients(self, objective: HFObjective, g: Tensor) -> tuple[Tensor, float]:
        """The update's gradient from the fresh one and those stored per subset (and store it).

        With S subsets seen so far (stored gradients g_j, computed ``age_j`` updates ago) and
        fresh gradient g_s of subset s; returns (ĝ, weight of g_s in ĝ):

        - ``sag``: ĝ = (1/S) Σ_j g_j (g_s replaced by the fresh one first);
        - ``dynamic``: ĝ = w·g_s + (1 − w)·mean_{j≠s} g_j, with w starting at 1/S (= SAG) and
          adapted after every update from the held-out loss change of that update (see
          :meth:`_adapt_weight`);
        - ``saga`` (Defazio et al. 2014): ĝ = g_s − g_s,stored + (1/S) Σ_j g_j,stored, the mean
          over all stored gradients *before* g_s,stored is replaced by the fresh one: the stale
          mean corrected by how subset s's gradient moved since it was stored (weight of g_s: 1).
          A subset seen for the first time has no stored gradient; its fresh one then stands in
          for it, which gives SAG's start-up, ĝ = mean over the subsets seen so far;
        - ``decay``: ĝ = Σ_j d^{age_j} g_j / Σ_j d^{age_j} with d = ``reuse_decay`` (the fresh
          gradient has age 0, weight 1); d = 1 is SAG, d → 0 the fresh gradient alone.
        """
        cfg = self.config
        self._subset = s = getattr(objective, "subset", None)
        if cfg.gradient_reuse == "none" or s is None:
            return g, 1.0
        fresh = g.detach().clone()
        old = self.stored_gradients.get(s)
        if cfg.gradient_reuse == "saga" and old is not None:
            mean_old = sum(self.stored_gradients.values()) / len(self.stored_gradients)
            self.stored_gradients[s], self.stored_at[s] = fresh, self.updates
            return g - old + mean_old, 1.0
        self.stored_gradients[s], self.stored_at[s] = fresh, self.updates
        S = len(self.stored_gradients)
        if S == 1:
            return g, 1.0
        if cfg.gradient_reuse in ("sag", "saga"):
            return sum(self.stored_gradients.values()) / S, 1.0 / S
        if cfg.gradient_reuse == "decay":
            # a gradient restored from a checkpoint without its update index counts as fresh (SAG)
            weights = [cfg.reuse_decay ** (self.updates - self.stored_at.get(j, self.updates)) for j in self.stored_gradients]
            total = sum(weights)
            return sum(w * v for w, v in zip(weights, self.stored_gradients.values())) / total, 1.0 / total
        if self.fresh_weight is None:
            self.fresh_weight = 1.0 / S
        w = min(1.0, max(self.fresh_weight, 1.0 / S))
        others = [v for k, v in self.stored_gradients.items() if k != s]
        return w * g + (1 - w) * (sum(others) / len(others)), w

    def _adapt_weight(self, stats: HFStats) -> None:
        """Dynamic rule (our reading of US9483728B2 claim 3): compare the held-out loss after and
        before the update; if it rose (or the step was rejected), stale gradients misled the
        step, so the fresh gradient's weight w is multiplied by ``dsag_boost`` (≤ 1); if it fell,
        w is multiplied by ``dsag_drop`` (≥ 1/S), leaning on the average over more data."""
        stats.subset = self._subset
        if self.config.gradient_reuse != "dynamic" or self.fresh_weight is None:
            return
        S = max(1, len(self.stored_gradients))
        worse = (not stats.accepted) or (stats.heldout_after is not None and stats.heldout_before is not None
                                         and stats.heldout_after > stats.heldout_before)
        if stats.heldout_after is None and stats.accepted:
            worse = stats.loss_after is not None and stats.loss_after > stats.loss_before
        w = self.fresh_weight * (self.config.dsag_boost if worse else self.config.dsag_drop)
        self.fresh_weight = min(1.0, max(w, 1.0 / S))

    # ----------------------------------------------------------------------- parameters
    def _get(self) -> Tensor:
        return flatten([p.detach() for p in self.params]).clone()

    @torch.no_grad()
    def _set(self, flat: Tensor) -> None:
        for p, v in zip(self.params, unflatten(flat, self.params)):
            p.copy_(v)

    def _loss_at(self, theta: Tensor, x: Tensor, role: Role, obj: HFObjective, counts: dict) -> float:
        self._set(theta + x)
        f = obj.loss(role)
        counts[role] = counts.get(role, 0) + 1
        if self.config.l2:
            f += 0.5 * self.config.l2 * float((theta + x).pow(2).sum())
        return f if math.isfinite(f) else math.inf

    # ----------------------------------------------------------------------- the update
    def step(self, objective: HFObjective) -> HFStats:  # type: ignore[override]
        cfg = self.config
        t0 = time.perf_counter()
        counts: dict = {}
        theta = self._get()
        eta = cfg.l2
        if hasattr(objective, "begin_update"):
            objective.begin_update(self.updates)  # e.g. choose this update's data subset
        loss0, g, g2 = objective.gradient(self.generator)
        if not math.isfinite(loss0) or not torch.isfinite(g).all():
            raise FloatingPointError(f"HF update {self.updates + 1}: non-finite loss/gradient at the current parameters ({loss0})")
        g, w_used = self._combine_gradients(objective, g)
        if eta:
            loss0 += 0.5 * eta * float(theta.pow(2).sum())
            g = g + eta * theta
        if not cfg.reuse_damping:
            self.damping = cfg.damping
        lam = self.damping
        gn = objective.curvature(self.generator)
        products = 0
        mu = cfg.structural_damping

        diag = self._curvature_diag(gn, g2) if (cfg.preconditioner != "none" or cfg.damping_matrix != "identity") else None
        if cfg.preconditioner == "chapelle-erhan":
            products += cfg.precond_samples
        D = damping_diagonal(cfg, diag, [p.numel() for p in self.params])  # None: λI

        def A(v: Tensor) -> Tensor:
            nonlocal products
            products += 1
            return gn(v, lam * mu) + ((lam + eta) * v if D is None else (lam * D + eta) * v)

        precond = None
        if diag is not None and cfg.preconditioner != "none":
            precond = (diag + lam + eta if D is None else diag + lam * D + eta).pow(cfg.precond_power)
        x0 = None if self.prev_direction is None or not cfg.reuse_warm_start else cfg.warm_start * self.prev_direction
        cg = pcg(A, -g, x0=x0, precond=precond, max_iters=cfg.cg_max_iters, min_iters=cfg.cg_min_iters, tol=cfg.cg_tol)
        finite = torch.isfinite(cg.x).all() and cg.stop != "non_finite"
        if mu == 0:
            # ρ's pᵀGp comes from CG's φ (below), so the linearization of the curvature sample
            # (activations of up to curvature_max_frames frames) is freed before the held-out passes
            del A, gn
            gn = None
        heldout_before = None
        needs_heldout = "heldout" in (cfg.rho_data, cfg.backtrack_data, cfg.linesearch_data)
        if needs_heldout:
            heldout_before = self._loss_at(theta, torch.zeros_like(theta), "heldout", objective, counts)
        if not finite:
            self._set(theta)
            return self._finish(
                HFStats(self.updates + 1, loss0, loss0, -math.inf, lam, self._boost(lam), cg.iters, "non_finite",
                        0, 0.0, False, 0.0, heldout_before, heldout_before), t0, products, counts, reset=True)
        self.prev_direction = cg.x.detach().clone()

        # CG-backtracking: from the last stored iterate back while the objective decreases.
        cache: dict[tuple[str, int], float] = {}

        def f_iter(j: int, role: Role) -> float:
            key = (role, j)
            if key not in cache:
                cache[key] = self._loss_at(theta, cg.iterates[j][1], role, objective, counts)
            return cache[key]

        j = len(cg.iterates) - 1
        if cfg.backtracking:
            j = backtrack(lambda i: f_iter(i, cfg.backtrack_data), j)
        chosen_iter, p = cg.iterates[j]
        gp = float(torch.dot(g, p))

        # Reduction ratio with damping off in the model (Martens): pᵀ(G + η)p.
        if gn is None:  # μ = 0: A = G + λD + η, and CG's φ_j = ½ pᵀAp + gᵀp at the chosen iterate
            phi = cg.phi0 if chosen_iter == 0 else cg.phis[chosen_iter - 1]
            pAp = 2.0 * (phi - gp)
            pGp = pAp - lam * float(torch.dot(p, p) if D is None else torch.dot(D * p, p))
        else:
            pGp = float(torch.dot(p, gn(p) + eta * p))
            products += 1
        denom = 0.5 * pGp + gp
        if cfg.rho_data == "gradient":
            f_r0 = loss0
        elif cfg.rho_data == "heldout":
            f_r0 = heldout_before
        else:
            f_r0 = self._loss_at(theta, torch.zeros_like(theta), "curvature", objective, counts)
        f_r1 = f_iter(j, cfg.rho_data) if cfg.rho_data != "curvature" else self._loss_at(theta, p, "curvature", objective, counts)
        if not math.isfinite(f_r1) or f_r1 > f_r0 or denom >= 0:
            rho = -math.inf
        else:
            rho = (f_r1 - f_r0) / denom

        # Armijo line search.
        ls_role: Role = cfg.linesearch_data
        f0 = loss0 if ls_role == "gradient" else heldout_before
        alpha = 1.0
        accepted = True
        if cfg.line_search:
            fa = f_iter(j, ls_role)
            k = 0
            while not (fa <= f0 + cfg.armijo_c * alpha * gp):
                k += 1
                if k > cfg.ls_max or gp >= 0:
                    alpha, accepted = 0.0, False
                    break
                alpha *= cfg.ls_shrink
                fa = self._loss_at(theta, alpha * p, ls_role, objective, counts)
        else:
            fa = f_iter(j, "gradient")
            if not math.isfinite(fa):
                alpha, accepted = 0.0, False

        new_lam = levenberg_marquardt(lam, rho if accepted else -math.inf, cfg)
        if accepted:
            loss_after = fa if ls_role == "gradient" else (
                self._loss_at(theta, alpha * p, "gradient", objective, counts) if cfg.train_loss_after else None)
            heldout_after = fa if ls_role == "heldout" else (
                self._loss_at(theta, alpha * p, "heldout", objective, counts) if needs_heldout else None)
        else:
            loss_after, heldout_after = loss0, heldout_before
        self._set(theta + alpha * p)
        stats = HFStats(self.updates + 1, loss0, loss_after, rho, lam, new_lam, cg.iters, cg.stop, chosen_iter,
                        alpha, accepted, gp, heldout_before, heldout_after)
        self.damping = new_lam
        stats.fresh_weight = w_used
        self._adapt_weight(stats)
        return self._finish(stats, t0, products, counts)

    def _boost(self, lam: float) -> float:
        return levenberg_marquardt(lam, -math.inf, self.config)

    def _finish(self, stats: HFStats, t0: float, products: int, counts: dict, reset: bool = False) -> HFStats:
        if reset:
            self.damping = stats.damping_after
            self.prev_direction = None
        stats.seconds = time.perf_counter() - t0
        stats.products = products
        stats.evals = dict(counts)
        self.updates += 1
        self.history.append(stats)
        log.debug(stats.line())  # the training driver logs it (once) with its own output
        return stats

    def _curvature_diag(self, gn: CurvatureOperator, g2: Tensor | None) -> Tensor:
        """Estimate of diag(G): Martens' summed squared per-batch gradients, or Chapelle & Erhan's
        squared Jᵀs samples (E[ssᵀ] = H_z). Used by the preconditioner and the "diag" damping."""
        cfg = self.config
        if cfg.preconditioner == "chapelle-erhan":
            acc = None
            for _ in range(cfg.precond_samples):
                s = gn.sample_gradient(self.generator)
                acc = s * s if acc is None else acc + s * s
            return acc / (cfg.precond_samples * gn.normalizer)
        if cfg.preconditioner not in ("martens", "none"):
            raise ValueError(f"unknown preconditioner {cfg.preconditioner!r}")
        if g2 is None:
            raise ValueError("preconditioner 'martens' / damping_matrix 'diag' need per-example squared gradients from the objective")
        return g2

    def state_dict(self) -> dict:  # type: ignore[override]
        return {
            "config": asdict(self.config),
            "damping": self.damping,
            "prev_direction": None if self.prev_direction is None else self.prev_direction.clone(),
            "updates": self.updates,
            "generator": self.generator.get_state(),
            "history": [asdict(h) for h in self.history],
            "stored_gradients": {k: v.clone() for k, v in self.stored_gradients.items()},
            "stored_at": dict(self.stored_at),
            "fresh_weight": self.fresh_weight,
        }

    def load_state_dict(self, state: dict) -> None:  # type: ignore[override]
        self.damping = float(state["damping"])
        pd = state["prev_direction"]
        self.prev_direction = None if pd is None else pd.clone()
        self.updates = int(state["updates"])
        self.generator.set_state(state["generator"])
        self.history = [HFStats(**h) for h in state.get("history", [])]
        self.stored_gradients = {int(k): v.clone() for k, v in state.get("stored_gradients", {}).items()}
        self.stored_at = {int(k): int(v) for k, v in state.get("stored_at", {}).items()}
        self.fresh_weight = state.get("fresh_weight")

