"""Drivers: how the parameters move. They know no speech.

A driver trains a :class:`~hfasr.train.task.Task`'s model in *stretches* between two reports:
:meth:`Driver.advance` runs one stretch and returns its statistics; the experiment then
evaluates the dev set, hands the dev objective back (:meth:`Driver.end_report`: a learning-rate
schedule may reject the stretch and undo it), logs, and checkpoints ``state_dict()``.

- :class:`HFDriver`: ``hf.updates_per_report`` updates of :class:`hfasr.optim.HessianFree`
  per stretch over the task's :class:`~hfasr.optim.BatchObjective` (a held-out
  ``heldout_fraction`` of the training examples for ρ / backtracking / line search, optional
  successive subsets); runs distributed when a process group is up.
- :class:`FirstOrderDriver`: ``torch.optim`` SGD or Adam on the task's shuffled minibatches,
  ``reports_per_epoch`` stretches per epoch, a constant / cosine / newbob learning rate.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import nn
from tqdm import tqdm

from hfasr.config import bounded, check_ranges, limits, ordered, require
from hfasr.errors import ConfigError, HfasrError
from hfasr.optim import HessianFree, HFConfig, make_objective
from hfasr.train.schedule import NewBobConfig, make_schedule

HELDOUT_SEED_OFFSET = 7  # the held-out split is drawn with seed + 7 (every task, every driver)


class TrainingError(HfasrError):
    """Training diverged (non-finite loss) or cannot continue; the last checkpoint is intact."""


# ---------------------------------------------------------------------------------------- configs
@dataclass
class HFTrainConfig:
    """The ``hf:`` section: Hessian-free training (``optimizer: hf``)."""

    updates: int = bounded(20, ge=1)  # HF updates in all
    updates_per_report: int = bounded(1, ge=1)  # HF updates between dev reports / checkpoints
    heldout_fraction: float = bounded(0.1, ge=0, lt=1)  # training examples kept out of the gradient for ρ / backtracking / line search
    # where ρ / backtracking / line search are measured: "train" = the heldout_fraction above;
    # "dev" = the task's dev set (speakers unseen in training; sequence tasks), all of the
    # training set then feeds the gradient
    heldout_data: Literal["train", "dev"] = "train"
    curvature_fraction: float = bounded(0.1, gt=0, le=1)  # examples of the gradient set sampled per update for G v products
    curvature_min: int = bounded(8, ge=1)  # at least this many examples in the curvature sample
    # > 0: at most this many frames (summed example sizes) in the curvature sample: its G v
    # linearizations stay in memory through CG, so without a cap they grow with the corpus
    curvature_max_frames: int = bounded(0, ge=0)
    # > 1: HF on successive subsets (update k: gradient and curvature of subset k mod K); reuse
    # across subsets: optimizer.gradient_reuse (none | sag | dynamic | saga | decay), reuse_decay,
    # reuse_warm_start, reuse_damping
    num_subsets: int = bounded(1, ge=1)
    optimizer: HFConfig = field(default_factory=HFConfig)

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class FirstOrderConfig:
    """A first-order section (``sgd:`` / ``adam:``): ``torch.optim`` on shuffled minibatches."""

    lr: float = bounded(1e-3, gt=0)  # learning rate
    epochs: int = bounded(20, ge=1)  # maximum number of epochs (newbob may stop earlier)
    reports_per_epoch: int = bounded(1, ge=1)  # dev reports (history lines, checkpoints) per epoch
    lr_schedule: Literal["newbob", "cosine", "constant"] = "constant"
    min_lr: float = bounded(0.0, ge=0)  # cosine: learning rate reached after the last epoch
    newbob: NewBobConfig = field(default_factory=NewBobConfig)
    momentum: float = bounded(0.9, ge=0, lt=1)  # sgd
    nesterov: bool = False  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata=limits(ge=0, lt=1, each=True))  # adam
    weight_decay: float = bounded(0.0, ge=0)  # L2 penalty added to the gradient (torch SGD / Adam weight_decay)
    max_grad_norm: float = bounded(0.0, ge=0)  # clip the gradient norm per minibatch; 0 = no clipping
    loss: Literal["mean", "sum"] = "mean"  # minibatch loss: mean per count (frame, utterance) or sum

    def __post_init__(self) -> None:
        check_ranges(self)
        require(self, len(self.betas) == 2, "{0} must have two values", "betas")
        if self.loss not in ("mean", "sum"):
            raise ValueError(f"loss must be 'mean' or 'sum', got {self.loss!r}")
        require(self, self.lr_schedule != "newbob" or self.reports_per_epoch == 1,
                "{0} newbob decides per epoch: it needs {1} 1", "lr_schedule", "reports_per_epoch")
        require(self, not self.nesterov or self.momentum > 0, "{0} needs {1} > 0", "nesterov", "momentum")
        if self.lr_schedule == "cosine":
            ordered(self, "min_lr", "lr")


# ---------------------------------------------------------------------------------------- protocol
class Driver(Protocol):
    finished: bool
    update: int  # reports so far (HF: updates)

    def advance(self) -> dict[str, Any]:
        """Train until the next report; returns that stretch's statistics."""
        ...

    def end_report(self, dev_obj: float) -> dict[str, Any]:
        """The dev objective after the stretch (schedules decide here); extra record fields."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# ---------------------------------------------------------------------------------------- HF
class HFDriver:
    """Hessian-free updates over the task's objective (module docstring)."""

    def __init__(self, task, cfg: HFTrainConfig, seed: int, log_line=print) -> None:
        self.task, self.cfg, self.log_line = task, cfg, log_line
        model: nn.Module = task.model
        heldout = None
        if cfg.heldout_data == "dev":
            heldout = getattr(task, "dev_data", None)
            if heldout is None:
                raise ConfigError(f"hf.heldout_data: dev is not supported by the {type(task).__name__}")
        try:
            self.objective = make_objective(
                model, task.criterion, task.train_data, heldout_fraction=cfg.heldout_fraction, heldout=heldout,
                num_subsets=cfg.num_subsets, seed=seed + HELDOUT_SEED_OFFSET,
                curvature_fraction=cfg.curvature_fraction, curvature_min=cfg.curvature_min,
                curvature_max_frames=cfg.curvature_max_frames,
                structural=task.structural and cfg.optimizer.structural_damping > 0)
        except ValueError as e:
            raise ConfigError(f"hf: {e}") from e
        self.opt = HessianFree([p for p in model.parameters() if p.requires_grad], cfg.optimizer)
        self.update = 0
        self.finished = self.update >= cfg.updates

    def advance(self) -> dict[str, Any]:
        last = None
        for _ in range(min(self.cfg.updates_per_report, self.cfg.updates - self.opt.updates)):
            try:
                last = self.opt.step(self.objective)
            except FloatingPointError as e:
                where = "" if str(e).startswith("HF update") else f"HF update {self.opt.updates + 1}: "
                raise TrainingError(f"{where}{e} (the last checkpoint is intact)") from e
            self.log_line(last.line())
            if last.loss_after is not None and not math.isfinite(last.loss_after):
                raise TrainingError(f"non-finite training loss after HF update {last.update} "
                                    "(the last checkpoint is intact)")
        self.update = self.opt.updates
        self.finished = self.opt.updates >= self.cfg.updates
        assert last is not None
        return {"train_obj": last.loss_after, "heldout_obj": last.heldout_after, "damping": last.damping_after,
                "cg_iters": last.cg_iters, "rho": last.rho if math.isfinite(last.rho) else None,
                "gv_products": sum(h.products for h in self.opt.history)}

    def end_report(self, dev_obj: float) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.update = self.opt.updates
        self.finished = self.opt.updates >= self.cfg.updates


