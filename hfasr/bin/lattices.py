"""``hfasr lattices``: denominator lattices of a split for sequence training.

Decodes every cut of ``--split`` with the CE model (``--model``, its ``prior.pt`` beside it)
over an HCLG built from the lang dir's weak unigram LM (``G_weak``; written once to
``OUT/graph_weak``) and writes ``OUT/lats_<split>.<job>.pt`` (one compact shard per job) and
the index ``OUT/lats_<split>.index.pt`` (:mod:`hfasr.lattice.generate`). To regenerate lattices
with a sequence-trained model, run it again with that model and another ``--out``.

Each shard is written (atomically) as soon as its cuts are decoded, into the work dir
``.OUT.shards`` beside ``OUT``; the shards, the indexes, ``config.yaml`` and a new
``graph_weak`` are published into ``OUT`` only when every split succeeded, so a failed or
killed run leaves ``OUT`` as it was. A rerun reuses every shard complete for the same model,
graph, options and cuts (in ``OUT`` or in the work dir) and decodes only the others (resume per
shard). Files of earlier runs that the new indexes do not list (the single-file
``lats_<split>.pt`` of earlier versions, shards beyond ``--num-shards``) are removed after
publishing. A second run on the same ``OUT`` fails at once while one holds it.
"""

from __future__ import annotations

import argparse
import os
import shutil
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
    p.add_argument("--beam", type=float, help="decoding beam (overrides the config)")
    p.add_argument("--lattice-beam", type=float, help="lattice beam (overrides the config)")
    p.add_argument("--num-jobs", type=int, help="decoding processes (overrides the config)")
    p.add_argument("--num-shards", type=int, help="lattice files per split (overrides the config; 0: num-jobs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> None:
    from hfasr.config import load_config, save_config
    from hfasr.fileio import DirLock, fsync_dir, load_torch, staged_dir
    from hfasr.lattice.generate import LatticeConfig, generate_lattices
    from hfasr.lattice.store import index_path, legacy_path, shard_key

    cfg = load_config(LatticeConfig, args.config, {"acoustic_scale": args.acoustic_scale, "beam": args.beam,
                                                   "lattice_beam": args.lattice_beam, "num_jobs": args.num_jobs,
                                                   "num_shards": args.num_shards})
    lines, listed = [], {}
    work = args.out.parent / f".{args.out.name}.shards"  # shards of an unfinished run (resume)
    with DirLock(args.out, "hfasr lattices"):
        work.mkdir(parents=True, exist_ok=True)
        with staged_dir(args.out) as stage:
            save_config(cfg, stage / "config.yaml")
            # the weak-LM graph of an earlier run is reused; a new one is published with the lattices
            graph_dir = args.out / "graph_weak"
            if not (graph_dir / "HCLG.fst").is_file():
                graph_dir = stage / "graph_weak"
            for split in args.split:
                path = generate_lattices(args.model, args.data_dir, args.task, split, args.lang, args.gmm_dir,
                                         args.out, cfg, progress=not args.quiet, graph_dir=graph_dir,
                                         index_dir=stage, work_dir=work)
                d = load_torch(path, "a lattice index")
                listed[split] = {s["file"]: s["key"] for s in d["shards"]}
                lines.append(f"{index_path(args.out, split)}: {d['num_lattices']} lattices in {len(d['shards'])} "
                             f"shards, {len(d['failed'])} failed, {d['num_arcs'] / max(d['num_frames'], 1):.1f} "
                             f"arcs per frame, {d['bytes'] / max(d['num_arcs'], 1):.1f} bytes per arc")
            # every split succeeded: the new shards go first, then (staged_dir) the indexes
            for files in listed.values():
                for name, key in sorted(files.items()):
                    if shard_key(work / name) == key:  # (not a shard of an earlier run's options)
                        os.replace(work / name, args.out / name)
            fsync_dir(args.out)
        for split, files in listed.items():  # files of earlier runs the new index does not list
            stale = [legacy_path(args.out, split)]
            stale += [p for p in args.out.glob(f"lats_{split}.*.pt")
                      if p.name not in files and p.name[len(f"lats_{split}."):-3].isdigit()]
            for p in stale:
                p.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    for line in lines:
        print(line)
