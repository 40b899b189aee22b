"""Word error rate scoring with kaldialign, in Kaldi's formats.

* :func:`score` aligns every reference utterance with its hypothesis (``kaldialign.align``;
  Kaldi's edit distance, costs ins = del = sub = 1) and totals the errors;
* :meth:`ScoreResult.wer_line` is ``compute-wer``'s ``%WER 4.17 [ 10 / 240, 6 ins, 2 del, 2 sub ]``
  (two decimals; the percentage is rounded through a 32-bit float as Kaldi's ``BaseFloat``),
  :meth:`ScoreResult.ser_line` its ``%SER 13.33 [ 4 / 30 ]``;
* :func:`bootstrap_ci` is the 95 % confidence interval of ``compute-wer-bootci``
  (``kaldialign.bootstrap_wer_ci``, Bisani & Ney 2004), reported in percent;
* :func:`write_results` writes ``wer.txt`` and ``errs-<set>.txt``.

Utterances missing from the hypothesis follow ``compute-wer --mode``: ``strict`` (the default)
is an error naming them; ``all`` scores them as empty hypotheses (all deletions), logs a warning
and marks the %WER line ``[PARTIAL]``; ``present`` leaves them out of the totals (also marked
``[PARTIAL]``). Hypothesis utterances without a reference are ignored with a warning, as
``compute-wer`` (which iterates over the reference) does.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from hfasr import fileio
from hfasr._kaldi import kaldialign
from hfasr.errors import DataError

log = logging.getLogger(__name__)

EPS = "***"  # Kaldi's marker of an inserted / deleted word in aligned output
Mode = Literal["strict", "all", "present"]
Text = Mapping[str, Sequence[str]]


# ------------------------------------------------------------------------------------- text I/O


def read_text(path: str | Path) -> dict[str, list[str]]:
    """Read a Kaldi text file (``utt-id word word ...`` per line; an id alone = empty text).

    Blank lines are skipped; a repeated utterance id is a DataError naming file, line and id.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text file not found: {path}")
    out: dict[str, list[str]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        f = line.split()
        if not f:
            continue
        if f[0] in out:
            raise DataError(f"{path}:{lineno}: utterance '{f[0]}' appears twice")
        out[f[0]] = f[1:]
    return out


def write_text(path: str | Path, text: Text) -> None:
    """Write ``utt-id word word ...`` lines, sorted by utterance id (Kaldi's convention),
    atomically (:func:`hfasr.fileio.write_text`)."""
    lines = [" ".join([u, *text[u]]) for u in sorted(text)]
    fileio.write_text(path, "".join(line + "\n" for line in lines))


# -------------------------------------------------------------------------------------- scoring


@dataclass
class UttScore:
    """One utterance: its alignment (``(ref, hyp)`` pairs, :data:`EPS` for a gap) and counts."""

    utt: str
    alignment: list[tuple[str, str]]
    ins: int
    dels: int
    subs: int
    ref_len: int

    @property
    def errors(self) -> int:
        return self.ins + self.dels + self.subs

    @property
    def correct(self) -> int:
        return self.ref_len - self.dels - self.subs


@dataclass
class ScoreResult:
    """Corpus totals and the per-utterance details."""

    utts: list[UttScore] = field(default_factory=list)
    num_absent: int = 0  # reference utterances without a hypothesis (modes all / present)

    @property
    def ins(self) -> int:
        return sum(u.ins for u in self.utts)

    @property
    def dels(self) -> int:
        return sum(u.dels for u in self.utts)

    @property
    def subs(self) -> int:
        return sum(u.subs for u in self.utts)

    @property
    def errors(self) -> int:
        return self.ins + self.dels + self.subs

    @property
    def ref_words(self) -> int:
        return sum(u.ref_len for u in self.utts)

    @property
    def num_sents(self) -> int:
        return len(self.utts)

    @property
    def sent_errors(self) -> int:
        return sum(1 for u in self.utts if u.errors > 0)

    @property
    def wer(self) -> float:
        """WER in percent, as Kaldi prints it (rounded to a 32-bit float)."""
        return _percent(self.errors, self.ref_words)

    @property
    def ser(self) -> float:
        """Sentence error rate in percent."""
        return _percent(self.sent_errors, self.num_sents)

    def wer_line(self) -> str:
        """``%WER 4.17 [ 10 / 240, 6 ins, 2 del, 2 sub ]`` (+ `` [PARTIAL]`` if any absent)."""
        s = (f"%WER {self.wer:.2f} [ {self.errors} / {self.ref_words}, {self.ins} ins, "
             f"{self.dels} del, {self.subs} sub ]")
        return s + (" [PARTIAL]" if self.num_absent else "")

    def ser_line(self) -> str:
        """``%SER 13.33 [ 4 / 30 ]``."""
        return f"%SER {self.ser:.2f} [ {self.sent_errors} / {self.num_sents} ]"

    def scored_line(self) -> str:
        return f"Scored {self.num_sents} sentences, {self.num_absent} not present in hyp."

    def refs(self) -> list[list[str]]:
        return [[r for r, _ in u.alignment if r != EPS] for u in self.utts]

    def hyps(self) -> list[list[str]]:
        return [[h for _, h in u.alignment if h != EPS] for u in self.utts]


def _percent(num: int, den: int) -> float:
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return float(np.float32(100.0 * num / den))  # Kaldi: BaseFloat percent = 100.0 * e / n


def score_utterance(utt: str, ref: Sequence[str], hyp: Sequence[str]) -> UttScore:
    """Align ``ref`` and ``hyp`` (kaldialign, Kaldi's costs) and count the errors."""
    ref, hyp = list(ref), list(hyp)
    for w in (*ref, *hyp):
        if w == EPS:
            raise DataError(f"utterance '{utt}': the word '{EPS}' is reserved for alignment gaps")
    ali = kaldialign.align(ref, hyp, EPS) if (ref or hyp) else []
    ins = sum(1 for r, _ in ali if r == EPS)
    dels = sum(1 for _, h in ali if h == EPS)
    subs = sum(1 for r, h in ali if r != EPS and h != EPS and r != h)
    return UttScore(utt, [tuple(p) for p in ali], ins, dels, subs, len(ref))


def score(refs: Text, hyps: Text, mode: Mode = "strict") -> ScoreResult:
    """Score ``hyps`` against ``refs`` (utterance id -> words), in ``refs``' id order.

    ``mode`` says what to do with reference utterances missing from ``hyps`` (see the module
    docstring); ``strict`` raises a DataError naming the first few.
    """
    if mode not in ("strict", "all", "present"):
        raise DataError(f"unknown scoring mode '{mode}' (expected strict, all or present)")
    missing = [u for u in refs if u not in hyps]
    if missing and mode == "strict":
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"{len(missing)} reference utterance(s) have no hypothesis: "
                        f"{', '.join(missing[:5])}{more} (score with mode 'all' to count them "
                        "as deletions or 'present' to skip them)")
    if missing:
        log.warning("%d reference utterance(s) have no hypothesis (e.g. %s): %s", len(missing),
                    missing[0], "scored as all deletions" if mode == "all" else "not scored")
    extra = [u for u in hyps if u not in refs]
    if extra:
        log.warning("%d hypothesis utterance(s) have no reference (e.g. %s): ignored",
                    len(extra), extra[0])
    res = ScoreResult(num_absent=len(missing))
    for u, ref in refs.items():
        if u in hyps:
            res.utts.append(score_utterance(u, ref, hyps[u]))
        elif mode == "all":
            res.utts.append(score_utterance(u, ref, []))
    return res


