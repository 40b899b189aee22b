"""Sequence criteria against brute-force path enumeration: final-state costs scaled by
``lm_scale``, Kaldi's silence rule of the sMBR / MPE frame accuracies, missing phone information."""

from __future__ import annotations

import math

import pytest
import torch
from lattice_utils import enumerate_paths, path_onehots, random_lattice

from hfasr.criteria.sequence import SeqSupervision, SequenceConfig, SequenceCriterion
from hfasr.errors import DataError
from hfasr.lattice import LatticeBatch

K = 5
T = 4
TID2PHONE = torch.tensor([0, 1, 1, 2, 3, 4])  # tid k+1 -> phone of pdf k; pdfs 0 and 1 share phone 1
SIL = [3, 4]  # two different silence phones (pdfs 3 and 4)
KAPPA = 0.5


def _lattice(seed: int):
    """A random lattice whose final states have distinct, sizeable final costs."""
    lat = random_lattice(T, K, seed=seed)
    idx = torch.isfinite(lat.final_cost).nonzero().squeeze(1)
    lat.final_cost[idx] = 0.5 + 2.0 * torch.arange(len(idx), dtype=torch.float64)
    return lat


def _log_scores(lat, paths, scores, kappa, lm_scale):
    """log-score of every path: κ·acoustic − lm_scale·(arc graph costs + final cost)."""
    out = []
    for arcs, fc in paths:
        v = -lm_scale * fc
        for a in arcs:
            v -= lm_scale * float(lat.graph_cost[a])
            if int(lat.pdf[a]) >= 0:
                v += kappa * float(scores[int(lat.frame[a]), int(lat.pdf[a])])
        out.append(v)
    return torch.tensor(out, dtype=torch.float64)


def _kaldi_frame_acc(crit, one_sil, pdf, tid, ref_pdf, ref_phone):
    """Kaldi's LatticeForwardBackwardMpeVariants frame accuracy ("smbr" / "mpfe")."""
    phone = int(TID2PHONE[tid])
    phone_is_sil, ref_is_sil = phone in SIL, ref_phone in SIL
    both_sil = phone_is_sil and ref_is_sil
    match = pdf == ref_pdf if crit == "smbr" else phone == ref_phone
    if one_sil:
        return float(match or both_sil)
    return float(match and not phone_is_sil)


def _expected_accuracy(lat, paths, p, crit, one_sil, ref, ref_phone, rule=_kaldi_frame_acc):
    A = []
    for arcs, _ in paths:
        A.append(sum(rule(crit, one_sil, int(lat.pdf[a]), int(lat.tid[a]), int(ref[int(lat.frame[a])]),
                          int(ref_phone[int(lat.frame[a])]))
                     for a in arcs if int(lat.pdf[a]) >= 0))
    return float((p * torch.tensor(A, dtype=torch.float64)).sum())


def _data(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, T, K, generator=g, dtype=torch.float64)
    log_prior = torch.log_softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
    ref = torch.randint(0, K, (T,), generator=g)
    return logits, log_prior, ref, TID2PHONE[ref + 1]


def _criterion(crit, log_prior, **kw):
    cfg = SequenceConfig(criterion=crit, acoustic_scale=KAPPA, drop_frames=False, **kw)
    return SequenceCriterion(cfg, log_prior, tid2phone=TID2PHONE, silence_phones=SIL)


# ------------------------------------------------------------------------ lm_scale on final costs

