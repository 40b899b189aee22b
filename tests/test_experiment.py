"""The experiment driver (hfasr/train/experiment.py) and the ``hfasr train`` flags: checkpoints
loaded with weights_only only, the resume-config rule, the out-dir guard, one history record
type for every task, numerical errors, and one config key per flag."""

from __future__ import annotations

import argparse
import json
import math
import os

import pytest
import torch

from hfasr.errors import ConfigError, DataError, HfasrError


def _ctc_cfg(**over):
    from hfasr.config import from_dict
    from hfasr.train.ctc import CtcTrainConfig

    d = {"units": "char", "model": "blstm", "optimizer": "hf", "max_frames": 60, "dev_wer": True,
         "blstm": {"hidden_size": 4, "num_layers": 1},
         "hf": {"updates": 2, "heldout_fraction": 0.2, "curvature_fraction": 0.5, "curvature_min": 2,
                "optimizer": {"cg_max_iters": 5}},
         "adam": {"epochs": 2, "reports_per_epoch": 2}}
    for k, v in over.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) else v
    return from_dict(CtcTrainConfig, d)


def _ctc_task(exp):
    from hfasr.criteria.ctc import TokenTable
    from hfasr.data.utterances import UtteranceSet
    from hfasr.train.ctc import CtcTask

    g = torch.Generator().manual_seed(5)
    table = TokenTable(["a", "b", "c"], "char", word_boundary=None)
    texts = ["ab", "ba", "abc", "cab", "ca", "bc", "a", "cb", "acb", "bca"]
    feats = [torch.randn(6 + 2 * len(t), 3, generator=g) + i % 2 for i, t in enumerate(texts)]
    data = UtteranceSet([f"u{i}" for i in range(10)], feats, [torch.tensor(table.encode(t)) for t in texts], texts)
    return CtcTask(exp.cfg, table, data, data.subset([0, 1, 2, 3]), exp.device)


def _train(cfg, out, resume=False, max_wall=None):
    from hfasr.train.experiment import Experiment

    exp = Experiment(cfg, out, resume=resume, progress=False)
    task = _ctc_task(exp)
    exp.run(task, max_wall=max_wall)
    exp.save_final(task)
    return exp, task


