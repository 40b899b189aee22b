"""hfasr.fileio: atomic writes, checked torch loads, staged stage outputs, directory locks."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time

import pytest
import torch

from hfasr.errors import DataError
from hfasr.fileio import (
    DirLock,
    LockError,
    append_line,
    atomic_path,
    load_torch,
    save_torch,
    staged_dir,
    write_text,
)


def test_atomic_path_keeps_old_content_on_error(tmp_path):
    p = tmp_path / "a.txt"
    write_text(p, "old\n")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert p.read_text() == "old\n"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.txt"]  # no temp file left


def test_atomic_path_disk_error_names_file(tmp_path):
    p = tmp_path / "b.txt"
    with pytest.raises(DataError, match="b.txt"), atomic_path(p):
        raise OSError(28, "No space left on device")
    assert not p.exists() and list(tmp_path.iterdir()) == []


def test_load_torch_roundtrip_and_errors(tmp_path):
    p = tmp_path / "x.pt"
    save_torch({"log_prior": torch.zeros(3)}, p)
    assert load_torch(p, "a prior", keys=["log_prior"])["log_prior"].shape == (3,)
    with pytest.raises(DataError, match="missing keys"):
        load_torch(p, "a prior", keys=["mean"])
    with pytest.raises(DataError, match="not found"):
        load_torch(tmp_path / "nope.pt", "a prior")
    data = p.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="trunc.pt: cannot read a prior"):
        load_torch(tmp_path / "trunc.pt", "a prior")


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_load_torch_never_runs_a_pickle_payload(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"log_prior": _Payload()}, f)
    with pytest.raises(DataError, match="evil.pt"):
        load_torch(evil, "a prior", keys=["log_prior"])
    torch.save({"log_prior": _Payload()}, tmp_path / "evil2.pt")
    with pytest.raises(DataError, match="evil2.pt"):
        load_torch(tmp_path / "evil2.pt", "a prior", keys=["log_prior"])
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_staged_dir_publishes_only_on_success(tmp_path):
    final = tmp_path / "out"
    with staged_dir(final) as d:
        (d / "train.txt").write_text("1")
        (d / "sub").mkdir()
        (d / "sub" / "test.txt").write_text("2")
    assert (final / "train.txt").read_text() == "1" and (final / "sub" / "test.txt").read_text() == "2"
    with pytest.raises(ValueError), staged_dir(final) as d:
        (d / "train.txt").write_text("NEW")
        raise ValueError("test split failed")
    assert (final / "train.txt").read_text() == "1"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out"]


def test_append_line(tmp_path):
    p = tmp_path / "h.jsonl"
    append_line(p, '{"a": 1}')
    append_line(p, '{"a": 2}\n')
    assert p.read_text() == '{"a": 1}\n{"a": 2}\n'


def test_dir_lock_excludes_second_writer_and_frees_on_death(tmp_path):
    with DirLock(tmp_path, "train"), pytest.raises(LockError, match=f"pid {os.getpid()}"):
        DirLock(tmp_path).acquire()
    DirLock(tmp_path).acquire().release()  # released: free again
    # a holder killed with SIGKILL leaves no stale lock
    code = ("import sys, time; from hfasr.fileio import DirLock; DirLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockError, match=f"pid {proc.pid}"):
            DirLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()
    time.sleep(0.05)
    DirLock(tmp_path).acquire().release()


def test_staged_dir_sweeps_dirs_of_dead_processes(tmp_path):
    final = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    stale = tmp_path / f".out.staging.{dead}.0"
    stale.mkdir()
    (stale / "half.txt").write_text("x")
    with staged_dir(final) as d:
        (d / "a.txt").write_text("1")
    assert not stale.exists() and (final / "a.txt").read_text() == "1"


def test_save_torch_full_disk_is_a_clean_error(tmp_path, monkeypatch):
    p = tmp_path / "c.pt"
    save_torch({"a": torch.ones(2)}, p)

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DataError, match="c.pt: cannot write"):
        save_torch({"a": torch.zeros(2)}, p)
    assert torch.equal(load_torch(p, "x")["a"], torch.ones(2))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["c.pt"]


def test_staged_dir_errors_name_the_published_path(tmp_path):
    final = tmp_path / "lang"
    with pytest.raises(DataError) as e, staged_dir(final) as d:
        raise DataError(f"{d / 'G.fst'}: no space left on the device")
    assert str(e.value) == f"{final / 'G.fst'}: no space left on the device"