# ---------------------------------------------------------------------------------------- first order
class FirstOrderDriver:
    """``torch.optim`` SGD / Adam on the task's minibatches (module docstring).

    The data order comes from one generator (seeded with ``seed``, checkpointed with its state
    at the start of the current epoch), so a run resumed from a checkpoint taken in the middle
    of an epoch sees the same minibatches as one that was never stopped.
    """

    def __init__(self, task, cfg: FirstOrderConfig, optimizer: str, seed: int, progress: bool = True) -> None:
        self.task, self.cfg, self.progress = task, cfg, progress
        self.params = [p for p in task.model.parameters() if p.requires_grad]
        if optimizer == "sgd":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(self.params, lr=cfg.lr, momentum=cfg.momentum,
                                                              nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        elif optimizer == "adam":
            self.opt = torch.optim.Adam(self.params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        else:
            raise ConfigError(f"unknown first-order optimizer '{optimizer}' (known: sgd, adam)")
        self.name = optimizer
        self.schedule = make_schedule(cfg.lr_schedule, cfg.lr, cfg.epochs, cfg.min_lr, cfg.newbob)
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch_state = self.generator.get_state()  # the generator at the start of this epoch
        self.epoch, self.batch, self.update = 0, 0, 0
        self.stopped = False  # the schedule said stop
        self.finished = False
        self.started = False  # schedule.start() called (with the initial dev objective)
        self._plan: list | None = None
        self._snapshot: tuple[dict, dict] | None = None

    def start(self, dev_obj: float) -> None:
        """The initial dev objective (the newbob schedule's reference)."""
        self.schedule.start(dev_obj)
        self.started = True

    def _epoch_plan(self) -> list:
        if self._plan is None:
            self.generator.set_state(self.epoch_state)
            self._plan = list(self.task.minibatches(self.generator))
        return self._plan

    def advance(self) -> dict[str, Any]:
        cfg, task = self.cfg, self.task
        plan = self._epoch_plan()
        n = len(plan)
        marks = sorted({max(1, round(n * (k + 1) / cfg.reports_per_epoch)) for k in range(cfg.reports_per_epoch)})
        stop = next(m for m in marks if m > self.batch)
        lr = self.schedule.lr
        if self.batch == 0 and self.schedule.can_reject:
            self._snapshot = (copy.deepcopy(task.model.state_dict()), copy.deepcopy(self.opt.state_dict()))
        for g in self.opt.param_groups:
            g["lr"] = lr
        task.model.train()
        total, count = 0.0, 0
        bar = tqdm(total=n, initial=self.batch, desc=f"{self.name} epoch {self.epoch + 1}", unit="batch",
                   leave=False, disable=not self.progress)
        while self.batch < stop:
            batch = task.train_data.batch(plan[self.batch])
            loss_sum = task.criterion.loss(task.model(*batch.inputs), batch)
            loss = loss_sum / max(batch.count, 1) if cfg.loss == "mean" else loss_sum
            if not torch.isfinite(loss):
                names = getattr(batch, "names", None) or task.example_names(plan[self.batch])
                where = f" (utterances {', '.join(names[:5])}{' ...' if len(names) > 5 else ''})" if names else ""
                raise TrainingError(f"non-finite training loss ({float(loss.detach())}) in epoch {self.epoch + 1}, "
                                    f"minibatch {self.batch + 1}{where}; lower the learning rate "
                                    "(the last checkpoint is intact)")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            self.opt.step()
            total += float(loss_sum.detach())
            count += batch.count
            self.batch += 1
            bar.update(1)
            if self.batch % 20 == 0:
                bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
        bar.close()
        self.update += 1
        done = self.batch == n
        rec = {"lr": lr, "train_obj": total / max(count, 1),
               "epoch": self.epoch + (1.0 if done else self.batch / n)}
        if done:
            self.epoch += 1
            self.batch = 0
            self._plan = None
            self.epoch_state = self.generator.get_state()
        return rec

    def end_report(self, dev_obj: float) -> dict[str, Any]:
        if self.batch != 0:  # mid-epoch report: the schedule decides at the end of the epoch
            return {}
        decision = self.schedule.step(self.epoch, dev_obj)
        if not decision.accept and self._snapshot is not None:
            self.task.model.load_state_dict(self._snapshot[0])
            self.opt.load_state_dict(self._snapshot[1])
        self._snapshot = None
        self.stopped = decision.stop
        self.finished = self.stopped or self.epoch >= self.cfg.epochs
        return {"accepted": decision.accept}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict(), "schedule": self.schedule.state_dict(),
                "generator": self.generator.get_state(), "epoch_generator": self.epoch_state,
                "epoch": self.epoch, "batch": self.batch, "update": self.update, "stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])
        self.epoch_state = state["epoch_generator"]
        self.epoch, self.batch, self.update = int(state["epoch"]), int(state["batch"]), int(state["update"])
        self.started = True
        self._plan = None
        self.stopped = bool(state["stopped"])  # by the schedule (newbob); more epochs may be asked for
        self.finished = self.stopped or self.epoch >= self.cfg.epochs
