"""``hfasr align``: re-alignment with a hybrid DNN (nnet1's align.sh) on the real yesno corpus.

A small setup built once for the module: yesno with speed-perturbed training copies, lang, a
quick monophone GMM (12 passes, 100 Gaussians) and a tiny CE DNN trained 2 epochs on its
alignments (about 7 s in all).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from hfasr._kaldi import khg
from hfasr.cli import main
from hfasr.errors import DataError
from hfasr.gmm.align import (
    AlignOptions,
    MatrixDecodable,
    align_bank,
    compile_graphs,
    phone_segments,
)
from hfasr.gmm.model import GmmModel
from hfasr.lang.graphs import read_symbols

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.py)

TASK = "yesno"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, yesno_dir):
    """``root`` with data/ (train + its _sp0.9 / _sp1.1 copies, dev), lang/, gmm/, dnn/final.pt."""
    from hfasr.data.corpora import prepare_corpus
    from hfasr.data.features import FeatureConfig, compute_features

    root = tmp_path_factory.mktemp("realign")
    data = root / "data"
    prepare_corpus("yesno", data, corpus_dir=yesno_dir)
    compute_features(data, TASK, FeatureConfig(speed_perturb=True), progress=False)
    assert main(["lang", "--data-dir", str(data), "--task", TASK, "--out", str(root / "lang")]) == 0
    (root / "gmm.yaml").write_text("total_gauss: 100\nnum_iters: 12\nmax_iter_inc: 8\nnum_jobs: 1\n"
                                   "align_splits: [train, dev]\n")
    assert main(["gmm", "--data-dir", str(data), "--task", TASK, "--lang", str(root / "lang"), "--out",
                 str(root / "gmm"), "--config", str(root / "gmm.yaml"), "--quiet"]) == 0
    (root / "ce.yaml").write_text("dnn: {hidden_dim: 32, num_layers: 2, context: 2}\nbatch_size: 64\n"
                                  "num_threads: 1\n")
    assert main(["train", "--criterion", "ce", "--optimizer", "adam", "--data-dir", str(data), "--task", TASK,
                 "--ali-dir", str(root / "gmm"), "--out", str(root / "dnn"), "--config", str(root / "ce.yaml"),
                 "--epochs", "2", "--lr", "0.01", "--quiet"]) == 0
    return root


def _align_args(root, out, *extra):
    return ["align", "--model", str(root / "dnn" / "final.pt"), "--data-dir", str(root / "data"), "--task", TASK,
            "--gmm-dir", str(root / "gmm"), "--lang", str(root / "lang"), "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def realigned(setup):
    """``hfasr align`` with 2 processes (train has 90 cuts: the forked pool is used)."""
    import contextlib
    import io

    out = setup / "dnn_ali"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(_align_args(setup, out, "--num-jobs", "2")) == 0
    return out, buf.getvalue()


def test_outputs_have_the_gmm_format(setup, realigned):
    out, stdout = realigned
    gmm = setup / "gmm"
    for f in ("ali_train.pt", "ali_dev.pt", "ali_train_excluded.txt", "ali_dev_excluded.txt", "final.mdl", "tree",
              "log.txt"):
        assert (out / f).is_file(), f
    for f in ("final.mdl", "tree"):
        assert (out / f).read_bytes() == (gmm / f).read_bytes()
    m = GmmModel.read(out / "final.mdl", out / "tree")
    tid2pdf = np.asarray(m.tm.transition_id_to_pdf_array())
    for split in ("train", "dev"):
        new = torch.load(out / f"ali_{split}.pt", weights_only=True)
        ref = torch.load(gmm / f"ali_{split}.pt", weights_only=True)
        assert set(new) == set(ref) == {"cut_ids", "tids", "pdfs", "phones", "num_pdfs"}
        assert new["num_pdfs"] == ref["num_pdfs"] == m.num_pdfs == 11
        assert new["cut_ids"] == ref["cut_ids"]
        assert (out / f"ali_{split}_excluded.txt").read_text() == ""
        for cid, t, p, ph, rp in zip(new["cut_ids"], new["tids"], new["pdfs"], new["phones"], ref["pdfs"]):
            assert t.dtype == p.dtype == ph.dtype == torch.int32
            assert t.shape == p.shape == ph.shape == rp.shape, cid
            assert int(t.min()) >= 1 and int(t.max()) <= m.tm.num_transition_ids
            assert int(p.min()) >= 0 and int(p.max()) < m.num_pdfs
            assert torch.equal(p, torch.from_numpy(tid2pdf[t.numpy()].astype(np.int32)))
            assert all(m.tm.transition_id_to_phone(int(a)) == int(b) for a, b in zip(t[::20], ph[::20]))
    train_ids = torch.load(out / "ali_train.pt", weights_only=True)["cut_ids"]
    assert len(train_ids) == 90 and sum("_sp0.9" in c for c in train_ids) == sum("_sp1.1" in c for c in train_ids) == 30
    lines = stdout.splitlines()
    assert any("ali_train.pt: 90 of 90 cuts aligned, 0 failed" in ln and "frames differ in pdf" in ln for ln in lines)
    assert any("ali_dev.pt: 30 of 30 cuts aligned, 0 failed" in ln for ln in lines)
    assert lines[-1].startswith(f"{out}: train 90 aligned / 0 failed, dev 30 aligned / 0 failed")
    # the DNN moves boundaries but mostly agrees with the GMM
    frac = float(lines[0].split("0 failed; ")[1].split("%")[0])
    assert 0.0 < frac < 30.0, lines[0]


def test_phone_sequences_follow_the_transcript(setup, realigned):
    out, _ = realigned
    m = GmmModel.read(out / "final.mdl", out / "tree")
    phones = read_symbols(setup / "lang" / "phones.txt")
    sil = phones["SIL"]
    word_of = {phones["Y"]: "YES", phones["N"]: "NO"}
    for split in ("train", "dev"):
        new = torch.load(out / f"ali_{split}.pt", weights_only=True)
        ref = torch.load(setup / "gmm" / f"ali_{split}.pt", weights_only=True)
        texts = {}
        from lhotse import load_manifest

        for c in load_manifest(setup / "data" / f"{TASK}_feats_{split}.jsonl.gz"):
            texts[c.id] = c.supervisions[0].text
        for cid, t, rt in zip(new["cut_ids"], new["tids"], ref["tids"]):
            seq = [p for p, _, _ in phone_segments(m.tm, t.tolist()) if p != sil]
            assert seq == [p for p, _, _ in phone_segments(m.tm, rt.tolist()) if p != sil], cid
            assert " ".join(word_of[p] for p in seq) == texts[cid], cid


def test_one_job_gives_the_same_alignments(setup, realigned, tmp_path, monkeypatch):
    """... also when the split is aligned in chunks of 7 cuts (memory bound on large corpora)."""
    import hfasr.bin.align as align_mod

    monkeypatch.setattr(align_mod, "ALIGN_CHUNK_CUTS", 7)
    out, _ = realigned
    assert main(_align_args(setup, tmp_path / "one", "--num-jobs", "1", "--splits", "train")) == 0
    a = torch.load(out / "ali_train.pt", weights_only=True)
    b = torch.load(tmp_path / "one" / "ali_train.pt", weights_only=True)
    assert a["cut_ids"] == b["cut_ids"]
    assert all(torch.equal(x, y) for x, y in zip(a["tids"], b["tids"]))
    assert not (tmp_path / "one" / "ali_dev.pt").exists()


def test_matrix_decodable_reproduces_the_gmm_alignment(setup):
    """MatrixDecodable fed with the GMM's own pdf log-likelihoods aligns exactly as the GMM."""
    from lhotse import load_manifest

    from hfasr.config import load_config
    from hfasr.gmm.feats import FeatureBank, load_feats, load_stats_np
    from hfasr.gmm.train import GmmConfig
    from hfasr.lang.prepare import Lang

    gmm = setup / "gmm"
    m = GmmModel.read(gmm / "final.mdl", gmm / "tree")
    cfg = load_config(GmmConfig, gmm / "config.yaml")
    cuts = load_manifest(setup / "data" / f"{TASK}_feats_dev.jsonl.gz").subset(first=3)
    bank = load_feats(cuts, cfg.feature_options, *load_stats_np(gmm / "cmvn.pt"), progress=False)
    tid2pdf = np.asarray(m.tm.transition_id_to_pdf_array())
    tid_of = [int(np.flatnonzero(tid2pdf[1:] == p)[0]) + 1 for p in range(m.num_pdfs)]
    mats = []
    for i in range(len(bank)):
        d = khg.DecodableAmDiagGmmScaled(am=m.am, tm=m.tm, feats=np.ascontiguousarray(bank.feats(i).numpy()),
                                         scale=1.0)
        mats.append(torch.tensor([[d.log_likelihood(t, tid) for tid in tid_of] for t in range(bank.num_frames(i))]))
    lls = FeatureBank(bank.cut_ids, bank.texts, torch.cat(mats).float(), bank.offsets)
    graphs = compile_graphs(m, Lang(setup / "lang"), bank.texts, bank.cut_ids)
    opts = AlignOptions(beam=cfg.beam, retry_beam=cfg.retry_beam)
    a, like_a = align_bank(bank, graphs, m, opts, progress=False)
    b, like_b = align_bank(lls, graphs, m, opts, progress=False, decodable=MatrixDecodable(m.tm))
    assert all(x is not None for x in a) and a == b
    assert like_b == pytest.approx(like_a, rel=1e-4)
    with pytest.raises(DataError, match="11 pdfs"):
        MatrixDecodable(m.tm)(np.zeros((5, 7), dtype=np.float32), 0.1)


