"""Audio file checks that name the offending file.

Corpus preparation calls :func:`check_audio_file` on every recording before it reaches a
manifest, so that a truncated or non-audio file is reported at ``hfasr prepare`` time (with its
path) instead of as an obscure decoder error deep inside feature extraction.

:func:`check_samples` reads every sample of a floating-point file (the only encodings that can
hold NaN, inf or values far beyond full scale; integer PCM, FLAC and SPHERE samples are bounded
by construction), and :func:`check_sample_array` does the same for samples in memory (``hfasr
features`` checks the audio it loads, so a file corrupted after ``prepare`` is caught there).
:func:`downmix` writes a mono copy of a multi-channel file (``downmix: true`` at ``prepare``).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from hfasr.errors import DataError

log = logging.getLogger(__name__)

# Largest |sample| accepted in a floating-point file or in loaded audio (full scale is 1.0):
# 40 dB above full scale is no recording, but e.g. a float WAV written in int16 units.
MAX_ABS_SAMPLE = 100.0
_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


@dataclass(frozen=True)
class AudioInfo:
    """What :func:`check_audio_file` found: sample rate, number of samples, channels."""

    path: Path
    sampling_rate: int
    num_samples: int
    num_channels: int

    @property
    def duration(self) -> float:
        return self.num_samples / self.sampling_rate


def _check_wav_header(path: Path, data: bytes, size: int) -> None:
    """Check a RIFF/WAVE file's chunk structure: the ``data`` chunk must be present and whole."""
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        raise DataError(f"{path}: not a WAV file (no RIFF/WAVE header)")
    pos = 12
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        (clen,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        if cid == b"data":
            if data[:4] == b"RF64" or clen == 0xFFFFFFFF:
                return  # 64-bit sizes live in the ds64 chunk; let libsndfile judge
            have = size - (pos + 8)
            if have < clen:
                raise DataError(
                    f"{path}: truncated WAV file: header declares {clen} bytes of audio, "
                    f"only {have} present"
                )
            return
        pos += 8 + clen + (clen & 1)
    raise DataError(f"{path}: WAV file has no 'data' chunk (truncated or corrupt)")


def check_audio_file(path: str | Path) -> AudioInfo:
    """Open ``path``, check that it is complete, decodable audio, and return its :class:`AudioInfo`.

    Raises :class:`~hfasr.errors.DataError` naming the file when it is missing, empty, not
    audio, truncated (WAV: fewer bytes than the header declares), holds no samples, or (float
    encodings) holds non-finite or absurd samples (:func:`check_samples`).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: audio file not found")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: audio file is empty (0 bytes)")
    if path.suffix.lower() == ".wav":
        with open(path, "rb") as f:
            head = f.read(65536)
        # TIMIT's upper-case .WAV files are NIST SPHERE: leave those to libsndfile.
        if head[:4] != b"NIST":
            _check_wav_header(path, head, size)
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile's error types vary by version
        raise DataError(f"{path}: not a readable audio file ({e})") from e
    if info.frames <= 0:
        raise DataError(f"{path}: audio file holds no samples")
    try:
        # Decode the last samples too: catches files whose body is cut short or corrupt.
        with sf.SoundFile(str(path)) as f:
            n = min(f.frames, 4096)
            f.seek(f.frames - n)
            got = f.read(n)
            if len(got) < n:
                raise DataError(f"{path}: truncated audio: could not read its last {n} samples")
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: audio could not be decoded ({e})") from e
    check_samples(path)
    return AudioInfo(path, int(info.samplerate), int(info.frames), int(info.channels))


def check_sample_array(samples: np.ndarray, where: str) -> None:
    """DataError naming ``where`` unless every sample is finite and within ±``MAX_ABS_SAMPLE``."""
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int(np.size(finite) - np.count_nonzero(finite))
        first = int(np.flatnonzero(~finite.reshape(-1))[0])
        raise DataError(f"{where}: {bad} non-finite (NaN/inf) audio sample(s), the first at sample index {first}")
    peak = float(np.abs(samples).max()) if np.size(samples) else 0.0
    if peak > MAX_ABS_SAMPLE:
        raise DataError(f"{where}: audio sample magnitude {peak:.3g} is far beyond full scale (1.0; limit "
                        f"{MAX_ABS_SAMPLE:g}): corrupt, or a float file written in integer units")


def check_samples(path: str | Path, blocksize: int = 1 << 18) -> None:
    """Read every sample of a floating-point audio file and check it (:func:`check_sample_array`).

    Integer encodings are skipped: their samples cannot be non-finite or beyond full scale. The
    corpora here are small (FSDD: 3000 files of ~0.4 s), so reading float files whole is cheap.
    """
    path = Path(path)
    try:
        info = sf.info(str(path))
        if info.subtype not in _FLOAT_SUBTYPES:
            return
        for block in sf.blocks(str(path), blocksize=blocksize, dtype="float64", always_2d=True):
            check_sample_array(block, str(path))
    except DataError:
        raise
    except Exception as e:  # libsndfile's error types vary by version
        raise DataError(f"{path}: audio could not be decoded ({e})") from e


def downmix(path: str | Path, dst: str | Path) -> AudioInfo:
    """Write the channel average of ``path`` to ``dst`` (mono WAV, or FLAC for a ``.flac``
    ``dst``; atomically), logging a warning naming ``path``; return the checked
    :class:`AudioInfo` of ``dst``. A ``dst`` newer than ``path`` is reused."""
    from hfasr.fileio import atomic_path

    path, dst = Path(path), Path(dst)
    if not dst.is_file() or dst.stat().st_mtime < path.stat().st_mtime:
        try:
            audio, sr = sf.read(str(path), dtype="float64", always_2d=True)
        except Exception as e:
            raise DataError(f"{path}: audio could not be decoded ({e})") from e
        info = sf.info(str(path))
        fmt = "FLAC" if dst.suffix.lower() == ".flac" else "WAV"
        subtype = info.subtype if info.subtype in _FLOAT_SUBTYPES and fmt == "WAV" else "PCM_16"
        with atomic_path(dst) as tmp:
            sf.write(str(tmp), audio.mean(axis=1), sr, format=fmt, subtype=subtype)
    log.warning("%s: %d channels downmixed to mono (channel average) -> %s", path,
                sf.info(str(path)).channels, dst)
    return check_audio_file(dst)
