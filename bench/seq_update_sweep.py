"""Dev WER of every kept model of a training run (``keep_models: true``), each with an LM-weight /
word-penalty sweep: how the number of sequence-training updates plays out on a speaker-disjoint
dev set (``bench/results/ce_ablation.md``, "Sequence training on AN4's dev set").

For each ``RUN/models/<update>.pt`` (``prior.pt`` of ``RUN``): ``hfasr loglikes`` of the dev split
and ``hfasr decode`` with the dev set as its own sweep set, into ``RUN/eval/<update>/``; prints one
line per update with the best point (the sweep's ``sweep.txt``). Finished updates are not redone.

Usage: ``python bench/seq_update_sweep.py RUN --data-dir DATA --task an4 --gmm-dir EXP/gmm
[--lm-weights 4,5,6,7,9,11,13] [--word-penalties 0,0.5]``
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="experiment dir of hfasr train with models/")
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--gmm-dir", type=Path, required=True, help="graph/ and final.mdl")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--lm-weights", default="4,5,6,7,9,11,13")
    ap.add_argument("--word-penalties", default="0,0.5")
    args = ap.parse_args()
    models = sorted((args.run / "models").glob("*.pt"), key=lambda p: int(p.stem))
    if not models:
        raise SystemExit(f"{args.run}/models: no kept models (train with keep_models: true)")
    for m in models:
        d = args.run / "eval" / m.stem
        sweep = d / "dec" / "sweep.txt"
        if not sweep.is_file():
            d.mkdir(parents=True, exist_ok=True)
            ll, ref = d / "ll.pt", d / "ref.txt"
            with open(d / "log.txt", "w") as log:
                subprocess.run(["hfasr", "loglikes", "--model", str(m), "--prior", str(args.run / "prior.pt"),
                                "--data-dir", str(args.data_dir), "--task", args.task, "--split", args.split,
                                "--out", str(ll), "--text", str(ref)], check=True, stdout=log, stderr=log)
                subprocess.run(["hfasr", "decode", "--loglikes", str(ll), "--ref", str(ref), "--dev-loglikes", str(ll),
                                "--dev-ref", str(ref), "--graph-dir", str(args.gmm_dir / "graph"),
                                "--model-dir", str(args.gmm_dir), "--out", str(d / "dec"), "--set", args.split,
                                "--lm-weights", args.lm_weights, "--word-penalties", args.word_penalties],
                               check=True, stdout=log, stderr=log)
        wer = (d / "dec" / "wer.txt").read_text().split()[1]
        print(f"update {m.stem}: {args.split} %WER {wer} ({sweep.read_text().splitlines()[-1]})")


if __name__ == "__main__":
    main()
