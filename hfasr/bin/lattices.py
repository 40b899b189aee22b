"""``hfasr lattices``: denominator lattices of a split for sequence training.

Decodes every cut of ``--split`` with the CE model (``--model``, its ``prior.pt`` beside it)
over an HCLG built from the lang dir's weak unigram LM (``G_weak``; written once to
``OUT/graph_weak``) and writes ``OUT/lats_<split>.pt`` (:mod:`hfasr.lattice.generate`). To
regenerate lattices with a sequence-trained model, run it again with that model and another
``--out``. The lattice files are written into a staging dir and published only when every split
succeeded (a failed run leaves ``OUT`` as it was; lattices of splits not in ``--split`` are kept).
A second run on the same ``OUT`` fails at once while one holds it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "denominator lattices (weak LM) of a split with a CE model, for sequence training"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="final.pt of hfasr train (prior.pt beside it)")
    p.add_argument("--data-dir", type=Path, required=True, help="data dir of hfasr prepare/features")
    p.add_argument("--task", required=True, help="task name, e.g. fsdd_conn")
    p.add_argument("--split", nargs="+", default=["train", "dev"], help="splits (default: train dev)")
    p.add_argument("--lang", type=Path, required=True, help="lang dir of hfasr lang (G_weak.fst)")
    p.add_argument("--gmm-dir", type=Path, required=True, help="GMM dir of hfasr gmm (final.mdl, tree)")
    p.add_argument("--out", type=Path, required=True, help="lattice dir")
    p.add_argument("--config", type=Path, help="YAML LatticeConfig")
    p.add_argument("--acoustic-scale", type=float, help="κ (overrides the config; default 0.1)")
    p.add_argument("--lattice-beam", type=float, help="lattice beam (overrides the config)")
    p.add_argument("--num-jobs", type=int, help="decoding processes (overrides the config)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> None:
    from hfasr.config import load_config, save_config
    from hfasr.fileio import DirLock, staged_dir
    from hfasr.lattice.generate import LatticeConfig, generate_lattices, lattice_path, load_lattices

    cfg = load_config(LatticeConfig, args.config, {"acoustic_scale": args.acoustic_scale,
                                                   "lattice_beam": args.lattice_beam, "num_jobs": args.num_jobs})
    lines = []
    with DirLock(args.out, "hfasr lattices"), staged_dir(args.out) as stage:
        save_config(cfg, stage / "config.yaml")
        # the weak-LM graph of an earlier run is reused; a new one is published with the lattices
        graph_dir = args.out / "graph_weak"
        if not (graph_dir / "HCLG.fst").is_file():
            graph_dir = stage / "graph_weak"
        for split in args.split:
            path = generate_lattices(args.model, args.data_dir, args.task, split, args.lang, args.gmm_dir, stage,
                                     cfg, progress=not args.quiet, graph_dir=graph_dir)
            d = load_lattices(path)
            frames = sum(lat.num_frames for lat in d["lattices"])
            arcs = sum(lat.num_arcs for lat in d["lattices"])
            lines.append(f"{lattice_path(args.out, split)}: {len(d['lattices'])} lattices, {len(d['failed'])} "
                         f"failed, {arcs / max(frames, 1):.1f} arcs per frame")
    for line in lines:
        print(line)
