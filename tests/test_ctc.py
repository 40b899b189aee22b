"""CTC criterion (gradient y − γ, convex curvature), token tables, the BLSTM, and HF on a tiny CTC task."""

from __future__ import annotations

import itertools

import pytest
import torch
from gn_reference import check_gv, explicit_gn
from torch import nn

from hfasr.criteria.ctc import CtcLoss, TokenTable, ctc_count, ctc_curvature, ctc_loss
from hfasr.data.batching import Batch, pad_batch, pad_targets
from hfasr.data.utterances import Utterances
from hfasr.decode.ctc import greedy_ids
from hfasr.errors import DataError
from hfasr.models.blstm import BLSTM, reverse_index, reverse_padded
from hfasr.optim import BatchObjective, HessianFree, HFConfig, SumGaussNewton
from hfasr.optim.objective import CURVATURE_MAX_PADDING

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.py)


# --------------------------------------------------------------------------- brute force
def collapse(path) -> tuple[int, ...]:
    out, prev = [], 0
    for s in path:
        if s != prev and s != 0:
            out.append(s)
        prev = s
    return tuple(out)


def brute_force(z: torch.Tensor, target: tuple[int, ...]):
    """Enumerate all K^T paths: −log p(l|x), γ (T, K) and Cov_{π|l}[φ] (TK, TK)."""
    T, K = z.shape
    lp = torch.log_softmax(z, -1)
    paths = [p for p in itertools.product(range(K), repeat=T) if collapse(p) == target]
    phi = torch.zeros(len(paths), T * K, dtype=z.dtype)
    for i, p in enumerate(paths):
        phi[i, torch.arange(T) * K + torch.tensor(p)] = 1
    logw = phi @ lp.reshape(-1)
    w = torch.softmax(logw, 0)
    gamma = (w @ phi).reshape(T, K)
    cov = (phi * w[:, None]).T @ phi - torch.outer(gamma.reshape(-1), gamma.reshape(-1))
    return -torch.logsumexp(logw, 0), gamma, cov


def _batch():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    lens = torch.tensor([5, 4])
    targets = torch.tensor([[1, 2], [3, 3]])
    tlens = torch.tensor([2, 2])
    return z, lens, targets, tlens


def test_ctc_loss_and_gradient_equal_brute_force():
    z, lens, targets, tlens = _batch()
    z.requires_grad_(True)
    loss, count = ctc_loss(z, lens, targets, tlens, normalize="none")
    (grad,) = torch.autograd.grad(loss, z)
    y = torch.softmax(z.detach(), -1)
    total = 0.0
    for b in range(2):
        L = int(lens[b])
        nll, gamma, _ = brute_force(z.detach()[b, :L], tuple(targets[b, : tlens[b]].tolist()))
        total += float(nll)
        assert torch.allclose(grad[b, :L], y[b, :L] - gamma, atol=1e-10)  # ∂L/∂z = y − γ
        assert torch.all(grad[b, L:] == 0)  # padded frames get nothing
    assert float(loss.detach()) == pytest.approx(total, rel=1e-10)
    assert count == 1
    assert ctc_loss(z, lens, targets, tlens, "utterance")[1] == 2 and ctc_loss(z, lens, targets, tlens, "frame")[1] == 9


def test_ctc_gradient_matches_finite_differences():
    z, lens, targets, tlens = _batch()
    f = lambda zz: float(ctc_loss(zz, lens, targets, tlens, "none")[0])
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ctc_loss(zz, lens, targets, tlens, "none")[0], zz)
    h = 1e-6
    fd = torch.zeros_like(z)
    for idx in itertools.product(*(range(n) for n in z.shape)):
        e = torch.zeros_like(z)
        e[idx] = h
        fd[idx] = (f(z + e) - f(z - e)) / (2 * h)
    assert torch.allclose(grad, fd, atol=1e-7)


def _fd_hessian(z, lens, targets, tlens, h=1e-5):
    def grad(zz):
        zz = zz.clone().requires_grad_(True)
        return torch.autograd.grad(ctc_loss(zz.unsqueeze(0), lens, targets, tlens, "none")[0], zz)[0].reshape(-1)

    cols = []
    for e in torch.eye(z.numel(), dtype=z.dtype):
        e = e.reshape(z.shape) * h
        cols.append((grad(z + e) - grad(z - e)) / (2 * h))
    Hm = torch.stack(cols, 1)
    return 0.5 * (Hm + Hm.T)