@pytest.mark.parametrize("lm_scale", [0.0, 0.5, 2.0])
def test_forward_backward_scales_final_costs(lm_scale):
    lats = [_lattice(s) for s in (3, 6, 11)]
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(len(lats), T, K, generator=g, dtype=torch.float64)
    lb = LatticeBatch(lats)
    w = lb.arc_scores(scores, 0.7, lm_scale)
    alpha, beta, logz, post = lb.forward_backward(w, lm_scale)
    gamma = lb.scatter_frames(post, (len(lats), T, K))
    c = torch.randn(lb.src.numel(), generator=g, dtype=torch.float64)
    _, _, etot = lb.expectations(w, alpha, beta, c)
    off = 0
    for b, lat in enumerate(lats):
        paths = enumerate_paths(lat)
        ps = _log_scores(lat, paths, scores[b], 0.7, lm_scale)
        assert float(logz[b]) == pytest.approx(float(torch.logsumexp(ps, 0)), abs=1e-10)
        # the test is sensitive: unscaled final costs give another log Z
        assert abs(float(logz[b]) - float(torch.logsumexp(ps - (1.0 - lm_scale) * torch.tensor(
            [fc for _, fc in paths], dtype=torch.float64), 0))) > 0.1
        p = torch.softmax(ps, 0)
        for a in range(lat.num_arcs):
            pa = sum(float(p[i]) for i, (arcs, _) in enumerate(paths) if a in arcs)
            assert float(post[off + a]) == pytest.approx(pa, abs=1e-10)
        expect = (p[:, None, None] * path_onehots(lat, paths, K)).sum(0)
        assert torch.allclose(gamma[b], expect, atol=1e-10)
        vals = torch.tensor([sum(float(c[off + a]) for a in arcs) for arcs, _ in paths], dtype=torch.float64)
        assert float(etot[b]) == pytest.approx(float((p * vals).sum()), abs=1e-10)
        off += lat.num_arcs


@pytest.mark.parametrize("crit", ["mmi", "smbr"])
def test_criterion_scales_final_costs(crit):
    lat = _lattice(11)
    logits, log_prior, ref, ref_phone = _data(1)
    c = _criterion(crit, log_prior, lm_scale=2.0)
    out = c(logits, torch.tensor([T]), [SeqSupervision(lat, ref, ref_phone)])
    scores = torch.log_softmax(logits[0], -1) - log_prior
    paths = enumerate_paths(lat)
    ps = _log_scores(lat, paths, scores, KAPPA, 2.0)
    if crit == "mmi":
        expect = -KAPPA * float(scores[torch.arange(T), ref].sum()) + float(torch.logsumexp(ps, 0))
    else:
        expect = -_expected_accuracy(lat, paths, torch.softmax(ps, 0), "smbr", True, ref, ref_phone)
    assert out.criterion_loss == pytest.approx(expect, abs=1e-10)


def test_den_cov_sample_uses_scaled_final_costs():
    """Paths sampled for the den-cov curvature follow the lm_scale-scaled distribution: the samples
    κ(φ(π) − γ) have mean 0 (with unscaled final costs the mean would be far from 0)."""
    lat = _lattice(6)
    logits, log_prior, ref, ref_phone = _data(2)
    lm_scale = 2.0
    c = _criterion("mmi", log_prior, lm_scale=lm_scale, curvature="den-cov")
    out = c(logits, torch.tensor([T]), [SeqSupervision(lat, ref, ref_phone)])
    h = c.curvature(logits, out)
    gen = torch.Generator().manual_seed(0)
    n = 1500
    mean = sum(h.sample(gen) for _ in range(n)) / n
    tol = 0.04 * KAPPA
    assert float(mean.abs().max()) < tol
    # sensitivity: the frame posteriors of the unscaled-final distribution differ by much more
    scores = torch.log_softmax(logits[0], -1) - log_prior
    paths = enumerate_paths(lat)
    fc = torch.tensor([f for _, f in paths], dtype=torch.float64)
    phis = path_onehots(lat, paths, K)
    ps = _log_scores(lat, paths, scores, KAPPA, lm_scale)
    p_scaled, p_unscaled = torch.softmax(ps, 0), torch.softmax(ps + (lm_scale - 1.0) * fc, 0)
    gamma = (p_scaled[:, None, None] * phis).sum(0)
    assert torch.allclose(out.cache["gamma"][0], gamma, atol=1e-10)
    diff = ((p_unscaled - p_scaled)[:, None, None] * phis).sum(0)
    assert float(KAPPA * diff.abs().max()) > 3 * tol


# ------------------------------------------------------------------------ silence rule (Kaldi)

def _old_rule(crit, one_sil, pdf, tid, ref_pdf, ref_phone):
    """The rule before the fix: one_silence_class false counted matched silence frames as correct."""
    phone = int(TID2PHONE[tid])
    match = pdf == ref_pdf if crit == "smbr" else phone == ref_phone
    return float(match or (one_sil and phone in SIL and ref_phone in SIL))


def _plain_rule(crit, one_sil, pdf, tid, ref_pdf, ref_phone):
    return float(pdf == ref_pdf if crit == "smbr" else int(TID2PHONE[tid]) == ref_phone)


