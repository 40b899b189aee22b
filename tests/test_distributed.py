"""Distributed HF: 2 gloo processes on CPU give the same parameters as 1 process on the same data,
for the bare objective and for every task (frame CE, sequence sMBR, CTC) run by the experiment
driver, which writes its files once (rank 0)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from toy_tasks import TASKS, run_toy, toy_config

from hfasr.criteria.curvature import SoftmaxFisher
from hfasr.optim import HessianFree, HFConfig, shard_batches, softmax_ce, tensor_objective


def _spawn(fn, out_dir) -> list:
    """``fn(out_dir)`` in 2 gloo processes (1 thread each); the two ranks' results. The ranks
    meet through a file (no TCP port that another process could take in the meantime)."""
    store = os.path.join(out_dir, "dist_store")
    mp.spawn(_worker, args=(2, store, fn, str(out_dir)), nprocs=2, join=True)
    return [torch.load(os.path.join(out_dir, f"r{r}.pt"), weights_only=True) for r in range(2)]


def _worker(rank, world, store, fn, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save(fn(out_dir), os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------ the bare objective

def _rows_train(out_dir: str | None = None, steps: int = 3):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(600, 6, generator=g, dtype=torch.float64)
    y = (X @ torch.randn(6, 3, generator=g, dtype=torch.float64)).argmax(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3)).double()
    obj = tensor_objective(model, softmax_ce, lambda z, t: SoftmaxFisher(z), (X, y), heldout=(X[::5], y[::5]),
                           curvature_fraction=0.25, chunk_size=100)
    opt = HessianFree(model.parameters(), HFConfig(cg_max_iters=25, preconditioner="martens", rho_data="heldout"))
    for _ in range(steps):
        opt.step(obj)
    return {"theta": torch.cat([p.detach().reshape(-1) for p in model.parameters()]),
            "lams": [h.damping_after for h in opt.history]}


@pytest.mark.slow  # spawns 2 processes
def test_objective_two_processes_match_one(tmp_path):
    torch.set_num_threads(1)
    one = _rows_train()
    r0, r1 = _spawn(_rows_train, tmp_path)
    assert torch.equal(r0["theta"], r1["theta"])  # ranks stay in sync exactly
    assert torch.allclose(r0["theta"], one["theta"], atol=1e-9, rtol=1e-7)
    assert r0["lams"] == one["lams"]


# ------------------------------------------------------------------ the tasks under the experiment driver


def _run_task(kind: str, out_dir: str):
    exp, task, driver = run_toy(toy_config(kind), kind, out_dir)
    return {"theta": torch.cat([p.detach().reshape(-1) for p in task.net.parameters()]),
            "names": [n for n, _ in task.net.named_parameters()],
            "dev": [h["dev_obj"] for h in exp.history], "lams": [h.damping_after for h in driver.opt.history]}


def _run_all(out_dir: str) -> dict:
    return {kind: _run_task(kind, os.path.join(out_dir, f"{kind}_w{dist.get_world_size()}")) for kind in TASKS}


@pytest.mark.slow  # spawns 2 processes
def test_tasks_two_processes_match_one(tmp_path):
    """Each task's HF training sharded over 2 gloo ranks: after 2 updates the parameters, the
    dev objectives and the damping equal one process's; only rank 0 writes the checkpoint,
    history and log, each HF update logged once."""
    torch.set_num_threads(1)
    one = {kind: _run_task(kind, str(tmp_path / f"{kind}_w1")) for kind in TASKS}
    r0, r1 = _spawn(_run_all, tmp_path)
    for kind in TASKS:
        assert torch.equal(r0[kind]["theta"], r1[kind]["theta"]), kind  # ranks stay in sync exactly
        assert r0[kind]["dev"] == r1[kind]["dev"], kind
        init = one[kind]["dev"][0]
        assert one[kind]["dev"][-1] != init, f"{kind}: training moved nothing"
        # float64; only the summation order differs (CG amplifies it to ~1e-8)
        assert torch.allclose(r0[kind]["theta"], one[kind]["theta"], atol=1e-7, rtol=1e-6), kind
        assert r0[kind]["lams"] == one[kind]["lams"], kind
        assert r0[kind]["dev"] == pytest.approx(one[kind]["dev"], rel=1e-8, abs=1e-10), kind
        out = tmp_path / f"{kind}_w2"
        hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
        assert [h["update"] for h in hist] == [0, 1, 2], kind  # written once (rank 0), not per rank
        log = (out / "train.log").read_text().splitlines()
        assert sum(line.startswith("hf-update") for line in log) == 2, kind
        ck = torch.load(out / "checkpoint.pt", weights_only=True)
        assert ck["driver"]["optimizer"]["updates"] == 2
        theta = torch.cat([ck["state_dict"][n].reshape(-1) for n in r0[kind]["names"]])
        assert torch.equal(theta, r0[kind]["theta"]), kind
        assert not list(out.glob("*.tmp"))


@pytest.mark.slow  # spawns 2 processes
def test_first_order_is_refused_distributed(tmp_path):
    r0, _ = _spawn(_first_order, tmp_path)
    assert "supports optimizer hf only" in r0["error"]


def _first_order(out_dir: str) -> dict:
    from hfasr.errors import ConfigError
    from hfasr.train.experiment import Experiment

    cfg = toy_config("ctc")
    cfg.optimizer = "adam"
    try:
        Experiment(cfg, os.path.join(out_dir, "adam"), progress=False)
    except ConfigError as e:
        return {"error": str(e)}
    return {"error": ""}


def test_shard_batches_partitions_and_balances():
    lengths = [100, 90, 80, 70, 60, 50, 40, 30, 20, 10]
    batches = [[0], [1, 9], [2, 8], [3, 7], [4, 6], [5]]
    parts = [shard_batches(batches, lengths, r, 3) for r in range(3)]
    assert sorted(b for p in parts for b in p) == sorted(batches)
    loads = [sum(lengths[i] for b in p for i in b) for p in parts]
    assert max(loads) - min(loads) <= 100
    assert shard_batches(batches, lengths, 0, 1) == batches