def test_ce_training_reads_the_new_alignments(setup, realigned, tmp_path):
    from hfasr.data.frames import FrameData

    out, _ = realigned
    fd = FrameData.load(setup / "data", TASK, "train", out)
    assert len(fd) == 90 and fd.num_pdfs == 11 and fd.phones is not None
    assert main(["train", "--criterion", "ce", "--optimizer", "adam", "--data-dir", str(setup / "data"), "--task",
                 TASK, "--ali-dir", str(out), "--out", str(tmp_path / "dnn2"), "--config", str(setup / "ce.yaml"),
                 "--epochs", "1", "--lr", "0.01", "--quiet"]) == 0
    assert (tmp_path / "dnn2" / "final.pt").is_file()


def test_unalignable_cut_is_excluded_with_its_reason(setup, tmp_path, caplog):
    """A dev cut whose transcript needs more frames than it has goes to the excluded file."""
    from lhotse import load_manifest
    from lhotse.utils import fastcopy

    data = tmp_path / "data"
    data.mkdir()
    cuts = load_manifest(setup / "data" / f"{TASK}_feats_dev.jsonl.gz")
    bad = cuts[0].id

    def lengthen(c):
        if c.id != bad:
            return c
        return fastcopy(c, supervisions=[fastcopy(c.supervisions[0], text=" ".join([c.supervisions[0].text] * 40))])

    cuts.map(lengthen).to_file(data / f"{TASK}_feats_dev.jsonl.gz")
    args = _align_args(setup, tmp_path / "ali", "--splits", "dev")
    args[args.index("--data-dir") + 1] = str(data)
    with caplog.at_level(logging.WARNING):
        assert main(args) == 0
    excl = (tmp_path / "ali" / "ali_dev_excluded.txt").read_text().splitlines()
    assert len(excl) == 1 and excl[0].startswith(f"{bad}\talignment failed (beam 10, retry beam 40, careful beam 200)")
    ali = torch.load(tmp_path / "ali" / "ali_dev.pt", weights_only=True)
    assert len(ali["cut_ids"]) == len(cuts) - 1 and bad not in ali["cut_ids"]
    assert bad in caplog.text