@pytest.mark.parametrize("one_sil", [True, False])
@pytest.mark.parametrize("crit", ["smbr", "mpe"])
def test_expected_accuracy_kaldi_silence_rule(crit, one_sil):
    """−loss = E_den[A] with Kaldi's frame accuracy: one_silence_class true, a silence reference is
    matched by any silence phone; false, a frame whose hypothesis phone is silence counts 0."""
    sensitive = False
    for seed in (3, 6, 11, 12):
        lat = _lattice(seed)
        logits, log_prior, ref, ref_phone = _data(seed)
        c = _criterion(crit, log_prior, one_silence_class=one_sil)
        out = c(logits, torch.tensor([T]), [SeqSupervision(lat, ref, ref_phone)])
        scores = torch.log_softmax(logits[0], -1) - log_prior
        paths = enumerate_paths(lat)
        p = torch.softmax(_log_scores(lat, paths, scores, KAPPA, 1.0), 0)
        expect = _expected_accuracy(lat, paths, p, crit, one_sil, ref, ref_phone)
        assert out.criterion_loss == pytest.approx(-expect, abs=1e-10)
        assert float(out.cache["expected_accuracy"][0]) == pytest.approx(expect, abs=1e-10)
        other = _old_rule if not one_sil else _plain_rule
        sensitive |= abs(_expected_accuracy(lat, paths, p, crit, one_sil, ref, ref_phone, rule=other) - expect) > 1e-3
    assert sensitive, "no lattice exercised the silence rule"


def test_smbr_without_one_silence_class_needs_no_ref_phone():
    """sMBR with one_silence_class false uses only the hypothesis phones (as Kaldi does)."""
    lat = _lattice(6)
    logits, log_prior, ref, ref_phone = _data(6)
    c = _criterion("smbr", log_prior, one_silence_class=False)
    with_ph = c(logits, torch.tensor([T]), [SeqSupervision(lat, ref, ref_phone)])
    without = c(logits, torch.tensor([T]), [SeqSupervision(lat, ref)])
    assert without.criterion_loss == pytest.approx(with_ph.criterion_loss, abs=1e-12)
    assert torch.equal(without.grad, with_ph.grad)


# ------------------------------------------------------------------------ missing phone information

@pytest.mark.parametrize("crit,one_sil", [("mpe", True), ("mpe", False), ("smbr", True), ("bmmi", True),
                                          ("bmmi", False)])
def test_missing_ref_phone_raises(crit, one_sil):
    lat = _lattice(3)
    logits, log_prior, ref, _ = _data(0)
    c = _criterion(crit, log_prior, one_silence_class=one_sil)
    with pytest.raises(DataError, match=r"utterance 1: .*ref_phone"):
        c(logits.expand(2, T, K), torch.tensor([T, T]),
          [SeqSupervision(lat, ref, TID2PHONE[ref + 1]), SeqSupervision(lat, ref)])


@pytest.mark.parametrize("one_sil", [True, False])
def test_mmi_needs_no_ref_phone(one_sil):
    lat = _lattice(3)
    logits, log_prior, ref, ref_phone = _data(0)
    c = _criterion("mmi", log_prior, one_silence_class=one_sil)
    a = c(logits, torch.tensor([T]), [SeqSupervision(lat, ref)])
    b = c(logits, torch.tensor([T]), [SeqSupervision(lat, ref, ref_phone)])
    assert a.criterion_loss == b.criterion_loss and math.isfinite(a.criterion_loss)


@pytest.mark.parametrize("crit", ["mpe", "smbr", "bmmi"])
def test_missing_lattice_tids_raise(crit):
    lat = _lattice(3)
    lat.tid = None
    logits, log_prior, ref, ref_phone = _data(0)
    c = _criterion(crit, log_prior, one_silence_class=crit != "smbr")
    with pytest.raises(DataError, match=r"Lattice\.tid"):
        c(logits, torch.tensor([T]), [SeqSupervision(lat, ref, ref_phone)])


def test_smbr_silence_rule_needs_tid2phone():
    cfg = SequenceConfig(criterion="smbr", one_silence_class=False)
    with pytest.raises(ValueError, match="tid2phone"):
        SequenceCriterion(cfg, torch.zeros(K), tid2phone=None, silence_phones=SIL)
    SequenceCriterion(cfg, torch.zeros(K), tid2phone=None, silence_phones=[])  # nothing to look up
