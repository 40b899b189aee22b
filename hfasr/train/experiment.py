"""The experiment driver of ``hfasr train``: everything a training run does besides training.

:func:`run_experiment` owns, once for every task and driver:

- the out dir: one writer per experiment (:class:`hfasr.fileio.DirLock`, held by rank 0 for the
  whole run: a second run on the same ``--out`` fails at once naming the holder's PID and host);
  refuses to overwrite a run (``checkpoint.pt``) without ``--resume``; writes the resolved
  ``config.yaml`` and the task's files (``prior.pt``, ``tokens.txt``), each atomically;
  ``history.jsonl`` and ``train.log`` grow by whole appended lines;
- distributed init (``torchrun``: WORLD_SIZE / RANK / LOCAL_RANK; gloo on CPU, nccl with
  ``device: cuda``, each rank on ``cuda:LOCAL_RANK``); only rank 0 writes files and logs;
- the report loop: after the initial model and after every stretch of the driver, the task's
  dev evaluation becomes one :data:`history.jsonl <Record>` line (the one record type
  ``hfasr report`` reads) and one ``report ...`` line on stdout and in ``train.log``; every HF
  update is logged once (its ``hf-update`` line);
- checkpoints: ``checkpoint.pt`` written atomically after every report with everything needed
  to resume exactly (model, driver, task state, history, training wall time), loaded with
  ``torch.load(weights_only=True)`` only, and refused when the config differs in a key that
  its class does not declare resumable (``RESUMABLE``);
- errors: a non-finite loss or dev objective stops with ``error:`` naming the update or
  minibatch (and its utterances where known); the last checkpoint stays intact;
- ``final.pt``: the model of the last accepted report, with the task's decoding metadata;
- TensorBoard (optional, ``hfasr train --tensorboard DIR``; needs the ``tensorboard`` package):
  rank 0 also writes every numeric field of each record as a scalar (:data:`TB_TAGS`) at step
  ``update`` (the x of ``hfasr report``) with walltime = the run's start + ``wall_s``, flushed at
  every report; a resumed run continues the same DIR (``purge_step``: no duplicate steps).

``wall_s`` in the history counts training time only (the driver's stretches and the task's
between-report work such as lattice regeneration), not the dev reports.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from hfasr.errors import ConfigError, DataError, HfasrError
from hfasr.fileio import DirLock, LockError, append_line, write_text
from hfasr.optim.distributed import rank as dist_rank
from hfasr.optim.distributed import world_size
from hfasr.train.drivers import FirstOrderDriver, HFDriver, TrainingError

log = logging.getLogger(__name__)

# The fields of a history.jsonl record, in this order (absent ones are left out): the run's
# labels; update (reports so far; HF: updates), epoch (first-order, fractional mid-epoch), note;
# lr; train_obj / heldout_obj (the stretch's mean training loss, or HF's losses after the step);
# dev_obj (the task's dev objective: per frame, or as normalised in training), dev_acc, dev_wer,
# dev_ter; HF's damping, cg_iters, rho, gv_products; accepted (schedule); wall_s (training only).
RECORD_KEYS = ("run", "criterion", "optimizer", "model", "update", "epoch", "note", "lr", "train_obj",
               "heldout_obj", "dev_obj", "dev_acc", "dev_wer", "dev_ter", "damping", "cg_iters", "rho", "gv_products",
               "accepted", "wall_s")

# ``--tensorboard``: the scalar tag of each numeric history.jsonl field (step: the record's update)
TB_TAGS = {"epoch": "train/epoch", "lr": "train/lr", "train_obj": "train/obj", "heldout_obj": "heldout/obj",
           "dev_obj": "dev/obj", "dev_acc": "dev/acc", "dev_wer": "dev/wer", "dev_ter": "dev/ter",
           "damping": "hf/damping", "cg_iters": "hf/cg_iters", "rho": "hf/rho", "gv_products": "hf/gv_products",
           "accepted": "train/accepted", "wall_s": "train/wall_s"}

# the TensorBoard dir of the runs started by :func:`run_experiment` inside :func:`tensorboard_logging`
_TENSORBOARD_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("hfasr_tensorboard_dir",
                                                                              default=None)


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or a :class:`ConfigError` if the optional
    ``tensorboard`` package is missing (``--tensorboard`` checks it before training starts)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError(f"--tensorboard needs the tensorboard package ({e}): pip install "
                          "'hfasr[tensorboard]'") from None
    return SummaryWriter


@contextlib.contextmanager
def tensorboard_logging(tb_dir: str | Path | None):
    """Within this block :func:`run_experiment` also logs the curves to TensorBoard in ``tb_dir``
    (None: not). A run option, not part of the config: ``--resume`` works with or without it."""
    if tb_dir is not None:
        summary_writer_class()
    token = _TENSORBOARD_DIR.set(None if tb_dir is None else Path(tb_dir))
    try:
        yield
    finally:
        _TENSORBOARD_DIR.reset(token)


# ---------------------------------------------------------------------------------------- config view
def flat_config(cfg: Any) -> dict[str, Any]:
    """The config as ``{"section.key": value}`` (as read from YAML)."""
    from hfasr.config import _plain

    out: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[prefix + k] = v

    walk(_plain(cfg), "")
    return out


def resume_view(cfg: Any) -> dict[str, Any]:
    """The keys compared on ``--resume``: all but ``cfg.RESUMABLE`` (keys or sections that may
    change) and the sections the run does not read (``cfg.unused_sections()``)."""
    skip = tuple(getattr(cfg, "RESUMABLE", ())) + tuple(cfg.unused_sections())
    return {k: v for k, v in flat_config(cfg).items() if not any(k == s or k.startswith(s + ".") for s in skip)}


# ---------------------------------------------------------------------------------------- distributed
def init_distributed(device: str) -> bool:
    """Join the ``torchrun`` process group (gloo; nccl for a CUDA device); True if created here."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def _barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


