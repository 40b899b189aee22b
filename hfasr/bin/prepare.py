"""``hfasr prepare CORPUS --out DIR``: corpus dir (or download) -> lhotse manifests.

Corpora with their own pronunciation dictionary (an4) also write ``DIR/<task>_lexicon.txt``,
which ``hfasr lang`` uses when the task has no built-in lexicon.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "corpus -> lhotse manifests (train/dev/test)"


def add_arguments(sp: argparse.ArgumentParser) -> None:
    from hfasr.data.corpora import CORPORA

    sp.add_argument("corpus", help=f"one of: {', '.join(CORPORA)}")
    sp.add_argument("--corpus-dir", type=Path, help="local corpus directory (not needed for synth)")
    sp.add_argument("--out", type=Path, required=True, help="output directory for manifests")
    sp.add_argument("--config", type=Path, help="YAML options for this corpus")
    sp.add_argument("--download", action="store_true", help="download the corpus into OUT/download first (needs internet)")
    sp.add_argument("--skip-bad", action="store_true", help="skip bad recordings/transcripts, listing them in OUT/skipped.txt")
    sp.add_argument("--downmix", action="store_true",
                    help="use the channel average of multi-channel files (a warning names each; default: an error)")
    sp.add_argument("--num-jobs", type=int, default=1, help="parallel jobs (synth)")


def run(args: argparse.Namespace) -> None:
    from hfasr.data.corpora import prepare_corpus, summarize

    tasks = prepare_corpus(args.corpus, args.out, corpus_dir=args.corpus_dir, config=args.config,
                           skip_bad=args.skip_bad, download=args.download, num_jobs=args.num_jobs,
                           downmix=args.downmix)
    for task, splits in tasks.items():
        for split, cuts in splits.items():
            n, hours, spk = summarize(cuts)
            print(f"{task:12s} {split:6s} {n:6d} utts {hours:8.3f} h {spk:4d} speakers")
        lexicon = Path(args.out) / f"{task}_lexicon.txt"
        if lexicon.is_file():
            print(f"{task:12s} lexicon {lexicon} (the corpus's dictionary; used by `hfasr lang`)")
    skipped = Path(args.out) / "skipped.txt"
    nskip = len(skipped.read_text().splitlines()) if skipped.is_file() else 0
    if nskip:
        print(f"skipped {nskip} bad item(s): see {skipped}")
