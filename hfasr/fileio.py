"""Safe file output and input: atomic writes, checked loads, staged stage outputs, locks.

Every file hfasr writes goes through one of these, so that a crash, a SIGKILL or a full disk
never leaves a partly written file where a later stage (or a ``--resume``) would trust it:

* :func:`atomic_path` — a context manager yielding a temporary name beside the target (unique
  per process and call); on success the file is fsync'ed, renamed over the target and the
  directory fsync'ed; on any exception the temporary file is removed and the target is left as
  it was. :func:`write_text`, :func:`write_bytes` and :func:`save_torch` are built on it; a
  foreign writer (``CutSet.to_file``, ``kaldifst.StdVectorFst.write``) writes to the yielded name.
* :func:`load_torch` — ``torch.load(weights_only=True)`` with a :class:`~hfasr.errors.DataError`
  naming the file and what was expected when it is missing, truncated, tampered with (a pickle
  that would run code is refused, never executed) or of the wrong kind.
* :func:`staged_dir` — a whole stage's outputs are written into a temporary sibling directory
  and published by renames only after the stage succeeded, so a failed stage leaves the
  previous outputs, never a mix of old and new.
* :class:`DirLock` — one writer per output directory (``fcntl.flock`` on ``<dir>/.hfasr.lock``;
  the kernel releases it when the holder dies, so a lock of a killed process is never stale);
  a second writer gets an error naming the holder's PID and host.

This module imports only the standard library (torch lazily), so every layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import re
import shutil
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hfasr.errors import DataError, HfasrError

_counter = itertools.count()


class LockError(HfasrError):
    """Another live process holds the output directory."""


def tmp_name(path: str | Path) -> Path:
    """A temporary name beside ``path``, unique per process and call (``<name>.tmp.<pid>.<n>``)."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp.{os.getpid()}.{next(_counter)}")


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so that a rename inside it survives a power loss (no-op where unsupported)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_error(path: Path, e: OSError) -> HfasrError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return DataError(f"{path}: no space left on the device while writing; the previous "
                         f"version (if any) is unchanged")
    return DataError(f"{path}: cannot write: {e.strerror or e}")


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; publish it atomically on success.

    On an exception inside the block the temporary file is removed and ``path`` is untouched;
    an ``OSError`` such as a full disk becomes a :class:`DataError` naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise DataError(f"{path}: the writer produced no file")
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    except OSError as e:
        _unlink_quiet(tmp)
        raise _disk_error(path, e) from e
    except BaseException:
        _unlink_quiet(tmp)
        raise


def _unlink_quiet(p: Path) -> None:
    with contextlib.suppress(OSError):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def write_bytes(path: str | Path, data: bytes, fsync: bool = True) -> None:
    """Atomically replace ``path`` with ``data``."""
    with atomic_path(path, fsync) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str, fsync: bool = True, encoding: str = "utf-8") -> None:
    """Atomically replace ``path`` with ``text``."""
    write_bytes(path, text.encode(encoding), fsync)


def append_line(path: str | Path, line: str) -> None:
    """Append one line (``line`` without its newline) to a log such as ``history.jsonl`` with a
    single ``write`` on an ``O_APPEND`` descriptor and an fsync: a crash leaves whole lines only
    (a reader skips a torn last line)."""
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    try:
        fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise _disk_error(path, e) from e


def save_torch(obj: Any, path: str | Path, fsync: bool = True) -> None:
    """``torch.save`` through :func:`atomic_path` (``obj`` must be plain data and tensors, so
    that :func:`load_torch` can read it with ``weights_only=True``)."""
    import torch

    with atomic_path(path, fsync) as tmp:
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
        except RuntimeError as e:  # torch's writer reports a full disk as RuntimeError
            raise DataError(f"{path}: cannot write the file (is the disk full or a file size limit hit? "
                            f"torch: {str(e).strip()[:120]}); the previous version (if any) is unchanged") from e


