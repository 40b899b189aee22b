"""``hfasr score --ref REF --hyp HYP --out DIR --set NAME``: WER of a hypothesis text file.

REF and HYP are Kaldi text files (``utt-id word word ...``). Writes ``DIR/wer.txt`` (Kaldi's
``%WER x.xx [ e / n, i ins, d del, s sub ]``, ``%SER``, ``Scored N sentences, M not present in
hyp.`` and the 95% bootstrap CI) and ``DIR/errs-NAME.txt`` (most frequent errors and the aligned
reference/hypothesis of every utterance with errors), and prints ``wer.txt``.

A reference utterance missing from HYP is an error naming it (``--mode strict``, the default,
as Kaldi's ``compute-wer``); ``--mode all`` counts it as all deletions, ``--mode present`` skips
it (both warn and mark the %WER line ``[PARTIAL]``). Hypotheses without a reference are ignored.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "WER / SER / bootstrap CI of a hypothesis text against a reference text (Kaldi format)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ref", type=Path, required=True, help="reference Kaldi text file")
    p.add_argument("--hyp", type=Path, required=True, help="hypothesis Kaldi text file")
    p.add_argument("--out", type=Path, required=True, help="output dir for wer.txt, errs-SET.txt")
    p.add_argument("--set", dest="set_name", default="test", help="name of the set (errs-SET.txt)")
    p.add_argument("--mode", choices=["strict", "all", "present"], default="strict",
                   help="reference utterances missing from HYP: error (strict), all deletions "
                        "(all) or skipped (present)")
    p.add_argument("--replications", type=int, default=10000, help="bootstrap replications for the CI")
    p.add_argument("--seed", type=int, default=0, help="bootstrap random seed")


def run(args: argparse.Namespace) -> None:
    from hfasr.decode.score import score_files
    from hfasr.errors import HfasrError
    from hfasr.fileio import DirLock

    if args.replications < 1:
        raise HfasrError(f"--replications must be >= 1, got {args.replications}")
    with DirLock(args.out, "hfasr score"):  # one writer per output dir
        score_files(args.ref, args.hyp, args.out, args.set_name, mode=args.mode,
                    replications=args.replications, seed=args.seed)
    print((args.out / "wer.txt").read_text(), end="")
