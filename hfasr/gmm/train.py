"""Monophone GMM-HMM training from a flat start (Kaldi's ``steps/train_mono.sh``) and alignment.

Recipe: one Gaussian per pdf at the global mean/variance (``gmm-init-mono``); training graphs
compiled once per utterance (``compile-train-graphs``); an equal alignment (``align-equal-
compiled``); then ``num_iters`` EM passes, each accumulating statistics on the current alignment
(``gmm-acc-stats-ali``), re-estimating transitions and GMMs and splitting Gaussians towards a
target that grows linearly to ``total_gauss`` over ``max_iter_inc`` passes (``gmm-est --mix-up
--power``), and re-aligning first on the passes listed in ``realign_iters``
(``gmm-align-compiled``; beam 6 on the first, 10 later, retry beam 40).

The statistics are computed with torch on all frames of a pdf at once and handed to Kaldi's
accumulator as two weighted pseudo-frames per Gaussian (``mean +- std``), which carry exactly
the zeroth, first and second order statistics; the update itself (``MleAmDiagGmmUpdate``,
Gaussian removal, ``SplitByCount``) is Kaldi's.

Outputs (``docs/formats.md``, "GMM dir"): ``tree``, ``final.mdl``, ``graph/HCLG.fst``,
``graph/words.txt``, ``ali_<split>.pt`` (+ ``ali_<split>_excluded.txt``), ``cmvn.pt``,
``config.yaml`` and ``log.txt``.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hfasr._kaldi import kaldifst, khg, write_fst
from hfasr.config import bounded, check_ranges, limits, save_config
from hfasr.errors import DataError
from hfasr.fileio import append_line, load_torch, save_torch, staged_dir, write_bytes, write_text
from hfasr.gmm.align import AlignOptions, align_bank, compile_graphs, component_loglikes, gmm_params
from hfasr.gmm.feats import FeatureBank, FeatureOptions, load_feats, load_stats_np
from hfasr.gmm.model import GmmModel, split_by_count
from hfasr.lang.graphs import make_hclg
from hfasr.lang.prepare import Lang

log = logging.getLogger(__name__)

_REALIGN = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 18, 20, 23, 26, 29, 32, 35, 38]


@dataclass
class GmmConfig:
    """Options of ``hfasr gmm`` (defaults: Kaldi's ``steps/train_mono.sh`` and ``gmm-est``)."""

    num_iters: int = bounded(40, ge=1)  # EM passes
    max_iter_inc: int = bounded(30, ge=0)  # the Gaussian target grows linearly until this pass
    total_gauss: int = bounded(1000, ge=1)  # target number of Gaussians (all pdfs together)
    realign_iters: list[int] = field(  # passes that re-align first
        default_factory=lambda: list(_REALIGN), metadata=limits(ge=1, each=True))
    power: float = bounded(0.25, ge=0)  # Gaussians per pdf proportional to occupancy ** power
    perturb_factor: float = bounded(0.01, ge=0)  # mean perturbation (in standard deviations) when splitting
    min_count: float = bounded(20.0, ge=0)  # minimum occupancy per Gaussian when splitting
    min_gaussian_occupancy: float = bounded(10.0, ge=0)  # Gaussians with less occupancy are removed (3 on the first pass)
    min_gaussian_weight: float = bounded(1e-5, ge=0, lt=1)
    min_variance: float = bounded(0.001, gt=0)  # variance floor (features are mean/variance normalised)
    first_beam: float = bounded(6.0, gt=0)  # alignment beam on the first re-alignment
    beam: float = bounded(10.0, gt=0)  # alignment beam afterwards and for the final alignments
    retry_beam: float = bounded(40.0, ge=0)  # beam of the retry when an alignment fails (0: no retry)
    last_resort_beam: float = bounded(200.0, ge=0)  # final alignments: one more careful try before excluding a cut (0: none)
    acoustic_scale: float = bounded(0.1, gt=0)
    transition_scale: float = bounded(1.0, ge=0)
    self_loop_scale: float = bounded(0.1, ge=0)
    # global (data dir stats), global+utt (then per-utterance mean removal), none
    cmvn: str = bounded("global+utt", choices=("global", "global+utt", "none"))
    num_ceps: int = bounded(13, ge=0)  # > 0: DCT of the fbank to this many cepstra (MFCC-like; diagonal GMMs); 0: fbank
    delta_order: int = bounded(2, ge=0)  # 0: static features; 2: + deltas and delta-deltas
    delta_window: int = bounded(2, ge=1)
    use_speed_perturbed: bool = True  # train on the _sp0.9 / _sp1.1 copies too when present
    align_splits: list[str] = field(default_factory=lambda: ["train", "dev"])  # written as ali_<split>.pt
    graph_lm: str = bounded("G", choices=("G", "G_weak"))  # the LM compiled into graph/HCLG.fst
    num_jobs: int = bounded(2, ge=1)  # alignment processes
    seed: int = bounded(0, ge=0)  # seed of the equal alignment and of the Gaussian splitting

    def __post_init__(self) -> None:
        check_ranges(self)

    @property
    def feature_options(self) -> FeatureOptions:
        return FeatureOptions(cmvn=self.cmvn, num_ceps=self.num_ceps, delta_order=self.delta_order,
                              delta_window=self.delta_window)


@dataclass
class Stats:
    """One pass's accumulated statistics."""

    gmm: khg.AccumAmDiagGmm
    trans: np.ndarray  # per transition-id counts (index 0 unused)
    occs: np.ndarray  # per pdf occupancy
    tot_like: float
    frames: int


def _tid_arrays(tm: khg.TransitionModel) -> tuple[np.ndarray, np.ndarray]:
    tid2pdf = np.asarray(tm.transition_id_to_pdf_array(), dtype=np.int64)
    tid2phone = np.zeros(tm.num_transition_ids + 1, dtype=np.int64)
    for t in range(1, tm.num_transition_ids + 1):
        tid2phone[t] = tm.transition_id_to_phone(t)
    return tid2pdf, tid2phone


def accumulate(model: GmmModel, bank: FeatureBank, alis: list[list[int] | None]) -> Stats:
    """``gmm-acc-stats-ali``: EM statistics of every aligned utterance of ``bank``."""
    tm, am = model.tm, model.am
    tid2pdf, _ = _tid_arrays(tm)
    keep = [i for i, a in enumerate(alis) if a is not None]
    if not keep:
        raise DataError("no utterance could be aligned")
    frames = np.concatenate([np.arange(bank.offsets[i], bank.offsets[i + 1]) for i in keep])
    tids = np.concatenate([np.asarray(alis[i], dtype=np.int64) for i in keep])
    pdfs = tid2pdf[tids]
    trans = np.bincount(tids, minlength=tm.num_transition_ids + 1).astype(np.float64)
    order = np.argsort(pdfs, kind="stable")
    bounds = np.searchsorted(pdfs[order], np.arange(am.num_pdfs + 1))
    acc = khg.AccumAmDiagGmm()
    acc.init(model=am, flags=khg.GmmUpdateFlags.kGmmAll)
    occs = np.zeros(am.num_pdfs)
    tot = 0.0
    for p in range(am.num_pdfs):
        idx = frames[order[bounds[p] : bounds[p + 1]]]
        if idx.size == 0:
            continue
        x = bank.data[torch.from_numpy(idx)]
        ll = component_loglikes(x, gmm_params(am.get_pdf(p)))
        mx = ll.max(dim=1, keepdim=True).values
        post = torch.exp(ll - mx)
        tot_p = post.sum(dim=1, keepdim=True)
        tot += float((mx + torch.log(tot_p)).double().sum())
        post /= tot_p
        # statistics around the pdf's frame mean (float32 products without cancellation)
        shift = x.mean(0)
        xc = x - shift
        occ = post.double().sum(0).numpy()
        sx = (post.T @ xc).double().numpy()
        sx2 = (post.T @ (xc * xc)).double().numpy()
        occs[p] = float(occ.sum())
        ok = occ > 0.0
        d = np.zeros_like(sx)
        d[ok] = sx[ok] / occ[ok, None]
        mu = shift.double().numpy()[None, :] + d
        var = np.zeros_like(sx)
        var[ok] = sx2[ok] / occ[ok, None] - d[ok] ** 2
        sd = np.sqrt(np.maximum(var, 0.0))
        hi, lo = (mu + sd).astype(np.float32), (mu - sd).astype(np.float32)
        n = ll.shape[1]
        for m in np.flatnonzero(ok):
            w = np.zeros(n, dtype=np.float32)
            w[m] = occ[m] / 2.0
            # two pseudo-frames carrying the component's exact zeroth/first/second order stats
            acc.accumulate_from_posteriors(model=am, data=hi[m], gmm_index=p, weight=w)
            acc.accumulate_from_posteriors(model=am, data=lo[m], gmm_index=p, weight=w)
    return Stats(acc, trans, occs, tot, int(frames.size))


def update(model: GmmModel, stats: Stats, cfg: GmmConfig, mixup: int, min_occ: float,
           rng: np.random.Generator) -> None:
    """``gmm-est``: transitions, GMMs (MLE), then split Gaussians up to ``mixup`` in total."""
    model.tm.mle_update(stats.trans, khg.MleTransitionUpdateConfig())
    opts = khg.MleDiagGmmOptions(min_gaussian_weight=cfg.min_gaussian_weight, min_gaussian_occupancy=min_occ,
                                 min_variance=cfg.min_variance, remove_low_count_gaussians=True)
    khg.mle_am_diag_gmm_update(config=opts, amdiag_gmm_acc=stats.gmm, flags=khg.str_to_gmm_flags("mvwt"),
                               am_gmm=model.am)
    if mixup > model.am.num_gauss:
        model.am = split_by_count(model.am, stats.occs, mixup, cfg.perturb_factor, cfg.power, cfg.min_count, rng)


def equal_align(graphs, bank: FeatureBank, seed: int) -> list[list[int] | None]:
    """``align-equal-compiled``: a random path of the right length through each graph."""
    out: list[list[int] | None] = []
    for i, g in enumerate(graphs):
        ok, afst = kaldifst.equal_align(ifst=g, length=bank.num_frames(i), rand_seed=seed + i, num_retries=10)
        ali = None
        if ok:
            ok2, isyms, _, _ = kaldifst.get_linear_symbol_sequence(afst)
            if ok2 and len(isyms) == bank.num_frames(i):
                ali = list(isyms)
        if ali is None:
            log.warning("equal alignment failed for cut '%s' (%d frames: too short for its transcript?); "
                        "it is left out of training", bank.cut_ids[i], bank.num_frames(i))
        out.append(ali)
    return out


def _load_split(data_dir: Path, task: str, split: str, cfg: GmmConfig, mean, std, progress: bool,
                train: bool = False) -> FeatureBank:
    from hfasr.data.corpora import load_cuts, manifest_path

    path = manifest_path(data_dir, task, split, "feats")
    if not path.is_file():
        raise DataError(f"{path}: feature manifest not found; run `hfasr features` first")
    cuts = load_cuts(path)
    if train and not cfg.use_speed_perturbed:
        cuts = cuts.filter(lambda c: "_sp" not in c.id).to_eager()
    return load_feats(cuts, cfg.feature_options, mean, std, desc=f"load {split}", progress=progress)


class _Log:
    """Per-pass log lines to the logger and ``log.txt``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        write_text(path, "")

    def __call__(self, msg: str) -> None:
        log.info(msg)
        append_line(self.path, msg)


def train_gmm(data_dir: str | Path, task: str, lang_dir: str | Path, out: str | Path, cfg: GmmConfig | None = None,
              progress: bool = True) -> GmmModel:
    """Train a monophone GMM-HMM and write the GMM dir ``out`` (see the module docstring)."""
    # The statistics are many thin matrix products: one thread is faster than two (and far
    # faster when other processes compete for the cores); alignment uses num_jobs processes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_gmm(data_dir, task, lang_dir, out, cfg or GmmConfig(), progress)
    finally:
        torch.set_num_threads(threads)


# What a GMM dir holds besides the fixed files: a new model makes all earlier ones stale.
STALE_PATTERNS = ("ali_*.pt", "ali_*_excluded.txt", "decode_*")


def remove_stale(final: Path, produced: set[str], patterns: tuple[str, ...] = STALE_PATTERNS) -> None:
    """Remove the entries of ``final`` matching ``patterns`` that the stage just published did not
    produce (``produced``: names): results of an earlier model must not sit beside the new one."""
    for pat in patterns:
        for p in final.glob(pat):
            if p.name not in produced:
                log.info("removing %s (written by an earlier run; stale now)", p)
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink(missing_ok=True)


def _train_gmm(data_dir: str | Path, task: str, lang_dir: str | Path, out: str | Path, cfg: GmmConfig,
               progress: bool) -> GmmModel:
    """Validate, then train into a staging dir published to ``out`` when every file is written
    (a failed run leaves ``out`` as it was); earlier alignments of ``out`` are removed."""
    if cfg.graph_lm not in ("G", "G_weak"):
        raise DataError(f"graph_lm must be G or G_weak, got '{cfg.graph_lm}'")
    data_dir, out = Path(data_dir), Path(out)
    lang = Lang(lang_dir)
    # an unreadable L or G fails now, not after the whole training run
    lang.L_disambig()
    lang.G(weak=cfg.graph_lm == "G_weak")
    with staged_dir(out) as stage:
        model = _train_into(data_dir, task, lang, stage, cfg, progress)
        produced = {p.name for p in stage.iterdir()}
    remove_stale(out, produced)
    return model


def _train_into(data_dir: Path, task: str, lang: Lang, out: Path, cfg: GmmConfig, progress: bool) -> GmmModel:
    """Train and write every file of the GMM dir into ``out`` (a staging dir)."""
    save_config(cfg, out / "config.yaml")
    say = _Log(out / "log.txt")
    t0 = time.time()
    mean = std = None
    if cfg.cmvn != "none":
        stats_path = data_dir / f"{task}_stats.pt"
        mean, std = load_stats_np(stats_path)
        shutil.copyfile(stats_path, out / "cmvn.pt")
    bank = _load_split(data_dir, task, "train", cfg, mean, std, progress, train=True)
    x = bank.data.double()
    gmean, gvar = x.mean(0).numpy(), x.var(0).clamp_min(cfg.min_variance).numpy()
    del x
    model = GmmModel.init_mono(lang.topo_text, bank.dim, gmean, gvar)
    say(f"{len(bank)} training cuts, {bank.data.shape[0]} frames, dim {bank.dim}; "
        f"{model.num_pdfs} pdfs, {model.tm.num_transition_ids} transition-ids")
    graphs = compile_graphs(model, lang, bank.texts, bank.cut_ids)
    alis = equal_align(graphs, bank, cfg.seed)

    numgauss = model.am.num_gauss
    incgauss = max(0, (cfg.total_gauss - numgauss) // max(1, cfg.max_iter_inc))
    stats = accumulate(model, bank, alis)
    say(f"pass 0 (equal alignment): avg log-like/frame {stats.tot_like / stats.frames:.3f} "
        f"over {stats.frames} frames, {model.am.num_gauss} Gaussians")
    rng = np.random.default_rng(cfg.seed)
    update(model, stats, cfg, numgauss, min_occ=3.0, rng=rng)
    beam = cfg.first_beam
    realign = set(cfg.realign_iters)
    for it in tqdm(range(1, cfg.num_iters), desc="gmm passes", disable=not progress, leave=False):
        note = ""
        if it in realign:
            opts = AlignOptions(beam=beam, retry_beam=cfg.retry_beam, acoustic_scale=cfg.acoustic_scale,
                                transition_scale=cfg.transition_scale, self_loop_scale=cfg.self_loop_scale)
            new, _ = align_bank(bank, graphs, model, opts, cfg.num_jobs, progress, desc=f"align pass {it}")
            failed = [i for i, a in enumerate(new) if a is None]
            for i in failed:  # keep the previous alignment of a cut that failed to re-align
                new[i] = alis[i]
            alis = new
            note = f", realigned ({len(failed)} failed, kept previous)" if failed else ", realigned"
            beam = cfg.beam
        stats = accumulate(model, bank, alis)
        update(model, stats, cfg, numgauss, min_occ=cfg.min_gaussian_occupancy, rng=rng)
        say(f"pass {it}: avg log-like/frame {stats.tot_like / stats.frames:.3f} over {stats.frames} frames{note}; "
            f"{model.am.num_gauss} Gaussians after update")
        if it <= cfg.max_iter_inc:
            numgauss += incgauss
    model.write(out / "final.mdl", out / "tree")
    say(f"training done in {time.time() - t0:.1f} s: {model.am.num_gauss} Gaussians")

    write_graph(model, lang, out / "graph", weak=cfg.graph_lm == "G_weak")
    say(f"graph/HCLG.fst written ({time.time() - t0:.1f} s)")
    opts = AlignOptions(beam=cfg.beam, retry_beam=cfg.retry_beam, acoustic_scale=cfg.acoustic_scale,
                        transition_scale=cfg.transition_scale, self_loop_scale=cfg.self_loop_scale,
                        last_resort_beam=cfg.last_resort_beam)
    for split in cfg.align_splits:
        b = bank if split == "train" else _load_split(data_dir, task, split, cfg, mean, std, progress)
        g = graphs if split == "train" else compile_graphs(model, lang, b.texts, b.cut_ids)
        a, like = align_bank(b, g, model, opts, cfg.num_jobs, progress, desc=f"align {split}")
        n_ok = write_alignments(out, split, b, a, model)
        say(f"ali_{split}.pt: {n_ok} of {len(b)} cuts aligned, avg log-like/frame "
            f"{like / max(1, sum(b.num_frames(i) for i in range(len(b)) if a[i] is not None)):.3f}")
    say(f"all done in {time.time() - t0:.1f} s")
    return model


def write_graph(model: GmmModel, lang: Lang, graph_dir: Path, weak: bool = False) -> kaldifst.StdVectorFst:
    """``graph/HCLG.fst`` (self-loop scale 0.1) and ``graph/words.txt``."""
    graph_dir.mkdir(parents=True, exist_ok=True)
    hclg = make_hclg(lang, model.tree, model.tm, lang.G(weak=weak), self_loop_scale=0.1)
    write_fst(hclg, graph_dir / "HCLG.fst")
    write_bytes(graph_dir / "words.txt", (lang.dir / "words.txt").read_bytes())
    return hclg


def write_alignments(out: Path, split: str, bank: FeatureBank, alis: list[list[int] | None], model: GmmModel) -> int:
    """``ali_<split>.pt`` for the aligned cuts; the others go to ``ali_<split>_excluded.txt``."""
    tid2pdf, tid2phone = _tid_arrays(model.tm)
    ids, tids, pdfs, phones, excluded = [], [], [], [], []
    for i, a in enumerate(alis):
        if a is None:
            log.warning("cut '%s' (%s) could not be aligned even with the retry and last-resort beams; "
                        "excluded from ali_%s.pt", bank.cut_ids[i], split, split)
            excluded.append(bank.cut_ids[i])
            continue
        t = np.asarray(a, dtype=np.int64)
        if t.size != bank.num_frames(i):
            raise AssertionError(f"alignment of {bank.cut_ids[i]} has {t.size} frames, features {bank.num_frames(i)}")
        ids.append(bank.cut_ids[i])
        tids.append(torch.from_numpy(t.astype(np.int32)))
        pdfs.append(torch.from_numpy(tid2pdf[t].astype(np.int32)))
        phones.append(torch.from_numpy(tid2phone[t].astype(np.int32)))
    obj = {"cut_ids": ids, "tids": tids, "pdfs": pdfs, "phones": phones, "num_pdfs": int(model.num_pdfs)}
    save_torch(obj, out / f"ali_{split}.pt")
    write_text(out / f"ali_{split}_excluded.txt", "".join(f"{c}\talignment failed\n" for c in excluded))
    return len(ids)


ALI_KEYS = ("cut_ids", "tids", "pdfs", "phones", "num_pdfs")


def load_alignments(path: str | Path) -> dict:
    """Read ``ali_<split>.pt`` (``torch.load(weights_only=True)``); a missing, truncated or
    tampered file, or one without the alignment keys, is a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"alignment file not found: {path}; run `hfasr gmm` first")
    return load_torch(path, "an alignment file written by `hfasr gmm` or `hfasr align`", ALI_KEYS)


__all__ = ["GmmConfig", "accumulate", "equal_align", "load_alignments", "train_gmm", "update",
           "write_alignments", "write_graph"]
