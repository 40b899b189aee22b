"""Curvature spectra: stochastic Lanczos quadrature (SLQ) on a symmetric PSD operator.

The operator is a matrix-vector product over a flat parameter vector; in particular the
Gauss-Newton operator G of an HF objective, linearized on the objective's curvature sample
(exactly the G v that HF's CG calls, :func:`hf_system`), optionally damped (G + λI, or HF's
``damping_matrix: diag``) and optionally preconditioned: the spectrum CG actually sees,
M^{-1/2} (G + λI) M^{-1/2} with HF's diagonal preconditioner M. Speech-free, torch only.

What :func:`slq` computes (Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019):

- n_probes Rademacher probes v (entries ±1, drawn from ``torch.Generator().manual_seed(seed)``:
  deterministic given the seed), each running ``steps`` Lanczos iterations with full
  reorthogonalization (twice, in float64 by default) from v/‖v‖. The tridiagonal T = S Θ Sᵀ
  gives Gauss quadrature nodes θ_k (Ritz values) and weights τ_k = S_{1k}²; the spectral
  measure is estimated as (dim / n_probes) Σ_probes Σ_k τ_k δ(θ_k), whose total mass is dim and
  whose first 2·steps − 1 moments are Hutchinson's estimates of tr(Aʲ) (exact per probe).
- **extreme eigenvalues**: the Ritz values (λ_max: the largest over the probes, with the
  Lanczos residual bound |β_m S_{mk}| that bounds its distance to an eigenvalue of A).
- **density**: the measure smoothed by a Gaussian of width ``sigma`` decades on a log-spaced
  grid (these spectra span many orders of magnitude): density per decade of λ, integrating to
  dim minus the null mass (nodes ≤ ``null_tol``·λ_max, reported as ``null_fraction``).
- **effective condition number** κ(λ) = (λ_max + λ) / (λ_min + λ) at a damping λ. G is
  rank-deficient (rank ≤ frames × (outputs − 1) of the curvature sample), so its smallest
  eigenvalue is 0 and (λ_max + λ)/λ is only the worst case; λ_min here is the ``quantile``
  (default 5 %) of the SLQ spectral measure, i.e. κ ignores the bottom 5 % of the spectrum (the
  directions that the damping alone controls). ``condition_worst`` uses the smallest Ritz value
  (clamped at 0) instead; when more than 5 % of the spectrum is numerically null (≤ ``null_tol``
  · λ_max) both are ≈ (λ_max + λ)/λ, and ``condition_nonnull`` takes the quantile of the
  non-null part of the measure instead (the spread of the resolved spectrum). For an operator
  that already holds the damping (G + λI, or the preconditioned operator), evaluate κ at
  damping 0. Resolution: a few dozen Gauss nodes cannot resolve the bottom of a spectrum that
  spans many decades (the lowest node stands for a whole cluster), and an operator computed in
  float32 does not resolve eigenvalues below ~1e-6·λ_max at all; λ_min, the null fraction and
  the density's low end are coarse there, while λ_max and κ at a damping λ ≫ λ_min are not.
- **per block**: the same on the operator restricted to a block of parameters, P_bᵀ A P_b (the
  diagonal block: a layer's weights, or a named group such as an LSTM gate across its
  matrices), blocks from :func:`parameter_blocks` / :func:`gate_blocks`.

Cost: probes × steps operator products per spectrum (and per block), plus O(steps² · dim) for
the reorthogonalization; memory steps × dim of the working dtype for the Lanczos basis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

Operator = Callable[[Tensor], Tensor]

__all__ = [
    "Block",
    "HFSystem",
    "LanczosResult",
    "Spectrum",
    "SpectrumConfig",
    "curvature_diagonal",
    "damped",
    "gate_blocks",
    "gauss_quadrature",
    "hf_system",
    "lanczos",
    "parameter_blocks",
    "preconditioned",
    "rademacher",
    "restrict",
    "slq",
    "spectra",
]


# ------------------------------------------------------------------------------------ blocks
@dataclass(frozen=True)
class Block:
    """A named set of positions of the flat parameter vector (``index``: long tensor, sorted)."""

    name: str
    index: Tensor

    @property
    def size(self) -> int:
        return int(self.index.numel())


def _module_of(name: str, depth: int | None) -> str:
    parts = name.split(".")[:-1] or [name]
    return ".".join(parts if depth is None else parts[:depth])


def parameter_blocks(named_parameters: Iterable[tuple[str, Tensor]],
                     group: str | int | Callable[[str], str] = "module") -> list[Block]:
    """Blocks of the flat vector ``flatten(params)`` (the order of ``named_parameters``, as HF's).

    ``group``: ``"module"`` (one block per module prefix: ``hidden.0.weight`` and
    ``hidden.0.bias`` → ``hidden.0``), ``"parameter"`` (one per tensor), an int d (the first d
    components of the module path), or a callable mapping a parameter name to its block name.
    Blocks keep their first appearance's order."""
    if group == "module":
        key: Callable[[str], str] = lambda n: _module_of(n, None)
    elif group == "parameter":
        key = lambda n: n
    elif isinstance(group, int) and not isinstance(group, bool):
        key = lambda n: _module_of(n, group)
    elif callable(group):
        key = group
    else:
        raise ValueError(f"group must be 'module', 'parameter', an int or a callable, got {group!r}")
    spans: dict[str, list[Tensor]] = {}
    o = 0
    for name, p in named_parameters:
        n = p.numel()
        spans.setdefault(key(name), []).append(torch.arange(o, o + n))
        o += n
    return [Block(k, torch.cat(v)) for k, v in spans.items()]


# recurrent layer kinds: (the weight names that mark a module as one, their gate order); the
# module's ``bias`` is split with them (a plain layer's bias is not)
GATED_LAYERS: tuple[tuple[frozenset[str], tuple[str, ...]], ...] = (
    (frozenset({"w_ih", "w_hh"}), ("i", "f", "o", "g")),  # hfasr.models.blstm.BiLSTMLayer
    (frozenset({"w_in", "w_rec"}), ("i", "ft", "ff", "o", "g")),  # hfasr.models.mdlstm.MDLSTMLayer
)


def gate_blocks(named_parameters: Iterable[tuple[str, Tensor]], gates: Sequence[str] | None = None,
                match: Callable[[str, Tensor], bool] | None = None, other: bool = True) -> list[Block]:
    """Gate groups of recurrent layers: the gate-stacked tensors of every recurrent module are cut
    along their last axis; block ``<module>:<gate>`` gathers that gate's slice of all the
    module's matched tensors. By default the kind of each module is recognised from its weight
    names (:data:`GATED_LAYERS`: a BLSTM layer's ``w_ih`` / ``w_hh`` / ``bias`` in gate order
    i, f, o, g; an MDLSTM layer's ``w_in`` / ``w_rec`` / ``bias`` in gate order i, f_t, f_f, o,
    g), and only those modules are split: a feed-forward or output layer's ``bias`` stays whole.
    ``gates`` with ``match`` (a predicate on (name, tensor)) split the matched tensors into those
    gates instead. With ``other``, the remaining parameters form blocks per module
    (:func:`parameter_blocks`)."""
    named_parameters = list(named_parameters)
    leaves: dict[str, set[str]] = {}
    for name, _ in named_parameters:
        leaves.setdefault(_module_of(name, None), set()).add(name.rsplit(".", 1)[-1])
    kind: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {}
    for module, names in leaves.items():
        for marks, order in GATED_LAYERS:
            if marks <= names:
                kind[module] = (order, marks | {"bias"})

    def gates_of(name: str, p: Tensor) -> tuple[str, ...] | None:
        if match is not None or gates is not None:
            order = tuple(gates or ("i", "f", "o", "g"))
            ok = match(name, p) if match is not None else name.rsplit(".", 1)[-1] in ("w_ih", "w_hh", "bias")
        else:
            found = kind.get(_module_of(name, None))
            if found is None:
                return None
            order, ok = found[0], name.rsplit(".", 1)[-1] in found[1]
        return order if ok and p.dim() >= 1 and p.shape[-1] % len(order) == 0 else None

    spans: dict[str, list[Tensor]] = {}
    o = 0
    for name, p in named_parameters:
        n = p.numel()
        flat = torch.arange(o, o + n).reshape(p.shape) if p.dim() else torch.arange(o, o + n)
        order = gates_of(name, p)
        if order is not None:
            for gi, chunk in enumerate(flat.chunk(len(order), dim=-1)):
                spans.setdefault(f"{_module_of(name, None)}:{order[gi]}", []).append(chunk.reshape(-1))
        elif other:
            spans.setdefault(_module_of(name, None), []).append(flat.reshape(-1))
        o += n
    return [Block(key, torch.cat(v).sort().values) for key, v in spans.items()]


# ------------------------------------------------------------------------------------ operators
def restrict(op: Operator, index: Tensor, dim: int) -> Operator:
    """P_bᵀ A P_b: the operator restricted to the positions ``index`` of a ``dim`` vector (the
    diagonal block of A; a vector of size ``len(index)`` in and out)."""

    def op_b(v: Tensor) -> Tensor:
        full = torch.zeros(dim, dtype=v.dtype, device=v.device)
        idx = index.to(v.device)
        full[idx] = v
        return op(full)[idx]

    return op_b


def damped(op: Operator, damping: float, diag: Tensor | None = None) -> Operator:
    """A + λI, or A + λ·diag(d) with ``diag`` (HF's ``damping_matrix: diag``)."""
    if diag is None:
        return lambda v: op(v) + damping * v
    return lambda v: op(v) + damping * diag.to(v) * v


def preconditioned(op: Operator, m: Tensor) -> Operator:
    """M^{-1/2} A M^{-1/2} for a positive diagonal M (the operator whose spectrum decides
    preconditioned CG's convergence)."""
    r = m.rsqrt()
    return lambda v: r.to(v) * op(r.to(v) * v)


@dataclass
class HFSystem:
    """The linear system of one HF update (as :meth:`hfasr.optim.HessianFree.step` sets it up):
    G on the curvature sample, the damping λ (times ``damping_diag`` D when HF's
    ``damping_matrix`` is ``diag``), the L2 weight η, structural damping μ, and the diagonal
    preconditioner M (None: ``preconditioner: none``). ``dim``: parameters; ``dtype``: theirs."""

    gn: Any  # a CurvatureOperator
    damping: float
    dim: int
    dtype: torch.dtype
    l2: float = 0.0
    structural_mu: float = 0.0
    damping_diag: Tensor | None = None
    precond: Tensor | None = None
    curvature_diag: Tensor | None = None  # the diag(G) estimate M and D were built from

    def curvature(self) -> Operator:
        """G v (no damping): the Gauss-Newton operator."""
        return lambda v: self.gn(v)

    def damped(self) -> Operator:
        """(G + λ(I | D) + ηI [+ λμ S]) v: CG's matrix."""
        lam, eta, mu, D = self.damping, self.l2, self.structural_mu, self.damping_diag
        if D is None:
            return lambda v: self.gn(v, lam * mu) + (lam + eta) * v
        return lambda v: self.gn(v, lam * mu) + (lam * D + eta) * v

    def preconditioned(self) -> Operator:
        """M^{-1/2} (G + λI ...) M^{-1/2} v: what preconditioned CG sees (the damped operator
        if HF runs without preconditioner)."""
        return self.damped() if self.precond is None else preconditioned(self.damped(), self.precond)


def hf_system(objective: Any, config: Any, damping: float, generator: torch.Generator,
              update: int | None = None, block_sizes: Sequence[int] | None = None) -> HFSystem:
    """Set up HF's system at the model's current parameters, as one update would: the
    objective's gradient (for Martens' preconditioner: per-batch squared gradients) and its
    curvature sample drawn with ``generator`` (pass a copy of the optimizer's generator to get
    the sample of its next update), the diagonal estimate, D and M of ``config``
    (:class:`~hfasr.optim.HFConfig`). ``update``: calls ``objective.begin_update(update)`` first
    (successive subsets); ``block_sizes``: numel of each parameter tensor (``damping_matrix:
    block``). Changes no parameter."""
    from hfasr.optim.hf import damping_diagonal

    if update is not None and hasattr(objective, "begin_update"):
        objective.begin_update(update)
    _, g, g2 = objective.gradient(generator)
    gn = objective.curvature(generator)
    cfg = config
    diag = None
    if cfg.preconditioner != "none" or cfg.damping_matrix != "identity":
        diag = curvature_diagonal(gn, g2, cfg, generator)
    if cfg.damping_matrix == "block" and block_sizes is None:
        raise ValueError("damping_matrix 'block' needs the parameter block sizes (block_sizes)")
    D = damping_diagonal(cfg, diag, list(block_sizes) if block_sizes is not None else [int(g.numel())])
    M = None
    if diag is not None and cfg.preconditioner != "none":
        M = (diag + damping + cfg.l2 if D is None else diag + damping * D + cfg.l2).pow(cfg.precond_power)
    return HFSystem(gn, float(damping), int(g.numel()), g.dtype, cfg.l2, cfg.structural_damping, D, M, diag)


def curvature_diagonal(gn: Any, g2: Tensor | None, config: Any, generator: torch.Generator) -> Tensor:
    """HF's diag(G) estimate (``HessianFree._curvature_diag``): Martens' per-batch squared
    gradients ``g2``, or Chapelle & Erhan's squared Jᵀs samples."""
    if config.preconditioner == "chapelle-erhan":
        acc = None
        for _ in range(config.precond_samples):
            s = gn.sample_gradient(generator)
            acc = s * s if acc is None else acc + s * s
        return acc / (config.precond_samples * gn.normalizer)
    if g2 is None:
        raise ValueError("preconditioner 'martens' / damping_matrix 'diag' need per-example squared gradients")
    return g2


# ------------------------------------------------------------------------------------ Lanczos
@dataclass
class LanczosResult:
    """T = tridiag(beta, alpha, beta) of k ≤ steps iterations; ``residual`` = ‖w_k‖ (β_k: 0 if
    the Krylov space became invariant)."""

    alpha: Tensor  # (k,)
    beta: Tensor  # (k - 1,)
    residual: float


def rademacher(dim: int, n: int, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The (n, dim) ±1 probes of :func:`slq` with this seed (CPU generator: same on any device)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (n, dim), generator=gen) * 2 - 1).to(dtype)


