"""Curvature spectra (hfasr.optim.spectrum): SLQ against dense eigendecompositions."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from hfasr.criteria.curvature import SoftmaxFisher
from hfasr.optim import HessianFree, HFConfig, softmax_ce, tensor_objective
from hfasr.optim.spectrum import (
    SpectrumConfig,
    curvature_diagonal,
    gate_blocks,
    hf_system,
    parameter_blocks,
    rademacher,
    restrict,
    slq,
    spectra,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.py)


def dense(op, dim: int, dtype=torch.float64) -> torch.Tensor:
    """The matrix of ``op``, column by column from products with unit vectors."""
    eye = torch.eye(dim, dtype=dtype)
    return torch.stack([op(eye[i]) for i in range(dim)], 1)


def hutchinson_sd(A: torch.Tensor, probes: int) -> float:
    """Standard deviation of the mean of ``probes`` Rademacher estimates vᵀAv of tr(A)."""
    off = float((A * A).sum() - (A.diagonal() ** 2).sum())
    return math.sqrt(2 * off / probes)


def integral(s) -> float:
    grid, dens = s.density(sigma=0.1, points=2000)
    return float(torch.trapezoid(dens, grid.log10()))


# ------------------------------------------------------------------------------ explicit SPD
@pytest.fixture
def spd():
    gen = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(50, 50, generator=gen, dtype=torch.float64))
    lam = torch.logspace(-4, 2, 50, dtype=torch.float64)
    return (Q * lam) @ Q.T, lam


def test_spd_extreme_eigenvalues_exact_with_full_krylov(spd):
    A, lam = spd
    s = slq(lambda v: A @ v, 50, SpectrumConfig(probes=3, steps=50))
    assert s.lambda_max == pytest.approx(100.0, rel=1e-10)
    assert s.lambda_min_ritz == pytest.approx(1e-4, rel=1e-6)
    for nodes in s.nodes:  # every probe's Gauss nodes are the eigenvalues
        assert torch.allclose(torch.tensor(nodes, dtype=torch.float64), lam, rtol=1e-7, atol=1e-11)
    assert s.products == 150


def test_spd_few_steps_top_ritz_within_residual_bound(spd):
    A, _ = spd
    s = slq(lambda v: A @ v, 50, SpectrumConfig(probes=2, steps=20))
    err = abs(s.lambda_max - 100.0)
    assert err <= s.ritz_top_residual[0] + 1e-10
    assert s.lambda_max == pytest.approx(100.0, rel=1e-6)
    assert all(a >= b for a, b in zip(s.ritz_top, s.ritz_top[1:]))


def test_spd_density_integral_and_moments(spd):
    A, _ = spd
    cfg = SpectrumConfig(probes=16, steps=12, seed=5)
    s = slq(lambda v: A @ v, 50, cfg)
    assert sum(sum(w) for w in s.weights) == pytest.approx(16.0, rel=1e-10)
    assert s.null_fraction == 0.0
    assert integral(s) == pytest.approx(50.0, rel=1e-6)
    # Gauss quadrature with ≥ 2 nodes is exact for v'Av and v'A²v: the moments are Hutchinson's
    V = rademacher(50, 16, 5)
    assert s.moment(1) == pytest.approx(float(((V @ A) * V).sum(1).mean()), rel=1e-9)
    assert s.moment(2) == pytest.approx(float(((V @ A @ A) * V).sum(1).mean()), rel=1e-9)
    # ... and within sampling tolerance of the true traces
    assert abs(s.moment(1) - float(A.trace())) <= 4 * hutchinson_sd(A, 16)
    assert abs(s.moment(2) - float((A @ A).trace())) <= 4 * hutchinson_sd(A @ A, 16)


def test_spd_condition_numbers_and_quantile(spd):
    A, lam = spd
    s = slq(lambda v: A @ v, 50, SpectrumConfig(probes=8, steps=50, quantile=0.2), damping=1e-3)
    assert float(lam[0]) - 1e-12 <= s.lambda_min <= float(lam[-1])
    assert s.condition() == pytest.approx((s.lambda_max + 1e-3) / (s.lambda_min + 1e-3))
    assert s.condition_worst() == pytest.approx((100 + 1e-3) / (1e-4 + 1e-3), rel=1e-6)
    assert s.condition_worst() >= s.condition()
    assert s.condition(0.0) == pytest.approx(s.lambda_max / s.lambda_min)
    # about a third of the log-spaced eigenvalues lie below 1e-2
    assert 0.1 < s.fraction_below(1e-2) < 0.6


def test_deterministic_given_seed(spd):
    A, _ = spd

    def run(seed):
        d = slq(lambda v: A @ v, 50, SpectrumConfig(probes=3, steps=10, seed=seed)).to_dict()
        d.pop("seconds")
        return d

    assert run(1) == run(1)
    assert run(1)["nodes"] != run(2)["nodes"]


def test_to_dict_plain_and_summary(spd):
    A, _ = spd
    blocks = parameter_blocks([("a.weight", torch.zeros(5, 4)), ("a.bias", torch.zeros(5)),
                               ("b.weight", torch.zeros(5, 5))])
    s = spectra(lambda v: A @ v, 50, blocks, SpectrumConfig(probes=2, steps=8), name="A", damping=0.1)
    d = json.loads(json.dumps(s.to_dict()))
    assert d["dim"] == 50 and [b["name"] for b in d["blocks"]] == ["a", "b"]
    assert d["blocks"][0]["dim"] == 25
    for key in ("lambda_max", "lambda_min", "condition", "condition_worst", "trace", "trace_sq", "null_fraction"):
        assert isinstance(d[key], float)
    text = s.summary()
    assert "lambda_max" in text and "kappa@0.1" in text and len(text.splitlines()) == 3


def test_float32_operator(spd):
    A, _ = spd
    A32 = A.float()
    s = slq(lambda v: A32 @ v, 50, SpectrumConfig(probes=2, steps=50), op_dtype=torch.float32)
    assert s.lambda_max == pytest.approx(100.0, rel=1e-5)
    assert s.null_tol == pytest.approx(10 * torch.finfo(torch.float32).eps)


# ------------------------------------------------------------------------------ blocks
def test_parameter_blocks_partition():
    named = [("net.0.weight", torch.zeros(3, 2)), ("net.0.bias", torch.zeros(3)), ("net.2.weight", torch.zeros(2, 3)),
             ("net.2.bias", torch.zeros(2)), ("scale", torch.zeros(()))]
    by_module = parameter_blocks(named)
    assert [(b.name, b.size) for b in by_module] == [("net.0", 9), ("net.2", 8), ("scale", 1)]
    assert torch.equal(torch.cat([b.index for b in by_module]), torch.arange(18))
    assert [b.name for b in parameter_blocks(named, "parameter")] == [n for n, _ in named]
    assert [(b.name, b.size) for b in parameter_blocks(named, 1)] == [("net", 17), ("scale", 1)]
    assert [b.name for b in parameter_blocks(named, lambda n: n.endswith("bias") and "bias" or "w")] == ["w", "bias"]
    with pytest.raises(ValueError):
        parameter_blocks(named, "layer")


def test_gate_blocks_split_lstm_gates():
    H, In = 2, 3
    named = [("layers.0.w_ih", torch.zeros(2, In, 4 * H)), ("layers.0.w_hh", torch.zeros(2, H, 4 * H)),
             ("layers.0.bias", torch.zeros(2, 4 * H)), ("output.weight", torch.zeros(4, 4))]
    blocks = gate_blocks(named)
    assert [b.name for b in blocks] == ["layers.0:i", "layers.0:f", "layers.0:o", "layers.0:g", "output"]
    assert [b.size for b in blocks] == [2 * In * H + 2 * H * H + 2 * H] * 4 + [16]
    assert torch.equal(torch.cat([b.index for b in blocks]).sort().values, torch.arange(48 + 32 + 16 + 16))
    # the forget gate of w_ih: last-axis columns H..2H of every (direction, input) row
    f_ih = torch.arange(2 * In * 4 * H).reshape(2, In, 4 * H)[..., H : 2 * H].reshape(-1)
    assert set(f_ih.tolist()) <= set(blocks[1].index.tolist())


# ------------------------------------------------------------------------------ tiny DNN + CE
@pytest.fixture
def tiny(float64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4))
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(12, 5, generator=gen)
    y = torch.randint(0, 4, (12,), generator=gen)
    # 12 frames × 3 = rank ≤ 36 < 64 parameters: G is rank-deficient; chunks of 5: a sum of batches
    obj = tensor_objective(model, softmax_ce, lambda z, t: SoftmaxFisher(z), (X, y), curvature_fraction=1.0,
                           curvature_min=12, chunk_size=5)
    return model, obj


def test_gauss_newton_spectrum_matches_dense(tiny):
    _, obj = tiny
    sys_ = hf_system(obj, HFConfig(damping=0.1), 0.1, torch.Generator().manual_seed(0))
    dim = sys_.dim
    assert dim == 64
    G = dense(sys_.curvature(), dim)
    assert torch.allclose(G, G.T, atol=1e-12)
    ev = torch.linalg.eigvalsh(G)
    s = slq(sys_.curvature(), dim, SpectrumConfig(probes=4, steps=dim, seed=0), damping=0.1, label="G")
    assert s.lambda_max == pytest.approx(float(ev[-1]), rel=1e-9)
    assert abs(s.lambda_min_ritz) <= 1e-10 * float(ev[-1])  # rank-deficient: λ_min = 0
    assert s.null_fraction == pytest.approx(float((ev <= s.null_tol * ev[-1]).double().mean()), abs=0.15)
    # the non-null Gauss nodes of one probe are the non-null eigenvalues
    tol = 1e-8 * float(ev[-1])
    nodes = torch.tensor(s.nodes[0], dtype=torch.float64)
    assert torch.allclose(nodes[nodes > tol], ev[ev > tol], rtol=1e-7, atol=1e-10)
    # density (+ null mass) integrates to the dimension; moments within sampling tolerance
    assert integral(s) + s.null_fraction * dim == pytest.approx(dim, rel=1e-6)
    s16 = slq(sys_.curvature(), dim, SpectrumConfig(probes=16, steps=10, seed=2))
    assert abs(s16.moment(1) - float(G.trace())) <= 4 * hutchinson_sd(G, 16)
    assert abs(s16.moment(2) - float((G @ G).trace())) <= 4 * hutchinson_sd(G @ G, 16)
    # the damped operator's κ: (λ_max + λ) / (λ_min + λ) with λ_min = 0 in the worst case
    assert s.condition_worst() == pytest.approx((float(ev[-1]) + 0.1) / 0.1, rel=1e-8)
    assert s.condition() == pytest.approx(s.condition_worst())  # > 5 % null: λ_min(q) = 0
    nonnull = ev[ev > s.null_tol * ev[-1]]
    assert float(nonnull[0]) * (1 - 1e-6) <= s.lambda_min_nonnull <= float(nonnull[-1])
    assert s.condition_nonnull() < s.condition()


def test_block_restriction_equals_dense_diagonal_block(tiny):
    model, obj = tiny
    sys_ = hf_system(obj, HFConfig(), 1.0, torch.Generator().manual_seed(0))
    G = dense(sys_.curvature(), sys_.dim)
    blocks = parameter_blocks(model.named_parameters())
    assert [(b.name, b.size) for b in blocks] == [("0", 36), ("2", 28)]
    Gb = dense(restrict(sys_.curvature(), blocks[1].index, sys_.dim), blocks[1].size)
    assert torch.allclose(Gb, G[blocks[1].index][:, blocks[1].index], atol=1e-12)
    s = spectra(sys_.curvature(), sys_.dim, blocks, SpectrumConfig(probes=2, steps=64))
    for b, sb in zip(blocks, s.blocks):
        ev = torch.linalg.eigvalsh(G[b.index][:, b.index])
        assert sb.name == b.name and sb.dim == b.size
        assert sb.lambda_max == pytest.approx(float(ev[-1]), rel=1e-9)
        assert sb.lambda_min_ritz == pytest.approx(float(ev[0]), abs=1e-9 * float(ev[-1]))
        # steps ≥ block size: the non-null Gauss nodes of a probe are the block's non-null eigenvalues
        tol = 1e-8 * float(ev[-1])
        nodes = torch.tensor(sb.nodes[0], dtype=torch.float64)
        assert torch.allclose(nodes[nodes > tol], ev[ev > tol], rtol=1e-7, atol=1e-10)
    # the whole operator's λ_max bounds every diagonal block's (Cauchy interlacing)
    assert all(sb.lambda_max <= s.lambda_max * (1 + 1e-12) for sb in s.blocks)


def test_preconditioned_operator_equals_dense(tiny):
    _, obj = tiny
    lam = 0.3
    cfg = HFConfig(damping=lam, preconditioner="martens")
    sys_ = hf_system(obj, cfg, lam, torch.Generator().manual_seed(0))
    _, _, g2 = obj.gradient(torch.Generator())
    assert torch.allclose(sys_.precond, (g2 + lam).pow(0.75))
    G = dense(sys_.curvature(), sys_.dim)
    r = sys_.precond.rsqrt()
    expect = r[:, None] * (G + lam * torch.eye(sys_.dim)) * r[None, :]
    P = dense(sys_.preconditioned(), sys_.dim)
    assert torch.allclose(P, expect, atol=1e-12)
    assert torch.allclose(dense(sys_.damped(), sys_.dim), G + lam * torch.eye(sys_.dim), atol=1e-12)
    ev = torch.linalg.eigvalsh(expect)
    s = slq(sys_.preconditioned(), sys_.dim, SpectrumConfig(probes=2, steps=64), label="M^-1/2(G+λI)M^-1/2")
    assert s.lambda_max == pytest.approx(float(ev[-1]), rel=1e-9)
    assert s.lambda_min_ritz == pytest.approx(float(ev[0]), rel=1e-7)
    assert s.condition() <= s.condition_worst() == pytest.approx(float(ev[-1] / ev[0]), rel=1e-6)


def test_diag_damping_and_chapelle_erhan_match_hf(tiny):
    model, obj = tiny
    lam = 0.2
    cfg = HFConfig(damping=lam, damping_matrix="diag", preconditioner="martens")
    sys_ = hf_system(obj, cfg, lam, torch.Generator().manual_seed(0))
    _, _, g2 = obj.gradient(torch.Generator())
    D = g2 / g2.mean() + cfg.damping_floor
    assert torch.allclose(sys_.damping_diag, D)
    G = dense(sys_.curvature(), sys_.dim)
    assert torch.allclose(dense(sys_.damped(), sys_.dim), G + lam * torch.diag(D), atol=1e-12)
    assert torch.allclose(sys_.precond, (g2 + lam * D).pow(0.75))
    # Chapelle-Erhan: the same samples as HessianFree._curvature_diag with the same generator state
    ce = HFConfig(preconditioner="chapelle-erhan", precond_samples=3)
    opt = HessianFree(model.parameters(), ce)
    gn = obj.curvature(torch.Generator().manual_seed(0))
    mine = curvature_diagonal(gn, None, ce, torch.Generator().manual_seed(ce.seed))
    assert torch.allclose(mine, opt._curvature_diag(gn, None))


def test_gate_blocks_split_mdlstm_gates_and_leave_plain_biases_whole():
    """An MDLSTM layer (w_in, w_rec, bias; 5 gates i, f_t, f_f, o, g) is split into its 5 gates;
    a feed-forward or output layer whose bias length happens to divide by 4 or 5 is not."""
    H, In = 2, 3
    named = [("lstms.0.w_in", torch.zeros(4, In, 5 * H)), ("lstms.0.w_rec", torch.zeros(4, 2 * H, 5 * H)),
             ("lstms.0.bias", torch.zeros(4, 5 * H)), ("ffs.0.weight", torch.zeros(20, 8)),
             ("ffs.0.bias", torch.zeros(20)), ("output.weight", torch.zeros(8, 20)), ("output.bias", torch.zeros(8))]
    blocks = gate_blocks(named)
    assert [b.name for b in blocks] == ["lstms.0:i", "lstms.0:ft", "lstms.0:ff", "lstms.0:o", "lstms.0:g", "ffs.0",
                                        "output"]
    assert [b.size for b in blocks] == [4 * In * H + 4 * 2 * H * H + 4 * H] * 5 + [180, 168]
    total = sum(p.numel() for _, p in named)
    assert torch.equal(torch.cat([b.index for b in blocks]).sort().values, torch.arange(total))
    # the f_f gate of the bias: columns 2H..3H of each direction's row
    n_in, n_rec = 4 * In * 5 * H, 4 * 2 * H * 5 * H
    f_f = (n_in + n_rec + torch.arange(4 * 5 * H).reshape(4, 5 * H)[:, 2 * H : 3 * H]).reshape(-1)
    assert set(f_f.tolist()) <= set(blocks[2].index.tolist())
