"""``hfasr lang --data-dir D --task T --out LANGDIR``: lexicon, phone/word tables, topology, L, G.

The lexicon is ``--lexicon FILE`` (``WORD PHONE...`` lines) if given, else the built-in one of the
known tasks (yesno, fsdd_*, synth; package data in ``hfasr/resources/lang/``), else the corpus's
own dictionary that ``hfasr prepare`` wrote as ``<data-dir>/<task>_lexicon.txt`` (an4); other
tasks (LibriSpeech, TIMIT) need ``--lexicon``. Every word of the train/dev/test transcripts must
be in the lexicon. The n-gram LM (G) and the weak unigram LM (G_weak) are trained on the training
transcripts (or G is ``--arpa FILE``); the OOV rate (w.r.t. the words of the LM training text) and the perplexity of G on
the dev and test transcripts are printed and written to ``LANGDIR/lm_stats.txt``. The files are
published together once all are written (a failed run leaves LANGDIR as it was); a second run on
the same LANGDIR fails at once while one holds it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "lexicon, phones, topology, L, G (lang dir)"


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--data-dir", type=Path, required=True, help="directory holding <task>_cuts_<split>.jsonl.gz")
    sp.add_argument("--task", required=True, help="task name, e.g. yesno, fsdd_conn, synth, librispeech")
    sp.add_argument("--out", type=Path, required=True, help="lang dir to write")
    sp.add_argument("--config", type=Path, help="YAML LangConfig")
    sp.add_argument("--lexicon", type=Path, help="lexicon file (WORD PHONE... per line); default: the built-in "
                    "one, else DATA_DIR/<task>_lexicon.txt written by `hfasr prepare`")
    sp.add_argument("--lm-order", type=int, default=None, help="n-gram order of G (overrides the config)")
    sp.add_argument("--arpa", type=Path, help="G from this ARPA LM instead of one trained on the transcripts "
                    "(its n-grams with words outside the lexicon are dropped, as Kaldi's remove_oovs.pl)")


def run(args: argparse.Namespace) -> None:
    from hfasr.config import load_config
    from hfasr.fileio import DirLock
    from hfasr.lang.prepare import LangConfig, prepare_lang

    cfg = load_config(LangConfig, args.config, {"lm_order": args.lm_order})
    with DirLock(args.out, "hfasr lang"):  # one writer per lang dir
        lang = prepare_lang(args.data_dir, args.task, args.out, cfg, lexicon=args.lexicon, arpa=args.arpa)
    nphones = len([p for p in lang.phones if not p.startswith("#") and p != "<eps>"])
    nwords = len(lang.words) - 4
    print(f"{args.out}: {nwords} words, {nphones} phones, {len(lang.disambig)} disambiguation symbols")
    for line in lang.lm_stats():
        print(line)
