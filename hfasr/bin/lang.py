"""``hfasr lang --data-dir D --task T --out LANGDIR``: lexicon, phone/word tables, topology, L, G.

The lexicon is built in for the known tasks (yesno, fsdd_*, synth; ``data/lang/``); other tasks
(LibriSpeech, TIMIT) need ``--lexicon FILE`` (``WORD PHONE...`` lines). Every word of the
train/dev/test transcripts must be in the lexicon. The n-gram LM (G) and the weak unigram LM
(G_weak) are trained on the training transcripts.
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
    sp.add_argument("--lexicon", type=Path, help="lexicon file (WORD PHONE... per line); default: built-in")
    sp.add_argument("--lm-order", type=int, default=None, help="n-gram order of G (overrides the config)")


def run(args: argparse.Namespace) -> None:
    from hfasr.config import load_config
    from hfasr.lang.prepare import LangConfig, prepare_lang

    cfg = load_config(LangConfig, args.config, {"lm_order": args.lm_order})
    lang = prepare_lang(args.data_dir, args.task, args.out, cfg, lexicon=args.lexicon)
    nphones = len([p for p in lang.phones if not p.startswith("#") and p != "<eps>"])
    nwords = len(lang.words) - 4
    print(f"{args.out}: {nwords} words, {nphones} phones, {len(lang.disambig)} disambiguation symbols")
