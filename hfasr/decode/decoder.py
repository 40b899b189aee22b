"""Decoding per-frame pdf log-likelihoods with an HCLG graph.

The graph's input labels are transition-ids (1-based). For a hybrid model the per-frame scores
are ``loglikes[t, pdf] = log p(pdf | x_t) - log prior(pdf)``; the decoder sees

    M[t, tid - 1] = acoustic_scale * loglikes[t, tid2pdf[tid]]

through a ``DecodableCtc`` (whose ``log_likelihood(t, index)`` is ``M[t, index - 1]``), so every
cost reported here is in the *scaled* domain: ``acoustic_cost == -sum_t M[t, tid_t - 1]`` and
``graph_cost`` is the HCLG cost of the path (LM + lexicon + transition probabilities).

Two decoders of kaldi-decoder are used:

* best path (:func:`decode_loglikes`): ``kaldi_decoder.FasterDecoder`` -- Kaldi's
  beam/max-active token-passing decoder. It needs no transition model and reports whether a
  final state was reached. khg's ``decode_utterance_lattice_faster`` (LatticeFasterDecoder) gave
  the same words; it was 1.3-1.7x faster where ``max_active`` binds (acoustic scale 0.1, noisy
  scores, 579k-state trigram HCLG) and 2-3x slower on easy utterances, but it needs a
  TransitionModel, cannot flag a partial result, and does not split graph / acoustic costs;
* lattices (:func:`decode_lattice`): ``kaldi_decoder.LatticeSimpleDecoder`` -- the only decoder
  with a lattice accessor in Python. It has no ``max_active``, so it is several times slower
  than the best-path search on large graphs: keep ``beam`` moderate. Its raw (state-level, not
  determinized) lattice is converted to tensors by :func:`lattice_to_tensors`.

A result is *partial* when no final state of the graph was active at the last frame; the best
path then ends in the best non-final state (Kaldi's ``--allow-partial=true``) and is flagged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hfasr._kaldi import kaldi_decoder, kaldifst
from hfasr.config import bounded, check_ranges, ordered
from hfasr.decode.score import ScoreResult, score
from hfasr.errors import DataError

log = logging.getLogger(__name__)

# The graph type the decoders take.
Fst = kaldifst.StdVectorFst


@dataclass
class DecodeResult:
    """The best path of one utterance.

    ``words``: word ids (epsilons removed); ``tids``: the transition-id of every frame;
    ``graph_cost``/``acoustic_cost``: the path's costs (negated log-scores; the acoustic part
    already includes the acoustic scale); ``partial``: no final state was reached (or, with empty
    ``tids`` and infinite costs, the search failed altogether).
    """

    words: list[int]
    tids: list[int]
    graph_cost: float
    acoustic_cost: float
    partial: bool = False

    @property
    def total_cost(self) -> float:
        return self.graph_cost + self.acoustic_cost

    @property
    def failed(self) -> bool:
        return self.partial and math.isinf(self.total_cost)


@dataclass
class DecoderConfig:
    """Search options (Kaldi's names and meanings; costs are in the acoustically scaled domain)."""

    beam: float = bounded(13.0, gt=0)  # main search beam
    lattice_beam: float = bounded(6.0, gt=0)  # lattice pruning beam (lattice decoding only)
    max_active: int = bounded(7000, ge=2)  # most active states per frame (best-path decoding only)
    min_active: int = bounded(20, ge=0)  # fewest active states per frame (best-path decoding only)
    prune_interval: int = bounded(25, ge=1)  # frames between lattice pruning passes (lattice decoding only)

    def __post_init__(self) -> None:
        check_ranges(self)
        ordered(self, "min_active", "max_active", strict=True)  # as Kaldi's decoders assert


def read_graph(path: str | Path) -> Fst:
    """Read an HCLG written with ``fst.write(path)`` (OpenFst binary); DataError naming the file
    if missing, truncated or not an FST (:func:`hfasr._kaldi.read_fst`)."""
    from hfasr._kaldi import read_fst

    return read_fst(path, "a decoding graph (HCLG) written by `hfasr gmm`")


def _numpy(x: torch.Tensor | np.ndarray, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def scaled_tid_scores(tid2pdf: torch.Tensor | np.ndarray, loglikes: torch.Tensor | np.ndarray,
                      acoustic_scale: float) -> np.ndarray:
    """``M[t, tid - 1] = acoustic_scale * loglikes[t, tid2pdf[tid]]`` as contiguous float32."""
    t2p = _numpy(tid2pdf, np.int64)
    ll = _numpy(loglikes)
    if ll.ndim != 2:
        raise DataError(f"log-likelihoods must be a (T, num_pdfs) matrix, got shape {tuple(ll.shape)}")
    if t2p.ndim != 1 or t2p.shape[0] < 2:
        raise DataError("tid2pdf must be a vector of length num_transition_ids + 1 (entry 0 unused)")
    need = int(t2p[1:].max()) + 1
    if ll.shape[1] < need:
        raise DataError(f"log-likelihoods have {ll.shape[1]} columns but the transition model "
                        f"has {need} pdfs")
    return np.ascontiguousarray(ll[:, t2p[1:]] * acoustic_scale, dtype=np.float32)


def _best_path(lat: kaldifst.Lattice, partial: bool) -> DecodeResult:
    ok, isyms, osyms, w = kaldifst.get_linear_symbol_sequence(lat)
    if not ok:
        raise RuntimeError("best path is not linear")  # cannot happen for a best path
    return DecodeResult(words=[o for o in osyms if o != 0], tids=[i for i in isyms if i != 0],
                        graph_cost=float(w.value1), acoustic_cost=float(w.value2), partial=partial)


def _failed() -> DecodeResult:
    return DecodeResult(words=[], tids=[], graph_cost=math.inf, acoustic_cost=math.inf, partial=True)


def decode_loglikes(hclg: Fst | str | Path, tid2pdf: torch.Tensor | np.ndarray,
                    loglikes: torch.Tensor | np.ndarray, acoustic_scale: float,
                    beam: float = 13.0, lattice_beam: float = 6.0, max_active: int = 7000,
                    min_active: int = 20) -> DecodeResult:
    """Best path of one utterance (``FasterDecoder``); see the module docstring.

    ``hclg`` is the graph or its file (read on every call: pass the graph when decoding many).
    ``lattice_beam`` is accepted for symmetry with :func:`decode_lattice` and ignored: the
    best path does not depend on it.
    """
    del lattice_beam
    if isinstance(hclg, (str, Path)):
        hclg = read_graph(hclg)
    m = scaled_tid_scores(tid2pdf, loglikes, acoustic_scale)
    opts = kaldi_decoder.FasterDecoderOptions(beam=beam, max_active=max_active,
                                              min_active=min_active)
    dec = kaldi_decoder.FasterDecoder(hclg, opts)
    dec.decode(kaldi_decoder.DecodableCtc(m))
    final = bool(dec.reached_final())
    ok, lat = dec.get_best_path(use_final_probs=True)
    if not ok or lat.num_states == 0:
        return _failed()
    return _best_path(lat, partial=not final)


@dataclass
class LatticeDecodeResult:
    """:func:`decode_lattice`'s output: the best path and the raw state-level lattice."""

    best: DecodeResult
    lattice: kaldifst.Lattice  # raw Kaldi lattice (ilabel tid, olabel word, (graph, acoustic))


def decode_lattice(hclg: Fst | str | Path, tid2pdf: torch.Tensor | np.ndarray,
                   loglikes: torch.Tensor | np.ndarray, acoustic_scale: float,
                   beam: float = 13.0, lattice_beam: float = 6.0,
                   prune_interval: int = 25) -> LatticeDecodeResult:
    """Decode with ``LatticeSimpleDecoder``; the best path and the raw lattice.

    Convert the lattice with :func:`lattice_to_tensors`. When no final
    state was reached, the raw lattice's states at the last frame are all final (cost 0) and
    ``best.partial`` is set. A zero-frame input gives a failed result and an empty lattice.
    """
    if isinstance(hclg, (str, Path)):
        hclg = read_graph(hclg)
    m = scaled_tid_scores(tid2pdf, loglikes, acoustic_scale)
    if m.shape[0] == 0:  # LatticeSimpleDecoder asserts num_frames > 0
        return LatticeDecodeResult(best=_failed(), lattice=kaldifst.Lattice())
    cfg = kaldi_decoder.LatticeSimpleDecoderConfig(beam=beam, lattice_beam=lattice_beam,
                                                   prune_interval=prune_interval)
    dec = kaldi_decoder.LatticeSimpleDecoder(hclg, cfg)
    dec.decode(kaldi_decoder.DecodableCtc(m))
    final = math.isfinite(dec.final_relative_cost())
    ok, best = dec.get_best_path(use_final_probs=True)
    ok2, raw = dec.get_raw_lattice(use_final_probs=True)
    if not ok or not ok2 or best.num_states == 0:
        return LatticeDecodeResult(best=_failed(), lattice=kaldifst.Lattice())
    return LatticeDecodeResult(best=_best_path(best, partial=not final), lattice=raw)


# ------------------------------------------------------------------------ lattices as tensors


@dataclass
class LatticeTensors:
    """A raw state-level lattice as plain tensors (for lattice-based sequence training).

    States are renumbered in topological order (Kahn's algorithm), the start state is 0, and
    only states on some start-to-final path are kept. Arcs are sorted by source state. Per arc:
    ``src``, ``dst``, ``ilabel`` (transition-id, 0 = epsilon), ``olabel`` (word id, 0 = epsilon),
    ``graph_cost`` (Kaldi's ``value1``) and ``acoustic_cost`` (``value2``: ``-M[t, tid - 1]``,
    acoustic scale included). Per state: ``final_graph_cost``/``final_acoustic_cost`` (``inf``
    for non-final states) and ``state_frame``: the number of frames consumed before the state
    (non-decreasing in the state id), so an arc with ``ilabel != 0`` leaving state ``s``
    covers frame ``state_frame[s]``.
    """

    num_frames: int
    src: torch.Tensor  # LongTensor(A)
    dst: torch.Tensor  # LongTensor(A)
    ilabel: torch.Tensor  # LongTensor(A)
    olabel: torch.Tensor  # LongTensor(A)
    graph_cost: torch.Tensor  # FloatTensor(A)
    acoustic_cost: torch.Tensor  # FloatTensor(A)
    final_graph_cost: torch.Tensor  # FloatTensor(S)
    final_acoustic_cost: torch.Tensor  # FloatTensor(S)
    state_frame: torch.Tensor  # LongTensor(S)

    @property
    def num_states(self) -> int:
        return int(self.state_frame.numel())

    @property
    def num_arcs(self) -> int:
        return int(self.src.numel())


def _lattice_arcs(lat: kaldifst.Lattice) -> tuple[int, int, list[tuple], dict[int, tuple[float, float]]]:
    """(num_states, start, arcs, finals) of a Kaldi Lattice, read with the Lattice iterators."""
    import _kaldifst  # kaldifst 1.7.x has the Lattice state/arc iterators only in this module

    arcs: list[tuple] = []
    finals: dict[int, tuple[float, float]] = {}
    sit = _kaldifst._StateIteratorLattice(lat)
    while not sit.done:
        s = sit.value
        f = lat.final(s)
        if math.isfinite(f.value1) and math.isfinite(f.value2):
            finals[s] = (float(f.value1), float(f.value2))
        ait = _kaldifst._ArcIteratorLattice(lat, s)
        while not ait.done:
            a = ait.value
            arcs.append((s, a.nextstate, a.ilabel, a.olabel, float(a.weight.value1), float(a.weight.value2)))
            ait.next()
        sit.next()
    return lat.num_states, lat.start, arcs, finals


def lattice_to_tensors(lat: kaldifst.Lattice) -> LatticeTensors:
    """Convert a raw Kaldi lattice (:func:`decode_lattice`) into :class:`LatticeTensors`.

    Raw lattices are not sorted by state id and have epsilon-input arcs. This top-sorts them
    with Kahn's algorithm, taking among the ready states the one with the fewest frames first,
    so the new numbering is topological *and* ``state_frame`` is non-decreasing; a cycle is an
    error. States not both reachable from the start and able to reach a final state are
    dropped, and every path into a state must have consumed the same number of frames.
    """
    import heapq

    n, start, arcs, finals = _lattice_arcs(lat)
    empty = LatticeTensors(0, *(torch.zeros(0, dtype=torch.long) for _ in range(4)),
                           *(torch.zeros(0) for _ in range(4)), torch.zeros(0, dtype=torch.long))
    if n == 0 or start < 0 or not finals:
        return empty
    out_arcs: list[list[int]] = [[] for _ in range(n)]
    for k, a in enumerate(arcs):
        out_arcs[a[0]].append(k)
    # reachable from the start
    reach = [False] * n
    reach[start] = True
    stack = [start]
    while stack:
        for k in out_arcs[stack.pop()]:
            d = arcs[k][1]
            if not reach[d]:
                reach[d] = True
                stack.append(d)
    # Kahn's algorithm over the reachable part, fewest frames first
    indeg = [0] * n
    for a in arcs:
        if reach[a[0]]:
            indeg[a[1]] += 1
    frame = [-1] * n
    frame[start] = 0
    order: list[int] = []
    ready = [(0, start)]
    while ready:
        _, s = heapq.heappop(ready)
        order.append(s)
        for k in out_arcs[s]:
            _, d, ilabel = arcs[k][:3]
            t = frame[s] + (1 if ilabel != 0 else 0)
            if frame[d] == -1:
                frame[d] = t
            elif frame[d] != t:
                raise ValueError(f"lattice state {d} is reached after both {frame[d]} and {t} frames")
            indeg[d] -= 1
            if indeg[d] == 0:
                heapq.heappush(ready, (frame[d], d))
    if len(order) != sum(reach):
        raise ValueError("lattice has a cycle: cannot top-sort it")
    # co-accessible (can reach a final state), in reverse topological order
    coacc = [False] * n
    for s in reversed(order):
        coacc[s] = s in finals or any(coacc[arcs[k][1]] for k in out_arcs[s])
    if not coacc[start]:
        return empty
    keep = [s for s in order if coacc[s]]
    new_id = {s: i for i, s in enumerate(keep)}
    sel = [(new_id[s], new_id[a[1]], *a[2:]) for s in keep for a in (arcs[k] for k in out_arcs[s])
           if a[1] in new_id]
    fg = torch.full((len(keep),), math.inf)
    fa = torch.full((len(keep),), math.inf)
    for s, (g, ac) in finals.items():
        if s in new_id:
            fg[new_id[s]], fa[new_id[s]] = g, ac
    cols = list(zip(*sel)) if sel else [()] * 6
    return LatticeTensors(
        num_frames=max(frame[s] for s in keep),
        src=torch.tensor(cols[0], dtype=torch.long), dst=torch.tensor(cols[1], dtype=torch.long),
        ilabel=torch.tensor(cols[2], dtype=torch.long), olabel=torch.tensor(cols[3], dtype=torch.long),
        graph_cost=torch.tensor(cols[4], dtype=torch.float32),
        acoustic_cost=torch.tensor(cols[5], dtype=torch.float32),
        final_graph_cost=fg, final_acoustic_cost=fa,
        state_frame=torch.tensor([frame[s] for s in keep], dtype=torch.long))


def lattice_best_path(lat: LatticeTensors, lm_scale: float = 1.0,
                      acoustic_scale: float = 1.0) -> tuple[float, list[int]]:
    """Viterbi over a :class:`LatticeTensors`: (cost, arc indices of the best path).

    The cost of an arc is ``lm_scale * graph_cost + acoustic_scale * acoustic_cost`` (so with
    ``acoustic_scale = a'/a`` one re-scores a lattice made at scale ``a`` as if made at ``a'``).
    Returns ``(inf, [])`` for an empty lattice.
    """
    S = lat.num_states
    if S == 0:
        return math.inf, []
    cost = (lm_scale * lat.graph_cost.double() + acoustic_scale * lat.acoustic_cost.double()).tolist()
    fcost = (lm_scale * lat.final_graph_cost.double() + acoustic_scale * lat.final_acoustic_cost.double()).tolist()
    best = [math.inf] * S
    back = [-1] * S
    best[0] = 0.0
    src, dst = lat.src.tolist(), lat.dst.tolist()
    for k in range(len(src)):  # arcs are sorted by source, sources in topological order
        c = best[src[k]] + cost[k]
        if c < best[dst[k]]:
            best[dst[k]], back[dst[k]] = c, k
    tot = [best[s] + fcost[s] for s in range(S)]
    end = min(range(S), key=tot.__getitem__)
    if not math.isfinite(tot[end]):
        return math.inf, []
    path = []
    s = end
    while s != 0:
        path.append(back[s])
        s = src[back[s]]
    return tot[end], path[::-1]


# ----------------------------------------------------------------------------- many utterances

# State of a pool worker: set by _init_worker (spawn) or inherited from the parent (fork).
_WORKER: dict = {}


def _init_worker(graph_path: str, tid2pdf: np.ndarray, acoustic_scale: float,
                 cfg: DecoderConfig) -> None:
    _WORKER.update(graph=read_graph(graph_path), tid2pdf=tid2pdf, acwt=acoustic_scale, cfg=cfg)


def _decode_one(graph: Fst, tid2pdf: np.ndarray, ll: np.ndarray, acwt: float,
                cfg: DecoderConfig) -> DecodeResult:
    return decode_loglikes(graph, tid2pdf, ll, acwt, beam=cfg.beam, max_active=cfg.max_active,
                           min_active=cfg.min_active)


def _work(item: int | np.ndarray) -> DecodeResult:
    """Decode one utterance in a worker: an index into the inherited list (fork) or the
    log-likelihood matrix itself (spawn)."""
    w = _WORKER
    ll = w["lls"][item] if isinstance(item, int) else item
    return _decode_one(w["graph"], w["tid2pdf"], ll, w["acwt"], w["cfg"])


def _start_method(requested: str | None) -> str:
    """``requested`` or the default: ``fork`` where the platform has it, else ``spawn``."""
    import multiprocessing as mp

    return requested or ("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def decode_batch(graph: str | Path | Fst, tid2pdf: torch.Tensor | np.ndarray,
                 loglikes: Sequence[torch.Tensor | np.ndarray], acoustic_scale: float,
                 config: DecoderConfig | None = None, num_workers: int = 0,
                 names: Sequence[str] | None = None, progress: bool = True,
                 desc: str = "decode", start_method: str | None = None) -> list[DecodeResult]:
    """Best paths of many utterances (in order), with a tqdm progress bar.

    With ``num_workers > 1`` a process pool decodes in parallel. ``start_method`` ``"fork"``
    (the default where available) hands the graph and the log-likelihoods to the workers by
    inheritance: nothing is pickled and no module is re-imported (the workers run only
    numpy and Kaldi code, never torch ops, so forking a process that used torch is safe).
    ``"spawn"`` starts fresh interpreters which read the graph from its file, so ``graph``
    must then be a path (Kaldi objects do not pickle) and a calling script needs the usual
    ``if __name__ == "__main__":`` guard. ``names`` (utterance ids) are used in the warnings
    about partial results.
    """
    import multiprocessing as mp

    from tqdm import tqdm

    cfg = config or DecoderConfig()
    t2p = _numpy(tid2pdf, np.int64)
    lls = [_numpy(x) for x in loglikes]
    bar = {"total": len(lls), "desc": desc, "disable": not progress, "unit": "utt"}
    workers = min(num_workers, len(lls))
    method = _start_method(start_method)
    if workers > 1 and method == "fork":
        fst = read_graph(graph) if isinstance(graph, (str, Path)) else graph
        _WORKER.update(graph=fst, tid2pdf=t2p, acwt=acoustic_scale, cfg=cfg, lls=lls)
        try:
            with mp.get_context("fork").Pool(workers) as pool:
                results = list(tqdm(pool.imap(_work, range(len(lls)), chunksize=1), **bar))
        finally:
            _WORKER.clear()
    elif workers > 1:
        if not isinstance(graph, (str, Path)):
            raise TypeError(f"decode_batch with start method '{method}' needs the graph's file path")
        read_graph(graph)  # fail here, not in every worker
        with mp.get_context(method).Pool(workers, initializer=_init_worker,
                                         initargs=(str(graph), t2p, acoustic_scale, cfg)) as pool:
            results = list(tqdm(pool.imap(_work, lls, chunksize=1), **bar))
    else:
        fst = read_graph(graph) if isinstance(graph, (str, Path)) else graph
        results = [_decode_one(fst, t2p, ll, acoustic_scale, cfg) for ll in tqdm(lls, **bar)]
    for i, r in enumerate(results):
        if r.partial:
            name = names[i] if names is not None else f"#{i}"
            log.warning("utterance %s: %s", name, "decoding failed (empty output)" if r.failed
                        else "no final state reached; output is partial")
    return results


# Words never scored (Kaldi scores without silence and sentence-boundary words).
NON_SCORED_WORDS = frozenset({"<eps>", "<s>", "</s>", "<SIL>", "<sil>", "!SIL", "SIL"})


def words_to_text(word_ids: Sequence[int], id2word: Mapping[int, str],
                  drop: frozenset[str] = NON_SCORED_WORDS) -> list[str]:
    """Word strings of ``word_ids`` without ``drop`` and disambiguation symbols (``#k``)."""
    out = []
    for i in word_ids:
        w = id2word.get(int(i))
        if w is None:
            raise DataError(f"word id {i} is not in the word table")
        if w not in drop and not w.startswith("#"):
            out.append(w)
    return out


def results_to_text(cut_ids: Sequence[str], results: Sequence[DecodeResult],
                    id2word: Mapping[int, str]) -> dict[str, list[str]]:
    """``cut_id -> words`` for :func:`hfasr.decode.score.write_text` / scoring."""
    return {c: words_to_text(r.words, id2word) for c, r in zip(cut_ids, results)}


# -------------------------------------------------------------------------- acoustic-scale sweep

# LM weights tried by default: acoustic scales 1/5 ... 1/17 (Kaldi's hybrid default is 0.1).
DEFAULT_LM_WEIGHTS: tuple[float, ...] = (5.0, 7.0, 9.0, 10.0, 11.0, 13.0, 15.0, 17.0)


@dataclass
class SweepPoint:
    """One decode of the dev set: LM weight, acoustic scale (= 1 / LM weight), its score."""

    lm_weight: float
    acoustic_scale: float
    result: ScoreResult
    hyps: dict[str, list[str]]
    word_penalty: float = 0.0


def add_word_penalty(graph: Fst, penalty: float, skip: set[int]) -> Fst:
    """A copy of ``graph`` with ``penalty`` added to the cost of every arc emitting a word not in
    ``skip`` (epsilon and silence words): Kaldi's word insertion penalty, in the graph-cost domain
    (the decoder's costs are graph + acoustic_scale · acoustic, as after Kaldi's lattice scaling)."""
    if penalty == 0:
        return graph
    out = kaldifst.StdVectorFst()
    n = graph.num_states
    for _ in range(n):
        out.add_state()
    out.start = graph.start
    sit = kaldifst.StateIterator(graph)
    while not sit.done:
        st = sit.value
        out.set_final(st, graph.final(st))
        ait = kaldifst.ArcIterator(graph, st)
        while not ait.done:
            a = ait.value
            w = a.weight.value + (penalty if a.olabel not in skip else 0.0)
            out.add_arc(st, kaldifst.StdArc(a.ilabel, a.olabel, w, a.nextstate))
            ait.next()
        sit.next()
    return out


def non_words(id2word: Mapping[int, str]) -> set[int]:
    """Word ids that carry no insertion penalty: epsilon, silence words, disambiguation symbols."""
    return {0} | {i for i, w in id2word.items() if w.upper() in ("<SIL>", "!SIL", "<EPS>", "<S>", "</S>") or w.startswith("#")}


def sweep_acoustic_scale(graph: str | Path | Fst, tid2pdf: torch.Tensor | np.ndarray,
                         cut_ids: Sequence[str], loglikes: Sequence[torch.Tensor | np.ndarray],
                         refs: Mapping[str, Sequence[str]], id2word: Mapping[int, str],
                         lm_weights: Sequence[float] = DEFAULT_LM_WEIGHTS,
                         config: DecoderConfig | None = None, num_workers: int = 0,
                         progress: bool = True,
                         start_method: str | None = None,
                         word_penalties: Sequence[float] = (0.0,)) -> tuple[SweepPoint, list[SweepPoint]]:
    """Decode the dev set at ``acoustic_scale = 1 / lm_weight`` for every LM weight; return the
    point with the fewest word errors (ties: fewer sentence errors, then the first in
    ``lm_weights``) and all points.

    Each point is a full re-decode (the beams act on scaled costs, so results are exact rather
    than lattice re-scorings). Decode the test set with the returned ``acoustic_scale``.
    ``num_workers`` and ``start_method`` are as in :func:`decode_batch`.
    """
    if not lm_weights or any(w <= 0 for w in lm_weights):
        raise DataError(f"LM weights must be positive, got {list(lm_weights)}")
    if isinstance(graph, (str, Path)) and (num_workers <= 1 or _start_method(start_method) == "fork"):
        graph = read_graph(graph)  # once, not once per LM weight
    points = []
    skip = non_words(id2word)
    for wip in word_penalties:
        g = add_word_penalty(graph, wip, skip) if wip else graph
        for lmwt in lm_weights:
            res = decode_batch(g, tid2pdf, loglikes, 1.0 / lmwt, config=config,
                               num_workers=num_workers, names=cut_ids, progress=progress,
                               desc=f"dev LMWT={lmwt:g} WIP={wip:g}", start_method=start_method)
            hyps = results_to_text(cut_ids, res, id2word)
            sr = score({c: refs[c] for c in cut_ids if c in refs}, hyps, mode="all")
            log.info("LMWT %g WIP %g (acoustic scale %.4f): %s", lmwt, wip, 1.0 / lmwt, sr.wer_line())
            points.append(SweepPoint(float(lmwt), 1.0 / lmwt, sr, hyps, float(wip)))
    best = min(points, key=lambda p: (p.result.errors, p.result.sent_errors))
    return best, points