def lanczos(op: Operator, v0: Tensor, steps: int, reorth: bool = True) -> LanczosResult:
    """``steps`` Lanczos iterations of ``op`` from v0 (in v0's dtype and device), with full
    reorthogonalization (classical Gram-Schmidt, twice) when ``reorth``; stops early when the
    Krylov space is invariant (β ≤ 1e-13 · max |T|)."""
    n = v0.numel()
    steps = min(steps, n)
    Q = torch.empty(steps, n, dtype=v0.dtype, device=v0.device)
    q = v0 / v0.norm()
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    scale = 0.0
    b = torch.zeros((), dtype=v0.dtype, device=v0.device)
    for j in range(steps):
        Q[j] = q
        w = op(q)
        a = torch.dot(w, q)
        w = w - a * q
        if j > 0:
            w = w - b * Q[j - 1]
        if reorth:
            for _ in range(2):
                w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        b = w.norm()
        alphas.append(a)
        scale = max(scale, abs(float(a)), float(b))
        if j == steps - 1 or float(b) <= 1e-13 * scale:
            break
        betas.append(b)
        q = w / b
    alpha = torch.stack(alphas)
    beta = torch.stack(betas) if betas else alpha.new_zeros(0)
    res = float(b) if float(b) > 1e-13 * scale else 0.0
    return LanczosResult(alpha, beta, res)


