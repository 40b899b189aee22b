"""``hfasr lang``: build a lang dir (lexicon, phone/word tables, topology, L, G) for a task.

Files written (``docs/formats.md``, "Lang dir"): ``phones.txt``, ``words.txt``,
``lexicon.txt``, ``topo``, ``disambig.int``, ``L.fst``, ``L_disambig.fst``, ``lm.arpa``,
``G.fst``, ``lm_weak.arpa``, ``G_weak.fst`` and ``config.yaml`` (the resolved
:class:`LangConfig`); with evaluation transcripts also ``lm_stats.txt`` (OOV rate and perplexity of G on
the transcripts that G is not trained on, :class:`LmStats`). :class:`Lang` loads such a directory.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

from hfasr._kaldi import write_fst
from hfasr.config import bounded, check_ranges, limits, save_config
from hfasr.errors import DataError
from hfasr.fileio import staged_dir, write_text
from hfasr.lang.arpa import NgramLM, perplexity, read_arpa, restrict_lm, train_witten_bell
from hfasr.lang.graphs import (
    arpa_to_fst,
    make_lexicon_fst,
    make_topo,
    read_symbols,
    read_topo,
    write_symbols,
)
from hfasr.lang.lexicon import Lexicon, add_lex_disambig, builtin_lexicon_path, check_coverage

log = logging.getLogger(__name__)


@dataclass
class LangConfig:
    """Options of ``hfasr lang``."""

    lm_order: int = bounded(3, ge=1)  # n-gram order of G (interpolated Witten-Bell, trained on lm_splits)
    weak_lm_order: int = bounded(1, ge=1)  # order of G_weak (the weak LM for lattice generation)
    lm_splits: list[str] = field(  # transcripts the LMs are trained on
        default_factory=lambda: ["train"], metadata=limits(nonempty=True))
    check_splits: list[str] = field(default_factory=lambda: ["train", "dev", "test"])  # must be covered by the lexicon
    # splits whose words need not be in the lexicon (open vocabulary): only their OOV rate and
    # perplexity are measured (lm_stats.txt); their words are never added to words.txt
    open_splits: list[str] = field(default_factory=list)
    # "" = none; else a word (Kaldi's "<UNK>") pronounced unk_phone, which stands in for words
    # outside the lexicon / words.txt: in G's training text (check_splits then need no full
    # coverage) and when a transcript is aligned (training graphs)
    unk_word: str = ""
    unk_phone: str = bounded("SPN", nonempty=True)  # the garbage phone of unk_word
    vocab: Literal["lexicon", "transcripts"] = "lexicon"  # words.txt: every lexicon word, or only those in check_splits
    sil_prob: float = bounded(0.5, gt=0, lt=1)  # probability of optional silence between words in L
    sil_phone: str = bounded("SIL", nonempty=True)  # the silence phone (added to the phone set if the lexicon lacks it)
    num_nonsil_states: int = bounded(3, ge=1)  # emitting HMM states of a non-silence phone (left to right)
    num_sil_states: int = bounded(5, ge=1)  # emitting HMM states of the silence phone (Kaldi's silence topology)
    strip_stress: bool = True  # strip ARPAbet stress digits (AH0 -> AH) from a user lexicon's phones

    def __post_init__(self) -> None:
        check_ranges(self)


def read_transcripts(data_dir: Path, task: str, split: str) -> tuple[list[tuple[str, str]], Path]:
    """``(cut_id, text)`` of ``<task>_cuts_<split>`` (or ``_feats_``) and the manifest's path."""
    from hfasr.data.corpora import load_cuts, manifest_path

    path = manifest_path(data_dir, task, split)
    if not path.is_file():
        alt = manifest_path(data_dir, task, split, "feats")
        if not alt.is_file():
            raise DataError(f"{path}: manifest not found; run `hfasr prepare` first")
        path = alt
    out = []
    for cut in load_cuts(path):
        if not cut.supervisions or not (cut.supervisions[0].text or "").strip():
            raise DataError(f"cut '{cut.id}' in {path} has no transcript")
        out.append((cut.id, " ".join(s.text for s in cut.supervisions)))
    return out, path


