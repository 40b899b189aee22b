"""Lattice-based sequence criteria: MMI, boosted MMI, MPE (frame phone accuracy), sMBR.

For an utterance with logits z (T, K), scores a = log_softmax(z) − log_prior, acoustic scale κ,
graph costs g and a denominator lattice, a path π has log-score
``S(π) = κ Σ_t a[t, π_t] − lm_scale·g(π) [+ b·E(π)]`` (boosting, bMMI only). Losses (summed
over frames/utterances; the caller normalises):

- ``mmi`` / ``bmmi``: ``−κ Σ_t a[t, ref_t] + log Σ_{π∈den} e^{S(π)}`` (numerator = the forced
  alignment, Kaldi nnet1's convention); ∂/∂z = κ(γ_den − onehot(ref)). Frame dropping (Kaldi's
  ``drop_frames``) zeroes the gradient and the curvature at frames whose reference pdf has no
  denominator posterior.
- ``smbr`` / ``mpe``: ``−E_den[A(π)]`` with A the number of frames whose pdf (sMBR) or phone
  (MPE, Kaldi's "mpfe" variant) matches the reference alignment; with ``one_silence_class`` any
  silence phone matches a silence reference. ∂/∂z_{t,k} = −κ Σ_{arcs q at t, pdf k} γ_q (Ā_q − Ā).

The softmax normaliser is common to all paths and cancels, so the derivatives with respect to
the logits equal those with respect to the scores (literature digest §13.3-13.4). Optional
frame cross-entropy smoothing adds ``ce_weight · CE(z, ref)``.

Curvature options (PSD output-space operators for HF's G = Jᵀ H J), chosen by ``curvature``:
``fisher`` (κ²·(diag y − y yᵀ) per frame, softmax Fisher), ``den-block``
(κ²·(diag γ_t − γ_t γ_tᵀ) from denominator frame posteriors) and ``den-cov`` (κ²·Cov_den u via
the expectation-semiring forward-backward; the exact Hessian of single-path-numerator MMI).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from hfasr.lattice.fb import LatticeBatch
from hfasr.lattice.tensors import Lattice
from hfasr.optim.curvature import SoftmaxFisher, Sum

Criterion = Literal["mmi", "bmmi", "mpe", "smbr"]
CurvatureKind = Literal["fisher", "den-block", "den-cov"]


@dataclass
class SequenceConfig:
    """Options of the sequence criteria (defaults: Kaldi nnet1)."""

    criterion: Criterion = "smbr"
    acoustic_scale: float = 0.1  # κ
    lm_scale: float = 1.0
    boost: float = 0.1  # b of boosted MMI (bmmi only)
    ce_weight: float = 0.0  # frame-CE smoothing weight
    drop_frames: bool = True  # MMI/bMMI: drop frames whose reference pdf is absent from the lattice
    one_silence_class: bool = True  # sMBR/MPE/boosting: all silence phones count as one class
    curvature: CurvatureKind = "fisher"
    fisher_scale: float | None = None  # scale of the `fisher` option; None = κ²


@dataclass
class SeqSupervision:
    """One utterance's supervision: denominator lattice and the reference frame alignment."""

    lattice: Lattice
    ref_pdf: Tensor  # (T,) long
    ref_phone: Tensor | None = None  # (T,) long; needed for MPE, bMMI and one_silence_class


@dataclass
class SeqOutput:
    loss: Tensor  # scalar, summed over utterances (criterion + CE smoothing)
    grad: Tensor  # (B, T, K) ∂loss/∂logits
    frames: int
    criterion_loss: float  # without CE smoothing
    cache: dict