def gauss_quadrature(lz: LanczosResult) -> tuple[Tensor, Tensor, Tensor]:
    """(nodes θ = Ritz values ascending, weights τ = S_{1k}² summing to 1, residual bounds
    |β_k S_{kk'}|) of the tridiagonal T."""
    k = lz.alpha.numel()
    T = torch.diag(lz.alpha)
    if k > 1:
        T = T + torch.diag(lz.beta, 1) + torch.diag(lz.beta, -1)
    theta, S = torch.linalg.eigh(T)
    return theta, S[0] ** 2, lz.residual * S[-1].abs()


# ------------------------------------------------------------------------------------ results
@dataclass
class SpectrumConfig:
    """Options of :func:`slq` (see the module docstring)."""

    probes: int = 8  # Rademacher probes
    steps: int = 64  # Lanczos iterations per probe (capped at the dimension)
    seed: int = 0
    quantile: float = 0.05  # λ_min of the effective condition number: this quantile of the measure
    sigma: float = 0.1  # Gaussian smoothing of the density, in decades (log10 λ)
    null_tol: float | None = None  # nodes ≤ null_tol·λ_max count as null space (None: 10·eps of the operator's dtype)
    dtype: torch.dtype = torch.float64  # Lanczos working precision (the operator may compute in float32)
    top: int = 5  # extreme Ritz values kept at each end


