"""Batched lattice forward-backward and the sequence criteria against brute-force enumeration."""

from __future__ import annotations

import pytest
import torch
from lattice_utils import enumerate_paths, path_onehots, path_scores, random_lattice

from hfasr.criteria.sequence import SeqSupervision, SequenceConfig, SequenceCriterion
from hfasr.lattice import LatticeBatch

K = 4


def _scores(T, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, K, generator=g, dtype=torch.float64)


def test_forward_backward_matches_enumeration():
    lats = [random_lattice(5, K, seed=s) for s in (1, 2, 3)]
    T = max(l.num_frames for l in lats)
    scores = torch.stack([_scores(T, s) for s in range(3)])
    lb = LatticeBatch(lats)
    w = lb.arc_scores(scores, acoustic_scale=0.7, lm_scale=1.3)
    _, _, logz, post = lb.forward_backward(w, lm_scale=1.3)
    gamma = lb.scatter_frames(post, (3, T, K))
    for b, lat in enumerate(lats):
        paths = enumerate_paths(lat)
        ps = path_scores(lat, paths, scores[b], 0.7, 1.3)
        assert float(logz[b]) == pytest.approx(float(torch.logsumexp(ps, 0)), abs=1e-10)
        p = torch.softmax(ps, 0)
        expect = (p[:, None, None] * path_onehots(lat, paths, K)).sum(0)
        assert torch.allclose(gamma[b, : lat.num_frames], expect, atol=1e-10)
        assert torch.allclose(gamma[b].sum(-1)[: lat.num_frames], torch.ones(lat.num_frames, dtype=torch.float64))


def test_expectation_semiring():
    lat = random_lattice(4, K, seed=7)
    lb = LatticeBatch([lat])
    scores = _scores(4, 0)[None]
    w = lb.arc_scores(scores, 1.0)
    alpha, beta, _, post = lb.forward_backward(w)
    c = torch.randn(lat.num_arcs, dtype=torch.float64)
    ea, eb, etot = lb.expectations(w, alpha, beta, c)
    paths = enumerate_paths(lat)
    p = torch.softmax(path_scores(lat, paths, scores[0], 1.0), 0)
    vals = torch.tensor([float(sum(c[a] for a in arcs)) for arcs, _ in paths], dtype=torch.float64)
    assert float(etot[0]) == pytest.approx(float((p * vals).sum()), abs=1e-10)
    # per-arc conditional expectation
    cq = ea[lb.src] + c + eb[lb.dst]
    for a in range(lat.num_arcs):
        through = [i for i, (arcs, _) in enumerate(paths) if a in arcs]
        if not through:
            continue
        pa = p[through]
        assert float(post[a]) == pytest.approx(float(pa.sum()), abs=1e-10)
        assert float(cq[a]) == pytest.approx(float((pa * vals[through]).sum() / pa.sum()), abs=1e-9)


def _setup(crit, seed=0, T=4, **kw):
    lat = random_lattice(T, K, seed=seed + 11)
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, T, K, generator=g, dtype=torch.float64)
    log_prior = torch.log_softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
    ref = torch.randint(0, K, (T,), generator=g)
    tid2phone = torch.tensor([0, 1, 1, 2, 3], dtype=torch.long)  # tid k+1 -> phone; pdf 0,1 share phone 1
    ref_phone = tid2phone[ref + 1]
    kw.setdefault("lm_scale", 0.8)
    cfg = SequenceConfig(criterion=crit, acoustic_scale=0.5, drop_frames=False, **kw)
    c = SequenceCriterion(cfg, log_prior, tid2phone=tid2phone, silence_phones=[3])
    sup = SeqSupervision(lat, ref, ref_phone)
    return c, logits, torch.tensor([T]), [sup], log_prior, tid2phone


def _brute_loss(crit, c, logits, sups, log_prior, tid2phone):
    lat, ref, ref_phone = sups[0].lattice, sups[0].ref_pdf, sups[0].ref_phone
    kappa = c.cfg.acoustic_scale
    scores = torch.log_softmax(logits[0], -1) - log_prior
    paths = enumerate_paths(lat)

    def acc(arcs, kind):
        # Kaldi's LatticeForwardBackwardMpeVariants (state / phone) and the boosting match (boost)
        tot = 0.0
        for a in arcs:
            k = int(lat.pdf[a])
            if k < 0:
                continue
            t = int(lat.frame[a])
            ph, rp = int(tid2phone[int(lat.tid[a])]), int(ref_phone[t])
            both_sil = ph == 3 and rp == 3
            ok = (k == int(ref[t])) if kind == "state" else (ph == rp)
            if c.cfg.one_silence_class:
                ok = ok or both_sil
            elif kind != "boost":
                ok = ok and ph != 3
            tot += float(ok)
        return tot

    if crit in ("mmi", "bmmi"):
        extra = None
        if crit == "bmmi":
            extra = torch.zeros(lat.num_arcs, dtype=torch.float64)
            for a in range(lat.num_arcs):
                extra[a] = -c.cfg.boost * acc([a], "boost")
        ps = path_scores(lat, paths, scores, kappa, c.cfg.lm_scale, extra=extra)
        num = kappa * float(scores[torch.arange(len(ref)), ref].sum())
        return -num + float(torch.logsumexp(ps, 0))
    ps = path_scores(lat, paths, scores, kappa, c.cfg.lm_scale)
    p = torch.softmax(ps, 0)
    A = torch.tensor([acc(arcs, "state" if crit == "smbr" else "phone") for arcs, _ in paths], dtype=torch.float64)
    return -float((p * A).sum())