def load_torch(path: str | Path, what: str, keys: Sequence[str] = (), map_location: Any = "cpu",
               mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``, checked.

    ``what`` says what the file should be (e.g. ``"a prior file written by hfasr train"``); ``keys``
    are the keys a dict must have; ``mmap``: tensors are views of the memory-mapped file. A missing, truncated or tampered file (a pickle that would run
    code is refused by ``weights_only`` and never executed), or one of the wrong kind, is a
    :class:`DataError` naming the file and ``what``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found (expected {what})")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # truncated, not a torch file, or pickled objects refused by weights_only
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot read {what}: the file is truncated, corrupt or holds more "
                        f"than tensors and plain data ({type(e).__name__}: {msg[:200]})") from e
    if keys:
        if not isinstance(obj, dict):
            raise DataError(f"{path}: expected {what} (a dict with keys {list(keys)}), got {type(obj).__name__}")
        missing = [k for k in keys if k not in obj]
        if missing:
            raise DataError(f"{path}: expected {what}; missing keys {missing}")
    return obj


@contextlib.contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``final``; on success, publish its files.

    The block writes all outputs of a stage into the yielded directory. After it returns, each
    file there is renamed into ``final`` (created if needed; files of ``final`` not produced by
    the stage are kept), and the directory is fsync'ed. On an exception nothing is published and
    the temporary directory is removed, so ``final`` keeps its previous state in full.
    """
    final = Path(final)
    final.mkdir(parents=True, exist_ok=True)
    _sweep_dead_staging(final)
    tmp = final.parent / f".{final.name}.staging.{os.getpid()}.{next(_counter)}"
    tmp.mkdir()
    try:
        yield tmp
        publish(tmp, final)
    except OSError as e:
        raise _disk_error(final, e) from e
    except HfasrError as e:  # name the published path, not the hidden staging one
        msg = str(e).replace(str(tmp), str(final))
        if msg == str(e):
            raise
        try:
            renamed = type(e)(msg)
        except TypeError:
            raise e from None
        raise renamed from e
    finally:
        _unlink_quiet(tmp)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_TMP_NAME = re.compile(r"\.tmp\.(\d+)\.\d+$")  # tmp_name: <name>.tmp.<pid>.<n>


def remove_dead_temporaries(directory: str | Path) -> list[Path]:
    """Remove the :func:`tmp_name` files in ``directory`` whose writing process no longer exists
    (left by a killed run; call it holding the directory's :class:`DirLock`). Returns them."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _TMP_NAME.search(p.name)
        if m is None or not p.is_file() or _pid_alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def _sweep_dead_staging(final: Path) -> None:
    """Remove staging dirs of ``final`` left by killed processes of this host."""
    for d in final.parent.glob(f".{final.name}.staging.*"):
        parts = d.name.rsplit(".", 2)
        if len(parts) == 3 and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            _unlink_quiet(d)


def publish(src_dir: Path, final: Path) -> None:
    """Rename every file under ``src_dir`` to the same relative path under ``final`` (fsync'ed)."""
    files = [p for p in sorted(src_dir.rglob("*")) if p.is_file()]
    for p in files:
        _fsync_file(p)
    dirs = set()
    for p in files:
        dst = final / p.relative_to(src_dir)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p, dst)
        dirs.add(dst.parent)
    for d in dirs:
        fsync_dir(d)


class DirLock:
    """Exclusive lock on an output directory for the life of a run (or a ``with`` block).

    ``flock`` on ``<dir>/.hfasr.lock``: a second process (or a second lock in this process) trying
    the same directory gets a :class:`LockError` naming the holder's PID, host and command; the
    kernel drops the lock when its holder exits or is killed, so there are no stale locks.
    """

    NAME = ".hfasr.lock"

    def __init__(self, directory: str | Path, what: str = "hfasr") -> None:
        self.dir = Path(directory)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / self.NAME
        fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            try:
                holder = path.read_text().strip() or "unknown process"
            except OSError:
                holder = "unknown process"
            raise LockError(f"{self.dir} is in use by another run ({holder}); wait for it to "
                            f"finish or use another output directory") from None
        try:  # who holds it, for the error of a second writer (the lock holds without it)
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}: {self.what}\n".encode())
        except OSError:
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> DirLock:  # noqa: PYI034
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
