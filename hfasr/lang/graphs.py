"""FSTs of the lang dir and the decoding graph: HMM topology, L, G, HCLG.

Everything follows Kaldi's scripts (``utils/prepare_lang.sh``, ``utils/make_lexicon_fst.py``,
``utils/gen_topo.pl``, ``utils/mkgraph.sh``) using the OpenFst/Kaldi operations exposed by
kaldifst and kaldi-hmm-gmm.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hfasr._kaldi import kaldifst, kaldilm, khg
from hfasr.errors import DataError
from hfasr.fileio import write_text

if TYPE_CHECKING:
    from hfasr.lang.prepare import Lang

log = logging.getLogger(__name__)


# -------------------------------------------------------------------------------- symbol tables


def write_symbols(path: str | Path, table: dict[str, int]) -> None:
    """Write a Kaldi symbol table (``symbol id`` per line, by id)."""
    write_text(path, "".join(f"{s} {i}\n" for s, i in sorted(table.items(), key=lambda x: x[1])))


def read_symbols(path: str | Path) -> dict[str, int]:
    """Read a Kaldi symbol table; DataError naming the file on a malformed line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"symbol table not found: {path}")
    out: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        f = line.split()
        if not f:
            continue
        if len(f) != 2 or not f[1].lstrip("-").isdigit():
            raise DataError(f"{path}:{lineno}: expected 'symbol id', got {line!r}")
        out[f[0]] = int(f[1])
    return out


def symbol_table(table: dict[str, int]) -> kaldifst.SymbolTable:
    st = kaldifst.SymbolTable()
    for s, i in sorted(table.items(), key=lambda x: x[1]):
        st.add_symbol(symbol=s, key=i)
    return st


# ------------------------------------------------------------------------------------- topology


def make_topo(nonsil_phones: Sequence[int], sil_phones: Sequence[int], num_nonsil_states: int = 3,
              num_sil_states: int = 5) -> str:
    """Kaldi topology text as ``utils/gen_topo.pl``.

    Non-silence phones: ``num_nonsil_states`` left-to-right emitting states (self-loop 0.75,
    next 0.25). Silence: the first state goes to every state but the last, the middle states
    are fully connected among themselves and to the last, which leaves with 0.25.
    """
    if num_nonsil_states < 1 or num_sil_states < 1:
        raise DataError("the number of HMM states per phone must be >= 1")
    s = ["<Topology>", "<TopologyEntry>", "<ForPhones>", " ".join(map(str, nonsil_phones)), "</ForPhones>"]
    for i in range(num_nonsil_states):
        s.append(f"<State> {i} <PdfClass> {i} <Transition> {i} 0.75 <Transition> {i + 1} 0.25 </State>")
    s += [f"<State> {num_nonsil_states} </State>", "</TopologyEntry>"]
    n = num_sil_states
    s += ["<TopologyEntry>", "<ForPhones>", " ".join(map(str, sil_phones)), "</ForPhones>"]
    if n > 1:
        p = 1.0 / (n - 1)
        s.append("<State> 0 <PdfClass> 0 " + " ".join(f"<Transition> {k} {p}" for k in range(n - 1)) + " </State>")
        for i in range(1, n - 1):
            s.append(f"<State> {i} <PdfClass> {i} " + " ".join(f"<Transition> {k} {p}" for k in range(1, n))
                     + " </State>")
        s.append(f"<State> {n - 1} <PdfClass> {n - 1} <Transition> {n - 1} 0.75 <Transition> {n} 0.25 </State>")
    else:
        s.append("<State> 0 <PdfClass> 0 <Transition> 0 0.75 <Transition> 1 0.25 </State>")
    s += [f"<State> {n} </State>", "</TopologyEntry>", "</Topology>"]
    return "\n".join(s) + "\n"


def read_topo(text: str) -> khg.HmmTopology:
    topo = khg.HmmTopology()
    topo.read(text)
    return topo


# ------------------------------------------------------------------------------------------- L


