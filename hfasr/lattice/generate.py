"""Denominator lattices for sequence training (``hfasr lattices``).

For every cut of a split: the CE model's pseudo log-likelihoods, decoded with
``LatticeSimpleDecoder`` over an HCLG built from the *weak* (unigram) LM ``G_weak`` at acoustic
scale κ (Kaldi nnet1's ``make_denlats.sh``: unigram LM, κ = 0.1, lattice beam 6-8), converted
to a top-sorted :class:`~hfasr.lattice.tensors.Lattice` and packed
(:class:`~hfasr.lattice.store.PackedLattices`: per arc source/target state and transition-id
as int32 and the graph cost as float32, 16 bytes, per state its time as int32, about 18.5 bytes
per arc in all; word ids only with ``keep_words``). Acoustic scores are not stored: the criteria
recompute them from the current model at every evaluation; the pdf of an arc is
``tid2pdf[tid]``, its frame the time of its source state.

Output, one shard per job (Kaldi's ``lat.JOB.gz``) and an index (both readable with
``torch.load(weights_only=True)``)::

    <out>/lats_<split>.<job>.pt     PackedLattices.to_dict() + {"key": str, "failed": {cut_id: reason}}
    <index>/lats_<split>.index.pt   {"format", "shards": [{"file", "cut_ids", "key"}], "tid2pdf",
                                     "tid2phone", "silence_phones", "acoustic_scale", "beam",
                                     "lattice_beam", "model", "num_lattices", "num_arcs",
                                     "num_frames", "failed"}

The cuts are split into ``num_shards`` contiguous shards (default: one per ``shard_utterances``
cuts, at least ``num_jobs``, so that the stage's memory stays bounded on any corpus). A shard is
written atomically when all its cuts are decoded; its ``key`` hashes everything it depends on
(model, prior, graph, transition model, options, its cut ids), so a rerun after an interruption
skips every shard already complete for the same inputs (resume per shard) and redoes the
others. The log-likelihoods are computed one shard at a time (memory: one shard's). Decoding
runs in ``num_jobs`` worker processes (fork); a worker that dies, or no result for
``worker_timeout`` seconds, is a :class:`LatticeWorkerError` naming the stage, never a hang.

The numerator is the forced alignment (``ali_<split>.pt`` of ``hfasr gmm``), read at training
time. Cuts whose decoding fails (no surviving token) are listed in ``failed`` and skipped by
the trainer. The single-file ``lats_<split>.pt`` of earlier versions is still read
(:func:`load_lattices`, :func:`hfasr.lattice.store.load_lattice_dir`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing as mp
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hfasr.config import bounded, check_ranges
from hfasr.errors import DataError, HfasrError
from hfasr.fileio import load_torch, save_torch
from hfasr.lattice.store import (
    FORMAT,
    INDEX_FORMAT,
    PackedLattices,
    index_path,
    legacy_path,
    load_lattice_dir,
    shard_key,
    shard_path,
)
from hfasr.lattice.tensors import Lattice

log = logging.getLogger(__name__)


class LatticeWorkerError(HfasrError):
    """A decoding worker process died or stopped answering."""


@dataclass
class LatticeConfig:
    """Options of ``hfasr lattices``."""

    acoustic_scale: float = bounded(0.1, gt=0)  # κ of the decoding (and the usual κ of the criteria)
    # decoding beam; there is no max_active: LatticeSimpleDecoder, the only decoder of the Python
    # bindings (kaldi_decoder) that returns lattices, has none (LatticeFasterDecoder is not bound)
    beam: float = bounded(13.0, gt=0)
    lattice_beam: float = bounded(6.0, gt=0)  # lattice pruning beam (larger: richer lattices, slower training)
    num_jobs: int = bounded(2, ge=1)  # decoding processes
    # lattice files per split, the unit of resumption and of the stage's memory (a shard's
    # log-likelihoods and lattices are held until it is written); 0: one shard per
    # shard_utterances cuts, at least num_jobs
    num_shards: int = bounded(0, ge=0)
    shard_utterances: int = bounded(1000, ge=1)  # num_shards 0: cuts per shard at most
    num_threads: int = bounded(1, ge=1)  # torch threads for the model's forward pass
    max_arcs_per_frame: int = bounded(0, ge=0)  # > 0: cuts with denser lattices are listed as failed (memory guard)
    keep_words: bool = False  # also store the word id of every arc (+4 bytes per arc; no criterion needs it)
    worker_timeout: float = bounded(600.0, gt=0)  # seconds without a lattice from the workers: an error

    def __post_init__(self) -> None:
        check_ranges(self)


def lattice_path(lat_dir: str | Path, split: str) -> Path:
    """The file to give :func:`load_lattices` for a split: its index ``lats_<split>.index.pt``
    or, in a lattice dir of earlier versions without one, ``lats_<split>.pt``."""
    idx, old = index_path(lat_dir, split), legacy_path(lat_dir, split)
    return old if not idx.is_file() and old.is_file() else idx


def tensors_to_lattice(lt, tid2pdf: torch.Tensor) -> Lattice:
    """:class:`hfasr.decode.decoder.LatticeTensors` (raw decoder lattice) → :class:`Lattice`:
    pdf = tid2pdf[ilabel] (−1 for epsilon arcs), frame = frames consumed before the arc's
    source state, final cost = the graph part of the final weight."""
    tid2pdf = torch.as_tensor(tid2pdf)
    emit = lt.ilabel > 0
    pdf = torch.full_like(lt.ilabel, -1)
    pdf[emit] = tid2pdf[lt.ilabel[emit]].to(pdf.dtype)
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


def _call_one(item: tuple[str, np.ndarray]) -> tuple[str, dict | None, str]:
    return _one(item)  # looked up at call time (tests replace _one before the workers fork)


def _as_torch(d: dict | None) -> dict | None:
    return None if d is None else {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in d.items()}


def _file_digest(h, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def _base_key(model_path: Path, graph: Path, tid2pdf: np.ndarray, cfg: LatticeConfig, task: str, split: str):
    """A hash of everything a shard depends on but its cut ids."""
    h = hashlib.blake2b(digest_size=16)
    for p in (model_path, model_path.parent / "prior.pt", graph):
        _file_digest(h, p)
    h.update(np.ascontiguousarray(tid2pdf).tobytes())
    h.update(repr((cfg.acoustic_scale, cfg.beam, cfg.lattice_beam, cfg.max_arcs_per_frame, cfg.keep_words,
                   task, split, FORMAT)).encode())
    return h


def _shard_key(base, cut_ids: list[str]) -> str:
    h = base.copy()
    h.update("\n".join(cut_ids).encode())
    return h.hexdigest()


def generate_lattices(model_path: str | Path, data_dir: str | Path, task: str, split: str,
                      lang_dir: str | Path, gmm_dir: str | Path, out_dir: str | Path,
                      cfg: LatticeConfig | None = None, progress: bool = True,
                      graph_dir: str | Path | None = None, index_dir: str | Path | None = None,
                      work_dir: str | Path | None = None) -> Path:
    """Write the shards ``lats_<split>.<job>.pt`` into ``work_dir`` (default: ``out_dir``),
    reusing those complete for the same inputs in ``out_dir`` or ``work_dir``, then the index
    ``<index_dir>/lats_<split>.index.pt`` (default ``index_dir``: ``out_dir``); each file
    atomically (module docstring). The caller moves the new shards from ``work_dir`` to
    ``out_dir`` with the index (``hfasr lattices``: when every split succeeded). Builds
    ``<graph_dir>/HCLG.fst`` (HCLG over ``G_weak``; default ``graph_dir``: ``<out_dir>/graph_weak``)
    on first use. Returns the index's path."""
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
    if not cuts:
        raise DataError(f"{m}: no cuts")
    model = load_model(model_path)
    prior = load_prior(model_path.parent / "prior.pt")
    if prior.numel() != int(tid2pdf.max()) + 1:
        raise DataError(f"{model_path}: {prior.numel()} pdfs, but {gmm_dir}/final.mdl has {int(tid2pdf.max()) + 1}")

    t0 = time.time()
    n_sh = min(cfg.num_shards or max(cfg.num_jobs, -(-len(cuts) // cfg.shard_utterances)), len(cuts))
    bounds = [len(cuts) * k // n_sh for k in range(n_sh + 1)]
    base = _base_key(model_path, graph, tid2pdf, cfg, task, split)
    shards, failed = [], {}
    n_lat = arcs = frames = nbytes = reused = 0
    for k in range(n_sh):
        part = cuts[bounds[k]:bounds[k + 1]]
        ids = [c.id for c in part]
        key, path = _shard_key(base, ids), shard_path(out, split, k + 1)
        if shard_key(path) == key:
            reused += 1
        elif work_dir is not None and shard_key(shard_path(work_dir, split, k + 1)) == key:
            reused += 1
            path = shard_path(work_dir, split, k + 1)
        else:
            path = shard_path(work_dir or out, split, k + 1)
            items = []
            for c in tqdm(part, desc=f"loglikes {task}/{split} shard {k + 1}/{n_sh}", disable=not progress,
                          leave=False):
                ll = compute_loglikes(model, torch.from_numpy(c.load_features()), prior, name=f"cut '{c.id}'")
                items.append((c.id, ll.numpy()))
            desc = f"lattices (shard {k + 1}/{n_sh}) {task}/{split}"
            res = decode_to_lattices(graph, tid2pdf, items, cfg, progress, desc)
            del items
            _write_shard(path, key, res, tid2pdf, cfg, task, split)
        st, sh_failed = _shard_stats(path)
        shards.append({"file": path.name, "cut_ids": st.cut_ids, "key": key})
        failed.update(sh_failed)
        n_lat += len(st)
        arcs += st.num_arcs
        frames += st.total_frames
        nbytes += path.stat().st_size
    if not n_lat:
        raise DataError(f"no lattice could be generated for {task}/{split} (first failure: "
                        f"{next(iter(failed.items()), ('-', '-'))})")
    ipath = index_path(index_dir or out, split)
    save_torch({"format": INDEX_FORMAT, "shards": shards, "tid2pdf": torch.from_numpy(tid2pdf),
                "tid2phone": torch.from_numpy(tid2phone), "silence_phones": silence,
                "acoustic_scale": cfg.acoustic_scale, "beam": cfg.beam, "lattice_beam": cfg.lattice_beam,
                "model": str(model_path), "num_lattices": n_lat, "num_arcs": arcs, "num_frames": frames,
                "bytes": nbytes, "failed": failed}, ipath)
    log.info("%s: %d lattices in %d shards (%d reused; %d failed), %.1f arcs/frame, %.1f bytes/arc, %.1f s",
             ipath, n_lat, n_sh, reused, len(failed), arcs / max(frames, 1), nbytes / max(arcs, 1), time.time() - t0)
    return ipath


def _write_shard(path: Path, key: str, results, tid2pdf: np.ndarray, cfg: LatticeConfig, task: str,
                 split: str) -> None:
    ids, lats, failed, partial = [], [], {}, 0
    for cid, d, note in results:
        if d is None:
            failed[cid] = note
            log.warning("cut '%s' (%s/%s): no lattice: %s", cid, task, split, note)
            continue
        partial += bool(note)
        ids.append(cid)
        lats.append(d)
    st = PackedLattices.from_lattices(ids, lats, torch.from_numpy(tid2pdf), keep_words=cfg.keep_words)
    save_torch({**st.to_dict(), "key": key, "failed": failed}, path)
    if partial:
        log.info("%s: %d partial lattices (no final state reached)", path, partial)


def _shard_stats(path: Path) -> tuple[PackedLattices, dict]:
    from hfasr.lattice.store import read_shard

    st, info = read_shard(path)
    return st, info["failed"]


def decode_to_lattices(graph: str | Path, tid2pdf: np.ndarray, items: list[tuple[str, np.ndarray]],
                       cfg: LatticeConfig, progress: bool = False, desc: str = "lattices"
                       ) -> list[tuple[str, dict | None, str]]:
    """``(cut_id, Lattice.to_dict() or None, note)`` for ``(cut_id, loglikes (T, K))`` items,
    in order, decoded over ``graph`` in ``cfg.num_jobs`` processes. The graph is read here, before
    the workers fork (they inherit it): an unreadable graph is a DataError naming it, never a
    pool of workers failing at start. A worker that dies, or no result for
    ``cfg.worker_timeout`` seconds, is a :class:`LatticeWorkerError` naming ``desc``."""
    bar = tqdm(total=len(items), desc=desc, disable=not progress, leave=False)
    tid2pdf = tid2pdf.numpy() if isinstance(tid2pdf, torch.Tensor) else np.asarray(tid2pdf)
    _init(str(graph), tid2pdf, cfg)
    try:
        if cfg.num_jobs > 1 and len(items) > 1:
            results = _decode_in_pool(items, cfg, bar, desc)
        else:
            results = []
            for it in items:
                results.append(_one(it))
                bar.update(1)
    finally:
        bar.close()
    return [(cid, _as_torch(d), note) for cid, d, note in results]


def _decode_in_pool(items, cfg: LatticeConfig, bar, desc: str) -> list:
    """Decode in a process pool, results in order; a bounded number of items in flight."""
    ex = ProcessPoolExecutor(max_workers=min(cfg.num_jobs, len(items)), mp_context=mp.get_context("fork"))
    results, pending, ok = [], deque(), False
    window = 4 * cfg.num_jobs
    it = iter(items)
    try:
        for x in it:
            pending.append(ex.submit(_call_one, x))
            if len(pending) >= window:
                break
        while pending:
            fut = pending.popleft()
            try:
                results.append(fut.result(timeout=cfg.worker_timeout))
            except BrokenProcessPool as e:
                raise LatticeWorkerError(f"hfasr lattices ({desc}): a decoding worker process died (killed, "
                                         f"out of memory or crashed) after {len(results)} of {len(items)} "
                                         f"cuts") from e
            except TimeoutError as e:
                raise LatticeWorkerError(f"hfasr lattices ({desc}): no lattice from the decoding workers for "
                                         f"{cfg.worker_timeout:g} s (worker_timeout) after {len(results)} of "
                                         f"{len(items)} cuts: a worker hangs") from e
            bar.update(1)
            nxt = next(it, None)
            if nxt is not None:
                pending.append(ex.submit(_call_one, nxt))
        ok = True
    finally:
        if not ok:  # a hung worker never returns: end the workers, do not wait for them
            for p in list((getattr(ex, "_processes", None) or {}).values()):
                p.kill()
        ex.shutdown(wait=ok, cancel_futures=True)
    return results


def load_lattices(path: str | Path) -> dict:
    """Read and check a lattice file: an index (``lats_<split>.index.pt``: the whole split), a
    shard, or the single-file ``lats_<split>.pt`` of earlier versions; DataError naming the
    file. Returns the meta data with ``"cut_ids"``, ``"stores"``
    (:class:`~hfasr.lattice.store.PackedLattices` per shard) and ``"lattices"`` (Lattice-like views)."""
    from hfasr.lattice.store import _load_legacy, read_shard

    path = Path(path)
    name = path.name
    is_index = name.startswith("lats_") and name.endswith(".index.pt")
    if not path.is_file():
        if is_index:  # lattice_path() of a lattice dir in the single-file format of earlier versions
            return load_lattice_dir(path.parent, name[len("lats_"):-len(".index.pt")])
        raise DataError(f"lattice file not found: {path}; run `hfasr lattices` first")
    d = load_torch(path, "a lattice file written by `hfasr lattices`")
    fmt = d.get("format") if isinstance(d, dict) else None
    if fmt == INDEX_FORMAT:
        if not is_index:
            raise DataError(f"{path}: a lattice index must be named lats_<split>.index.pt")
        return load_lattice_dir(path.parent, name[len("lats_"):-len(".index.pt")])
    if fmt == FORMAT:
        st, info = read_shard(path)
        meta = {"tid2pdf": st.tid2pdf.long(), "acoustic_scale": math.nan, "failed": info["failed"]}
        meta.update(cut_ids=st.cut_ids, stores=[st], lattices=[st[i] for i in range(len(st))])
        return meta
    return _load_legacy(path)


def legacy_lattice_path(lat_dir: str | Path, split: str) -> Path:
    """``lats_<split>.pt`` of earlier versions."""
    return legacy_path(lat_dir, split)
