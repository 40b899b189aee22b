"""Test helper: a tiny hand-built yesno HCLG (recipe C2 of shared/docs/kaldi-python.md).

Words ``<eps>=0, <SIL>=1, NO=2, YES=3, #0=4, <s>=5, </s>=6``; phones ``<eps>=0, SIL=1, N=2,
Y=3, #0=4``; non-silence phones have 3 emitting states, SIL has 5; monophone tree; L with
optional silence (probability 0.5); G from a hand-written unigram ARPA via ``kaldilm.arpa2fst``;
``HCLG = self-loops(H ∘ C ∘ det(L ∘ G))``.

Kept in ``tests/`` on purpose: ``hfasr.decode`` takes any HCLG plus a transition-id → pdf map and
must not depend on ``hfasr.lang``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from hfasr._kaldi import kaldifst, kaldilm, khg

WORDS = {"<eps>": 0, "<SIL>": 1, "NO": 2, "YES": 3, "#0": 4, "<s>": 5, "</s>": 6}
PHONES = {"<eps>": 0, "SIL": 1, "N": 2, "Y": 3, "#0": 4}
LEXICON = {"<SIL>": ["SIL"], "NO": ["N"], "YES": ["Y"]}

TOPO = """<Topology>
<TopologyEntry>
<ForPhones>
2 3
</ForPhones>
<State> 0 <PdfClass> 0 <Transition> 0 0.75 <Transition> 1 0.25 </State>
<State> 1 <PdfClass> 1 <Transition> 1 0.75 <Transition> 2 0.25 </State>
<State> 2 <PdfClass> 2 <Transition> 2 0.75 <Transition> 3 0.25 </State>
<State> 3 </State>
</TopologyEntry>
<TopologyEntry>
<ForPhones>
1
</ForPhones>
<State> 0 <PdfClass> 0 <Transition> 0 0.25 <Transition> 1 0.25 <Transition> 2 0.25 <Transition> 3 0.25 </State>
<State> 1 <PdfClass> 1 <Transition> 1 0.25 <Transition> 2 0.25 <Transition> 3 0.25 <Transition> 4 0.25 </State>
<State> 2 <PdfClass> 2 <Transition> 1 0.25 <Transition> 2 0.25 <Transition> 3 0.25 <Transition> 4 0.25 </State>
<State> 3 <PdfClass> 3 <Transition> 1 0.25 <Transition> 2 0.25 <Transition> 3 0.25 <Transition> 4 0.25 </State>
<State> 4 <PdfClass> 4 <Transition> 4 0.75 <Transition> 5 0.25 </State>
<State> 5 </State>
</TopologyEntry>
</Topology>
"""

# Unigram LM: YES a little more likely than NO; <s>/</s> as arpa2fst wants them.
ARPA = """
\\data\\
ngram 1=4

\\1-grams:
-1.0\t</s>
-99\t<s>
-0.35\tYES
-0.40\tNO

\\end\\
"""


@dataclass
class Graph:
    """The pieces a decoding test needs."""

    hclg: kaldifst.StdVectorFst
    tm: khg.TransitionModel
    tree: khg.ContextDependency
    tid2pdf: torch.Tensor  # LongTensor(num_tids + 1), entry 0 a dummy
    num_pdfs: int
    words: dict[str, int]
    phones: dict[str, int]

    def pdfs_of_phone(self, phone: str) -> list[int]:
        """The pdf ids of ``phone``'s HMM states in state order (monophone tree)."""
        p = self.phones[phone]
        out: set[int] = set()
        for tid in range(1, self.tm.num_transition_ids + 1):
            if self.tm.transition_id_to_phone(tid) == p:
                out.add(self.tm.transition_id_to_pdf(tid))
        return sorted(out)


def _symbols(table: dict[str, int]) -> kaldifst.SymbolTable:
    st = kaldifst.SymbolTable()
    for s, i in sorted(table.items(), key=lambda x: x[1]):
        st.add_symbol(symbol=s, key=i)
    return st