class SequenceCriterion:
    """Loss, logits gradient and curvature of MMI / bMMI / MPE / sMBR on a batch of lattices.

    Args:
        config: :class:`SequenceConfig`.
        log_prior: (K,) log pdf priors (subtracted from the log-softmax, as in decoding).
        tid2phone: (num_tids + 1,) phone of each transition-id (lattice arcs carry tids);
            required for MPE, bMMI and ``one_silence_class``.
        silence_phones: phone ids counted as silence.
    """

    def __init__(self, config: SequenceConfig, log_prior: Tensor, tid2phone: Tensor | None = None,
                 silence_phones: list[int] | None = None) -> None:
        self.cfg = config
        self.log_prior = log_prior
        self.tid2phone = tid2phone
        self.silence = torch.zeros(int(tid2phone.max()) + 1 if tid2phone is not None else 1, dtype=torch.bool)
        for p in silence_phones or []:
            if p < self.silence.numel():
                self.silence[p] = True
        needs_phone = config.criterion in ("mpe", "bmmi") or (config.one_silence_class and config.criterion == "smbr")
        if needs_phone and tid2phone is None:
            raise ValueError(f"criterion {config.criterion} needs tid2phone (phones of the lattice arcs)")

    # ----------------------------------------------------------------------------- accuracies
    def _arc_accuracy(self, lb: LatticeBatch, sups: list[SeqSupervision], kind: str) -> Tensor:
        """Per-arc frame accuracy against the reference: ``state`` (pdf) or ``phone``."""
        T = max(int(s.ref_pdf.numel()) for s in sups)
        e = lb.emitting
        u, t = lb.utt_of_arc[e], lb.frame[e]
        acc = torch.zeros(lb.src.numel(), dtype=lb.dtype, device=lb.device)
        tids = torch.cat([s.lattice.tid if s.lattice.tid is not None else torch.zeros(s.lattice.num_arcs, dtype=torch.long)
                          for s in sups]).to(lb.device)[e]
        ref_pdf = torch.stack([torch.nn.functional.pad(s.ref_pdf, (0, T - s.ref_pdf.numel()), value=-1) for s in sups]).to(lb.device)
        if kind == "state":
            ok = lb.pdf[e] == ref_pdf[u, t]
        else:
            ok = torch.zeros_like(u, dtype=torch.bool)
        if self.tid2phone is not None and any(s.ref_phone is not None for s in sups):
            ref_ph = torch.stack([torch.nn.functional.pad(s.ref_phone, (0, T - s.ref_phone.numel()), value=-1) for s in sups]).to(lb.device)
            ph = self.tid2phone.to(lb.device)[tids]
            rp = ref_ph[u, t]
            sil = self.silence.to(lb.device)
            both_sil = sil[ph.clamp(min=0, max=sil.numel() - 1)] & sil[rp.clamp(min=0, max=sil.numel() - 1)] & (rp >= 0)
            if kind == "phone":
                ok = (ph == rp) | (both_sil if self.cfg.one_silence_class else torch.zeros_like(ok))
            elif self.cfg.one_silence_class:
                ok = ok | both_sil
        acc[e] = ok.to(lb.dtype)
        return acc

    # ----------------------------------------------------------------------------- loss
    def __call__(self, logits: Tensor, lengths: Tensor, sups: list[SeqSupervision]) -> SeqOutput:
        cfg = self.cfg
        B, T, K = logits.shape
        kappa = cfg.acoustic_scale
        z = logits.detach()
        logp = torch.log_softmax(z.double(), dim=-1)
        scores = logp - self.log_prior.to(logp)
        mask = (torch.arange(T, device=z.device)[None, :] < lengths[:, None].to(z.device))
        for b, s in enumerate(sups):
            if s.lattice.num_frames != int(lengths[b]) or s.ref_pdf.numel() != int(lengths[b]):
                raise ValueError(f"utterance {b}: lattice has {s.lattice.num_frames} frames, alignment "
                                 f"{s.ref_pdf.numel()}, features {int(lengths[b])}")
        lb = LatticeBatch([s.lattice for s in sups], device=z.device)
        ref = torch.stack([torch.nn.functional.pad(s.ref_pdf, (0, T - s.ref_pdf.numel())) for s in sups]).to(z.device)
        onehot = torch.zeros(B, T, K, dtype=torch.float64, device=z.device).scatter_(2, ref[..., None], 1.0) * mask[..., None]
        cache: dict = {"lb": lb, "mask": mask, "valid": mask}
        if cfg.criterion in ("mmi", "bmmi"):
            extra = None
            if cfg.criterion == "bmmi":
                extra = -cfg.boost * self._arc_accuracy(lb, sups, "phone")  # = +b·errors up to a constant
            w = lb.arc_scores(scores, kappa, cfg.lm_scale, extra)
            alpha, beta, logz, post = lb.forward_backward(w)
            gamma = lb.scatter_frames(post, (B, T, K))
            num = (scores * onehot).sum() * kappa
            crit = -num + logz.sum()
            grad = kappa * (gamma - onehot)
            if cfg.drop_frames:
                keep = (gamma * onehot).sum(-1) > 1e-20
                keep = keep | ~mask
                grad = grad * keep[..., None]
                cache["mask"] = mask & keep
        else:
            w = lb.arc_scores(scores, kappa, cfg.lm_scale)
            alpha, beta, logz, post = lb.forward_backward(w)
            gamma = lb.scatter_frames(post, (B, T, K))
            c = self._arc_accuracy(lb, sups, "state" if cfg.criterion == "smbr" else "phone")
            ea, eb, etot = lb.expectations(w, alpha, beta, c)
            cq = ea[lb.src] + c + eb[lb.dst]
            arc_grad = post * (cq - etot[lb.utt_of_arc])
            grad = -kappa * lb.scatter_frames(arc_grad, (B, T, K))
            crit = -etot.sum()
            cache["expected_accuracy"] = etot
        cache.update(w=w, alpha=alpha, beta=beta, logz=logz, post=post, gamma=gamma)
        loss = crit
        if not torch.isfinite(logz).all():
            raise FloatingPointError("sequence criterion: a denominator lattice has no path with finite score")
        if cfg.ce_weight:
            y = torch.exp(logp)
            ce = -(logp * onehot).sum()
            loss = loss + cfg.ce_weight * ce
            grad = grad + cfg.ce_weight * (y - onehot) * mask[..., None]
        grad = grad * mask[..., None]
        return SeqOutput(loss=loss.to(logits.dtype), grad=grad.to(logits.dtype), frames=int(mask.sum()),
                         criterion_loss=float(crit), cache=cache)

    def loss_with_grad(self, logits: Tensor, lengths: Tensor, sups: list[SeqSupervision]) -> tuple[Tensor, int]:
        """Differentiable surrogate: ``(⟨grad, logits⟩ − ⟨grad, logits⟩.detach() + loss)`` so that
        backward gives the exact criterion gradient (for use with autograd)."""
        out = self(logits, lengths, sups)
        lin = (out.grad * logits).sum()
        return out.loss.detach() + lin - lin.detach(), out.frames

    # ----------------------------------------------------------------------------- curvature
    def curvature(self, logits: Tensor, out: SeqOutput):
        """The configured PSD output-space curvature at ``logits`` (from ``out``'s cache)."""
        cfg = self.cfg
        k2 = cfg.acoustic_scale**2
        mask = out.cache["mask"]
        if cfg.curvature == "fisher":
            scale = k2 if cfg.fisher_scale is None else cfg.fisher_scale
            h = SoftmaxFisher(logits, mask, scale=scale)
        elif cfg.curvature == "den-block":
            h = _Block(out.cache["gamma"].to(logits.dtype), mask, k2)
        elif cfg.curvature == "den-cov":
            h = DenCovariance(out.cache, logits.shape, k2, logits.dtype)
        else:
            raise ValueError(f"unknown curvature {cfg.curvature!r} (fisher, den-block, den-cov)")
        if cfg.ce_weight:
            return Sum([(1.0, h), (cfg.ce_weight, SoftmaxFisher(logits, out.cache["valid"]))])
        return h


