"""Frame data, CE training with torch.optim, checkpoints / exact resume, priors, schedules.

A tiny synthetic corpus (lhotse cuts with numpy features, pdf labels in runs whose features are
the label's mean plus noise) stands in for fbank + GMM alignments.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lhotse import CutSet, Features, MonoCut, NumpyFilesWriter

from hfasr.cli import main
from hfasr.config import load_config
from hfasr.data.features import save_stats
from hfasr.data.frames import IGNORE_INDEX, FrameData, FrameDataConfig
from hfasr.errors import ConfigError, DataError, HfasrError
from hfasr.models import DNN, load_model, splice
from hfasr.train import TrainConfig, Trainer, TrainingError, run_training
from hfasr.train.ce import compute_log_prior
from hfasr.train.schedule import CosineSchedule, NewBobConfig, NewBobSchedule

TASK = "toy"
F = 6
NUM_PDFS = 5  # pdf 4 never occurs: its prior is floored
SEEN = 4
SMALL = {"dnn": {"hidden_dim": 32, "num_layers": 2, "context": 2}, "batch_size": 32, "num_threads": 1}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is fastest (and avoids OpenMP contention on busy hosts)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_split(root: Path, split: str, n: int, means: torch.Tensor, g: torch.Generator) -> dict:
    writer = NumpyFilesWriter(root / "feats" / split)
    cuts, ids, pdfs = [], [], []
    for u in range(n):
        T = int(torch.randint(25, 45, (1,), generator=g))
        labels = []
        while len(labels) < T:
            labels += [int(torch.randint(0, SEEN, (1,), generator=g))] * int(torch.randint(3, 9, (1,), generator=g))
        y = torch.tensor(labels[:T])
        x = means[y] + 1.2 * torch.randn(T, F, generator=g) + 5.0  # offset: CMVN matters
        cid = f"{split}-{u:03d}"
        key = writer.write(cid, x.numpy().astype(np.float32))
        feats = Features(type="fbank", num_frames=T, num_features=F, frame_shift=0.01, sampling_rate=16000,
                         start=0, duration=T * 0.01, storage_type=writer.name,
                         storage_path=str(writer.storage_path), storage_key=key)
        cuts.append(MonoCut(id=cid, start=0, duration=T * 0.01, channel=0, features=feats))
        ids.append(cid)
        pdfs.append(y.int())
    CutSet.from_cuts(cuts).to_file(root / f"{TASK}_feats_{split}.jsonl.gz")
    return {"cut_ids": ids, "tids": [p + 1 for p in pdfs], "pdfs": pdfs, "phones": [p // 2 + 1 for p in pdfs],
            "num_pdfs": NUM_PDFS}


def write_ali(ali_dir: Path, split: str, ali: dict) -> None:
    ali_dir.mkdir(parents=True, exist_ok=True)
    torch.save(ali, ali_dir / f"ali_{split}.pt")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    g = torch.Generator().manual_seed(0)
    means = 1.5 * torch.randn(SEEN, F, generator=g)
    alis = {"train": make_split(root, "train", 24, means, g), "dev": make_split(root, "dev", 6, means, g)}
    for split, ali in alis.items():
        write_ali(root / "gmm", split, ali)
    train = FrameData.load(root, TASK, "train", root / "gmm")
    save_stats(root / f"{TASK}_stats.pt", train.feats.mean(0), train.feats.std(0))
    return root, alis


def config(**kw) -> TrainConfig:
    d = {**SMALL, **kw}
    return load_config(TrainConfig, None, d)


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


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
    run = lambda seed: list(d.frame_batches(50, 1, torch.Generator().manual_seed(seed)))
    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    ys = torch.cat([y for _, y in a])
    assert len(ys) == d.num_frames and torch.equal(ys.sort().values, d.targets.sort().values)
    assert a[0][0].shape == (50, 3 * F) and len(a) == d.num_batches(50) == math.ceil(d.num_frames / 50)


def test_utterance_batches(corpus):
    root, _ = corpus
    d = FrameData.load(root, TASK, "train", root / "gmm")
    seen = []
    for b in d.utterance_batches(120, torch.Generator().manual_seed(0)):
        B, T, _ = b.feats.shape
        assert B * T <= 120 or B == 1
        assert T == int(b.lengths.max()) and b.targets.shape == (B, T) and b.phones.shape == (B, T)
        for i, u in enumerate(b.indices.tolist()):
            x, y = d.utterance(u)
            L = int(b.lengths[i])
            assert torch.equal(b.feats[i, :L], x) and torch.equal(b.targets[i, :L], y)
            assert (b.targets[i, L:] == IGNORE_INDEX).all() and b.cut_ids[i] == d.cut_ids[u]
        seen += b.indices.tolist()
    assert sorted(seen) == list(range(len(d)))


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
    lines = [ln for ln in (out / "train.log").read_text().splitlines() if ln.startswith("epoch=")]
    assert len(lines) == 6 and "dev_acc=" in lines[-1] and "lr=" in lines[-1]
    assert sum(ln.startswith("epoch=") for ln in stdout.splitlines()) == 6
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


class Killed(Exception):
    pass


def test_resume_is_exact(corpus, tmp_path, monkeypatch):
    root, _ = corpus
    cfg = config(optimizer="sgd", lr=0.2, epochs=4, newbob={"start_halving_impr": 0.3})
    ref = run_training(cfg, root, TASK, root / "gmm", tmp_path / "a", progress=False)
    assert ref.final_metrics()["dev_acc"] > 0.9

    # kill in the middle of epoch 3: the checkpoint of epoch 2 stays valid
    orig = FrameData.frame_batches
    calls = {"n": 0}

    def killing(self, batch_size, context, generator=None, drop_last=False):
        if generator is not None:
            calls["n"] += 1
        for i, b in enumerate(orig(self, batch_size, context, generator, drop_last)):
            if calls["n"] == 3 and i == 5:
                raise Killed
            yield b

    monkeypatch.setattr(FrameData, "frame_batches", killing)
    with pytest.raises(Killed):
        run_training(cfg, root, TASK, root / "gmm", tmp_path / "b", progress=False)
    monkeypatch.setattr(FrameData, "frame_batches", orig)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert not (tmp_path / "b" / "final.pt").exists()

    res = run_training(cfg, root, TASK, root / "gmm", tmp_path / "b", resume=True, progress=False)
    a, b = params_of(ref.model), params_of(res.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(ref.history) == strip(res.history)
    fa = torch.load(tmp_path / "a" / "final.pt", weights_only=True)["state_dict"]
    fb = torch.load(tmp_path / "b" / "final.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    assert "# resumed from" in (tmp_path / "b" / "train.log").read_text()

    # a changed config cannot resume the run
    with pytest.raises(ConfigError, match=r"different config \(lr: 0.2 -> 0.3\)"):
        run_training(config(optimizer="sgd", lr=0.3, epochs=4, newbob={"start_halving_impr": 0.3}),
                     root, TASK, root / "gmm", tmp_path / "b", resume=True, progress=False)


def test_non_finite_loss_keeps_last_checkpoint(corpus, tmp_path, monkeypatch):
    root, _ = corpus
    orig = FrameData.frame_batches
    calls = {"n": 0}

    def poisoned(self, batch_size, context, generator=None, drop_last=False):
        if generator is not None:
            calls["n"] += 1
        for rows, y in orig(self, batch_size, context, generator, drop_last):
            yield (rows * math.nan if calls["n"] == 2 else rows), y

    monkeypatch.setattr(FrameData, "frame_batches", poisoned)
    with pytest.raises(TrainingError, match="non-finite training loss .* epoch 2"):
        run_training(config(epochs=3), root, TASK, root / "gmm", tmp_path, progress=False)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["state_dict"].values())
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "final.pt").exists()
    assert main(["train", "--data-dir", str(root), "--task", TASK, "--ali-dir", str(root / "gmm"),
                 "--out", str(tmp_path / "c"), "--epochs", "3", "--quiet"]) == 2


def test_newbob_rejects_and_restores(corpus, tmp_path):
    """An epoch that makes dev worse is undone (model and optimizer state restored)."""
    root, _ = corpus
    train = FrameData.load(root, TASK, "train", root / "gmm")
    dev = FrameData.load(root, TASK, "dev", root / "gmm")
    tr = Trainer(config(epochs=2, optimizer="sgd", lr=0.05), train, dev, tmp_path, progress=False)
    tr.fit(max_epochs=1)
    before = params_of(tr.model)
    tr.schedule.best_loss = -1.0  # nothing can beat it: epoch 2 is rejected
    tr.fit()
    assert tr.history[-1]["accepted"] is False and tr.epoch == 2
    after = params_of(tr.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "status=rejected" in (tmp_path / "train.log").read_text()


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
    killed_at = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= killed_at < 12 and not (out / "final.pt").exists()
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    a = torch.load(out / "final.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "ref" / "final.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_hessian_free_runs_on_the_dnn(corpus):
    """The DNN on spliced rows plugs into hfasr.optim (functional_call + linearize/vjp)."""
    from hfasr.models import build_model
    from hfasr.optim import HessianFree, HFConfig, SoftmaxFisher, TensorObjective, softmax_ce

    root, _ = corpus
    d = FrameData.load(root, TASK, "train", root / "gmm")
    torch.manual_seed(0)
    model = build_model({"arch": "dnn", "input_dim": F, "num_outputs": NUM_PDFS, "hidden_dim": 16,
                         "num_layers": 2, "context": 1})
    model.set_cmvn(d.feats.mean(0), d.feats.std(0))
    rows = d.spliced(torch.arange(d.num_frames), 1)
    obj = TensorObjective(model.frames(), softmax_ce, lambda z, y: SoftmaxFisher(z), (rows, d.targets),
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
    losses = [h["dev_loss"] for h in ref.history]
    assert losses[-1] < losses[0] and ref.final_metrics()["dev_acc"] > 0.5, ref.history
    run_training(config(epochs=2, **kw), root, TASK, root / "gmm", tmp_path / "b", progress=False)
    res = run_training(config(epochs=3, **kw), root, TASK, root / "gmm", tmp_path / "b", resume=True, progress=False)
    a, b = params_of(ref.model), params_of(res.model)
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
    with pytest.raises(ConfigError, match="frame-level model"):
        run_training(config(model="blstm", optimizer="hf", blstm={"hidden_size": 4, "num_layers": 1}),
                     root, TASK, root / "gmm", tmp_path / "hf", progress=False)
