"""Decoding with a hand-built yesno HCLG (tests/yesno_graph.py; the ``graph`` fixture of
conftest.py) and crafted log-likelihoods."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
from yesno_graph import WORDS, YES_NO, crafted, segment

from hfasr.decode.decoder import (
    DecoderConfig,
    decode_batch,
    decode_lattice,
    decode_loglikes,
    lattice_best_path,
    lattice_to_tensors,
    read_graph,
    results_to_text,
    scaled_tid_scores,
    sweep_acoustic_scale,
    words_to_text,
)
from hfasr.errors import DataError

ID2WORD = {i: w for w, i in WORDS.items()}


def acoustic_cost_of(g, ll, tids, acwt) -> float:
    m = scaled_tid_scores(g.tid2pdf, ll, acwt)
    return -float(sum(np.float64(m[t, tid - 1]) for t, tid in enumerate(tids)))


def test_graph_is_the_yesno_task(graph):
    assert graph.num_pdfs == 11 and graph.tm.num_transition_ids == 30
    assert graph.tid2pdf.shape == (31,)
    assert read_graph(graph.path).num_states == graph.hclg.num_states


@pytest.mark.parametrize("acwt", [1.0, 0.1])
def test_best_path_words_and_costs(graph, acwt):
    ll, seq = crafted(graph, YES_NO)
    r = decode_loglikes(graph.hclg, graph.tid2pdf, ll, acwt)
    assert not r.partial and not r.failed
    assert [ID2WORD[w] for w in r.words] == ["YES", "NO"]
    assert len(r.tids) == ll.shape[0]
    if acwt == 1.0:  # at 0.1 the graph's silence-state costs may move a boundary a frame
        assert graph.tid2pdf[torch.tensor(r.tids)].tolist() == seq  # frames follow their pdfs
    assert r.acoustic_cost == pytest.approx(acoustic_cost_of(graph, ll, r.tids, acwt), rel=1e-5, abs=1e-4)
    assert r.graph_cost > 0 and r.total_cost == pytest.approx(r.graph_cost + r.acoustic_cost)
    assert words_to_text(r.words, ID2WORD) == ["YES", "NO"]


def test_other_sequences(graph):
    for phones, words in [([("SIL", 8), ("N", 9), ("N", 9), ("SIL", 5)], ["NO", "NO"]),
                          ([("Y", 6), ("N", 6), ("Y", 6)], ["YES", "NO", "YES"]),
                          ([("SIL", 20)], [])]:
        ll, _ = crafted(graph, phones, seed=1)
        r = decode_loglikes(graph.hclg, graph.tid2pdf, ll, 0.5)
        assert [ID2WORD[w] for w in r.words if ID2WORD[w] != "<SIL>"] == words


def test_partial_result_is_flagged(graph):
    # two frames cannot pass through any phone (each needs >= 3 frames): no final state
    ll, _ = crafted(graph, [("Y", 2)])
    r = decode_loglikes(graph.hclg, graph.tid2pdf, ll, 1.0)
    assert r.partial
    lr = decode_lattice(graph.hclg, graph.tid2pdf, ll, 1.0)
    assert lr.best.partial
    lat = lattice_to_tensors(lr.lattice)  # partial lattice: last frame's states are final
    finals = torch.isfinite(lat.final_graph_cost)
    assert lat.num_frames == 2 and bool((lat.state_frame[finals] == 2).all())
    assert lattice_best_path(lat)[0] == pytest.approx(lr.best.total_cost, rel=1e-5)
    full = decode_loglikes(graph.hclg, graph.tid2pdf, crafted(graph, YES_NO)[0], 1.0)
    assert not full.partial


def test_bad_loglikes(graph):
    with pytest.raises(DataError, match="columns"):
        decode_loglikes(graph.hclg, graph.tid2pdf, torch.zeros(5, 3), 1.0)
    with pytest.raises(DataError, match="matrix"):
        decode_loglikes(graph.hclg, graph.tid2pdf, torch.zeros(5), 1.0)
    with pytest.raises(DataError, match="not found"):
        read_graph("/nonexistent/HCLG.fst")


@pytest.mark.parametrize("bias", [8.0, 0.5])
def test_lattice_matches_best_path(graph, bias):
    """The raw lattice as tensors: top-sorted, frame-indexed, acoustic costs = -M, and its
    Viterbi path is the decoder's best path with the same score."""
    acwt = 0.5
    ll, _ = crafted(graph, YES_NO, seed=3, bias=bias)
    lr = decode_lattice(graph.hclg, graph.tid2pdf, ll, acwt, beam=13.0, lattice_beam=6.0)
    best = lr.best
    T = ll.shape[0]
    lat = lattice_to_tensors(lr.lattice)
    assert lat.num_frames == T and int(lat.state_frame.max()) == T
    assert bool((lat.src < lat.dst).all())  # topological numbering
    assert bool((lat.src[1:] >= lat.src[:-1]).all())
    assert lat.state_frame[0] == 0
    assert bool((lat.state_frame[1:] >= lat.state_frame[:-1]).all())  # states sorted by frame
    emit = lat.ilabel != 0
    assert bool((lat.state_frame[lat.dst] == lat.state_frame[lat.src] + emit.long()).all())
    m = torch.from_numpy(scaled_tid_scores(graph.tid2pdf, ll, acwt))
    t = lat.state_frame[lat.src[emit]]
    assert torch.allclose(lat.acoustic_cost[emit], -m[t, lat.ilabel[emit] - 1], atol=1e-4)
    assert bool((lat.acoustic_cost[~emit] == 0).all())
    finals = torch.isfinite(lat.final_graph_cost)
    assert finals.any() and bool((lat.state_frame[finals] == T).all())
    if bias < 1.0:
        assert lat.num_arcs > 2 * T  # a confusable case has a real lattice, not a single path

    cost, arcs = lattice_best_path(lat)
    assert cost == pytest.approx(best.total_cost, rel=1e-5)
    tids = [int(lat.ilabel[k]) for k in arcs if lat.ilabel[k] != 0]
    words = [int(lat.olabel[k]) for k in arcs if lat.olabel[k] != 0]
    assert tids == best.tids and words == best.words
    ac = sum(float(lat.acoustic_cost[k]) for k in arcs)
    assert ac == pytest.approx(best.acoustic_cost, rel=1e-5, abs=1e-3)
    assert ac == pytest.approx(acoustic_cost_of(graph, ll, best.tids, acwt), rel=1e-5, abs=1e-3)

    fast = decode_loglikes(graph.hclg, graph.tid2pdf, ll, acwt)
    assert fast.words == best.words and fast.tids == best.tids
    assert fast.total_cost == pytest.approx(best.total_cost, rel=1e-5)


