"""Distributed HF: 2 gloo processes on CPU give the same parameters as 1 process on the same data."""

from __future__ import annotations

import os
import socket

import pytest
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


# ------------------------------------------------------------------ sequence HF (UtteranceObjective)

SEQ_K, SEQ_F = 5, 3
SEQ_RUNS = {
    "full": {},
    # successive subsets with every reuse on (dynamic SAG, warm start, damping)
    "subsets": {"num_subsets": 2, "optimizer": {"gradient_reuse": "dynamic"}},
}


def _seq_data(n, seed):
    from lattice_utils import random_seq_data

    return random_seq_data(n, seed, SEQ_K, SEQ_F, t_span=5, dtype=torch.float64)


def _seq_train(out_dir, run: str):
    """2 HF-sMBR updates of a tiny DNN on random lattices (float64); max_frames small so that
    the gradient and held-out sets span several batches (dealt over the ranks)."""
    from hfasr.config import from_dict
    from hfasr.train.sequence import SeqTrainConfig, SequenceTrainer

    model = _model_seq()
    hf = {"updates": 2, "heldout_fraction": 0.25, "curvature_fraction": 0.5, "curvature_min_utts": 2,
          "max_frames": 40, **SEQ_RUNS[run]}
    hf["optimizer"] = {"cg_max_iters": 10, **hf.get("optimizer", {})}
    cfg = from_dict(SeqTrainConfig, {"criterion": "smbr", "optimizer": "hf", "dev_wer": False,
                                     "sequence": {"acoustic_scale": 0.5, "one_silence_class": False}, "hf": hf})
    meta = {"tid2phone": torch.arange(SEQ_K + 3), "silence_phones": []}
    os.makedirs(out_dir, exist_ok=True)
    t = SequenceTrainer(cfg, model, torch.full((SEQ_K,), -1.6, dtype=torch.float64), meta, _seq_data(20, 1),
                        _seq_data(4, 2), out_dir, progress=False)
    t.fit()
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return theta, [h["dev_obj"] for h in t.history], [h.damping_after for h in t.opt.history]


def _seq_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        res = {run: _seq_train(os.path.join(out_dir, f"{run}_w{world}"), run) for run in SEQ_RUNS}
        torch.save(res, os.path.join(out_dir, f"seq_r{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sequence_hf_two_processes_match_one(tmp_path):
    """UtteranceObjective sharded over 2 gloo ranks (SequenceTrainer under torch.distributed):
    after 2 HF updates the parameters equal one process's, for full-batch and subset HF; only
    rank 0 writes the checkpoint, history and log."""
    import json

    torch.set_num_threads(1)
    one = {run: _seq_train(str(tmp_path / f"{run}_w1"), run) for run in SEQ_RUNS}
    mp.spawn(_seq_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "seq_r0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "seq_r1.pt", weights_only=True)
    for run in SEQ_RUNS:
        theta1, dev1, lams1 = one[run]
        assert torch.equal(r0[run][0], r1[run][0])  # ranks stay in sync exactly
        assert r0[run][1] == r1[run][1]
        assert not torch.equal(theta1, _theta_of()), "training moved the parameters"
        # float64; only the summation order differs (CG at λ = 1e-3 amplifies it to ~1e-8)
        assert torch.allclose(r0[run][0], theta1, atol=1e-7, rtol=1e-6), run
        assert r0[run][2] == lams1
        assert r0[run][1] == pytest.approx(dev1, rel=1e-8, abs=1e-10)
        out = tmp_path / f"{run}_w2"
        hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
        assert [h["update"] for h in hist] == [0, 1, 2]  # written once (rank 0), not per rank
        assert sum(line.startswith("hf-update") for line in (out / "train.log").read_text().splitlines()) == 2
        ck = torch.load(out / "checkpoint.pt", weights_only=False)
        assert ck["position"]["update"] == 2
        assert torch.equal(_theta_of(ck["state_dict"]), r0[run][0])
        assert not list(out.glob("*.tmp"))


def _model_seq():
    from hfasr.models import build_model

    torch.manual_seed(0)
    return build_model({"arch": "dnn", "input_dim": SEQ_F, "num_outputs": SEQ_K, "hidden_dim": 8,
                        "num_layers": 1, "context": 1}).double()


def _theta_of(state_dict=None):
    m = _model_seq()
    if state_dict is not None:
        m.load_state_dict(state_dict)
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])



def test_shard_batches_partitions_and_balances():
    from hfasr.train.utterance_objective import shard_batches

    lengths = [100, 90, 80, 70, 60, 50, 40, 30, 20, 10]
    batches = [[0], [1, 9], [2, 8], [3, 7], [4, 6], [5]]
    parts = [shard_batches(batches, lengths, r, 3) for r in range(3)]
    assert sorted(b for p in parts for b in p) == sorted(batches)
    loads = [sum(lengths[i] for b in p for i in b) for p in parts]
    assert max(loads) - min(loads) <= 100
    assert shard_batches(batches, lengths, 0, 1) == batches
