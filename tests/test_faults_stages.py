"""Fault injection for the lang, GMM, alignment and lattice stages (issue 15).

On yesno with a tiny GMM (3 passes) and a 1-epoch CE DNN built once for the module (about 10 s):
a truncated ``G.fst`` / ``HCLG.fst`` / ``final.mdl`` is a clean ``error:`` naming the file; a
tampered alignment or lattice file is refused without running its pickle payload; a failure on
the last split of ``hfasr lang`` / ``gmm`` / ``align`` / ``lattices`` leaves the previous outputs
byte for byte and no temporary files; a second run on a held ``--out`` fails at once.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest

from hfasr.cli import main
from hfasr.errors import DataError
from hfasr.fileio import DirLock

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.py)

TASK = "yesno"


@pytest.fixture(scope="module")
def exp(tmp_path_factory, yesno_dir):
    """``root`` with data/ (yesno features), lang/, gmm/ (3 passes, 20 Gaussians), dnn/final.pt, lats/."""
    from hfasr.data.corpora import prepare_corpus
    from hfasr.data.features import FeatureConfig, compute_features

    root = tmp_path_factory.mktemp("faults")
    data = root / "data"
    prepare_corpus("yesno", data, corpus_dir=yesno_dir)
    compute_features(data, TASK, FeatureConfig(), progress=False)
    assert main(["lang", "--data-dir", str(data), "--task", TASK, "--out", str(root / "lang"), "--lm-order", "1"]) == 0
    (root / "gmm.yaml").write_text("total_gauss: 20\nnum_iters: 3\nmax_iter_inc: 2\nrealign_iters: [1]\n"
                                   "num_jobs: 1\nalign_splits: [train, dev]\n")
    assert main(_gmm_args(root, root / "gmm")) == 0
    (root / "ce.yaml").write_text("dnn: {hidden_dim: 16, num_layers: 2, context: 1}\nbatch_size: 64\nnum_threads: 1\n")
    assert main(["train", "--criterion", "ce", "--optimizer", "adam", "--data-dir", str(data), "--task", TASK,
                 "--ali-dir", str(root / "gmm"), "--out", str(root / "dnn"), "--config", str(root / "ce.yaml"),
                 "--epochs", "1", "--lr", "0.01", "--quiet"]) == 0
    assert main(_lattice_args(root, root / "lats")) == 0
    return root


def _gmm_args(root: Path, out: Path, lang: Path | None = None) -> list[str]:
    return ["gmm", "--data-dir", str(root / "data"), "--task", TASK, "--lang", str(lang or root / "lang"),
            "--out", str(out), "--config", str(root / "gmm.yaml"), "--quiet"]


def _align_args(root: Path, out: Path, gmm: Path | None = None) -> list[str]:
    return ["align", "--model", str(root / "dnn" / "final.pt"), "--data-dir", str(root / "data"), "--task", TASK,
            "--gmm-dir", str(gmm or root / "gmm"), "--lang", str(root / "lang"), "--out", str(out), "--quiet"]


def _lattice_args(root: Path, out: Path) -> list[str]:
    return ["lattices", "--model", str(root / "dnn" / "final.pt"), "--data-dir", str(root / "data"), "--task", TASK,
            "--split", "train", "dev", "--lang", str(root / "lang"), "--gmm-dir", str(root / "gmm"),
            "--out", str(out), "--num-jobs", "1", "--quiet"]


def _lang_args(root: Path, out: Path) -> list[str]:
    return ["lang", "--data-dir", str(root / "data"), "--task", TASK, "--out", str(out), "--lm-order", "1"]


def _snapshot(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` (the lock file aside) by relative path."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != DirLock.NAME}


def _no_temporaries(d: Path) -> None:
    """Neither a staging dir beside ``d`` nor a temporary file in it."""
    assert not [p.name for p in d.parent.iterdir() if ".staging." in p.name]
    assert not [str(p) for p in d.rglob("*") if ".tmp" in p.name]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / DirLock.NAME).unlink(missing_ok=True)
    return dst


def _clean_error(capsys, *names: str) -> str:
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    for n in names:
        assert n in err, err
    return err


# ------------------------------------------------------------------------------ truncated inputs
@pytest.mark.parametrize("name", ["G.fst", "L_disambig.fst"])
def test_truncated_lang_fst_is_a_clean_error_before_training(exp, tmp_path, capsys, name):
    lang = _copy(exp / "lang", tmp_path / "lang")
    _truncate(lang / name)
    capsys.readouterr()
    assert main(_gmm_args(exp, tmp_path / "gmm", lang)) == 2
    _clean_error(capsys, str(lang / name))
    assert not (tmp_path / "gmm" / "final.mdl").exists()  # nothing trained, nothing published
    (lang / name).write_bytes(b"not an fst")
    from hfasr.lang.prepare import Lang

    with pytest.raises(DataError, match=name):
        Lang(lang).G() if name == "G.fst" else Lang(lang).L_disambig()


def test_truncated_g_fst_in_ctc_graph_build(exp, tmp_path):
    from hfasr.lang.ctc import build_ctc_graph

    lang = _copy(exp / "lang", tmp_path / "lang")
    _truncate(lang / "G.fst")
    with pytest.raises(DataError, match="G.fst"):
        build_ctc_graph(lang, ["<blk>", "N", "Y", "SIL"], "phone", tmp_path / "graph")
    assert not (tmp_path / "graph" / "TLG.fst").exists()


def test_truncated_hclg_is_a_clean_error(exp, tmp_path, capsys):
    from lhotse import load_manifest

    from hfasr.gmm.decode import decode_gmm

    gmm = _copy(exp / "gmm", tmp_path / "gmm")
    _truncate(gmm / "graph" / "HCLG.fst")
    cuts = load_manifest(exp / "data" / f"{TASK}_feats_test.jsonl.gz").subset(first=2)
    with pytest.raises(DataError, match="HCLG.fst"):
        decode_gmm(gmm, cuts)
    # hfasr lattices reuses OUT/graph_weak/HCLG.fst: a truncated one is an error naming it
    lats = _copy(exp / "lats", tmp_path / "lats")
    _truncate(lats / "graph_weak" / "HCLG.fst")
    before = _snapshot(lats)
    capsys.readouterr()
    assert main(_lattice_args(exp, lats)) == 2
    _clean_error(capsys, str(lats / "graph_weak" / "HCLG.fst"))
    assert _snapshot(lats) == before
    _no_temporaries(lats)


@pytest.mark.parametrize("name", ["final.mdl", "tree"])
def test_truncated_gmm_model_is_a_clean_error(exp, tmp_path, capsys, name):
    gmm = _copy(exp / "gmm", tmp_path / "gmm")
    _truncate(gmm / name)
    capsys.readouterr()
    assert main(_align_args(exp, tmp_path / "ali", gmm)) == 2
    _clean_error(capsys, str(gmm / name))
    (gmm / name).write_bytes(os.urandom(64))
    from hfasr.gmm.model import GmmModel

    with pytest.raises(DataError, match=name):
        GmmModel.read(gmm / "final.mdl", gmm / "tree")


# ------------------------------------------------------------------------------ tampered pickles
class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


@pytest.mark.parametrize("kind", ["alignment", "lattice"])
def test_tampered_alignment_and_lattice_files_never_run_code(exp, tmp_path, monkeypatch, kind):
    import torch

    from hfasr.gmm.train import load_alignments
    from hfasr.lattice.generate import load_lattices

    monkeypatch.chdir(tmp_path)
    load = load_alignments if kind == "alignment" else load_lattices
    good = exp / "gmm" / "ali_train.pt" if kind == "alignment" else exp / "lats" / "lats_train.1.pt"
    assert load(good)["cut_ids"]
    d = torch.load(good, weights_only=True)
    d["cut_ids"] = _Payload()
    evil = tmp_path / f"evil_{kind}.pt"
    torch.save(d, evil)
    with pytest.raises(DataError, match=f"evil_{kind}.pt"):
        load(evil)
    with open(evil, "wb") as f:
        pickle.dump({"cut_ids": _Payload()}, f)
    with pytest.raises(DataError, match=f"evil_{kind}.pt"):
        load(evil)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()
    trunc = tmp_path / f"trunc_{kind}.pt"
    trunc.write_bytes(good.read_bytes()[:500])
    with pytest.raises(DataError, match=f"trunc_{kind}.pt"):
        load(trunc)
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pt")  # a torch file of another kind
    with pytest.raises(DataError, match="other.pt.*missing keys"):
        load(tmp_path / "other.pt")


# --------------------------------------------------------------- failure on the last split: no mix
def _fail_on(monkeypatch, module, name: str, arg_index: int, value: str) -> None:
    """Make ``module.name`` raise a DataError when its argument ``arg_index`` is ``value``."""
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        if str(args[arg_index]).endswith(value):
            raise DataError(f"injected failure on {value}")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def _check_unchanged(capsys, out: Path, before: dict[str, bytes]) -> None:
    _clean_error(capsys, "injected failure")
    assert _snapshot(out) == before
    _no_temporaries(out)


def test_failed_lang_leaves_the_previous_lang_dir(exp, tmp_path, monkeypatch, capsys):
    from hfasr.lang import prepare

    out = _copy(exp / "lang", tmp_path / "lang")
    before = _snapshot(out)
    _fail_on(monkeypatch, prepare, "arpa_to_fst", 0, "lm_weak.arpa")  # the last file built
    capsys.readouterr()
    assert main(_lang_args(exp, out)) == 2
    _check_unchanged(capsys, out, before)


def test_failed_gmm_leaves_the_previous_gmm_dir(exp, tmp_path, monkeypatch, capsys):
    from hfasr.gmm import train

    out = _copy(exp / "gmm", tmp_path / "gmm")
    before = _snapshot(out)
    _fail_on(monkeypatch, train, "write_alignments", 1, "dev")  # the last split
    capsys.readouterr()
    assert main(_gmm_args(exp, out)) == 2
    _check_unchanged(capsys, out, before)


def test_failed_align_leaves_the_previous_ali_dir(exp, tmp_path, monkeypatch, capsys):
    from hfasr.gmm import train

    out = tmp_path / "ali"
    assert main(_align_args(exp, out)) == 0
    before = _snapshot(out)
    assert {"ali_train.pt", "ali_dev.pt", "final.mdl", "tree", "log.txt"} <= set(before)
    _fail_on(monkeypatch, train, "write_alignments", 1, "dev")
    capsys.readouterr()
    assert main(_align_args(exp, out)) == 2
    _check_unchanged(capsys, out, before)


def test_failed_lattices_leave_the_previous_lattice_dir(exp, tmp_path, monkeypatch, capsys):
    from hfasr.lattice import generate

    out = _copy(exp / "lats", tmp_path / "lats")
    shutil.rmtree(out / "graph_weak")  # rebuilt in the staging dir: not published either
    before = _snapshot(out)
    real = generate.decode_to_lattices

    def fail_on_dev(graph, tid2pdf, items, cfg, progress=False, desc=""):
        if desc.endswith("/dev"):
            raise DataError("injected failure on dev")
        return real(graph, tid2pdf, items, cfg, progress, desc)

    monkeypatch.setattr(generate, "decode_to_lattices", fail_on_dev)
    capsys.readouterr()
    # another lattice beam: no shard of the earlier run is reused, train is decoded, dev fails
    assert main([*_lattice_args(exp, out), "--lattice-beam", "5"]) == 2
    _check_unchanged(capsys, out, before)
    assert not (out / "graph_weak").exists()


def test_gmm_rerun_removes_alignments_of_the_earlier_model(exp, tmp_path):
    out = _copy(exp / "gmm", tmp_path / "gmm")
    (out / "ali_test.pt").write_bytes(b"an alignment of an earlier model")
    (out / "decode_test").mkdir()
    (out / "decode_test" / "wer.txt").write_text("%WER of an earlier model\n")
    assert main(_gmm_args(exp, out)) == 0
    assert not (out / "ali_test.pt").exists() and not (out / "decode_test").exists()
    assert (out / "ali_dev.pt").is_file()
    _no_temporaries(out)


# ------------------------------------------------------------------------------ one writer per dir
@pytest.mark.parametrize("stage", ["lang", "gmm", "align", "lattices"])
def test_second_run_on_a_held_out_dir_fails_at_once(exp, tmp_path, capsys, stage):
    out = tmp_path / "out"
    args = {"lang": _lang_args, "gmm": _gmm_args, "align": _align_args, "lattices": _lattice_args}[stage](exp, out)
    with DirLock(out, "another hfasr run"):
        capsys.readouterr()
        assert main(args) == 2
        err = _clean_error(capsys, str(out), f"pid {os.getpid()}", "in use")
        assert "another hfasr run" in err
    assert [p.name for p in out.iterdir()] == [DirLock.NAME]  # the refused run wrote nothing


# ------------------------------------------------------------------ bounded memory: shard per N cuts
def test_lattice_shards_follow_shard_utterances(exp, tmp_path):
    """num_shards 0: one shard per shard_utterances cuts (at least num_jobs), so the stage holds
    at most that many cuts' log-likelihoods and lattices; the lattices do not depend on it."""
    import torch

    from hfasr.lattice.generate import lattice_path, load_lattices

    conf = tmp_path / "lat.yaml"
    conf.write_text("shard_utterances: 7\n")
    out = tmp_path / "lats"
    assert main(_lattice_args(exp, out) + ["--config", str(conf)]) == 0
    n_train = len(load_lattices(lattice_path(exp / "lats", "train"))["cut_ids"])
    shards = sorted(out.glob("lats_train.*.pt"))
    shards = [p for p in shards if not p.name.endswith(".index.pt")]
    assert len(shards) == -(-n_train // 7) > 1
    a, b = load_lattices(lattice_path(out, "train")), load_lattices(lattice_path(exp / "lats", "train"))
    assert a["cut_ids"] == b["cut_ids"]
    for x, y in zip(a["lattices"], b["lattices"]):
        assert torch.equal(x.src, y.src) and torch.equal(x.tid, y.tid) and torch.equal(x.graph_cost, y.graph_cost)


def _resident_kb(ranges) -> int:
    """Resident kB of this process's mappings that start at the given ranges (/proc/self/smaps)."""
    starts = {lo for lo, _ in ranges}
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                inside = int(head.split("-")[0], 16) in starts
            elif inside and head == "Rss:":
                total += int(line.split()[1])
    return total


# ------------------------------------------------------------------ streamed sequence training
def test_streamed_sequence_data_equals_in_memory(exp):
    """StreamedSeqSet (features from disk, lattices from bounded shard maps) hands out the same
    utterances as load_seq_data (each lattice with its levels, computed on access, and each
    utterance with its features read through a FeatureRef); a tiny map budget remaps the shards."""
    import torch

    from hfasr.lattice.store import LatticeShards, load_lattice_dir
    from hfasr.train.sequence import StreamedSeqSet, load_seq_data

    lt = load_lattice_dir(exp / "lats", "train", mmap=True)
    mem = load_seq_data(exp / "data", TASK, "train", exp / "gmm", lt, exp / "lats")
    shards = LatticeShards(exp / "lats", "train", map_budget_mb=1e-4)
    st = StreamedSeqSet.load(exp / "data", TASK, "train", exp / "gmm", shards, cache_utts=2)
    assert st.cut_ids == mem.cut_ids and st.lengths == mem.lengths and st.texts == mem.texts
    assert st.ref_pdf.dtype == torch.int32
    for _ in range(2):  # the second pass reads the features again (cache of 2) and remaps
        for i in range(len(mem)):
            (x, a), (y, b) = st.utts[i], mem.utts[i]
            assert torch.equal(x, y) and torch.equal(a.ref_pdf, b.ref_pdf) and torch.equal(a.ref_phone, b.ref_phone)
            for k in ("src", "dst", "tid", "graph_cost", "pdf", "frame", "final_cost"):
                assert torch.equal(getattr(a.lattice, k), getattr(b.lattice, k)), k
            assert torch.equal(a.lattice.levels(), b.lattice.levels())
    assert shards.remaps > 0 and st.loads > len(st)
    assert all(s._levels is None for s in shards.stores)  # no level cache growing with the corpus
    if sys.platform.startswith("linux"):
        # the budget drops the shards' resident pages (madvise on the file mappings) instead of
        # remapping: a view handed out before the drops still reads the same values, and the
        # mappings' resident pages stay within a lattice's fault-around window
        assert len(shards._ranges) == len(shards.stores)
        first = st.utts[0][1].lattice
        for i in range(1, len(mem)):
            st.utts[i]
        for k in ("src", "dst", "tid", "graph_cost"):
            assert torch.equal(getattr(first, k), getattr(mem.utts[0][1].lattice, k)), k
        shards._drop()
        assert _resident_kb(shards._ranges) <= 64
    from hfasr.data.features import FeatureRef

    assert all(isinstance(r, FeatureRef) for r in st._cuts)


def test_streamed_hf_smbr_equals_in_memory(exp, tmp_path):
    """`hfasr train --criterion smbr` with stream_cache_utts (and a map budget small enough to
    remap the shards within every pass) gives the in-memory run's history."""
    import json

    base = ("optimizer: hf\ndev_wer: false\nnum_threads: 1\nmax_frames: 2000\n"
            "hf: {updates: 2, heldout_fraction: 0.2, curvature_fraction: 0.3, curvature_max_frames: 1500}\n")
    (tmp_path / "mem.yaml").write_text(base)
    (tmp_path / "st.yaml").write_text(base + "stream_cache_utts: 3\nlattice_map_mb: 0.01\n")
    hist = {}
    for name in ("mem", "st"):
        assert main(["train", "--criterion", "smbr", "--data-dir", str(exp / "data"), "--task", TASK,
                     "--ali-dir", str(exp / "gmm"), "--lat-dir", str(exp / "lats"), "--init",
                     str(exp / "dnn" / "final.pt"), "--out", str(tmp_path / name), "--config",
                     str(tmp_path / f"{name}.yaml"), "--quiet"]) == 0
        hist[name] = [json.loads(x) for x in (tmp_path / name / "history.jsonl").read_text().splitlines()]
    assert len(hist["st"]) == len(hist["mem"]) == 3
    for a, b in zip(hist["mem"], hist["st"]):
        for k in ("dev_obj", "heldout_obj", "damping", "cg_iters"):
            if a.get(k) is not None:
                assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-9), k


def test_streamed_sequence_config_errors():
    from hfasr.train.sequence import SeqTrainConfig

    with pytest.raises(ValueError, match="regenerate_every"):
        SeqTrainConfig(stream_cache_utts=4, regenerate_every=1)