def find_lexicon(data_dir: Path, task: str, lexicon: str | Path | None = None) -> tuple[Path, bool]:
    """The lexicon file of ``task`` and whether it is a built-in one.

    In order: ``lexicon`` (given by the user), the task's built-in lexicon (package data,
    ``hfasr/resources/lang/``), ``<data_dir>/<task>_lexicon.txt`` (the corpus's own dictionary,
    written by ``hfasr prepare``, e.g. AN4's). Raises DataError when there is none.
    """
    if lexicon is not None:
        return Path(lexicon), False
    builtin = builtin_lexicon_path(task)
    if builtin is not None:
        return builtin, True
    own = Path(data_dir) / f"{task}_lexicon.txt"
    if own.is_file():
        return own, False
    raise DataError(f"task '{task}' has no built-in lexicon and `hfasr prepare` wrote none ({own} not found); "
                    "pass --lexicon FILE")


def prepare_lang(data_dir: str | Path, task: str, out: str | Path, cfg: LangConfig | None = None,
                 lexicon: str | Path | None = None, arpa: str | Path | None = None) -> Lang:
    """Build the lang dir ``out`` for ``task`` from the transcripts in ``data_dir``.

    The lexicon is ``lexicon`` (a ``WORD PHONE...`` file), else the task's built-in one, else the
    corpus's own ``<data_dir>/<task>_lexicon.txt`` (:func:`find_lexicon`). Raises DataError naming
    the word and the utterance when a transcript word is missing from the lexicon. Also writes
    ``lm_stats.txt``: OOV rate and perplexity of G on the check splits that G is not trained on.
    """
    cfg = cfg or LangConfig()
    data_dir, out = Path(data_dir), Path(out)
    lexicon, builtin = find_lexicon(data_dir, task, lexicon)
    lex = Lexicon.read(lexicon) if builtin else Lexicon.read(lexicon, strip_stress_digits=cfg.strip_stress)
    log.info("lexicon %s: %d words", lexicon, len(lex))

    used: set[str] = set()
    lm_text: list[list[str]] = []
    held_out: dict[str, list[list[str]]] = {}
    for split in dict.fromkeys(cfg.check_splits + cfg.lm_splits):
        trans, path = read_transcripts(data_dir, task, split)
        if cfg.unk_word:  # words outside the lexicon become unk_word (Kaldi's OOV symbol), counted
            oov = Counter(w for _, t in trans for w in t.split() if w not in lex)
            if oov:
                log.info("%s: %d running words (%d distinct, e.g. %s) are not in the lexicon: %s in G's "
                         "training text and in alignment", path, sum(oov.values()), len(oov),
                         ", ".join(w for w, _ in oov.most_common(5)), cfg.unk_word)
            trans = [(u, " ".join(w if w in lex else cfg.unk_word for w in t.split())) for u, t in trans]
            used |= {w for _, t in trans for w in t.split() if w != cfg.unk_word}
        else:
            used |= check_coverage(lex, trans, str(path))
        if split in cfg.lm_splits:
            lm_text += [t.split() for _, t in trans]
        else:
            held_out[split] = [t.split() for _, t in trans]
    if cfg.vocab == "transcripts":
        lex = lex.restrict(used)
    if cfg.unk_word:
        if cfg.unk_word in lex:
            raise DataError(f"unk_word '{cfg.unk_word}' is a word of the lexicon {lexicon}; choose another unk_word")
        lex.add(cfg.unk_word, [cfg.unk_phone])
    for split in cfg.open_splits:
        if split not in held_out:
            trans, _ = read_transcripts(data_dir, task, split)
            held_out[split] = [t.split() for _, t in trans]
    return build_lang(lex, lm_text, out, cfg, eval_text=held_out, arpa=arpa)


@dataclass
class LmStats:
    """How well the LM (G) predicts one split's transcripts."""

    split: str
    sentences: int
    words: int  # running words (without </s>)
    oov_text: int  # running words whose word never occurs in the LM training text
    ppl: float  # perplexity of G (</s> included, OOVs of G skipped: :func:`~hfasr.lang.arpa.perplexity`)
    ppl_oov: int  # running words outside G's vocabulary (not scored)

    @property
    def oov_rate(self) -> float:
        """Fraction of running words not seen in the LM training text."""
        return self.oov_text / self.words if self.words else 0.0

    def line(self, order: int) -> str:
        """One summary line, as in ``lm_stats.txt`` and the ``hfasr lang`` output."""
        return (f"{self.split}: {self.sentences} sentences, {self.words} words, OOV rate "
                f"{100 * self.oov_rate:.2f}% ({self.oov_text} not in the LM training text), "
                f"{order}-gram perplexity {self.ppl:.2f} ({self.ppl_oov} OOV words skipped)")


