"""Fault injection for training, log-likelihoods and decoding (issue 15): tampered / truncated /
wrong-kind input files (a pickle payload never runs), one writer per experiment, a full disk
while checkpointing, non-finite features and log-likelihoods. Every user-caused fault is an
``error:`` naming the file or the cut, with exit status 2 and no partial output."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from toy_frames import TASK, build_toy_corpus
from toy_tasks import run_toy, toy_config

from hfasr.cli import main
from hfasr.errors import DataError
from hfasr.fileio import DirLock

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_CE = "optimizer: hf\nnum_threads: 1\ndnn: {hidden_dim: 16, num_layers: 1, context: 1}\n" \
           "hf: {updates: 1, curvature_min: 64, optimizer: {cg_max_iters: 5}}\n"


class _Payload:
    """Unpickling this runs ``touch <marker>`` (what a tampered file would do)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _train_args(data, out, cfg, *extra) -> list[str]:
    return ["train", "--data-dir", str(data), "--task", TASK, "--ali-dir", str(data / "gmm"), "--out", str(out),
            "--config", str(cfg), "--quiet", *extra]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy frame corpus and one finished 1-update CE-HF run on it (``exp``)."""
    root = tmp_path_factory.mktemp("faults")
    data, _ = build_toy_corpus(root / "data")
    cfg = root / "ce.yaml"
    cfg.write_text(SMALL_CE)
    assert main(_train_args(data, root / "exp", cfg)) == 0
    return data, root / "exp", cfg


def _poison(data, split: str, index: int, value: float) -> str:
    """Write ``value`` into frame 2 of cut ``index`` of ``split`` (its numpy feature file)."""
    from lhotse import load_manifest

    cut = load_manifest(data / f"{TASK}_feats_{split}.jsonl.gz")[index]
    path = os.path.join(cut.features.storage_path, cut.features.storage_key)
    x = np.load(path)
    x[2, 1] = value
    np.save(path, x)
    return cut.id


# ------------------------------------------------------------------ one writer per experiment

def test_second_train_on_the_same_out_fails_while_the_first_holds_it(toy, tmp_path, capsys):
    data, _, cfg = toy
    out = tmp_path / "run"
    with DirLock(out, "hfasr train (the first run)"):
        assert main(_train_args(data, out, cfg)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"pid {os.getpid()}" in err and "in use by another run" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [".hfasr.lock"]  # the second run wrote nothing
    # the lock of a finished run is released: the first run's dir can be resumed (extended)
    assert main(_train_args(data, out, cfg)) == 0
    assert main(_train_args(data, out, cfg, "--resume", "--updates", "2")) == 0
    hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [h["update"] for h in hist] == [0, 1, 2]
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_decode_and_score_lock_their_out_dirs(tmp_path, capsys):
    (tmp_path / "ref").write_text("a X\n")
    out = tmp_path / "score"
    with DirLock(out, "another scorer"):
        assert main(["score", "--ref", str(tmp_path / "ref"), "--hyp", str(tmp_path / "ref"), "--out", str(out),
                     "--replications", "10"]) == 2
    assert "in use by another run" in capsys.readouterr().err and not (out / "wer.txt").exists()
    assert main(["score", "--ref", str(tmp_path / "ref"), "--hyp", str(tmp_path / "ref"), "--out", str(out),
                 "--replications", "10"]) == 0


# ------------------------------------------------------------------ tampered / truncated files

def test_tampered_or_truncated_checkpoint_on_resume(toy, tmp_path, capsys):
    data, exp, cfg = toy
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    shutil.copytree(exp, run)
    ck = run / "checkpoint.pt"
    good = ck.read_bytes()
    torch.save({"model_config": {"arch": "dnn"}, "state_dict": {}, "x": _Payload(marker)}, ck)
    assert main(_train_args(data, run, cfg, "--resume", "--updates", "2")) == 2
    err = capsys.readouterr().err
    assert f"{ck}: cannot read checkpoint" in err and "Traceback" not in err
    assert not marker.exists()
    ck.write_bytes(good[: len(good) // 3])
    assert main(_train_args(data, run, cfg, "--resume", "--updates", "2")) == 2
    assert f"{ck}: cannot read checkpoint" in capsys.readouterr().err
    # loaded safely but of the wrong kind (a final.pt has no training state)
    shutil.copyfile(run / "final.pt", ck)
    assert main(_train_args(data, run, cfg, "--resume", "--updates", "2")) == 2
    assert "not a training checkpoint" in capsys.readouterr().err


def test_tampered_checkpoint_on_sequence_resume_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    out = tmp_path / "seq"
    out.mkdir()
    torch.save({"model_config": {}, "state_dict": {}, "driver": {}, "config": {}, "x": _Payload(marker)},
               out / "checkpoint.pt")
    with pytest.raises(DataError, match="checkpoint.pt: cannot read checkpoint"):
        run_toy(toy_config("sequence"), "sequence", out, resume=True)
    assert not marker.exists()


def test_truncated_or_tampered_prior_and_model_for_loglikes(toy, tmp_path, capsys):
    data, exp, _ = toy
    marker = tmp_path / "PWNED"
    ll = tmp_path / "ll" / "dev.pt"

    def loglikes(model, prior) -> int:
        return main(["loglikes", "--model", str(model), "--prior", str(prior), "--data-dir", str(data),
                     "--task", TASK, "--split", "dev", "--out", str(ll)])

    prior = tmp_path / "prior.pt"
    raw = (exp / "prior.pt").read_bytes()
    prior.write_bytes(raw[: len(raw) // 2])
    assert loglikes(exp / "final.pt", prior) == 2
    err = capsys.readouterr().err
    assert f"{prior}: cannot read a prior file" in err and "Traceback" not in err
    torch.save({"log_prior": _Payload(marker)}, prior)
    assert loglikes(exp / "final.pt", prior) == 2
    assert f"{prior}: cannot read a prior file" in capsys.readouterr().err and not marker.exists()
    torch.save({"mean": torch.zeros(3)}, prior)  # a file of the wrong kind
    assert loglikes(exp / "final.pt", prior) == 2
    assert "missing keys ['log_prior']" in capsys.readouterr().err
    torch.save({"log_prior": torch.tensor([0.0, float("nan")])}, prior)
    assert loglikes(exp / "final.pt", prior) == 2
    assert "non-finite" in capsys.readouterr().err
    model = tmp_path / "final.pt"
    raw = (exp / "final.pt").read_bytes()
    model.write_bytes(raw[:100])
    assert loglikes(model, exp / "prior.pt") == 2
    assert f"{model}: cannot read checkpoint" in capsys.readouterr().err
    assert not ll.exists()
    assert loglikes(exp / "final.pt", exp / "prior.pt") == 0  # the intact files work
    d = torch.load(ll, weights_only=True)
    assert len(d["cut_ids"]) == 6 and all(bool(torch.isfinite(x).all()) for x in d["loglikes"])


def test_truncated_or_tampered_cmvn_stats(toy, tmp_path, capsys):
    data, _, cfg = toy
    copy = tmp_path / "data"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns("feats"))  # manifests point to data/feats
    stats = copy / f"{TASK}_stats.pt"
    raw = stats.read_bytes()
    stats.write_bytes(raw[: len(raw) // 2])
    assert main(_train_args(copy, tmp_path / "a", cfg)) == 2
    err = capsys.readouterr().err
    assert f"{stats}: cannot read CMVN stat" in err and "Traceback" not in err
    marker = tmp_path / "PWNED"
    torch.save({"mean": _Payload(marker), "std": torch.ones(6)}, stats)
    assert main(_train_args(copy, tmp_path / "b", cfg)) == 2
    assert "cannot read CMVN stat" in capsys.readouterr().err and not marker.exists()
    torch.save({"mean": torch.zeros(4), "std": torch.ones(4)}, stats)
    assert main(_train_args(copy, tmp_path / "c", cfg)) == 2
    assert "shape (6,)" in capsys.readouterr().err


def test_truncated_or_tampered_loglikes_file(tmp_path):
    from hfasr.bin.decode import load_loglikes

    marker = tmp_path / "PWNED"
    p = tmp_path / "ll.pt"
    torch.save({"cut_ids": ["a"], "loglikes": [_Payload(marker)]}, p)
    with pytest.raises(DataError, match="ll.pt: cannot read a log-likelihood file"):
        load_loglikes(p)
    assert not marker.exists()
    torch.save({"cut_ids": ["a", "b"], "loglikes": [torch.zeros(4, 3), torch.zeros(5, 3)]}, p)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) - 40])
    with pytest.raises(DataError, match="ll.pt: cannot read a log-likelihood file"):
        load_loglikes(p)
    torch.save([torch.zeros(2, 2)], p)
    with pytest.raises(DataError, match="expected a log-likelihood file"):
        load_loglikes(p)


# ------------------------------------------------------------------ a full disk

def test_enospc_while_checkpointing_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    from hfasr.models import load_checkpoint

    out = tmp_path / "run"
    real_save = torch.save
    calls = {"checkpoint": 0}

    def full_disk(obj, f, *a, **kw):
        name = os.path.basename(getattr(f, "name", str(f)))
        if name.startswith("checkpoint.pt.tmp."):
            calls["checkpoint"] += 1
            if calls["checkpoint"] == 2:  # the checkpoint after HF update 1: half written, then the disk is full
                f.write(b"PK\x03\x04" + b"\0" * 1000)
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DataError, match=r"checkpoint\.pt: no space left on the device"):
        run_toy(toy_config("frame"), "frame", out)
    monkeypatch.setattr(torch, "save", real_save)
    assert [h["note"] for h in load_checkpoint(out / "checkpoint.pt")["history"]] == ["init"]  # the old one, valid
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    exp, _, _ = run_toy(toy_config("frame"), "frame", out, resume=True)  # space freed: the run continues
    assert [h["update"] for h in exp.history] == [0, 1, 2]


def test_enospc_outside_the_safe_writers_is_a_clean_cli_error(monkeypatch, capsys):
    from hfasr.bin import score as cmd

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/x/wer.txt")

    monkeypatch.setattr(cmd, "run", full)
    assert main(["score", "--ref", "r", "--hyp", "h", "--out", "o"]) == 2
    assert capsys.readouterr().err == "error: /x/wer.txt: no space left on the device (No space left on device)\n"


# ------------------------------------------------------------------ non-finite inputs and outputs

def test_nan_features_in_ce_hf_name_the_cut(tmp_path, capsys):
    data, _ = build_toy_corpus(tmp_path / "data")
    cid = _poison(data, "train", 3, float("nan"))
    cfg = tmp_path / "ce.yaml"
    cfg.write_text(SMALL_CE)
    out = tmp_path / "exp"
    assert main(_train_args(data, out, cfg)) == 2
    err = capsys.readouterr().err  # caught where the features are read, or else by the trainer
    assert err.startswith(f"error: cut '{cid}' of ") and "non-finite" in err and "frame 2" in err
    assert not (out / "checkpoint.pt").exists() and not (out / "final.pt").exists()
    # loglikes of a split with a NaN: an error naming the cut, nothing written (never a NaN)
    dcid = _poison(data, "dev", 1, float("inf"))
    from hfasr.models import build_model, save_model

    model = build_model({"arch": "dnn", "input_dim": 6, "num_outputs": 5, "hidden_dim": 8, "num_layers": 1,
                         "context": 1})
    save_model(tmp_path / "m" / "final.pt", model)
    torch.save({"log_prior": torch.full((5,), -1.6)}, tmp_path / "m" / "prior.pt")
    ll = tmp_path / "m" / "dev.pt"
    assert main(["loglikes", "--model", str(tmp_path / "m" / "final.pt"), "--data-dir", str(data), "--task", TASK,
                 "--split", "dev", "--out", str(ll)]) == 2
    err = capsys.readouterr().err
    assert f"error: cut '{dcid}' of " in err and "non-finite feature value in frame 2" in err
    assert not ll.exists()


@pytest.mark.parametrize("value", [float("nan"), 1e30])
def test_bad_features_in_the_ce_task_name_the_cut(tmp_path, value):
    """The trainer's own check (features handed to it in memory, bypassing the loaders)."""
    from hfasr.data.frames import FrameData
    from hfasr.train.ce import CETask
    from hfasr.train.experiment import Experiment

    g = torch.Generator().manual_seed(3)
    targets = [torch.randint(0, 5, (6 + i,), generator=g) for i in range(6)]
    feats = [torch.randn(len(y), 3, generator=g) for y in targets]
    feats[4][3, 1] = value
    cuts = [f"c{i}" for i in range(6)]
    train, dev = FrameData(cuts, feats, targets, 5), FrameData(cuts[:2], feats[:2], targets[:2], 5)
    exp = Experiment(toy_config("frame"), tmp_path / "ce", progress=False)
    kind = "absurd" if math.isfinite(value) else "non-finite"
    with pytest.raises(DataError, match=rf"cut 'c4' of split 'train': an? {kind} .* in frame 3"):
        CETask(exp.cfg, train, dev, exp.device)
    with pytest.raises(DataError, match=r"cut 'c4' of split 'dev'"):
        CETask(exp.cfg, dev, train, exp.device)