def test_convex_curvature_psd_and_upper_bound():
    z, lens, targets, tlens = _batch()
    curv = ctc_curvature(z, lens)
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        u = torch.randn(z.shape, generator=gen, dtype=torch.float64)
        assert float((u * curv.hvp(u)).sum()) >= -1e-12
    u = torch.randn(z.shape, generator=gen, dtype=torch.float64)
    assert torch.all(curv.hvp(u)[1, 4] == 0)  # the padded frame is masked out
    # Explicit matrix on utterance 0: H̃ = blockdiag(diag y − yyᵀ); exact Hessian = H̃ − Cov_post.
    T, K = 5, 4
    Ht = torch.stack([curv.hvp(e.reshape(1, T, K).expand(2, T, K).clone())[0].reshape(-1)
                      for e in torch.eye(T * K, dtype=torch.float64)], 1)
    exact = _fd_hessian(z[0], lens[:1], targets[:1], tlens[:1])  # ctc_loss has no double backward
    _, _, cov = brute_force(z[0], (1, 2))
    assert torch.allclose(exact, Ht - cov, atol=1e-8)
    assert float(torch.linalg.eigvalsh(Ht - exact).min()) >= -1e-10  # the GN curvature dominates
    assert float(torch.linalg.eigvalsh(exact).min()) < -1e-3  # ... the exact one is indefinite


# --------------------------------------------------------------------------- vocabulary
def test_token_table_chars_and_phones(tmp_path):
    tt = TokenTable.from_transcripts(["YES NO", "NO"])
    assert tt.tokens == ["<blk>", "E", "N", "O", "S", "Y", "<space>"]
    ids = tt.encode("YES NO")
    assert ids == [5, 1, 4, 6, 2, 3] and tt.to_text(ids) == "YES NO" and tt.blank == 0
    with pytest.raises(DataError, match="'X'"):
        tt.encode("XES")
    tt.write(tmp_path / "tokens.txt")
    assert TokenTable.read(tmp_path / "tokens.txt").tokens == tt.tokens
    lex = {"YES": ["Y", "EH", "S"], "NO": "N OW"}
    pt = TokenTable.from_lexicon(lex)
    assert pt.tokens == ["<blk>", "EH", "N", "OW", "S", "Y"]
    assert pt.units("YES NO") == ["Y", "EH", "S", "N", "OW"] and pt.to_text(pt.encode("NO")) == "N OW"
    with pytest.raises(DataError, match="MAYBE"):
        pt.encode("MAYBE")
    multi = TokenTable.from_lexicon({"A": [("EY",), ("AH",)]})  # several pronunciations: the first
    assert multi.units("A") == ["EY"]
    targets, tlens = tt.batch(["NO", "YES NO"])
    assert targets.shape == (2, 6) and tlens.tolist() == [2, 6] and targets[0].tolist() == [2, 3, 0, 0, 0, 0]


def test_greedy_decoding():
    z = torch.full((6, 3), -5.0)
    for t, k in enumerate([1, 1, 0, 1, 2, 2]):
        z[t, k] = 5.0
    logp = torch.log_softmax(z, -1)
    assert greedy_ids(logp) == [1, 1, 2]  # repeats merged, a blank separates a real repeat
    assert greedy_ids(logp[:2]) == [1]  # only the valid frames of a padded utterance