@dataclass
class Spectrum:
    """SLQ estimate of one operator's spectrum (see the module docstring).

    ``nodes[p]`` / ``weights[p]``: Gauss nodes and weights of probe p (weights sum to 1); the
    estimated measure is (dim / probes) Σ weights·δ(nodes). ``damping``: the λ at which
    :meth:`condition` is reported (0 when the operator already holds the damping); ``label``
    says which operator this is (e.g. ``G``, ``G+λI``, ``M^-1/2(G+λI)M^-1/2``)."""

    name: str
    label: str
    dim: int
    damping: float
    nodes: list[list[float]]
    weights: list[list[float]]
    ritz_top: list[float]  # largest Ritz values, descending (from the probe with the largest)
    ritz_top_residual: list[float]  # their residual bounds |β_m S_mk| (0: converged to working precision)
    ritz_bottom: list[float]  # smallest Ritz values over all probes, ascending
    quantile: float
    null_tol: float
    products: int
    seconds: float
    steps: int
    seed: int
    blocks: list[Spectrum] = field(default_factory=list)

    # --- derived ---------------------------------------------------------------------------------
    @property
    def lambda_max(self) -> float:
        return self.ritz_top[0]

    @property
    def lambda_min_ritz(self) -> float:
        return self.ritz_bottom[0]

    def _flat(self) -> tuple[Tensor, Tensor]:
        """All nodes and their weights (summing to 1), ascending."""
        th = torch.tensor([x for p in self.nodes for x in p], dtype=torch.float64)
        w = torch.tensor([x for p in self.weights for x in p], dtype=torch.float64) / max(len(self.nodes), 1)
        order = th.argsort()
        return th[order], w[order]

    def quantile_value(self, q: float) -> float:
        """The q-quantile of the estimated spectral measure (smallest node with cumulative
        weight ≥ q), clamped at 0."""
        th, w = self._flat()
        i = int(torch.searchsorted(w.cumsum(0), torch.tensor([q], dtype=torch.float64))[0].clamp(max=th.numel() - 1))
        return max(float(th[i]), 0.0)

    @property
    def lambda_min(self) -> float:
        """λ_min of the effective condition number: the ``quantile`` of the measure."""
        return self.quantile_value(self.quantile)

    @property
    def lambda_min_nonnull(self) -> float:
        """The ``quantile`` of the measure restricted to the non-null nodes (> null_tol·λ_max):
        the bottom of the resolved spectrum, whatever the size of the null space."""
        th, w = self._flat()
        keep = th > self.null_tol * max(self.lambda_max, 0.0)
        if not bool(keep.any()):
            return 0.0
        th, w = th[keep], w[keep] / w[keep].sum()
        i = int(torch.searchsorted(w.cumsum(0), torch.tensor([self.quantile], dtype=torch.float64))[0]
                .clamp(max=th.numel() - 1))
        return float(th[i])

    def moment(self, k: int) -> float:
        """tr(Aᵏ) estimate: dim · mean_p Σ τ θᵏ (Hutchinson's, exact per probe for k ≤ 2·steps − 1)."""
        th, w = self._flat()
        return float(self.dim * (w * th.pow(k)).sum())

    def fraction_below(self, x: float) -> float:
        """Estimated fraction of the eigenvalues below x."""
        th, w = self._flat()
        return float(w[th < x].sum())

    @property
    def null_fraction(self) -> float:
        """Estimated fraction of eigenvalues ≤ null_tol·λ_max (the numerical null space)."""
        th, w = self._flat()
        return float(w[th <= self.null_tol * max(self.lambda_max, 0.0)].sum())

    def condition(self, damping: float | None = None) -> float:
        """(λ_max + λ) / (λ_min + λ) with λ_min the ``quantile`` of the measure (inf if 0)."""
        lam = self.damping if damping is None else damping
        den = self.lambda_min + lam
        return (self.lambda_max + lam) / den if den > 0 else math.inf

    def condition_nonnull(self, damping: float | None = None) -> float:
        """(λ_max + λ) / (λ_min⁺ + λ) with λ_min⁺ = :attr:`lambda_min_nonnull`."""
        lam = self.damping if damping is None else damping
        den = self.lambda_min_nonnull + lam
        return (self.lambda_max + lam) / den if den > 0 else math.inf

    def condition_worst(self, damping: float | None = None) -> float:
        """(λ_max + λ) / (max(smallest Ritz value, 0) + λ)."""
        lam = self.damping if damping is None else damping
        den = max(self.lambda_min_ritz, 0.0) + lam
        return (self.lambda_max + lam) / den if den > 0 else math.inf

    def density(self, grid: Tensor | None = None, sigma: float = 0.1, points: int = 400
                ) -> tuple[Tensor, Tensor]:
        """(λ grid, density per decade): Σ (dim·w) N(log10 λ; log10 θ, σ²) over the non-null
        nodes. Default grid: ``points`` log-spaced values from 5σ below the smallest non-null
        node to 5σ above λ_max. ∫ density d(log10 λ) + null_fraction·dim = dim."""
        th, w = self._flat()
        keep = th > self.null_tol * max(self.lambda_max, 0.0)
        th, w = th[keep], w[keep] * self.dim
        if th.numel() == 0:
            g = grid if grid is not None else torch.logspace(-1, 1, points, dtype=torch.float64)
            return g, torch.zeros_like(g)
        t = th.log10()
        if grid is None:
            grid = torch.logspace(float(t.min()) - 5 * sigma, float(t.max()) + 5 * sigma, points,
                                  dtype=torch.float64)
        x = grid.to(torch.float64).log10().unsqueeze(1)
        dens = (w * torch.exp(-0.5 * ((x - t) / sigma) ** 2)).sum(1) / (sigma * math.sqrt(2 * math.pi))
        return grid, dens

    # --- output --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data: the stored fields (blocks recursively) and the derived numbers (floats;
        an infinite condition number stays ``inf``)."""
        d = {k: v for k, v in asdict(self).items() if k != "blocks"}
        d.update(lambda_max=self.lambda_max, lambda_min=self.lambda_min, lambda_min_ritz=self.lambda_min_ritz,
                 lambda_min_nonnull=self.lambda_min_nonnull, condition=self.condition(),
                 condition_nonnull=self.condition_nonnull(), condition_worst=self.condition_worst(),
                 null_fraction=self.null_fraction, fraction_below_damping=self.fraction_below(self.damping),
                 trace=self.moment(1), trace_sq=self.moment(2))
        d["blocks"] = [b.to_dict() for b in self.blocks]
        return d

    def line(self) -> str:
        """One line: name, size, λ_max (± bound), λ_min (quantile), traces, κ at the damping."""
        return (f"{self.name:<24} {self.label} dim {self.dim} lambda_max {self.lambda_max:.4g} "
                f"(res {self.ritz_top_residual[0]:.2g}) lambda_min[q{self.quantile:g}] {self.lambda_min:.4g} "
                f"ritz_min {self.lambda_min_ritz:.3g} trace {self.moment(1):.4g} null {self.null_fraction:.3f} "
                f"kappa@{self.damping:.3g} {self.condition():.4g} (non-null {self.condition_nonnull():.4g}, "
                f"worst {self.condition_worst():.4g}) "
                f"below_damping {self.fraction_below(self.damping):.3f}")

    def summary(self) -> str:
        """Text summary: this spectrum's line and one per block."""
        return "\n".join([self.line(), *("  " + b.line() for b in self.blocks)])