# -------------------------------------------------------------------------- confidence interval


@dataclass
class ConfidenceInterval:
    """Bootstrap estimate of the WER (percent): mean and 95 % interval."""

    mean: float
    lo: float
    hi: float

    def line(self) -> str:
        return f"95% CI [{self.lo:.2f}, {self.hi:.2f}]"


def bootstrap_ci(result: ScoreResult, replications: int = 10000, seed: int = 0) -> ConfidenceInterval:
    """95 % bootstrap interval of the WER over utterances (``compute-wer-bootci``).

    The lower bound is clipped at 0. With no scored utterance the interval is ``[0, 0]``.
    """
    refs, hyps = result.refs(), result.hyps()
    if not refs or result.ref_words == 0:
        return ConfidenceInterval(result.wer, result.wer, result.wer)
    ci = kaldialign.bootstrap_wer_ci(refs, hyps, replications=replications, seed=seed)
    return ConfidenceInterval(100.0 * ci["wer"], max(0.0, 100.0 * ci["ci95min"]), 100.0 * ci["ci95max"])


# ------------------------------------------------------------------------------------- reports


def aligned_lines(u: UttScore) -> list[str]:
    """Kaldi's per-utterance detail (``wer_per_utt_details.pl``), columns padded to align::

        utt ref  yes  NO   ***  YES
        utt hyp  yes  YES  NO   ***
        utt op   C    S    I    D
        utt #csid 1 1 1 1

    As in sclite's alignments, correct words are written in lower case and errors in upper
    case, :data:`EPS` fills the gap of an insertion or deletion; ``op`` is C(orrect),
    S(ubstitution), I(nsertion), D(eletion); ``#csid`` counts them.
    """
    ref_c, hyp_c, op_c = [], [], []
    for r, h in u.alignment:
        op = "I" if r == EPS else "D" if h == EPS else "C" if r == h else "S"
        r, h = (r.lower(), h.lower()) if op == "C" else (r.upper(), h.upper())
        w = max(len(r), len(h), 1)
        ref_c.append(r.ljust(w))
        hyp_c.append(h.ljust(w))
        op_c.append(op.ljust(w))
    return [f"{u.utt} ref  {'  '.join(ref_c)}".rstrip(),
            f"{u.utt} hyp  {'  '.join(hyp_c)}".rstrip(),
            f"{u.utt} op   {'  '.join(op_c)}".rstrip(),
            f"{u.utt} #csid {u.correct} {u.subs} {u.ins} {u.dels}"]


