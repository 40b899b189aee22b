"""``hfasr loglikes``: run a trained acoustic model over a split and write pdf log-likelihoods.

Writes ``OUT`` (``{"cut_ids": [...], "loglikes": [FloatTensor(T, num_pdfs)]}``, the input of
``hfasr decode --loglikes``) and, with ``--text``, the split's reference transcripts as a Kaldi
text file (``cut_id WORD ...``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "model + features of a split -> pdf log-likelihoods (for hfasr decode)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="final.pt / checkpoint.pt of hfasr train")
    p.add_argument("--prior", type=Path, help="prior.pt (default: prior.pt beside the model)")
    p.add_argument("--data-dir", type=Path, required=True, help="data dir of hfasr prepare/features")
    p.add_argument("--task", required=True, help="task name, e.g. fsdd_conn")
    p.add_argument("--split", required=True, help="train, dev or test")
    p.add_argument("--out", type=Path, required=True, help="output .pt file")
    p.add_argument("--text", type=Path, help="also write the reference text of the split here")
    p.add_argument("--prior-scale", type=float, default=1.0, help="scale of the subtracted log-prior")
    p.add_argument("--num-threads", type=int, default=1, help="torch threads")


def run(args: argparse.Namespace) -> None:
    from hfasr.fileio import DirLock

    # one writer per output dir (the model's experiment dir, usually): not while `hfasr train`
    # still writes there, nor two loglikes runs at once
    with DirLock(args.out.parent, "hfasr loglikes"):
        _run(args)


def _run(args: argparse.Namespace) -> None:
    import torch
    from tqdm import tqdm

    from hfasr.data.corpora import load_cuts, manifest_path
    from hfasr.errors import DataError
    from hfasr.fileio import write_text
    from hfasr.models import atomic_save, compute_loglikes, load_model, load_prior

    torch.set_num_threads(args.num_threads)
    m = manifest_path(args.data_dir, args.task, args.split, "feats")
    if not m.is_file():
        raise DataError(f"{m}: features manifest not found; run `hfasr features` first")
    cuts = load_cuts(m)
    model = load_model(args.model)
    prior = load_prior(args.prior or args.model.parent / "prior.pt")
    ids, lls, lines = [], [], []
    for c in tqdm(cuts, desc=f"loglikes {args.task}/{args.split}", disable=None):
        feats = torch.from_numpy(c.load_features())
        ids.append(c.id)
        # non-finite features or outputs: a DataError naming the cut (never a NaN written)
        lls.append(compute_loglikes(model, feats, prior, args.prior_scale, name=f"cut '{c.id}' of {m}"))
        lines.append(f"{c.id} {' '.join(s.text for s in c.supervisions)}")
    atomic_save({"cut_ids": ids, "loglikes": lls}, args.out)  # a full disk: an error, no partial file
    if args.text:
        write_text(args.text, "\n".join(lines) + "\n")
    print(f"wrote {len(ids)} utterances to {args.out}")
