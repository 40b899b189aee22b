"""HF sequence training on tiny lattices: the G v product through the criterion and a few updates."""

from __future__ import annotations

import pytest
import torch
from lattice_utils import random_lattice
from torch import nn
from torch.func import functional_call, jacrev

from hfasr.criteria.sequence import SeqSupervision, SequenceConfig, SequenceCriterion
from hfasr.optim import BatchObjective, HessianFree, HFConfig, SumGaussNewton, objective
from hfasr.optim.gn import flatten
from hfasr.train.sequence import SequenceLoss, seq_examples

K, F = 4, 3


class FrameModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(F, 6)
        self.l2 = nn.Linear(6, K)

    def forward(self, x, lengths=None):
        return self.l2(torch.tanh(self.l1(x)))


def _utts(n, seed):
    g = torch.Generator().manual_seed(seed)
    utts = []
    for i in range(n):
        T = 4 + i % 3
        lat = random_lattice(T, K, seed=seed * 100 + i)
        ref = torch.tensor([int(lat.pdf[(lat.frame == t) & (lat.pdf >= 0)][0]) for t in range(T)])
        feats = torch.randn(T, F, generator=g, dtype=torch.float64) + torch.nn.functional.one_hot(ref, K)[:, :F].double()
        utts.append((feats, SeqSupervision(lat, ref, ref_phone=ref + 1)))
    return utts


def _criterion(kind, crit="smbr"):
    cfg = SequenceConfig(criterion=crit, acoustic_scale=0.5, curvature=kind, drop_frames=False)
    return SequenceCriterion(cfg, torch.full((K,), -torch.log(torch.tensor(float(K))), dtype=torch.float64),
                             tid2phone=torch.arange(K + 2), silence_phones=[])


@pytest.mark.parametrize("kind", ["fisher", "den-block", "den-cov"])
def test_gv_through_sequence_curvature(kind):
    """The objective's G v (summed over the length buckets of the curvature sample) equals
    Jᵀ H J v / frames with J by jacrev and H from the curvature's hvp on unit vectors, both on
    the whole sample as one padded batch."""
    torch.manual_seed(0)
    model = FrameModel().double()
    utts = _utts(3, 1)
    crit = _criterion(kind)
    obj = BatchObjective(model, SequenceLoss(crit), seq_examples(utts), curvature_fraction=1.0)
    gn = obj.curvature(torch.Generator().manual_seed(0))
    assert obj._curv == [0, 1, 2]
    assert isinstance(gn, SumGaussNewton)  # lengths 6, 5 | 4: two buckets at CURVATURE_MAX_PADDING
    # explicit: J (outputs of the curvature sample as one padded batch) and H from hvp on unit vectors
    batch = obj.data.batch(obj._curv)
    (x, lens), sups = batch.inputs, batch.target
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())
    theta = flatten(params)

    def f(flat):
        ps, o = [], 0
        for p in params:
            ps.append(flat[o : o + p.numel()].view_as(p))
            o += p.numel()
        return functional_call(model, dict(zip(names, ps)), (x, lens))

    z = f(theta)
    J = jacrev(f)(theta).reshape(z.numel(), -1)
    out = crit(z, lens, sups)
    h = crit.curvature(z, out)
    H = torch.stack([h.hvp(torch.eye(z.numel(), dtype=torch.float64)[i].reshape(z.shape)).reshape(-1) for i in range(z.numel())])
    assert gn.normalizer == batch.count == int(lens.sum()) == sum(int(u[0].shape[0]) for u in utts)
    G = J.T @ H @ J / int(lens.sum())
    v = torch.randn(theta.numel(), dtype=torch.float64)
    assert torch.allclose(gn(v), G @ v, atol=1e-10)


@pytest.mark.parametrize("crit", ["mmi", "smbr"])
def test_hf_sequence_updates_reduce_loss(crit):
    torch.manual_seed(0)
    model = FrameModel().double()
    utts = _utts(12, 2)
    obj = BatchObjective(model, SequenceLoss(_criterion("den-cov", crit)), seq_examples(utts[:9]),
                         heldout=seq_examples(utts[9:]), curvature_fraction=0.5, curvature_min=3)
    opt = HessianFree(model.parameters(), HFConfig(cg_max_iters=20, rho_data="heldout", backtrack_data="heldout",
                                                   preconditioner="none"))
    first = obj.loss("gradient")
    for _ in range(4):
        opt.step(obj)
    assert obj.loss("gradient") < first


def test_curvature_buckets_by_length_same_product(monkeypatch):
    """The curvature sample is split into batches of similar lengths (no products spent on
    padding); their summed G v equals the one-padded-batch product, and the curvature-data loss
    is unchanged."""
    from lattice_utils import random_seq_data

    from hfasr.models import DNN

    data = random_seq_data(10, 3, K, 4, t_span=9, dtype=torch.float64)
    crit = _criterion("fisher")
    torch.manual_seed(0)
    model = DNN(4, K, hidden_dim=6, num_layers=2, context=1).double()
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    out = {}
    for pad in (None, 0.1):
        monkeypatch.setattr(objective, "CURVATURE_MAX_PADDING", pad)
        obj = BatchObjective(model, SequenceLoss(crit), seq_examples(data.utts), curvature_fraction=1.0)
        gn = obj.curvature(torch.Generator().manual_seed(0))
        out[pad] = (gn(v), obj.loss("curvature"), isinstance(gn, SumGaussNewton), gn.normalizer)
    assert not out[None][2] and out[0.1][2]
    assert out[None][3] == out[0.1][3] == sum(int(u[0].shape[0]) for u in data.utts)
    assert torch.allclose(out[None][0], out[0.1][0], atol=1e-12, rtol=1e-9)
    assert abs(out[None][1] - out[0.1][1]) < 1e-12