def make_lexicon_fst(entries: Sequence[tuple[str, Sequence[str]]], phone2id: dict[str, int],
                     word2id: dict[str, int], sil_prob: float = 0.5, sil_phone: str = "SIL",
                     sil_disambig: str | None = None, word_disambig: str | None = None) -> kaldifst.StdVectorFst:
    """L with optional silence between words (``utils/make_lexicon_fst.py --sil-prob``).

    States: start, loop (final) and sil. The start goes to loop (cost ``-ln(1-sil_prob)``) or
    sil (``-ln sil_prob``); ``sil --SIL:<eps>--> loop`` (through ``sil_disambig`` if given);
    each pronunciation is a chain of phone arcs from loop with the word on the first arc,
    ending in loop (no silence) or sil (silence follows). With ``word_disambig`` (``#0``), a
    ``#0:#0`` self-loop at loop passes G's backoff symbol through (``fstaddselfloops``).
    Output-label sorted, with symbol tables attached.
    """
    if not 0.0 < sil_prob < 1.0:
        raise DataError(f"sil_prob must be in (0, 1), got {sil_prob}")
    sil_cost, nosil_cost = -math.log(sil_prob), -math.log(1.0 - sil_prob)
    fst = kaldifst.StdVectorFst()
    start, loop, sil = fst.add_state(), fst.add_state(), fst.add_state()
    fst.start = start
    fst.set_final(state=loop, weight=0.0)

    def arc(src: int, dst: int, ilabel: int, olabel: int, cost: float = 0.0) -> None:
        fst.add_arc(state=src, arc=kaldifst.StdArc(ilabel=ilabel, olabel=olabel, weight=cost, nextstate=dst))

    arc(start, loop, 0, 0, nosil_cost)
    arc(start, sil, 0, 0, sil_cost)
    if sil_disambig is None:
        arc(sil, loop, phone2id[sil_phone], 0)
    else:
        d = fst.add_state()
        arc(sil, d, phone2id[sil_phone], 0)
        arc(d, loop, phone2id[sil_disambig], 0)
    for word, phones in entries:
        if not phones:
            raise DataError(f"word '{word}' has an empty pronunciation")
        cur = loop
        for i, ph in enumerate(phones[:-1]):
            nxt = fst.add_state()
            arc(cur, nxt, phone2id[ph], word2id[word] if i == 0 else 0)
            cur = nxt
        last, olabel = phone2id[phones[-1]], word2id[word] if len(phones) == 1 else 0
        arc(cur, loop, last, olabel, nosil_cost)
        arc(cur, sil, last, olabel, sil_cost)
    if word_disambig is not None:
        arc(loop, loop, phone2id[word_disambig], word2id[word_disambig])
    fst.input_symbols = symbol_table(phone2id)
    fst.output_symbols = symbol_table(word2id)
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst


# ------------------------------------------------------------------------------------------- G


