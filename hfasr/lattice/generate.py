"""Denominator lattices for sequence training (``hfasr lattices``).

For every cut of a split: the CE model's pseudo log-likelihoods, decoded with
``LatticeSimpleDecoder`` over an HCLG built from the *weak* (unigram) LM ``G_weak`` at acoustic
scale κ (Kaldi nnet1's ``make_denlats.sh``: unigram LM, κ = 0.1, lattice beam 6-8), converted
to a top-sorted :class:`~hfasr.lattice.tensors.Lattice` (per arc: source/target state, frame,
pdf id, transition-id, word id, graph cost). Acoustic scores are not stored: the criteria
recompute them from the current model at every evaluation.

Output ``<out>/lats_<split>.pt`` (readable with ``torch.load(weights_only=True)``)::

    {"cut_ids": [...], "lattices": [Lattice.to_dict(), ...],
     "tid2pdf": LongTensor, "tid2phone": LongTensor, "silence_phones": [int],
     "acoustic_scale": κ, "beam": ..., "lattice_beam": ..., "model": str,
     "failed": {cut_id: reason}}

The numerator is the forced alignment (``ali_<split>.pt`` of ``hfasr gmm``), read at training
time. Cuts whose decoding fails (no surviving token) are listed in ``failed`` and skipped by
the trainer. Decoding runs in ``num_jobs`` processes (fork) and shows a progress bar.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hfasr.config import bounded, check_ranges
from hfasr.errors import DataError
from hfasr.fileio import load_torch, save_torch
from hfasr.lattice.tensors import Lattice

log = logging.getLogger(__name__)


@dataclass
class LatticeConfig:
    """Options of ``hfasr lattices``."""

    acoustic_scale: float = bounded(0.1, gt=0)  # κ of the decoding (and the usual κ of the criteria)
    beam: float = bounded(13.0, gt=0)  # decoding beam
    lattice_beam: float = bounded(6.0, gt=0)  # lattice pruning beam (larger: richer lattices, slower training)
    num_jobs: int = bounded(2, ge=1)  # decoding processes
    num_threads: int = bounded(1, ge=1)  # torch threads for the model's forward pass
    max_arcs_per_frame: int = bounded(0, ge=0)  # > 0: cuts with denser lattices are listed as failed (memory guard)

    def __post_init__(self) -> None:
        check_ranges(self)


def lattice_path(lat_dir: str | Path, split: str) -> Path:
    return Path(lat_dir) / f"lats_{split}.pt"


def tensors_to_lattice(lt, tid2pdf: torch.Tensor) -> Lattice:
    """:class:`hfasr.decode.decoder.LatticeTensors` (raw decoder lattice) → :class:`Lattice`:
    pdf = tid2pdf[ilabel] (−1 for epsilon arcs), frame = frames consumed before the arc's
    source state, final cost = the graph part of the final weight."""
    emit = lt.ilabel > 0
    pdf = torch.full_like(lt.ilabel, -1)
    pdf[emit] = tid2pdf[lt.ilabel[emit]]
    frame = lt.state_frame[lt.src] if lt.num_arcs else lt.src.clone()
    return Lattice(num_states=lt.num_states, num_frames=lt.num_frames, src=lt.src.clone(), dst=lt.dst.clone(),
                   frame=frame, pdf=pdf, graph_cost=lt.graph_cost.double(),
                   final_cost=lt.final_graph_cost.double(), tid=lt.ilabel.clone(), word=lt.olabel.clone())


# ------------------------------------------------------------------------ decoding in workers
_W: dict = {}


def _init(graph: str, tid2pdf: np.ndarray, cfg: LatticeConfig) -> None:
    from hfasr.decode.decoder import read_graph

    _W.update(graph=read_graph(graph), tid2pdf=tid2pdf, cfg=cfg)


def _one(item: tuple[str, np.ndarray]) -> tuple[str, dict | None, str]:
    from hfasr.decode.decoder import decode_lattice, lattice_to_tensors

    cid, ll = item
    cfg: LatticeConfig = _W["cfg"]
    T = ll.shape[0]
    try:
        res = decode_lattice(_W["graph"], _W["tid2pdf"], ll, cfg.acoustic_scale, beam=cfg.beam,
                             lattice_beam=cfg.lattice_beam)
        if res.best.failed:
            return cid, None, "decoding failed (no surviving token)"
        lt = lattice_to_tensors(res.lattice)
    except ValueError as e:
        return cid, None, f"lattice conversion failed: {e}"
    if lt.num_states == 0 or lt.num_frames != T:
        return cid, None, f"lattice covers {lt.num_frames} of {T} frames"
    if cfg.max_arcs_per_frame and lt.num_arcs > cfg.max_arcs_per_frame * T:
        return cid, None, f"lattice too dense: {lt.num_arcs} arcs for {T} frames"
    lat = tensors_to_lattice(lt, torch.from_numpy(_W["tid2pdf"]))
    note = "partial (no final state reached)" if res.best.partial else ""
    # numpy, not torch: a tensor returned from a worker travels as a shared-memory file
    # descriptor (thousands of lattices exhaust the descriptor limit and hang the pool)
    return cid, {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in lat.to_dict().items()}, note


def _as_torch(d: dict | None) -> dict | None:
    return None if d is None else {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in d.items()}


def generate_lattices(model_path: str | Path, data_dir: str | Path, task: str, split: str,
                      lang_dir: str | Path, gmm_dir: str | Path, out_dir: str | Path,
                      cfg: LatticeConfig | None = None, progress: bool = True,
                      graph_dir: str | Path | None = None) -> Path:
    """Write ``<out_dir>/lats_<split>.pt`` (module docstring; atomically); builds
    ``<graph_dir>/HCLG.fst`` (HCLG over ``G_weak``; default ``graph_dir``: ``<out_dir>/graph_weak``)
    on first use. Returns the lattice file's path."""
    from hfasr.data.corpora import load_cuts, manifest_path
    from hfasr.gmm.model import GmmModel
    from hfasr.gmm.train import _tid_arrays, write_graph
    from hfasr.lang.prepare import Lang
    from hfasr.models import compute_loglikes, load_model, load_prior

    cfg = cfg or LatticeConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.num_threads)
    gmm_dir, model_path = Path(gmm_dir), Path(model_path)
    gmm = GmmModel.read(gmm_dir / "final.mdl", gmm_dir / "tree")
    lang = Lang(lang_dir)
    graph = Path(graph_dir or out / "graph_weak") / "HCLG.fst"
    if not graph.is_file():
        t0 = time.time()
        write_graph(gmm, lang, graph.parent, weak=True)
        log.info("%s written (%.1f s)", graph, time.time() - t0)
    tid2pdf, tid2phone = _tid_arrays(gmm.tm)
    sil_name = "SIL"
    cfg_yaml = Path(lang_dir) / "config.yaml"
    if cfg_yaml.is_file():
        import yaml

        sil_name = (yaml.safe_load(cfg_yaml.read_text()) or {}).get("sil_phone", "SIL")
    silence = [lang.phones[sil_name]] if sil_name in lang.phones else []

    m = manifest_path(data_dir, task, split, "feats")
    if not m.is_file():
        raise DataError(f"{m}: features manifest not found; run `hfasr features` first")
    cuts = [c for c in load_cuts(m) if "_sp" not in c.id]  # speed-perturbed copies: no lattices
    model = load_model(model_path)
    prior = load_prior(model_path.parent / "prior.pt")
    if prior.numel() != int(tid2pdf.max()) + 1:
        raise DataError(f"{model_path}: {prior.numel()} pdfs, but {gmm_dir}/final.mdl has {int(tid2pdf.max()) + 1}")
    items = []
    for c in tqdm(cuts, desc=f"loglikes {task}/{split}", disable=not progress, leave=False):
        ll = compute_loglikes(model, torch.from_numpy(c.load_features()), prior, name=f"cut '{c.id}'")
        items.append((c.id, ll.numpy()))

    t0 = time.time()
    ids, lats, failed, partial = [], [], {}, 0
    results = decode_to_lattices(graph, tid2pdf, items, cfg, progress, desc=f"lattices {task}/{split}")
    arcs = frames = 0
    for cid, d, note in results:
        if d is None:
            failed[cid] = note
            log.warning("cut '%s' (%s/%s): no lattice: %s", cid, task, split, note)
            continue
        partial += bool(note)
        ids.append(cid)
        lats.append(d)
        arcs += int(d["src"].numel())
        frames += int(d["num_frames"])
    if not ids:
        raise DataError(f"no lattice could be generated for {task}/{split} (first failure: "
                        f"{next(iter(failed.items()), ('-', '-'))})")
    path = lattice_path(out, split)
    save_torch({"cut_ids": ids, "lattices": lats, "tid2pdf": torch.from_numpy(tid2pdf),
                "tid2phone": torch.from_numpy(tid2phone), "silence_phones": silence,
                "acoustic_scale": cfg.acoustic_scale, "beam": cfg.beam, "lattice_beam": cfg.lattice_beam,
                "model": str(model_path), "failed": failed}, path)
    log.info("%s: %d lattices (%d failed, %d partial), %.1f arcs/frame, %.1f s", path, len(ids), len(failed),
             partial, arcs / max(frames, 1), time.time() - t0)
    return path


