"""Distributed HF: 2 gloo processes on CPU give the same parameters as 1 process on the same data,
for the bare objective and for every task (frame CE, sequence sMBR, CTC) run by the experiment
driver, which writes its files once (rank 0)."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hfasr.criteria.curvature import SoftmaxFisher
from hfasr.optim import HessianFree, HFConfig, shard_batches, softmax_ce, tensor_objective

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, out_dir) -> list:
    """``fn(out_dir)`` in 2 gloo processes (1 thread each); the two ranks' results."""
    mp.spawn(_worker, args=(2, _free_port(), fn, str(out_dir)), nprocs=2, join=True)
    return [torch.load(os.path.join(out_dir, f"r{r}.pt"), weights_only=True) for r in range(2)]


def _worker(rank, world, port, fn, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
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


def test_objective_two_processes_match_one(tmp_path):
    torch.set_num_threads(1)
    one = _rows_train()
    r0, r1 = _spawn(_rows_train, tmp_path)
    assert torch.equal(r0["theta"], r1["theta"])  # ranks stay in sync exactly
    assert torch.allclose(r0["theta"], one["theta"], atol=1e-9, rtol=1e-7)
    assert r0["lams"] == one["lams"]


# ------------------------------------------------------------------ the tasks under the experiment driver

K, F = 5, 3


def _frame_task(exp):
    """Frame CE, DNN with HF, on random utterances (float64)."""
    from hfasr.data.frames import FrameData
    from hfasr.train.ce import CETask

    g = torch.Generator().manual_seed(3)
    cuts = [f"u{i}" for i in range(12)]
    targets = [torch.randint(0, K, (6 + i % 5,), generator=g) for i in range(12)]
    feats = [torch.randn(len(y), F, generator=g) + nn.functional.one_hot(y, K)[:, :F] for y in targets]
    train, dev = FrameData(cuts, feats, targets, K), FrameData(cuts[:4], feats[:4], targets[:4], K)
    for d in (train, dev):
        d.feats = d.feats.double()
    task = CETask(exp.cfg, train, dev, exp.device)
    task.net.double()
    return task


def _seq_task(exp):
    """HF-sMBR of a tiny DNN on random lattices (float64)."""
    from lattice_utils import random_seq_data

    from hfasr.models import build_model
    from hfasr.train.sequence import SequenceTask

    torch.manual_seed(0)
    model = build_model({"arch": "dnn", "input_dim": F, "num_outputs": K, "hidden_dim": 8, "num_layers": 1,
                         "context": 1}).double()
    meta = {"tid2phone": torch.arange(K + 3), "silence_phones": []}
    train = random_seq_data(20, 1, K, F, t_span=5, dtype=torch.float64)
    dev = random_seq_data(4, 2, K, F, t_span=5, dtype=torch.float64)
    task = SequenceTask(exp.cfg, model, torch.full((K,), -1.6, dtype=torch.float64), meta, train, dev, exp.device,
                        progress=False)
    task.prior_path, task.init = None, "random"
    task.write_files = lambda out: None
    return task


def _ctc_task(exp):
    """HF CTC of a tiny BLSTM with structural damping (float64)."""
    from hfasr.criteria.ctc import TokenTable
    from hfasr.train.ctc import CtcData, CtcTask

    g = torch.Generator().manual_seed(5)
    table = TokenTable(["a", "b", "c"], "char", word_boundary=None)
    texts = ["ab", "ba", "abc", "cab", "ca", "bc", "a", "cb", "acb", "bca"]
    targets = [torch.tensor(table.encode(t)) for t in texts]
    feats = [torch.randn(6 + 2 * len(t) + i % 3, F, generator=g, dtype=torch.float64) for i, t in enumerate(texts)]
    data = CtcData([f"u{i}" for i in range(len(texts))], feats, texts, targets)
    task = CtcTask(exp.cfg, table, data, data.subset([0, 1, 2]), exp.device)
    task.net.double()
    return task


def _cfg(kind: str):
    from hfasr.config import from_dict
    from hfasr.train.ce import TrainConfig
    from hfasr.train.ctc import CtcTrainConfig
    from hfasr.train.sequence import SeqTrainConfig

    hf = {"updates": 2, "heldout_fraction": 0.25, "curvature_fraction": 0.5, "curvature_min": 2,
          "optimizer": {"cg_max_iters": 10, "rho_data": "heldout", "backtrack_data": "heldout",
                        "linesearch_data": "heldout"}}
    if kind == "frame":
        return from_dict(TrainConfig, {"optimizer": "hf", "chunk_size": 16, "prior_floor": 1e-3,
                                       "dnn": {"hidden_dim": 8, "num_layers": 1, "context": 1},
                                       "hf": {**hf, "curvature_min": 8}})
    if kind == "sequence":
        return from_dict(SeqTrainConfig, {"criterion": "smbr", "optimizer": "hf", "dev_wer": False, "max_frames": 40,
                                          "sequence": {"acoustic_scale": 0.5, "one_silence_class": False}, "hf": hf})
    if kind == "sequence-subsets":  # successive subsets with every reuse on (dynamic SAG, warm start, damping)
        return from_dict(SeqTrainConfig, {"criterion": "smbr", "optimizer": "hf", "dev_wer": False, "max_frames": 40,
                                          "sequence": {"acoustic_scale": 0.5, "one_silence_class": False},
                                          "hf": {**hf, "num_subsets": 2,
                                                 "optimizer": {**hf["optimizer"], "gradient_reuse": "dynamic"}}})
    return from_dict(CtcTrainConfig, {"units": "char", "model": "blstm", "optimizer": "hf", "max_frames": 40,
                                      "blstm": {"hidden_size": 4, "num_layers": 1},
                                      "hf": {**hf, "optimizer": {**hf["optimizer"], "structural_damping": 0.3}}})


TASKS = {"frame": _frame_task, "sequence": _seq_task, "sequence-subsets": _seq_task, "ctc": _ctc_task}


def _run_task(kind: str, out_dir: str):
    from hfasr.train.experiment import Experiment

    exp = Experiment(_cfg(kind), out_dir, progress=False)
    task = TASKS[kind](exp)
    driver = exp.run(task)
    exp.save_final(task)
    return {"theta": torch.cat([p.detach().reshape(-1) for p in task.net.parameters()]),
            "names": [n for n, _ in task.net.named_parameters()],
            "dev": [h["dev_obj"] for h in exp.history], "lams": [h.damping_after for h in driver.opt.history]}


def _run_all(out_dir: str) -> dict:
    return {kind: _run_task(kind, os.path.join(out_dir, f"{kind}_w{dist.get_world_size()}")) for kind in TASKS}


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


def test_first_order_is_refused_distributed(tmp_path):
    r0, _ = _spawn(_first_order, tmp_path)
    assert "supports optimizer hf only" in r0["error"]


def _first_order(out_dir: str) -> dict:
    from hfasr.errors import ConfigError
    from hfasr.train.experiment import Experiment

    cfg = _cfg("ctc")
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
