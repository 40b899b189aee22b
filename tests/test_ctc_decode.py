"""CTC decoding: the CTC topology, TLG graphs on hand-built lang dirs (exact words), greedy
decoding to words, and forced alignment (consistent with brute force and with the decoder)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from hfasr._kaldi import kaldifst
from hfasr.decode.ctc import (
    collapse,
    decode_ctc,
    forced_align,
    greedy_ids,
    path_tokens,
    penalize_blank,
    segment_words,
    token_error_line,
    token_segments,
    tokens_to_words,
)
from hfasr.decode.decoder import words_to_text
from hfasr.decode.score import score
from hfasr.errors import DataError
from hfasr.lang.ctc import build_ctc_graph, ctc_topo, token_lexicon_fst
from hfasr.lang.graphs import linear_acceptor, read_symbols
from hfasr.lang.lexicon import Lexicon
from hfasr.lang.prepare import LangConfig, build_lang

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.py)


def crafted(frames: list[list[float] | int], K: int) -> torch.Tensor:
    """Log-probs (T, K): an int frame is that token with probability ~0.99; a list is the
    frame's probabilities."""
    rows = []
    for f in frames:
        if isinstance(f, int):
            p = torch.full((K,), 0.01 / (K - 1))
            p[f] = 0.99
        else:
            p = torch.tensor(f, dtype=torch.float32)
        rows.append(p.log())
    return torch.stack(rows)


def best_output(fst, labels: list[int]) -> list[int] | None:
    """Output labels of the best path of ``fst`` over input ``labels`` (None: rejected)."""
    g = fst.copy()
    kaldifst.arcsort(g, sort_type="ilabel")
    c = kaldifst.compose(linear_acceptor(labels), g)
    if c.num_states == 0:
        return None
    _, _, osyms, _ = kaldifst.get_linear_symbol_sequence(kaldifst.shortest_path(c))
    return [o for o in osyms if o != 0]


# --------------------------------------------------------------------------- topology

def test_ctc_topo_collapses_every_path():
    K = 3
    T = ctc_topo(K, disambig=[5])
    for path in itertools.product(range(K), repeat=4):
        assert best_output(T, [k + 1 for k in path]) == collapse(path), path
    # the disambiguation symbol is an output-only self-loop
    arcs = [(s, a.ilabel, a.olabel) for s in range(T.num_states)
            for a in _arcs(T, s) if a.olabel == 5]
    assert sorted(arcs) == [(s, 0, 5) for s in range(K)]
    with pytest.raises(DataError, match="overlap"):
        ctc_topo(3, disambig=[2])


def _arcs(fst, s):
    it = kaldifst.ArcIterator(fst, s)
    while not it.done:
        yield it.value
        it.next()


# --------------------------------------------------------------------------- hand-built TLG

PHONE_LEX = {"YES": [("Y", "EH", "S")], "NO": [("N", "OW")], "KNOW": [("N", "OW")], "OH": [("OW",)]}
PHONE_TOKENS = ["<blk>", "EH", "N", "OW", "S", "Y"]


@pytest.fixture(scope="module")
def phone_lang(tmp_path_factory):
    lex = Lexicon({w: list(p) for w, p in PHONE_LEX.items()})
    text = [s.split() for s in ["YES NO", "YES NO", "NO YES NO", "YES KNOW", "OH YES"]]
    return build_lang(lex, text, tmp_path_factory.mktemp("lang_phone"), LangConfig(lm_order=2))


@pytest.fixture(scope="module")
def char_lang(tmp_path_factory):
    lex = Lexicon({w: [tuple(w)] for w in ["AB", "BA", "BB"]})  # phones = letters (unused by CTC)
    text = [s.split() for s in ["AB BA", "BA AB", "BB AB BA"]]
    return build_lang(lex, text, tmp_path_factory.mktemp("lang_char"), LangConfig(lm_order=2))


def tlg_words(lang, graph_dir, logp, **kw) -> list[str]:
    res = decode_ctc(graph_dir / "TLG.fst", [logp], progress=False, **kw)[0]
    assert not res.partial
    return words_to_text(res.words, lang.id2word)


def test_tlg_phones_exact_words_and_lm_picks_the_homophone(phone_lang, tmp_path):
    gdir = tmp_path / "graph"
    build_ctc_graph(phone_lang.dir, PHONE_TOKENS, "phone", gdir)
    assert read_symbols(gdir / "tokens.txt") == {t: i for i, t in enumerate(PHONE_TOKENS)}
    # NO and KNOW are homophones: two disambiguation symbols beyond #0
    assert len((gdir / "disambig.int").read_text().split()) == 3
    tok = {t: i for i, t in enumerate(PHONE_TOKENS)}
    frames = [0, tok["Y"], tok["Y"], tok["EH"], 0, tok["S"], 0, 0, tok["N"], tok["OW"], tok["OW"], 0]
    logp = crafted(frames, len(PHONE_TOKENS))
    # after YES the bigram LM prefers NO (twice in the text) to KNOW (once)
    assert tlg_words(phone_lang, gdir, logp) == ["YES", "NO"]
    # greedy tokens → words: the lexicon segmentation (NO comes first in the pronunciations)
    units = [PHONE_TOKENS[i] for i in greedy_ids(logp)]
    assert units == ["Y", "EH", "S", "N", "OW"]
    assert tokens_to_words(units, "phone", prons=PHONE_LEX) == ["YES", "NO"]
    # a lone OW is OH; an extra phone that fits no word is skipped
    assert segment_words(["OW", "Y", "EH", "S", "S", "N", "OW"], PHONE_LEX) == ["OH", "YES", "NO"]
    # the frame path of the best TLG path collapses to the words' tokens
    res = decode_ctc(gdir / "TLG.fst", [logp], progress=False)[0]
    assert collapse(path_tokens(res)) == [tok[u] for u in units]
    assert len(res.tids) == logp.shape[0]