class _Block:
    """Per-frame κ²(diag γ_t − γ_t γ_tᵀ) with stored denominator posteriors γ."""

    def __init__(self, gamma: Tensor, mask: Tensor, scale: float) -> None:
        self.g = gamma
        self.w = (mask.to(gamma.dtype) * scale)[..., None]

    def hvp(self, u: Tensor) -> Tensor:
        g = self.g
        return self.w * (g * u - g * (g * u).sum(-1, keepdim=True))

    def sample(self, generator: torch.Generator) -> Tensor:
        flat = self.g.reshape(-1, self.g.shape[-1]).clamp(min=0)
        flat = flat / flat.sum(-1, keepdim=True).clamp(min=1e-30)
        flat = torch.where(flat.sum(-1, keepdim=True) > 0, flat, torch.full_like(flat, 1.0 / flat.shape[-1]))
        k = torch.multinomial(flat.float().cpu(), 1, generator=generator).to(flat.device)
        s = -flat.clone()
        s.scatter_add_(1, k, torch.ones_like(k, dtype=flat.dtype))
        return self.w.sqrt() * s.reshape(self.g.shape)


class DenCovariance:
    """κ²·Cov_den[φ] u via the expectation-semiring forward-backward over the lattices.

    ``(Cov u)_{t,k} = Σ_{arcs q at frame t with pdf k} γ_q (E[s_u | q] − E[s_u])`` with
    ``s_u(π) = Σ_t u[t, π_t]``; the lattice weights and α/β are fixed at the linearization point,
    only the additive arc values change per product (literature digest §13.3).
    """

    def __init__(self, cache: dict, shape, scale: float, dtype) -> None:
        self.lb: LatticeBatch = cache["lb"]
        self.w, self.alpha, self.beta, self.post = cache["w"], cache["alpha"], cache["beta"], cache["post"]
        self.mask = cache["mask"][..., None]
        self.shape = tuple(shape)
        self.scale = scale
        self.dtype = dtype

    def hvp(self, u: Tensor) -> Tensor:
        lb = self.lb
        c = lb.gather_frames((u * self.mask).double())
        ea, eb, etot = lb.expectations(self.w, self.alpha, self.beta, c)
        vals = self.post * (ea[lb.src] + c + eb[lb.dst] - etot[lb.utt_of_arc])
        return (self.scale * lb.scatter_frames(vals, self.shape)).to(self.dtype) * self.mask

    def sample(self, generator: torch.Generator) -> Tensor:
        """κ(φ(π) − γ) for one path π ~ p_den per utterance: E[s sᵀ] = κ² Cov_den."""
        lb = self.lb
        B, T, K = self.shape
        phi = torch.zeros(B, T, K, dtype=torch.float64)
        src, dst = lb.src.cpu(), lb.dst.cpu()
        w, beta = self.w.cpu(), self.beta.cpu()
        order = torch.argsort(src, stable=True)
        counts = torch.bincount(src, minlength=lb.num_states)
        starts = torch.cumsum(counts, 0) - counts
        final = lb.final_cost.cpu()
        for b in range(B):
            s = int(lb.start[b])
            while True:
                arcs = order[int(starts[s]) : int(starts[s]) + int(counts[s])]
                logits = torch.cat([w[arcs] + beta[dst[arcs]], (-final[s]).reshape(1)]) - beta[s]
                p = torch.exp(logits).clamp(min=0)
                if float(p.sum()) <= 0:
                    break
                j = int(torch.multinomial(p.float(), 1, generator=generator))
                if j == len(arcs):
                    break
                a = int(arcs[j])
                if bool(lb.emitting[a]):
                    phi[b, int(lb.frame[a]), int(lb.pdf[a])] = 1.0
                s = int(dst[a])
        gamma = lb.scatter_frames(self.post, self.shape).cpu()
        return ((self.scale**0.5) * (phi - gamma)).to(self.dtype).to(self.mask.device) * self.mask
