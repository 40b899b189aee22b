"""``hfasr align``: re-align the training data with a hybrid DNN (Kaldi nnet1's ``steps/nnet/align.sh``).

For every cut of ``--splits`` (default train and dev; the train split's speed-perturbed copies
too when its feature manifest holds them and the GMM was trained on them), the model's pseudo
log-likelihoods ``log p(pdf|x) - prior_scale * log prior(pdf)`` (:func:`hfasr.models.compute_loglikes`,
``prior.pt`` beside the model unless ``--prior``) are Viterbi-aligned through the same training
graphs as the GMM's (:func:`hfasr.gmm.align.compile_graphs`: the GMM dir's ``final.mdl`` / ``tree``
and the lang dir), with the GMM config's transition / self-loop scales and beams
(``align-compiled-mapped`` with :class:`hfasr.gmm.align.MatrixDecodable`).

``OUT`` gets ``ali_<split>.pt`` + ``ali_<split>_excluded.txt`` in the GMM dir's format
(``docs/formats.md``), copies of ``final.mdl`` and ``tree`` (so that ``OUT`` serves as
``hfasr train --ali-dir`` / ``--model-dir`` and ``hfasr lattices --gmm-dir``) and ``log.txt``.
One summary line per split: cuts aligned / failed and the fraction of frames whose pdf differs
from the GMM dir's alignment. The files are written into a staging dir and published to ``OUT``
only when every split is aligned (a failed run leaves ``OUT`` as it was; alignments of splits
not in ``--splits`` are kept). A second run on the same ``OUT`` fails at once while one holds it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

HELP = "re-align splits with a hybrid DNN (nnet1 align.sh): OUT/ali_<split>.pt for hfasr train --ali-dir"

log = logging.getLogger(__name__)

ALIGN_CHUNK_CUTS = 1000  # cuts whose log-likelihoods are held at a time (memory bounded on any corpus)
COPIED = ("final.mdl", "tree")  # what downstream stages read from an --ali-dir / --model-dir / --gmm-dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="final.pt / checkpoint.pt of hfasr train (CE hybrid)")
    p.add_argument("--prior", type=Path, help="prior.pt (default: prior.pt beside the model)")
    p.add_argument("--data-dir", type=Path, required=True, help="data dir of hfasr prepare/features")
    p.add_argument("--task", required=True, help="task name, e.g. fsdd_conn")
    p.add_argument("--gmm-dir", type=Path, required=True,
                   help="GMM dir of hfasr gmm (final.mdl, tree, config.yaml; ali_<split>.pt for the comparison)")
    p.add_argument("--lang", type=Path, required=True, help="lang dir of hfasr lang (L.fst, words.txt)")
    p.add_argument("--out", type=Path, required=True, help="alignment dir to write")
    p.add_argument("--splits", nargs="+", default=["train", "dev"], help="splits (default: train dev)")
    p.add_argument("--num-jobs", type=int, default=1, help="alignment processes (fork)")
    p.add_argument("--acoustic-scale", type=float, default=0.1, help="acoustic scale (default 0.1)")
    p.add_argument("--prior-scale", type=float, default=1.0, help="scale of the subtracted log-prior")
    p.add_argument("--num-threads", type=int, default=1, help="torch threads for the forward passes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


@dataclass
class SplitResult:
    """What :func:`realign` did to one split."""

    split: str
    path: Path
    num_cuts: int
    aligned: int
    failed: dict[str, str]  # cut id -> reason
    frames: int  # aligned frames
    avg_like: float  # per aligned frame (acoustic, unscaled, + graph)
    diff_frames: int  # frames whose pdf differs from the GMM alignment ...
    compared_frames: int  # ... out of these (cuts aligned in both, same length)
    seconds: float

    @property
    def pdf_diff(self) -> float | None:
        return self.diff_frames / self.compared_frames if self.compared_frames else None

    def summary(self) -> str:
        d = ("no GMM alignment to compare" if self.pdf_diff is None else
             f"{100 * self.pdf_diff:.2f}% of {self.compared_frames} frames differ in pdf from the GMM alignment")
        return (f"{self.path}: {self.aligned} of {self.num_cuts} cuts aligned, {len(self.failed)} failed; {d}; "
                f"avg log-like/frame {self.avg_like:.3f}; {self.seconds:.1f} s")


def _check_num_pdfs(model, prior, num_pdfs: int, model_path: Path, gmm_dir: Path) -> None:
    from hfasr.errors import DataError

    cfg = getattr(model, "model_config", {}) or {}
    outputs = cfg.get("num_outputs", getattr(model, "num_outputs", None))
    if outputs is not None and int(outputs) != num_pdfs:
        raise DataError(f"{model_path}: the model has {int(outputs)} outputs but the transition model of "
                        f"{gmm_dir / 'final.mdl'} has {num_pdfs} pdfs; align with the GMM dir the model was trained on")
    if prior.numel() != num_pdfs:
        raise DataError(f"the prior of {model_path} has {prior.numel()} pdfs but the transition model of "
                        f"{gmm_dir / 'final.mdl'} has {num_pdfs} pdfs")


def _loglike_bank(model, prior, prior_scale: float, cuts, desc: str, progress: bool):
    """A :class:`hfasr.gmm.feats.FeatureBank` of the cuts' pdf log-likelihoods (one row per frame)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from hfasr.errors import DataError
    from hfasr.gmm.feats import FeatureBank
    from hfasr.models import compute_loglikes

    ids, texts, mats = [], [], []
    for cut in tqdm(cuts, desc=desc, disable=not progress, leave=False):
        if not cut.has_features:
            raise DataError(f"cut '{cut.id}' has no features; run `hfasr features` first")
        x = torch.from_numpy(cut.load_features())
        if x.shape[0] != cut.num_frames:
            raise DataError(f"cut '{cut.id}': loaded {x.shape[0]} frames, manifest says {cut.num_frames}")
        ll = compute_loglikes(model, x, prior, prior_scale, name=f"cut '{cut.id}'")
        if ll.shape[0] != x.shape[0]:
            raise DataError(f"cut '{cut.id}': the model gives {ll.shape[0]} output frames for {x.shape[0]} input "
                            "frames; frame alignment needs one output per input frame (no frame stacking)")
        ids.append(cut.id)
        texts.append(" ".join(s.text or "" for s in cut.supervisions))
        mats.append(ll)
    if not mats:
        raise DataError(f"{desc}: no cuts")
    offsets = np.zeros(len(mats) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([m.shape[0] for m in mats])
    return FeatureBank(ids, texts, torch.cat(mats), offsets)


def _compare(ali_path: Path, ref_path: Path) -> tuple[int, int]:
    """(frames whose pdf differs, frames compared) between two alignment files."""
    from hfasr.data.frames import load_alignment

    if not ref_path.is_file():
        return 0, 0
    new, ref = load_alignment(ali_path), load_alignment(ref_path)
    pos = {c: i for i, c in enumerate(ref["cut_ids"])}
    diff = tot = 0
    for cid, p in zip(new["cut_ids"], new["pdfs"]):
        i = pos.get(cid)
        if i is None or ref["pdfs"][i].shape != p.shape:
            continue
        diff += int((ref["pdfs"][i] != p).sum())
        tot += int(p.numel())
    return diff, tot


def realign(model_path: str | Path, data_dir: str | Path, task: str, gmm_dir: str | Path, lang_dir: str | Path,
            out_dir: str | Path, splits: list[str] | tuple[str, ...] = ("train", "dev"), num_jobs: int = 1,
            acoustic_scale: float = 0.1, prior_scale: float = 1.0, prior_path: str | Path | None = None,
            num_threads: int = 1, progress: bool = True) -> list[SplitResult]:
    """Write ``out_dir`` (module docstring); returns one :class:`SplitResult` per split."""
    import torch

    from hfasr.config import load_config
    from hfasr.data.corpora import manifest_path
    from hfasr.errors import DataError
    from hfasr.fileio import append_line, staged_dir, write_text
    from hfasr.gmm.align import AlignOptions
    from hfasr.gmm.model import GmmModel
    from hfasr.gmm.train import GmmConfig
    from hfasr.lang.prepare import Lang
    from hfasr.models import load_model, load_prior

    model_path, gmm_dir, out = Path(model_path), Path(gmm_dir), Path(out_dir)
    if out.resolve() == gmm_dir.resolve():
        raise DataError(f"--out {out} is the GMM dir: its alignments would be overwritten; choose another dir")
    for f in COPIED:
        if not (gmm_dir / f).is_file():
            raise DataError(f"{gmm_dir / f} not found; run `hfasr gmm` first")
    gmm = GmmModel.read(gmm_dir / "final.mdl", gmm_dir / "tree")
    cfg = load_config(GmmConfig, gmm_dir / "config.yaml") if (gmm_dir / "config.yaml").is_file() else GmmConfig()
    opts = AlignOptions(beam=cfg.beam, retry_beam=cfg.retry_beam, acoustic_scale=acoustic_scale,
                        transition_scale=cfg.transition_scale, self_loop_scale=cfg.self_loop_scale,
                        last_resort_beam=cfg.last_resort_beam)
    model = load_model(model_path)
    prior = load_prior(Path(prior_path) if prior_path else model_path.parent / "prior.pt")
    _check_num_pdfs(model, prior, gmm.num_pdfs, model_path, gmm_dir)
    lang = Lang(lang_dir)
    manifests = {}
    for split in splits:
        m = manifest_path(data_dir, task, split, "feats")
        if not m.is_file():
            raise DataError(f"{m}: features manifest not found; run `hfasr features` first")
        manifests[split] = m

    threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    results = []
    try:
        with staged_dir(out) as stage:
            for f in COPIED:
                shutil.copyfile(gmm_dir / f, stage / f)
            logf = stage / "log.txt"
            write_text(logf, f"# hfasr align: model {model_path}, GMM dir {gmm_dir}, acoustic scale "
                       f"{acoustic_scale:g}, prior scale {prior_scale:g}, transition scale {opts.transition_scale:g}, "
                       f"self-loop scale {opts.self_loop_scale:g}, beam {opts.beam:g}, retry beam "
                       f"{opts.retry_beam:g}, careful beam {opts.last_resort_beam:g}\n")
            for split in splits:
                results.append(_align_split(split, stage, out, manifests[split], cfg, model, prior, prior_scale,
                                            gmm, gmm_dir, lang, opts, num_jobs, progress))
                append_line(logf, results[-1].summary())
    finally:
        torch.set_num_threads(threads)
    return results


def _align_split(split: str, stage: Path, out: Path, manifest: Path, cfg, model, prior, prior_scale: float, gmm,
                 gmm_dir: Path, lang, opts, num_jobs: int, progress: bool) -> SplitResult:
    """Align one split into ``stage/ali_<split>.pt`` (+ ``_excluded.txt``); the result names
    the file by its published path under ``out``."""
    import numpy as np
    import torch

    from hfasr.data.corpora import load_cuts
    from hfasr.fileio import write_text
    from hfasr.gmm.align import MatrixDecodable, align_bank, compile_graphs, failure_reason
    from hfasr.gmm.feats import FeatureBank
    from hfasr.gmm.train import write_alignments

    t0 = time.time()
    cuts = load_cuts(manifest)
    if split == "train" and not cfg.use_speed_perturbed:  # as the GMM's training set
        cuts = cuts.filter(lambda c: "_sp" not in c.id).to_eager()
    cuts = list(cuts)
    # chunks of ALIGN_CHUNK_CUTS: one chunk's log-likelihoods in memory at a time, not the split's
    ids, texts, lengths, alis, like = [], [], [], [], 0.0
    chunks = range(0, len(cuts), ALIGN_CHUNK_CUTS)
    for k, s in enumerate(chunks):
        part = f" [{k + 1}/{len(chunks)}]" if len(chunks) > 1 else ""
        # forward passes here, before align_bank forks: no torch work in the workers
        bank = _loglike_bank(model, prior, prior_scale, cuts[s : s + ALIGN_CHUNK_CUTS], f"loglikes {split}{part}",
                             progress)
        graphs = compile_graphs(gmm, lang, bank.texts, bank.cut_ids)
        a, lk = align_bank(bank, graphs, gmm, opts, num_jobs, progress, desc=f"align {split}{part}",
                           decodable=MatrixDecodable(gmm.tm))
        ids += bank.cut_ids
        texts += bank.texts
        lengths += [bank.num_frames(i) for i in range(len(bank))]
        alis += a
        like += lk
        del bank, graphs
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    bank = FeatureBank(ids, texts, torch.zeros(0, 1), offsets)  # the cuts and their lengths only
    n_ok = write_alignments(stage, split, bank, alis, gmm)
    why = failure_reason(opts)
    failed = {bank.cut_ids[i]: why for i, a in enumerate(alis) if a is None}
    write_text(stage / f"ali_{split}_excluded.txt", "".join(f"{c}\t{r}\n" for c, r in failed.items()))
    frames = sum(bank.num_frames(i) for i, a in enumerate(alis) if a is not None)
    diff, tot = _compare(stage / f"ali_{split}.pt", gmm_dir / f"ali_{split}.pt")
    r = SplitResult(split, out / f"ali_{split}.pt", len(bank), n_ok, failed, frames, like / max(frames, 1), diff,
                    tot, time.time() - t0)
    log.debug(r.summary())
    return r


def run(args: argparse.Namespace) -> None:
    from hfasr.errors import DataError
    from hfasr.fileio import DirLock

    if args.num_jobs < 1:
        raise DataError(f"--num-jobs must be >= 1, got {args.num_jobs}")
    t0 = time.time()
    with DirLock(args.out, "hfasr align"):  # one writer per alignment dir
        results = realign(args.model, args.data_dir, args.task, args.gmm_dir, args.lang, args.out, args.splits,
                          num_jobs=args.num_jobs, acoustic_scale=args.acoustic_scale, prior_scale=args.prior_scale,
                          prior_path=args.prior, num_threads=args.num_threads, progress=not args.quiet)
    for r in results:
        print(r.summary())
    print(f"{args.out}: " + ", ".join(f"{r.split} {r.aligned} aligned / {len(r.failed)} failed" for r in results)
          + f"; {time.time() - t0:.1f} s in all")
