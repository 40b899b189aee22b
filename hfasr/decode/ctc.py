"""CTC decoding: greedy best path, WFST decoding over a TLG graph, forced alignment.

A CTC model gives per-frame token log-posteriors ``logp`` (T, K), token 0 = blank.

* Greedy (:func:`greedy_ids`): argmax per frame, repeats merged, blanks dropped. Tokens become
  words with :func:`tokens_to_words`: character units split at the word-boundary token; phone
  units are segmented into lexicon words by :func:`segment_words` (dynamic programming; phones
  that fit no word are skipped).
* TLG (``hfasr.lang.ctc``): the graph's input label of token k is k + 1, the index convention
  of ``kaldi_decoder.DecodableCtc``, so the hybrid decoder of :mod:`hfasr.decode.decoder` runs
  unchanged with the identity "transition-id → pdf" map :func:`ctc_tid2pdf` (``M[t, k] =
  acoustic_scale · logp[t, k]``): best paths, the process pool and the LM-weight / word-penalty
  sweep (:func:`~hfasr.decode.decoder.sweep_acoustic_scale`) all apply. ``blank_penalty`` is
  subtracted from the blank's log-probability first (:func:`penalize_blank`; > 0 favours
  tokens, i.e. fewer deletions). A result's ``tids`` minus one are the frame tokens of the best
  path (:func:`path_tokens`).
* Forced alignment (:func:`forced_align`): the best CTC path of a known token sequence
  (``torchaudio.functional.forced_align``): frame targets from a CTC model.
* :func:`token_error_line`: a token error rate (PER / CER) in Kaldi's ``%WER`` line format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hfasr.decode.decoder import DecoderConfig, DecodeResult, Fst, decode_batch
from hfasr.decode.score import ScoreResult
from hfasr.errors import DataError


def ctc_tid2pdf(num_tokens: int) -> Tensor:
    """The identity "transition-id → pdf" map of a CTC graph: entry k + 1 = token k (entry 0 unused)."""
    return torch.arange(-1, num_tokens, dtype=torch.long)


def penalize_blank(logp: Tensor | np.ndarray, blank_penalty: float = 0.0) -> Tensor:
    """``logp`` (T, K) as a float32 tensor with ``blank_penalty`` subtracted from column 0."""
    x = torch.as_tensor(logp, dtype=torch.float32)
    if x.dim() != 2:
        raise DataError(f"CTC log-probabilities must be a (T, K) matrix, got shape {tuple(x.shape)}")
    if blank_penalty:
        x = x.clone()
        x[:, 0] -= blank_penalty
    return x


def greedy_ids(logp: Tensor) -> list[int]:
    """Best-path token ids of one utterance (T, K): argmax, repeats merged, blanks dropped."""
    out, prev = [], 0
    for k in logp.argmax(-1).tolist():
        if k != prev and k != 0:
            out.append(k)
        prev = k
    return out


def collapse(frame_tokens: Sequence[int]) -> list[int]:
    """CTC collapse of a frame-level token path (repeats merged, blanks dropped)."""
    out, prev = [], 0
    for k in frame_tokens:
        if k != prev and k != 0:
            out.append(int(k))
        prev = k
    return out


def path_tokens(result: DecodeResult) -> list[int]:
    """Frame tokens of a TLG best path (its input labels minus one)."""
    return [t - 1 for t in result.tids]


def decode_ctc(graph: str | Path | Fst, log_probs: Sequence[Tensor | np.ndarray], acoustic_scale: float = 1.0,
               blank_penalty: float = 0.0, config: DecoderConfig | None = None, num_workers: int = 0,
               names: Sequence[str] | None = None, progress: bool = True, desc: str = "ctc decode") -> list[DecodeResult]:
    """TLG best paths of many utterances' log-probabilities (T, K) (see the module docstring)."""
    if not log_probs:
        return []
    lps = [penalize_blank(x, blank_penalty) for x in log_probs]
    K = int(lps[0].shape[1])
    return decode_batch(graph, ctc_tid2pdf(K), lps, acoustic_scale, config=config, num_workers=num_workers,
                        names=names, progress=progress, desc=desc)


# --------------------------------------------------------------------------------- tokens → words