def error_counts(result: ScoreResult) -> tuple[Counter, Counter, Counter]:
    """(substitutions ``(ref, hyp)``, insertions ``hyp``, deletions ``ref``) over the corpus."""
    subs, ins, dels = Counter(), Counter(), Counter()
    for u in result.utts:
        for r, h in u.alignment:
            if r == EPS:
                ins[h] += 1
            elif h == EPS:
                dels[r] += 1
            elif r != h:
                subs[(r, h)] += 1
    return subs, ins, dels


def summary_lines(result: ScoreResult, ci: ConfidenceInterval | None = None) -> list[str]:
    lines = [result.wer_line(), result.ser_line(), result.scored_line()]
    if ci is not None:
        lines.append(ci.line())
    return lines


def errs_text(result: ScoreResult, set_name: str, ci: ConfidenceInterval | None = None) -> str:
    """Contents of ``errs-<set>.txt``: the summary, the most frequent errors, then the aligned
    reference/hypothesis of every utterance with at least one error."""
    lines = [f"# {set_name}", *summary_lines(result, ci), ""]
    subs, ins, dels = error_counts(result)
    lines.append("SUBSTITUTIONS: count ref -> hyp")
    lines += [f"{n:6d} {r} -> {h}" for (r, h), n in sorted(subs.items(), key=lambda x: (-x[1], x[0]))]
    lines += ["", "DELETIONS: count ref"]
    lines += [f"{n:6d} {r}" for r, n in sorted(dels.items(), key=lambda x: (-x[1], x[0]))]
    lines += ["", "INSERTIONS: count hyp"]
    lines += [f"{n:6d} {h}" for h, n in sorted(ins.items(), key=lambda x: (-x[1], x[0]))]
    lines += ["", (f"PER-UTTERANCE DETAILS ({result.sent_errors} of {result.num_sents} utterances "
                   f"with errors; {EPS} marks an insertion or deletion, op: C S I D)")]
    for u in result.utts:
        if u.errors:
            lines += aligned_lines(u)
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | Path, set_name: str, result: ScoreResult,
                  ci: ConfidenceInterval | None = None, wer_name: str = "wer.txt",
                  comments: Sequence[str] = ()) -> Path:
    """Write ``<out_dir>/wer.txt`` (``%WER``, ``%SER``, ``Scored ...`` and the CI line, then a
    ``# <c>`` line for each of ``comments``) and ``<out_dir>/errs-<set_name>.txt``, each
    atomically (``errs`` first: a ``wer.txt`` is never older than its ``errs``); returns the path
    of the WER file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wer_path = out / wer_name
    fileio.write_text(out / f"errs-{set_name}.txt", errs_text(result, set_name, ci))
    lines = [*summary_lines(result, ci), *(f"# {c}" for c in comments)]
    fileio.write_text(wer_path, "\n".join(lines) + "\n")
    return wer_path


def score_files(ref: str | Path, hyp: str | Path, out_dir: str | Path, set_name: str,
                mode: Mode = "strict", replications: int = 10000,
                seed: int = 0) -> tuple[ScoreResult, ConfidenceInterval]:
    """Score two Kaldi text files and write the reports (the ``hfasr score`` command)."""
    result = score(read_text(ref), read_text(hyp), mode=mode)
    ci = bootstrap_ci(result, replications=replications, seed=seed)
    write_results(out_dir, set_name, result, ci)
    return result, ci
