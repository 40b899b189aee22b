"""Hessian-free optimization inside ``hfasr train`` (``--optimizer hf``), frame-level criteria.

One training "epoch" is ``hf.updates_per_epoch`` HF updates of :class:`hfasr.optim.HessianFree`
over a :class:`~hfasr.optim.TensorObjective` on the spliced training frames: the gradient on all
training frames (or on one of ``hf.num_subsets`` subsets in turn, with the reuse options of
:class:`~hfasr.optim.HFConfig`), G v products on a ``hf.curvature_fraction`` sample of them,
and ρ / CG-backtracking / line search on the data the HF config names (``heldout`` = a
``hf.heldout_fraction`` of the training frames kept out of the gradient). The learning rate of
the epoch loop is ignored (use ``lr_schedule: constant``). The HF state (damping, CG warm
start, stored gradients, RNG) is the optimizer state of the checkpoint, so ``--resume`` is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from hfasr.optim import HessianFree, HFConfig, SubsetObjective, TensorObjective


@dataclass
class HFTrainConfig:
    """The ``hf:`` section of :class:`hfasr.train.TrainConfig`."""

    updates_per_epoch: int = 1  # HF updates between dev reports / checkpoints
    curvature_fraction: float = 0.02  # frames of the gradient data used for G v products
    curvature_min_frames: int = 4096
    heldout_fraction: float = 0.0  # training frames held out for ρ / backtracking / line search
    num_subsets: int = 1  # >1: successive-subset HF (gradient of one subset per update)
    chunk_size: int = 8192  # frames per forward/backward chunk
    optimizer: HFConfig = field(default_factory=lambda: HFConfig(cg_max_iters=100))


class HFFrameOptimizer:
    """:class:`~hfasr.train.trainer.EpochOptimizer` running HF updates on spliced frames."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        cfg: HFTrainConfig = ctx.cfg.hf
        data = ctx.train
        n = data.num_frames
        gen = torch.Generator().manual_seed(ctx.cfg.seed + 1)
        perm = torch.randperm(n, generator=gen)
        n_held = int(round(cfg.heldout_fraction * n))
        held_idx, train_idx = perm[:n_held].sort().values, perm[n_held:].sort().values
        ctx_frames = ctx.model.context
        self.frame_model = ctx.model.frames()
        dev = ctx.device
        X = data.spliced(train_idx, ctx_frames).to(dev)
        y = data.targets[train_idx].to(dev)
        heldout = None
        if n_held:
            heldout = (data.spliced(held_idx, ctx_frames).to(dev), data.targets[held_idx].to(dev))

        def loss_fn(z, t):
            return ctx.criterion.loss(z, t)

        def curv_fn(z, t):
            return ctx.criterion.curvature(z, t)

        def make(rows):
            return TensorObjective(self.frame_model, loss_fn, curv_fn, rows, heldout=heldout,
                                   curvature_fraction=cfg.curvature_fraction,
                                   curvature_min_rows=cfg.curvature_min_frames, chunk_size=cfg.chunk_size)

        if cfg.num_subsets > 1:
            k = cfg.num_subsets
            parts = [make((X[i::k], y[i::k])) for i in range(k)]
            held_obj = make(heldout) if heldout is not None else None
            self.objective = SubsetObjective(parts, held_obj)
        else:
            self.objective = make((X, y))
        self.X, self.y = X, y
        self.opt = HessianFree(self.frame_model.parameters(), cfg.optimizer)
        self.cfg = cfg

    def train_epoch(self, epoch: int, lr: float) -> dict[str, float]:
        last = None
        for _ in range(self.cfg.updates_per_epoch):
            last = self.opt.step(self.objective)
            self.ctx_log(last.line())
        loss, acc = self._train_metrics()
        if not math.isfinite(loss):
            from hfasr.train.trainer import TrainingError

            raise TrainingError(f"non-finite training loss after HF update {self.opt.updates}")
        return {"train_loss": loss, "train_acc": acc, "damping": self.opt.damping,
                "cg_iters": float(last.cg_iters), "rho": float(last.rho) if math.isfinite(last.rho) else -1.0,
                "gv_products": float(sum(h.products for h in self.opt.history))}

    def ctx_log(self, line: str) -> None:
        from tqdm import tqdm

        if self.ctx.progress:
            tqdm.write(line)

    @torch.no_grad()
    def _train_metrics(self) -> tuple[float, float]:
        self.frame_model.eval()
        total, correct, n = 0.0, 0, 0
        for s in range(0, self.X.shape[0], self.cfg.chunk_size):
            z = self.frame_model(self.X[s : s + self.cfg.chunk_size])
            t = self.y[s : s + self.cfg.chunk_size]
            l, c = self.ctx.criterion.loss(z, t)
            total += float(l)
            correct += int((z.argmax(-1) == t).sum())
            n += c
        return total / n, correct / n

    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state)