class _Boom:
    """Unpickling this object runs code: ``open(marker, "w")`` creates a file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"model_config": {}, "state_dict": {}, "x": _Boom(str(marker))}, out / "checkpoint.pt")
    with pytest.raises(DataError, match="cannot read checkpoint"):
        _train(_ctc_cfg(), out, resume=True)
    assert not marker.exists()
    # the same file under torch.load(weights_only=False) would have run the code
    torch.load(out / "checkpoint.pt", weights_only=False)
    assert marker.exists()


def test_out_dir_guard_and_resume_rules(tmp_path):
    out = tmp_path / "run"
    ref, _ = _train(_ctc_cfg(), tmp_path / "ref")
    _train(_ctc_cfg(hf={"updates": 1}), out)
    with pytest.raises(HfasrError, match="already holds a training run"):
        _train(_ctc_cfg(), out)
    # a key its class does not declare resumable: refused, naming the key and both values
    with pytest.raises(ConfigError, match=r"hf\.curvature_fraction: 0\.5 -> 0\.25"):
        _train(_ctc_cfg(hf={"curvature_fraction": 0.25}), out, resume=True)
    # sections the run does not read may change (the adam section of an HF run), and so may
    # the run's length: resuming to 2 updates gives the uninterrupted run's history
    res, _ = _train(_ctc_cfg(hf={"updates": 2}, adam={"lr": 0.5}), out, resume=True)
    strip = [{k: v for k, v in h.items() if k != "wall_s"} for h in res.history]
    assert strip == [{k: v for k, v in h.items() if k != "wall_s"} for h in ref.history]
    lines = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [h["update"] for h in lines] == [0, 1, 2]
    assert [h["wall_s"] for h in lines] == sorted(h["wall_s"] for h in lines) and lines[-1]["wall_s"] > 0


def test_first_order_mid_epoch_resume_is_exact(tmp_path):
    """Adam with 2 reports per epoch: a run stopped after 1.5 epochs and resumed equals one run."""
    cfg = _ctc_cfg(optimizer="adam")
    ref, ref_task = _train(cfg, tmp_path / "ref")
    assert [h["epoch"] for h in ref.history[1:]] == [0.5, 1.0, 1.5, 2.0]
    part, _ = _train(_ctc_cfg(optimizer="adam", adam={"epochs": 2}), tmp_path / "b", max_wall=1e-9)
    assert [h["update"] for h in part.history] == [0, 1]
    res, res_task = _train(cfg, tmp_path / "b", resume=True)
    strip = [{k: v for k, v in h.items() if k != "wall_s"} for h in res.history]
    assert strip == [{k: v for k, v in h.items() if k != "wall_s"} for h in ref.history]
    for a, b in zip(ref_task.net.parameters(), res_task.net.parameters()):
        assert torch.equal(a, b)


def test_non_finite_loss_names_the_minibatch_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    from hfasr.criteria.ctc import CtcLoss
    from hfasr.train.drivers import TrainingError

    # the training loss turns non-finite at the 4th minibatch of the run (2 minibatches of at most
    # 60 frames per epoch: epoch 2, minibatch 2), after the first epoch's report was checkpointed
    orig, calls = CtcLoss.loss, {"train": 0}

    def loss(self, z, batch):
        out = orig(self, z, batch)
        if torch.is_grad_enabled():
            calls["train"] += 1
            if calls["train"] == 4:
                return out * float("nan")
        return out

    monkeypatch.setattr(CtcLoss, "loss", loss)
    cfg = _ctc_cfg(optimizer="adam", adam={"reports_per_epoch": 1, "epochs": 3})
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"epoch 2, minibatch 2 \(utterances u\d"):
        _train(cfg, out)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert [h["update"] for h in ck["history"]] == [0, 1]  # init and epoch 1, both finite
    assert ck["history"][0]["note"] == "init"
    assert all(math.isfinite(h["dev_obj"]) for h in ck["history"])


def test_non_finite_dev_objective_names_the_report_and_keeps_the_checkpoint(tmp_path):
    from hfasr.train.drivers import TrainingError

    # lr 1e30: the first epoch's training losses may stay finite while the dev objective is not
    cfg = _ctc_cfg(optimizer="adam", adam={"lr": 1e30, "reports_per_epoch": 1})
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"non-finite (dev objective at update 1|training loss)"):
        _train(cfg, out)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["history"][0]["note"] == "init"
    assert all(math.isfinite(h["dev_obj"]) for h in ck["history"])


def test_non_finite_hf_gradient_names_the_update_and_the_utterance(tmp_path, monkeypatch):
    from hfasr.train import ctc
    from hfasr.train.drivers import TrainingError

    orig = ctc.CtcTask.__init__

    def poisoned(self, cfg, table, train, dev, *a, **kw):
        orig(self, cfg, table, train, dev, *a, **kw)
        self.train.feats[7][2, 0] = float("nan")  # utterance u7 (in the gradient set)

    monkeypatch.setattr(ctc.CtcTask, "__init__", poisoned)
    with pytest.raises(TrainingError, match=r"HF update 1: non-finite loss .*u7.* checkpoint is intact"):
        _train(_ctc_cfg(hf={"heldout_fraction": 0.0}), tmp_path / "run")


def test_history_is_one_record_type_and_report_reads_them_together(tmp_path, capsys):
    """A CE (Adam), an HF-sMBR and a CTC (HF) run: every record has the keys ``hfasr report``
    needs, and ``hfasr report`` puts the three runs side by side (one objective plot row per
    criterion)."""
    from toy_tasks import run_toy, toy_config

    from hfasr.cli import main

    runs = {"ce": ("frame", "adam"), "smbr": ("sequence", "hf"), "ctc": ("ctc", "hf")}
    for name, (kind, opt) in runs.items():
        exp, _, _ = run_toy(toy_config(kind, opt), kind, tmp_path / name)
        for h in exp.history:
            assert {"run", "criterion", "optimizer", "model", "update", "wall_s", "dev_obj"} <= set(h)
        assert exp.history[-1]["criterion"] == name
        assert ("damping" in exp.history[-1]) == (opt == "hf") and ("lr" in exp.history[-1]) == (opt != "hf")
    main(["report", *(str(tmp_path / n) for n in runs), "--out", str(tmp_path / "report")])
    md = (tmp_path / "report.md").read_text()
    for run in ("adam-ce-dnn", "hf-smbr", "hf-ctc-blstm"):
        assert f"| {run} |" in md
    from PIL import Image

    _, h = Image.open(tmp_path / "report.png").size
    assert h == 4 * 4 * 100  # three objective rows (one per criterion) and the WER row, 4 inches each


# ------------------------------------------------------------------ hfasr train flags

def _args(**kw):
    base = {k: None for k in ("config", "criterion", "optimizer", "model", "epochs", "lr", "batch_size", "updates",
                              "seed", "num_threads", "device", "ali_dir", "init", "lat_dir", "graph_dir",
                              "model_dir", "lang")}
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("criterion,flags,key,value", [
    ("ce", {"epochs": 3}, "epochs", 3),
    ("ce", {"lr": 0.5}, "lr", 0.5),
    ("ce", {"batch_size": 64}, "batch_size", 64),
    ("ce", {"optimizer": "hf", "updates": 7}, "hf.updates", 7),
    ("smbr", {"optimizer": "sgd", "epochs": 2}, "sgd.epochs", 2),
    ("smbr", {"optimizer": "sgd", "lr": 1e-4}, "sgd.lr", 1e-4),
    ("mmi", {"updates": 5}, "hf.updates", 5),
    ("ctc", {"optimizer": "adam", "epochs": 9}, "adam.epochs", 9),
    ("ctc", {"optimizer": "adam", "lr": 0.01}, "adam.lr", 0.01),
    ("ctc", {"updates": 4, "model": "mdlstm"}, "hf.updates", 4),
])
def test_each_flag_sets_one_key(criterion, flags, key, value):
    from hfasr.bin.train import load_train_config
    from hfasr.train.experiment import flat_config

    cfg = load_train_config(_args(criterion=criterion, **flags))
    assert flat_config(cfg)[key] == value


@pytest.mark.parametrize("criterion,flags,match", [
    ("smbr", {"model": "blstm"}, "--model is not used by --criterion smbr"),
    ("ctc", {"batch_size": 64}, "--batch-size is not used by --criterion ctc"),
    ("ce", {"optimizer": "hf", "epochs": 3}, r"--epochs \(epochs\) is not used by --criterion ce with --optimizer hf"),
    ("ce", {"optimizer": "adam", "updates": 3}, r"--updates \(hf.updates\) is not used"),
    ("smbr", {"optimizer": "hf", "lr": 0.1}, r"--lr \(sgd.lr\) is not used"),
    ("ctc", {"ali_dir": "x"}, "--ali-dir is not used by --criterion ctc"),
    ("ce", {"lang": "x"}, "--lang is not used by --criterion ce"),
    ("ce", {"init": "x"}, "--init is not used by --criterion ce"),
])
def test_unused_flag_is_an_error(criterion, flags, match):
    from hfasr.bin.train import load_train_config

    with pytest.raises(ConfigError, match=match):
        load_train_config(_args(criterion=criterion, **flags))


def test_config_help_names_the_schemas():
    from hfasr.bin import train

    p = argparse.ArgumentParser()
    train.add_arguments(p)
    text = p.format_help()
    for schema in ("TrainConfig", "SeqTrainConfig", "CtcTrainConfig"):
        assert schema in text
    assert set(train.CRITERIA) == {"ce", "ctc", "mmi", "bmmi", "mpe", "smbr"}
    assert os.path.basename(train.__file__) == "train.py"
