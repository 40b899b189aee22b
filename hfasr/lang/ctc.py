"""CTC decoding graphs: the CTC topology T, a token-level lexicon L and ``TLG = T ∘ det(L ∘ G)``.

Token ids follow :class:`hfasr.criteria.ctc.TokenTable`: 0 is the blank, 1..K−1 the units
(phones or characters). The graph's **input labels are token id + 1** (0 is epsilon), the index
convention of ``kaldi_decoder.DecodableCtc``, so a (T, K) matrix of per-frame token scores is
decoded directly (its ``log_likelihood(t, index)`` is column ``index − 1``); output labels are
the word ids of the lang dir's ``words.txt``, the ones of its ``G.fst``.

- :func:`ctc_topo`: the standard CTC topology over K tokens (Graves' path collapse as an FST):
  state s = the token of the last frame; from every state, token j moves to state j, emitting j
  if j is neither the blank nor s (a repeat collapses); all states are final. Disambiguation
  symbols pass through as ``<eps>:#k`` self-loops on every state, so L ∘ G keeps its ``#k``.
- :func:`token_lexicon_fst`: L over tokens, without silence (the blank absorbs it). Phone units:
  one loop state, every pronunciation a chain of token arcs with the word on its first arc.
  Character units with a word-boundary token: a word ends in an end-of-word state that is
  final and returns to the loop through the boundary token, so words are separated by exactly
  one boundary, as in the CTC training targets. ``#k`` (``add_lex_disambig``) makes homophones
  and prefixes determinizable; ``#0:#0`` self-loops pass G's back-off symbol.
- :func:`make_tlg`: ``LG = L ∘ G`` determinized (log semiring) and minimized, then
  ``TLG = T ∘ LG`` (EESEN's graph; Miao et al. 2015).

Nothing here knows about torch or the token table class: callers pass token strings and
pronunciations (see :func:`build_ctc_graph`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from hfasr._kaldi import kaldifst, read_fst, write_fst
from hfasr.errors import DataError
from hfasr.fileio import staged_dir, write_text
from hfasr.lang.graphs import read_symbols, write_symbols
from hfasr.lang.lexicon import add_lex_disambig

log = logging.getLogger(__name__)

Fst = kaldifst.StdVectorFst

#: Words of words.txt that are never spelled out in L.
SPECIAL_WORDS = ("<eps>", "#0", "<s>", "</s>")


def _arc(fst: Fst, src: int, dst: int, ilabel: int, olabel: int, cost: float = 0.0) -> None:
    fst.add_arc(state=src, arc=kaldifst.StdArc(ilabel=ilabel, olabel=olabel, weight=cost, nextstate=dst))


def ctc_topo(num_tokens: int, disambig: Sequence[int] = ()) -> Fst:
    """The standard CTC topology T over tokens ``0..num_tokens−1`` (0 = blank).

    Input labels are token id + 1, output labels token ids (0 = epsilon); ``disambig`` (label
    ids, all ≥ ``num_tokens``) get ``0:d`` self-loops on every state. Output-label sorted.
    """
    if num_tokens < 2:
        raise DataError(f"a CTC topology needs the blank and at least one token, got {num_tokens} tokens")
    if any(d < num_tokens for d in disambig):
        raise DataError(f"disambiguation labels {list(disambig)} overlap the token ids 0..{num_tokens - 1}")
    fst = Fst()
    for _ in range(num_tokens):
        fst.add_state()
    fst.start = 0
    for s in range(num_tokens):
        fst.set_final(state=s, weight=0.0)
        for j in range(num_tokens):
            _arc(fst, s, j, j + 1, 0 if j in (0, s) else j)
        for d in disambig:
            _arc(fst, s, s, 0, d)
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst


def token_lexicon_fst(entries: Sequence[tuple[str, Sequence[str]]], token2id: Mapping[str, int],
                      word2id: Mapping[str, int], word_boundary: str | None = None) -> tuple[Fst, list[int]]:
    """L over tokens (no silence) for ``entries`` ``(word, token strings)`` and its ``#k`` labels.

    Disambiguation label ``#k`` gets id ``K + k`` (K = ``len(token2id)``, so ``#0`` is K).
    ``word_boundary`` (a token) separates words (character units). Returns ``(L, [ids of
    #0..#n])``; L is output-label sorted.
    """
    if not entries:
        raise DataError("the token lexicon is empty")
    if "#0" not in word2id:
        raise DataError("words.txt has no '#0' (G's back-off symbol)")
    K = len(token2id)
    dis_entries, max_dis = add_lex_disambig([(w, tuple(p)) for w, p in entries])
    dis_ids = [K + k for k in range(max_dis + 1)]

    def label(u: str) -> int:
        if u.startswith("#"):
            return K + int(u[1:])
        return token2id[u]

    fst = Fst()
    loop = fst.add_state()
    fst.start = loop
    if word_boundary is None:
        end = loop
    else:
        if word_boundary not in token2id:
            raise DataError(f"word-boundary token {word_boundary!r} is not a token")
        end = fst.add_state()
        _arc(fst, end, loop, token2id[word_boundary], 0)
        _arc(fst, end, end, dis_ids[0], word2id["#0"])
    fst.set_final(state=end, weight=0.0)
    _arc(fst, loop, loop, dis_ids[0], word2id["#0"])
    for word, units in dis_entries:
        if not units:
            raise DataError(f"word '{word}' has an empty token sequence")
        cur = loop
        for i, u in enumerate(units):
            nxt = end if i == len(units) - 1 else fst.add_state()
            _arc(fst, cur, nxt, label(u), word2id[word] if i == 0 else 0)
            cur = nxt
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst, dis_ids


def make_tlg(T: Fst, L: Fst, G: Fst) -> Fst:
    """``TLG = T ∘ min(det_log(L ∘ G))``, input-label sorted."""
    g = G.copy()
    kaldifst.arcsort(g, sort_type="ilabel")
    LG = kaldifst.compose(L, g)
    if LG.num_states == 0:
        raise DataError("L o G is empty: no word of the token lexicon is in G")
    kaldifst.determinize_star(LG, use_log=True)
    kaldifst.minimize_encoded(LG)
    kaldifst.arcsort(LG, sort_type="ilabel")
    TLG = kaldifst.compose(T, LG)
    if TLG.num_states == 0:
        raise DataError("T o LG is empty")
    kaldifst.arcsort(TLG, sort_type="ilabel")
    return TLG


def word_units(word: str, unit: str, prons: Mapping[str, Sequence[Sequence[str]]] | None) -> list[tuple[str, ...]]:
    """Token strings of ``word``: its characters (``unit="char"``) or its pronunciations."""
    if unit == "char":
        return [tuple(word)]
    if unit != "phone":
        raise DataError(f"unit must be 'phone' or 'char', got {unit!r}")
    if prons is None:
        raise DataError("phone units need a lexicon")
    return [tuple(p) for p in prons.get(word, [])]


def ctc_lexicon_entries(words: Sequence[str], tokens: Sequence[str], unit: str,
                        prons: Mapping[str, Sequence[Sequence[str]]] | None = None
                        ) -> tuple[list[tuple[str, tuple[str, ...]]], list[str]]:
    """``(word, tokens)`` entries of every word that the token set can spell, and the words it
    cannot (a pronunciation or character outside ``tokens``; they are left out of L)."""
    have = set(tokens[1:])
    entries, dropped = [], []
    for w in words:
        if w in SPECIAL_WORDS:
            continue
        ok = [u for u in word_units(w, unit, prons) if u and all(t in have for t in u)]
        if ok:
            entries += [(w, u) for u in dict.fromkeys(ok)]
        else:
            dropped.append(w)
    return entries, dropped


def build_ctc_graph(lang_dir: str | Path, tokens: Sequence[str], unit: str, out_dir: str | Path,
                    word_boundary: str | None = None,
                    prons: Mapping[str, Sequence[Sequence[str]]] | None = None) -> Path:
    """Write ``out_dir/{TLG.fst, tokens.txt, words.txt, disambig.int}`` for the lang dir's ``words.txt`` and
    ``G.fst``; returns the path of ``TLG.fst``. The four files are published together (a failure
    leaves ``out_dir`` as it was); an unreadable ``G.fst`` is a DataError naming it.

    ``tokens``: token strings by id (blank first). ``prons``: word → pronunciations (phone
    units; default: the lang dir's ``lexicon.txt``). Words that the tokens cannot spell are
    left out with a warning; none left is a DataError.
    """
    from hfasr.lang.lexicon import Lexicon

    lang_dir, out = Path(lang_dir), Path(out_dir)
    word2id = read_symbols(lang_dir / "words.txt")
    g_path = lang_dir / "G.fst"
    if not g_path.is_file():
        raise DataError(f"{g_path}: not found; run `hfasr lang` first")
    if unit == "phone" and prons is None:
        prons = Lexicon.read(lang_dir / "lexicon.txt").prons
    token2id = {t: i for i, t in enumerate(tokens)}
    if len(token2id) != len(tokens):
        raise DataError("duplicate tokens")
    entries, dropped = ctc_lexicon_entries(sorted(word2id, key=word2id.__getitem__), list(tokens), unit, prons)
    if not entries:
        raise DataError(f"none of the words of {lang_dir / 'words.txt'} can be spelled with the {len(tokens) - 1} tokens")
    if dropped:
        log.warning("%d words of %s cannot be spelled with the tokens and are left out of L (e.g. %s)",
                    len(dropped), lang_dir / "words.txt", ", ".join(dropped[:5]))
    L, dis = token_lexicon_fst(entries, token2id, word2id, word_boundary)
    T = ctc_topo(len(tokens), dis)
    G = read_fst(g_path, "the grammar FST G.fst of a lang dir written by `hfasr lang`")
    TLG = make_tlg(T, L, G)
    with staged_dir(out) as stage:  # the four files are published together
        write_fst(TLG, stage / "TLG.fst")
        write_symbols(stage / "tokens.txt", token2id)
        write_text(stage / "disambig.int", "".join(f"{d}\n" for d in dis))
        write_symbols(stage / "words.txt", word2id)
    log.info("TLG %s: %d states; %d words, %d tokens", out / "TLG.fst", TLG.num_states, len({w for w, _ in entries}),
             len(tokens))
    return out / "TLG.fst"