def test_lattice_rescoring_scale(graph):
    """``lattice_best_path(acoustic_scale=k)`` re-weights the acoustic part of every arc."""
    ll, _ = crafted(graph, YES_NO, seed=4, bias=1.0)
    lat = lattice_to_tensors(decode_lattice(graph.hclg, graph.tid2pdf, ll, 1.0).lattice)
    c1, p1 = lattice_best_path(lat, acoustic_scale=0.5)
    g = float(lat.graph_cost[p1].double().sum() + lat.final_graph_cost[lat.dst[p1[-1]]])
    a = float(lat.acoustic_cost[p1].double().sum() + lat.final_acoustic_cost[lat.dst[p1[-1]]])
    assert c1 == pytest.approx(g + 0.5 * a, rel=1e-6)


def test_batch_in_process_and_pool(graph):
    lls = [crafted(graph, ph, seed=i)[0] for i, ph in enumerate(
        [YES_NO, [("SIL", 8), ("N", 9), ("SIL", 5)], [("Y", 9), ("Y", 9)], [("Y", 2)]])]
    one = decode_batch(graph.hclg, graph.tid2pdf, lls, 0.3, progress=False)
    assert [r.partial for r in one] == [False, False, False, True]
    ids = ["a", "b", "c", "d"]
    text = results_to_text(ids, one, ID2WORD)
    assert text["a"] == ["YES", "NO"] and text["b"] == ["NO"] and text["c"] == ["YES", "YES"]
    want = [(r.words, r.tids, r.partial) for r in one]
    forked = decode_batch(graph.hclg, graph.tid2pdf, lls, 0.3, num_workers=2, names=ids,
                          progress=False, start_method="fork")
    assert [(r.words, r.tids, r.partial) for r in forked] == want
    spawned = decode_batch(graph.path, graph.tid2pdf, lls, 0.3, num_workers=2, names=ids,
                           progress=False, start_method="spawn")
    assert [(r.words, r.tids, r.partial) for r in spawned] == want
    with pytest.raises(TypeError):  # spawned workers must read the graph from its file
        decode_batch(graph.hclg, graph.tid2pdf, lls, 0.3, num_workers=2, progress=False,
                     start_method="spawn")


