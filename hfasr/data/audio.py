"""Audio file checks that name the offending file.

Corpus preparation calls :func:`check_audio_file` on every recording before it reaches a
manifest, so that a truncated or non-audio file is reported at ``hfasr prepare`` time (with its
path) instead of as an obscure decoder error deep inside feature extraction.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from hfasr.errors import DataError


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
    audio, truncated (WAV: fewer bytes than the header declares), or holds no samples.
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
    return AudioInfo(path, int(info.samplerate), int(info.frames), int(info.channels))
