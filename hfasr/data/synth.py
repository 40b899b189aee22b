"""The embedded offline corpus ``synth``: AN4-style alphanumeric utterances spoken by eSpeak NG.

Nothing is downloaded: utterances are synthesized with the eSpeak NG library and data bundled
in the ``espeakng_loader`` package (called through :mod:`ctypes`). The task imitates CMU's AN4
census corpus: spelled words (``C A T S``), digit strings (``FOUR OH SEVEN``), commands
(``ENTER FIVE NINE``) and letter+digit codes (``A B ONE TWO``). The vocabulary and the prompt
grammar live in ``hfasr/resources/synth/vocab.yaml`` (package data; see that file).

Each utterance gets, from its own random generator (seeded from ``(seed, split, index)`` only):

* a prompt drawn from the grammar; the transcript is the UPPERCASE word sequence;
* a speaker (see below), a speaking rate, a base pitch, a pitch range and a word gap;
* leading and trailing silence, and additive white or pink Gaussian noise at a random SNR.

**Speakers.** A speaker is an eSpeak language voice (an English accent: ``en-us``,
``en-gb-scotland`` ...) combined with a voice variant from ``espeak-ng-data/voices/!v``
(``m3``, ``f2``, ``klatt``, ``croak`` ...), named like ``en-us+m3``. The speakers of a split are
all the ``languages`` x that split's variants; the train, dev and test variant lists are
disjoint (checked), so no test or dev voice quality is ever heard in training:

=====  =============================================================================
split  variants (each with every language in ``SynthConfig.languages``, 8 accents)
=====  =============================================================================
train  m1 m2 m3 m4 m5 f1 f2 f3 klatt klatt2 klatt3 croak Andy Annie linda max (128 spk)
dev    m6 f4 klatt4 belinda (32 speakers)
test   m7 m8 f5 klatt5 steph (40 speakers)
=====  =============================================================================

Utterances are spread round-robin over a split's speakers (in an order shuffled by the seed).

**Audio.** eSpeak's 22050 Hz output is trimmed of its own silence, resampled to
``sampling_rate`` with :func:`torchaudio.functional.resample`, padded with silence, mixed with
noise scaled so that (mean power of the speech part) / (noise power) is the utterance's SNR,
scaled to a fixed peak and written as 16-bit PCM WAV.

**Determinism.** The same config gives bit-identical wavs and manifests whatever ``num_jobs``.
eSpeak keeps synthesis state (pitch flutter phase, noise generators) in static variables that no
API call resets, so every utterance is synthesized by a freshly loaded private copy of the
library (one copy per process, ``dlopen`` / ``dlclose`` per utterance, ~5 ms); this also keeps
this module out of the way of any other user of eSpeak in the same process.

Example::

    cuts = prepare_synth(Path("data"), SynthConfig(num_train=100), num_jobs=4)
    cuts["test"][0].supervisions[0].text   # e.g. 'ENTER SIX TWO'
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing
import multiprocessing.util
import os
import random
import shutil
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import yaml
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.utils import fastcopy

from hfasr import resources
from hfasr.config import bounded, check_ranges, limits, ordered, require
from hfasr.errors import DataError

SPLITS = ("train", "dev", "test")
ESPEAK_SAMPLING_RATE = 22050  # eSpeak NG's native output rate
NOISE_TYPES = ("white", "pink")

# English accents of the bundled espeak-ng-data (lang/gmw/en*; en-Shaw is Shavian script: left out).
DEFAULT_LANGUAGES = [
    "en", "en-us", "en-us-nyc", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
    "en-gb-x-gbcwmd", "en-029",
]


def default_vocab_path() -> Path:
    """``hfasr/resources/synth/vocab.yaml``, shipped inside the package (package data)."""
    return resources.path("synth/vocab.yaml")


@dataclass
class SynthConfig:
    """Options of the ``synth`` corpus (``hfasr prepare synth``); all ranges are inclusive."""

    seed: int = bounded(0, ge=0)  # every random choice derives from (seed, split, utterance index)
    num_train: int = bounded(2000, ge=0)  # utterances in the train split
    num_dev: int = bounded(200, ge=0)  # utterances in the dev split
    num_test: int = bounded(300, ge=0)  # utterances in the test split
    sampling_rate: int = bounded(16000, ge=1)  # sampling rate of the written wavs (Hz)
    min_rate: int = bounded(120, ge=80, le=450)  # speaking rate, words per minute (eSpeak 80-450), uniform per utterance
    max_rate: int = bounded(200, ge=80, le=450)
    min_pitch: int = bounded(25, ge=0, le=99)  # base pitch (eSpeak 0-99, 50 = the voice's normal), uniform per utterance
    max_pitch: int = bounded(75, ge=0, le=99)
    min_pitch_range: int = bounded(30, ge=0, le=100)  # pitch range (eSpeak 0-100: 0 monotone, 50 normal)
    max_pitch_range: int = bounded(80, ge=0, le=100)
    max_word_gap: int = bounded(2, ge=0)  # extra pause between words, uniform 0..this, units of 10 ms
    min_snr_db: float = bounded(10.0)  # SNR of the additive noise, uniform per utterance (dB)
    max_snr_db: float = bounded(35.0)
    noise_types: list[str] = field(  # drawn uniformly
        default_factory=lambda: list(NOISE_TYPES), metadata=limits(nonempty=True, each=True, choices=NOISE_TYPES))
    min_silence: float = bounded(0.1, ge=0, le=10)  # leading and trailing silence (noise only), each uniform (s)
    max_silence: float = bounded(0.4, ge=0, le=10)
    peak_level: float = bounded(0.7, gt=0, le=1)  # each utterance is scaled so its largest sample is this of full scale
    languages: list[str] = field(  # eSpeak voices
        default_factory=lambda: list(DEFAULT_LANGUAGES), metadata=limits(nonempty=True))
    train_variants: list[str] = field(  # voice variants (voices/!v) of the training speakers
        default_factory=lambda: [
            "m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "klatt", "klatt2", "klatt3", "croak",
            "Andy", "Annie", "linda", "max",
        ],
        metadata=limits(nonempty=True),
    )
    dev_variants: list[str] = field(default_factory=lambda: ["m6", "f4", "klatt4", "belinda"],
                                    metadata=limits(nonempty=True))
    test_variants: list[str] = field(default_factory=lambda: ["m7", "m8", "f5", "klatt5", "steph"],
                                     metadata=limits(nonempty=True))
    vocab: Path | None = None  # vocabulary/grammar YAML; None = the built-in hfasr/resources/synth/vocab.yaml

    def __post_init__(self) -> None:
        check_ranges(self)
        for name in ("rate", "pitch", "pitch_range", "snr_db", "silence"):
            ordered(self, f"min_{name}", f"max_{name}")
        for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
            common = sorted(set(getattr(self, f"{a}_variants")) & set(getattr(self, f"{b}_variants")))
            require(self, not common, "{0} and {1} must be disjoint (speaker-independent splits), both have "
                    + str(common).replace("{", "{{").replace("}", "}}"), f"{a}_variants", f"{b}_variants")

    def num_utterances(self, split: str) -> int:
        """Number of utterances of ``split`` (``train``, ``dev`` or ``test``)."""
        return getattr(self, f"num_{split}")

    def speakers(self, split: str) -> list[str]:
        """The speakers (eSpeak voice names ``<language>+<variant>``) of ``split``."""
        return [f"{lang}+{var}" for var in getattr(self, f"{split}_variants") for lang in self.languages]


# -------------------------------------------------------------------------- vocabulary, prompts


@dataclass(frozen=True)
class Slot:
    """One part of an utterance type: ``min``..``max`` words of one of ``classes``."""

    classes: tuple[str, ...]
    min: int
    max: int


@dataclass(frozen=True)
class Vocabulary:
    """The word classes and utterance types (prompt grammar) of ``vocab.yaml``."""

    classes: dict[str, tuple[str, ...]]
    types: dict[str, tuple[float, tuple[Slot, ...]]]  # name -> (weight, slots)

    @property
    def words(self) -> set[str]:
        """Every word of the vocabulary."""
        return {w for ws in self.classes.values() for w in ws}


def load_vocabulary(path: str | Path | None = None) -> Vocabulary:
    """Read and check the vocabulary/grammar YAML (default: :func:`default_vocab_path`)."""
    path = Path(path) if path is not None else default_vocab_path()
    if not path.is_file():
        raise DataError(f"synth vocabulary file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
        classes = {str(name): tuple(words) for name, words in data["classes"].items()}
        types: dict[str, tuple[float, tuple[Slot, ...]]] = {}
        for name, spec in data["utterance_types"].items():
            slots = []
            for s in spec["slots"]:
                cls = s["class"]
                cls = tuple(cls) if isinstance(cls, list) else (cls,)
                slots.append(Slot(cls, int(s["min"]), int(s["max"])))
            types[str(name)] = (float(spec.get("weight", 1.0)), tuple(slots))
    except (yaml.YAMLError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise DataError(f"{path}: malformed synth vocabulary ({type(e).__name__}: {e})") from e
    for name, words in classes.items():
        for w in words:
            if not isinstance(w, str) or not w or w != w.upper() or not w.isalpha() or not w.isascii():
                raise DataError(f"{path}: class '{name}': word {w!r} is not an UPPERCASE A-Z word (quote it?)")
    if not types:
        raise DataError(f"{path}: no utterance_types")
    for name, (weight, slots) in types.items():
        if weight <= 0:
            raise DataError(f"{path}: utterance type '{name}': weight must be > 0")
        if sum(s.min for s in slots) < 1:
            raise DataError(f"{path}: utterance type '{name}' may give an empty utterance")
        for s in slots:
            if not 0 <= s.min <= s.max:
                raise DataError(f"{path}: utterance type '{name}': need 0 <= min <= max in {s}")
            for c in s.classes:
                if c not in classes or not classes[c]:
                    raise DataError(f"{path}: utterance type '{name}': unknown or empty class '{c}'")
    return Vocabulary(classes, types)


@dataclass(frozen=True)
class UtterancePlan:
    """Everything random about one utterance, drawn by :func:`plan_utterance`."""

    id: str  # e.g. synth-train-000001
    split: str
    index: int
    kind: str  # utterance type of the grammar
    words: tuple[str, ...]  # the transcript
    speaker: str  # eSpeak voice name <language>+<variant>
    rate: int
    pitch: int
    pitch_range: int
    word_gap: int
    snr_db: float
    noise_type: str
    lead_silence: float  # seconds
    trail_silence: float  # seconds
    espeak_seed: int  # seeds eSpeak's own random generator
    noise_seed: int  # seeds the noise generator

    @property
    def text(self) -> str:
        return " ".join(self.words)


def plan_utterance(config: SynthConfig, vocab: Vocabulary, split: str, index: int) -> UtterancePlan:
    """Draw utterance ``index`` (0-based) of ``split``: depends only on config, split and index."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}, expected one of {SPLITS}")
    rng = random.Random(f"hfasr-synth-{config.seed}-{split}-{index}")
    names = sorted(vocab.types)
    kind = rng.choices(names, weights=[vocab.types[n][0] for n in names])[0]
    words: list[str] = []
    for slot in vocab.types[kind][1]:
        cls = vocab.classes[rng.choice(slot.classes)]
        words.extend(rng.choice(cls) for _ in range(rng.randint(slot.min, slot.max)))
    speakers = config.speakers(split)
    random.Random(f"hfasr-synth-{config.seed}-{split}-speakers").shuffle(speakers)
    return UtterancePlan(
        id=f"synth-{split}-{index + 1:06d}",
        split=split,
        index=index,
        kind=kind,
        words=tuple(words),
        speaker=speakers[index % len(speakers)],
        rate=rng.randint(config.min_rate, config.max_rate),
        pitch=rng.randint(config.min_pitch, config.max_pitch),
        pitch_range=rng.randint(config.min_pitch_range, config.max_pitch_range),
        word_gap=rng.randint(0, config.max_word_gap),
        snr_db=rng.uniform(config.min_snr_db, config.max_snr_db),
        noise_type=rng.choice(config.noise_types),
        lead_silence=rng.uniform(config.min_silence, config.max_silence),
        trail_silence=rng.uniform(config.min_silence, config.max_silence),
        espeak_seed=rng.getrandbits(31),
        noise_seed=rng.getrandbits(63),
    )