def _seq_data(poison: float):
    from lattice_utils import random_seq_data

    train = random_seq_data(20, 1, 5, 3, t_span=5, dtype=torch.float64)
    train.feats[4][1, 2] = poison
    return train, random_seq_data(4, 2, 5, 3, t_span=5, dtype=torch.float64)


@pytest.mark.parametrize("value", [float("nan"), 1e30])
def test_bad_features_in_smbr_hf_name_the_cut(tmp_path, value):
    from hfasr.models import build_model
    from hfasr.train.experiment import Experiment
    from hfasr.train.sequence import SequenceTask

    exp = Experiment(toy_config("sequence"), tmp_path / "seq", progress=False)
    train, dev = _seq_data(value)
    model = build_model({"arch": "dnn", "input_dim": 3, "num_outputs": 5, "hidden_dim": 8, "num_layers": 1,
                         "context": 1}).double()
    kind = "absurd" if math.isfinite(value) else "non-finite"
    with pytest.raises(DataError, match=rf"cut '{train.cut_ids[4]}' of split 'train': an? {kind} .* frame 1"):
        SequenceTask(exp.cfg, model, torch.full((5,), -1.6, dtype=torch.float64),
                     {"tid2phone": torch.arange(8), "silence_phones": []}, train, dev, exp.device, progress=False)


