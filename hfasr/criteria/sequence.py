"""Lattice-based sequence criteria: MMI, boosted MMI, MPE (frame phone accuracy), sMBR.

For an utterance with logits z (T, K), scores a = log_softmax(z) − log_prior, acoustic scale κ,
graph costs g (arc and final-state costs, both scaled by ``lm_scale``) and a denominator lattice,
a path π has log-score ``S(π) = κ Σ_t a[t, π_t] − lm_scale·g(π) [+ b·E(π)]`` (boosting, bMMI
only). Losses (summed over frames/utterances; the caller normalises):

- ``mmi`` / ``bmmi``: ``−κ Σ_t a[t, ref_t] + log Σ_{π∈den} e^{S(π)}`` (numerator = the forced
  alignment, Kaldi nnet1's convention); ∂/∂z = κ(γ_den − onehot(ref)). Frame dropping (Kaldi's
  ``drop_frames``) zeroes the gradient and the curvature at frames whose reference pdf has no
  denominator posterior.
- ``smbr`` / ``mpe``: ``−E_den[A(π)]`` with A the number of correct frames, following Kaldi's
  ``LatticeForwardBackwardMpeVariants`` (criteria "smbr" and "mpfe"): a frame of π is correct
  when its pdf (sMBR) or phone (MPE) equals the reference alignment's; with
  ``one_silence_class: true`` also when both π's phone and the reference phone are silence phones
  (any two silence phones match); with ``one_silence_class: false`` a frame whose phone in π is a
  silence phone never counts (Kaldi's "old behavior"). ∂/∂z_{t,k} = −κ Σ_{arcs q at t, pdf k}
  γ_q (Ā_q − Ā). MPE (Povey & Woodland, ICASSP 2002), sMBR (Gibson & Hain, Interspeech 2006),
  both as in Veselý, Ghoshal, Burget & Povey, "Sequence-discriminative training of deep neural
  networks", Interspeech 2013.

``ref_phone`` (the reference phone of every frame) is required by MPE, bMMI and sMBR with
``one_silence_class: true``; a missing one raises :class:`~hfasr.errors.DataError`.

Every path visits one pdf per frame, so the softmax normaliser is common to all paths and cancels
(Veselý et al. 2013 back-propagate from the pre-softmax activations for this reason): the
derivatives with respect to the logits equal those with respect to the scores. Optional frame
cross-entropy smoothing adds ``ce_weight · CE(z, ref)``.

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

from hfasr.config import bounded, check_ranges
from hfasr.criteria.curvature import SoftmaxFisher, Sum
from hfasr.errors import DataError
from hfasr.lattice.fb import LatticeBatch
from hfasr.lattice.tensors import Lattice

Criterion = Literal["mmi", "bmmi", "mpe", "smbr"]
CurvatureKind = Literal["fisher", "den-block", "den-cov"]


@dataclass
class SequenceConfig:
    """Options of the sequence criteria (defaults: Kaldi nnet1)."""

    criterion: Criterion = "smbr"
    acoustic_scale: float = bounded(0.1, gt=0)  # κ
    lm_scale: float = bounded(1.0, ge=0)
    boost: float = bounded(0.1, ge=0)  # b of boosted MMI (bmmi only)
    ce_weight: float = bounded(0.0, ge=0)  # frame-CE smoothing weight
    drop_frames: bool = True  # MMI/bMMI: drop frames whose reference pdf is absent from the lattice
    # sMBR/MPE/boosting: all silence phones count as one class (true, Kaldi nnet1's train_mpe.sh);
    # false: Kaldi's older rule, frames with a silence phone in the hypothesis count 0 (sMBR/MPE)
    one_silence_class: bool = True
    curvature: CurvatureKind = "fisher"
    fisher_scale: float | None = bounded(None, gt=0)  # scale of the `fisher` option; None = κ²

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class SeqSupervision:
    """One utterance's supervision: denominator lattice and the reference frame alignment."""

    lattice: Lattice
    ref_pdf: Tensor  # (T,) long
    ref_phone: Tensor | None = None  # (T,) long; needed for MPE, bMMI and sMBR with one_silence_class


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
            required for MPE, bMMI and sMBR (unless ``one_silence_class`` is false and there are
            no silence phones).
        silence_phones: phone ids counted as silence.
    """

    def __init__(self, config: SequenceConfig, log_prior: Tensor, tid2phone: Tensor | None = None,
                 silence_phones: list[int] | None = None) -> None:
        self.cfg = config
        self.log_prior = log_prior
        self.tid2phone = tid2phone
        crit = config.criterion
        # the reference phones are needed for phone matches and for the silence class of the
        # reference; the arc phones also for sMBR's "a silence frame counts 0" rule
        self.needs_ref_phone = crit in ("mpe", "bmmi") or (crit == "smbr" and config.one_silence_class)
        self.needs_arc_phone = self.needs_ref_phone or (crit == "smbr" and bool(silence_phones))
        if self.needs_arc_phone and tid2phone is None:
            raise ValueError(f"criterion {crit} needs tid2phone (phones of the lattice arcs)")
        self.silence = torch.zeros(int(tid2phone.max()) + 1 if tid2phone is not None else 1, dtype=torch.bool)
        for p in silence_phones or []:
            if p < self.silence.numel():
                self.silence[p] = True

    # ----------------------------------------------------------------------------- accuracies
    def _check_supervision(self, sups: list[SeqSupervision], lengths: Tensor) -> None:
        """Frame counts agree; the phone information the criterion needs is present."""
        crit = self.cfg.criterion
        for b, s in enumerate(sups):
            n = int(lengths[b])
            if s.lattice.num_frames != n or s.ref_pdf.numel() != n:
                raise ValueError(f"utterance {b}: lattice has {s.lattice.num_frames} frames, alignment "
                                 f"{s.ref_pdf.numel()}, features {n}")
            if self.needs_ref_phone:
                if s.ref_phone is None:
                    why = " with one_silence_class: true" if crit == "smbr" else ""
                    raise DataError(f"utterance {b}: criterion {crit}{why} needs the reference phone "
                                    "alignment (SeqSupervision.ref_phone), which is missing")
                if s.ref_phone.numel() != n:
                    raise ValueError(f"utterance {b}: reference phone alignment has {s.ref_phone.numel()} "
                                     f"frames, features {n}")
            if self.needs_arc_phone and s.lattice.tid is None:
                raise DataError(f"utterance {b}: criterion {crit} needs the lattice arcs' transition ids "
                                "(Lattice.tid, for their phones), which are missing")

    def _arc_accuracy(self, lb: LatticeBatch, sups: list[SeqSupervision], kind: str) -> Tensor:
        """Per-arc frame accuracy against the reference (1 correct, 0 not; 0 on epsilon arcs).

        ``kind``: ``state`` (sMBR: pdf match) or ``phone`` (MPE: phone match), with Kaldi's
        ``LatticeForwardBackwardMpeVariants`` silence rule: ``one_silence_class`` true, a frame is
        also correct when the arc's and the reference's phones are both silence; false, a frame
        whose arc phone is silence is never correct. ``boost`` (bMMI): phone match, or (with
        ``one_silence_class``) both silence, with no rule against silence.
        """
        T = max(int(s.ref_pdf.numel()) for s in sups)
        e = lb.emitting
        u, t = lb.utt_of_arc[e], lb.frame[e]
        acc = torch.zeros(lb.src.numel(), dtype=lb.dtype, device=lb.device)

        def pad(xs: list[Tensor]) -> Tensor:
            return torch.stack([torch.nn.functional.pad(x, (0, T - x.numel()), value=-1) for x in xs]).to(lb.device)

        if kind == "state":
            ok = lb.pdf[e] == pad([s.ref_pdf for s in sups])[u, t]
        else:
            ok = torch.zeros_like(u, dtype=torch.bool)
        if self.needs_arc_phone:  # false only for sMBR without one_silence_class and silence phones
            tids = torch.cat([s.lattice.tid.long() for s in sups]).to(lb.device)[e]
            ph = self.tid2phone.to(lb.device)[tids]
            sil = self.silence.to(lb.device)
            ph_sil = sil[ph.clamp(min=0, max=sil.numel() - 1)]
            if self.needs_ref_phone:
                rp = pad([s.ref_phone for s in sups])[u, t]
                in_range = (rp >= 0) & (rp < sil.numel())
                both_sil = ph_sil & sil[rp.clamp(min=0, max=sil.numel() - 1)] & in_range
                if kind != "state":
                    ok = ph == rp
                if self.cfg.one_silence_class:
                    ok = ok | both_sil
            if kind != "boost" and not self.cfg.one_silence_class:
                ok = ok & ~ph_sil
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
        self._check_supervision(sups, lengths)
        lb = LatticeBatch([s.lattice for s in sups], device=z.device)
        ref = torch.stack([torch.nn.functional.pad(s.ref_pdf, (0, T - s.ref_pdf.numel())) for s in sups]).to(z.device)
        onehot = torch.zeros(B, T, K, dtype=torch.float64, device=z.device).scatter_(2, ref[..., None], 1.0) * mask[..., None]
        cache: dict = {"lb": lb, "mask": mask, "valid": mask, "lm_scale": cfg.lm_scale}
        if cfg.criterion in ("mmi", "bmmi"):
            extra = None
            if cfg.criterion == "bmmi":
                extra = -cfg.boost * self._arc_accuracy(lb, sups, "boost")  # = +b·errors up to a constant
            w = lb.arc_scores(scores, kappa, cfg.lm_scale, extra)
            alpha, beta, logz, post = lb.forward_backward(w, cfg.lm_scale)
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
            alpha, beta, logz, post = lb.forward_backward(w, cfg.lm_scale)
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
    ``s_u(π) = Σ_t u[t, π_t]``: a forward-backward in the first-order expectation semiring (Li &
    Eisner, "First- and second-order expectation semirings with applications to minimum-risk
    training on translation forests", EMNLP 2009) with the arc values ``u[t, pdf]``. The lattice
    weights and α/β are fixed at the linearization point, only the additive arc values change per
    product. For single-path-numerator MMI this is the exact Hessian in the logits; for MPE/sMBR it
    is the Fisher information of the denominator path distribution, a PSD stand-in for their
    indefinite Hessian.
    """

    def __init__(self, cache: dict, shape, scale: float, dtype) -> None:
        self.lb: LatticeBatch = cache["lb"]
        self.w, self.alpha, self.beta, self.post = cache["w"], cache["alpha"], cache["beta"], cache["post"]
        self.mask = cache["mask"][..., None]
        self.shape = tuple(shape)
        self.scale = scale
        self.dtype = dtype
        self.lm_scale = cache.get("lm_scale", 1.0)

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
        fin = lb.final_weights(self.lm_scale).cpu()  # −lm_scale·final_cost, −inf if not final
        for b in range(B):
            s = int(lb.start[b])
            while True:
                arcs = order[int(starts[s]) : int(starts[s]) + int(counts[s])]
                logits = torch.cat([w[arcs] + beta[dst[arcs]], fin[s].reshape(1)]) - beta[s]
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
