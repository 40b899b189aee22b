"""``hfasr ctc-align``: CTC forced alignment of a split's transcripts with a CTC model.

For every cut of ``--split`` the reference token sequence is aligned to the model's per-frame
log-probabilities with ``torchaudio.functional.forced_align`` (the best CTC path that collapses
to it). Writes ``--out`` (``torch.save``, loadable with ``weights_only=True``)::

    {"cut_ids": [str], "tokens": [LongTensor(T')],   # frame tokens, 0 = blank
     "scores": [float],                               # log-probability of each best path
     "token_table": [str], "input_frames": [int]}     # tokens by id; T of the features

T' is the model's output frame count (T / subsample for a frame-stacking BLSTM). Cuts too short
for their transcript are listed in the log and left out.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "CTC forced alignment (frame token targets) of a split with a CTC model"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="final.pt of hfasr train --criterion ctc")
    p.add_argument("--data-dir", type=Path, required=True, help="data dir of hfasr prepare/features")
    p.add_argument("--task", required=True, help="task name")
    p.add_argument("--split", required=True, help="split to align")
    p.add_argument("--lang", type=Path, help="lang dir (lexicon.txt) for phone tokens")
    p.add_argument("--out", type=Path, required=True, help="output .pt file")
    p.add_argument("--num-threads", type=int, default=1, help="torch threads")


def run(args: argparse.Namespace) -> None:
    import torch

    from hfasr.bin.ctc_decode import load_ctc_model, split_log_probs
    from hfasr.data.corpora import load_cuts, manifest_path
    from hfasr.decode.ctc import forced_align
    from hfasr.errors import DataError
    from hfasr.models import atomic_save

    torch.set_num_threads(args.num_threads)
    model, table, _ = load_ctc_model(args.model, args.lang)
    ids, lps, refs = split_log_probs(model, args.data_dir, args.task, args.split, desc=f"align {args.split}")
    out: dict = {"cut_ids": [], "tokens": [], "scores": [], "token_table": list(table.tokens), "input_frames": []}
    skipped = []
    frames = {c.id: c.num_frames for c in load_cuts(manifest_path(args.data_dir, args.task, args.split, "feats"))}
    for cid, lp in zip(ids, lps):
        try:
            ali, sc = forced_align(lp, table.encode(" ".join(refs[cid])), utt=cid)
        except DataError as e:
            skipped.append(str(e))
            continue
        out["cut_ids"].append(cid)
        out["tokens"].append(ali)
        out["scores"].append(float(sc.sum()))
        out["input_frames"].append(int(frames[cid]))
    if skipped:
        log.warning("%d cuts not aligned (e.g. %s)", len(skipped), skipped[0])
    if not out["cut_ids"]:
        raise DataError(f"no cut of {args.task}/{args.split} could be aligned")
    atomic_save(out, args.out)
    print(f"wrote {len(out['cut_ids'])} alignments to {args.out}")