def test_model_with_other_pdfs_is_refused(setup, tmp_path, capsys):
    from hfasr.bin.align import realign
    from hfasr.models import build_model, save_model
    from hfasr.train.ce import save_prior

    model = build_model({"arch": "dnn", "input_dim": 40, "num_outputs": 7, "hidden_dim": 8, "num_layers": 1,
                         "context": 0})
    save_model(tmp_path / "m" / "final.pt", model)
    save_prior(tmp_path / "m" / "prior.pt", torch.full((7,), -2.0))
    with pytest.raises(DataError, match=r"7 outputs .* 11 pdfs"):
        realign(tmp_path / "m" / "final.pt", setup / "data", TASK, setup / "gmm", setup / "lang", tmp_path / "out",
                progress=False)
    assert not (tmp_path / "out").exists()  # nothing written
    args = _align_args(setup, tmp_path / "out")
    args[args.index("--model") + 1] = str(tmp_path / "m" / "final.pt")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "7 outputs" in err and "11 pdfs" in err
    # the right model but a prior of another size
    args = _align_args(setup, tmp_path / "out", "--prior", str(tmp_path / "m" / "prior.pt"))
    assert main(args) == 2
    assert "prior" in capsys.readouterr().err
    # the GMM dir itself as --out would overwrite the GMM alignments
    assert main(_align_args(setup, setup / "gmm")) == 2
    assert "GMM dir" in capsys.readouterr().err
