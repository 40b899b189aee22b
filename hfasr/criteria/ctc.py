"""CTC criterion with the convex (Cho et al. 2015) curvature for Hessian-free training.

- :class:`TokenTable`: CTC vocabulary, blank = id 0; characters (with a word-boundary token) or
  phones through a lexicon (word → phones).
- :func:`ctc_loss`: summed CTC loss of per-frame logits (``log_softmax`` then
  ``torch.nn.functional.ctc_loss``), and the count it should be normalised by (utterances,
  output frames, or 1). Its gradient w.r.t. the logits is exactly ``y − γ`` (γ = CTC state
  posteriors; Graves et al. 2006).
- :func:`ctc_curvature`: the convexified Gauss-Newton block: per-frame softmax Fisher
  ``diag(y_t) − y_t y_tᵀ`` with padded frames masked out (Cho, Dhir & Lee 2015) — the Hessian of
  the EM surrogate ``−Σ_t γ_tᵀ log softmax(z_t)`` and an upper bound (in the PSD order) of the
  exact CTC Hessian, whose dropped term is ``−Cov_{π|l}[φ]``.
- :class:`CtcLoss`: both as a batch criterion (:class:`hfasr.optim.BatchCriterion`) for
  batches whose target is ``(targets (B, S), target_lens, output_lens)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from hfasr.criteria.curvature import SoftmaxFisher
from hfasr.errors import DataError

Normalize = Literal["utterance", "frame", "none"]

BLANK = "<blk>"
SPACE = "<space>"


# --------------------------------------------------------------------------- vocabulary
class TokenTable:
    """CTC tokens: id 0 is the blank, ids 1..K−1 the units (characters or phones).

    ``unit="char"``: a transcript is split into words, each word into characters, and words are
    separated by ``word_boundary`` (``None``: no boundary token). ``unit="phone"``: every word
    is replaced by its (first) pronunciation in ``lexicon``.
    """

    def __init__(self, tokens: Sequence[str], unit: Literal["char", "phone"] = "char",
                 lexicon: Mapping[str, Sequence[str]] | None = None, word_boundary: str | None = SPACE) -> None:
        if unit not in ("char", "phone"):
            raise ValueError(f"unit must be 'char' or 'phone', got {unit!r}")
        if unit == "phone" and lexicon is None:
            raise ValueError("a phone TokenTable needs a lexicon")
        tokens = list(tokens)
        if BLANK in tokens:
            raise ValueError(f"{BLANK} is reserved for the blank (id 0)")
        if len(set(tokens)) != len(tokens):
            raise ValueError("duplicate tokens")
        self.unit = unit
        self.tokens = [BLANK] + tokens
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.word_boundary = word_boundary if unit == "char" else None
        self.lexicon = None if lexicon is None else _first_prons(lexicon)

    # ---- construction
    @classmethod
    def from_transcripts(cls, transcripts: Iterable[str], word_boundary: str | None = SPACE) -> TokenTable:
        """Character table of all characters seen (sorted), plus the word-boundary token."""
        chars = sorted({ch for text in transcripts for w in text.split() for ch in w})
        return cls(chars + ([word_boundary] if word_boundary else []), "char", word_boundary=word_boundary)

    @classmethod
    def from_lexicon(cls, lexicon: Mapping[str, Sequence[str]] | object) -> TokenTable:
        """Phone table of all phones of the lexicon's first pronunciations (sorted). ``lexicon``:
        word → phones (a sequence or a space-separated string), word → list of pronunciations,
        or an object with such a ``prons`` mapping (:class:`hfasr.lang.lexicon.Lexicon`)."""
        lex = _first_prons(lexicon)
        return cls(sorted({p for ph in lex.values() for p in ph}), "phone", lexicon=lex)

    # ---- use
    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def blank(self) -> int:
        return 0

    def units(self, transcript: str) -> list[str]:
        """The token strings of a transcript (DataError naming an unknown word/character)."""
        words = transcript.split()
        out: list[str] = []
        for i, w in enumerate(words):
            if self.unit == "phone":
                assert self.lexicon is not None
                if w not in self.lexicon:
                    raise DataError(f"word {w!r} of transcript {transcript!r} is not in the lexicon")
                out += self.lexicon[w]
            else:
                if i and self.word_boundary:
                    out.append(self.word_boundary)
                out += list(w)
        for u in out:
            if u not in self.ids:
                raise DataError(f"token {u!r} of transcript {transcript!r} is not in the token table")
        return out

    def encode(self, transcript: str) -> list[int]:
        """Token ids (≥ 1) of a transcript."""
        return [self.ids[u] for u in self.units(transcript)]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Token strings of ids (blanks dropped, no collapsing)."""
        return [self.tokens[i] for i in ids if i != 0]

    def to_text(self, ids: Iterable[int]) -> str:
        """Character tables: the transcript of ids; phone tables: the phones joined by spaces."""
        units = self.decode(ids)
        if self.unit == "phone":
            return " ".join(units)
        words, cur = [], ""
        for u in units:
            if u == self.word_boundary:
                words.append(cur)
                cur = ""
            else:
                cur += u
        return " ".join(w for w in [*words, cur] if w)

    def batch(self, transcripts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Padded target ids (B, S_max) and lengths (B,) for ``ctc_loss``."""
        seqs = [self.encode(t) for t in transcripts]
        lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        out = torch.zeros(len(seqs), max(1, int(lens.max()) if len(seqs) else 1), dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return out, lens

    def write(self, path: str | Path) -> None:
        """Kaldi-style ``tokens.txt``: ``token id`` per line (written atomically)."""
        from hfasr.fileio import write_text

        write_text(path, "".join(f"{t} {i}\n" for i, t in enumerate(self.tokens)))

    @classmethod
    def read(cls, path: str | Path, lexicon: Mapping[str, Sequence[str]] | None = None,
             word_boundary: str | None = SPACE) -> TokenTable:
        """Read ``tokens.txt`` (blank first); a lexicon makes it a phone table."""
        rows = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
        for n, r in enumerate(rows):
            if len(r) != 2 or r[1] != str(n):
                raise DataError(f"{path}: line {n + 1}: expected 'token {n}', got {' '.join(r)!r}")
        if not rows or rows[0][0] != BLANK:
            raise DataError(f"{path}: the first token must be {BLANK}")
        toks = [r[0] for r in rows[1:]]
        if lexicon is not None:
            return cls(toks, "phone", lexicon=lexicon)
        return cls(toks, "char", word_boundary=word_boundary if word_boundary in toks else None)


def _first_prons(lexicon: Mapping | object) -> dict[str, tuple[str, ...]]:
    lex = getattr(lexicon, "prons", lexicon)
    out: dict[str, tuple[str, ...]] = {}
    for w, p in lex.items():  # type: ignore[union-attr]
        if isinstance(p, str):
            out[w] = tuple(p.split())
        elif len(p) and not isinstance(p[0], str):  # list of pronunciations
            out[w] = tuple(p[0])
        else:
            out[w] = tuple(p)
    return out


# --------------------------------------------------------------------------- loss and curvature
def frame_mask(lengths: Tensor, T: int) -> Tensor:
    """Bool (B, T): True at frames t < lengths[b]."""
    return torch.arange(T, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def ctc_loss(logits: Tensor, logit_lens: Tensor, targets: Tensor, target_lens: Tensor,
             normalize: Normalize = "utterance", zero_infinity: bool = True) -> tuple[Tensor, int]:
    """Summed CTC loss of logits (B, T, K) (blank 0) and the count to divide it by.

    ``normalize``: ``"utterance"`` (count = B), ``"frame"`` (count = Σ logit_lens) or ``"none"``
    (count = 1). ``zero_infinity``: utterances too short for their targets contribute 0.
    """
    lp = torch.log_softmax(logits, -1).transpose(0, 1)  # (T, B, K)
    count = ctc_count(logit_lens, normalize)
    loss = nn.functional.ctc_loss(lp, targets, logit_lens.cpu(), target_lens.cpu(), blank=0, reduction="sum",
                                  zero_infinity=zero_infinity)
    return loss, count


def ctc_curvature(logits: Tensor, logit_lens: Tensor) -> SoftmaxFisher:
    """Convex CTC curvature: per-frame ``diag(y_t) − y_t y_tᵀ`` on valid frames (PSD)."""
    return SoftmaxFisher(logits, frame_mask(logit_lens.to(logits.device), logits.shape[1]))


def ctc_count(output_lens: Tensor, normalize: Normalize) -> int:
    """What the summed loss of a batch is normalised by (see :func:`ctc_loss`)."""
    if normalize == "utterance":
        return int(output_lens.shape[0])
    if normalize == "frame":
        return int(output_lens.sum())
    if normalize == "none":
        return 1
    raise ValueError(f"normalize must be 'utterance', 'frame' or 'none', got {normalize!r}")


class CtcLoss:
    """CTC as a batch criterion: ``batch.target = (targets (B, S), target_lens, output_lens)``."""

    def __init__(self, normalize: Normalize = "frame", zero_infinity: bool = True) -> None:
        self.normalize = normalize
        self.zero_infinity = zero_infinity

    def loss(self, outputs: Tensor, batch) -> Tensor:
        targets, tlens, olens = batch.target
        return ctc_loss(outputs, olens, targets, tlens, self.normalize, self.zero_infinity)[0]

    def curvature(self, outputs: Tensor, batch) -> SoftmaxFisher:
        return ctc_curvature(outputs, batch.target[2])