# ---------------------------------------------------------------------------------------- experiment
class Experiment:
    """One training run in ``out_dir`` (module docstring). ``cfg`` needs ``criterion``,
    ``optimizer``, ``seed``, ``num_threads``, ``device``, an ``hf`` section, ``first_order()``,
    ``RESUMABLE`` and ``unused_sections()``. ``tensorboard_dir``: also write the curves there
    (:meth:`tb_open`); the ``tensorboard`` package is checked here, on every rank."""

    def __init__(self, cfg: Any, out_dir: str | Path, resume: bool = False, progress: bool = True,
                 tensorboard_dir: str | Path | None = None) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.ckpt = self.out / "checkpoint.pt"
        self.rank, self.world = dist_rank(), world_size()
        self.progress = progress and self.rank == 0
        if self.ckpt.is_file() and not resume:
            raise HfasrError(f"{self.out} already holds a training run (checkpoint.pt): pass --resume to continue "
                             "it, or choose another --out")
        self.resume = resume and self.ckpt.is_file()
        self.tensorboard_dir = None if tensorboard_dir is None else Path(tensorboard_dir)
        self._tb: Any = None  # the SummaryWriter (rank 0, while open)
        self._tb_base = 0.0  # the walltime of wall_s 0
        if self.tensorboard_dir is not None:
            summary_writer_class()
        _barrier()  # every rank has checked before rank 0 writes anything
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"device '{cfg.device}' requested but CUDA is not available")
            if self.world > 1 and self.device.index is None:
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if self.world > 1 and cfg.optimizer != "hf":
            raise ConfigError(f"distributed training ({self.world} processes) supports optimizer hf only, "
                              f"not '{cfg.optimizer}'")
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        self.history: list[dict[str, Any]] = []
        self.wall = 0.0

    # --- output ---------------------------------------------------------------------------------
    def log_line(self, text: str) -> None:
        """One line to stdout (above any progress bar) and to ``train.log`` (rank 0 only)."""
        if self.rank != 0:
            return
        tqdm.write(text)
        append_line(self.out / "train.log", text)

    def _write_history(self, mode: str, records: list[dict[str, Any]]) -> None:
        """``history.jsonl``: ``"w"`` replaces it atomically with ``records``; ``"a"`` appends
        them, one ``write`` per line (a kill leaves whole lines, at worst a torn last one that
        readers skip and a resumed run rewrites from its checkpoint)."""
        if self.rank != 0:
            return
        path = self.out / "history.jsonl"
        if mode == "w":
            write_text(path, "".join(json.dumps(r) + "\n" for r in records))
        else:
            for r in records:
                append_line(path, json.dumps(r))

    def tb_open(self) -> None:
        """Open the TensorBoard writer (rank 0, with ``tensorboard_dir``; no-op if open). Event
        walltimes are ``base + wall_s``, base = the run's start: now for a new run; on a resumed
        run, read back from the dir's events (else now - the training time so far). A resumed
        run writes from the step after its checkpoint's (``purge_step``: TensorBoard drops the
        points that a killed run wrote after it); a dir without events gets the whole history;
        a new run in a dir with events hides them all (``purge_step=0``)."""
        if self.tensorboard_dir is None or self.rank != 0 or self._tb is not None:
            return
        writer_cls = summary_writer_class()
        d = self.tensorboard_dir
        has_events = d.is_dir() and any(p.is_file() for p in d.glob("events.out.tfevents.*"))
        base = time.time() - self.wall
        if has_events and self.history:
            base = self._tb_read_base(d, base)
        self._tb_base = base
        purge = (self.history[-1]["update"] + 1 if self.history else 0) if has_events else None
        try:
            self._tb = writer_cls(str(d), purge_step=purge)
        except OSError as e:
            raise HfasrError(f"--tensorboard {d}: cannot create the dir or its event file: {e.strerror or e}") \
                from None
        if not has_events:
            for rec in self.history:
                self._tb_write(rec)
            self._tb.flush()

    def _tb_read_base(self, d: Path, default: float) -> float:
        """The run's start as the earlier events of ``d`` give it: walltime - wall_s at a step of
        the resumed history (``default`` if none matches)."""
        from google.protobuf.message import DecodeError
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        walls = {h["update"]: h["wall_s"] for h in self.history}
        try:
            acc = EventAccumulator(str(d), size_guidance={"scalars": 0})
            acc.Reload()
            events = acc.Scalars(TB_TAGS["dev_obj"]) if TB_TAGS["dev_obj"] in acc.Tags()["scalars"] else []
        except (OSError, ValueError, KeyError, RuntimeError, DecodeError) as e:
            # unreadable events: the new points still come, on the current clock
            log.warning("%s: cannot read the earlier TensorBoard events (%s); walltimes restart from now", d, e)
            return default
        for ev in events:
            if ev.step in walls:
                return ev.wall_time - walls[ev.step]
        return default

    def _tb_write(self, rec: dict[str, Any]) -> None:
        walltime = self._tb_base + float(rec.get("wall_s", 0.0))
        for key, tag in TB_TAGS.items():
            v = rec.get(key)
            if isinstance(v, (bool, int, float)):
                self._tb.add_scalar(tag, float(v), global_step=int(rec["update"]), walltime=walltime)

    def close(self) -> None:
        """Close the TensorBoard writer if open (at the end of a run, and on an error)."""
        if self._tb is not None:
            tb, self._tb = self._tb, None
            tb.close()

    def write_config(self) -> None:
        """The resolved config as ``config.yaml``, atomically (rank 0)."""
        import yaml

        from hfasr.config import _plain

        if self.rank == 0:
            write_text(self.out / "config.yaml", yaml.safe_dump(_plain(self.cfg), sort_keys=False))

    # --- the loop -------------------------------------------------------------------------------
    def make_driver(self, task) -> Any:
        cfg = self.cfg
        if cfg.optimizer == "hf":
            return HFDriver(task, cfg.hf, cfg.seed, log_line=self.log_line)
        return FirstOrderDriver(task, cfg.first_order(), cfg.optimizer, cfg.seed, progress=self.progress)

    def run(self, task, max_wall: float | None = None, driver: Any = None) -> Any:
        """Train ``task`` with the configured driver, or continue with ``driver`` (one that an
        earlier call returned); stops early, at a report, once the training wall time reaches
        ``max_wall`` seconds. Returns the driver. An error closes the TensorBoard writer."""
        try:
            return self._run(task, max_wall, driver)
        except BaseException:
            self.close()
            raise

    def _run(self, task, max_wall: float | None, driver: Any) -> Any:
        if driver is not None:
            self.tb_open()
            return self._loop(task, driver, max_wall)
        driver = self.make_driver(task)
        if self.resume:
            self.load_checkpoint(task, driver)
            self.log_line(f"# resumed from {self.ckpt} at update {driver.update}")
        self.tb_open()
        if self.rank == 0:
            self.write_config()
            task.write_files(self.out)
        if not self.history:
            self._write_history("w", [])
            self.log_line(f"# {task.run_name}: {task.summary()}, "
                          f"{sum(p.numel() for p in task.net.parameters())} parameters")
            rec = self.report(task, driver, {"note": "init"}, initial=True)
            if isinstance(driver, FirstOrderDriver):
                driver.start(rec["dev_obj"])
            self.save_checkpoint(task, driver)
        return self._loop(task, driver, max_wall)

    def _loop(self, task, driver, max_wall: float | None) -> Any:
        while not driver.finished and (max_wall is None or self.wall < max_wall):
            _barrier()  # start together: a rank still in its dev report would count as our time
            t0 = time.perf_counter()
            stats = driver.advance()
            self.wall += time.perf_counter() - t0
            self.report(task, driver, stats)
            t0 = time.perf_counter()
            task.after_report(driver.update, driver.finished, self.log_line)
            self.wall += time.perf_counter() - t0
            self.save_checkpoint(task, driver)
        return driver

    def report(self, task, driver, stats: dict[str, Any], initial: bool = False) -> dict[str, Any]:
        ev = task.evaluate()
        if not math.isfinite(ev["dev_obj"]):
            raise TrainingError(f"non-finite dev objective at update {driver.update} (the model diverged: "
                                "lower the learning rate or raise the damping; the last checkpoint is intact)")
        extra = {} if initial else driver.end_report(ev["dev_obj"])
        rec = {"run": task.run_name, "criterion": self.cfg.criterion, "optimizer": self.cfg.optimizer,
               "model": task.model_name, "update": driver.update, "wall_s": round(self.wall, 3), **stats, **ev,
               **extra}
        rec = {k: rec[k] for k in RECORD_KEYS if rec.get(k) is not None}
        self.history.append(rec)
        self._write_history("a", [rec])
        if self._tb is not None:
            self._tb_write(rec)
            self._tb.flush()
        parts = " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()
                         if k not in ("run", "criterion", "optimizer", "model"))
        self.log_line(f"report {task.run_name} {parts}")
        if getattr(self.cfg, "keep_models", False) and self.rank == 0:
            from hfasr.models import save_model

            # every report's model, to choose the number of updates on dev afterwards; with
            # final.pt's metadata, so that any of them decodes or starts another run (--init)
            save_model(self.out / "models" / f"{driver.update}.pt", task.net, update=driver.update,
                       criterion=self.cfg.criterion, optimizer=self.cfg.optimizer, **task.final_info())
        return rec

    # --- checkpoints ----------------------------------------------------------------------------
    def state_dict(self, task, driver) -> dict[str, Any]:
        model = task.net
        return {"model_config": dict(model.model_config), "state_dict": model.state_dict(),
                "driver": driver.state_dict(), "task": task.state_dict(), "history": list(self.history),
                "wall": self.wall, "torch_rng": torch.get_rng_state(), "config": resume_view(self.cfg)}

    def save_checkpoint(self, task, driver) -> None:
        from hfasr.models import atomic_save

        if self.rank == 0:
            atomic_save(self.state_dict(task, driver), self.ckpt)

    def load_checkpoint(self, task, driver) -> None:
        """Restore everything from ``checkpoint.pt`` (``weights_only=True``: a file holding
        pickled code is refused, nothing in it runs)."""
        from hfasr.models import load_checkpoint

        st = load_checkpoint(self.ckpt)
        if "driver" not in st or not isinstance(st.get("config"), dict):
            raise DataError(f"{self.ckpt}: not a training checkpoint of this hfasr version (no driver state); "
                            "use another --out")
        old, new = st["config"], resume_view(self.cfg)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            detail = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
            allowed = ", ".join(getattr(self.cfg, "RESUMABLE", ()))
            raise ConfigError(f"{self.ckpt} was written with a different config ({detail}); only {allowed} may "
                              "change on --resume (or use another --out)")
        try:
            task.net.load_state_dict(st["state_dict"])
            driver.load_state_dict(st["driver"])
            task.load_state_dict(st["task"])
            self.history = [dict(h) for h in st["history"]]
            self.wall = float(st["wall"])
            torch.set_rng_state(st["torch_rng"])
        except HfasrError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
            # loaded safely (weights_only) but not the state of this run: a damaged or foreign file
            raise DataError(f"{self.ckpt}: not a valid training checkpoint of this run ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''}); use another --out") from e
        # history.jsonl may hold lines written after the checkpoint: rewrite it from the state
        self._write_history("w", self.history)

    # --- the end --------------------------------------------------------------------------------
    def final_record(self) -> dict[str, Any]:
        """The report whose model ``final.pt`` holds: the last accepted one, or with
        ``cfg.select`` = ``"dev_wer"`` / ``"dev_obj"`` the accepted one with the lowest dev WER /
        dev objective (the earliest of equals; the initial report counts)."""
        accepted = [h for h in self.history if h.get("accepted", True)] or self.history[-1:]
        key = getattr(self.cfg, "select", "last")
        if key in ("dev_wer", "dev_obj"):
            scored = [h for h in accepted if h.get(key) is not None]
            if scored:
                return min(scored, key=lambda h: (h[key], h["update"]))
        return accepted[-1]

    def save_final(self, task) -> Path:
        from hfasr.models import load_checkpoint, save_model

        last = self.final_record()
        select = getattr(self.cfg, "select", "last")
        if select != "last" and last is not self.history[-1]:  # the chosen report's kept model
            kept = self.out / "models" / f"{last['update']}.pt"
            task.net.load_state_dict(load_checkpoint(kept)["state_dict"])
            self.log_line(f"# select {select}: final.pt is update {last['update']} ({kept})")
        path = self.out / "final.pt"
        if self.rank == 0:
            info = {k: last[k] for k in ("update", "epoch", "dev_obj", "dev_acc", "dev_wer") if k in last}
            save_model(path, task.net, criterion=self.cfg.criterion, optimizer=self.cfg.optimizer,
                       **info, **task.final_info())
        metrics = " ".join(f"{k}={last[k]:.6g}" for k in ("dev_obj", "dev_acc", "dev_wer") if k in last)
        self.log_line(f"# final.pt: update {last['update']} {metrics} wall_s={self.wall:.1f}")
        self.close()
        return path


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove the temporary files that killed runs left in ``out`` and ``out/models``
    (:func:`hfasr.fileio.remove_dead_temporaries`; call it holding the dir's lock)."""
    from hfasr.fileio import remove_dead_temporaries

    removed = remove_dead_temporaries(out) + remove_dead_temporaries(out / "models")
    if removed:
        log.info("removed %d temporary file(s) of killed runs in %s", len(removed), out)
    return removed


def lock_out_dir(lock: DirLock) -> None:
    """One writer per experiment: rank 0 (the only rank that writes) takes the out dir's lock for
    the whole run and removes the temporaries of killed runs; a second run on the same ``--out``
    fails at once naming the holder. Under ``torchrun`` the outcome is broadcast, so that every
    rank of a refused job stops with the same error (none waits at a barrier)."""
    err: str | None = None
    if dist_rank() == 0:
        try:
            lock.acquire()
            remove_stale_temporaries(lock.dir)
        except LockError as e:
            err = str(e)
        except OSError as e:
            err = f"{lock.dir}: cannot create or lock the experiment dir: {e.strerror or e}"
    if world_size() > 1:
        box = [err]
        torch.distributed.broadcast_object_list(box, src=0)
        err = box[0]
    if err is not None:
        raise LockError(err)


def run_experiment(cfg: Any, build_task: Callable[[Experiment], Any], out_dir: str | Path, resume: bool = False,
                   progress: bool = True, tensorboard_dir: str | Path | None = None) -> Experiment:
    """``hfasr train``: join the process group if launched by ``torchrun``, build the task
    (``build_task(experiment)`` loads data and the model), train, write ``final.pt``. Returns
    the experiment (``.history``, ``.wall``, ``.task``). ``tensorboard_dir`` (default: that of
    the enclosing :func:`tensorboard_logging` block): also log the curves there."""
    if tensorboard_dir is None:
        tensorboard_dir = _TENSORBOARD_DIR.get()
    created = init_distributed(cfg.device)
    lock = DirLock(out_dir, f"hfasr train --criterion {cfg.criterion} --optimizer {cfg.optimizer}")
    exp = None
    try:
        lock_out_dir(lock)
        exp = Experiment(cfg, out_dir, resume, progress, tensorboard_dir=tensorboard_dir)
        exp.task = build_task(exp)
        exp.driver = exp.run(exp.task)
        exp.save_final(exp.task)
        return exp
    finally:
        if exp is not None:
            exp.close()
        lock.release()
        if created:
            torch.distributed.destroy_process_group()