def segment_words(units: Sequence[str], prons: Mapping[str, Sequence[Sequence[str]]]) -> list[str]:
    """The lexicon words that explain a phone sequence best: fewest skipped phones, then fewest
    words (ties: the segmentation found first, words in ``prons``' order)."""
    by_first: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for w, ps in prons.items():
        for p in ps:
            if p:
                by_first.setdefault(p[0], []).append((w, tuple(p)))
    n = len(units)
    best: list[tuple[int, int] | None] = [None] * (n + 1)  # (skipped, words)
    back: list[tuple[int, str | None]] = [(0, None)] * (n + 1)
    best[0] = (0, 0)
    for i in range(n):
        if best[i] is None:
            continue
        sk, nw = best[i]
        cands = [(i + 1, (sk + 1, nw), None)]
        for w, p in by_first.get(units[i], []):
            j = i + len(p)
            if j <= n and tuple(units[i:j]) == p:
                cands.append((j, (sk, nw + 1), w))
        for j, cost, w in cands:
            if best[j] is None or cost < best[j]:
                best[j], back[j] = cost, (i, w)
    words, j = [], n
    while j > 0:
        i, w = back[j]
        if w is not None:
            words.append(w)
        j = i
    return words[::-1]


def tokens_to_words(units: Sequence[str], unit: str, word_boundary: str | None = None,
                    prons: Mapping[str, Sequence[Sequence[str]]] | None = None) -> list[str]:
    """Words of a token-string sequence: characters split at ``word_boundary`` (without one the
    whole sequence is one word), or phones segmented with the lexicon."""
    if unit == "char":
        text = "".join(" " if u == word_boundary else u for u in units)
        return text.split()
    if unit == "phone":
        if prons is None:
            raise DataError("phone units need a lexicon to become words")
        return segment_words(units, prons)
    raise DataError(f"unit must be 'phone' or 'char', got {unit!r}")


# ---------------------------------------------------------------------------------- alignment

def forced_align(logp: Tensor, targets: Sequence[int], utt: str = "?") -> tuple[Tensor, Tensor]:
    """Best CTC path of ``targets`` (token ids ≥ 1) through ``logp`` (T, K).

    Returns the frame tokens (T,) long (blank = 0) and each frame's log-probability of its
    token (T,); their sum is the Viterbi score. DataError naming ``utt`` if the utterance has
    too few frames for its targets (each repeat needs a blank in between).
    """
    import torchaudio.functional as taF

    lp = torch.as_tensor(logp, dtype=torch.float32)
    tg = torch.as_tensor(list(targets), dtype=torch.int32)
    if lp.dim() != 2:
        raise DataError(f"utterance '{utt}': log-probabilities must be (T, K), got {tuple(lp.shape)}")
    if tg.numel() == 0:
        return torch.zeros(lp.shape[0], dtype=torch.long), lp[:, 0].clone()
    if int(tg.min()) < 1 or int(tg.max()) >= lp.shape[1]:
        raise DataError(f"utterance '{utt}': targets must be token ids in 1..{lp.shape[1] - 1}")
    need = tg.numel() + int((tg[1:] == tg[:-1]).sum())
    if lp.shape[0] < need:
        raise DataError(f"utterance '{utt}': {lp.shape[0]} frames cannot hold {tg.numel()} tokens "
                        f"({need} frames needed)")
    ali, scores = taF.forced_align(lp[None].contiguous(), tg[None], blank=0)
    return ali[0].long(), scores[0]


def token_segments(frame_tokens: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(token, first frame, last frame + 1)`` of every non-blank run of a frame path."""
    out: list[tuple[int, int, int]] = []
    prev = 0
    for t, k in enumerate(frame_tokens):
        k = int(k)
        if k != 0 and k == prev:
            out[-1] = (k, out[-1][1], t + 1)
        elif k != 0:
            out.append((k, t, t + 1))
        prev = k
    return out


# ------------------------------------------------------------------------------------ scoring

def token_error_line(result: ScoreResult, name: str = "PER") -> str:
    """``%PER 3.10 [ 12 / 387, 2 ins, 5 del, 5 sub ]``: the WER line of a token-level score."""
    return "%" + name + result.wer_line()[len("%WER"):]
