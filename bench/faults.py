#!/usr/bin/env python
"""Crash consistency of ``hfasr train``: SIGKILL at random points, ``--resume``, compare (issue 15, item 6).

Usage:
  .venv/bin/python bench/faults.py --work /tmp/faults [--trials 28] [--out bench/results/faults.md]
      [--trainers ce_adam ce_hf smbr_hf smbr_hf_regen ctc_dnn_hf ctc_blstm_hf ctc_blstm_adam] [--seed 0]

Data (built once in ``WORK/data``, each stage skipped when its marker exists): yesno (lhotse's
30/30 split; dev = train), 23-bin fbank without speed perturbation, lang, a 100-Gaussian
monophone GMM with its alignments and HCLG, a tiny CE DNN (``WORK/data/ce_init``) and the
lattices of that model (sMBR's inputs). Each trainer is a tiny model with a few updates
(:data:`TRAINERS`), so one run is a few seconds of start-up and a second or two of training.

For every trainer:

1. a reference run, uninterrupted (``WORK/<trainer>/ref``), and a second uninterrupted run
   (``repeat``): the run is deterministic, so a difference after a kill is the kill's doing;
2. ``--trials`` random trials in all (dealt round-robin over the trainers; seeded): the same
   command in a subprocess, SIGKILL'ed (the whole process group) at a random point, then run
   again with ``--resume``; 1-3 kill/resume cycles per trial, then a last ``--resume`` run to
   the end. Each kill point is drawn as one of: (20%) a uniform time in (0, the reference's
   duration) after the start (start-up, data loading, the initial report, any update); (35%) a
   random ``report`` / ``hf-update`` line of the reference's stdout (one the resumed run will
   print again) plus a delay, half the time uniform in 0-50 ms (the checkpoint write that
   follows a report), else uniform up to the reference's next line; (15%) the moment the
   checkpoint's temporary file appears after such a line, or ``final.pt``'s (Linux inotify,
   then 0-1 ms: a small file is often written by then); (30%) in-process at a write
   (:data:`INJECT`): the run SIGKILLs itself at the k-th checkpoint write (k random), at
   ``final.pt``'s or at a rewrite of ``history.jsonl``, with the temporary file half written or
   complete but not yet renamed. A first kill point the run does not reach (it ran faster than
   the reference) is redrawn on a fresh out dir, so every trial kills at least once;
3. the last run's ``final.pt`` (every tensor bit for bit, every other value equal) and
   ``history.jsonl`` (every record, ``wall_s`` left out: training time differs by design) are
   compared with the reference's. A trial also fails when any run after a kill exits non-zero
   or prints a Python traceback, or when the out dir differs from the reference's in its file
   names once the last run finished (a stray temporary file of a killed write, a missing file;
   the lock file ``.hfasr.lock`` is ignored).

Kill points in the table: ``uN`` = the killed process had printed the report of update N
(``u0``: only the initial report); ``start`` = killed before its first report (during start-up
or the initial dev evaluation); ``*`` = a temporary file (``*.tmp*``) was in the out dir right
after the kill, i.e. a write such as the checkpoint's was cut off; ``end`` = the run finished
before the drawn point (no kill in that cycle). ``a,b`` = the cycles of one trial.

Writes the table (and every failed trial's details) to stdout and to ``--out`` (a ``.md`` file,
or a directory to hold ``faults.md``; default ``WORK/faults.md``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "yesno" / "waves_yesno"
TASK = "yesno"
LOCK_NAME = ".hfasr.lock"
IGNORED_HISTORY_KEYS = ("wall_s",)  # training wall time: a resumed run does not reproduce it

TINY_DNN = {"hidden_dim": 32, "num_layers": 2, "context": 2, "activation": "relu"}
TINY_BLSTM = {"hidden_size": 8, "num_layers": 1, "subsample": 3}


@dataclass(frozen=True)
class Trainer:
    """One ``hfasr train`` configuration: its YAML config and which inputs it reads
    (``ce``: the GMM alignments; ``seq``: alignments, the CE model, lattices, the HCLG for dev
    WER; ``ctc``: the lang dir)."""

    name: str
    inputs: str
    config: dict[str, Any]


TRAINERS: dict[str, Trainer] = {t.name: t for t in (
    # CE with Adam: 4 epochs, 2 reports per epoch (mid-epoch checkpoints: the data order's
    # generator state at the epoch start)
    Trainer("ce_adam", "ce", {"criterion": "ce", "optimizer": "adam", "epochs": 4, "reports_per_epoch": 2,
                              "lr_schedule": "constant", "lr": 0.001, "batch_size": 256, "num_threads": 1,
                              "dnn": TINY_DNN}),
    # CE with HF: 6 updates, 10% held out, CG <= 20
    Trainer("ce_hf", "ce", {"criterion": "ce", "optimizer": "hf", "num_threads": 1, "dnn": TINY_DNN,
                            "hf": {"updates": 6, "heldout_fraction": 0.1, "curvature_fraction": 0.1,
                                   "curvature_min": 512, "optimizer": {"cg_max_iters": 20}}}),
    # sMBR with HF from the CE model on its lattices, dev WER decoded at every report
    Trainer("smbr_hf", "seq", {"criterion": "smbr", "optimizer": "hf", "num_threads": 1,
                               "sequence": {"acoustic_scale": 0.1, "curvature": "fisher", "fisher_scale": 1.0},
                               "hf": {"updates": 4, "heldout_fraction": 0.2, "curvature_fraction": 0.3,
                                      "optimizer": {"damping": 0.01, "cg_max_iters": 10}}}),
    # the same with the training lattices re-decoded by the current model every 2 updates (the
    # regenerated lattices are task state in the checkpoint)
    Trainer("smbr_hf_regen", "seq", {"criterion": "smbr", "optimizer": "hf", "num_threads": 1,
                                     "regenerate_every": 2,
                                     "sequence": {"acoustic_scale": 0.1, "curvature": "fisher", "fisher_scale": 1.0},
                                     "hf": {"updates": 4, "heldout_fraction": 0.2, "curvature_fraction": 0.3,
                                            "optimizer": {"damping": 0.01, "cg_max_iters": 10}}}),
    # CTC with HF on a DNN
    Trainer("ctc_dnn_hf", "ctc", {"criterion": "ctc", "model": "dnn", "optimizer": "hf", "units": "phone",
                                  "num_threads": 1, "dnn": TINY_DNN,
                                  "hf": {"updates": 5, "heldout_fraction": 0.1, "curvature_fraction": 0.25,
                                         "optimizer": {"damping": 0.01, "cg_max_iters": 10}}}),
    # CTC with HF on a BLSTM
    Trainer("ctc_blstm_hf", "ctc", {"criterion": "ctc", "model": "blstm", "optimizer": "hf", "units": "phone",
                                    "num_threads": 1, "blstm": TINY_BLSTM,
                                    "hf": {"updates": 4, "heldout_fraction": 0.1, "curvature_fraction": 0.25,
                                           "optimizer": {"damping": 0.01, "cg_max_iters": 8}}}),
    # CTC with Adam on a BLSTM: 3 epochs, 2 reports per epoch
    Trainer("ctc_blstm_adam", "ctc", {"criterion": "ctc", "model": "blstm", "optimizer": "adam", "units": "phone",
                                      "num_threads": 1, "max_frames": 2000, "blstm": TINY_BLSTM,
                                      "adam": {"lr": 0.003, "epochs": 3, "reports_per_epoch": 2}}),
)}

# the data stages: (name, what it leaves behind, command); {w} = WORK/data, {c} = the corpus dir
FBANK = {"num_mel_bins": 23, "dither": 0.0, "speed_perturb": False}
CE_INIT = {"criterion": "ce", "optimizer": "adam", "epochs": 3, "lr_schedule": "constant", "lr": 0.001,
           "batch_size": 256, "num_threads": 1, "dnn": TINY_DNN}
STAGES = (
    ("prepare", "yesno_cuts_train.jsonl.gz",
     "prepare yesno --corpus-dir {c} --out {w}"),
    ("features", "yesno_stats.pt", "features {w} --task yesno --config {w}/fbank.yaml --quiet"),
    ("lang", "lang/G_weak.fst", "lang --data-dir {w} --task yesno --out {w}/lang"),
    ("gmm", "gmm/graph/HCLG.fst", ("gmm --data-dir {w} --task yesno --lang {w}/lang --out {w}/gmm "
     "--config {w}/gmm.yaml --num-jobs 1 --quiet")),
    ("ce_init", "ce_init/final.pt", ("train --data-dir {w} --task yesno --ali-dir {w}/gmm --out {w}/ce_init "
     "--config {w}/ce_init.yaml --quiet")),
    ("lattices", "lats/lats_train.index.pt", ("lattices --model {w}/ce_init/final.pt --data-dir {w} --task yesno "
     "--lang {w}/lang --gmm-dir {w}/gmm --out {w}/lats --num-jobs 1 --quiet")),
)


def say(msg: str) -> None:
    print(msg, flush=True)


def hfasr_env() -> dict[str, str]:
    """The subprocesses' environment: unbuffered stdout (lines arrive as printed), one thread."""
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def hfasr_cmd(args: str | list[str]) -> list[str]:
    """``python -m hfasr.cli ARGS`` with this interpreter."""
    return [sys.executable, "-m", "hfasr.cli", *(args.split() if isinstance(args, str) else args)]