def to_ssml(words: list[str] | tuple[str, ...] | str) -> str:
    """eSpeak SSML for a word sequence: runs of one-letter words are spelled as letter names."""
    if isinstance(words, str):
        words = words.split()
    parts: list[str] = []
    letters: list[str] = []
    for w in list(words) + [""]:
        if len(w) == 1:
            letters.append(w.upper())
            continue
        if letters:
            parts.append(f'<say-as interpret-as="characters">{" ".join(letters)}</say-as>')
            letters = []
        if w:
            parts.append(w.lower())
    return "<speak>" + " ".join(parts) + "</speak>"


# ---------------------------------------------------------------------------- eSpeak via ctypes

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report missing data with -1 instead of calling exit()
_CHARS_UTF8, _SSML = 1, 0x10
_POS_CHARACTER = 1
_RATE, _PITCH, _RANGE, _WORDGAP = 1, 3, 4, 7  # espeak_PARAMETER values of speak_lib.h


class _Event(ctypes.Structure):
    """``espeak_EVENT`` of speak_lib.h (declared for the callback's signature; events are unused)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class _ESpeak:
    """This process's private copy of libespeak-ng, loaded afresh for every synthesis."""

    def __init__(self) -> None:
        try:
            import espeakng_loader

            lib_path = Path(espeakng_loader.get_library_path())
            self.data_path = Path(espeakng_loader.get_data_path())
        except Exception as e:  # ImportError, or RuntimeError for missing data
            raise DataError(f"eSpeak NG is not available (package espeakng_loader): {e}") from e
        if not lib_path.is_file():
            raise DataError(f"eSpeak NG library not found: {lib_path} (package espeakng_loader)")
        # The copy is removed when the creating process exits (forked workers share it; a spawned
        # worker makes its own and removes it at its own exit).
        self.pid = os.getpid()
        self._tmp = tempfile.mkdtemp(prefix="hfasr-espeak-")
        multiprocessing.util.Finalize(self, self._cleanup, exitpriority=0)
        self.lib_path = Path(self._tmp) / lib_path.name
        shutil.copyfile(lib_path, self.lib_path)
        self._chunks: list[np.ndarray] = []
        self._lock = threading.Lock()  # eSpeak is not thread-safe
        self._callback = _SynthCallback(self._collect)
        self._libc: Any = None
        try:
            self._libc = ctypes.CDLL(None)
        except OSError:
            pass

    def _cleanup(self) -> None:
        if os.getpid() == self.pid:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _collect(self, wav: Any, num_samples: int, events: Any) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # continue synthesis

    def check_voice(self, voice: str) -> tuple[str, str]:
        """Split ``voice`` into (language, variant) and check that the variant file exists."""
        lang, _, variant = voice.partition("+")
        if variant and not (self.data_path / "voices" / "!v" / variant).is_file():
            raise DataError(
                f"eSpeak NG voice variant '{variant}' (speaker '{voice}') not found in "
                f"{self.data_path / 'voices' / '!v'}"
            )
        return lang, variant

    def synthesize(
        self, ssml: str, voice: str, rate: int, pitch: int, pitch_range: int = 50,
        word_gap: int = 0, seed: int = 0,
    ) -> np.ndarray:
        """Speak SSML text with ``voice``; return eSpeak's int16 samples at 22050 Hz."""
        self.check_voice(voice)
        with self._lock:
            return self._synthesize(ssml, voice, rate, pitch, pitch_range, word_gap, seed)

    def _synthesize(
        self, ssml: str, voice: str, rate: int, pitch: int, pitch_range: int, word_gap: int, seed: int
    ) -> np.ndarray:
        try:
            lib = ctypes.CDLL(str(self.lib_path))
        except OSError as e:
            raise DataError(f"cannot load the eSpeak NG library {self.lib_path}: {e}") from e
        initialized = False
        try:
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
            lib.espeak_Synth.argtypes = [
                ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
            ]
            sr = lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path).encode(), _INITIALIZE_DONT_EXIT
            )
            if sr != ESPEAK_SAMPLING_RATE:
                raise DataError(
                    f"eSpeak NG failed to initialize with data {self.data_path} (returned {sr})"
                )
            initialized = True
            lib.espeak_SetSynthCallback(self._callback)
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise DataError(
                    f"eSpeak NG voice '{voice.partition('+')[0]}' (speaker '{voice}') not found "
                    f"in {self.data_path}"
                )
            for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range), (_WORDGAP, word_gap)):
                lib.espeak_SetParameter(param, int(value), 0)
            lib.espeak_ng_SetRandSeed(seed)
            if self._libc is not None:
                self._libc.srand(ctypes.c_uint(seed))
            self._chunks = []
            text = ssml.encode() + b"\0"
            err = lib.espeak_Synth(text, len(text), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _SSML, None, None)
            lib.espeak_Synchronize()
            if err != 0:
                raise DataError(f"eSpeak NG failed to synthesize {ssml!r} with voice '{voice}' (error {err})")
            audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            self._chunks = []
        finally:
            if initialized:
                lib.espeak_Terminate()
            import _ctypes

            _ctypes.dlclose(lib._handle)  # next load starts from pristine static state
        if not np.any(audio):
            raise DataError(f"eSpeak NG produced no audio for {ssml!r} with voice '{voice}'")
        return audio.astype(np.int16, copy=False)


