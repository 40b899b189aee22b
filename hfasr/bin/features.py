"""``hfasr features DATA_DIR --task T``: fbank features + global CMVN stats."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "fbank features + global CMVN stats"


def add_arguments(sf: argparse.ArgumentParser) -> None:
    sf.add_argument("data_dir", type=Path, help="directory holding <task>_cuts_<split>.jsonl.gz")
    sf.add_argument("--task", nargs="+", required=True, help="task name(s), e.g. synth yesno fsdd_conn")
    sf.add_argument("--config", type=Path, help="YAML FeatureConfig")
    sf.add_argument("--speed-perturb", action="store_true", help="add 0.9x / 1.1x copies of train")
    sf.add_argument("--num-jobs", type=int, default=None, help="parallel extraction processes")
    sf.add_argument("--quiet", action="store_true", help="no progress bar")
    sf.add_argument("--skip-bad", action="store_true",
                    help="leave out bad cuts (unreadable audio, NaN/inf or absurd values), listing them in "
                         "DATA_DIR/<task>_feats_skipped.txt (default: an error naming the cut)")


def run(args: argparse.Namespace) -> None:
    from hfasr.config import load_config
    from hfasr.data.features import FeatureConfig, compute_features

    overrides = {"num_jobs": args.num_jobs}
    if args.speed_perturb:
        overrides["speed_perturb"] = True
    cfg = load_config(FeatureConfig, args.config, overrides)
    for task in args.task:
        out = compute_features(args.data_dir, task, cfg, progress=not args.quiet, skip_bad=args.skip_bad)
        for split, cuts in out.items():
            frames = sum(c.num_frames for c in cuts)
            print(f"{task:12s} {split:6s} {len(cuts):6d} cuts {frames:9d} frames")
        skipped = Path(args.data_dir) / f"{task}_feats_skipped.txt"
        nskip = len(skipped.read_text().splitlines()) if skipped.is_file() else 0
        if nskip:
            print(f"{task:12s} skipped {nskip} bad cut(s): see {skipped}")