# The in-process kill of a ``KillPlan.inject`` run: ``python -c INJECT ARGS`` runs the hfasr CLI
# after wrapping ``os.replace`` (how a write is published: the temporary file is complete and
# fsync'ed) or ``torch.save`` (the temporary file is cut to half its bytes, as by a kill in the
# middle of writing it); at the k-th write of the target file the process SIGKILLs itself.
INJECT = r"""
import os, signal, sys
target, k, how = os.environ.pop("HFASR_FAULT").split(":")
count = [0]

def hit(name):
    if not os.path.basename(str(name)).startswith(target + ".tmp"):
        return False
    count[0] += 1
    return count[0] == int(k)

if how == "rename":
    real_replace = os.replace

    def replace(src, dst, *a, **kw):
        if hit(src):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *a, **kw)

    os.replace = replace
else:
    import torch
    real_save = torch.save

    def save(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        name = getattr(f, "name", f)
        if hit(name):
            if hasattr(f, "truncate"):
                f.flush()
                f.truncate(f.tell() // 2)
                f.flush()
            else:
                os.truncate(name, os.path.getsize(name) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save
sys.argv[0] = "hfasr"
from hfasr.cli import main
sys.exit(main())
"""


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))


# ---------------------------------------------------------------------------------------- data
def build_data(work: Path, corpus_dir: Path) -> Path:
    """Run the data stages once into ``work/data`` (each skipped when its marker file exists)."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    write_yaml(data / "fbank.yaml", FBANK)
    write_yaml(data / "gmm.yaml", {"total_gauss": 100})
    write_yaml(data / "ce_init.yaml", CE_INIT)
    for name, marker, cmd in STAGES:
        done = data / f".done-{name}"
        if done.is_file() and (data / marker).exists():
            continue
        t0 = time.perf_counter()
        r = subprocess.run(hfasr_cmd(cmd.format(w=data, c=corpus_dir)), env=hfasr_env(), capture_output=True,
                           text=True, check=False)
        if r.returncode != 0:
            raise SystemExit(f"data stage {name} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        done.write_text("ok\n")
        say(f"data: {name} {time.perf_counter() - t0:.1f} s")
    return data


def train_args(trainer: Trainer, data: Path, out: Path, config: Path) -> list[str]:
    """The ``hfasr train`` command line of ``trainer`` writing to ``out``."""
    args = ["train", "--data-dir", str(data), "--task", TASK, "--out", str(out), "--config", str(config), "--quiet"]
    if trainer.inputs in ("ce", "seq"):
        args += ["--ali-dir", str(data / "gmm")]
    if trainer.inputs == "seq":
        args += ["--init", str(data / "ce_init/final.pt"), "--lat-dir", str(data / "lats"),
                 "--graph-dir", str(data / "gmm/graph"), "--model-dir", str(data / "gmm")]
    if trainer.inputs == "ctc":
        args += ["--lang", str(data / "lang")]
    return hfasr_cmd(args)


# ---------------------------------------------------------------------------------------- one run
@dataclass
class KillPlan:
    """When to SIGKILL: ``seconds`` after the start; or ``delay`` seconds after the first stdout
    line starting with ``line``; or, with ``write`` (a file name in the out dir), ``delay``
    seconds after the first temporary file of ``write`` (``<write>.tmp*``) is created once
    ``line`` has been printed (any time without ``line``), i.e. in the middle of that write."""

    seconds: float | None = None
    line: str | None = None
    delay: float = 0.0
    write: str | None = None
    inject: str | None = None  # "FILE:K:HOW": the process kills itself at FILE's k-th write (:data:`INJECT`)

    @property
    def kind(self) -> str:
        """time | line | write | inject."""
        return ("inject" if self.inject is not None else "write" if self.write is not None
                else "line" if self.line is not None else "time")

    def describe(self) -> str:
        if self.inject is not None:
            target, k, how = self.inject.split(":")
            where = "half written" if how == "mid" else "written, before its rename"
            return f"self-kill at write {k} of {target} ({where})"
        if self.write is not None:
            after = f" after '{self.line}'" if self.line else ""
            return f"{self.delay * 1000:.1f} ms into the write of {self.write}{after}"
        if self.line is not None:
            return f"{self.delay * 1000:.0f} ms after '{self.line}'"
        return f"at {self.seconds:.2f} s"


class Creations:
    """File creations in one directory, through Linux inotify (ctypes; no polling): the watch
    starts at :meth:`start`; :meth:`wait` blocks until a file whose name starts with a prefix is
    created. Unavailable (not Linux): :attr:`ok` is False."""

    IN_CREATE, IN_MOVED_TO = 0x100, 0x80

    def __init__(self) -> None:
        import ctypes
        import ctypes.util

        self.fd = -1
        try:
            self.libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError):
            self.fd = -1
        self.ok = self.fd >= 0
        self.pending: list[str] = []

    def start(self, directory: Path) -> bool:
        directory.mkdir(parents=True, exist_ok=True)
        return self.ok and self.libc.inotify_add_watch(self.fd, str(directory).encode(),
                                                       self.IN_CREATE | self.IN_MOVED_TO) >= 0

    def drain(self) -> None:
        """Forget the creations so far (queued in the kernel or read)."""
        self.pending.clear()
        while True:
            try:
                if not os.read(self.fd, 65536):
                    return
            except BlockingIOError:
                return

    def wait(self, prefix: str, alive, timeout: float) -> bool:
        """True once a file ``prefix*`` is created; False if ``alive()`` turns False or after
        ``timeout`` seconds."""
        import select
        import struct

        end = time.perf_counter() + timeout
        while time.perf_counter() < end:
            if any(n.startswith(prefix) for n in self.pending):
                return True
            self.pending.clear()
            if not alive():
                return False
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if not ready:
                continue
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            i = 0
            while i + 16 <= len(buf):
                _, _, _, n = struct.unpack_from("iIII", buf, i)
                self.pending.append(buf[i + 16:i + 16 + n].split(b"\0", 1)[0].decode(errors="replace"))
                i += 16 + n
        return False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class RunResult:
    """One ``hfasr train`` process: exit status (negative: killed by that signal), stdout lines
    with their times since the start, stderr, wall time, whether we killed it."""

    rc: int
    lines: list[tuple[float, str]]
    stderr: str
    duration: float
    killed: bool


def run_hfasr(cmd: list[str], kill: KillPlan | None = None, timeout: float = 600.0,
              out_dir: Path | None = None) -> RunResult:
    """Run ``cmd`` in its own process group, reading stdout line by line; SIGKILL the group at
    ``kill``'s point (if it comes before the process ends; a ``write`` plan watches ``out_dir``)."""
    watch = Creations() if kill is not None and kill.write is not None else None
    if watch is not None and not (out_dir is not None and watch.start(out_dir)):
        raise SystemExit("kill plans at a write need Linux inotify and the out dir")
    env = hfasr_env()
    if kill is not None and kill.inject is not None:
        assert cmd[1:3] == ["-m", "hfasr.cli"], cmd
        cmd = [cmd[0], "-c", INJECT, *cmd[3:]]
        env["HFASR_FAULT"] = kill.inject
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    out = _Stdout(t0)
    err: list[str] = []

    def read_err() -> None:
        assert proc.stderr is not None
        err.append(proc.stderr.read())

    readers = [threading.Thread(target=out.read, args=(proc.stdout,), daemon=True),
               threading.Thread(target=read_err, daemon=True)]
    for th in readers:
        th.start()
    killed = False
    at = None
    if kill is not None and kill.write is not None:
        if kill.line is None or out.wait_for(kill.line, timeout) is not None:
            watch.drain()
            if watch.wait(kill.write + ".tmp", lambda: proc.poll() is None, timeout):
                at = time.perf_counter() - t0
        watch.close()
    elif kill is not None and kill.inject is None:
        at = kill.seconds if kill.line is None else out.wait_for(kill.line, timeout)
    if kill is not None and at is not None:
        at += kill.delay
        wait = at - (time.perf_counter() - t0)
        if wait > 0:
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait()
    for th in readers:
        th.join(10)
    if kill is not None and kill.inject is not None:
        killed = rc == -signal.SIGKILL
    return RunResult(rc, out.lines, "".join(err), time.perf_counter() - t0, killed)