@pytest.mark.parametrize("value", [float("nan"), float("-inf"), 1e30])
def test_bad_features_in_ctc_name_the_cut_before_cmvn(tmp_path, value):
    from hfasr.criteria.ctc import TokenTable
    from hfasr.data.utterances import UtteranceSet
    from hfasr.train.ctc import CtcTask, compute_cmvn
    from hfasr.train.experiment import Experiment

    g = torch.Generator().manual_seed(5)
    table = TokenTable(["a", "b", "c"], "char", word_boundary=None)
    texts = ["ab", "ba", "abc", "cab", "ca", "bc"]
    feats = [torch.randn(8 + 2 * len(t), 3, generator=g) for t in texts]
    feats[2][5, 0] = value
    data = UtteranceSet([f"u{i}" for i in range(6)], feats, [torch.tensor(table.encode(t)) for t in texts], texts)
    with pytest.raises(DataError, match=r"cut 'u2' of train.jsonl: .* in frame 5"):
        compute_cmvn(feats, cut_ids=data.cut_ids, where="train.jsonl")
    exp = Experiment(toy_config("ctc"), tmp_path / "ctc", progress=False)
    with pytest.raises(DataError, match=r"cut 'u2' of split 'train'"):
        CtcTask(exp.cfg, table, data, data.subset([0, 1]), exp.device)
    # finite features: the CMVN is the plain mean / std, computed in float64
    feats[2][5, 0] = 0.5
    mean, std = compute_cmvn(feats, cut_ids=data.cut_ids)
    x = torch.cat(feats).double()
    assert torch.allclose(mean.double(), x.mean(0), atol=1e-6) and torch.allclose(std.double(), x.std(0), atol=1e-6)