def lm_stats(lm: NgramLM, lm_text: list[list[str]], splits: dict[str, list[list[str]]]) -> list[LmStats]:
    """:class:`LmStats` of each split (``name -> sentences``) under ``lm`` trained on ``lm_text``."""
    seen = {w for sent in lm_text for w in sent}
    out = []
    for split, sents in splits.items():
        ppl, n_words, n_oov = perplexity(lm, sents)
        oov = sum(w not in seen for sent in sents for w in sent)
        out.append(LmStats(split, len(sents), n_words, oov, ppl, n_oov))
    return out


def write_lm_stats(path: Path, stats: list[LmStats], cfg: LangConfig, lm_text: list[list[str]]) -> None:
    """Write ``lm_stats.txt``: a ``#`` header on the LM training text, then one line per split."""
    n_words = sum(len(s) for s in lm_text)
    n_types = len({w for s in lm_text for w in s})
    head = (f"# G (lm.arpa): {cfg.lm_order}-gram interpolated Witten-Bell on {'+'.join(cfg.lm_splits)}: "
            f"{len(lm_text)} sentences, {n_words} words, {n_types} distinct words\n")
    write_text(path, head + "".join(st.line(cfg.lm_order) + "\n" for st in stats))


def build_lang(lex: Lexicon, lm_text: list[list[str]], out: str | Path, cfg: LangConfig | None = None,
               eval_text: dict[str, list[list[str]]] | None = None, arpa: str | Path | None = None) -> Lang:
    """Write the lang dir ``out`` for lexicon ``lex`` with LMs trained on ``lm_text`` (word lists).

    With ``eval_text`` (split -> word lists), also ``lm_stats.txt``: OOV rate and perplexity of G
    on each of those splits (:class:`LmStats`). The files are written to a staging directory and
    published together when all are written (:func:`hfasr.fileio.staged_dir`): a failure leaves
    ``out`` as it was."""
    cfg = cfg or LangConfig()
    out = Path(out)
    with staged_dir(out) as stage:
        stats, n_dis = _write_lang(lex, lm_text, stage, cfg, eval_text, arpa)
    if not eval_text:  # an older run's stats would describe another LM
        (out / "lm_stats.txt").unlink(missing_ok=True)
    for st in stats:
        log.info("%s", st.line(cfg.lm_order))
    log.info("lang dir %s: %d words, %d phones (+%d disambig), %d-gram LM on %d sentences",
             out, len(lex), len([p for p in lex.phones if p != cfg.sil_phone]) + 1, n_dis, cfg.lm_order,
             len(lm_text))
    return Lang(out)


def _write_lang(lex: Lexicon, lm_text: list[list[str]], out: Path, cfg: LangConfig,
                eval_text: dict[str, list[list[str]]] | None,
                arpa: str | Path | None = None) -> tuple[list[LmStats], int]:
    """Write every file of the lang dir into ``out`` (a staging dir); returns the LM statistics
    of ``eval_text`` and the number of disambiguation phones."""
    # phones: <eps>, SIL, non-silence phones, #0..#k (k: lexicon disambig + one for silence)
    entries = lex.entries()
    dis_entries, max_dis = add_lex_disambig(entries)
    ndis = max_dis + 1
    nonsil = [p for p in lex.phones if p != cfg.sil_phone]
    phone_list = ["<eps>", cfg.sil_phone] + nonsil + [f"#{i}" for i in range(ndis + 1)]
    phone2id = {p: i for i, p in enumerate(phone_list)}
    word_list = ["<eps>"] + lex.words + ["#0", "<s>", "</s>"]
    word2id = {w: i for i, w in enumerate(word_list)}

    out.mkdir(parents=True, exist_ok=True)
    write_symbols(out / "phones.txt", phone2id)
    write_symbols(out / "words.txt", word2id)
    lex.write(out / "lexicon.txt")
    disambig = [phone2id[f"#{i}"] for i in range(ndis + 1)]
    write_text(out / "disambig.int", "".join(f"{d}\n" for d in disambig))
    write_text(out / "topo", make_topo([phone2id[p] for p in nonsil], [phone2id[cfg.sil_phone]],
                                       cfg.num_nonsil_states, cfg.num_sil_states))

    L = make_lexicon_fst(entries, phone2id, word2id, cfg.sil_prob, cfg.sil_phone)
    write_fst(L, out / "L.fst")
    Ld = make_lexicon_fst(dis_entries, phone2id, word2id, cfg.sil_prob, cfg.sil_phone,
                          sil_disambig=f"#{ndis}", word_disambig="#0")
    write_fst(Ld, out / "L_disambig.fst")

    for name, order in (("lm", cfg.lm_order), ("lm_weak", cfg.weak_lm_order)):
        if name == "lm" and arpa is not None:
            lm = restrict_lm(read_arpa(arpa), set(lex.words))
            log.info("G from %s: %d-gram, %d of its words in the lexicon", arpa, lm.order, len(lm.vocab))
        else:
            lm = train_witten_bell(lm_text, lex.words, order)
        lm.write_arpa(out / f"{name}.arpa")
        g = arpa_to_fst(out / f"{name}.arpa", out / "words.txt")
        write_fst(g, out / ("G.fst" if name == "lm" else "G_weak.fst"))
        if name == "lm":
            stats = lm_stats(lm, lm_text, eval_text or {})
    if eval_text:
        write_lm_stats(out / "lm_stats.txt", stats, cfg, lm_text)
    save_config(cfg, out / "config.yaml")
    return stats, len(disambig)


