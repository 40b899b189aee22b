"""Shared fixtures: the real corpora in ../shared/data and small generated ones."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HFASR_SHARED_DATA", ROOT.parent / "shared" / "data"))
YESNO = SHARED / "yesno" / "waves_yesno"
FSDD = SHARED / "fsdd"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"test corpus missing: {path} (set HFASR_SHARED_DATA to the shared/data folder)")
    return path


@pytest.fixture(scope="session")
def yesno_dir() -> Path:
    return need(YESNO)


@pytest.fixture(scope="session")
def fsdd_dir() -> Path:
    return need(FSDD)


def write_tone(path: Path, seconds: float = 0.5, sr: int = 16000, fmt: str | None = None, seed: int = 0) -> None:
    """A short noisy tone: valid audio for fake corpora."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    a = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), a.astype(np.float32), sr, format=fmt, subtype="PCM_16")


@pytest.fixture(scope="session")
def fsdd_prepared(tmp_path_factory, fsdd_dir):
    """fsdd prepared once for the session (all three tasks)."""
    from hfasr.data.corpora import prepare_corpus

    out = tmp_path_factory.mktemp("fsdd")
    return out, prepare_corpus("fsdd", out, corpus_dir=fsdd_dir)
