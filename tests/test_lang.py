"""hfasr.lang: lexicons, disambiguation, the Witten-Bell ARPA LM, L / G / HCLG, `hfasr lang`."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from hfasr._kaldi import kaldifst, khg
from hfasr.errors import DataError
from hfasr.lang.arpa import perplexity, read_arpa, train_witten_bell
from hfasr.lang.graphs import (
    accepts,
    arpa_to_fst,
    fst_arcs,
    linear_acceptor,
    make_hclg,
    read_symbols,
)
from hfasr.lang.lexicon import (
    Lexicon,
    add_lex_disambig,
    builtin_lexicons,
    check_coverage,
    lexicon_dir,
    synth_vocabulary,
)
from hfasr.lang.prepare import Lang, LangConfig, build_lang, prepare_lang

# ------------------------------------------------------------------------------------ lexicons


def test_builtin_lexicon_files_are_up_to_date():
    lexicons = builtin_lexicons()
    # every versioned lexicon file is one the code can regenerate, and there are three of them
    assert sorted(lexicons) == sorted(p.name for p in lexicon_dir().glob("*.txt")) == [
        "alnum.txt", "digits.txt", "yesno.txt"]
    for name, lex in lexicons.items():
        on_disk = Lexicon.read(lexicon_dir() / name)
        assert on_disk.prons == lex.prons, f"hfasr/resources/lang/{name} is stale: run `python -m hfasr.lang.lexicon`"


def test_alnum_lexicon_letter_names_and_coverage():
    lex = Lexicon.read(lexicon_dir() / "alnum.txt")
    assert set(synth_vocabulary()) <= set(lex.words)
    assert lex.prons["A"] == [("EY",)]  # the letter name, not the article
    assert lex.prons["OH"] == [("OW",)]
    assert lex.prons["W"] == [("D", "AH", "B", "AH", "L", "Y", "UW")]
    assert lex.prons["Y"] == [("W", "AY")]
    assert lex.prons["H"] == [("EY", "CH")]
    assert not any(ch.isdigit() for p in lex.phones for ch in p)  # stress stripped
    for w in ["ENTER", "ERASE", "REPEAT", "RUBOUT", "STOP", "START", "YES", "NO", "GO", "BACK", "NEXT"]:
        assert w in lex


def test_digits_and_yesno_lexicons():
    digits = Lexicon.read(lexicon_dir() / "digits.txt")
    assert digits.words == sorted(["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"])
    yesno = Lexicon.read(lexicon_dir() / "yesno.txt")
    assert yesno.prons == {"NO": [("N",)], "YES": [("Y",)]}


def test_lexicon_read_errors(tmp_path):
    p = tmp_path / "lex.txt"
    p.write_text("HELLO HH AH0 L OW1\nWORLD\n")
    with pytest.raises(DataError, match=r"lex.txt:2: word 'WORLD' has no phones"):
        Lexicon.read(p)
    p.write_text("<s> S\n")
    with pytest.raises(DataError, match="reserved"):
        Lexicon.read(p)
    p.write_text("HELLO HH AH0 L OW1\n")
    assert Lexicon.read(p, strip_stress_digits=True).prons["HELLO"] == [("HH", "AH", "L", "OW")]
    with pytest.raises(DataError, match="not found"):
        Lexicon.read(tmp_path / "missing.txt")


def test_coverage_error_names_word_and_utterance():
    lex = Lexicon({"YES": [("Y",)]})
    with pytest.raises(DataError, match=r"word 'NO' of utterance 'utt2' \(m.jsonl\)"):
        check_coverage(lex, [("utt1", "YES YES"), ("utt2", "YES NO")], "m.jsonl")


def test_add_lex_disambig_like_kaldi():
    entries = [("NEXT", ("N", "EH", "K", "S")), ("NEXT", ("N", "EH", "K", "S", "T")), ("O", ("OW",)),
               ("OH", ("OW",)), ("TWO", ("T", "UW"))]
    out, max_dis = add_lex_disambig(entries)
    assert out == [("NEXT", ("N", "EH", "K", "S", "#1")), ("NEXT", ("N", "EH", "K", "S", "T")),
                   ("O", ("OW", "#1")), ("OH", ("OW", "#2")), ("TWO", ("T", "UW"))]
    assert max_dis == 2


# ------------------------------------------------------------------------------------------ LM


def test_witten_bell_hand_computed(tmp_path):
    # <s> A B </s>, <s> A </s>; vocabulary A B C (+ </s>): see the module docstring's formula.
    lm = train_witten_bell([["A", "B"], ["A"]], ["A", "B", "C"], order=2)
    lm.write_arpa(tmp_path / "lm.arpa")
    r = read_arpa(tmp_path / "lm.arpa")
    expect_uni = {"A": 2.75 / 8, "B": 1.75 / 8, "C": 0.75 / 8, "</s>": 2.75 / 8}
    for w, p in expect_uni.items():
        assert r.prob(w) == pytest.approx(p, rel=1e-6)
    assert r.prob("A", ["<s>"]) == pytest.approx(0.78125, rel=1e-6)
    assert r.prob("B", ["A"]) == pytest.approx(0.359375, rel=1e-6)
    assert r.prob("</s>", ["A"]) == pytest.approx(0.421875, rel=1e-6)
    assert r.prob("C", ["A"]) == pytest.approx(0.5 * 0.09375, rel=1e-6)  # backoff
    assert r.prob("</s>", ["B"]) == pytest.approx(0.671875, rel=1e-6)
    assert r.backoffs[("<s>",)] == pytest.approx(math.log10(1 / 3), abs=1e-6)
    assert r.probs[1][("<s>",)] == -99.0


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_arpa_normalised_per_history(tmp_path, order):
    sents = [s.split() for s in ["ONE TWO THREE", "TWO TWO", "THREE ONE TWO ONE", "ONE"]]
    vocab = ["ONE", "TWO", "THREE", "FOUR"]
    train_witten_bell(sents, vocab, order).write_arpa(tmp_path / "lm.arpa")
    lm = read_arpa(tmp_path / "lm.arpa")
    assert lm.order == order
    hists = lm.histories()
    assert len(hists) >= (1 if order == 1 else 4)
    for h in hists:
        total = sum(lm.prob(w, h) for w in vocab + ["</s>"])
        assert total == pytest.approx(1.0, abs=1e-5), h
    assert lm.prob("FOUR", ["ONE"]) > 0  # unseen words keep probability


def test_perplexity_hand_computed():
    # the model of test_witten_bell_hand_computed; </s> is scored, the OOV X is skipped
    lm = train_witten_bell([["A", "B"], ["A"]], ["A", "B", "C"], order=2)
    ppl, n_words, n_oov = perplexity(lm, [["A", "B"]])
    assert (n_words, n_oov) == (2, 0)
    assert ppl == pytest.approx((0.78125 * 0.359375 * 0.671875) ** (-1 / 3), rel=1e-9)
    # p(C | A) backs off to the unigram; C is never a history, so p(</s> | C) is the unigram;
    # after X the history (X) is unknown: p(</s> | A X) = p(</s>)
    ppl, n_words, n_oov = perplexity(lm, [["A", "C"], ["A", "X"]])
    assert (n_words, n_oov) == (4, 1)
    logp = math.log10(0.78125 * (0.5 * 0.09375) * (2.75 / 8)) + math.log10(0.78125 * (2.75 / 8))
    assert ppl == pytest.approx(10 ** (-logp / (4 - 1 + 2)), rel=1e-9)


def test_lm_rejects_oov_and_empty():
    with pytest.raises(DataError, match="'X'"):
        train_witten_bell([["X"]], ["A"], 2)
    with pytest.raises(DataError, match="empty"):
        train_witten_bell([], ["A"], 2)


# ----------------------------------------------------------------------------------- graphs


@pytest.fixture(scope="module")
def tiny_lang(tmp_path_factory):
    """A lang dir with homophones (O/OH) and a prefix pronunciation (NEXT), trigram G."""
    lex = Lexicon.read(lexicon_dir() / "alnum.txt").restrict(["NEXT", "O", "OH", "TWO", "A", "H"])
    text = [s.split() for s in ["NEXT O TWO", "OH TWO", "A H NEXT", "TWO TWO OH"]]
    return build_lang(lex, text, tmp_path_factory.mktemp("lang"), LangConfig(lm_order=3))


def _out_words(fst, lang) -> list[str]:
    best = kaldifst.shortest_path(fst)
    ok, _, osyms, _ = kaldifst.get_linear_symbol_sequence(best)
    assert ok
    return [lang.id2word[o] for o in osyms if o != 0]


def test_lang_dir_files_and_tables(tiny_lang):
    d = tiny_lang.dir
    for f in ("phones.txt", "words.txt", "lexicon.txt", "topo", "disambig.int", "L.fst", "L_disambig.fst",
              "lm.arpa", "G.fst", "lm_weak.arpa", "G_weak.fst", "config.yaml"):
        assert (d / f).is_file(), f
    phones = read_symbols(d / "phones.txt")
    assert phones["<eps>"] == 0 and phones["SIL"] == 1
    # lexicon disambig #1, #2 (O / OH) plus one for silence: #0..#3
    assert [p for p in phones if p.startswith("#")] == ["#0", "#1", "#2", "#3"]
    assert tiny_lang.disambig == [phones[f"#{i}"] for i in range(4)]
    words = read_symbols(d / "words.txt")
    assert list(words)[:1] == ["<eps>"] and list(words)[-3:] == ["#0", "<s>", "</s>"]
    topo = tiny_lang.topo()
    assert topo.num_pdf_classes(phones["SIL"]) == 5 and topo.num_pdf_classes(phones["T"]) == 3
    assert read_arpa(d / "lm_weak.arpa").order == 1


def test_L_maps_phones_to_words_with_optional_silence(tiny_lang):
    p = tiny_lang.phones
    L = tiny_lang.L()
    kaldifst.arcsort(L, sort_type="ilabel")
    for seq, words in ([["N", "EH", "K", "S", "T", "T", "UW"], ["NEXT", "TWO"]],
                       [["SIL", "EY", "SIL", "EY", "CH", "SIL"], ["A", "H"]]):
        c = kaldifst.compose(linear_acceptor([p[x] for x in seq]), L)
        assert c.num_states > 0
        assert _out_words(c, tiny_lang) == words
    # no silence inside a word
    c = kaldifst.compose(linear_acceptor([p[x] for x in ["T", "SIL", "UW"]]), L)
    assert c.num_states == 0


def test_LG_accepts_sentences_and_determinizes(tiny_lang):
    LG = kaldifst.compose(tiny_lang.L_disambig(), tiny_lang.G())
    kaldifst.determinize_star(LG, use_log=True)  # needs the disambiguation symbols (O/OH)
    kaldifst.arcsort(LG, sort_type="olabel")
    for sent in (["NEXT", "O"], ["OH", "TWO", "A"], ["H"]):
        w = linear_acceptor([tiny_lang.words[x] for x in sent])
        c = kaldifst.compose(LG, w)
        assert c.num_states > 0, sent
        assert _out_words(c, tiny_lang) == sent
    # G has the #0 backoff arcs that L_disambig passes through
    g_ilabels = {a[1] for a in fst_arcs(tiny_lang.G())}
    assert tiny_lang.words["#0"] in g_ilabels


def test_hclg_accepts_training_graph_paths(tiny_lang):
    import numpy as np

    from hfasr.gmm.model import GmmModel

    model = GmmModel.init_mono(tiny_lang.topo_text, 2, np.zeros(2), np.ones(2))
    hclg = make_hclg(tiny_lang, model.tree, model.tm, tiny_lang.G())
    ilabels = {a[1] for a in fst_arcs(hclg)}
    assert max(ilabels) <= model.tm.num_transition_ids  # only transition-ids (disambig removed)
    gc = khg.TrainingGraphCompiler(trans_model=model.tm, ctx_dep=model.tree, lex_fst=tiny_lang.L(),
                                   disambig_syms=tiny_lang.disambig, opts=khg.TrainingGraphCompilerOptions())
    for k, sent in enumerate((["NEXT", "O"], ["OH", "TWO", "TWO"], ["A", "H", "NEXT"])):
        g = gc.compile_graph_from_text([tiny_lang.words[w] for w in sent])
        ok, path = kaldifst.equal_align(ifst=g, length=60, rand_seed=k, num_retries=10)
        assert ok
        ok, tids, _, _ = kaldifst.get_linear_symbol_sequence(path)
        good, words = accepts(hclg, tids)
        assert good, sent
        assert [tiny_lang.id2word[w] for w in words] == sent
    # a path that never leaves the first HMM state is rejected
    assert not accepts(hclg, [1] * 60)[0]


def test_arpa_to_fst_unknown_word_is_an_error(tmp_path, tiny_lang):
    lm = train_witten_bell([["ZULU"]], ["ZULU"], 1)
    lm.write_arpa(tmp_path / "x.arpa")
    with pytest.raises(DataError, match="ZULU"):
        arpa_to_fst(tmp_path / "x.arpa", tiny_lang.dir / "words.txt")


# --------------------------------------------------------------------------- real transcripts


@pytest.fixture(scope="module")
def yesno_cuts(tmp_path_factory, yesno_dir):
    from hfasr.data.corpora import prepare_corpus

    out = tmp_path_factory.mktemp("yesno_cuts")
    prepare_corpus("yesno", out, corpus_dir=yesno_dir)
    return out


def test_hfasr_lang_cli_on_yesno(yesno_cuts, tmp_path, capsys):
    from hfasr.cli import main

    assert main(["lang", "--data-dir", str(yesno_cuts), "--task", "yesno", "--out", str(tmp_path / "lang"),
                 "--lm-order", "2"]) == 0
    assert "2 words, 3 phones" in capsys.readouterr().out
    lm = read_arpa(tmp_path / "lang" / "lm.arpa")
    assert lm.order == 2
    assert lm.histories() == [(), ("<s>",), ("NO",), ("YES",)]  # unigram + one bigram history each
    for h in lm.histories():
        assert sum(lm.prob(w, h) for w in ["YES", "NO", "</s>"]) == pytest.approx(1.0, abs=1e-5)


def test_oov_in_test_transcripts_names_word_and_utterance(yesno_cuts, tmp_path):
    lex = tmp_path / "lex.txt"
    lex.write_text("YES Y\n")
    with pytest.raises(DataError, match=r"word 'NO' of utterance '[01_]+-\d+' \(.*yesno_cuts_train"):
        prepare_lang(yesno_cuts, "yesno", tmp_path / "lang", lexicon=lex)
    with pytest.raises(DataError, match="no built-in lexicon"):
        prepare_lang(yesno_cuts, "librispeech", tmp_path / "lang")


def test_unknown_lang_config_key(tmp_path, yesno_cuts):
    from hfasr.cli import main

    cfg = tmp_path / "lang.yaml"
    cfg.write_text("lm_ordr: 2\n")
    assert main(["lang", "--data-dir", str(yesno_cuts), "--task", "yesno", "--out", str(tmp_path / "l"),
                 "--config", str(cfg)]) == 2


def test_fsdd_conn_lang(fsdd_prepared, tmp_path):
    out, _ = fsdd_prepared
    lang = prepare_lang(out, "fsdd_conn", tmp_path / "lang")
    assert sorted(lang.lexicon.words) == sorted(w for w in lang.words if w[0].isalpha())
    assert len(lang.lexicon) == 10
    lm = read_arpa(tmp_path / "lang" / "lm.arpa")
    assert lm.order == 3
    hists = lm.histories()
    assert {len(h) for h in hists} == {0, 1, 2} and len(hists) > 11  # unigram, bigram, trigram contexts
    for h in hists:
        assert sum(lm.prob(w, h) for w in lang.lexicon.words + ["</s>"]) == pytest.approx(1.0, abs=1e-5)


def test_vocab_from_transcripts_with_user_lexicon(yesno_cuts, tmp_path):
    lang = prepare_lang(yesno_cuts, "yesno", tmp_path / "lang", LangConfig(vocab="transcripts", lm_order=2),
                        lexicon=lexicon_dir() / "alnum.txt")
    assert lang.lexicon.words == ["NO", "YES"]
    assert lang.lexicon.prons["YES"] == [("Y", "EH", "S")]
    assert sorted(p for p in lang.phones if p[0].isalpha()) == ["EH", "N", "OW", "S", "SIL", "Y"]


def test_unk_word_and_open_splits(yesno_cuts, tmp_path):
    """Open vocabulary (the LibriSpeech recipe): an unk_word pronounced with a garbage phone
    stands in for words outside words.txt when transcripts are aligned; open_splits are only
    measured (lm_stats.txt); without unk_word an unknown word is still an error naming it."""
    cfg = LangConfig(lm_order=2, check_splits=["train"], open_splits=["dev", "test"], unk_word="<UNK>")
    lang = prepare_lang(yesno_cuts, "yesno", tmp_path / "lang", cfg)
    assert lang.lexicon.prons["<UNK>"] == [("SPN",)] and "SPN" in lang.phones
    assert "<UNK>" in read_arpa(tmp_path / "lang" / "lm.arpa").vocab
    assert lang.word_ids("YES MAYBE NO") == [lang.words["YES"], lang.words["<UNK>"], lang.words["NO"]]
    assert [ln.split(":")[0] for ln in lang.lm_stats()] == ["dev", "test"]
    plain = prepare_lang(yesno_cuts, "yesno", tmp_path / "lang2", LangConfig(lm_order=2))
    with pytest.raises(DataError, match=r"word 'MAYBE' of utterance 'u1' is not in"):
        plain.word_ids("YES MAYBE", "u1")
    # a training word outside the lexicon is <UNK> in G's text instead of an error
    lex = tmp_path / "yes.txt"
    lex.write_text("YES Y EH S\n")
    lang = prepare_lang(yesno_cuts, "yesno", tmp_path / "lang4", cfg, lexicon=lex)
    assert lang.lexicon.words == ["<UNK>", "YES"]
    g = read_arpa(tmp_path / "lang4" / "lm.arpa")
    assert ("YES", "<UNK>") in g.probs[2] and ("<UNK>", "YES") in g.probs[2]  # NO's bigrams, as <UNK>
    with pytest.raises(DataError, match="unk_word 'YES' is a word of the lexicon"):
        prepare_lang(yesno_cuts, "yesno", tmp_path / "lang3", LangConfig(lm_order=2, unk_word="YES"))


def test_lang_from_given_arpa(yesno_cuts, tmp_path):
    """--arpa: G is the given LM less its n-grams with words outside the lexicon (remove_oovs)."""
    from hfasr.cli import main
    from hfasr.lang.arpa import NgramLM

    lm = NgramLM(order=2, vocab=["MAYBE", "NO", "YES"],
                 probs=[{}, {("<s>",): -99.0, ("</s>",): -0.6, ("YES",): -0.5, ("NO",): -0.7, ("MAYBE",): -1.0},
                        {("<s>", "YES"): -0.2, ("YES", "MAYBE"): -0.3, ("MAYBE", "NO"): -0.1}],
                 backoffs={("<s>",): -0.1, ("YES",): -0.2, ("MAYBE",): -0.3})
    lm.write_arpa(tmp_path / "given.arpa")
    assert main(["lang", "--data-dir", str(yesno_cuts), "--task", "yesno", "--out", str(tmp_path / "lang"),
                 "--arpa", str(tmp_path / "given.arpa")]) == 0
    g = read_arpa(tmp_path / "lang" / "lm.arpa")
    assert g.vocab == ["NO", "YES"] and g.order == 2
    assert g.probs[2] == {("<s>", "YES"): -0.2} and ("MAYBE",) not in g.backoffs
    assert g.log10_prob("NO", ["YES"]) == pytest.approx(-0.2 - 0.7)
    (tmp_path / "other.arpa").write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0\tFOO\n\n\\end\\\n")
    with pytest.raises(DataError, match="shares no word with the lexicon"):
        prepare_lang(yesno_cuts, "yesno", tmp_path / "lang2", arpa=tmp_path / "other.arpa")


# ------------------------------------------------------------------------------------------ an4

# ../shared/data/an4, as conftest.py locates yesno and fsdd (HFASR_SHARED_DATA overrides)
AN4 = Path(os.environ.get("HFASR_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "an4"


def test_an4_lang_uses_corpus_lexicon(tmp_path, capsys):
    """hfasr lang on an4's manifests finds the lexicon `hfasr prepare` wrote; prints LM statistics."""
    from hfasr.cli import main
    from hfasr.data.corpora import prepare_corpus

    if not AN4.is_dir():
        pytest.fail(f"test corpus missing: {AN4} (set HFASR_SHARED_DATA to the shared/data folder)")
    data = tmp_path / "data"
    prepare_corpus("an4", data, corpus_dir=AN4)
    capsys.readouterr()
    assert main(["lang", "--data-dir", str(data), "--task", "an4", "--out", str(tmp_path / "lang")]) == 0
    out = capsys.readouterr().out
    lang = Lang(tmp_path / "lang")
    dic_words = {ln.split()[0].split("(")[0] for ln in (AN4 / "etc" / "an4.dic").read_text().splitlines() if ln.strip()}
    assert set(lang.lexicon.words) == dic_words and f"{len(dic_words)} words, 34 phones" in out
    lex_lines = (tmp_path / "lang" / "lexicon.txt").read_text().splitlines()
    assert "A AH" in lex_lines and "A EY" in lex_lines  # A and A(2)
    assert len(lang.lexicon.prons["FEBRUARY"]) == 5  # FEBRUARY .. FEBRUARY(5)
    stats = (tmp_path / "lang" / "lm_stats.txt").read_text().splitlines()
    assert stats[0].startswith("# G (lm.arpa): 3-gram") and len(stats) == 3
    assert stats[2].startswith("test: 130 sentences, 773 words, OOV rate ")
    assert lang.lm_stats() == stats[1:] and all(s in out for s in stats[1:])
    for line in stats[1:]:
        ppl = float(line.split("perplexity ")[1].split()[0])
        assert 2 < ppl < 101  # better than uniform over the vocabulary
    with pytest.raises(DataError, match=r"no built-in lexicon and `hfasr prepare` wrote none"):
        prepare_lang(data, "an4_other", tmp_path / "lang2")