_ENGINE: _ESpeak | None = None


def _engine() -> _ESpeak:
    global _ENGINE
    if _ENGINE is None:  # a forked worker keeps its parent's (its copy of the library is private)
        _ENGINE = _ESpeak()
    return _ENGINE


def synthesize(text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, int]:
    """Speak ``text`` (words, one-letter words spelled) with eSpeak NG voice ``voice`` (e.g. ``en-us+m3``).

    Returns eSpeak's raw output (float32 in [-1, 1], its own leading/trailing silence kept, no
    noise) and its sampling rate (22050). Used to measure the synthesis real-time factor.
    """
    audio = _engine().synthesize(to_ssml(text), voice, rate, pitch)
    return audio.astype(np.float32) / 32768.0, ESPEAK_SAMPLING_RATE


# ------------------------------------------------------------------------------- utterances


def _trim(audio: np.ndarray) -> np.ndarray:
    """Drop eSpeak's leading and trailing (near-)silence."""
    mag = np.abs(audio.astype(np.int32))
    nz = np.flatnonzero(mag > max(1, int(mag.max()) // 1000))
    return audio[nz[0] : nz[-1] + 1]


def _noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power Gaussian noise: ``white`` or ``pink`` (1/f power spectrum)."""
    x = rng.standard_normal(n)
    if kind == "pink" and n > 1:
        spec = np.fft.rfft(x)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        x = np.fft.irfft(spec / np.sqrt(f), n)
    return x / max(float(np.sqrt(np.mean(x**2))), 1e-12)


def render_utterance(plan: UtterancePlan, sampling_rate: int = 16000, peak_level: float = 0.7) -> np.ndarray:
    """Synthesize ``plan`` into int16 samples at ``sampling_rate`` (silence, noise, peak scaling)."""
    import torch
    import torchaudio.functional as AF

    raw = _engine().synthesize(
        to_ssml(plan.words), plan.speaker, plan.rate, plan.pitch, plan.pitch_range,
        plan.word_gap, plan.espeak_seed,
    )
    speech = torch.from_numpy(_trim(raw).astype(np.float64) / 32768.0)
    if sampling_rate != ESPEAK_SAMPLING_RATE:
        speech = AF.resample(speech, ESPEAK_SAMPLING_RATE, sampling_rate)
    speech = speech.numpy()
    power = float(np.mean(speech**2))
    lead, trail = round(plan.lead_silence * sampling_rate), round(plan.trail_silence * sampling_rate)
    x = np.concatenate([np.zeros(lead), speech, np.zeros(trail)])
    rng = np.random.default_rng(plan.noise_seed)
    x += _noise(plan.noise_type, len(x), rng) * math.sqrt(power / 10 ** (plan.snr_db / 10))
    x *= peak_level / np.max(np.abs(x))
    return np.round(x * 32767).astype(np.int16)


def _write_utterance(job: tuple[UtterancePlan, str, int, float]) -> int:
    """Process-pool task: render and write one wav atomically; return its number of samples."""
    plan, path, sampling_rate, peak_level = job
    samples = render_utterance(plan, sampling_rate, peak_level)
    tmp = f"{path}.tmp{os.getpid()}"
    sf.write(tmp, samples, sampling_rate, format="WAV", subtype="PCM_16")
    os.replace(tmp, path)
    return len(samples)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def prepare_synth(
    out_dir: Path, config: SynthConfig | None = None, num_jobs: int = 1, progress: bool = True
) -> dict[str, CutSet]:
    """Synthesize the train/dev/test splits and return their CutSets.

    Wavs go to ``out_dir/synth/wavs/<split>/<uttid>.wav`` (16-bit PCM, ``config.sampling_rate``);
    utterance ids are ``synth-<split>-<000001>``. Each cut has one supervision spanning the
    recording with the transcript, the speaker (eSpeak voice), ``language="English"`` and
    ``custom`` = the utterance's type, rate, pitch, SNR and noise type. The same config always
    gives bit-identical wavs and manifests, whatever ``num_jobs`` (worker processes; eSpeak is not
    thread-safe). ``config=None`` means :class:`SynthConfig`'s defaults.

    Raises :class:`~hfasr.errors.DataError` when eSpeak NG cannot be loaded or a voice is missing.
    """
    out_dir = Path(out_dir)
    config = config if config is not None else SynthConfig()
    vocab = load_vocabulary(config.vocab)
    engine = _engine()
    for lang in config.languages:  # fail early and clearly on a bad voice or a broken library
        engine.synthesize(to_ssml(["A"]), lang, 175, 50)
    for split in SPLITS:
        for speaker in config.speakers(split):
            engine.check_voice(speaker)
    plans = {
        s: [plan_utterance(config, vocab, s, i) for i in range(config.num_utterances(s))]
        for s in SPLITS
    }
    jobs = []
    for split, split_plans in plans.items():
        wav_dir = out_dir / "synth" / "wavs" / split
        wav_dir.mkdir(parents=True, exist_ok=True)
        jobs += [(p, str(wav_dir / f"{p.id}.wav"), config.sampling_rate, config.peak_level) for p in split_plans]

    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="synth", unit="utt", disable=not progress)
    if num_jobs <= 1:
        for job in jobs:
            _write_utterance(job)
            bar.update()
    else:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(num_jobs, mp_context=ctx, initializer=_init_worker) as ex:
            for _ in ex.map(_write_utterance, jobs, chunksize=4):
                bar.update()
    bar.close()

    out: dict[str, CutSet] = {}
    for split, split_plans in plans.items():
        recordings, sups = [], []
        for p in split_plans:
            rec = Recording.from_file(out_dir / "synth" / "wavs" / split / f"{p.id}.wav", recording_id=p.id)
            recordings.append(rec)
            sups.append(
                SupervisionSegment(
                    id=p.id, recording_id=p.id, start=0.0, duration=rec.duration, channel=0,
                    text=p.text, speaker=p.speaker, language="English",
                    custom={
                        "type": p.kind, "rate": p.rate, "pitch": p.pitch,
                        "snr_db": round(p.snr_db, 2), "noise": p.noise_type,
                    },
                )
            )
        cuts = CutSet.from_manifests(
            recordings=RecordingSet.from_recordings(recordings),
            supervisions=SupervisionSet.from_segments(sups),
        ) if recordings else CutSet.from_cuts([])
        # cut id = utterance id (lhotse would append a running index)
        out[split] = CutSet.from_cuts(fastcopy(c, id=c.recording_id) for c in cuts)
    return out
