"""``hfasr gmm --data-dir D --task T --lang LANGDIR --out GMMDIR``: monophone GMM-HMM + alignments.

Trains a monophone GMM-HMM from a flat start on ``<task>_feats_train`` (with its speed-perturbed
copies), builds ``graph/HCLG.fst`` and writes frame alignments ``ali_<split>.pt`` for the
configured splits (default train and dev). With ``--decode-split test``, also decodes that
split with the GMM (``hfasr.gmm.decode.decode_gmm``) and scores it into ``OUT/decode_test/``
(``hyp.txt``, ``ref.txt``, ``wer.txt`` with the bootstrap CI, ``errs-test.txt``).

Training and decoding write into a staging dir that is published to ``--out`` only when all of
it succeeded (a failed run leaves the previous GMM dir in full); alignments and decodes of an
earlier model that this run did not rewrite are removed. A second run on the same ``--out``
fails at once while one holds it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "monophone GMM-HMM training, HCLG and frame alignments"


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--data-dir", type=Path, required=True, help="directory with <task>_feats_<split>.jsonl.gz and <task>_stats.pt")
    sp.add_argument("--task", required=True, help="task name, e.g. yesno, fsdd_conn, synth")
    sp.add_argument("--lang", type=Path, required=True, help="lang dir written by `hfasr lang`")
    sp.add_argument("--out", type=Path, required=True, help="GMM dir to write")
    sp.add_argument("--config", type=Path, help="YAML GmmConfig")
    sp.add_argument("--num-jobs", type=int, default=None, help="alignment processes (overrides the config)")
    sp.add_argument("--decode-split", nargs="+", default=None,
                    help="also decode these splits with the GMM: OUT/decode_<split>/{hyp,wer}.txt")
    sp.add_argument("--acoustic-scale", type=float, default=0.1,
                    help="acoustic scale for --decode-split (without --lm-weights)")
    sp.add_argument("--lm-weights", default=None,
                    help="comma-separated LM weights (acoustic scale 1/LMWT) swept on --dev-split; the one with "
                         "the fewest dev word errors decodes --decode-split (as the DNN decode stages do)")
    sp.add_argument("--dev-split", default="dev", help="split the --lm-weights sweep runs on")
    sp.add_argument("--beam", type=float, default=13.0, help="decoding beam (--decode-split and the sweep)")
    sp.add_argument("--max-active", type=int, default=7000, help="decoding: most active states per frame")
    sp.add_argument("--decode-jobs", type=int, default=1, help="decoding processes")
    sp.add_argument("--decode-only", action="store_true",
                    help="no training: decode --decode-split (and sweep) with the GMM already in OUT")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> None:
    from hfasr.config import load_config
    from hfasr.errors import HfasrError
    from hfasr.fileio import DirLock, staged_dir
    from hfasr.gmm.train import GmmConfig, remove_stale, train_gmm

    if args.beam <= 0 or args.max_active < 2 or args.decode_jobs < 1:
        raise HfasrError(f"--beam must be > 0, --max-active >= 2, --decode-jobs >= 1 (got {args.beam:g}, "
                         f"{args.max_active}, {args.decode_jobs})")
    if args.decode_only:
        if not (args.out / "final.mdl").is_file():
            raise HfasrError(f"--decode-only: {args.out}/final.mdl not found; train the GMM first (without --decode-only)")
        with DirLock(args.out, "hfasr gmm"):
            decode_all(args, args.out)
        return
    cfg = load_config(GmmConfig, args.config, {"num_jobs": args.num_jobs})
    with DirLock(args.out, "hfasr gmm"), staged_dir(args.out) as stage:
        model = train_gmm(args.data_dir, args.task, args.lang, stage, cfg, progress=not args.quiet)
        print(f"{args.out}: {model.num_pdfs} pdfs, {model.am.num_gauss} Gaussians")
        decode_all(args, stage)
        produced = {p.name for p in stage.iterdir()}
    remove_stale(args.out, produced)


def decode_all(args: argparse.Namespace, gmm_dir: Path) -> None:
    """The ``--lm-weights`` sweep on ``--dev-split`` (with ``--decode-split``), then every
    ``--decode-split``, with the GMM dir ``gmm_dir``."""
    note = f"acoustic scale {args.acoustic_scale:g} (given)"
    if args.decode_split and args.lm_weights:
        args.acoustic_scale, note = sweep_dev(args, gmm_dir)
    for split in args.decode_split or []:
        decode_split(args, split, note, gmm_dir)


def load_split(data_dir: Path, task: str, split: str):
    """The feature CutSet of ``split`` and its references (cut id -> words); DataError if missing."""
    from hfasr.data.corpora import load_cuts, manifest_path
    from hfasr.errors import DataError

    path = manifest_path(data_dir, task, split, "feats")
    if not path.is_file():
        raise DataError(f"{path}: feature manifest not found; run `hfasr features` first")
    cuts = load_cuts(path)
    refs = {c.id: " ".join(s.text or "" for s in c.supervisions).split() for c in cuts}
    return cuts, refs


def lm_weight_sweep(gmm_dir: Path, cuts, refs: dict[str, list[str]], lm_weights: list[float],
                    beam: float = 13.0, max_active: int = 7000, num_jobs: int = 1) -> list:
    """GMM-decode ``cuts`` at acoustic scale ``1 / LMWT`` for each of ``lm_weights``: ``[(LMWT,
    ScoreResult)]`` in that order; the best is the one with the fewest word errors (the first of
    equals). HfasrError for a non-positive weight."""
    from hfasr.decode.score import score
    from hfasr.errors import HfasrError
    from hfasr.gmm.decode import decode_gmm_parallel

    bad = [w for w in lm_weights if w <= 0]
    if bad:
        raise HfasrError(f"--lm-weights: LM weights must be positive, got {bad[0]:g}")
    points = []
    for lmwt in lm_weights:
        hyps = {cid: w.split() for cid, w in decode_gmm_parallel(
            gmm_dir, cuts, num_jobs, acoustic_scale=1 / lmwt, beam=beam, max_active=max_active, progress=False)}
        points.append((lmwt, score(refs, hyps)))
    return points


def sweep_dev(args: argparse.Namespace, gmm_dir: Path | None = None) -> tuple[float, str]:
    """Decode ``--dev-split`` at each ``--lm-weights`` point (:func:`lm_weight_sweep`) with the GMM
    dir ``gmm_dir`` (default ``--out``); ``<gmm_dir>/decode_<dev>_sweep.txt`` lists them. Returns
    the best acoustic scale and the note."""
    from hfasr.decode import parse_floats
    from hfasr.fileio import write_text

    gmm_dir = gmm_dir or args.out
    cuts, refs = load_split(args.data_dir, args.task, args.dev_split)
    points = lm_weight_sweep(gmm_dir, cuts, refs, parse_floats(args.lm_weights, "--lm-weights"), args.beam,
                             args.max_active, args.decode_jobs)
    lmwt, best = min(points, key=lambda p: p[1].errors)
    lines = [f"LMWT {w:g} acoustic_scale {1 / w:.6f} {r.wer_line()}\n" for w, r in points]
    write_text(gmm_dir / f"decode_{args.dev_split}_sweep.txt", "".join(lines) + f"best LMWT {lmwt:g}\n")
    return 1 / lmwt, f"acoustic scale {1 / lmwt:.6f} (LMWT {lmwt:g}, best on {args.dev_split}: {best.wer_line()})"


def decode_split(args: argparse.Namespace, split: str, note: str = "", gmm_dir: Path | None = None) -> None:
    """GMM-decode ``split`` with the GMM dir ``gmm_dir`` (default ``--out``) into
    ``<gmm_dir>/decode_<split>/`` (hyp.txt, ref.txt, wer.txt, errs-<split>.txt)."""
    from hfasr.decode.score import bootstrap_ci, score, write_results, write_text
    from hfasr.fileio import write_text as write_file
    from hfasr.gmm.decode import decode_gmm_parallel

    gmm_dir = gmm_dir or args.out
    cuts, refs = load_split(args.data_dir, args.task, split)
    hyps = {cid: words.split() for cid, words in
            decode_gmm_parallel(gmm_dir, cuts, args.decode_jobs, acoustic_scale=args.acoustic_scale, beam=args.beam,
                                max_active=args.max_active, progress=not args.quiet)}
    out = gmm_dir / f"decode_{split}"
    write_text(out / "hyp.txt", hyps)
    write_text(out / "ref.txt", refs)
    result = score(refs, hyps)
    wer = write_results(out, split, result, bootstrap_ci(result))
    if note:
        write_file(wer, wer.read_text() + f"# {note}\n")
    print(f"GMM {split} ({note or f'acoustic scale {args.acoustic_scale:g}'}): "
          + " ".join(wer.read_text().split("\n")[:1]))
