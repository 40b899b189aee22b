"""CTC criterion with the convex (Cho et al. 2015) curvature for Hessian-free training.

- :class:`TokenTable`: CTC vocabulary, blank = id 0; characters (with a word-boundary token) or
  phones through a lexicon (word → phones).
- :func:`ctc_loss`: summed CTC loss of per-frame logits (``log_softmax`` then
  ``torch.nn.functional.ctc_loss``), and the count it should be normalised by (utterances,
  output frames, or 1). Its gradient w.r.t. the logits is exactly ``y − γ`` (γ = CTC state
  posteriors; literature digest §7.2).
- :func:`ctc_curvature`: the convexified Gauss-Newton block: per-frame softmax Fisher
  ``diag(y_t) − y_t y_tᵀ`` with padded frames masked out (digest §7.2, §13.2) — the Hessian of
  the EM surrogate ``−Σ_t γ_tᵀ log softmax(z_t)`` and an upper bound (in the PSD order) of the
  exact CTC Hessian, whose dropped term is ``−Cov_{π|l}[φ]``.
- :class:`CtcObjective`: an :class:`~hfasr.optim.hf.HFObjective` over batches of utterances
  ``(feats (B, T, F), feat_lens, targets (B, S), target_lens)`` for models called as
  ``model(feats, feat_lens[, return_preacts=True])`` with ``model.output_lengths`` (BLSTM,
  MDLSTM, or any model mapping (B, T, F) to (B, T', K)).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from hfasr.errors import DataError
from hfasr.optim.curvature import SoftmaxFisher
from hfasr.optim.gn import GaussNewton, ModelGaussNewton, flatten

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
        """Kaldi-style ``tokens.txt``: ``token id`` per line."""
        Path(path).write_text("".join(f"{t} {i}\n" for i, t in enumerate(self.tokens)))

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


def ctc_greedy(logits: Tensor, lengths: Tensor) -> list[list[int]]:
    """Best-path decoding: argmax per frame, merge repeats, drop blanks."""
    best = logits.argmax(-1).cpu()
    out = []
    for b, L in enumerate(lengths.tolist()):
        seq, prev = [], 0
        for k in best[b, :L].tolist():
            if k != prev and k != 0:
                seq.append(k)
            prev = k
        out.append(seq)
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
    loss = nn.functional.ctc_loss(lp, targets, logit_lens.cpu(), target_lens.cpu(), blank=0, reduction="sum",
                                  zero_infinity=zero_infinity)
    if normalize == "utterance":
        count = int(logits.shape[0])
    elif normalize == "frame":
        count = int(logit_lens.sum())
    elif normalize == "none":
        count = 1
    else:
        raise ValueError(f"normalize must be 'utterance', 'frame' or 'none', got {normalize!r}")
    return loss, count


def ctc_curvature(logits: Tensor, logit_lens: Tensor) -> SoftmaxFisher:
    """Convex CTC curvature: per-frame ``diag(y_t) − y_t y_tᵀ`` on valid frames (PSD)."""
    return SoftmaxFisher(logits, frame_mask(logit_lens.to(logits.device), logits.shape[1]))


# --------------------------------------------------------------------------- HF objective
Batch = tuple[Tensor, Tensor, Tensor, Tensor]  # feats (B,T,F), feat_lens (B,), targets (B,S), target_lens (B,)


def _output_lengths(model: nn.Module, lens: Tensor) -> Tensor:
    fn = getattr(model, "output_lengths", None)
    return lens if fn is None else fn(lens)


def collate(utts: Sequence[tuple[Tensor, Tensor]]) -> Batch:
    """Pad a list of (feats (T_i, F), target ids (S_i,)) into a :data:`Batch`."""
    T = max(int(f.shape[0]) for f, _ in utts)
    S = max(1, max(int(t.shape[0]) for _, t in utts))
    feats = utts[0][0].new_zeros(len(utts), T, utts[0][0].shape[1])
    targets = torch.zeros(len(utts), S, dtype=torch.long)
    for i, (f, t) in enumerate(utts):
        feats[i, : f.shape[0]] = f
        targets[i, : t.shape[0]] = t
    return (feats, torch.tensor([f.shape[0] for f, _ in utts], dtype=torch.long), targets,
            torch.tensor([t.shape[0] for _, t in utts], dtype=torch.long))


class CtcObjective:
    """HF objective: CTC on utterance batches; gradient on all of ``batches``, curvature on a
    random subset of their utterances.

    Args:
        model: ``model(feats, lens)`` → logits (B, T', K); ``model.output_lengths(lens)``.
        batches: the gradient data, a sequence of :data:`Batch` tuples.
        heldout_batches: held-out data (ρ / backtracking / line search), or None.
        curvature_fraction: fraction of the utterances in the curvature batch (at least
            ``curvature_min_utts``), drawn with the optimizer's generator at every update.
        normalize: losses and G are divided by the number of utterances or of output frames.
        structural: run the model with ``return_preacts=True`` in the curvature batch and wire
            ``model.structural_weights`` into :class:`GaussNewton` (set HFConfig's
            ``structural_damping`` μ > 0 to use it).
        jvp_mode: how J v is computed: ``"model"`` (:class:`ModelGaussNewton`, the model's
            hand-written R-op; the default for models with a ``linearize`` method), or
            ``"linearize"`` / ``"double-vjp"`` (:class:`GaussNewton`'s modes, for any model).

    Martens' preconditioner needs per-example squared gradients; as in
    :class:`~hfasr.optim.objective.TensorObjective` each batch counts as one example:
    ``g2 = Σ_b (Σ_{u∈b} ∇ℓ_u)² / N``.
    """

    def __init__(self, model: nn.Module, batches: Sequence[Batch], heldout_batches: Sequence[Batch] | None = None,
                 curvature_fraction: float = 0.1, curvature_min_utts: int = 8, normalize: Normalize = "utterance",
                 structural: bool = False, zero_infinity: bool = True, jvp_mode: str = "auto") -> None:
        if not batches:
            raise ValueError("CtcObjective needs at least one batch")
        self.model = model
        self.batches = list(batches)
        self.heldout = None if heldout_batches is None else list(heldout_batches)
        self.curvature_fraction = curvature_fraction
        self.curvature_min_utts = curvature_min_utts
        self.normalize = normalize
        self.structural = structural
        self.zero_infinity = zero_infinity
        if jvp_mode == "auto":
            jvp_mode = "model" if hasattr(model, "linearize") else "linearize"
        if jvp_mode not in ("model", "linearize", "double-vjp"):
            raise ValueError(f"jvp_mode must be 'auto', 'model', 'linearize' or 'double-vjp', got {jvp_mode!r}")
        if jvp_mode == "double-vjp" and structural:
            raise ValueError("GaussNewton's 'double-vjp' mode does not support structural damping; use 'model' or 'linearize'")
        self.jvp_mode = jvp_mode
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.index = [(b, i) for b, batch in enumerate(self.batches) for i in range(batch[0].shape[0])]
        self._curv_batch: Batch | None = None

    def _loss(self, batch: Batch) -> tuple[Tensor, int]:
        feats, flens, targets, tlens = batch
        z = self.model(feats, flens)
        return ctc_loss(z, _output_lengths(self.model, flens), targets, tlens, self.normalize, self.zero_infinity)

    def gradient(self, generator: torch.Generator) -> tuple[float, Tensor, Tensor | None]:
        self.model.eval()
        total, count = 0.0, 0
        gsum = g2 = None
        for batch in self.batches:
            loss, n = self._loss(batch)
            fg = flatten(torch.autograd.grad(loss, self.params)).detach()
            gsum = fg if gsum is None else gsum + fg
            g2 = fg * fg if g2 is None else g2 + fg * fg
            total += float(loss.detach())
            count += n
        return total / count, gsum / count, g2 / count

    def _subset(self, generator: torch.Generator) -> Batch:
        n = len(self.index)
        m = min(n, max(self.curvature_min_utts, math.ceil(self.curvature_fraction * n)))
        pick = torch.randperm(n, generator=generator)[:m].sort().values.tolist()
        utts = []
        for k in pick:
            b, i = self.index[k]
            feats, flens, targets, tlens = self.batches[b]
            utts.append((feats[i, : int(flens[i])], targets[i, : int(tlens[i])]))
        return collate(utts)

    def curvature(self, generator: torch.Generator) -> GaussNewton:
        self._curv_batch = batch = self._subset(generator)
        feats, flens, _, _ = batch
        self.model.eval()
        olens = _output_lengths(self.model, flens)
        with torch.no_grad():
            _, count = self._loss(batch)
        kwargs = {"return_preacts": True} if self.structural else {}

        def fn(params: tuple[Tensor, ...]):
            return functional_call(self.model, dict(zip(self.names, params)), (feats, flens), kwargs)

        sw = (lambda acts: self.model.structural_weights(acts, olens)) if self.structural else None
        params = [p.detach() for p in self.params]
        curv = lambda z: ctc_curvature(z, olens)
        if self.jvp_mode == "model":
            return ModelGaussNewton(self.model, self.names, fn, params, curv, normalizer=count, structural_weights=sw,
                                    args=(feats, flens), kwargs=kwargs)
        return GaussNewton(fn, params, curv, normalizer=count, structural_weights=sw, jvp_mode=self.jvp_mode)

    @torch.no_grad()
    def _mean_loss(self, batches: Sequence[Batch]) -> float:
        self.model.eval()
        total, count = 0.0, 0
        for batch in batches:
            loss, n = self._loss(batch)
            total += float(loss)
            count += n
        return total / count

    def loss(self, role: str) -> float:
        if role == "gradient":
            return self._mean_loss(self.batches)
        if role == "curvature":
            if self._curv_batch is None:
                raise RuntimeError("curvature() must be called before loss('curvature')")
            return self._mean_loss([self._curv_batch])
        if role == "heldout":
            if self.heldout is None:
                raise ValueError("this HF configuration uses held-out data but the objective has none")
            return self._mean_loss(self.heldout)
        raise ValueError(f"unknown data role {role!r}")
