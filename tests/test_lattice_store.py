"""Compact, sharded lattices (issue 16 item 2): packed int32 / float32 storage of at most 24 bytes
per arc on disk and in memory, forward-backward and criteria unchanged by it, sharded and
resumable ``hfasr lattices``, the single-file format of earlier versions still read, and a
decoding worker that dies or hangs is an error naming the stage."""

from __future__ import annotations

import os
import time

import pytest
import torch
from lattice_utils import random_lattice
from test_faults_stages import TASK, _lattice_args
from test_faults_stages import exp as _faults_exp  # noqa: F401 (a fixture: yesno data, lang, GMM, DNN, lats)
from yesno_graph import crafted

from hfasr.cli import main
from hfasr.criteria.sequence import SeqSupervision, SequenceConfig, SequenceCriterion
from hfasr.decode.decoder import decode_lattice, lattice_to_tensors
from hfasr.errors import DataError
from hfasr.fileio import load_torch, save_torch
from hfasr.lattice import LatticeBatch, generate
from hfasr.lattice.generate import (
    LatticeConfig,
    LatticeWorkerError,
    decode_to_lattices,
    tensors_to_lattice,
)
from hfasr.lattice.store import (
    PackedLattices,
    index_path,
    legacy_path,
    load_lattice_dir,
    shard_path,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exp_dir(request):
    """yesno data, lang, GMM, CE DNN and ``hfasr lattices`` output (test_faults_stages.py)."""
    return request.getfixturevalue("_faults_exp")

_UTTS = [[("SIL", 6), ("Y", 8), ("SIL", 5), ("N", 9), ("SIL", 5)], [("SIL", 5), ("N", 8), ("SIL", 6), ("Y", 9), ("SIL", 4)],
         [("SIL", 6), ("Y", 10), ("SIL", 6)], [("SIL", 5), ("N", 9), ("SIL", 7)]]


def _yesno_lattices(graph, n=6, beam=4.0):
    """(lattices as the decoder gives them (int64 / float64), loglikes, reference pdfs, phones)."""
    pdf2phone = {p: graph.phones[ph] for ph in ("SIL", "N", "Y") for p in graph.pdfs_of_phone(ph)}
    out = []
    for i in range(n):
        ll, seq = crafted(graph, _UTTS[i % 4], seed=i, bias=1.0)
        res = decode_lattice(graph.hclg, graph.tid2pdf, ll, 0.5, lattice_beam=beam)
        lat = tensors_to_lattice(lattice_to_tensors(res.lattice), torch.as_tensor(graph.tid2pdf))
        out.append((lat, ll, torch.tensor(seq), torch.tensor([pdf2phone[p] for p in seq])))
    return out


# ------------------------------------------------------------------------------ packing
def test_packed_views_are_the_lattices(tmp_path):
    lats = [random_lattice(T, 4, seed=T) for T in (3, 5, 8)]
    st = PackedLattices.from_lattices(["a", "b", "c"], lats, torch.arange(-1, 5))
    save_torch(st.to_dict(), tmp_path / "s.pt")
    st2 = PackedLattices.from_dict(load_torch(tmp_path / "s.pt", "shard"))
    for lat, v in zip(lats, [st2[i] for i in range(3)]):
        assert (v.num_states, v.num_frames, v.num_arcs) == (lat.num_states, lat.num_frames, lat.num_arcs)
        for k in ("src", "dst", "frame", "pdf", "tid"):
            assert getattr(v, k).dtype == torch.int32 and torch.equal(getattr(v, k).long(), getattr(lat, k)), k
        assert v.graph_cost.dtype == torch.float32
        assert torch.allclose(v.graph_cost.double(), lat.graph_cost, atol=1e-6)
        assert torch.equal(torch.isinf(v.final_cost), torch.isinf(lat.final_cost))
        assert torch.equal(v.levels().long(), lat.levels())
        assert v.word is None  # no criterion needs words: not stored unless asked for
        v.validate()
    both = PackedLattices.concat([st2, PackedLattices.from_lattices(["d"], lats[:1], torch.arange(-1, 5))])
    assert both.cut_ids == ["a", "b", "c", "d"] and torch.equal(both[3].src, both[0].src)
    assert PackedLattices.from_lattices(["a"], lats[:1], torch.arange(-1, 5), keep_words=True)[0].word is not None


def test_a_foreign_shard_is_a_data_error(tmp_path):
    st = PackedLattices.from_lattices(["a"], [random_lattice(4, 3, seed=1)], torch.arange(-1, 4))
    d = st.to_dict()
    d["src"] = d["src"][:-1]
    with pytest.raises(DataError, match="bad.pt"):
        PackedLattices.from_dict(d, "bad.pt")


# ------------------------------------------------------------------------------ same results as before
@pytest.mark.parametrize("crit", ["mmi", "bmmi", "mpe", "smbr"])
def test_packed_lattices_give_the_same_criteria_as_before(graph, crit):
    """The decoder's int64 / float64 lattices (the earlier storage) and their packed int32 /
    float32 form: same log Z, posteriors, loss, gradient and curvature products."""
    data = _yesno_lattices(graph)
    old = [lat for lat, *_ in data]
    st = PackedLattices.from_lattices([str(i) for i in range(len(old))], old, torch.as_tensor(graph.tid2pdf))
    new = [st[i] for i in range(len(st))]
    K = int(graph.tid2pdf.max()) + 1
    T = max(int(ll.shape[0]) for _, ll, *_ in data)
    torch.manual_seed(0)
    z = torch.randn(len(data), T, K, dtype=torch.float64)
    lens = torch.tensor([int(ll.shape[0]) for _, ll, *_ in data])
    prior = torch.full((K,), -float(torch.log(torch.tensor(float(K)))), dtype=torch.float64)
    cfg = SequenceConfig(criterion=crit, acoustic_scale=0.5, curvature="den-cov")
    tid2phone = torch.tensor([0] + [graph.tm.transition_id_to_phone(t) for t in range(1, graph.tm.num_transition_ids + 1)])
    c = SequenceCriterion(cfg, prior, tid2phone=tid2phone, silence_phones=[graph.phones["SIL"]])
    outs = []
    for lats in (old, new):
        sups = [SeqSupervision(lat, ref, ref_phone=ph) for lat, (_, _, ref, ph) in zip(lats, data)]
        out = c(z, lens, sups)
        v = torch.randn(z.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        outs.append((out.loss, out.grad, c.curvature(z, out).hvp(v)))
        lb = LatticeBatch(lats)
        w = lb.arc_scores(torch.log_softmax(z, -1), 0.5)
        outs[-1] = (*outs[-1], *lb.forward_backward(w)[2:])
    (l0, g0, h0, z0, p0), (l1, g1, h1, z1, p1) = outs
    tol = {"rtol": 1e-5, "atol": 1e-6}  # graph costs rounded to float32 (exact for the decoder's)
    assert torch.allclose(l0, l1, **tol) and torch.allclose(g0, g1, **tol)
    assert torch.allclose(z0, z1, **tol) and torch.allclose(p0, p1, **tol)
    assert torch.allclose(h0, h1, **tol)


# ------------------------------------------------------------------------------ hfasr lattices
def test_real_lattices_take_at_most_24_bytes_per_arc(exp_dir):
    """yesno lattices of ``hfasr lattices``: bytes per arc of the shard files and of the loaded
    store (its level cache filled, as after the first batch)."""
    for split in ("train", "dev"):
        idx = load_torch(index_path(exp_dir / "lats", split), "index")
        assert idx["num_arcs"] > 1000
        disk = sum((exp_dir / "lats" / s["file"]).stat().st_size for s in idx["shards"])
        assert disk / idx["num_arcs"] <= 24, disk / idx["num_arcs"]
        d = load_lattice_dir(exp_dir / "lats", split)
        for lat in d["lattices"]:
            lat.levels()
        assert len(d["stores"]) == len(idx["shards"])
        arcs = sum(st.num_arcs for st in d["stores"])
        assert arcs == idx["num_arcs"] == sum(lat.num_arcs for lat in d["lattices"])
        mem = sum(st.nbytes() for st in d["stores"]) / arcs
        assert mem <= 24, mem
        mapped = load_lattice_dir(exp_dir / "lats", split, mmap=True)  # as sequence training reads them
        assert [v.to_dict()["src"].tolist() for v in mapped["lattices"]] == \
            [v.to_dict()["src"].tolist() for v in d["lattices"]]
        assert not legacy_path(exp_dir / "lats", split).exists()


def _copy_lats(root, tmp_path):
    import shutil

    out = tmp_path / "lats"
    shutil.copytree(root / "lats", out)
    return out


def test_shards_are_resumed_and_stale_files_removed(exp_dir, tmp_path, monkeypatch):
    out = tmp_path / "lats"
    work = tmp_path / ".lats.shards"
    args = [*_lattice_args(exp_dir, out), "--num-shards", "3", "--split", "train"]
    assert main(args) == 0
    shards = lambda: {p.name: p.read_bytes() for p in out.glob("lats_train.[0-9]*.pt")}
    first = shards()
    assert set(first) == {"lats_train.1.pt", "lats_train.2.pt", "lats_train.3.pt"}
    assert not work.exists()
    before = load_lattice_dir(out, "train")
    assert before["lattice_beam"] == 6.0 and len(before["cut_ids"]) == 30
    # a run with another lattice beam fails on its last shard: the lattice dir is unchanged, the
    # finished shards wait in the work dir
    decoded = []
    real = generate.decode_to_lattices

    def count(graph, tid2pdf, items, cfg, progress=False, desc=""):
        decoded.append(desc)
        if fail[0] and "shard 3/3" in desc:
            raise LatticeWorkerError(f"hfasr lattices ({desc}): injected")
        return real(graph, tid2pdf, items, cfg, progress, desc)

    fail = [True]
    monkeypatch.setattr(generate, "decode_to_lattices", count)
    assert main([*args, "--lattice-beam", "5"]) == 2
    assert len(decoded) == 3 and shards() == first
    assert load_lattice_dir(out, "train")["lattice_beam"] == 6.0
    assert sorted(p.name for p in work.iterdir()) == ["lats_train.1.pt", "lats_train.2.pt"]
    # the rerun decodes only the missing shard and publishes all three
    decoded.clear()
    fail[0] = False
    assert main([*args, "--lattice-beam", "5"]) == 0
    assert len(decoded) == 1 and "shard 3/3" in decoded[0]
    assert not work.exists()
    after = load_lattice_dir(out, "train")
    assert after["lattice_beam"] == 5 and after["cut_ids"] == before["cut_ids"]
    assert set(shards()) == set(first) and all(shards()[k] != first[k] for k in first)
    # nothing to do; then fewer shards: every shard is redone and the extra file goes
    decoded.clear()
    assert main([*args, "--lattice-beam", "5"]) == 0
    assert not decoded
    args[args.index("--num-shards") + 1] = "2"
    assert main([*args, "--lattice-beam", "5"]) == 0
    assert len(decoded) == 2
    assert sorted(shards()) == ["lats_train.1.pt", "lats_train.2.pt"]
    assert load_lattice_dir(out, "train")["cut_ids"] == before["cut_ids"]


def test_a_broken_shard_is_redone_and_a_stale_one_never_published(exp_dir, tmp_path, monkeypatch):
    out = tmp_path / "lats"
    work = tmp_path / ".lats.shards"
    args = [*_lattice_args(exp_dir, out), "--num-shards", "2", "--split", "dev"]
    assert main(args) == 0
    one = (out / "lats_dev.1.pt").read_bytes()
    # a shard of a run with other options waits in the work dir; shard 2 is damaged
    work.mkdir()
    d = load_torch(out / "lats_dev.1.pt", "shard")
    d["key"] = "other options"
    save_torch(d, work / "lats_dev.1.pt")
    (out / "lats_dev.2.pt").write_bytes((out / "lats_dev.2.pt").read_bytes()[:1000])
    decoded = []
    real = generate.decode_to_lattices

    def count(graph, tid2pdf, items, cfg, progress=False, desc=""):
        decoded.append(desc)
        return real(graph, tid2pdf, items, cfg, progress, desc)

    monkeypatch.setattr(generate, "decode_to_lattices", count)
    assert main(args) == 0
    assert len(decoded) == 1 and "shard 2/2" in decoded[0]
    assert (out / "lats_dev.1.pt").read_bytes() == one and not work.exists()
    assert len(load_lattice_dir(out, "dev")["cut_ids"]) == 30


def test_a_shard_rewritten_by_another_run_is_detected(exp_dir, tmp_path):
    out = _copy_lats(exp_dir, tmp_path)
    idx = load_torch(index_path(out, "train"), "index")
    p = out / idx["shards"][0]["file"]
    d = load_torch(p, "shard")
    d["key"] = "another run"
    save_torch(d, p)
    with pytest.raises(DataError, match="rerun `hfasr lattices`"):
        load_lattice_dir(out, "train")


def test_the_single_file_format_still_loads(exp_dir, tmp_path):
    """A lattice dir of earlier versions (``lats_<split>.pt``, int64 / float64 lattices)."""
    new = load_lattice_dir(exp_dir / "lats", "dev")
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    lats = []
    for v in new["lattices"]:
        lat = v.lattice()
        lats.append({"num_states": lat.num_states, "num_frames": lat.num_frames, "src": lat.src.long(),
                     "dst": lat.dst.long(), "frame": lat.frame.long(), "pdf": lat.pdf.long(),
                     "graph_cost": lat.graph_cost.double(), "final_cost": lat.final_cost.double(),
                     "tid": lat.tid.long(), "word": torch.zeros(lat.num_arcs, dtype=torch.long)})
    save_torch({"cut_ids": new["cut_ids"], "lattices": lats, "tid2pdf": new["tid2pdf"], "tid2phone": new["tid2phone"],
                "silence_phones": new["silence_phones"], "acoustic_scale": 0.1, "beam": 13.0, "lattice_beam": 6.0,
                "model": "m", "failed": {}}, legacy_path(old_dir, "dev"))
    old = load_lattice_dir(old_dir, "dev")
    assert old["cut_ids"] == new["cut_ids"]
    for k in ("src", "dst", "tid", "graph_cost", "state_time", "final_state", "final_cost"):
        assert torch.equal(getattr(old["stores"][0], k), getattr(PackedLattices.concat(new["stores"]), k)), k
    assert generate.load_lattices(generate.lattice_path(old_dir, "dev"))["cut_ids"] == new["cut_ids"]
    with pytest.raises(DataError, match="run `hfasr lattices`"):
        load_lattice_dir(old_dir, "train")


# ------------------------------------------------------------------------------ dead or hung workers
def _items(graph, n=6):
    return [(f"u{i}", crafted(graph, _UTTS[i % 4], seed=i, bias=1.0)[0].numpy()) for i in range(n)]


@pytest.mark.parametrize("fault,utt,timeout,desc,match", [
    ("dies", "u3", 60, "lattices yesno/train", r"hfasr lattices \(lattices yesno/train\).*died"),
    ("hangs", "u2", 2, "lattices yesno/dev", r"lattices yesno/dev.*no lattice .* for 2 s"),
])
def test_a_worker_that_dies_or_hangs_is_an_error_naming_the_stage(graph, monkeypatch, fault, utt, timeout, desc,
                                                                   match):
    real = generate._one

    def faulty(item):
        if item[0] == utt:
            if fault == "dies":
                os._exit(3)
            time.sleep(3600)
        return real(item)

    monkeypatch.setattr(generate, "_one", faulty)
    cfg = LatticeConfig(acoustic_scale=0.5, num_jobs=2, worker_timeout=timeout)
    t0 = time.time()
    with pytest.raises(LatticeWorkerError, match=match):
        decode_to_lattices(graph.path, graph.tid2pdf, _items(graph), cfg, desc=desc)
    assert time.time() - t0 < 30


def test_the_pool_gives_the_lattices_of_one_process(graph):
    items = _items(graph)
    one = decode_to_lattices(graph.path, graph.tid2pdf, items, LatticeConfig(acoustic_scale=0.5, num_jobs=1))
    two = decode_to_lattices(graph.path, graph.tid2pdf, items, LatticeConfig(acoustic_scale=0.5, num_jobs=2))
    assert [c for c, *_ in one] == [c for c, *_ in two] == [c for c, _ in items]
    for (_, a, _), (_, b, _) in zip(one, two):
        assert all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def test_shards_hold_no_temporary_files(exp_dir):
    assert not [p.name for p in (exp_dir / "lats").iterdir() if ".tmp" in p.name]
    assert shard_path(exp_dir / "lats", "train", 1).is_file()
    assert TASK == "yesno"


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_SHARD",))


@pytest.mark.parametrize("mmap", [False, True])
def test_a_tampered_shard_never_runs_code(exp_dir, tmp_path, monkeypatch, mmap):
    out = _copy_lats(exp_dir, tmp_path)
    monkeypatch.chdir(tmp_path)
    shard = out / "lats_train.1.pt"
    d = torch.load(shard, weights_only=True)
    d["cut_ids"] = _Payload()
    torch.save(d, shard)
    with pytest.raises(DataError, match="lats_train.1.pt"):
        load_lattice_dir(out, "train", mmap=mmap)
    assert not (tmp_path / "PWNED_BY_SHARD").exists()