# --------------------------------------------------------------------------- BLSTM
def test_blstm_matches_packed_nn_lstm(float64):
    torch.manual_seed(0)
    m = BLSTM(4, 3, hidden_size=5, num_layers=2)
    ref = nn.LSTM(4, 5, num_layers=2, bidirectional=True, batch_first=True)
    H = 5
    perm = torch.cat([torch.arange(0, H), torch.arange(H, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
    with torch.no_grad():  # ours (i, f, o, g), (In, 4H); nn.LSTM (i, f, g, o), (4H, In)
        for l, layer in enumerate(m.layers):
            for d, sfx in enumerate(["", "_reverse"]):
                layer.w_ih[d].copy_(getattr(ref, f"weight_ih_l{l}{sfx}")[perm].T)
                layer.w_hh[d].copy_(getattr(ref, f"weight_hh_l{l}{sfx}")[perm].T)
                layer.bias[d].copy_((getattr(ref, f"bias_ih_l{l}{sfx}") + getattr(ref, f"bias_hh_l{l}{sfx}"))[perm])
        x = torch.randn(3, 7, 4)
        lens = torch.tensor([7, 3, 5])
        z = m(x, lens)
        packed = nn.utils.rnn.pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
        out, _ = nn.utils.rnn.pad_packed_sequence(ref(packed)[0], batch_first=True)
        zr = m.output(out)
    for b in range(3):
        assert torch.allclose(z[b, : lens[b]], zr[b, : lens[b]], atol=1e-12)


def test_reverse_within_lengths():
    x = torch.arange(10.0).reshape(2, 5)
    lens = torch.tensor([5, 3])
    r = reverse_padded(x, reverse_index(lens, 5))
    assert r.tolist() == [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]]


def test_blstm_subsampling_and_cmvn():
    torch.manual_seed(0)
    m = BLSTM(3, 4, hidden_size=4, num_layers=1, subsample=3)
    assert m.output_lengths(torch.tensor([7, 6, 1])).tolist() == [3, 2, 1]
    assert m(torch.randn(2, 7, 3), torch.tensor([7, 6])).shape == (2, 3, 4)
    m.set_cmvn(torch.ones(3), torch.full((3,), 2.0))
    sd = m.state_dict()
    assert torch.equal(sd["cmvn_mean"], torch.ones(3)) and torch.equal(sd["cmvn_std"], torch.full((3,), 2.0))


@pytest.mark.parametrize("mode,mu,sub", [("model", 0.0, 1), ("model", 0.5, 2), ("linearize", 0.5, 1), ("double-vjp", 0.0, 1)])
def test_gv_exact_tiny_blstm(float64, mode, mu, sub):
    torch.manual_seed(2)
    m = BLSTM(3, 4, hidden_size=3, num_layers=2, subsample=sub)
    x = torch.randn(2, 6, 3)
    check_gv(m, x, torch.tensor([6, 4]), mode, mu)


# --------------------------------------------------------------------------- HF on a tiny CTC task
def synthetic_ctc(n: int, seed: int, feat_dim: int = 6, tokens: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Utterances ``(feats (T, F), token ids)`` of 2-4 tokens, each 2-3 frames of a noisy token
    prototype, silence around."""
    g = torch.Generator().manual_seed(1234)
    proto = 2.0 * torch.randn(tokens + 1, feat_dim, generator=g)  # row 0: silence
    g = torch.Generator().manual_seed(seed)
    utts = []
    for _ in range(n):
        seq = torch.randint(1, tokens + 1, (int(torch.randint(2, 5, (1,), generator=g)),), generator=g)
        frames = [0] * int(torch.randint(0, 3, (1,), generator=g))
        for k in seq.tolist():
            frames += [k] * int(torch.randint(2, 4, (1,), generator=g)) + [0] * int(torch.randint(0, 2, (1,), generator=g))
        f = proto[torch.tensor(frames)] + 0.5 * torch.randn(len(frames), feat_dim, generator=g)
        utts.append((f, seq))
    return utts


def ctc_utterances(utts, model: nn.Module, normalize: str = "utterance", max_frames: int = 100) -> Utterances:
    """The utterances as :class:`Utterances` collated like ``CtcTask._utterances`` (hfasr/train/ctc.py)."""

    def collate(idx: list[int]) -> Batch:
        feats, flens = pad_batch([utts[i][0] for i in idx])
        targets, tlens = pad_targets([utts[i][1] for i in idx])
        olens = model.output_lengths(flens)
        return Batch((feats, flens), (targets, tlens, olens), ctc_count(olens, normalize), lengths=olens,
                     names=[f"u{i}" for i in idx])

    return Utterances([int(f.shape[0]) for f, _ in utts], collate, max_frames)


def test_objective_gradient_and_curvature_batch(float64):
    torch.manual_seed(0)
    m = BLSTM(6, 5, hidden_size=4, num_layers=1)
    utts = synthetic_ctc(12, seed=1)
    data = ctc_utterances(utts, m, max_frames=60)
    assert len(data.plan()) > 1  # the gradient runs over several batches
    obj = BatchObjective(m, CtcLoss("utterance"), data, curvature_fraction=0.5, curvature_min=2)
    gen = torch.Generator().manual_seed(0)
    loss, g, g2 = obj.gradient(gen)

    def utt_loss(i: int) -> torch.Tensor:  # one unpadded utterance, summed CTC loss
        f, y = utts[i]
        L = torch.tensor([f.shape[0]])
        return ctc_loss(m(f.unsqueeze(0), L), L, y.unsqueeze(0), torch.tensor([len(y)]), "none")[0]

    def grad_of(loss: torch.Tensor) -> torch.Tensor:
        return torch.cat([q.reshape(-1) for q in torch.autograd.grad(loss, list(m.parameters()))])

    total = sum(utt_loss(i) for i in range(12))
    assert loss == pytest.approx(float(total) / 12, rel=1e-10)
    assert torch.allclose(g, grad_of(total / 12), atol=1e-10)
    # Martens' squared gradients: each gradient batch counts as one example
    want_g2 = sum(grad_of(sum(utt_loss(i) for i in b)) ** 2 for b in data.plan()) / 12
    assert g2 is not None and g2.shape == g.shape and torch.allclose(g2, want_g2, atol=1e-10)
    assert obj.loss("gradient") == pytest.approx(loss, rel=1e-10)

    gn = obj.curvature(gen)
    curv = obj._curv
    assert len(curv) == 6 and len(set(curv)) == 6 and gn.normalizer == 6
    # the sample is bucketed by length: several Gauss-Newton parts, summed ...
    assert len(data.plan(curv, CURVATURE_MAX_PADDING)) > 1 and isinstance(gn, SumGaussNewton)
    # ... equal to the explicit G of one padded batch of the sampled utterances (÷ 6 utterances)
    x, lens = pad_batch([utts[i][0] for i in curv])
    G = explicit_gn(m, x, lens, m.output_lengths(lens), 6.0)
    gen_v = torch.Generator().manual_seed(1)
    for _ in range(2):
        v = torch.randn(g.numel(), generator=gen_v)
        assert torch.allclose(gn(v), G @ v, atol=1e-8 * float(G.abs().max()), rtol=1e-8)
        assert float(v @ gn(v)) >= 0
    with torch.no_grad():
        assert obj.loss("curvature") == pytest.approx(float(sum(utt_loss(i) for i in curv)) / 6, rel=1e-10)
    assert obj.loss("curvature") > 0
    with pytest.raises(ValueError, match="held-out"):
        obj.loss("heldout")


@pytest.mark.parametrize("kind", ["blstm", "mdlstm"])
def test_hf_reduces_ctc_loss(kind):
    torch.manual_seed(0)
    if kind == "blstm":
        m = BLSTM(6, 5, hidden_size=8, num_layers=1)
        cfg = HFConfig(cg_max_iters=30, structural_damping=0.03, rho_data="heldout", backtrack_data="heldout")
        updates = 4
    else:
        from hfasr.models.mdlstm import MDLSTM

        m = MDLSTM(6, 5, hidden_sizes=(2, 4), ff_sizes=(4,), freq_patches=(3,))
        cfg = HFConfig(cg_max_iters=20, structural_damping=0.03, preconditioner="none")
        updates = 3
    train = ctc_utterances(synthetic_ctc(32, seed=2), m)
    held = ctc_utterances(synthetic_ctc(16, seed=3), m)
    obj = BatchObjective(m, CtcLoss("utterance"), train, held, curvature_fraction=0.25, structural=True)
    opt = HessianFree(m.parameters(), cfg)
    first = obj.loss("gradient")
    for _ in range(updates):
        st = opt.step(obj)
    assert obj.loss("gradient") < 0.6 * first, [h.line() for h in opt.history]
    assert any(h.accepted for h in opt.history) and st.products > 0
