"""hfasr.gmm on the real yesno corpus: training, model files, alignments, HCLG, GMM decoding."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from hfasr._kaldi import khg
from hfasr.errors import DataError
from hfasr.gmm.align import phone_segments
from hfasr.gmm.feats import add_deltas, delta_scales
from hfasr.gmm.model import GmmModel, split_targets, tree_text
from hfasr.lang.graphs import accepts, read_symbols


@pytest.fixture(scope="module")
def yesno_data(tmp_path_factory, yesno_dir):
    from hfasr.data.corpora import prepare_corpus
    from hfasr.data.features import FeatureConfig, compute_features

    out = tmp_path_factory.mktemp("yesno_data")
    prepare_corpus("yesno", out, corpus_dir=yesno_dir)
    compute_features(out, "yesno", FeatureConfig(), progress=False)
    return out


@pytest.fixture(scope="module")
def yesno_gmm(yesno_data, tmp_path_factory):
    """`hfasr lang` + `hfasr gmm` through the command line (yesno: 400 Gaussians as Kaldi's recipe)."""
    from hfasr.cli import main

    d = tmp_path_factory.mktemp("yesno_exp")
    cfg = d / "gmm.yaml"
    cfg.write_text("total_gauss: 400\nnum_jobs: 2\n")
    assert main(["lang", "--data-dir", str(yesno_data), "--task", "yesno", "--out", str(d / "lang")]) == 0
    assert main(["gmm", "--data-dir", str(yesno_data), "--task", "yesno", "--lang", str(d / "lang"),
                 "--out", str(d / "gmm"), "--config", str(cfg), "--decode-split", "test", "--quiet",
                 "--lm-weights", "1,10"]) == 0
    return d


def test_gmm_decode_lm_weight_chosen_on_dev(yesno_gmm):
    """--lm-weights: each point decodes dev (yesno: dev = train), the best one decodes test."""
    g = yesno_gmm / "gmm"
    sweep = (g / "decode_dev_sweep.txt").read_text().splitlines()
    assert [ln.split()[1] for ln in sweep[:-1]] == ["1", "10"] and sweep[-1].startswith("best LMWT ")
    best = sweep[-1].split()[-1]
    wer = (g / "decode_test" / "wer.txt").read_text()
    assert f"# acoustic scale {1 / float(best):.6f} (LMWT {best}, best on dev: %WER" in wer


def _cuts(data_dir, split):
    from lhotse import load_manifest

    return load_manifest(data_dir / f"yesno_feats_{split}.jsonl.gz")


def test_gmm_dir_files_and_log(yesno_gmm):
    g = yesno_gmm / "gmm"
    for f in ("tree", "final.mdl", "graph/HCLG.fst", "graph/words.txt", "ali_train.pt", "ali_dev.pt",
              "ali_train_excluded.txt", "cmvn.pt", "config.yaml", "log.txt"):
        assert (g / f).is_file(), f
    assert (g / "graph/words.txt").read_text() == (yesno_gmm / "lang/words.txt").read_text()
    log = (g / "log.txt").read_text().splitlines()
    passes = [ln for ln in log if ln.startswith("pass ")]
    assert len(passes) == 40
    assert all("avg log-like/frame" in ln and "Gaussians" in ln for ln in passes)
    like = [float(ln.split("log-like/frame ")[1].split()[0]) for ln in passes]
    assert like[-1] > like[1] > like[0]  # EM improves the likelihood
    assert (g / "ali_train_excluded.txt").read_text() == ""
    wer = (g / "decode_test" / "wer.txt").read_text()
    assert wer.startswith("%WER ") and "/ 240," in wer and "95% CI" in wer
    assert len((g / "decode_test" / "hyp.txt").read_text().splitlines()) == 30


def test_model_files_are_kaldi_text_and_round_trip(yesno_gmm, tmp_path):
    g = yesno_gmm / "gmm"
    text = (g / "final.mdl").read_text()
    assert text.startswith("<TransitionModel>")
    assert "<Triples> 11" in text and "<DIMENSION> 39 <NUMPDFS> 11 <DiagGMM>" in text
    m = GmmModel.read(g / "final.mdl", g / "tree")
    assert (g / "tree").read_text() == tree_text(m.tree)
    assert m.tm.num_pdfs == 11 and m.tm.num_transition_ids == 30
    m.write(tmp_path / "again.mdl")

    def numbers(t):
        return np.array([float(x) for x in t.replace("[", " ").replace("]", " ").split()
                         if x.lstrip("-").replace(".", "", 1).replace("e-", "", 1).replace("e", "", 1).isdigit()])

    a, b = numbers(text), numbers((tmp_path / "again.mdl").read_text())
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # the same acoustic scores from the reloaded model
    x = np.random.default_rng(0).standard_normal((5, 39)).astype(np.float32)
    m2 = GmmModel.read(tmp_path / "again.mdl")
    d1 = khg.DecodableAmDiagGmmScaled(am=m.am, tm=m.tm, feats=x, scale=1.0)
    d2 = khg.DecodableAmDiagGmmScaled(am=m2.am, tm=m2.tm, feats=x, scale=1.0)
    for t in range(5):
        for tid in (1, 7, 30):
            assert d1.log_likelihood(t, tid) == pytest.approx(d2.log_likelihood(t, tid), rel=1e-5)
    # a tree that does not belong to the model
    bad = tmp_path / "tree"
    bad.write_text("ContextDependency 3 1 ToPdf TE 0 0 ( ) EndContextDependency\n")
    with pytest.raises(DataError, match="not the monophone tree"):
        GmmModel.read(g / "final.mdl", bad)
    with pytest.raises(DataError, match="not found"):
        GmmModel.read(tmp_path / "missing.mdl")


@pytest.mark.parametrize("split", ["train", "dev"])
def test_alignments_cover_every_frame_and_match_transcripts(yesno_gmm, yesno_data, split):
    g = yesno_gmm / "gmm"
    ali = torch.load(g / f"ali_{split}.pt", weights_only=True)
    assert set(ali) == {"cut_ids", "tids", "pdfs", "phones", "num_pdfs"}
    assert ali["num_pdfs"] == 11
    m = GmmModel.read(g / "final.mdl", g / "tree")
    tid2pdf = np.asarray(m.tm.transition_id_to_pdf_array())
    phones = read_symbols(yesno_gmm / "lang/phones.txt")
    word_of = {phones["Y"]: "YES", phones["N"]: "NO"}
    cuts = {c.id: c for c in _cuts(yesno_data, split)}
    assert sorted(ali["cut_ids"]) == sorted(cuts)
    durs = []
    for cid, tids, pdfs, ph in zip(ali["cut_ids"], ali["tids"], ali["pdfs"], ali["phones"]):
        assert tids.dtype == torch.int32 and tids.shape[0] == cuts[cid].num_frames
        assert int(tids.min()) >= 1 and int(tids.max()) <= m.tm.num_transition_ids
        assert torch.equal(pdfs, torch.from_numpy(tid2pdf[tids.numpy()].astype(np.int32)))
        assert all(m.tm.transition_id_to_phone(int(t)) == int(p) for t, p in zip(tids[::25], ph[::25]))
        segs = phone_segments(m.tm, tids.tolist())
        words = [word_of[p] for p, _, _ in segs if p != phones["SIL"]]
        assert " ".join(words) == cuts[cid].supervisions[0].text, cid
        durs += [e - s for p, s, e in segs if p != phones["SIL"]]
    durs = np.array(durs)
    # YES / NO last about half a second: tens of frames; (almost) never the 3-frame minimum
    assert 30 < durs.mean() < 90, durs.mean()
    assert np.median(durs) > 25 and durs.max() < 250
    assert (durs < 10).mean() < 0.03, sorted(durs)[:10]


def test_hclg_accepts_reference_alignments(yesno_gmm):
    from hfasr._kaldi import kaldifst

    g = yesno_gmm / "gmm"
    hclg = kaldifst.StdVectorFst.read(str(g / "graph/HCLG.fst"))
    words = {i: w for w, i in read_symbols(g / "graph/words.txt").items()}
    ali = torch.load(g / "ali_train.pt", weights_only=True)
    for cid, tids in list(zip(ali["cut_ids"], ali["tids"]))[:6]:
        ok, out = accepts(hclg, tids.tolist())
        assert ok, cid
        assert [words[w] for w in out] == ["YES" if c == "1" else "NO" for c in cid.split("-")[0].split("_")]


def test_gmm_decoding_wer_on_yesno_test(yesno_gmm, yesno_data):
    import kaldialign

    from hfasr.gmm.decode import decode_gmm

    cuts = _cuts(yesno_data, "test")
    hyps = decode_gmm(yesno_gmm / "gmm", cuts, acoustic_scale=0.1)
    assert [c for c, _ in hyps] == [c.id for c in cuts]
    refs = {c.id: c.supervisions[0].text.split() for c in cuts}
    r = kaldialign.batch_error_rate([refs[c] for c, _ in hyps], [h.split() for _, h in hyps])
    print(f"yesno test GMM WER {100 * r['err_rate']:.2f}% ({r['ins']} ins, {r['del']} del, {r['sub']} sub "
          f"of {r['ref_len']})")
    assert r["ref_len"] == 240
    assert r["err_rate"] < 0.05  # measured 0.4-1.7 %; Kaldi's docs report 7-9 % for a quick monophone


def test_unalignable_cut_is_excluded_and_listed(yesno_gmm, yesno_data, tmp_path, caplog):
    from hfasr.gmm.align import AlignOptions, align_bank, compile_graphs
    from hfasr.gmm.feats import FeatureBank
    from hfasr.gmm.train import write_alignments
    from hfasr.lang.prepare import Lang

    g = yesno_gmm / "gmm"
    m = GmmModel.read(g / "final.mdl", g / "tree")
    lang = Lang(yesno_gmm / "lang")
    ali = torch.load(g / "ali_train.pt", weights_only=True)
    cuts = {c.id: c for c in _cuts(yesno_data, "train")}
    ok_id = ali["cut_ids"][0]
    x = torch.randn(100, 39, generator=torch.Generator().manual_seed(0))  # seeded: some draws fail to align
    # 8 words need at least 24 frames: the 20-frame "cut" cannot be aligned
    bank = FeatureBank([ok_id, "too-short"], [cuts[ok_id].supervisions[0].text] * 2,
                       torch.cat([x[:60], x[60:80]]), np.array([0, 60, 80]))
    graphs = compile_graphs(m, lang, bank.texts, bank.cut_ids)
    alis, _ = align_bank(bank, graphs, m, AlignOptions(beam=10, retry_beam=40, last_resort_beam=100), num_jobs=1,
                         progress=False)
    assert alis[1] is None and alis[0] is not None and len(alis[0]) == 60
    with caplog.at_level(logging.WARNING):
        assert write_alignments(tmp_path, "x", bank, alis, m) == 1
    assert "too-short" in caplog.text
    assert (tmp_path / "ali_x_excluded.txt").read_text().startswith("too-short\t")
    assert torch.load(tmp_path / "ali_x.pt", weights_only=True)["cut_ids"] == [ok_id]


def test_statistics_match_kaldi_accumulator(yesno_gmm, yesno_data):
    """The vectorised statistics + pseudo-frames give Kaldi's per-frame accumulation's update."""
    from lhotse import CutSet

    from hfasr.config import load_config
    from hfasr.gmm.feats import load_feats, load_stats_np
    from hfasr.gmm.train import GmmConfig, accumulate, update

    g = yesno_gmm / "gmm"
    cfg = load_config(GmmConfig, g / "config.yaml")
    mean, std = load_stats_np(g / "cmvn.pt")
    ali = torch.load(g / "ali_train.pt", weights_only=True)
    cuts = {c.id: c for c in _cuts(yesno_data, "train")}
    ids = ali["cut_ids"][:4]
    bank = load_feats(CutSet.from_cuts([cuts[i] for i in ids]), cfg.feature_options, mean, std, progress=False)
    alis = [ali["tids"][k].tolist() for k in range(4)]

    mine = GmmModel.read(g / "final.mdl")
    ref = GmmModel.read(g / "final.mdl")
    stats = accumulate(mine, bank, alis)
    acc = khg.AccumAmDiagGmm()
    acc.init(model=ref.am, flags=khg.GmmUpdateFlags.kGmmAll)
    tot = 0.0
    for i, a in enumerate(alis):
        x = bank.feats(i).numpy()
        for t, tid in enumerate(a):
            tot += acc.accumulate_for_gmm(model=ref.am, data=x[t], gmm_index=ref.tm.transition_id_to_pdf(tid), weight=1.0)
    assert stats.tot_like == pytest.approx(tot, rel=1e-4)
    assert stats.frames == sum(len(a) for a in alis)
    opts = khg.MleDiagGmmOptions(min_gaussian_occupancy=cfg.min_gaussian_occupancy)
    khg.mle_am_diag_gmm_update(config=opts, amdiag_gmm_acc=acc, flags=khg.str_to_gmm_flags("mvwt"), am_gmm=ref.am)
    update(mine, stats, cfg, mixup=0, min_occ=cfg.min_gaussian_occupancy, rng=np.random.default_rng(0))
    assert mine.am.num_gauss == ref.am.num_gauss
    for p in range(mine.am.num_pdfs):
        a, b = mine.am.get_pdf(p), ref.am.get_pdf(p)
        np.testing.assert_allclose(a.weights, b.weights, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(a.means, b.means, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(a.vars, b.vars, rtol=1e-3, atol=1e-4)


def test_delta_features_match_kaldi_definition():
    sc = delta_scales(2, 2)
    np.testing.assert_allclose(sc[1], np.array([-2, -1, 0, 1, 2]) / 10.0)
    assert len(sc[2]) == 9 and sc[2][4] == pytest.approx(-10 / 100)  # sum_j j * (-j) / 100
    x = np.arange(12, dtype=np.float32).reshape(6, 2) ** 2
    y = add_deltas(x, order=2, window=2)
    assert y.shape == (6, 6)
    t = 3  # interior frame: plain formula
    d = sum(j * (x[min(max(t + j, 0), 5)] - x[min(max(t - j, 0), 5)]) for j in (1, 2)) / 10.0
    np.testing.assert_allclose(y[t, 2:4], d, rtol=1e-6)
    np.testing.assert_allclose(add_deltas(x, order=0), x)


def test_split_targets_like_kaldi():
    # occupancy ** 0.5: 100 -> 10, 25 -> 5, 0 -> 0 (never split); min_count caps pdf 1 at 25 / 10 -> 2
    assert split_targets(np.array([100.0, 25.0, 0.0]), target=6, power=0.5, min_count=10.0) == [3, 2, 1]
    assert split_targets(np.array([100.0, 25.0, 0.0]), target=3, power=0.5, min_count=10.0) == [1, 1, 1]
    assert sum(split_targets(np.array([1e4, 1e4]), target=10, power=1.0, min_count=1.0)) == 10


def test_gmm_parallel_decode_and_decode_only(yesno_gmm, yesno_data, tmp_path):
    """decode_gmm_parallel gives decode_gmm's words in the same order; --decode-only re-decodes
    an existing GMM dir (here with 2 processes and a narrower beam) without retraining."""
    import shutil

    from hfasr.cli import main
    from hfasr.gmm.decode import decode_gmm, decode_gmm_parallel

    cuts = list(_cuts(yesno_data, "test"))[:6]
    assert decode_gmm_parallel(yesno_gmm / "gmm", cuts, 2, acoustic_scale=0.1) == decode_gmm(
        yesno_gmm / "gmm", cuts, acoustic_scale=0.1)
    g = tmp_path / "gmm"
    shutil.copytree(yesno_gmm / "gmm", g)
    mdl = (g / "final.mdl").stat().st_mtime_ns
    shutil.rmtree(g / "decode_test")
    assert main(["gmm", "--data-dir", str(yesno_data), "--task", "yesno", "--lang", str(yesno_gmm / "lang"),
                 "--out", str(g), "--decode-only", "--decode-split", "test", "--lm-weights", "10",
                 "--decode-jobs", "2", "--beam", "10", "--max-active", "2000", "--quiet"]) == 0
    assert (g / "final.mdl").stat().st_mtime_ns == mdl
    assert "(LMWT 10, best on dev: %WER" in (g / "decode_test" / "wer.txt").read_text()
    assert (g / "decode_dev_sweep.txt").read_text().splitlines()[-1] == "best LMWT 10"
    assert main(["gmm", "--data-dir", str(yesno_data), "--task", "yesno", "--lang", str(yesno_gmm / "lang"),
                 "--out", str(tmp_path / "none"), "--decode-only", "--decode-split", "test"]) == 2
    assert main(["gmm", "--data-dir", str(yesno_data), "--task", "yesno", "--lang", str(yesno_gmm / "lang"),
                 "--out", str(g), "--decode-only", "--decode-split", "test", "--beam", "0"]) == 2


def test_gmm_cli_errors(tmp_path, yesno_gmm, yesno_data):
    from hfasr.cli import main

    cfg = tmp_path / "gmm.yaml"
    cfg.write_text("num_itres: 3\n")
    assert main(["gmm", "--data-dir", str(yesno_data), "--task", "yesno", "--lang", str(yesno_gmm / "lang"),
                 "--out", str(tmp_path / "g"), "--config", str(cfg)]) == 2
    assert main(["gmm", "--data-dir", str(yesno_data), "--task", "yesno", "--lang", str(tmp_path / "nolang"),
                 "--out", str(tmp_path / "g")]) == 2
