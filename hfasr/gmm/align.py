"""Viterbi alignment with kaldi-hmm-gmm (``gmm-align-compiled`` / ``align-compiled-mapped``), and GMM
scoring in torch.

Alignment runs Kaldi's ``AlignUtteranceWrapper`` on a training graph with transition
probabilities added and a decodable made per utterance by a factory: :func:`gmm_decodable`
(``DecodableAmDiagGmmScaled``, which only evaluates the pdfs active in the beam) or
:class:`MatrixDecodable` (precomputed pdf log-likelihoods, e.g. a hybrid DNN's: ``hfasr align``,
``align-compiled-mapped``). :func:`align_bank` spreads the utterances over worker processes
(fork) when ``num_jobs > 1``. :func:`component_loglikes` scores all frames of one pdf at once for the EM
statistics (:func:`hfasr.gmm.train.accumulate`).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from hfasr._kaldi import kaldifst, khg
from hfasr.config import bounded, check_ranges
from hfasr.errors import DataError

log = logging.getLogger(__name__)


def gmm_params(g: khg.DiagGmm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gconsts [M], [means_invvars, -0.5 inv_vars]^T [2D, M])`` of one GMM as tensors."""
    w = np.concatenate([np.asarray(g.means_invvars), -0.5 * np.asarray(g.inv_vars)], axis=1)
    return torch.tensor(np.asarray(g.gconsts), dtype=torch.float32), torch.tensor(w.T, dtype=torch.float32)


