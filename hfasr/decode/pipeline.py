"""Decode a set with scales chosen on dev, then score: ``hfasr decode`` and ``hfasr ctc-decode``.

* :func:`decode_and_score`: optionally sweep the LM weight (acoustic scale ``1 / LMWT``) and the
  word insertion penalty on a dev set (:func:`~hfasr.decode.decoder.sweep_acoustic_scale`,
  ``sweep.txt``), decode the set with the best point (or the given acoustic scale), write
  ``hyp.txt`` and, with references, ``ref.txt``, ``wer.txt`` (Kaldi's ``%WER`` / ``%SER`` lines
  and the 95 % bootstrap CI, then ``# ...`` comment lines saying how the scale was chosen) and
  ``errs-SET.txt``, and print ``wer.txt``. The graph is any graph of
  :mod:`hfasr.decode.decoder` (an HCLG with ``tid2pdf`` of the transition model, or a CTC TLG
  with :func:`~hfasr.decode.ctc.ctc_tid2pdf`).
* :func:`decode_wer`: the WER of one decode of a set over a graph dir (``HCLG.fst``,
  ``words.txt``) at a fixed acoustic scale, in process and without output files: the dev WER
  that sequence training reports.
* :func:`read_id2word` (a ``words.txt`` as id → word), :func:`parse_floats` (a comma-separated
  option), :func:`sweep_text` (the contents of ``sweep.txt``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hfasr import fileio
from hfasr.decode.decoder import (
    DecoderConfig,
    Fst,
    SweepPoint,
    add_word_penalty,
    decode_batch,
    non_words,
    read_graph,
    results_to_text,
    sweep_acoustic_scale,
)
from hfasr.decode.score import (
    ConfidenceInterval,
    Mode,
    ScoreResult,
    bootstrap_ci,
    score,
    write_results,
    write_text,
)
from hfasr.errors import DataError, HfasrError

log = logging.getLogger(__name__)

LogLikes = Sequence[torch.Tensor | np.ndarray]


def parse_floats(text: str, flag: str) -> list[float]:
    """``"0.3,0.5,1"`` -> ``[0.3, 0.5, 1.0]``; HfasrError naming ``flag`` for a non-number."""
    try:
        return [float(x) for x in text.split(",")]
    except ValueError as e:
        raise HfasrError(f"{flag}: expected comma-separated numbers, got {text!r}") from e


def read_id2word(path: str | Path) -> dict[int, str]:
    """A Kaldi ``words.txt`` (``word id`` lines) as id -> word
    (:func:`hfasr.lang.graphs.read_symbols`, inverted); DataError naming the file if it is
    missing or malformed."""
    from hfasr.lang.graphs import read_symbols

    return {i: w for w, i in read_symbols(path).items()}


def sweep_text(best: SweepPoint, points: Sequence[SweepPoint]) -> str:
    """``sweep.txt``: one ``LMWT .. WIP .. acoustic_scale .. %WER ...`` line per point, then
    ``best LMWT .. WIP ..``."""
    lines = [f"LMWT {p.lm_weight:g} WIP {p.word_penalty:g} acoustic_scale {p.acoustic_scale:.6f} "
             f"{p.result.wer_line()}\n" for p in points]
    return "".join(lines) + f"best LMWT {best.lm_weight:g} WIP {best.word_penalty:g}\n"


@dataclass
class DevSet:
    """The set the LM weight / word penalty are chosen on: cut ids, their log-likelihoods (in
    the order of ``cut_ids``), references (cut id -> words) and the name used in the notes."""

    cut_ids: Sequence[str]
    loglikes: LogLikes
    refs: Mapping[str, Sequence[str]]
    name: str = "dev"


@dataclass
class PipelineResult:
    """What :func:`decode_and_score` chose and got.

    ``acoustic_scale`` / ``word_penalty``: those of the final decode; ``note``: how they were
    chosen (the ``# ...`` line of ``wer.txt``); ``best`` / ``points``: the dev sweep (``None`` /
    empty without one); ``result`` / ``ci`` / ``wer_path``: the score (``None`` without
    references).
    """

    hyps: dict[str, list[str]]
    acoustic_scale: float
    word_penalty: float
    note: str
    best: SweepPoint | None = None
    points: list[SweepPoint] = field(default_factory=list)
    result: ScoreResult | None = None
    ci: ConfidenceInterval | None = None
    wer_path: Path | None = None


def decode_and_score(graph: str | Path | Fst, tid2pdf: torch.Tensor | np.ndarray,
                     id2word: Mapping[int, str], cut_ids: Sequence[str], loglikes: LogLikes,
                     out_dir: str | Path, set_name: str, *,
                     refs: Mapping[str, Sequence[str]] | None = None,
                     dev: DevSet | None = None,
                     acoustic_scale: float = 0.1,
                     lm_weights: Sequence[float] | None = None,
                     word_penalties: Sequence[float] = (0.0,),
                     config: DecoderConfig | None = None,
                     num_workers: int = 0,
                     mode: Mode = "strict",
                     desc: str | None = None,
                     note_details: str = "",
                     note_prefix: str = "",
                     extra_comments: Sequence[str] = (),
                     logger: logging.Logger | None = None) -> PipelineResult:
    """Decode ``loglikes`` (one (T, num_pdfs) matrix per id of ``cut_ids``) over ``graph``,
    choosing the scales on ``dev``, and score against ``refs``; writes into ``out_dir``.

    Scales: with ``dev``, every LM weight of ``lm_weights`` (default
    :data:`~hfasr.decode.decoder.DEFAULT_LM_WEIGHTS`) and word penalty of ``word_penalties`` is
    decoded on the dev set and the point with the fewest word errors (then sentence errors, then
    the first) is taken; ``OUT/sweep.txt`` lists them (:func:`sweep_text`). Without ``dev`` the
    decode uses ``acoustic_scale`` (HfasrError unless positive) and no word penalty.

    Outputs: ``OUT/hyp.txt``; with ``refs`` also ``OUT/ref.txt``, ``OUT/wer.txt`` and
    ``OUT/errs-<set_name>.txt`` (:func:`~hfasr.decode.score.write_results`, ``mode`` as in
    :func:`~hfasr.decode.score.score`, the bootstrap CI), after which the comment lines
    ``# <note_prefix><note>`` and ``# <c>`` for each of ``extra_comments`` are appended to
    ``wer.txt``, and ``wer.txt`` is printed to stdout. The note is
    ``acoustic scale A (given)[, <note_details>]`` or ``acoustic scale A (LMWT L, word penalty
    W, [<note_details>, ]best on <dev name>: %WER ...)``; with ``logger`` it is also logged at
    INFO as ``<set_name>: <note>`` once ``hyp.txt`` is written. The outputs are written into a
    staging dir and published together once all succeeded (:func:`hfasr.fileio.staged_dir`): a
    failed decode or scoring leaves ``out_dir`` as it was.

    ``graph`` is a graph or its file; ``num_workers``, ``config`` and the progress bar
    ``desc`` (default ``decode <set_name>``) are those of
    :func:`~hfasr.decode.decoder.decode_batch`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    details = f", {note_details}" if note_details else ""
    acwt, wip, best, points = acoustic_scale, 0.0, None, []
    note = f"acoustic scale {acwt:g} (given){details}"
    if dev is not None:
        kw = {"lm_weights": list(lm_weights)} if lm_weights else {}
        best, points = sweep_acoustic_scale(graph, tid2pdf, dev.cut_ids, dev.loglikes, dev.refs,
                                            id2word, config=config, num_workers=num_workers,
                                            word_penalties=list(word_penalties), **kw)
        acwt, wip = best.acoustic_scale, best.word_penalty
        more = f"{note_details}, " if note_details else ""
        note = (f"acoustic scale {acwt:.6f} (LMWT {best.lm_weight:g}, word penalty {wip:g}, "
                f"{more}best on {dev.name}: {best.result.wer_line()})")
    elif acwt <= 0:
        raise HfasrError(f"--acoustic-scale must be positive, got {acwt}")
    if wip:
        fst = read_graph(graph) if isinstance(graph, (str, Path)) else graph
        graph = add_word_penalty(fst, wip, non_words(id2word))
    res = decode_batch(graph, tid2pdf, loglikes, acwt, config=config, num_workers=num_workers,
                       names=cut_ids, desc=desc or f"decode {set_name}")
    hyps = results_to_text(cut_ids, res, id2word)
    pr = PipelineResult(hyps, acwt, wip, note, best, points)
    if refs is not None:
        pr.result = score(refs, hyps, mode=mode)
        pr.ci = bootstrap_ci(pr.result)
    # every output is published together once all succeeded: a failed decode (or scoring)
    # leaves the previous outputs, never a new hyp.txt beside an old wer.txt
    with fileio.staged_dir(out) as stage:
        if best is not None:
            fileio.write_text(stage / "sweep.txt", sweep_text(best, points), fsync=False)
        write_text(stage / "hyp.txt", hyps)
        if refs is not None:
            write_text(stage / "ref.txt", refs)
            write_results(stage, set_name, pr.result, pr.ci, comments=[note_prefix + note, *extra_comments])
    if logger is not None:
        logger.info("%s: %s", set_name, note)
    if refs is None:
        return pr
    pr.wer_path = out / "wer.txt"
    print(pr.wer_path.read_text(), end="")
    return pr


