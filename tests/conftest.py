"""Shared fixtures: the real corpora in ../shared/data, small generated ones, torch settings.

Plain helpers live in helper modules (gn_reference, lattice_utils, toy_frames, yesno_graph);
test modules import from those, never from another ``test_*.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def fsdd_prepared(tmp_path_factory, fsdd_dir):
    """fsdd prepared once for the session (all three tasks)."""
    from hfasr.data.corpora import prepare_corpus

    out = tmp_path_factory.mktemp("fsdd")
    return out, prepare_corpus("fsdd", out, corpus_dir=fsdd_dir)


# --------------------------------------------------------------------------- torch settings
@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: more threads only add barrier overhead
    (and stall badly when the machine is loaded). Opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def float64():
    """float64 as torch's default dtype for one test (exact-derivative checks)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# --------------------------------------------------------------------------- generated data
@pytest.fixture(scope="session")
def graph(tmp_path_factory):
    """The hand-built yesno HCLG of tests/yesno_graph.py; ``graph.path`` is its HCLG.fst."""
    from yesno_graph import build_yesno_graph

    d = tmp_path_factory.mktemp("yesno_graph")
    g = build_yesno_graph(d)
    g.path = d / "HCLG.fst"
    return g


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """``(root, alignments)`` of the toy frame corpus of tests/toy_frames.py (CE / HF training),
    built afresh for each module. test_synth.py has its own ``corpus`` fixture."""
    from toy_frames import build_toy_corpus

    return build_toy_corpus(tmp_path_factory.mktemp("toy"))
