"""Lexicons, phone and word tables, n-gram LMs and the L / G / HCLG graphs (``hfasr lang``);
CTC decoding graphs (CTC topology, token lexicon, TLG) in :mod:`hfasr.lang.ctc`."""

from hfasr.lang.arpa import NgramLM, read_arpa, train_witten_bell
from hfasr.lang.graphs import accepts, arpa_to_fst, make_hclg, make_lexicon_fst, make_topo
from hfasr.lang.lexicon import Lexicon, add_lex_disambig, builtin_lexicon_path, cmudict_lexicon
from hfasr.lang.prepare import Lang, LangConfig, prepare_lang

__all__ = [
    "Lang", "LangConfig", "Lexicon", "NgramLM", "accepts", "add_lex_disambig", "arpa_to_fst",
    "builtin_lexicon_path", "cmudict_lexicon", "make_hclg", "make_lexicon_fst", "make_topo",
    "prepare_lang", "read_arpa", "train_witten_bell",
]
