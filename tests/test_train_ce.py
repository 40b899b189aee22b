"""Frame data, CE training with torch.optim, checkpoints / exact resume, priors, schedules.

A tiny synthetic corpus (lhotse cuts with numpy features, pdf labels in runs whose features are
the label's mean plus noise) stands in for fbank + GMM alignments: the ``corpus`` fixture of
conftest.py, built by tests/toy_frames.py.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
import yaml
from toy_frames import NUM_PDFS, SEEN, SMALL, TASK, F, Killed, kill_at_batch, params_of, write_ali

from hfasr.cli import main
from hfasr.config import load_config
from hfasr.data.frames import IGNORE_INDEX, FrameData, FrameDataConfig
from hfasr.data.utterances import FrameRows, Utterances
from hfasr.errors import ConfigError, DataError, HfasrError
from hfasr.models import DNN, load_model, splice
from hfasr.train import TrainConfig, TrainingError, run_training
from hfasr.train.ce import CETask, compute_log_prior, utterance_collate
from hfasr.train.schedule import CosineSchedule, NewBobConfig, NewBobSchedule

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.py)


def config(**kw) -> TrainConfig:
    d = {**SMALL, **kw}
    return load_config(TrainConfig, None, d)


# --- frame data --------------------------------------------------------------------------------

def test_frame_data_load_and_splice(corpus):
    root, alis = corpus
    d = FrameData.load(root, TASK, "train", root / "gmm")
    assert len(d) == 24 and d.num_pdfs == NUM_PDFS and d.feat_dim == F
    assert d.num_frames == sum(len(p) for p in alis["train"]["pdfs"])
    x, y = d.utterance(3)
    assert torch.equal(y, alis["train"]["pdfs"][3].long())
    # spliced rows of an utterance == the model's splicing of that utterance
    idx = torch.arange(int(d.offsets[3]), int(d.offsets[4]))
    torch.testing.assert_close(d.spliced(idx, 2), splice(x[None], 2)[0])
    assert d.pdf_counts()[SEEN] == 0 and d.pdf_counts().sum() == d.num_frames


def test_frame_batches_shuffled_and_seeded(corpus):
    root, _ = corpus
    d = FrameData.load(root, TASK, "dev", root / "gmm")
    rows = FrameRows(d, 1)
    run = lambda seed: [rows.batch(i) for i in rows.shuffled(torch.Generator().manual_seed(seed), 50)]
    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(x.inputs[0], y.inputs[0]) for x, y in zip(a, b))
    assert not torch.equal(a[0].target, c[0].target)
    ys = torch.cat([x.target for x in a])
    assert len(ys) == d.num_frames and torch.equal(ys.sort().values, d.targets.sort().values)
    assert a[0].inputs[0].shape == (50, 3 * F) and len(a) == math.ceil(d.num_frames / 50)
    assert sum(x.count for x in a) == d.num_frames
    # the fixed plan (HF passes, dev evaluation): consecutive chunks in corpus order; a subset
    # (held-out frames) reads the same rows
    plan = FrameRows(d, 1, chunk_size=64).plan()
    assert [len(p) for p in plan[:-1]] == [64] * (len(plan) - 1) and plan[0][0] == 0
    sub = rows.subset([5, 3, 9])
    assert torch.equal(sub.batch([0, 1, 2]).inputs[0], rows.batch([5, 3, 9]).inputs[0])


def test_utterance_batches(corpus):
    root, _ = corpus
    d = FrameData.load(root, TASK, "train", root / "gmm")
    utts = Utterances(d.lengths.tolist(), utterance_collate(d, "cpu"), 120)
    seen = []
    for idx in utts.shuffled(torch.Generator().manual_seed(0)):
        b = utts.batch(idx)
        feats, lengths = b.inputs
        B, T, _ = feats.shape
        assert B * T <= 120 or B == 1
        assert T == int(lengths.max()) and b.target.shape == (B, T) and b.count == int(lengths.sum())
        for i, u in enumerate(idx):
            x, y = d.utterance(u)
            L = int(lengths[i])
            assert torch.equal(feats[i, :L], x) and torch.equal(b.target[i, :L], y)
            assert (b.target[i, L:] == IGNORE_INDEX).all() and b.names[i] == d.cut_ids[u]
        seen += idx
    assert sorted(seen) == list(range(len(d)))
    ub = d.collate([2, 0])
    assert ub.phones.shape == ub.targets.shape and ub.cut_ids == [d.cut_ids[2], d.cut_ids[0]]


def test_length_mismatch_names_the_cut(corpus, tmp_path):
    root, alis = corpus
    ali = {**alis["dev"], "pdfs": list(alis["dev"]["pdfs"])}
    ali["pdfs"][2] = ali["pdfs"][2][:-3]
    write_ali(tmp_path, "dev", ali)
    with pytest.raises(DataError, match=r"cut 'dev-002': alignment has \d+ frames but its features have"):
        FrameData.load(root, TASK, "dev", tmp_path)
    d = FrameData.load(root, TASK, "dev", tmp_path, FrameDataConfig(length_tolerance=3))
    assert d.utterance(2)[0].shape[0] == len(ali["pdfs"][2])


def test_missing_alignment(corpus, tmp_path, caplog):
    root, alis = corpus
    keep = [i for i in range(6) if i != 4]
    write_ali(tmp_path, "dev", {k: [v[i] for i in keep] if isinstance(v, list) else v for k, v in alis["dev"].items()})
    (tmp_path / "ali_dev_excluded.txt").write_text("dev-004\talignment failed\n")
    with pytest.raises(DataError, match=r"cut 'dev-004' .* no alignment .*alignment failed.*drop_unaligned"):
        FrameData.load(root, TASK, "dev", tmp_path)
    with caplog.at_level(logging.WARNING):
        d = FrameData.load(root, TASK, "dev", tmp_path, FrameDataConfig(drop_unaligned=True))
    assert len(d) == 5 and "dev-004" not in d.cut_ids and "dropped 1 of 6 cuts" in caplog.text
    with pytest.raises(DataError, match="alignment file not found"):
        FrameData.load(root, TASK, "train", tmp_path)
    bad = {**alis["dev"], "pdfs": [p + 10 for p in alis["dev"]["pdfs"]]}
    write_ali(tmp_path, "dev", bad)
    with pytest.raises(DataError, match=r"cut 'dev-000': pdf ids outside"):
        FrameData.load(root, TASK, "dev", tmp_path)


# --- config ------------------------------------------------------------------------------------

def test_bad_config_key(corpus, tmp_path, capsys):
    root, _ = corpus
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"dnn": {"hiden_dim": 8}}))
    with pytest.raises(ConfigError, match=r"train.yaml.*unknown key 'hiden_dim'"):
        load_config(TrainConfig, cfg)
    cfg.write_text(yaml.safe_dump({"learning_rate": 0.1}))
    rc = main(["train", "--data-dir", str(root), "--task", TASK, "--ali-dir", str(root / "gmm"),
               "--out", str(tmp_path / "exp"), "--config", str(cfg), "--quiet"])
    assert rc == 2 and "unknown key 'learning_rate'" in capsys.readouterr().err
    for bad in ({"optimizer": "lbfgs"}, {"lr_schedule": "step"}, {"batch_size": 0}, {"model": "data"}):
        with pytest.raises(ConfigError):
            load_config(TrainConfig, None, bad)


# --- training ----------------------------------------------------------------------------------

def test_train_cli_adam_reaches_high_accuracy(corpus, tmp_path, capsys):
    root, alis = corpus
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({**SMALL, "lr_schedule": "cosine", "prior_floor": 1e-4}))
    out = tmp_path / "exp"
    rc = main(["train", "--criterion", "ce", "--optimizer", "adam", "--data-dir", str(root), "--task", TASK,
               "--ali-dir", str(root / "gmm"), "--out", str(out), "--config", str(cfg), "--epochs", "5",
               "--lr", "0.01", "--quiet"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "final.pt" in stdout
    for f in ("final.pt", "checkpoint.pt", "prior.pt", "config.yaml", "train.log"):
        assert (out / f).is_file(), f
    lines = [ln for ln in (out / "train.log").read_text().splitlines() if ln.startswith("report adam-ce-dnn ")]
    assert len(lines) == 6 and "dev_acc=" in lines[-1] and "lr=" in lines[-1] and "epoch=5 " in lines[-1]
    assert sum(ln.startswith("report ") for ln in stdout.splitlines()) == 6
    hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [h["update"] for h in hist] == list(range(6)) and hist[-1]["criterion"] == "ce"
    ckpt = torch.load(out / "final.pt", weights_only=True)
    assert ckpt["dev_acc"] > 0.9, lines
    model = load_model(out / "final.pt")
    assert isinstance(model, DNN) and model.hidden[0].out_features == 32
    # the resolved config round-trips
    resolved = load_config(TrainConfig, out / "config.yaml")
    assert resolved.optimizer == "adam" and resolved.lr == 0.01 and resolved.epochs == 5
    # priors: relative frequencies of the training pdfs, unseen pdf floored
    log_prior = torch.load(out / "prior.pt", weights_only=True)["log_prior"]
    counts = torch.bincount(torch.cat(alis["train"]["pdfs"]).long(), minlength=NUM_PDFS).double()
    assert log_prior.shape == (NUM_PDFS,) and log_prior.dtype == torch.float32
    torch.testing.assert_close(log_prior[:SEEN], (counts[:SEEN] / counts.sum()).log().float())
    assert log_prior[SEEN] == pytest.approx(math.log(1e-4))
    # a second run into the same dir without --resume is refused
    with pytest.raises(HfasrError, match="--resume"):
        run_training(resolved, root, TASK, root / "gmm", out, progress=False)


def test_resume_is_exact(corpus, tmp_path, monkeypatch):
    root, _ = corpus
    cfg = config(optimizer="sgd", lr=0.2, epochs=4, newbob={"start_halving_impr": 0.3})
    ref = run_training(cfg, root, TASK, root / "gmm", tmp_path / "a", progress=False)
    assert ref.final_record()["dev_acc"] > 0.9

    # kill in the middle of epoch 3: the checkpoint of epoch 2 stays valid
    undo = kill_at_batch(monkeypatch, FrameRows, cfg.batch_size, epoch=3, batch=5)
    with pytest.raises(Killed):
        run_training(cfg, root, TASK, root / "gmm", tmp_path / "b", progress=False)
    undo()
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["driver"]["epoch"] == 2
    assert not (tmp_path / "b" / "final.pt").exists()

    res = run_training(cfg, root, TASK, root / "gmm", tmp_path / "b", resume=True, progress=False)
    a, b = params_of(ref.task.net), params_of(res.task.net)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda h: [{k: v for k, v in r.items() if k != "wall_s"} for r in h]
    assert strip(ref.history) == strip(res.history)
    fa = torch.load(tmp_path / "a" / "final.pt", weights_only=True)["state_dict"]
    fb = torch.load(tmp_path / "b" / "final.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    assert "# resumed from" in (tmp_path / "b" / "train.log").read_text()

    # a changed config cannot resume the run
    with pytest.raises(ConfigError, match=r"different config \(lr: 0.2 -> 0.3\)"):
        run_training(config(optimizer="sgd", lr=0.3, epochs=4, newbob={"start_halving_impr": 0.3}),
                     root, TASK, root / "gmm", tmp_path / "b", resume=True, progress=False)


def test_non_finite_loss_keeps_last_checkpoint(corpus, tmp_path, monkeypatch, capsys):
    root, _ = corpus
    orig = FrameRows.shuffled
    calls = {"n": 0}

    def poisoned(self, generator, batch_size):
        calls["n"] += 1
        plan = orig(self, generator, batch_size)
        if calls["n"] % 2 == 0:
            self.data.feats[plan[3][0]] = math.nan  # frame 0 of minibatch 4 of epoch 2
        return plan

    monkeypatch.setattr(FrameRows, "shuffled", poisoned)
    with pytest.raises(TrainingError, match=r"non-finite training loss .* epoch 2, minibatch 4"):
        run_training(config(epochs=3), root, TASK, root / "gmm", tmp_path, progress=False)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["driver"]["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["state_dict"].values())
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "final.pt").exists()
    assert main(["train", "--data-dir", str(root), "--task", TASK, "--ali-dir", str(root / "gmm"),
                 "--out", str(tmp_path / "c"), "--epochs", "3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error: non-finite training loss" in err and "(utterances train-" in err  # names its utterances


def test_newbob_rejects_and_restores(corpus, tmp_path):
    """An epoch that makes dev worse is undone (model and optimizer state restored)."""
    root, _ = corpus
    from hfasr.train.experiment import Experiment

    train = FrameData.load(root, TASK, "train", root / "gmm")
    dev = FrameData.load(root, TASK, "dev", root / "gmm")
    exp = Experiment(config(epochs=2, optimizer="sgd", lr=0.05), tmp_path, progress=False)
    task = CETask(exp.cfg, train, dev, exp.device)
    driver = exp.run(task, max_wall=1e-9)  # stops after the first epoch
    assert driver.epoch == 1
    before = params_of(task.net)
    driver.schedule.best_loss = -1.0  # nothing can beat it: epoch 2 is rejected
    exp.run(task, driver=driver)
    assert exp.history[-1]["accepted"] is False and driver.epoch == 2
    after = params_of(task.net)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "accepted=False" in (tmp_path / "train.log").read_text()


# --- schedules / priors ------------------------------------------------------------------------

def test_newbob_schedule():
    s = NewBobSchedule(1.0, NewBobConfig(start_halving_impr=0.1, end_halving_impr=0.01))
    s.start(10.0)
    d = s.step(1, 5.0)  # 50% better: keep lr
    assert d.accept and not d.stop and s.lr == 1.0
    d = s.step(2, 4.8)  # 4%: start halving
    assert d.accept and not d.stop and s.lr == 0.5
    d = s.step(3, 4.0)  # halving continues whatever the improvement
    assert d.accept and s.lr == 0.25
    d = s.step(4, 4.5)  # worse: rejected, improvement 0 < end: stop
    assert not d.accept and d.stop and s.best_loss == 4.0
    s2 = NewBobSchedule(1.0)
    s2.load_state_dict(s.state_dict())
    assert s2.state_dict() == s.state_dict()


def test_cosine_schedule_and_prior_floor():
    s = CosineSchedule(1.0, epochs=4, min_lr=0.0)
    lrs = [s.lr]
    for e in range(1, 4):
        s.step(e, 0.0)
        lrs.append(s.lr)
    assert lrs == pytest.approx([1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2])
    lp, floored = compute_log_prior(torch.tensor([3.0, 1.0, 0.0]), floor=1e-3)
    assert floored == 1 and lp.tolist() == pytest.approx([math.log(0.75), math.log(0.25), math.log(1e-3)])


def test_sigkill_and_resume_is_exact(corpus, tmp_path):
    """A real ``hfasr train`` process killed with SIGKILL resumes to the uninterrupted result."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root, _ = corpus
    cfg = {**SMALL, "batch_size": 16, "lr_schedule": "constant", "lr": 0.05, "epochs": 12}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    args = ["train", "--data-dir", str(root), "--task", TASK, "--ali-dir", str(root / "gmm"),
            "--config", str(tmp_path / "c.yaml"), "--quiet"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "hfasr.cli", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(out / "checkpoint.pt", weights_only=True)["driver"]["epoch"]
    assert 0 <= killed_at < 12 and not (out / "final.pt").exists()  # the first checkpoint: the initial report
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    a = torch.load(out / "final.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "ref" / "final.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_hessian_free_runs_on_the_dnn(corpus):
    """The DNN on spliced rows plugs into hfasr.optim (functional_call + linearize/vjp)."""
    from hfasr.criteria.curvature import SoftmaxFisher
    from hfasr.models import build_model
    from hfasr.optim import HessianFree, HFConfig, softmax_ce, tensor_objective

    root, _ = corpus
    d = FrameData.load(root, TASK, "train", root / "gmm")
    torch.manual_seed(0)
    model = build_model({"arch": "dnn", "input_dim": F, "num_outputs": NUM_PDFS, "hidden_dim": 16,
                         "num_layers": 2, "context": 1})
    model.set_cmvn(d.feats.mean(0), d.feats.std(0))
    rows = d.spliced(torch.arange(d.num_frames), 1)
    obj = tensor_objective(model.frames(), softmax_ce, lambda z, y: SoftmaxFisher(z), (rows, d.targets),
                           curvature_fraction=0.5)
    opt = HessianFree(model.parameters(), HFConfig(cg_max_iters=20))
    initial = obj.loss("gradient")
    for _ in range(3):
        stats = opt.step(obj)
    assert stats.loss_after < 0.85 * initial


@pytest.mark.parametrize("arch", ["blstm", "mdlstm"])
def test_recurrent_hybrid_ce_training(corpus, tmp_path, arch):
    """BLSTM / MDLSTM with a pdf softmax train on shuffled whole utterances (one output per
    alignment frame), report dev CE / accuracy, resume exactly, and give decoder log-likelihoods."""
    from hfasr.models import compute_loglikes

    root, _ = corpus
    small = {"blstm": {"hidden_size": 8, "num_layers": 1}, "mdlstm": {"hidden_sizes": [2, 4], "ff_sizes": [6],
                                                                     "freq_patches": [2]}}[arch]
    kw = dict(model=arch, optimizer="adam", lr=0.02, lr_schedule="constant", utt_batch_frames=200, **{arch: small})
    ref = run_training(config(epochs=3, **kw), root, TASK, root / "gmm", tmp_path / "a", progress=False)
    losses = [h["dev_obj"] for h in ref.history]
    assert losses[-1] < losses[0] and ref.final_record()["dev_acc"] > 0.5, ref.history
    run_training(config(epochs=2, **kw), root, TASK, root / "gmm", tmp_path / "b", progress=False)
    res = run_training(config(epochs=3, **kw), root, TASK, root / "gmm", tmp_path / "b", resume=True, progress=False)
    a, b = params_of(ref.task.net), params_of(res.task.net)
    assert all(torch.equal(a[k], b[k]) for k in a)
    model = load_model(tmp_path / "a" / "final.pt")
    dev = FrameData.load(root, TASK, "dev", root / "gmm")
    x, _ = dev.utterance(0)
    ll = compute_loglikes(model, x, torch.zeros(NUM_PDFS))
    assert ll.shape == (x.shape[0], NUM_PDFS)


def test_recurrent_hybrid_ce_config_errors(corpus, tmp_path):
    root, _ = corpus
    with pytest.raises((ConfigError, ValueError), match="subsample must be 1"):
        config(model="blstm", blstm={"subsample": 3})
    with pytest.raises((ConfigError, ValueError), match="time_patch must be 1"):
        config(model="mdlstm", mdlstm={"time_patch": 2})
    # HF trains the recurrent hybrid models too (whole utterances as examples)
    exp = run_training(config(model="blstm", optimizer="hf", blstm={"hidden_size": 4, "num_layers": 1},
                              hf={"updates": 2, "curvature_fraction": 0.5, "curvature_min": 4,
                                  "optimizer": {"cg_max_iters": 10}}),
                       root, TASK, root / "gmm", tmp_path / "hf", progress=False)
    assert exp.history[-1]["dev_obj"] < exp.history[0]["dev_obj"] and exp.history[-1]["update"] == 2