@pytest.mark.parametrize("crit,one_sil", [("mmi", True), ("bmmi", True), ("bmmi", False), ("smbr", True),
                                          ("smbr", False), ("mpe", True), ("mpe", False)])
def test_criterion_loss_and_gradient(crit, one_sil):
    for seed in range(3):
        c, logits, lens, sups, lp, t2p = _setup(crit, seed, one_silence_class=one_sil)
        out = c(logits, lens, sups)
        assert out.criterion_loss == pytest.approx(_brute_loss(crit, c, logits, sups, lp, t2p), abs=1e-9)
        # finite differences of the brute-force loss
        eps = 1e-6
        fd = torch.zeros_like(logits)
        for idx in torch.cartesian_prod(*[torch.arange(n) for n in logits.shape]):
            lp_, lm_ = logits.clone(), logits.clone()
            lp_[tuple(idx)] += eps
            lm_[tuple(idx)] -= eps
            fd[tuple(idx)] = (_brute_loss(crit, c, lp_, sups, lp, t2p) - _brute_loss(crit, c, lm_, sups, lp, t2p)) / (2 * eps)
        assert torch.allclose(out.grad, fd, atol=1e-6)


def test_ce_smoothing_adds_ce():
    c, logits, lens, sups, _, _ = _setup("smbr", 1, ce_weight=0.3)
    out = c(logits, lens, sups)
    ce = float(torch.nn.functional.cross_entropy(logits[0], sups[0].ref_pdf, reduction="sum"))
    assert float(out.loss) == pytest.approx(out.criterion_loss + 0.3 * ce, abs=1e-9)


def _cov_den(c, logits, sups, lp):
    lat = sups[0].lattice
    scores = torch.log_softmax(logits[0], -1) - lp
    paths = enumerate_paths(lat)
    p = torch.softmax(path_scores(lat, paths, scores, c.cfg.acoustic_scale, c.cfg.lm_scale), 0)
    phi = path_onehots(lat, paths, K).reshape(len(paths), -1)
    mean = (p[:, None] * phi).sum(0)
    d = phi - mean
    return (p[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0)


@pytest.mark.parametrize("crit", ["mmi", "smbr"])
def test_den_cov_equals_explicit_covariance(crit):
    c, logits, lens, sups, lp, _ = _setup(crit, 2, curvature="den-cov")
    out = c(logits, lens, sups)
    h = c.curvature(logits, out)
    C = _cov_den(c, logits, sups, lp) * c.cfg.acoustic_scale**2
    for s in range(3):
        u = torch.randn(logits.shape, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        assert torch.allclose(h.hvp(u).reshape(-1), C @ u.reshape(-1), atol=1e-10)


def test_mmi_hessian_is_den_covariance():
    """Single-path-numerator MMI: the exact Hessian in the logits is κ² Cov_den (finite differences)."""
    c, logits, lens, sups, _, _ = _setup("mmi", 3, curvature="den-cov")
    out = c(logits, lens, sups)
    h = c.curvature(logits, out)
    u = torch.randn(logits.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    eps = 1e-5
    gp = c(logits + eps * u, lens, sups).grad
    gm = c(logits - eps * u, lens, sups).grad
    assert torch.allclose((gp - gm) / (2 * eps), h.hvp(u), atol=1e-7)


@pytest.mark.parametrize("kind", ["fisher", "den-block", "den-cov"])
@pytest.mark.parametrize("crit", ["mmi", "bmmi", "smbr", "mpe"])
def test_curvature_psd(kind, crit):
    c, logits, lens, sups, _, _ = _setup(crit, 4, curvature=kind, ce_weight=0.1)
    out = c(logits, lens, sups)
    h = c.curvature(logits, out)
    gen = torch.Generator().manual_seed(0)
    n = logits.numel()
    M = torch.stack([h.hvp(torch.eye(n, dtype=torch.float64)[i].reshape(logits.shape)).reshape(-1) for i in range(n)])
    assert torch.allclose(M, M.T, atol=1e-10)
    assert float(torch.linalg.eigvalsh(M).min()) > -1e-10
    for _ in range(5):
        u = torch.randn(logits.shape, generator=gen, dtype=torch.float64)
        assert float((u * h.hvp(u)).sum()) >= -1e-12


def test_den_cov_sample_unbiased():
    c, logits, lens, sups, lp, _ = _setup("mmi", 5, curvature="den-cov")
    out = c(logits, lens, sups)
    h = c.curvature(logits, out)
    C = _cov_den(c, logits, sups, lp) * c.cfg.acoustic_scale**2
    gen = torch.Generator().manual_seed(0)
    n = 3000
    acc = torch.zeros_like(C)
    for _ in range(n):
        s = h.sample(gen).reshape(-1)
        acc += torch.outer(s, s)
    assert torch.allclose(acc / n, C, atol=0.02 * c.cfg.acoustic_scale**2 + 5e-3)


def test_drop_frames():
    c, logits, lens, sups, _, _ = _setup("mmi", 0)
    c.cfg.drop_frames = True
    lat = sups[0].lattice
    # a reference pdf that no arc at frame 0 carries -> frame 0 dropped
    present = {int(k) for k, t in zip(lat.pdf, lat.frame) if int(t) == 0 and int(k) >= 0}
    missing = next(k for k in range(K + 1) if k not in present)
    if missing >= K:
        pytest.skip("all pdfs present at frame 0")
    sups[0].ref_pdf = sups[0].ref_pdf.clone()
    sups[0].ref_pdf[0] = missing
    out = c(logits, lens, sups)
    assert torch.all(out.grad[0, 0] == 0) and bool(out.grad[0, 1:].abs().sum() > 0)
