"""Matrix-free Gauss-Newton products G v = Jᵀ H_z J v (never forming G).

The model is linearized once per CG run on the curvature batch: ``torch.func.linearize`` gives
J v (forward mode, reusing the traced linearization), ``torch.func.vjp`` gives Jᵀ u (reverse
mode, reusing the saved activations). Each product then costs one tangent pass plus one
backward pass (≈1.3-1.4× a gradient on a DNN, see ``bench/gv_cost.py``).

Structural damping (Martens & Sutskever 2011) for recurrent models: the model function may
return ``(z, [a_1, ...])`` with hidden pre-activations a_i; the operator then also applies
``μ·J_aᵀ diag(d_i) J_a`` with d_i the matching-loss Hessian of the hidden nonlinearity
(tanh: 1 − h², sigmoid: h(1 − h)), supplied by the model as ``structural_weights``. The
optimizer scales that term by λ (so it adapts with the damping).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import linearize, vjp

from hfasr.optim.curvature import OutputCurvature

ModelFn = Callable[[tuple[Tensor, ...]], Tensor | tuple[Tensor, list[Tensor]]]


def flatten(ts: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def unflatten(v: Tensor, like: Sequence[Tensor]) -> tuple[Tensor, ...]:
    out, o = [], 0
    for t in like:
        n = t.numel()
        out.append(v[o : o + n].view_as(t))
        o += n
    return tuple(out)


class GaussNewton:
    """G v on one curvature batch, linearized at ``params``.

    Args:
        fn: maps the parameter tuple to the outputs z (or ``(z, [a_i])`` with structural damping).
        params: current parameter values (detached tensors), the linearization point.
        curvature: builds the output curvature from z (called once, at the linearization point).
        normalizer: G is divided by this (e.g. the number of frames in the batch).
        structural_weights: callable mapping the list [a_i] (values at θ) to the list of
            diagonal matching-loss Hessians d_i; required when ``fn`` returns hidden
            pre-activations.
        jvp_mode: ``"linearize"`` (default; traces once) or ``"double-vjp"`` (the double-backward
            trick, for ops without forward-mode AD).
    """

    def __init__(
        self,
        fn: ModelFn,
        params: Sequence[Tensor],
        curvature: Callable[[Tensor], OutputCurvature],
        normalizer: float,
        structural_weights: Callable[[list[Tensor]], list[Tensor]] | None = None,
        jvp_mode: str = "linearize",
    ) -> None:
        self.params = tuple(p.detach() for p in params)
        self.normalizer = float(normalizer)
        self.structural = False
        if jvp_mode == "linearize":
            out, self._jvp = linearize(fn, self.params)
        elif jvp_mode == "double-vjp":
            self._jvp = None
        else:
            raise ValueError(f"jvp_mode must be 'linearize' or 'double-vjp', got {jvp_mode!r}")
        out2, self._vjp = vjp(fn, self.params)
        if jvp_mode == "double-vjp":
            out = out2
        if isinstance(out, tuple):
            z, acts = out
            self.structural = True
            if structural_weights is None:
                raise ValueError("model returns hidden pre-activations but no structural_weights was given")
            self.d = [d.detach() for d in structural_weights([a.detach() for a in acts])]
            self._zero_acts = [torch.zeros_like(a) for a in acts]
        else:
            z = out
        self.z = z.detach()
        self.curvature = curvature(self.z)

    def __call__(self, v: Tensor, structural_mu: float = 0.0) -> Tensor:
        """G v for a flat vector v (plus μ·J_aᵀ D J_a v when structural damping is on)."""
        vt = unflatten(v, self.params)
        jv = self._jvp_tuple(vt)
        if self.structural:
            jz, ja = jv
            cot = (self.curvature.hvp(jz), [structural_mu * d * x for d, x in zip(self.d, ja)])
        else:
            cot = self.curvature.hvp(jv)
        return flatten(self._vjp(cot)[0]) / self.normalizer

    def _jvp_tuple(self, vt):
        if self._jvp is not None:
            return self._jvp(vt)
        return self._double_vjp_jvp(vt)

    def _double_vjp_jvp(self, vt):
        # J v = ∂/∂u ⟨Jᵀ u, v⟩ : build Jᵀ u with the cotangent u requiring grad, then
        # differentiate with respect to u (for every output: z and, with structural damping, a_i).
        u = torch.zeros_like(self.z, requires_grad=True)
        ua = [torch.zeros_like(a, requires_grad=True) for a in self._zero_acts] if self.structural else []
        with torch.enable_grad():
            jtu = self._vjp((u, ua) if self.structural else u)[0]
            inner = sum((a * b).sum() for a, b in zip(jtu, vt))
            grads = torch.autograd.grad(inner, [u, *ua], allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, [u, *ua])]
        return (grads[0], grads[1:]) if self.structural else grads[0]

    def sample_gradient(self, generator: torch.Generator) -> Tensor:
        """Jᵀ s with E[s sᵀ] = H_z: (Jᵀ s)² is an unbiased estimate of diag(Jᵀ H_z J) =
        diag(G)·normalizer (G carries one 1/normalizer), so the Chapelle-Erhan preconditioner
        divides the squared samples by the normalizer once."""
        s = self.curvature.sample(generator)
        cot = (s, [torch.zeros_like(a) for a in self._zero_acts]) if self.structural else s
        return flatten(self._vjp(cot)[0])


class ModelGaussNewton(GaussNewton):
    """:class:`GaussNewton` whose J v is the model's hand-written R-op (``model.linearize``,
    as :class:`~hfasr.models.dnn.DNN`, :class:`~hfasr.models.blstm.BLSTM` and
    :class:`~hfasr.models.mdlstm.MDLSTM` provide):
    no trace of the time loop (``torch.func.linearize``) and no recomputation of the forward
    pass (``torch.func.jvp``); Jᵀ u is the usual ``torch.func.vjp`` closure.

    ``fn`` must compute the same function as ``model.linearize(*args, **kwargs)`` of the
    parameters ``names`` (in the order of ``params``).
    """

    def __init__(self, model: nn.Module, names: Sequence[str], fn, params: Sequence[Tensor], curvature,
                 normalizer: float, structural_weights=None, args: tuple = (), kwargs: dict | None = None) -> None:
        super().__init__(fn, params, curvature, normalizer, structural_weights=structural_weights, jvp_mode="double-vjp")
        _, jvp = model.linearize(*args, **(kwargs or {}))  # type: ignore[operator]
        names = list(names)
        self._jvp = lambda vt: jvp(dict(zip(names, vt)))


class SumGaussNewton:
    """Σ_b G_b v over several linearized batches (e.g. utterances bucketed by length, each
    :class:`GaussNewton` already divided by the normalizer of the whole sample)."""

    def __init__(self, parts: Sequence[GaussNewton]) -> None:
        if not parts:
            raise ValueError("SumGaussNewton needs at least one part")
        self.parts = list(parts)
        self.normalizer = self.parts[0].normalizer
        self.structural = self.parts[0].structural

    def __call__(self, v: Tensor, structural_mu: float = 0.0) -> Tensor:
        out = self.parts[0](v, structural_mu)
        for p in self.parts[1:]:
            out = out + p(v, structural_mu)
        return out

    def sample_gradient(self, generator: torch.Generator) -> Tensor:
        out = self.parts[0].sample_gradient(generator)
        for p in self.parts[1:]:
            out = out + p.sample_gradient(generator)
        return out

