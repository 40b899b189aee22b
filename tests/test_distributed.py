"""Distributed HF: 2 gloo processes on CPU give the same parameters as 1 process on the same data."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hfasr.optim import HessianFree, HFConfig, SoftmaxFisher, TensorObjective, softmax_ce


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(600, 6, generator=g, dtype=torch.float64)
    y = (X @ torch.randn(6, 3, generator=g, dtype=torch.float64)).argmax(1)
    return X, y


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3)).double()


def _train(rank: int, world: int, steps: int = 3):
    X, y = _data()
    n = X.shape[0] // world
    lo = rank * n
    model = _model()
    obj = TensorObjective(model, softmax_ce, lambda z, t: SoftmaxFisher(z), (X[lo : lo + n], y[lo : lo + n]),
                          heldout=(X[lo : lo + n][::5], y[lo : lo + n][::5]), curvature_fraction=0.25, chunk_size=100,
                          shard=(lo, X.shape[0]) if world > 1 else None)
    opt = HessianFree(model.parameters(), HFConfig(cg_max_iters=25, preconditioner="martens", rho_data="heldout"))
    for _ in range(steps):
        opt.step(obj)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]), [h.damping_after for h in opt.history]


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        theta, lams = _train(rank, world)
        torch.save({"theta": theta, "lams": lams}, os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    theta1, lams1 = _train(0, 1)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "r0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "r1.pt", weights_only=True)
    assert torch.equal(r0["theta"], r1["theta"])  # ranks stay in sync exactly
    assert torch.allclose(r0["theta"], theta1, atol=1e-9, rtol=1e-7)
    assert r0["lams"] == lams1