def decode_wer(graph_dir: str | Path, tid2pdf: torch.Tensor | np.ndarray,
               loglikes: Mapping[str, torch.Tensor | np.ndarray], acoustic_scale: float,
               refs: Mapping[str, str | Sequence[str]], *,
               config: DecoderConfig | None = None,
               id2word: Mapping[int, str] | None = None) -> float:
    """WER in percent (:attr:`ScoreResult.wer`) of decoding ``loglikes`` over ``graph_dir``.

    ``graph_dir`` holds ``HCLG.fst`` and ``words.txt``; ``tid2pdf`` is the transition model's
    ``transition_id_to_pdf_array()``; ``loglikes`` maps cut id -> (T, num_pdfs) pdf
    log-likelihoods (``log p(pdf|x) - log prior(pdf)``); ``refs`` maps cut id -> reference
    transcript (a string, split at whitespace, or a word sequence) and must cover every cut of
    ``loglikes`` (else a DataError with their number and one of them); extra references are
    ignored. The decode is one best-path pass at ``acoustic_scale`` with ``config`` (default
    :class:`DecoderConfig`), in process and without a progress bar, scored in strict mode:
    what sequence training reports as its dev WER. Pass ``id2word`` (e.g. from
    :func:`read_id2word`) to skip re-reading ``words.txt`` on repeated calls; nothing is written.
    """
    graph_dir = Path(graph_dir)
    ids = list(loglikes)
    missing = [c for c in ids if c not in refs]
    if missing:
        raise DataError(f"{len(missing)} utterance(s) to decode have no reference text, "
                        f"e.g. {missing[0]}")
    if id2word is None:
        id2word = read_id2word(graph_dir / "words.txt")
    res = decode_batch(str(graph_dir / "HCLG.fst"), tid2pdf, [loglikes[c] for c in ids],
                       acoustic_scale, config=config, names=ids, num_workers=0, progress=False)
    hyps = results_to_text(ids, res, id2word)
    ref_words = {c: refs[c].split() if isinstance(refs[c], str) else list(refs[c]) for c in ids}
    return float(score(ref_words, hyps).wer)
