"""The ``hfasr`` command: one subcommand per pipeline stage.

=============  ==========================================================================
subcommand     does
=============  ==========================================================================
``prepare``    corpus dir (or download) -> lhotse CutSet manifests per task and split
``features``   manifests -> fbank in lilcom archives + global CMVN stats
``info``       versions of the stack; sizes of the prepared tasks in a data dir
=============  ==========================================================================

Every stage takes ``--config FILE`` (YAML; see ``recipes/*/conf``); an unknown key is an error
that names the key and the file. Errors in user input print ``error: ...`` and exit with 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hfasr.errors import HfasrError


def _cmd_prepare(args: argparse.Namespace) -> None:
    from hfasr.data.corpora import prepare_corpus, summarize

    tasks = prepare_corpus(args.corpus, args.out, corpus_dir=args.corpus_dir, config=args.config,
                           skip_bad=args.skip_bad, download=args.download, num_jobs=args.num_jobs)
    for task, splits in tasks.items():
        for split, cuts in splits.items():
            n, hours, spk = summarize(cuts)
            print(f"{task:12s} {split:6s} {n:6d} utts {hours:8.3f} h {spk:4d} speakers")
    skipped = Path(args.out) / "skipped.txt"
    nskip = len(skipped.read_text().splitlines()) if skipped.is_file() else 0
    if nskip:
        print(f"skipped {nskip} bad item(s): see {skipped}")


def _cmd_features(args: argparse.Namespace) -> None:
    from hfasr.config import load_config
    from hfasr.data.features import FeatureConfig, compute_features

    overrides = {"num_jobs": args.num_jobs}
    if args.speed_perturb:
        overrides["speed_perturb"] = True
    cfg = load_config(FeatureConfig, args.config, overrides)
    for task in args.task:
        out = compute_features(args.data_dir, task, cfg, progress=not args.quiet)
        for split, cuts in out.items():
            frames = sum(c.num_frames for c in cuts)
            print(f"{task:12s} {split:6s} {len(cuts):6d} cuts {frames:9d} frames")


def _cmd_info(args: argparse.Namespace) -> None:
    import importlib.metadata as md

    print(f"python {sys.version.split()[0]}")
    for pkg in ("torch", "torchaudio", "lhotse", "kaldi-hmm-gmm", "kaldifst", "kaldi-decoder", "kaldilm", "kaldialign"):
        try:
            print(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            print(f"{pkg} (not installed)")
    if args.data_dir is None:
        return
    from lhotse import load_manifest

    from hfasr.data.corpora import summarize

    d = Path(args.data_dir)
    if not d.is_dir():
        raise HfasrError(f"data directory not found: {d}")
    found = sorted(d.glob("*_cuts_*.jsonl.gz"))
    if not found:
        raise HfasrError(f"{d}: no *_cuts_<split>.jsonl.gz manifests (run `hfasr prepare`)")
    print(f"{'task':12s} {'split':6s} {'utts':>6s} {'hours':>8s} {'spk':>4s} features")
    for m in found:
        task, split = m.name[: -len(".jsonl.gz")].rsplit("_cuts_", 1)
        n, hours, spk = summarize(load_manifest(m))
        has = (d / f"{task}_feats_{split}.jsonl.gz").is_file()
        print(f"{task:12s} {split:6s} {n:6d} {hours:8.3f} {spk:4d} {'yes' if has else 'no'}")


def build_parser() -> argparse.ArgumentParser:
    from hfasr.data.corpora import CORPORA

    p = argparse.ArgumentParser(prog="hfasr", description="Hessian-free training of speech acoustic models.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sp = sub.add_parser("prepare", help="corpus -> lhotse manifests (train/dev/test)")
    sp.add_argument("corpus", help=f"one of: {', '.join(CORPORA)}")
    sp.add_argument("--corpus-dir", type=Path, help="local corpus directory (not needed for synth)")
    sp.add_argument("--out", type=Path, required=True, help="output directory for manifests")
    sp.add_argument("--config", type=Path, help="YAML options for this corpus")
    sp.add_argument("--download", action="store_true", help="download the corpus into OUT/download first (needs internet)")
    sp.add_argument("--skip-bad", action="store_true", help="skip bad recordings/transcripts, listing them in OUT/skipped.txt")
    sp.add_argument("--num-jobs", type=int, default=1, help="parallel jobs (synth)")
    sp.set_defaults(func=_cmd_prepare)

    sf = sub.add_parser("features", help="fbank features + global CMVN stats")
    sf.add_argument("data_dir", type=Path, help="directory holding <task>_cuts_<split>.jsonl.gz")
    sf.add_argument("--task", nargs="+", required=True, help="task name(s), e.g. synth yesno fsdd_conn")
    sf.add_argument("--config", type=Path, help="YAML FeatureConfig")
    sf.add_argument("--speed-perturb", action="store_true", help="add 0.9x / 1.1x copies of train")
    sf.add_argument("--num-jobs", type=int, default=None, help="parallel extraction processes")
    sf.add_argument("--quiet", action="store_true", help="no progress bar")
    sf.set_defaults(func=_cmd_features)

    si = sub.add_parser("info", help="stack versions; sizes of prepared tasks")
    si.add_argument("data_dir", nargs="?", type=Path, help="a data dir written by `hfasr prepare`")
    si.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except HfasrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