def add_lex_disambig(lexicon: dict[str, list[str]]) -> tuple[dict[str, list[str]], int]:
    """Append ``#k`` to pronunciations that are duplicates or prefixes of others (Kaldi's
    ``add_lex_disambig.pl``); returns the new lexicon and the highest ``k`` used."""
    prons = [tuple(p) for p in lexicon.values()]
    count: dict[tuple, int] = {}
    for p in prons:
        count[p] = count.get(p, 0) + 1
    prefixes = {p[:i] for p in prons for i in range(1, len(p))}
    seen: dict[tuple, int] = {}
    out, top = {}, 0
    for w, p in lexicon.items():
        p = tuple(p)
        if p in prefixes or count[p] > 1:
            seen[p] = seen.get(p, 0) + 1
            top = max(top, seen[p])
            out[w] = list(p) + [f"#{seen[p]}"]
        else:
            out[w] = list(p)
    return out, top


def make_lexicon_fst(lexicon: dict[str, list[str]], phones: dict[str, int], words: dict[str, int],
                     sil_prob: float = 0.5) -> kaldifst.StdVectorFst:
    """L_disambig with optional silence, as Kaldi's ``make_lexicon_fst.py --sil-prob``."""
    sil_cost, nosil_cost = -math.log(sil_prob), -math.log(1.0 - sil_prob)
    L = kaldifst.StdVectorFst()
    start, loop, sil = L.add_state(), L.add_state(), L.add_state()
    L.start = start
    L.add_arc(start, kaldifst.StdArc(0, 0, nosil_cost, loop))
    L.add_arc(start, kaldifst.StdArc(0, 0, sil_cost, sil))
    L.add_arc(sil, kaldifst.StdArc(phones["SIL"], 0, 0.0, loop))
    for word, pron in lexicon.items():
        cur = loop
        for i, ph in enumerate(pron[:-1]):
            nxt = L.add_state()
            L.add_arc(cur, kaldifst.StdArc(phones[ph], words[word] if i == 0 else 0, 0.0, nxt))
            cur = nxt
        olabel = words[word] if len(pron) == 1 else 0
        L.add_arc(cur, kaldifst.StdArc(phones[pron[-1]], olabel, nosil_cost, loop))
        L.add_arc(cur, kaldifst.StdArc(phones[pron[-1]], olabel, sil_cost, sil))
    # word-level disambiguation symbol #0 (G's back-off arcs) passes through L
    L.add_arc(loop, kaldifst.StdArc(phones["#0"], words["#0"], 0.0, loop))
    L.set_final(loop, 0.0)
    L.input_symbols = _symbols(phones)
    L.output_symbols = _symbols(words)
    kaldifst.arcsort(L, sort_type="olabel")
    return L


def make_grammar_fst(tmp_dir: Path, words: dict[str, int], arpa_text: str) -> kaldifst.StdVectorFst:
    words_txt = tmp_dir / "words.txt"
    words_txt.write_text("".join(f"{w} {i}\n" for w, i in words.items()))
    arpa = tmp_dir / "G.arpa"
    arpa.write_text(arpa_text)
    txt = kaldilm.arpa2fst(input_arpa=str(arpa), disambig_symbol="#0",
                           read_symbol_table=str(words_txt))
    G = kaldifst.compile(s=txt, acceptor=False)
    kaldifst.arcsort(G, sort_type="ilabel")
    return G


def _remove_input_symbols(fst: kaldifst.StdVectorFst, syms: set[int]) -> kaldifst.StdVectorFst:
    """A copy of ``fst`` with the input labels in ``syms`` replaced by epsilon (fstrmsymbols)."""
    out = kaldifst.StdVectorFst()
    for _ in range(fst.num_states):
        out.add_state()
    out.start = fst.start
    for s in range(fst.num_states):
        out.set_final(s, fst.final(s))
        for a in kaldifst.ArcIterator(fst, s):
            il = 0 if a.ilabel in syms else a.ilabel
            out.add_arc(s, kaldifst.StdArc(il, a.olabel, a.weight, a.nextstate))
    return out