def test_nan_in_a_loglikes_file_is_a_decode_error_naming_the_cut(graph, tmp_path, monkeypatch, capsys):
    from yesno_graph import WORDS, YES_NO, crafted

    from hfasr.bin import decode as cmd

    gdir = tmp_path / "graph"
    gdir.mkdir()
    (gdir / "HCLG.fst").write_bytes(graph.path.read_bytes())
    (gdir / "words.txt").write_text("".join(f"{w} {i}\n" for w, i in WORDS.items()))
    monkeypatch.setattr(cmd, "load_tid2pdf", lambda model_dir: graph.tid2pdf)
    good = crafted(graph, YES_NO, seed=5)[0]
    bad = good.clone()
    bad[3, 0] = float("nan")
    torch.save({"cut_ids": ["t1", "t2"], "loglikes": [good, bad]}, tmp_path / "test.pt")
    (tmp_path / "ref").write_text("t1 YES NO\nt2 YES NO\n")
    out = tmp_path / "decode_test"
    argv = ["decode", "--loglikes", str(tmp_path / "test.pt"), "--graph-dir", str(gdir), "--model-dir",
            str(tmp_path), "--out", str(out), "--ref", str(tmp_path / "ref"), "--acoustic-scale", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'test.pt'}: log-likelihoods of cut 't2' are not finite (frame 3)" in err
    assert not (out / "hyp.txt").exists() and not (out / "wer.txt").exists()
    torch.save({"cut_ids": ["t1", "t2"], "loglikes": [good, good]}, tmp_path / "test.pt")
    assert main(argv) == 0
    assert (out / "hyp.txt").read_text() == "t1 YES NO\nt2 YES NO\n"
    assert (out / "wer.txt").read_text().startswith("%WER 0.00") and "# acoustic scale 1 (given)" in \
        (out / "wer.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if "staging" in p.name) == []


# ------------------------------------------------------------------ history.jsonl

def test_readers_skip_a_torn_last_history_line(toy, tmp_path, capsys):
    from hfasr.bin.report import read_history
    from hfasr.bin.results import train_wall

    _, exp, _ = toy
    d = tmp_path / "exp" / "m"
    d.mkdir(parents=True)
    lines = (exp / "history.jsonl").read_text()
    (d / "history.jsonl").write_text(lines + lines.splitlines()[-1][:25])  # killed mid-append
    run = read_history(d)
    assert [p.update for p in run.points] == [0, 1]
    assert train_wall(tmp_path / "exp", "m") == f"{json.loads(lines.splitlines()[-1])['wall_s']:.0f} s"
    # a bad line that is not the last one stays an error naming the line
    (d / "history.jsonl").write_text(lines.splitlines()[0][:25] + "\n" + lines)
    with pytest.raises(DataError, match="history.jsonl:1: not valid JSON"):
        read_history(d)


def test_stale_temporaries_of_killed_runs_are_removed(tmp_path):
    import subprocess
    import sys

    from hfasr.train.experiment import remove_stale_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "models").mkdir()
    stale = [tmp_path / f"checkpoint.pt.tmp.{dead.pid}.0", tmp_path / "models" / f"3.pt.tmp.{dead.pid}.1"]
    live = tmp_path / f"final.pt.tmp.{os.getpid()}.2"
    for p in [*stale, live, tmp_path / "notes.tmp"]:
        p.write_text("x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert live.exists() and (tmp_path / "notes.tmp").exists() and not any(p.exists() for p in stale)


def _locked_rank(rank: int, store: str, out: str, results: str) -> None:
    import torch.distributed as dist
    from toy_tasks import frame_task

    from hfasr.fileio import LockError
    from hfasr.train.experiment import run_experiment

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        try:
            run_experiment(toy_config("frame"), frame_task, out, progress=False)
            msg = "ok"
        except LockError as e:
            msg = f"LockError: {e}"
        with open(os.path.join(results, f"r{rank}.txt"), "w") as f:
            f.write(msg)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns 2 processes
def test_a_refused_distributed_run_stops_on_every_rank(tmp_path):
    """Under torchrun only rank 0 locks; a refusal reaches every rank (none waits at a barrier)."""
    import torch.multiprocessing as mp

    out = tmp_path / "run"
    with DirLock(out, "the first run"):
        mp.spawn(_locked_rank, args=(str(tmp_path / "store1"), str(out), str(tmp_path)), nprocs=2, join=True)
    msgs = [(tmp_path / f"r{r}.txt").read_text() for r in range(2)]
    assert all(m.startswith("LockError: ") and f"pid {os.getpid()}" in m for m in msgs), msgs
    mp.spawn(_locked_rank, args=(str(tmp_path / "store2"), str(out), str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"r{r}.txt").read_text() for r in range(2)] == ["ok", "ok"]
    assert (out / "final.pt").is_file()