def decode_to_lattices(graph: str | Path, tid2pdf: np.ndarray, items: list[tuple[str, np.ndarray]],
                       cfg: LatticeConfig, progress: bool = False, desc: str = "lattices"
                       ) -> list[tuple[str, dict | None, str]]:
    """``(cut_id, Lattice.to_dict() or None, note)`` for ``(cut_id, loglikes (T, K))`` items,
    in order, decoded over ``graph`` in ``cfg.num_jobs`` processes. The graph is read here, before
    the workers fork (they inherit it): an unreadable graph is a DataError naming it, never a
    pool of workers failing at start."""
    bar = tqdm(total=len(items), desc=desc, disable=not progress, leave=False)
    _init(str(graph), tid2pdf, cfg)
    if cfg.num_jobs > 1:
        ctx = mp.get_context("fork")
        with ctx.Pool(cfg.num_jobs) as pool:
            results = list(_track(pool.imap(_one, items, chunksize=4), bar))
    else:
        results = list(_track(map(_one, items), bar))
    bar.close()
    return [(cid, _as_torch(d), note) for cid, d, note in results]


def _track(it, bar):
    for x in it:
        bar.update(1)
        yield x


def load_lattices(path: str | Path) -> dict:
    """Read and check a ``lats_<split>.pt`` file; DataError naming the file. The lattices come
    back as :class:`Lattice` objects under ``"lattices"``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"lattice file not found: {path}; run `hfasr lattices` first")
    need = ("cut_ids", "lattices", "tid2pdf", "tid2phone", "silence_phones", "acoustic_scale")
    d = load_torch(path, "a lattice file written by `hfasr lattices`", need)
    if len(d["cut_ids"]) != len(d["lattices"]):
        raise DataError(f"{path}: {len(d['cut_ids'])} cut ids but {len(d['lattices'])} lattices")
    try:
        d["lattices"] = [Lattice.from_dict(x) for x in d["lattices"]]
        scale = float(d["acoustic_scale"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise DataError(f"{path}: not a lattice file written by `hfasr lattices` ({type(e).__name__}: {e})") from e
    if not math.isfinite(scale):
        raise DataError(f"{path}: bad acoustic_scale")
    return d