class Lang:
    """A lang dir written by :func:`prepare_lang` (files are read on first use)."""

    FILES = ("phones.txt", "words.txt", "lexicon.txt", "topo", "disambig.int", "L.fst", "L_disambig.fst",
             "G.fst", "G_weak.fst")

    def __init__(self, path: str | Path) -> None:
        self.dir = Path(path)
        if not self.dir.is_dir():
            raise DataError(f"lang dir not found: {self.dir}; run `hfasr lang` first")
        for f in self.FILES:
            if not (self.dir / f).is_file():
                raise DataError(f"{self.dir / f}: missing from the lang dir; rerun `hfasr lang`")

    @cached_property
    def phones(self) -> dict[str, int]:
        return read_symbols(self.dir / "phones.txt")

    @cached_property
    def words(self) -> dict[str, int]:
        return read_symbols(self.dir / "words.txt")

    @cached_property
    def id2word(self) -> dict[int, str]:
        return {i: w for w, i in self.words.items()}

    @cached_property
    def disambig(self) -> list[int]:
        """Phone ids of ``#0..#k``; DataError naming ``disambig.int`` if it is not a list of integers."""
        path = self.dir / "disambig.int"
        try:
            return [int(x) for x in path.read_text().split()]
        except ValueError as e:
            raise DataError(f"{path}: expected phone ids (integers), one per line; rerun `hfasr lang`") from e

    @cached_property
    def sil_phone(self) -> int:
        return 1

    @cached_property
    def lexicon(self) -> Lexicon:
        return Lexicon.read(self.dir / "lexicon.txt")

    def lm_stats(self) -> list[str]:
        """The summary lines of ``lm_stats.txt`` (``[]`` if this lang dir has none)."""
        path = self.dir / "lm_stats.txt"
        if not path.is_file():
            return []
        return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]

    @property
    def topo_text(self) -> str:
        return (self.dir / "topo").read_text()

    def topo(self):
        """A fresh :class:`khg.HmmTopology`."""
        return read_topo(self.topo_text)

    def _fst(self, name: str):
        from hfasr._kaldi import read_fst

        return read_fst(self.dir / name, f"the FST {name} of a lang dir written by `hfasr lang`")

    def L(self):
        return self._fst("L.fst")

    def L_disambig(self):
        return self._fst("L_disambig.fst")

    def G(self, weak: bool = False):
        return self._fst("G_weak.fst" if weak else "G.fst")

    @cached_property
    def unk_word(self) -> str:
        """The lang config's ``unk_word`` ("" = none; lang dirs without config.yaml have none)."""
        import yaml

        path = self.dir / "config.yaml"
        cfg = yaml.safe_load(path.read_text()) if path.is_file() else None
        return str((cfg or {}).get("unk_word") or "")

    def word_ids(self, text: str, utt: str = "?") -> list[int]:
        """Word ids of a transcript (words outside words.txt as ``unk_word`` where the lang has
        one); DataError naming the word and utterance if one is missing."""
        ids = []
        for w in text.split():
            i = self.words.get(w)
            if i is None and self.unk_word:
                i = self.words.get(self.unk_word)
            if i is None or w in ("<eps>", "#0", "<s>", "</s>"):
                raise DataError(f"word '{w}' of utterance '{utt}' is not in {self.dir / 'words.txt'}")
            ids.append(i)
        return ids