def test_tlg_characters_word_constraint_beats_greedy(char_lang, tmp_path):
    tokens = ["<blk>", "A", "B", "<space>"]
    gdir = tmp_path / "graph"
    build_ctc_graph(char_lang.dir, tokens, "char", gdir, word_boundary="<space>")
    A, B, SP = 1, 2, 3
    tie = [0.02, 0.49, 0.49, 0.0]  # A or B: argmax takes A
    logp = crafted([A, 0, tie, 0, SP, B, B, 0, A], 4)
    units = [tokens[i] for i in greedy_ids(logp)]
    assert tokens_to_words(units, "char", "<space>") == ["AA", "BA"]  # not a word
    assert tlg_words(char_lang, gdir, logp) == ["AB", "BA"]


def test_token_lexicon_boundary_and_disambig():
    tokens = {"<blk>": 0, "A": 1, "B": 2, "<space>": 3}
    words = {"<eps>": 0, "A": 1, "AB": 2, "#0": 3}
    L, dis = token_lexicon_fst([("A", ("A",)), ("AB", ("A", "B"))], tokens, words, "<space>")
    assert dis == [4, 5]  # #0 and #1 (A is a prefix of AB)
    assert best_output(L, [1, 5]) == [1]  # A #1
    assert best_output(L, [1, 5, 3, 1, 2]) == [1, 2]  # A #1 <space> A B
    assert best_output(L, [1, 5, 1, 2]) is None  # no boundary: rejected
    with pytest.raises(DataError, match="word-boundary"):
        token_lexicon_fst([("A", ("A",))], tokens, words, "|")


def test_build_graph_errors(phone_lang, tmp_path):
    with pytest.raises(DataError, match="cannot be spelled|none of the words"):
        build_ctc_graph(phone_lang.dir, ["<blk>", "Q"], "phone", tmp_path / "g")
    with pytest.raises(DataError, match="words.txt"):
        build_ctc_graph(tmp_path, PHONE_TOKENS, "phone", tmp_path / "g")


# --------------------------------------------------------------------------- forced alignment

def test_forced_alignment_is_the_viterbi_path_and_matches_the_decoder():
    g = torch.Generator().manual_seed(3)
    K, T = 4, 7
    logp = torch.log_softmax(torch.randn(T, K, generator=g), -1)
    targets = [2, 2, 3]
    ali, scores = forced_align(logp, targets)
    assert collapse(ali.tolist()) == targets
    assert torch.allclose(scores, logp[torch.arange(T), ali])
    best = max((sum(float(logp[t, k]) for t, k in enumerate(p)), p)
               for p in itertools.product(range(K), repeat=T) if collapse(p) == targets)
    assert float(scores.sum()) == pytest.approx(best[0], abs=1e-5)
    assert ali.tolist() == list(best[1])
    # the decoder over T ∘ (linear acceptor of the targets) finds the same path and score
    graph = kaldifst.compose(ctc_topo(K), linear_acceptor(targets))
    res = decode_ctc(graph, [logp], progress=False, config=None)[0]
    assert not res.partial and res.graph_cost == pytest.approx(0.0)
    assert path_tokens(res) == ali.tolist()
    assert res.acoustic_cost == pytest.approx(-float(scores.sum()), abs=1e-4)
    assert token_segments(ali.tolist()) == _segments(ali.tolist())
    with pytest.raises(DataError, match="utt-x.*frames"):
        forced_align(logp[:3], targets, utt="utt-x")


def _segments(path):
    out = []
    for t, k in enumerate(path):
        if k and (t == 0 or path[t - 1] != k):
            out.append([k, t, t + 1])
        elif k:
            out[-1][2] = t + 1
    return [tuple(s) for s in out]


def test_blank_penalty_and_token_error_line():
    logp = crafted([0, 1, 0], 3)
    x = penalize_blank(logp, 2.0)
    assert torch.equal(x[:, 1:], logp[:, 1:]) and torch.allclose(x[:, 0], logp[:, 0] - 2.0)
    assert torch.equal(penalize_blank(logp), logp)
    r = score({"u": ["A", "B", "C"]}, {"u": ["A", "C", "D"]})
    assert token_error_line(r, "CER") == "%CER 66.67 [ 2 / 3, 1 ins, 1 del, 0 sub ]"
    assert math.isclose(r.wer, 66.67, abs_tol=0.01)