def component_loglikes(x: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``[T, M]`` log(w_m N(x_t; mu_m, var_m)) of one GMM for frames ``x [T, D]``."""
    gconst, w = params
    return torch.cat([x, x * x], dim=1) @ w + gconst


@dataclass
class AlignOptions:
    """Viterbi alignment options (``gmm-align-compiled``)."""

    beam: float = bounded(10.0, gt=0)
    retry_beam: float = bounded(40.0, ge=0)  # 0: no retry
    acoustic_scale: float = bounded(0.1, gt=0)
    transition_scale: float = bounded(1.0, ge=0)
    self_loop_scale: float = bounded(0.1, ge=0)
    last_resort_beam: float = bounded(0.0, ge=0)  # > 0: one more careful try with this beam before giving up

    def __post_init__(self) -> None:
        check_ranges(self)


def compile_graphs(model, lang, texts: list[str], cut_ids: list[str]) -> list[kaldifst.StdVectorFst]:
    """Training graphs (H C L + the word sequence), without transition probabilities."""
    gc = khg.TrainingGraphCompiler(trans_model=model.tm, ctx_dep=model.tree, lex_fst=lang.L(),
                                   disambig_syms=lang.disambig,
                                   opts=khg.TrainingGraphCompilerOptions(transition_scale=0.0, self_loop_scale=0.0))
    return [gc.compile_graph_from_text(lang.word_ids(t, cid)) for t, cid in zip(texts, cut_ids)]


# A decodable factory: ``make(x, acoustic_scale)`` -> the Kaldi decodable of one utterance whose
# ``log_likelihood(t, tid)`` is ``acoustic_scale`` times the log-likelihood of frame t under the
# pdf of transition-id ``tid``; ``x`` is the utterance's rows of the bank (features or scores).
DecodableFactory = Callable[[np.ndarray, float], "khg.DecodableInterface"]


def gmm_decodable(model) -> DecodableFactory:
    """The GMM's factory (``gmm-align-compiled``): ``x`` = GMM features ``[T, D]``.

    ``model.am`` is read at call time (the EM passes replace it)."""

    def make(x: np.ndarray, acoustic_scale: float):
        return khg.DecodableAmDiagGmmScaled(am=model.am, tm=model.tm, feats=x, scale=acoustic_scale)

    return make


class MatrixDecodable:
    """Factory for precomputed pdf log-likelihoods ``x [T, num_pdfs]`` (e.g. a hybrid DNN's
    ``log p(pdf|x) - log prior(pdf)``): Kaldi's ``DecodableMatrixScaledMapped``
    (``align-compiled-mapped``, nnet1's ``steps/nnet/align.sh``).

    kaldi-hmm-gmm 1.1.4 binds no matrix decodable except ``DecodableCtc(M)``, whose
    ``log_likelihood(t, i)`` is ``M[t, i - 1]`` with ``i`` the graph's input label, here the
    transition-id; so ``M[t, tid - 1] = acoustic_scale * x[t, pdf(tid)]`` is the mapped, scaled
    matrix (``num_transition_ids`` columns instead of ``num_pdfs``).
    """

    def __init__(self, tm: khg.TransitionModel) -> None:
        self.num_pdfs = int(tm.num_pdfs)
        self.tid2pdf = np.asarray(tm.transition_id_to_pdf_array(), dtype=np.int64)[1:]  # column tid-1

    def __call__(self, x: np.ndarray, acoustic_scale: float):
        if x.ndim != 2 or x.shape[1] != self.num_pdfs:
            raise DataError(f"log-likelihoods of shape {tuple(x.shape)} for a transition model with "
                            f"{self.num_pdfs} pdfs")
        m = np.ascontiguousarray(acoustic_scale * x[:, self.tid2pdf], dtype=np.float32)
        return khg.DecodableCtc(m)


def align_one(graph: kaldifst.StdVectorFst, model, feats: np.ndarray, opts: AlignOptions,
              cut_id: str = "", decodable: DecodableFactory | None = None) -> tuple[list[int] | None, float]:
    """Align one utterance; ``(transition-ids, log-likelihood)`` or ``(None, 0)`` on failure.

    ``feats`` are the utterance's rows for ``decodable`` (default :func:`gmm_decodable` of
    ``model``: GMM features; :class:`MatrixDecodable`: pdf log-likelihoods); only ``model.tm``
    is used otherwise. Tries ``beam`` (with Kaldi's automatic retry at ``retry_beam``), then, if
    ``last_resort_beam > 0``, once more with that beam in careful mode.
    """
    make = decodable or gmm_decodable(model)
    g = graph.copy()
    khg.add_transition_probs(trans_model=model.tm, disambig_syms=[], transition_scale=opts.transition_scale,
                             self_loop_scale=opts.self_loop_scale, fst=g)
    tries = [(opts.beam, opts.retry_beam, False)]
    if opts.last_resort_beam > 0:
        tries.append((opts.last_resort_beam, 0.0, True))
    for beam, retry, careful in tries:
        dec = make(feats, opts.acoustic_scale)
        cfg = khg.AlignConfig(beam=beam, retry_beam=retry, careful=careful)
        done, _, _, like, _, ali, _ = khg.align_utterance_wrapper(
            config=cfg, utt=cut_id, acoustic_scale=opts.acoustic_scale, fst=g, decodable=dec, num_done=0,
            num_error=0, num_retried=0, tot_like=0.0, frame_count=0)
        if done == 1 and len(ali) == feats.shape[0]:
            return list(ali), float(like)
    return None, 0.0


def failure_reason(opts: AlignOptions) -> str:
    """The ``ali_<split>_excluded.txt`` reason of a cut :func:`align_one` gave up on."""
    beams = f"beam {opts.beam:g}, retry beam {opts.retry_beam:g}"
    if opts.last_resort_beam > 0:
        beams += f", careful beam {opts.last_resort_beam:g}"
    return f"alignment failed ({beams}): no path of the transcript's graph survives the beam"


# The state a forked worker reads (set by align_bank right before the pool starts).
_WORK: dict = {}


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; torch threads in forked workers can hang


def _align_range(args: tuple[int, int]) -> list[tuple[int, list[int] | None, float]]:
    lo, hi = args
    w = _WORK
    out = []
    for i in range(lo, hi):
        x = np.ascontiguousarray(w["bank"].feats(i).numpy())
        ali, like = align_one(w["graphs"][i], w["model"], x, w["opts"], w["bank"].cut_ids[i], w["decodable"])
        out.append((i, ali, like))
    return out


def align_bank(bank, graphs, model, opts: AlignOptions, num_jobs: int = 1, progress: bool = True,
               desc: str = "align", decodable: DecodableFactory | None = None
               ) -> tuple[list[list[int] | None], float]:
    """Align every utterance of ``bank``; returns the alignments (None = failed) and total log-lik.

    ``bank`` holds the rows ``decodable`` scores (default: GMM features scored by ``model``; a
    bank of pdf log-likelihoods with :class:`MatrixDecodable`). Workers are forked: whatever
    ``decodable`` needs must exist before the call (no torch work in the workers).
    """
    _WORK.update(bank=bank, graphs=graphs, model=model, opts=opts, decodable=decodable or gmm_decodable(model))
    n = len(bank)
    alis: list[list[int] | None] = [None] * n
    tot = 0.0
    chunk = 16
    ranges = [(lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]
    bar = tqdm(total=n, desc=desc, disable=not progress, leave=False)
    try:
        if num_jobs > 1 and n > chunk:
            ctx = mp.get_context("fork")
            with ctx.Pool(num_jobs, initializer=_init_worker) as pool:
                for res in pool.imap_unordered(_align_range, ranges):
                    for i, ali, like in res:
                        alis[i] = ali
                        tot += like
                    bar.update(len(res))
        else:
            for r in ranges:
                res = _align_range(r)
                for i, ali, like in res:
                    alis[i] = ali
                    tot += like
                bar.update(len(res))
    finally:
        bar.close()
        _WORK.clear()
    return alis, tot


def tid_hmm_states(tm: khg.TransitionModel) -> np.ndarray:
    """HMM state (within its phone) of every transition-id (index 0 unused)."""
    out = np.zeros(tm.num_transition_ids + 1, dtype=np.int64)
    id2state = tm.__getstate__()[3]  # transition-id -> transition state
    hmm_state = [0] + [int(str(t).split("hmm_state=")[1].split(",")[0]) for t in tm.tuples]
    for tid in range(1, tm.num_transition_ids + 1):
        out[tid] = hmm_state[id2state[tid]]
    return out


def phone_segments(tm: khg.TransitionModel, tids) -> list[tuple[int, int, int]]:
    """Split a frame alignment into phone instances ``(phone, start_frame, end_frame)``.

    A new instance starts where the phone changes or the HMM re-enters its first state (the
    same phone twice in a row); works for reordered and plain alignments alike.
    """
    states = tid_hmm_states(tm)
    segs: list[tuple[int, int, int]] = []
    prev_phone, prev_state, start = -1, -1, 0
    for t, tid in enumerate(tids):
        ph, st = tm.transition_id_to_phone(int(tid)), int(states[int(tid)])
        if t > 0 and (ph != prev_phone or (st == 0 and prev_state != 0)):
            segs.append((prev_phone, start, t))
            start = t
        prev_phone, prev_state = ph, st
    if len(tids):
        segs.append((prev_phone, start, len(tids)))
    return segs
