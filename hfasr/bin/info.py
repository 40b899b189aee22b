"""``hfasr info [DATA_DIR]``: versions of the stack; sizes of the prepared tasks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hfasr.errors import HfasrError

HELP = "stack versions; sizes of prepared tasks"


def add_arguments(si: argparse.ArgumentParser) -> None:
    si.add_argument("data_dir", nargs="?", type=Path, help="a data dir written by `hfasr prepare`")


def run(args: argparse.Namespace) -> None:
    import importlib.metadata as md

    print(f"python {sys.version.split()[0]}")
    for pkg in ("torch", "torchaudio", "lhotse", "kaldi-hmm-gmm", "kaldifst", "kaldi-decoder", "kaldilm", "kaldialign"):
        try:
            print(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            print(f"{pkg} (not installed)")
    if args.data_dir is None:
        return
    from hfasr.data.corpora import load_cuts, summarize

    d = Path(args.data_dir)
    if not d.is_dir():
        raise HfasrError(f"data directory not found: {d}")
    found = sorted(d.glob("*_cuts_*.jsonl.gz"))
    if not found:
        raise HfasrError(f"{d}: no *_cuts_<split>.jsonl.gz manifests (run `hfasr prepare`)")
    print(f"{'task':12s} {'split':6s} {'utts':>6s} {'hours':>8s} {'spk':>4s} features")
    for m in found:
        task, split = m.name[: -len(".jsonl.gz")].rsplit("_cuts_", 1)
        n, hours, spk = summarize(load_cuts(m))  # a truncated or corrupt manifest: DataError naming it
        has = (d / f"{task}_feats_{split}.jsonl.gz").is_file()
        print(f"{task:12s} {split:6s} {n:6d} {hours:8.3f} {spk:4d} {'yes' if has else 'no'}")
