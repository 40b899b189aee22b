"""Word n-gram language models with interpolated Witten-Bell smoothing, in ARPA format.

Small corpora (yesno, digits, the synth prompts, a LibriSpeech training text) need nothing more
than a correctly normalised backoff model, so this module trains one directly instead of
depending on an external toolkit. The model is the interpolated Witten-Bell estimate

    p(w | h) = (c(h w) + T(h) p(w | h')) / (c(h) + T(h)),

where ``c(h)`` counts the tokens after history ``h``, ``T(h)`` the distinct words seen after it
and ``h'`` is ``h`` without its oldest word; at the bottom the unigram interpolates with the
uniform distribution over the vocabulary (every lexicon word and ``</s>``), so that words that
never occur in the training text keep a small probability. Written as ARPA, the n-grams seen in
training store this interpolated probability and every history stores the backoff weight
``T(h) / (c(h) + T(h))``, which reproduces the interpolated model exactly; each history's
distribution sums to one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hfasr.errors import DataError
from hfasr.fileio import write_text

BOS, EOS = "<s>", "</s>"
_LOG10_ZERO = -99.0


@dataclass
class NgramLM:
    """A backoff n-gram model: ``probs[k]`` maps a k-gram tuple to ``log10 p(last | rest)``,
    ``backoffs`` maps a history tuple to its ``log10`` backoff weight."""

    order: int
    vocab: list[str]
    probs: list[dict[tuple[str, ...], float]] = field(default_factory=list)
    backoffs: dict[tuple[str, ...], float] = field(default_factory=dict)

    def log10_prob(self, word: str, history: Iterable[str]) -> float:
        """``log10 p(word | history)`` by the ARPA backoff rule (history: oldest word first)."""
        h = tuple(history)[-(self.order - 1):] if self.order > 1 else ()
        bow = 0.0
        while True:
            ng = h + (word,)
            lp = self.probs[len(ng)].get(ng)
            if lp is not None:
                return bow + lp
            if not h:
                return _LOG10_ZERO
            bow += self.backoffs.get(h, 0.0)
            h = h[1:]

    def prob(self, word: str, history: Iterable[str] = ()) -> float:
        return 10.0 ** self.log10_prob(word, history)

    def histories(self) -> list[tuple[str, ...]]:
        """Every history the model has a distribution for (``()`` and those with a backoff)."""
        return [()] + sorted(self.backoffs)

    def write_arpa(self, path: str | Path) -> None:
        """Write ARPA text (``\\data\\``, one ``\\k-grams:`` section per order, ``\\end\\``)."""
        lines = ["", "\\data\\"]
        for k in range(1, self.order + 1):
            lines.append(f"ngram {k}={len(self.probs[k])}")
        for k in range(1, self.order + 1):
            lines += ["", f"\\{k}-grams:"]
            for ng in sorted(self.probs[k]):
                s = f"{self.probs[k][ng]:.7f}\t{' '.join(ng)}"
                if k < self.order and ng in self.backoffs:
                    s += f"\t{self.backoffs[ng]:.7f}"
                lines.append(s)
        lines += ["", "\\end\\", ""]
        write_text(path, "\n".join(lines))


def train_witten_bell(sentences: Iterable[list[str]], vocab: Iterable[str], order: int = 3) -> NgramLM:
    """Train an interpolated Witten-Bell model of ``order`` on tokenised ``sentences``.

    ``vocab`` is the set of words the model may predict (every sentence word must be in it);
    ``<s>`` and ``</s>`` are added. Raises DataError for an empty text or an out-of-vocabulary
    word.
    """
    if order < 1:
        raise DataError(f"n-gram order must be >= 1, got {order}")
    vocab = sorted(set(vocab) - {BOS, EOS})
    vset = set(vocab)
    # counts[k][(h, w)]: k-gram counts (h has k-1 words)
    counts: list[dict[tuple[str, ...], int]] = [{} for _ in range(order + 1)]
    n_sent = 0
    for sent in sentences:
        for w in sent:
            if w not in vset:
                raise DataError(f"LM training text has word '{w}' that is not in the vocabulary")
        toks = [BOS] + list(sent) + [EOS]
        n_sent += 1
        for i in range(1, len(toks)):
            for k in range(1, order + 1):
                if i - k + 1 < 0:
                    break
                ng = tuple(toks[i - k + 1 : i + 1])
                counts[k][ng] = counts[k].get(ng, 0) + 1
    if n_sent == 0:
        raise DataError("LM training text is empty")

    # per-history totals c(h) and type counts T(h)
    hist_tot: dict[tuple[str, ...], int] = defaultdict(int)
    hist_types: dict[tuple[str, ...], int] = defaultdict(int)
    for k in range(1, order + 1):
        for ng, c in counts[k].items():
            hist_tot[ng[:-1]] += c
            hist_types[ng[:-1]] += 1

    lm = NgramLM(order=order, vocab=vocab, probs=[{} for _ in range(order + 1)])
    targets = vocab + [EOS]
    c0, t0 = hist_tot[()], hist_types[()]
    uniform = 1.0 / len(targets)
    p_lower: dict[tuple[str, ...], float] = {}
    for w in targets:  # unigram: interpolate with uniform over the vocabulary
        p = (counts[1].get((w,), 0) + t0 * uniform) / (c0 + t0)
        p_lower[(w,)] = p
        lm.probs[1][(w,)] = math.log10(p)
    lm.probs[1][(BOS,)] = _LOG10_ZERO

    def p_interp(ng: tuple[str, ...]) -> float:
        """Interpolated probability of the last word of ``ng`` given the rest (any order)."""
        if len(ng) == 1:
            return p_lower[ng]
        h = ng[:-1]
        lower = p_interp(ng[1:])
        if h not in hist_tot:
            return lower
        return (counts[len(ng)].get(ng, 0) + hist_types[h] * lower) / (hist_tot[h] + hist_types[h])

    for k in range(2, order + 1):
        for ng in counts[k]:
            lm.probs[k][ng] = math.log10(p_interp(ng))
    for h, tot in hist_tot.items():
        if h:
            lm.backoffs[h] = math.log10(hist_types[h] / (tot + hist_types[h]))
    # a history must itself be an n-gram entry to carry its backoff weight
    for h in lm.backoffs:
        if h not in lm.probs[len(h)]:
            raise AssertionError(f"history {h} missing from the {len(h)}-grams")
    return lm


def perplexity(lm: NgramLM, sentences: Iterable[list[str]]) -> tuple[float, int, int]:
    """Perplexity of ``lm`` on tokenised ``sentences``, counted as SRILM's ``ngram -ppl`` does.

    Each sentence is scored as ``<s> w1 .. wn </s>`` (``</s>`` included). Words outside the
    model's vocabulary (OOV) are not scored and not counted; the words after one see it in their
    history and so back off past it. Returns ``(ppl, n_words, n_oov)``: ``n_words`` counts the
    sentence words (without ``</s>``, OOVs included), and
    ``ppl = 10 ** (-sum log10 p / (n_words - n_oov + n_sentences))``; ``inf`` with nothing to score.
    """
    vocab = set(lm.vocab)
    logprob, n_words, n_oov, n_sent = 0.0, 0, 0, 0
    for sent in sentences:
        n_sent += 1
        hist = [BOS]
        for w in list(sent) + [EOS]:
            if w != EOS:
                n_words += 1
                if w not in vocab:
                    n_oov += 1
                    hist.append(w)
                    continue
            logprob += lm.log10_prob(w, hist)
            hist.append(w)
    denom = n_words - n_oov + n_sent
    return (10.0 ** (-logprob / denom) if denom else math.inf), n_words, n_oov


def read_arpa(path: str | Path) -> NgramLM:
    """Parse an ARPA file (used by tests and for inspecting models)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"ARPA file not found: {path}")
    probs: list[dict[tuple[str, ...], float]] = [{}]
    backoffs: dict[tuple[str, ...], float] = {}
    k = 0
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("ngram ") or line == "\\data\\":
            continue
        if line == "\\end\\":
            break
        if line.startswith("\\") and line.endswith("-grams:"):
            k = int(line[1:].split("-")[0])
            while len(probs) <= k:
                probs.append({})
            continue
        if k == 0:
            continue
        fields = line.split()
        if len(fields) not in (k + 1, k + 2):
            raise DataError(f"{path}:{lineno}: malformed {k}-gram line: {line!r}")
        ng = tuple(fields[1 : k + 1])
        probs[k][ng] = float(fields[0])
        if len(fields) == k + 2:
            backoffs[ng] = float(fields[k + 1])
    if len(probs) < 2:
        raise DataError(f"{path}: no n-grams found")
    vocab = sorted(w for (w,) in probs[1] if w not in (BOS, EOS))
    return NgramLM(order=len(probs) - 1, vocab=vocab, probs=probs, backoffs=backoffs)


def restrict_lm(lm: NgramLM, words: set[str]) -> NgramLM:
    """``lm`` without the n-grams (and backoff weights) that contain a word outside ``words``
    (``<s>`` and ``</s>`` are kept), as Kaldi's ``remove_oovs.pl`` does before ``arpa2fst``: the
    remaining model is not renormalised. A DataError if no unigram is left."""
    keep = words | {BOS, EOS}
    probs = [{ng: p for ng, p in d.items() if all(w in keep for w in ng)} for d in lm.probs]
    if not any(ng[0] in words for ng in probs[1]):
        raise DataError(f"the LM shares no word with the lexicon ({len(lm.vocab)} LM words, {len(words)} lexicon words)")
    backoffs = {h: b for h, b in lm.backoffs.items() if all(w in keep for w in h)}
    return NgramLM(order=lm.order, vocab=[w for w in lm.vocab if w in words], probs=probs, backoffs=backoffs)