def build_graph(tmp_dir: Path, lexicon: dict[str, list[str]], nonsil_phones: list[str],
                arpa_text: str, topo_text: str | None = None,
                self_loop_scale: float = 0.1) -> Graph:
    """HCLG for ``lexicon`` (word -> phones; silence phone ``SIL``, silence word ``<SIL>``
    expected in it) and an ARPA LM over its words; writes ``tmp_dir/HCLG.fst``.

    Symbol ids: phones ``<eps>, SIL, nonsil_phones..., #0..#k``; words ``<eps>``, the lexicon's
    words in the given order, ``#0, <s>, </s>``. ``topo_text`` defaults to :data:`TOPO`'s
    layout (3-state non-silence, 5-state silence) for the phone ids.
    """
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    lex_d, top = add_lex_disambig(lexicon)
    phones = {"<eps>": 0, "SIL": 1}
    for p in nonsil_phones:
        phones[p] = len(phones)
    num_real = len(phones)
    for k in range(top + 1):
        phones[f"#{k}"] = len(phones)
    words = {"<eps>": 0}
    for w in lexicon:
        words[w] = len(words)
    for w in ("#0", "<s>", "</s>"):
        words[w] = len(words)
    if topo_text is None:
        topo_text = (TOPO.replace("2 3\n</ForPhones>", " ".join(map(str, range(2, num_real))) + "\n</ForPhones>"))
    topo = khg.HmmTopology()
    topo.read(topo_text)
    tree = khg.monophone_context_dependency(
        phones=topo.phones, phone2num_pdf_classes=topo.get_phone_to_num_pdf_classes())
    tm = khg.TransitionModel(ctx_dep=tree, hmm_topo=topo)

    L = make_lexicon_fst(lex_d, phones, words)
    G = make_grammar_fst(tmp_dir, words, arpa_text)
    LG = kaldifst.compose(L, G)
    kaldifst.determinize_star(LG, use_log=True)
    kaldifst.minimize_encoded(LG)
    disambig = [i for p, i in phones.items() if p.startswith("#")]
    CLG, ilabels = kaldifst.compose_context(
        disambig_syms=disambig, context_width=tree.context_width,
        central_position=tree.central_position, ifst=LG)
    kaldifst.arcsort(CLG, sort_type="ilabel")
    Ha, h_disambig = khg.get_h_transducer(
        ilabel_info=ilabels, ctx_dep=tree, trans_model=tm,
        config=khg.HTransducerConfig(transition_scale=1.0))
    kaldifst.arcsort(Ha, sort_type="olabel")
    HCLGa = kaldifst.compose(Ha, CLG)
    kaldifst.determinize_star(HCLGa, use_log=True)
    HCLGa = _remove_input_symbols(HCLGa, set(h_disambig))
    kaldifst.rmepsilon(HCLGa)
    kaldifst.minimize_encoded(HCLGa)
    HCLG = khg.add_self_loops(self_loop_scale=self_loop_scale, disambig_syms=[], reorder=True,
                              trans_model=tm, ifst=HCLGa)
    kaldifst.arcsort(HCLG, sort_type="ilabel")
    HCLG.write(str(tmp_dir / "HCLG.fst"))
    tid2pdf = torch.tensor(tm.transition_id_to_pdf_array(), dtype=torch.long)
    return Graph(hclg=HCLG, tm=tm, tree=tree, tid2pdf=tid2pdf, num_pdfs=tm.num_pdfs, words=words,
                 phones=phones)


def build_yesno_graph(tmp_dir: Path, self_loop_scale: float = 0.1) -> Graph:
    """The yesno HCLG (words ``<SIL> NO YES``, phones ``SIL N Y``); writes ``tmp_dir/HCLG.fst``."""
    g = build_graph(tmp_dir, LEXICON, ["N", "Y"], ARPA, TOPO, self_loop_scale)
    assert g.words == WORDS and g.phones == PHONES
    return g


# --------------------------------------------------------------------------- crafted scores
def segment(pdfs: list[int], n: int) -> list[int]:
    """``n`` frames spread in order over the HMM states with pdfs ``pdfs``."""
    out: list[int] = []
    for i, p in enumerate(pdfs):
        out += [p] * (n // len(pdfs) + (1 if i < n % len(pdfs) else 0))
    return out


def crafted(g, phones: list[tuple[str, int]], seed: int = 0, bias: float = 8.0) -> tuple[torch.Tensor, list[int]]:
    """Noisy log-likelihoods whose frames strongly favour the pdfs of ``phones`` in order."""
    seq = [p for ph, n in phones for p in segment(g.pdfs_of_phone(ph), n)]
    gen = torch.Generator().manual_seed(seed)
    ll = torch.randn(len(seq), g.num_pdfs, generator=gen)
    ll[torch.arange(len(seq)), torch.tensor(seq)] += bias
    return torch.log_softmax(ll, dim=-1), seq


YES_NO = [("SIL", 10), ("Y", 9), ("SIL", 10), ("N", 12), ("SIL", 6)]