# ------------------------------------------------------------------------------------ SLQ
def _default_null_tol(dtype: torch.dtype) -> float:
    return 10 * torch.finfo(dtype).eps


def slq(op: Operator, dim: int, config: SpectrumConfig | None = None, *, name: str = "all", label: str = "A",
        damping: float = 0.0, op_dtype: torch.dtype | None = None, device: torch.device | str | None = None
        ) -> Spectrum:
    """Stochastic Lanczos quadrature of the symmetric PSD ``op`` (a ``dim`` vector in and out,
    computing in ``op_dtype`` on ``device``; default: the config's working dtype, CPU). The
    Lanczos vectors live in ``config.dtype``; ``damping`` is the λ of :meth:`Spectrum.condition`."""
    cfg = config or SpectrumConfig()
    op_dtype = op_dtype or cfg.dtype
    dev = torch.device(device) if device is not None else torch.device("cpu")
    work = cfg.dtype

    products = 0

    def A(v: Tensor) -> Tensor:
        nonlocal products
        products += 1
        return op(v.to(op_dtype)).to(work)

    t0 = time.perf_counter()
    probes = rademacher(dim, cfg.probes, cfg.seed, work).to(dev)
    nodes, weights = [], []
    best: tuple[float, list[float], list[float]] | None = None
    bottoms: list[float] = []
    with torch.no_grad():
        for v in probes:
            lz = lanczos(A, v, cfg.steps)
            th, w, res = gauss_quadrature(lz)
            th, w, res = th.cpu(), w.cpu(), res.cpu()
            nodes.append(th.tolist())
            weights.append(w.tolist())
            top = th.flip(0)[: cfg.top].tolist()
            if best is None or top[0] > best[0]:
                best = (top[0], top, res.flip(0)[: cfg.top].tolist())
            bottoms.extend(th[: cfg.top].tolist())
    assert best is not None
    null_tol = cfg.null_tol if cfg.null_tol is not None else _default_null_tol(op_dtype)
    return Spectrum(name=name, label=label, dim=dim, damping=float(damping), nodes=nodes, weights=weights,
                    ritz_top=best[1], ritz_top_residual=best[2], ritz_bottom=sorted(bottoms)[: cfg.top],
                    quantile=cfg.quantile, null_tol=null_tol, products=products,
                    seconds=time.perf_counter() - t0, steps=cfg.steps, seed=cfg.seed)


def spectra(op: Operator, dim: int, blocks: Sequence[Block] = (), config: SpectrumConfig | None = None,
            block_config: SpectrumConfig | None = None, **kwargs: Any) -> Spectrum:
    """:func:`slq` of ``op`` and of its restriction to every block (``block_config``, default
    ``config``), the blocks' spectra in ``result.blocks``. ``kwargs`` go to :func:`slq`."""
    out = slq(op, dim, config, **kwargs)
    kw = {k: v for k, v in kwargs.items() if k != "name"}
    for b in blocks:
        out.blocks.append(slq(restrict(op, b.index, dim), b.size, block_config or config, name=b.name, **kw))
    return out
