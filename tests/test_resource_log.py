"""HFASR_RESOURCE_LOG: every hfasr command appends its wall time and peak memory (bench/scale.py)."""

from __future__ import annotations

import json

from hfasr.cli import RESOURCE_LOG_ENV, main


def test_resource_log_records_success_and_error(tmp_path, monkeypatch, capsys):
    log = tmp_path / "res.jsonl"
    assert main(["prepare", "yesno", "--corpus-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "d")]) == 2
    assert not log.exists()  # off unless the variable is set
    monkeypatch.setenv(RESOURCE_LOG_ENV, str(log))
    assert main(["prepare", "yesno", "--corpus-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "d")]) == 2
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(recs) == 1
    r = recs[0]
    assert r["argv"][:2] == ["prepare", "yesno"] and r["status"] == 2
    assert r["wall_s"] >= 0 and r["max_rss_mb"] > 10 and r["max_rss_children_mb"] >= 0
    assert r["cpu_s"] > 0
    assert "error:" in capsys.readouterr().err


def test_resource_log_unwritable_is_a_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(RESOURCE_LOG_ENV, str(tmp_path / "no" / "such" / "dir" / "res.jsonl"))
    assert main(["prepare", "yesno", "--corpus-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "d")]) == 2
    assert "resource log not written" in capsys.readouterr().err


def test_bound_heap_sets_glibc_mmap_threshold(monkeypatch):
    """On Linux/glibc the mmap threshold is fixed (peak memory of long runs); a user's own
    MALLOC_MMAP_THRESHOLD_ is left alone."""
    import sys

    from hfasr.heap import bound_heap

    if sys.platform.startswith("linux"):
        import ctypes

        has_mallopt = hasattr(ctypes.CDLL(None), "mallopt")
        assert bound_heap() is has_mallopt
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert bound_heap() is False
