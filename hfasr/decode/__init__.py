"""Decoding (HCLG + per-frame pdf log-likelihoods -> words, lattices) and WER scoring.

* :mod:`hfasr.decode.decoder`: :func:`decode_loglikes` (best path), :func:`decode_lattice`
  (raw state-level lattice) and :func:`lattice_to_tensors`, :func:`decode_batch` (progress bar,
  process pool), :func:`sweep_acoustic_scale` (pick the LM weight on dev);
* :mod:`hfasr.decode.score`: Kaldi-format WER/SER lines, bootstrap CI, ``wer.txt`` and
  ``errs-<set>.txt``;
* :mod:`hfasr.decode.ctc`: CTC greedy decoding (tokens → words), TLG decoding of per-frame token
  log-probabilities through the same decoder (input label = token id + 1), forced alignment;
* :mod:`hfasr.decode.pipeline`: :func:`decode_and_score` (dev sweep of the LM weight and word
  penalty, decode, ``hyp.txt`` / ``wer.txt`` / ``errs-<set>.txt``: ``hfasr decode`` and
  ``hfasr ctc-decode``) and :func:`decode_wer` (the WER of one decode over a graph dir, for the
  dev reports of training).

The graph is any HCLG whose input labels are transition-ids, with ``tid2pdf`` =
``TransitionModel.transition_id_to_pdf_array()``; only :func:`read_id2word` (``words.txt``, used
by :func:`decode_wer`) calls into :mod:`hfasr.lang`.
"""

from hfasr.decode.decoder import (
    DEFAULT_LM_WEIGHTS,
    DecoderConfig,
    DecodeResult,
    LatticeDecodeResult,
    LatticeTensors,
    SweepPoint,
    decode_batch,
    decode_lattice,
    decode_loglikes,
    lattice_best_path,
    lattice_to_tensors,
    read_graph,
    results_to_text,
    scaled_tid_scores,
    sweep_acoustic_scale,
    words_to_text,
)
from hfasr.decode.pipeline import (
    DevSet,
    PipelineResult,
    decode_and_score,
    decode_wer,
    parse_floats,
    read_id2word,
    sweep_text,
)
from hfasr.decode.score import (
    ConfidenceInterval,
    ScoreResult,
    UttScore,
    bootstrap_ci,
    read_text,
    score,
    score_files,
    write_results,
    write_text,
)

__all__ = [
    "DEFAULT_LM_WEIGHTS",
    "ConfidenceInterval",
    "DecodeResult",
    "DecoderConfig",
    "DevSet",
    "LatticeDecodeResult",
    "LatticeTensors",
    "PipelineResult",
    "ScoreResult",
    "SweepPoint",
    "UttScore",
    "bootstrap_ci",
    "decode_and_score",
    "decode_batch",
    "decode_lattice",
    "decode_loglikes",
    "decode_wer",
    "lattice_best_path",
    "lattice_to_tensors",
    "parse_floats",
    "read_graph",
    "read_id2word",
    "read_text",
    "results_to_text",
    "scaled_tid_scores",
    "score",
    "score_files",
    "sweep_acoustic_scale",
    "sweep_text",
    "words_to_text",
    "write_results",
    "write_text",
]