def ambiguous(graph, favour_no: float) -> torch.Tensor:
    """Y and N equally likely except for a total log-likelihood advantage ``favour_no`` of N."""
    y, n = graph.pdfs_of_phone("Y"), graph.pdfs_of_phone("N")
    sil = graph.pdfs_of_phone("SIL")
    frames = segment(sil, 6) + [None] * 9 + segment(sil, 6)
    ll = torch.full((len(frames), graph.num_pdfs), -30.0)
    mid = segment([0, 1, 2], 9)
    for t, p in enumerate(frames):
        if p is not None:
            ll[t, p] = 0.0
        else:
            k = mid[t - 6]
            ll[t, y[k]] = 0.0
            ll[t, n[k]] = favour_no / 9
    return ll


def test_acoustic_scale_sweep(graph):
    """The LM prefers YES by ln(10) * 0.05 = 0.115 nats; the acoustics prefer NO by 0.5 nats.
    At acoustic scale 1 (LMWT 1) NO wins, at 0.1 (LMWT 10) YES wins."""
    ll = ambiguous(graph, 0.5)
    words = {lmwt: [ID2WORD[w] for w in decode_loglikes(graph.hclg, graph.tid2pdf, ll, 1 / lmwt).words]
             for lmwt in (1, 10)}
    assert words == {1: ["NO"], 10: ["YES"]}
    for ref, want in ((["NO"], 1.0), (["YES"], 10.0)):
        best, points = sweep_acoustic_scale(graph.path, graph.tid2pdf, ["u"], [ll], {"u": ref},
                                            ID2WORD, lm_weights=(1, 10), progress=False)
        assert best.lm_weight == want and best.acoustic_scale == pytest.approx(1 / want)
        assert best.result.errors == 0 and best.hyps == {"u": ref}
        assert [p.lm_weight for p in points] == [1.0, 10.0]
        assert sorted(p.result.errors for p in points) == [0, 1]


def test_decoder_config_is_used(graph):
    ll, _ = crafted(graph, YES_NO)
    cfg = DecoderConfig(beam=20.0, max_active=50)
    r = decode_batch(graph.hclg, graph.tid2pdf, [ll], 1.0, config=cfg, progress=False)[0]
    assert [ID2WORD[w] for w in r.words] == ["YES", "NO"]


def test_decode_cli(graph, tmp_path, monkeypatch, capsys):
    from hfasr.bin import decode as cmd

    gdir = tmp_path / "graph"
    gdir.mkdir()
    (gdir / "HCLG.fst").write_bytes(graph.path.read_bytes())
    (gdir / "words.txt").write_text("".join(f"{w} {i}\n" for w, i in WORDS.items()))
    monkeypatch.setattr(cmd, "load_tid2pdf", lambda model_dir: graph.tid2pdf)
    test = {"t1": crafted(graph, YES_NO, seed=5)[0], "t2": crafted(graph, [("N", 9)], seed=6)[0]}
    torch.save({"cut_ids": list(test), "loglikes": list(test.values())}, tmp_path / "test.pt")
    torch.save({"cut_ids": ["d1"], "loglikes": [ambiguous(graph, 0.5)]}, tmp_path / "dev.pt")
    (tmp_path / "ref").write_text("t1 YES NO\nt2 YES\n")
    (tmp_path / "dev_ref").write_text("d1 NO\n")
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    out = tmp_path / "decode_test"
    args = p.parse_args(["--loglikes", str(tmp_path / "test.pt"), "--graph-dir", str(gdir),
                         "--model-dir", str(tmp_path), "--out", str(out), "--set", "test",
                         "--ref", str(tmp_path / "ref"), "--dev-loglikes", str(tmp_path / "dev.pt"),
                         "--dev-ref", str(tmp_path / "dev_ref"), "--lm-weights", "1,10"])
    cmd.run(args)
    assert (out / "hyp.txt").read_text() == "t1 YES NO\nt2 NO\n"
    wer = (out / "wer.txt").read_text()
    assert wer.startswith("%WER 33.33 [ 1 / 3, 0 ins, 0 del, 1 sub ]\n%SER 50.00 [ 1 / 2 ]\n")
    assert "LMWT 1," in wer and capsys.readouterr().out == wer
    assert (out / "sweep.txt").read_text().splitlines()[-1] == "best LMWT 1 WIP 0"
    assert "t2 ref  YES" in (out / "errs-test.txt").read_text()


def test_zero_frames(graph):
    empty = torch.zeros(0, graph.num_pdfs)
    r = decode_loglikes(graph.hclg, graph.tid2pdf, empty, 1.0)
    assert r.tids == [] and r.words == [] and (r.partial or math.isfinite(r.total_cost))
    lr = decode_lattice(graph.hclg, graph.tid2pdf, empty, 1.0)
    assert lr.best.failed and lattice_to_tensors(lr.lattice).num_states == 0
    assert lattice_best_path(lattice_to_tensors(lr.lattice)) == (math.inf, [])