def _arpa_unigrams(arpa: Path) -> list[str]:
    words, on = [], False
    with open(arpa, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                if on:
                    break
                on = line == "\\1-grams:"
                continue
            if on and line:
                words.append(line.split()[1])
    return words


@contextlib.contextmanager
def _captured_stderr():
    """Capture what native code writes to file descriptor 2 (kaldilm logs every section it reads)."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        out: list[str] = []
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


def arpa_to_fst(arpa: str | Path, words_txt: str | Path) -> kaldifst.StdVectorFst:
    """G from an ARPA file (``arpa2fst --disambig-symbol=#0``), input-label sorted.

    Every unigram must be in ``words_txt`` (arpa2fst would silently drop it).
    """
    arpa = Path(arpa)
    if not arpa.is_file():
        raise DataError(f"ARPA file not found: {arpa}")
    table = read_symbols(words_txt)
    missing = [w for w in _arpa_unigrams(arpa) if w not in table]
    if missing:
        raise DataError(f"{arpa}: words {missing[:5]} are not in {words_txt}")
    with _captured_stderr() as err:
        txt = kaldilm.arpa2fst(input_arpa=str(arpa), disambig_symbol="#0", read_symbol_table=str(words_txt))
    for line in err[0].splitlines():
        if line.startswith(("[W]", "[E]")):
            log.warning("arpa2fst %s: %s", arpa, line)
    g = kaldifst.compile(s=txt, acceptor=False)
    kaldifst.arcsort(g, sort_type="ilabel")
    return g


# ------------------------------------------------------------------------------------ utilities


def fst_arcs(fst: kaldifst.StdVectorFst):
    """Yield ``(state, ilabel, olabel, weight, nextstate)`` for every arc."""
    sit = kaldifst.StateIterator(fst)
    while not sit.done:
        s = sit.value
        ait = kaldifst.ArcIterator(fst, s)
        while not ait.done:
            a = ait.value
            yield s, a.ilabel, a.olabel, a.weight.value, a.nextstate
            ait.next()
        sit.next()


def map_ilabels(fst: kaldifst.StdVectorFst, mapping: dict[int, int]) -> kaldifst.StdVectorFst:
    """A copy of ``fst`` with input labels replaced by ``mapping`` (``fstrmsymbols`` with 0)."""
    if not mapping:
        return fst.copy()
    out = kaldifst.StdVectorFst()
    n = fst.num_states
    for _ in range(n):
        out.add_state()
    if n:
        out.start = fst.start
    zero = kaldifst.TropicalWeight.zero
    for s in range(n):
        f = fst.final(s)
        if f != zero:
            out.set_final(state=s, weight=f)
    for s, il, ol, w, nxt in fst_arcs(fst):
        out.add_arc(state=s, arc=kaldifst.StdArc(ilabel=mapping.get(il, il), olabel=ol, weight=w, nextstate=nxt))
    return out


def linear_acceptor(labels: Sequence[int]) -> kaldifst.StdVectorFst:
    """An acceptor of exactly the sequence ``labels``."""
    fst = kaldifst.StdVectorFst()
    s = fst.add_state()
    fst.start = s
    for lab in labels:
        n = fst.add_state()
        fst.add_arc(state=s, arc=kaldifst.StdArc(ilabel=lab, olabel=lab, weight=0.0, nextstate=n))
        s = n
    fst.set_final(state=s, weight=0.0)
    return fst


def accepts(graph: kaldifst.StdVectorFst, tids: Sequence[int]) -> tuple[bool, list[int]]:
    """Whether ``graph`` (ilabels = transition-ids) accepts ``tids``; also its best word output."""
    g = graph.copy()
    kaldifst.arcsort(g, sort_type="ilabel")
    c = kaldifst.compose(linear_acceptor(tids), g)
    if c.num_states == 0:
        return False, []
    best = kaldifst.shortest_path(c)
    ok, _, osyms, _ = kaldifst.get_linear_symbol_sequence(best)
    return bool(ok), [o for o in osyms if o != 0]


# ---------------------------------------------------------------------------------------- HCLG


def make_hclg(lang: Lang, tree: khg.ContextDependency, trans_model: khg.TransitionModel,
              G: kaldifst.StdVectorFst, self_loop_scale: float = 0.1,
              transition_scale: float = 1.0) -> kaldifst.StdVectorFst:
    """The decoding graph HCLG (``utils/mkgraph.sh``); input labels are transition-ids.

    ``LG = L_disambig o G`` (determinize_star in the log semiring, minimize_encoded),
    ``CLG = C o LG`` (compose_context), ``HCLGa = Ha o CLG`` determinized, with H's
    disambiguation symbols removed, epsilons removed and minimized; finally the self-loops are
    added (``add-self-loops --self-loop-scale --reorder=true``).
    """
    L = lang.L_disambig()
    g = G.copy()
    kaldifst.arcsort(g, sort_type="ilabel")
    LG = kaldifst.compose(L, g)
    if LG.num_states == 0:
        raise DataError(f"{lang.dir}: L o G is empty (does G use words of words.txt?)")
    kaldifst.determinize_star(LG, use_log=True)
    kaldifst.minimize_encoded(LG)
    CLG, ilabels = kaldifst.compose_context(disambig_syms=lang.disambig, context_width=tree.context_width,
                                            central_position=tree.central_position, ifst=LG)
    kaldifst.arcsort(CLG, sort_type="ilabel")
    Ha, h_disambig = khg.get_h_transducer(ilabel_info=ilabels, ctx_dep=tree, trans_model=trans_model,
                                          config=khg.HTransducerConfig(transition_scale=transition_scale))
    kaldifst.arcsort(Ha, sort_type="olabel")
    HCLGa = kaldifst.compose(Ha, CLG)
    kaldifst.determinize_star(HCLGa, use_log=True)
    HCLGa = map_ilabels(HCLGa, {d: 0 for d in h_disambig})
    kaldifst.rmepsilon(HCLGa)
    kaldifst.minimize_encoded(HCLGa)
    HCLG = khg.add_self_loops(self_loop_scale=self_loop_scale, disambig_syms=[], reorder=True,
                              trans_model=trans_model, ifst=HCLGa)
    kaldifst.arcsort(HCLG, sort_type="ilabel")
    return HCLG
