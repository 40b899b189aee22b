"""The one place that imports the native Kaldi packages.

``import kaldilm`` before ``kaldi_hmm_gmm`` (and, with the pinned OpenFst-1.7 builds, before
``kaldifst`` or ``kaldi_decoder``) deadlocks the process. Every hfasr module that needs a Kaldi
component imports it from here::

    from hfasr._kaldi import kaldifst, khg

so the order below is the only one ever used. ``kaldilm`` comes last.

:func:`read_fst` and :func:`write_fst` are the checked, atomic FST file I/O of every stage
(``L.fst``, ``G.fst``, ``HCLG.fst``, ``TLG.fst``).
"""

from __future__ import annotations

from pathlib import Path

import kaldi_decoder
import kaldi_hmm_gmm as khg
import kaldialign
import kaldifst
import kaldilm


def read_fst(path: str | Path, what: str = "an OpenFst StdVectorFst") -> kaldifst.StdVectorFst:
    """Read an FST written by :func:`write_fst`; a missing, truncated or non-FST file is a
    :class:`~hfasr.errors.DataError` naming the file (kaldifst returns None or raises)."""
    from hfasr.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found (expected {what})")
    try:
        fst = kaldifst.StdVectorFst.read(str(path))
    except Exception as e:
        raise DataError(f"{path}: cannot read {what}: {e}") from e
    if fst is None:
        raise DataError(f"{path}: cannot read {what}: the file is truncated, corrupt or not an OpenFst "
                        "StdVectorFst; rerun the stage that wrote it")
    return fst


def write_fst(fst: kaldifst.StdVectorFst, path: str | Path) -> None:
    """Write ``fst`` (OpenFst binary) atomically: a temporary file renamed over ``path``."""
    from hfasr.errors import DataError
    from hfasr.fileio import atomic_path

    with atomic_path(path) as tmp:
        if not fst.write(str(tmp)):
            raise DataError(f"{path}: cannot write the FST")


__all__ = ["kaldi_decoder", "kaldialign", "kaldifst", "kaldilm", "khg", "read_fst", "write_fst"]
