"""Per-epoch learning-rate schedules, driven by the dev loss.

After every epoch the trainer calls ``schedule.step(epoch, dev_loss)``, which returns a
:class:`Decision`: whether to keep the epoch's model (``accept``; a rejected epoch is undone,
model and optimizer state restored) and whether to stop. ``schedule.lr`` is the learning rate
of the next epoch. Schedules are plain state machines with ``state_dict`` for exact resumption.

- ``constant``: ``lr`` throughout; every epoch accepted.
- ``cosine``: ``min_lr + (lr − min_lr)·(1 + cos(π·(e − 1)/E))/2`` for epoch e of E; every epoch
  accepted.
- ``newbob`` (Kaldi nnet1 ``train_scheduler.sh``): keep ``lr`` while the relative dev-loss
  improvement is ≥ ``start_halving_impr``; from then on halve it every epoch and stop once an
  epoch improves by < ``end_halving_impr``. With ``keep_best``, an epoch whose dev loss is not
  lower than the best so far is rejected (its improvement counts as 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from hfasr.config import bounded, check_ranges


@dataclass
class NewBobConfig:
    """Options of the ``newbob`` schedule (the ``newbob:`` section; Kaldi nnet1 defaults)."""

    start_halving_impr: float = bounded(0.01, ge=0)  # start halving once the relative dev-loss improvement is below this
    end_halving_impr: float = bounded(0.001, ge=0)  # while halving, stop once it is below this
    halving_factor: float = bounded(0.5, gt=0, le=1)  # lr ← lr·factor per epoch while halving
    keep_best: bool = True  # reject (undo) an epoch that does not lower the dev loss
    keep_lr_epochs: int = bounded(0, ge=0)  # first epochs always accepted, never halved
    min_epochs: int = bounded(0, ge=0)  # never stop before this many epochs

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class Decision:
    accept: bool
    stop: bool


class Schedule(Protocol):
    lr: float
    can_reject: bool  # whether step() may reject an epoch (the trainer then snapshots before it)

    def start(self, dev_loss: float) -> None:
        """Dev loss of the initial model (before epoch 1)."""
        ...

    def step(self, epoch: int, dev_loss: float) -> Decision: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class _Stateful:
    _state_keys: tuple[str, ...] = ()
    can_reject = False

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._state_keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self._state_keys:
            setattr(self, k, state[k])


class ConstantSchedule(_Stateful):
    _state_keys = ("lr",)

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def start(self, dev_loss: float) -> None:
        pass

    def step(self, epoch: int, dev_loss: float) -> Decision:
        return Decision(accept=True, stop=False)


class CosineSchedule(_Stateful):
    _state_keys = ("lr",)

    def __init__(self, lr: float, epochs: int, min_lr: float = 0.0) -> None:
        self.base_lr, self.epochs, self.min_lr = lr, max(epochs, 1), min_lr
        self.lr = self._at(1)

    def _at(self, epoch: int) -> float:
        frac = (epoch - 1) / self.epochs
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * frac))

    def start(self, dev_loss: float) -> None:
        pass

    def step(self, epoch: int, dev_loss: float) -> Decision:
        self.lr = self._at(epoch + 1)
        return Decision(accept=True, stop=False)


class NewBobSchedule(_Stateful):
    _state_keys = ("lr", "halving", "best_loss")

    def __init__(self, lr: float, cfg: NewBobConfig | None = None) -> None:
        self.cfg = cfg or NewBobConfig()
        self.can_reject = self.cfg.keep_best
        self.lr = lr
        self.halving = False
        self.best_loss = math.inf

    def start(self, dev_loss: float) -> None:
        self.best_loss = dev_loss

    def step(self, epoch: int, dev_loss: float) -> Decision:
        c = self.cfg
        prev = self.best_loss
        accept = dev_loss < prev or not c.keep_best or epoch <= c.keep_lr_epochs
        if accept:
            self.best_loss = dev_loss
        if epoch <= c.keep_lr_epochs:
            return Decision(accept=True, stop=False)
        impr = (prev - self.best_loss) / abs(prev) if math.isfinite(prev) and prev != 0 else math.inf
        if self.halving and impr < c.end_halving_impr and epoch >= c.min_epochs:
            return Decision(accept=accept, stop=True)
        if impr < c.start_halving_impr:
            self.halving = True
        if self.halving:
            self.lr *= c.halving_factor
        return Decision(accept=accept, stop=False)


def make_schedule(kind: str, lr: float, epochs: int, min_lr: float = 0.0,
                  newbob: NewBobConfig | None = None) -> Schedule:
    """``constant`` | ``cosine`` | ``newbob``."""
    if kind == "constant":
        return ConstantSchedule(lr)
    if kind == "cosine":
        return CosineSchedule(lr, epochs, min_lr)
    if kind == "newbob":
        return NewBobSchedule(lr, newbob)
    raise ValueError(f"unknown lr schedule {kind!r} (constant, cosine, newbob)")
