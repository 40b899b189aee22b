"""HF optimizer core: exact G v, CG, stopping rule, backtracking, damping, one-step exactness, resume."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from hfasr.criteria.curvature import SoftmaxFisher, SquaredError
from hfasr.optim import (
    GaussNewton,
    HessianFree,
    HFConfig,
    pcg,
    softmax_ce,
    tensor_objective,
)
from hfasr.optim.cg import should_stop, storage_schedule
from hfasr.optim.gn import flatten, unflatten
from hfasr.optim.hf import backtrack, levenberg_marquardt

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.py)


class TinyRNN(nn.Module):
    """Explicit tanh RNN (B, T, D) -> logits (B, T, K); optionally returns pre-activations."""

    def __init__(self, d=3, h=4, k=3, structural=False):
        super().__init__()
        self.inp = nn.Linear(d, h)
        self.rec = nn.Linear(h, h, bias=False)
        self.out = nn.Linear(h, k)
        self.structural = structural

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features, dtype=x.dtype)
        outs, pre = [], []
        for t in range(x.shape[1]):
            a = self.inp(x[:, t]) + self.rec(h)
            h = torch.tanh(a)
            pre.append(a)
            outs.append(self.out(h))
        z = torch.stack(outs, 1)
        return (z, [torch.stack(pre, 1)]) if self.structural else z


def _explicit_gn(model, x, curv_matrix_fn, normalizer):
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())

    def fn(flat):
        ps, o = [], 0
        for p in params:
            ps.append(flat[o : o + p.numel()].view_as(p))
            o += p.numel()
        out = functional_call(model, dict(zip(names, ps)), (x,))
        return out[0] if isinstance(out, tuple) else out

    theta = flatten(params)
    z = fn(theta)
    J = jacrev(fn)(theta).reshape(z.numel(), -1)
    H = curv_matrix_fn(z)
    return J.T @ H @ J / normalizer, z


def _softmax_block(z):
    y = torch.softmax(z, -1).reshape(-1, z.shape[-1])
    blocks = [torch.diag(r) - torch.outer(r, r) for r in y]
    return torch.block_diag(*blocks)


@pytest.mark.parametrize("kind", ["dnn", "rnn"])
@pytest.mark.parametrize("mode", ["linearize", "double-vjp"])
def test_gv_equals_explicit(kind, mode):
    torch.manual_seed(0)
    if kind == "dnn":
        model = nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 3)).double()
        x = torch.randn(7, 4, dtype=torch.float64)
    else:
        model = TinyRNN().double()
        x = torch.randn(2, 5, 3, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    G, _ = _explicit_gn(model, x, _softmax_block, normalizer=11.0)
    gn = GaussNewton(lambda ps: functional_call(model, dict(zip(names, ps)), (x,)), params, lambda zz: SoftmaxFisher(zz),
                     normalizer=11.0, jvp_mode=mode)
    for _ in range(3):
        v = torch.randn(G.shape[0], dtype=torch.float64)
        assert torch.allclose(gn(v), G @ v, atol=1e-10, rtol=1e-6)
    # PSD and symmetric
    u, v = torch.randn(2, G.shape[0], dtype=torch.float64)
    assert abs(float(u @ gn(v) - v @ gn(u))) < 1e-10
    assert float(v @ gn(v)) >= -1e-12


@pytest.mark.parametrize("mode", ["linearize", "double-vjp"])
def test_structural_damping_term(mode):
    torch.manual_seed(1)
    model = TinyRNN(structural=True).double()
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())
    theta = flatten(params)

    def split(flat):
        return dict(zip(names, unflatten(flat, params)))

    z, (a,) = functional_call(model, split(theta), (x,))
    Jz = jacrev(lambda f: functional_call(model, split(f), (x,))[0])(theta).reshape(z.numel(), -1)
    Ja = jacrev(lambda f: functional_call(model, split(f), (x,))[1][0])(theta).reshape(a.numel(), -1)
    D = torch.diag((1 - torch.tanh(a) ** 2).reshape(-1))
    mu = 0.3
    G = (Jz.T @ _softmax_block(z) @ Jz + mu * Ja.T @ D @ Ja) / 5.0
    gn = GaussNewton(lambda ps: functional_call(model, dict(zip(names, ps)), (x,)), params, lambda zz: SoftmaxFisher(zz),
                     normalizer=5.0, structural_weights=lambda acts: [1 - torch.tanh(acts[0]) ** 2], jvp_mode=mode)
    v = torch.randn(theta.numel(), dtype=torch.float64)
    assert torch.allclose(gn(v, mu), G @ v, atol=1e-10, rtol=1e-6)


def test_softmax_fisher_sample_unbiased():
    torch.manual_seed(0)
    z = torch.randn(3, 4, dtype=torch.float64)
    c = SoftmaxFisher(z)
    H = _softmax_block(z)
    gen = torch.Generator().manual_seed(0)
    acc = torch.zeros_like(H)
    n = 20000
    for _ in range(n):
        s = c.sample(gen).reshape(-1)
        acc += torch.outer(s, s)
    assert torch.allclose(acc / n, H, atol=0.02)


def test_chapelle_erhan_diag_estimate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    G, _ = _explicit_gn(model, x, _softmax_block, normalizer=6.0)
    gn = GaussNewton(lambda ps: functional_call(model, dict(zip(names, ps)), (x,)), params, SoftmaxFisher, normalizer=6.0)
    gen = torch.Generator().manual_seed(1)
    n = 4000
    est = sum(gn.sample_gradient(gen) ** 2 for _ in range(n)) / (n * 6.0)
    assert torch.allclose(est, torch.diag(G), atol=0.1 * float(torch.diag(G).max()))


def test_cg_matches_solve():
    torch.manual_seed(0)
    for precond in (False, True):
        Q = torch.randn(30, 30, dtype=torch.float64)
        A = Q @ Q.T + 0.5 * torch.eye(30, dtype=torch.float64)
        b = torch.randn(30, dtype=torch.float64)
        M = torch.diag(A) if precond else None
        res = pcg(A.mv, b, precond=M, max_iters=200, tol=1e-14)
        assert torch.allclose(res.x, torch.linalg.solve(A, b), atol=1e-8)
        # φ is the quadratic's value at each iterate, decreasing monotonically
        assert all(p2 <= p1 + 1e-12 for p1, p2 in zip(res.phis, res.phis[1:]))
        xs = res.x
        assert res.phis[-1] == pytest.approx(float(0.5 * xs @ A @ xs - b @ xs), rel=1e-9)


def test_cg_warm_start_and_storage():
    torch.manual_seed(0)
    Q = torch.randn(40, 40, dtype=torch.float64)
    A = Q @ Q.T + torch.eye(40, dtype=torch.float64)
    b = torch.randn(40, dtype=torch.float64)
    x_star = torch.linalg.solve(A, b)
    res = pcg(lambda v: A @ v, b, x0=0.95 * x_star, max_iters=3)
    assert float(torch.norm(res.x - x_star)) < 0.05 * float(torch.norm(x_star))
    res = pcg(lambda v: A @ v, b, max_iters=20, tol=0.0)
    assert [i for i, _ in res.iterates] == [5, 7, 9, 11, 15, 19, 20]
    assert storage_schedule(40) == [5, 7, 9, 11, 15, 19, 25, 32]


def test_stopping_rule_hand_sequences():
    # k = max(10, ceil(0.1 i)); stop when φ_{i-k} < 0 and (φ_i − φ_{i−k})/φ_i < k·tol
    flat = [-1.0] * 30
    assert not should_stop(flat, 10, 5e-4)  # i must exceed k
    assert should_stop(flat, 11, 5e-4)  # no progress over 10 iterations
    steady = [-float(i) for i in range(1, 31)]  # progress 10/φ_i, large relative to 10·tol
    assert not should_stop(steady, 20, 5e-4)
    slow = [-100.0 - 0.001 * i for i in range(1, 31)]  # relative progress 1e-4·… < k·tol
    assert should_stop(slow, 15, 5e-4)
    pos = [1.0] * 30  # φ_{i-k} ≥ 0: never stop
    assert not should_stop(pos, 25, 5e-4)
    assert not should_stop(flat, 11, 5e-4, min_iters=20)


def test_backtracking_hand_made():
    vals = [5.0, 3.0, 2.0, 2.5, 4.0]  # f at stored iterates 0..4
    assert backtrack(lambda j: vals[j], 4) == 2
    assert backtrack(lambda j: [1.0, 2.0, 3.0][j], 2) == 0
    assert backtrack(lambda j: [3.0, 2.0, 1.0][j], 2) == 2


def test_damping_updates():
    cfg = HFConfig()
    assert levenberg_marquardt(1.0, 0.1, cfg) == pytest.approx(1.5)
    assert levenberg_marquardt(1.0, 0.5, cfg) == 1.0
    assert levenberg_marquardt(1.0, 0.9, cfg) == pytest.approx(2 / 3)
    assert levenberg_marquardt(1.0, float("nan"), cfg) == pytest.approx(1.5)
    assert levenberg_marquardt(1.0, -math.inf, cfg) == pytest.approx(1.5)
    assert levenberg_marquardt(cfg.damping_max, 0.0, cfg) == cfg.damping_max


def _linear_problem(n=200, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, 1, generator=g, dtype=torch.float64)
    Y = X @ w + 0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return X, Y


def _se(out, t):
    return 0.5 * ((out - t) ** 2).sum(), int(t.shape[0])


def test_one_update_minimizes_quadratic_exactly():
    X, Y = _linear_problem()
    model = nn.Linear(6, 1).double()
    obj = tensor_objective(model, _se, lambda z, t: SquaredError(z), (X, Y), curvature_fraction=1.0)
    cfg = HFConfig(damping=1e-10, damping_min=1e-12, cg_max_iters=100, cg_tol=1e-12, preconditioner="none", backtracking=True)
    opt = HessianFree(model.parameters(), cfg)
    st = opt.step(obj)
    Xa = torch.cat([X, torch.ones(X.shape[0], 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(Xa, Y).solution.reshape(-1)
    got = torch.cat([model.weight.reshape(-1), model.bias.reshape(-1)]).detach()
    assert torch.allclose(got, sol, atol=1e-8)
    assert st.accepted and st.alpha == 1.0 and st.rho == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("damping_matrix", ["identity", "block"])
def test_rho_from_cg_phi_is_exact_on_a_quadratic_with_heavy_damping(damping_matrix):
    """With structural damping off, ρ's pᵀGp comes from CG's φ minus the damping term (the
    curvature sample is freed before the held-out passes, no extra G v product): on a quadratic
    the damping-free model is exact, so ρ = 1 even for a heavily damped, truncated CG step."""
    X, Y = _linear_problem()
    model = nn.Linear(6, 1).double()
    obj = tensor_objective(model, _se, lambda z, t: SquaredError(z), (X, Y), curvature_fraction=1.0)
    cfg = HFConfig(damping=30.0, cg_max_iters=3, preconditioner="none", backtracking=False, line_search=False,
                   damping_matrix=damping_matrix)
    opt = HessianFree(model.parameters(), cfg)
    for k in range(2):  # the second update starts CG from the warm start (φ0 ≠ 0; one product for r0)
        st = opt.step(obj)
        assert st.accepted and st.rho == pytest.approx(1.0, abs=1e-9)
        assert st.products == st.cg_iters + k


def _classification(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(1200, 8, generator=g)
    W = torch.randn(8, 4, generator=g) * 2
    y = (X @ W + 0.3 * torch.randn(1200, 4, generator=g)).argmax(1)
    return X, y


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Sigmoid(), nn.Linear(16, 4))


@pytest.mark.parametrize("precond", ["none", "martens", "chapelle-erhan"])
def test_hf_trains_softmax_mlp(precond):
    X, y = _classification()
    model = _mlp()
    obj = tensor_objective(model, softmax_ce, lambda z, t: SoftmaxFisher(z), (X[:1000], y[:1000]), heldout=(X[1000:], y[1000:]),
                          curvature_fraction=0.2, chunk_size=250)
    opt = HessianFree(model.parameters(), HFConfig(cg_max_iters=40, preconditioner=precond, rho_data="heldout", backtrack_data="heldout"))
    first = obj.loss("gradient")
    for _ in range(6):
        st = opt.step(obj)
    assert obj.loss("gradient") < 0.7 * first
    assert st.heldout_after is not None and st.heldout_after < st.heldout_before + 0.05


def test_resume_is_bit_identical():
    X, y = _classification(1)

    def make():
        model = _mlp(3)
        obj = tensor_objective(model, softmax_ce, lambda z, t: SoftmaxFisher(z), (X, y), curvature_fraction=0.1, chunk_size=300)
        opt = HessianFree(model.parameters(), HFConfig(cg_max_iters=30, preconditioner="chapelle-erhan", seed=7))
        return model, obj, opt

    model, obj, opt = make()
    for _ in range(4):
        opt.step(obj)
    full = [p.detach().clone() for p in model.parameters()]

    model, obj, opt = make()
    for _ in range(2):
        opt.step(obj)
    ckpt = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    del model, obj, opt  # "kill"
    model, obj, opt = make()
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    for _ in range(2):
        opt.step(obj)
    assert all(torch.equal(a, b) for a, b in zip(full, model.parameters()))
    assert opt.updates == 4


class _NanCurvature(SoftmaxFisher):
    def hvp(self, u):
        return super().hvp(u) * float("nan")


def test_non_finite_curvature_rejects_step():
    X, y = _classification()
    model = _mlp()
    obj = tensor_objective(model, softmax_ce, lambda z, t: _NanCurvature(z), (X, y), curvature_fraction=0.1)
    opt = HessianFree(model.parameters(), HFConfig(damping=2.0, preconditioner="none"))
    before = [p.detach().clone() for p in model.parameters()]
    st = opt.step(obj)
    assert not st.accepted and st.damping_after == pytest.approx(3.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_non_finite_loss_raises():
    X, y = _classification()
    X = X.clone()
    X[0, 0] = float("nan")
    model = _mlp()
    obj = tensor_objective(model, softmax_ce, lambda z, t: SoftmaxFisher(z), (X, y))
    with pytest.raises(FloatingPointError, match="non-finite"):
        HessianFree(model.parameters()).step(obj)


def _subset_setup(reuse: str, seed=5):
    from hfasr.optim import SubsetObjective

    X, y = _classification(seed)
    model = _mlp(seed)
    parts = [tensor_objective(model, softmax_ce, lambda z, t: SoftmaxFisher(z), (X[i:1000:4], y[i:1000:4]), curvature_fraction=0.3)
             for i in range(4)]
    held = tensor_objective(model, softmax_ce, lambda z, t: SoftmaxFisher(z), (X[1000:], y[1000:]))
    obj = SubsetObjective(parts, held)
    cfg = HFConfig(cg_max_iters=30, gradient_reuse=reuse, rho_data="heldout", backtrack_data="heldout", linesearch_data="heldout")
    return model, obj, HessianFree(model.parameters(), cfg), parts


def test_sag_combines_stored_gradients():
    _, obj, opt, parts = _subset_setup("sag")
    gen = torch.Generator().manual_seed(0)
    for k in range(3):
        opt.step(obj)
        assert opt.history[-1].subset == k
    assert sorted(opt.stored_gradients) == [0, 1, 2]
    # the 4th update: SAG = mean of the 3 stored + the fresh gradient of subset 3
    obj.begin_update(3)
    _, g3, _ = parts[3].gradient(gen)
    expect = (sum(opt.stored_gradients.values()) + g3) / 4
    got, w = opt._combine_gradients(obj, g3)
    assert w == 0.25 and torch.allclose(got, expect)


def test_dynamic_weights_follow_heldout_and_resume():
    model, obj, opt, _ = _subset_setup("dynamic")
    for _ in range(6):
        opt.step(obj)
    h = opt.history
    assert all(1 / 4 - 1e-9 <= s.fresh_weight <= 1.0 for s in h)
    for prev, cur in itertools.pairwise(h[1:]):  # weight moves up after a worse held-out loss, down after a better one
        worse = (not prev.accepted) or prev.heldout_after > prev.heldout_before
        S = min(prev.update, 4)
        if worse:
            assert cur.fresh_weight >= min(1.0, prev.fresh_weight) - 1e-12
        else:
            assert cur.fresh_weight <= prev.fresh_weight + 1e-12 or cur.fresh_weight == pytest.approx(1 / S)
    sd = copy.deepcopy(opt.state_dict())
    state_model = copy.deepcopy(model.state_dict())
    opt.step(obj)
    after = [p.detach().clone() for p in model.parameters()]
    model2, obj2, opt2, _ = _subset_setup("dynamic")
    model2.load_state_dict(state_model)
    opt2.load_state_dict(sd)
    opt2.step(obj2)
    assert all(torch.equal(a, b) for a, b in zip(after, model2.parameters()))


class _Subset:
    """Just what ``HessianFree._combine_gradients`` reads of an objective: the subset index."""

    def __init__(self, subset):
        self.subset = subset


def _combine_sequence(reuse, grads, **kw):
    """``_combine_gradients`` for update k = 0, 1, ... with (subset, fresh gradient) ``grads[k]``."""
    opt = HessianFree(nn.Linear(1, 1).parameters(), HFConfig(gradient_reuse=reuse, **kw))
    out = []
    for k, (s, g) in enumerate(grads):
        opt.updates = k  # what step() has counted before update k + 1
        out.append(opt._combine_gradients(_Subset(s), torch.tensor(g, dtype=torch.float64)))
    return opt, out


def _f64(*v):
    return torch.tensor(v, dtype=torch.float64)


_A0, _A1, _A2, _B0, _B1 = [3.0, 0.0], [0.0, 6.0], [3.0, 3.0], [6.0, 3.0], [1.0, 1.0]
_SEQ = [(0, _A0), (1, _A1), (2, _A2), (0, _B0), (1, _B1)]  # 3 subsets, then subsets 0 and 1 again


def test_saga_corrects_stale_mean_by_hand():
    opt, out = _combine_sequence("saga", _SEQ)
    t = _f64
    # start-up (a subset's first visit): SAG's mean over the subsets seen so far
    assert torch.equal(out[0][0], t(3.0, 0.0)) and out[0][1] == 1.0
    assert torch.equal(out[1][0], t(1.5, 3.0)) and out[1][1] == 0.5
    assert torch.allclose(out[2][0], t(2.0, 3.0)) and out[2][1] == pytest.approx(1 / 3)
    # subset 0 again: b0 − a0 + (a0 + a1 + a2)/3 = (6,3) − (3,0) + (2,3) = (5, 6)
    assert torch.allclose(out[3][0], t(5.0, 6.0)) and out[3][1] == 1.0
    # subset 1 again, a0 now replaced by b0: b1 − a1 + (b0 + a1 + a2)/3 = (1,−5) + (3,4) = (4, −1)
    assert torch.allclose(out[4][0], t(4.0, -1.0)) and out[4][1] == 1.0
    assert [v.tolist() for v in opt.stored_gradients.values()] == [_B0, _B1, _A2]
    assert opt.stored_at == {0: 3, 1: 4, 2: 2}


def test_decay_weights_stored_gradients_by_age_by_hand():
    opt, out = _combine_sequence("decay", _SEQ[:4], reuse_decay=0.5)
    t = _f64
    assert torch.equal(out[0][0], t(3.0, 0.0)) and out[0][1] == 1.0
    # (0.5·a0 + a1) / 1.5 = (1, 4)
    assert torch.allclose(out[1][0], t(1.0, 4.0)) and out[1][1] == pytest.approx(2 / 3)
    # (0.25·a0 + 0.5·a1 + a2) / 1.75 = (3.75, 6) / 1.75
    assert torch.allclose(out[2][0], t(15 / 7, 24 / 7)) and out[2][1] == pytest.approx(1 / 1.75)
    # subset 0 again: a1 is 2 updates old, a2 1, b0 fresh: (0.25·a1 + 0.5·a2 + b0) / 1.75 = (7.5, 6) / 1.75
    assert torch.allclose(out[3][0], t(30 / 7, 24 / 7)) and out[3][1] == pytest.approx(1 / 1.75)
    assert opt.stored_at == {0: 3, 1: 1, 2: 2}
    # decay 1 is SAG
    _, sag = _combine_sequence("sag", _SEQ)
    _, dec1 = _combine_sequence("decay", _SEQ, reuse_decay=1.0)
    for (a, wa), (b, wb) in zip(sag, dec1):
        assert torch.allclose(a, b) and wa == pytest.approx(wb)


@pytest.mark.parametrize("reuse", ["saga", "decay"])
def test_corrected_reuse_resumes_exactly(reuse):
    model, obj, opt, _ = _subset_setup(reuse)
    for _ in range(5):  # past the start-up: subset 0 is revisited at update 5
        opt.step(obj)
    assert [s.subset for s in opt.history] == [0, 1, 2, 3, 0]
    if reuse == "saga":
        assert opt.history[-1].fresh_weight == 1.0
    else:
        assert opt.history[-1].fresh_weight == pytest.approx(1 / (1 + 0.5 + 0.25 + 0.125))
    sd = copy.deepcopy(opt.state_dict())
    assert sd["stored_at"] == {0: 4, 1: 1, 2: 2, 3: 3}
    state_model = copy.deepcopy(model.state_dict())
    for _ in range(2):
        opt.step(obj)
    after = [p.detach().clone() for p in model.parameters()]
    model2, obj2, opt2, _ = _subset_setup(reuse)
    model2.load_state_dict(state_model)
    opt2.load_state_dict(sd)
    assert opt2.stored_at == sd["stored_at"] and list(opt2.stored_gradients) == list(sd["stored_gradients"])
    for _ in range(2):
        opt2.step(obj2)
    assert all(torch.equal(a, b) for a, b in zip(after, model2.parameters()))
    assert all(torch.equal(opt.stored_gradients[k], opt2.stored_gradients[k]) for k in opt.stored_gradients)


def test_reuse_config_ranges():
    from hfasr.config import ConfigError, load_config
    from hfasr.train.drivers import HFTrainConfig

    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="reuse_decay"):
            HFConfig(gradient_reuse="decay", reuse_decay=bad)
    assert HFConfig(gradient_reuse="decay", reuse_decay=1.0).reuse_decay == 1.0
    with pytest.raises(ConfigError, match="optimizer.reuse_decay"):
        load_config(HFTrainConfig, None, {"optimizer.reuse_decay": 2.0})
    with pytest.raises(ConfigError, match="gradient_reuse"):
        load_config(HFTrainConfig, None, {"optimizer.gradient_reuse": "sag-a"})
    assert load_config(HFTrainConfig, None, {"optimizer.gradient_reuse": "saga"}).optimizer.gradient_reuse == "saga"


def _badly_scaled(matrix, lam, floor):
    """A linear least-squares problem with columns scaled over 4 orders of magnitude, a zeroed
    linear model, its full-batch objective and an HF config with a long exact CG and no step
    control: (X with a ones column, model, objective, config)."""
    X, Y = _linear_problem()
    X = X * torch.tensor([1e-2, 1e-1, 1.0, 1.0, 10.0, 1.0], dtype=torch.float64)
    Xa = torch.cat([X, torch.ones(X.shape[0], 1, dtype=torch.float64)], 1)
    model = nn.Linear(6, 1).double()
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    obj = tensor_objective(model, _se, lambda z, t: SquaredError(z), (X, Y), curvature_fraction=1.0)
    cfg = HFConfig(damping=lam, cg_max_iters=200, cg_tol=1e-14, cg_min_iters=200, preconditioner="martens",
                   damping_matrix=matrix, damping_floor=floor, backtracking=False, line_search=False)
    return Xa, model, obj, cfg


def test_diag_damping_solves_marquardt_system():
    """damping_matrix "diag": the CG step solves (G + λD) p = −g with D = diag/mean(diag) + floor
    (diag: the preconditioner's curvature-diagonal estimate); here checked against a dense solve
    on a badly scaled linear least-squares problem (columns scaled over 4 orders of magnitude)."""
    lam, floor = 0.3, 0.05
    for matrix in ("identity", "diag"):
        Xa, model, obj, cfg = _badly_scaled(matrix, lam, floor)
        opt = HessianFree(model.parameters(), cfg)
        _, g, g2 = obj.gradient(torch.Generator().manual_seed(0))
        opt.step(obj)
        p = torch.cat([model.weight.reshape(-1), model.bias.reshape(-1)]).detach()
        G = Xa.T @ Xa / Xa.shape[0]
        D = torch.eye(7, dtype=torch.float64) if matrix == "identity" else torch.diag(g2 / g2.mean() + floor)
        want = torch.linalg.solve(G + lam * D, -g)
        assert torch.allclose(p, want, rtol=1e-6, atol=1e-9), matrix
    with pytest.raises(ValueError, match="damping_matrix"):
        HessianFree(nn.Linear(2, 1).parameters(), HFConfig(damping_matrix="bogus")).step(
            tensor_objective(nn.Linear(2, 1), _se, lambda z, t: SquaredError(z),
                            (torch.randn(4, 2), torch.randn(4, 1)), curvature_fraction=1.0))


def test_curvature_max_frames_caps_the_sample():
    """curvature_max_frames keeps the first examples of the random sample whose summed sizes fit
    (at least one); without it the sample is curvature_fraction of the examples."""
    from hfasr.data.batching import Batch
    from hfasr.data.utterances import Utterances
    from hfasr.optim import BatchObjective

    lengths = [3, 9, 4, 7, 5, 8, 2, 6] * 5
    data = Utterances(lengths, lambda idx: Batch((torch.zeros(len(idx), 2),), None, sum(lengths[i] for i in idx)), 100)

    class Crit:
        def loss(self, outputs, batch):
            return outputs.sum()

        def curvature(self, outputs, batch):
            return SquaredError(outputs)

    model = nn.Linear(2, 1)
    for cap, n in ((0, 20), (30, None), (1, 1)):
        obj = BatchObjective(model, Crit(), data, curvature_fraction=0.5, curvature_min=1, curvature_max_frames=cap)
        obj.curvature(torch.Generator().manual_seed(3))
        frames = sum(lengths[i] for i in obj._curv)
        if n is not None:
            assert len(obj._curv) == n
        if cap > 1:
            assert frames <= cap and len(obj._curv) < 20


def test_block_damping_scales_each_parameter_tensor():
    """damping_matrix "block": D constant over each parameter tensor, the block's mean diagonal
    estimate over the largest block mean plus the floor; the CG step solves (G + λD) p = −g."""
    from hfasr.optim.hf import damping_diagonal

    diag = torch.tensor([4.0, 2.0, 1e-4, 3e-4, 1e-2], dtype=torch.float64)
    D = damping_diagonal(HFConfig(damping_matrix="block", damping_floor=1e-6), diag, [2, 2, 1])
    want = torch.tensor([1.0, 1.0, 2e-4 / 3, 2e-4 / 3, 1e-2 / 3], dtype=torch.float64) + 1e-6
    assert torch.allclose(D, want)
    with pytest.raises(ValueError, match="block sizes"):
        damping_diagonal(HFConfig(damping_matrix="block"), diag, [2, 2])
    lam, floor = 0.3, 1e-3
    Xa, model, obj, cfg = _badly_scaled("block", lam, floor)
    _, g, g2 = obj.gradient(torch.Generator().manual_seed(0))
    HessianFree(model.parameters(), cfg).step(obj)
    p = torch.cat([model.weight.reshape(-1), model.bias.reshape(-1)]).detach()
    means = torch.stack([g2[:6].mean(), g2[6:].mean()])
    d = means / means.max() + floor
    D = torch.diag(torch.cat([d[0].repeat(6), d[1:]]))
    want = torch.linalg.solve(Xa.T @ Xa / Xa.shape[0] + lam * D, -g)
    assert torch.allclose(p, want, rtol=1e-6, atol=1e-9)