class _Stdout:
    """A process's stdout lines with their arrival times (since ``t0``), and a way to wait for one."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.lines: list[tuple[float, str]] = []
        self.eof = False
        self.cond = threading.Condition()

    def read(self, stream) -> None:
        for raw in stream:
            with self.cond:
                self.lines.append((time.perf_counter() - self.t0, raw.rstrip("\n")))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_for(self, prefix: str, timeout: float) -> float | None:
        """The arrival time of the first line starting with ``prefix``; None if the stream ended
        (or ``timeout`` passed) without one."""
        with self.cond:
            while True:
                hit = next((t for t, text in self.lines if text.startswith(prefix)), None)
                if hit is not None or self.eof or time.perf_counter() - self.t0 > timeout:
                    return hit
                self.cond.wait(0.05)


# ---------------------------------------------------------------------------------------- outputs
def event_key(text: str) -> tuple[str, int] | None:
    """``(prefix, update)`` of a ``report`` / ``hf-update`` stdout line (the prefix that
    identifies it in another run of the same training), else None."""
    parts = text.split()
    if len(parts) >= 3 and parts[0] == "report" and parts[2].startswith("update="):
        n = int(parts[2].split("=", 1)[1])
        return f"report {parts[1]} update={n} ", n
    if len(parts) >= 2 and parts[0] == "hf-update" and parts[1].isdigit():
        return f"hf-update {parts[1]} ", int(parts[1])
    return None


def last_report(lines: list[tuple[float, str]]) -> int | None:
    """The update of the last ``report`` line printed, None if none."""
    out = None
    for _, text in lines:
        key = event_key(text)
        if key is not None and text.startswith("report "):
            out = key[1]
    return out


def checkpoint_update(out: Path) -> int | None:
    """The update of the last report in ``out/checkpoint.pt`` (None: no checkpoint)."""
    import torch

    path = out / "checkpoint.pt"
    if not path.is_file():
        return None
    st = torch.load(path, map_location="cpu", weights_only=True)
    return int(st["history"][-1]["update"])


def listing(out: Path) -> set[str]:
    """Every file under ``out`` (relative names), the lock file left out."""
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != LOCK_NAME}


def temp_files(out: Path) -> list[str]:
    """Files that look like an interrupted write (``*.tmp*``, staging dirs)."""
    return sorted(n for n in listing(out) if ".tmp" in Path(n).name or ".staging" in n)


def history_records(out: Path) -> list[dict[str, Any]]:
    """``history.jsonl`` without the fields a resumed run does not reproduce."""
    path = out / "history.jsonl"
    if not path.is_file():
        return []
    recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [{k: v for k, v in r.items() if k not in IGNORED_HISTORY_KEYS} for r in recs]


def final_model(out: Path) -> dict[str, Any] | None:
    import torch

    path = out / "final.pt"
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def diff_values(a: Any, b: Any, where: str = "final.pt") -> list[str]:
    """Where ``a`` and ``b`` differ: tensors bit for bit (dtype, shape, every element, NaN
    patterns included), dicts / lists recursively, anything else by ``==``."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return [f"{where}: tensor vs {type(b if isinstance(a, torch.Tensor) else a).__name__}"]
        if a.dtype != b.dtype or a.shape != b.shape:
            return [f"{where}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"]
        if torch.equal(_bits(a), _bits(b)):
            return []
        if a.dtype.is_floating_point:
            d = (a.double() - b.double()).abs()
            return [f"{where}: {int((a != b).sum())}/{a.numel()} elements differ, max |diff| {float(d.max()):.3g}"]
        return [f"{where}: {int((a != b).sum())}/{a.numel()} elements differ"]
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}: key {k!r} only in {'reference' if k in a else 'resumed run'}"
               for k in sorted(set(a) ^ set(b), key=str)]
        for k in a:
            if k in b:
                out += diff_values(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff_values(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def _bits(t):
    """A float tensor's bytes (so that NaN equals NaN and -0.0 differs from 0.0); others as they are."""
    import torch

    if t.dtype.is_floating_point or t.dtype.is_complex:
        return t.detach().contiguous().reshape(-1).view(torch.uint8)
    return t


@dataclass
class Outcome:
    """What a finished run left: final.pt, the history records, the file names."""

    final: dict[str, Any] | None
    history: list[dict[str, Any]]
    files: set[str]

    @classmethod
    def of(cls, out: Path) -> Outcome:
        return cls(final_model(out), history_records(out), listing(out))


def compare(ref: Outcome, got: Outcome) -> list[str]:
    """Every difference of ``got`` from the reference (empty: bit-identical)."""
    problems: list[str] = []
    if got.final is None:
        problems.append("no final.pt")
    elif ref.final is not None:
        problems += diff_values(ref.final, got.final)
    if len(ref.history) != len(got.history):
        problems.append(f"history.jsonl: {len(ref.history)} vs {len(got.history)} records")
    for i, (a, b) in enumerate(zip(ref.history, got.history)):
        problems += diff_values(a, b, f"history.jsonl[{i}]")
    return problems


def file_problems(ref: Outcome, got: Outcome) -> list[str]:
    """Files the finished run has beyond the reference's (stray temporaries) or lacks."""
    extra, missing = sorted(got.files - ref.files), sorted(ref.files - got.files)
    return ([f"stray file {n}" for n in extra] if extra else []) + ([f"missing file {n}" for n in missing]
                                                                      if missing else [])


# ---------------------------------------------------------------------------------------- trials
@dataclass
class Reference:
    """The uninterrupted run of a trainer: its outcome, stdout events, duration, and whether a
    second uninterrupted run matched it."""

    outcome: Outcome
    events: list[tuple[float, str, int]]  # (time since start, line prefix, update)
    duration: float
    repeat_identical: bool
    repeat_problems: list[str]


@dataclass
class Trial:
    trainer: str
    index: int
    kill_points: list[str] = field(default_factory=list)
    plans: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    identical: bool = False
    runs: int = 0
    seconds: float = 0.0
    kinds: list[str] = field(default_factory=list)  # KillPlan.kind of every kill that landed
    redrawn: int = 0  # first kill points the run finished before (redrawn on a fresh out dir)
    done: int | None = None  # the update of the checkpoint the next --resume starts from


def traceback_in(stderr: str) -> str | None:
    """The last lines of a Python traceback in ``stderr``, None without one."""
    if "Traceback (most recent call last)" not in stderr:
        return None
    return " | ".join(stderr.strip().splitlines()[-3:])


def run_reference(trainer: Trainer, data: Path, tdir: Path) -> Reference:
    """The uninterrupted reference run and its repeat."""
    cfg = tdir / "config.yaml"
    outs = {}
    for name in ("ref", "repeat"):
        out = tdir / name
        if out.exists():
            shutil.rmtree(out)
        r = run_hfasr(train_args(trainer, data, out, cfg))
        if r.rc != 0:
            raise SystemExit(f"{trainer.name}: the uninterrupted run failed ({r.rc}):\n{r.stderr[-3000:]}")
        outs[name] = (r, Outcome.of(out))
    run, outcome = outs["ref"]
    events = [(t, *key) for t, text in run.lines if (key := event_key(text)) is not None]
    problems = compare(outcome, outs["repeat"][1])
    return Reference(outcome, events, run.duration, not problems, problems)


def draw_plan(rng: random.Random, ref: Reference, done: int | None) -> KillPlan:
    """A random kill point for a run that resumes after update ``done`` (None: from scratch)."""
    later = [(i, e) for i, e in enumerate(ref.events) if done is None or e[2] > done]
    mode = rng.choices(("time", "line", "write", "inject"), weights=(0.2, 0.35, 0.15, 0.3))[0]
    if mode == "inject":  # at a checkpoint write (the k-th of this process), final.pt's or history's
        target = rng.choices(("checkpoint.pt", "final.pt", "history.jsonl"), weights=(0.7, 0.15, 0.15))[0]
        reports = len(ref.outcome.history) - (0 if done is None else done + 1)
        k = rng.randint(1, max(reports, 1)) if target == "checkpoint.pt" else 1
        how = "rename" if target == "history.jsonl" or rng.random() < 0.5 else "mid"
        return KillPlan(inject=f"{target}:{k}:{how}")
    if not later or mode == "time":
        return KillPlan(seconds=rng.uniform(0.0, ref.duration))
    i, (t, prefix, _) = rng.choice(later)
    if mode == "write":  # in the middle of the checkpoint write after that line, or of final.pt's
        delay = 0.0 if rng.random() < 0.5 else rng.uniform(0.0, 0.001)  # a small file's write is short
        if rng.random() < 0.25:
            return KillPlan(write="final.pt", delay=delay)
        return KillPlan(line=prefix, write="checkpoint.pt", delay=delay)
    if rng.random() < 0.5:  # right after the line: the checkpoint write after a report
        delay = rng.uniform(0.0, 0.05)
    else:
        nxt = ref.events[i + 1][0] if i + 1 < len(ref.events) else ref.duration
        delay = rng.uniform(0.0, max(nxt - t, 0.01))
    return KillPlan(line=prefix, delay=delay)


def run_trial(trainer: Trainer, data: Path, tdir: Path, ref: Reference, index: int, seed: int,
              max_kills: int = 3, attempts: int = 5) -> Trial:
    """One trial: 1..max_kills kill/resume cycles, a last ``--resume`` run, the comparison.

    The first kill is redrawn (on a fresh out dir, up to ``attempts`` times) when the run ended
    before it: every trial kills at least once. A later kill point the resumed run does not
    reach makes that run the last one (``end``)."""
    rng = random.Random(f"{seed}/{trainer.name}/{index}")
    trial = Trial(trainer.name, index)
    out = tdir / f"trial{index:02d}"
    cmd = train_args(trainer, data, out, tdir / "config.yaml")
    kills = rng.choices(range(1, max_kills + 1), weights=[0.5, 0.35, 0.15][:max_kills])[0]
    t0 = time.perf_counter()
    for _ in range(attempts):  # the first, fresh run: until a kill lands
        if out.exists():
            shutil.rmtree(out)
        killed, ok = _cycle(trial, cmd, draw_plan(rng, ref, None), out, 1)
        if killed or not ok:
            break
        trial.redrawn += 1
    else:
        trial.problems.append(f"no kill landed in {attempts} fresh runs")
    cycle = 1
    while ok and killed:
        cycle += 1
        plan = draw_plan(rng, ref, trial.done) if cycle <= kills else None
        killed, ok = _cycle(trial, cmd + ["--resume"], plan, out, cycle)
    trial.seconds = time.perf_counter() - t0
    got = Outcome.of(out)
    diffs = compare(ref.outcome, got)
    trial.identical = not diffs
    trial.problems += diffs[:12] + ([f"... {len(diffs) - 12} more differences"] if len(diffs) > 12 else [])
    trial.problems += file_problems(ref.outcome, got)
    return trial


def _cycle(trial: Trial, cmd: list[str], plan: KillPlan | None, out: Path, cycle: int) -> tuple[bool, bool]:
    """Run ``cmd`` once with ``plan``; record its kill point and problems in ``trial``.
    Returns (killed, ok): ok is False when the run failed on its own (non-zero exit)."""
    left = set(temp_files(out)) if out.is_dir() else set()  # by earlier kills (this run removes them)
    r = run_hfasr(cmd, plan, out_dir=out)
    trial.runs += 1
    tb = traceback_in(r.stderr)
    if tb:
        trial.problems.append(f"run {cycle}: traceback: {tb}")
    if r.killed:
        assert plan is not None
        seen = last_report(r.lines)
        tmp = [n for n in temp_files(out) if n not in left]  # this run's cut-off writes
        trial.kinds.append(plan.kind)
        trial.kill_points.append(("start" if seen is None else f"u{seen}") + ("*" if tmp else ""))
        trial.plans.append(plan.describe() + (f" (cut off: {', '.join(tmp)})" if tmp else ""))
        try:
            trial.done = checkpoint_update(out)
        except (RuntimeError, EOFError, OSError, KeyError, IndexError, pickle.UnpicklingError) as e:
            # a torn checkpoint is itself a finding
            trial.problems.append(f"kill {cycle}: checkpoint.pt unreadable: {type(e).__name__}: {e}")
        return True, True
    if plan is not None and cycle > 1:
        trial.kill_points.append("end")
        trial.plans.append(plan.describe() + " (not reached)")
    if r.rc != 0:
        trial.problems.append(f"run {cycle} exited {r.rc}: {' | '.join(r.stderr.strip().splitlines()[-2:])}")
        return False, False
    return False, True


def deal(trials: int, names: list[str]) -> dict[str, int]:
    """``trials`` dealt round-robin over ``names``."""
    return {n: trials // len(names) + (i < trials % len(names)) for i, n in enumerate(names)}


# ---------------------------------------------------------------------------------------- report
KIND_NAMES = {"time": "at a random time", "line": "after a random report / hf-update line",
              "write": "as a checkpoint / final.pt temporary file appeared",
              "inject": "in-process at a write"}


def table(trials: list[Trial], refs: dict[str, Reference], names: list[str]) -> str:
    """The markdown result table and the TOTAL line."""
    rows = [("| trainer | trials | bit-identical | clean (no traceback / error / stray file) | kill points "
            "(reports done at kill) | reference s | repeat identical |"),
            "|---|---:|---:|---:|---|---:|---|"]
    for name in names:
        ts = [t for t in trials if t.trainer == name]
        ok = sum(t.identical for t in ts)
        clean = sum(not t.problems for t in ts)
        points = "; ".join(",".join(t.kill_points) for t in ts)
        ref = refs[name]
        rows.append(f"| {name} | {len(ts)} | {ok}/{len(ts)} | {clean}/{len(ts)} | {points} | {ref.duration:.1f} | "
                    f"{'yes' if ref.repeat_identical else 'NO'} |")
    ok, clean, n = sum(t.identical for t in trials), sum(not t.problems for t in trials), len(trials)
    kills = sum(p not in ("end",) for t in trials for p in t.kill_points)
    cut = sum(p.endswith("*") for t in trials for p in t.kill_points)
    kinds = [k for t in trials for k in t.kinds]
    by_kind = ", ".join(f"{kinds.count(k)} {KIND_NAMES[k]}" for k in KIND_NAMES)
    rows += ["", (f"TOTAL {ok}/{n} bit-identical, {clean}/{n} clean; {kills} kills ({by_kind}); "
             f"{cut} cut a write off; {sum(t.runs for t in trials)} runs")]
    return "\n".join(rows)


def details(trials: list[Trial], refs: dict[str, Reference]) -> str:
    """Every failed trial (and non-deterministic reference) with its kill plans and problems."""
    out = []
    for name, ref in refs.items():
        if not ref.repeat_identical:
            out.append(f"- {name}: two uninterrupted runs differ: {'; '.join(ref.repeat_problems[:5])}")
    for t in trials:
        if t.problems or not t.identical:
            out.append(f"- {t.trainer} trial {t.index}: kills {', '.join(t.plans) or 'none'}")
            out += [f"  - {p}" for p in t.problems]
    return "\n".join(out)


LEGEND = ("Each trial: the training SIGKILL'ed at a random point, resumed with `--resume` (1-3 kill/resume "
          "cycles), then compared with an uninterrupted run: `final.pt` bit for bit, `history.jsonl` without "
          "`wall_s`; clean = no traceback, no failed run, the out dir's file names as the reference's. Kill "
          "points: `uN` = killed after the report of update N was printed (`u0`: the initial report), "
          "`start` = before the first report of that process, `*` = a write was cut off (a temporary file was "
          "left), `end` = the resumed run finished before the drawn point. `repeat identical`: a second "
          "uninterrupted run equals the reference (the training is deterministic).")


def plan_list(trials: list[Trial]) -> str:
    """Every trial's kill points as drawn (to reproduce or inspect one)."""
    return "\n".join(f"- {t.trainer} {t.index}: " + "; ".join(t.plans)
                     + (f" [{t.redrawn} first point(s) redrawn: the run ended first]" if t.redrawn else "")
                     for t in trials)


def machine() -> str:
    import torch

    cpu = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                if x.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    return (f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def git_rev() -> str:
    r = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                       text=True, check=False)
    return r.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="work dir (data built once, one dir per trainer)")
    p.add_argument("--trials", type=int, default=28, help="random kill/resume trials in all (dealt over the trainers)")
    p.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=list(TRAINERS))
    p.add_argument("--seed", type=int, default=0, help="seeds every trial's kill points")
    p.add_argument("--max-kills", type=int, default=3, choices=(1, 2, 3), help="kill/resume cycles per trial, at most")
    p.add_argument("--corpus-dir", type=Path, default=DEFAULT_CORPUS, help="waves_yesno dir")
    p.add_argument("--out", type=Path, help="markdown result (.md file, or a dir for faults.md); default WORK/faults.md")
    args = p.parse_args(argv)

    start = time.perf_counter()
    data = build_data(args.work, args.corpus_dir)
    refs: dict[str, Reference] = {}
    trials: list[Trial] = []
    counts = deal(args.trials, args.trainers)
    for name in args.trainers:
        trainer = TRAINERS[name]
        tdir = args.work / name
        tdir.mkdir(parents=True, exist_ok=True)
        write_yaml(tdir / "config.yaml", trainer.config)
        refs[name] = ref = run_reference(trainer, data, tdir)
        say(f"{name}: reference {ref.duration:.1f} s, {len(ref.outcome.history)} reports, repeat "
            f"{'identical' if ref.repeat_identical else 'DIFFERS'}")
        for i in range(counts[name]):
            t = run_trial(trainer, data, tdir, ref, i, args.seed, args.max_kills)
            trials.append(t)
            say(f"  trial {i}: kills {', '.join(t.kill_points)} -> {'identical' if t.identical else 'DIFFERENT'}"
                f"{'' if not t.problems else ' (' + str(len(t.problems)) + ' problems)'} [{t.seconds:.1f} s]")
            for prob in t.problems:
                say(f"    {prob}")
    result = table(trials, refs, args.trainers)
    more = details(trials, refs)
    say("\n" + result + ("\n\nfailures:\n" + more if more else ""))
    argv_str = " ".join(sys.argv[1:] if argv is None else argv)
    md = (f"# bench/faults.py — SIGKILL + `--resume` at random points\n\n"
          f"`python bench/faults.py {argv_str}`, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{time.perf_counter() - start:.0f} s; {machine()}; hfasr {git_rev()}.\n\n{LEGEND}\n\n{result}\n"
          + (f"\nFailures:\n\n{more}\n" if more else "")
          + f"\nKill points of every trial (times since the process start):\n\n{plan_list(trials)}\n")
    dest = args.out or args.work / "faults.md"
    if dest.suffix != ".md":
        dest = dest / "faults.md"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(md)
    say(f"wrote {dest}")
    ok = all(t.identical and not t.problems for t in trials)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
