"""Decoding (HCLG + per-frame pdf log-likelihoods -> words, lattices) and WER scoring.

* :mod:`hfasr.decode.decoder`: :func:`decode_loglikes` (best path), :func:`decode_lattice`
  (raw state-level lattice) and :func:`lattice_to_tensors`, :func:`decode_batch` (progress bar,
  process pool), :func:`sweep_acoustic_scale` (pick the LM weight on dev);
* :mod:`hfasr.decode.score`: Kaldi-format WER/SER lines, bootstrap CI, ``wer.txt`` and
  ``errs-<set>.txt``;
* :mod:`hfasr.decode.ctc`: CTC greedy decoding (tokens → words), TLG decoding of per-frame token
  log-probabilities through the same decoder (input label = token id + 1), forced alignment.

The graph is any HCLG whose input labels are transition-ids, with ``tid2pdf`` =
``TransitionModel.transition_id_to_pdf_array()``; nothing here depends on :mod:`hfasr.lang`.
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
    "LatticeDecodeResult",
    "LatticeTensors",
    "ScoreResult",
    "SweepPoint",
    "UttScore",
    "bootstrap_ci",
    "decode_batch",
    "decode_lattice",
    "decode_loglikes",
    "lattice_best_path",
    "lattice_to_tensors",
    "read_graph",
    "read_text",
    "results_to_text",
    "scaled_tid_scores",
    "score",
    "score_files",
    "sweep_acoustic_scale",
    "words_to_text",
    "write_results",
    "write_text",
]
