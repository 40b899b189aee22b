"""The training loop of ``hfasr train``: epochs, dev reports, lr schedule, checkpoints, resume.

Structure (so that other optimizers and criteria plug in)::

    Trainer(cfg, train, dev, out_dir)
      ├─ model      build_model({"arch": cfg.model, **cfg.<arch>})  (+ CMVN)
      ├─ criterion  CRITERIA[cfg.criterion](cfg)                  e.g. FrameCE
      ├─ optimizer  OPTIMIZERS[cfg.optimizer].factory(ctx)        an EpochOptimizer
      └─ schedule   constant | cosine | newbob                    (hfasr.train.schedule)

An :class:`EpochOptimizer` runs one epoch (``train_epoch(epoch, lr) -> stats``) and has a
``state_dict``; :class:`TorchOptimizer` wraps any ``torch.optim`` optimizer on shuffled frame
minibatches (``sgd``, ``adam``). A Hessian-free driver registers itself the same way
(:func:`register_optimizer`), running its HF updates over data subsets inside ``train_epoch``
and keeping its damping / CG state in ``state_dict``.

After every epoch the dev set's frame CE and accuracy are computed; the schedule accepts or
rejects the epoch (a rejected epoch is undone: model and optimizer state restored), one
grep-able ``epoch=N ...`` line goes to stdout and ``<out>/train.log``, and ``checkpoint.pt``
is written atomically with everything needed to resume exactly: model, optimizer, schedule,
the data-order generator and torch RNG states, the epoch and the history. A non-finite loss
raises :class:`TrainingError` before anything is written, so the last checkpoint stays valid.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn
from tqdm import tqdm

from hfasr.data.frames import FrameData, FrameDataConfig
from hfasr.errors import ConfigError, HfasrError
from hfasr.models import DNNConfig, atomic_save, build_model, load_checkpoint
from hfasr.models.blstm import BLSTMConfig
from hfasr.models.mdlstm import MDLSTMConfig
from hfasr.train.ce import FrameCE, evaluate_frames
from hfasr.train.hf_driver import HFTrainConfig
from hfasr.train.schedule import NewBobConfig, make_schedule
from hfasr.train.utterance_objective import batch_by_frames

log = logging.getLogger(__name__)


class TrainingError(HfasrError):
    """Training diverged (non-finite loss) or cannot continue; the last checkpoint is intact."""


# --- registries --------------------------------------------------------------------------------

@dataclass
class TrainContext:
    """What an optimizer factory gets: everything an epoch of training needs."""

    cfg: TrainConfig
    model: nn.Module
    criterion: Any
    train: FrameData
    dev: FrameData
    generator: torch.Generator  # the data-order generator (checkpointed)
    device: torch.device
    progress: bool


class EpochOptimizer(Protocol):
    def train_epoch(self, epoch: int, lr: float) -> dict[str, float]:
        """One pass over the training data at learning rate ``lr``; returns at least
        ``train_loss`` (mean per frame) and ``train_acc``."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class OptimizerEntry:
    factory: Callable[[TrainContext], EpochOptimizer]
    default_lr: float  # used when the config's lr is null


OPTIMIZERS: dict[str, OptimizerEntry] = {}
CRITERIA: dict[str, Callable[[Any], Any]] = {"ce": lambda cfg: FrameCE()}


def register_optimizer(name: str, factory: Callable[[TrainContext], EpochOptimizer], default_lr: float) -> None:
    """Make ``--optimizer name`` available."""
    OPTIMIZERS[name] = OptimizerEntry(factory, default_lr)


def register_criterion(name: str, factory: Callable[[Any], Any]) -> None:
    """Make ``--criterion name`` available (``factory(cfg) -> criterion``)."""
    CRITERIA[name] = factory


# Architectures trainable here; each has a TrainConfig section of the same name. The DNN trains on
# shuffled spliced frames; the recurrent models (hybrid BLSTM / MDLSTM with a pdf softmax) on
# shuffled whole utterances, one output per alignment frame.
MODEL_SECTIONS = ("dnn", "blstm", "mdlstm")


# --- config ------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Options of ``hfasr train`` (YAML via ``--config``; the resolved copy is ``config.yaml``)."""

    criterion: str = "ce"  # training criterion (ce)
    optimizer: str = "sgd"  # sgd (with momentum) | adam | hf (Hessian-free, section hf:)
    model: str = "dnn"  # architecture; its hyper-parameters are the section of the same name
    dnn: DNNConfig = field(default_factory=DNNConfig)  # DNN hyper-parameters
    blstm: BLSTMConfig = field(default_factory=BLSTMConfig)  # --model blstm (subsample must be 1)
    mdlstm: MDLSTMConfig = field(default_factory=MDLSTMConfig)  # --model mdlstm
    data: FrameDataConfig = field(default_factory=FrameDataConfig)  # alignment/feature matching
    train_split: str = "train"  # features <task>_feats_<split>, alignment ali_<split>.pt
    dev_split: str = "dev"  # reported every epoch; drives the newbob schedule
    epochs: int = 20  # maximum number of epochs (newbob may stop earlier)
    batch_size: int = 256  # frames per minibatch (shuffled across utterances)
    utt_batch_frames: int = 4000  # blstm / mdlstm: padded frames per minibatch of whole utterances
    lr: float | None = None  # learning rate; null: the optimizer's default (sgd 0.1, adam 0.001)
    lr_schedule: Literal["newbob", "cosine", "constant"] = "newbob"
    min_lr: float = 0.0  # cosine: learning rate reached after the last epoch
    newbob: NewBobConfig = field(default_factory=NewBobConfig)
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam
    weight_decay: float = 0.0  # L2 penalty added to the gradient (torch SGD / Adam weight_decay)
    max_grad_norm: float = 0.0  # clip the gradient norm per minibatch; 0 = no clipping
    prior_floor: float = 1e-5  # pdf priors: floor of count/total (pdfs unseen in training)
    seed: int = 0  # model initialisation and frame order
    num_threads: int = 0  # torch intra-op threads; 0 = torch's default
    device: str = "cpu"  # cpu | cuda | cuda:N
    hf: HFTrainConfig = field(default_factory=HFTrainConfig)  # --optimizer hf (hfasr.train.hf_driver)

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown criterion '{self.criterion}' (known: {', '.join(sorted(CRITERIA))})")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer '{self.optimizer}' (known: {', '.join(sorted(OPTIMIZERS))})")
        if self.model not in MODEL_SECTIONS:
            raise ValueError(f"unknown model '{self.model}' (known: {', '.join(MODEL_SECTIONS)})")
        rate_key = {"blstm": "subsample", "mdlstm": "time_patch"}.get(self.model)  # output frames per input frame
        if rate_key and getattr(getattr(self, self.model), rate_key) != 1:
            raise ValueError(f"{self.model}.{rate_key} must be 1 for frame-level (hybrid) training: one output "
                             f"per alignment frame (got {getattr(getattr(self, self.model), rate_key)})")
        for name in ("epochs", "batch_size", "utt_batch_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must have two values, got {self.betas}")
        if not self.prior_floor > 0:
            raise ValueError(f"prior_floor must be > 0, got {self.prior_floor}")

    def model_config(self, input_dim: int, num_outputs: int) -> dict[str, Any]:
        """``{"arch", "input_dim", "num_outputs", **hyper-parameters}`` for :func:`build_model`."""
        return {"arch": self.model, "input_dim": input_dim, "num_outputs": num_outputs,
                **dataclasses.asdict(getattr(self, self.model))}

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Keys that may differ between the run that wrote a checkpoint and the one resuming it.
RESUMABLE_CHANGES = ("epochs", "num_threads", "device")


# --- torch.optim driver ------------------------------------------------------------------------

def frame_function(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """``rows (N, (2c+1)F) -> logits (N, K)`` of a frame-level model (one with ``frames()``)."""
    if not hasattr(model, "frames") or not hasattr(model, "context"):
        raise ConfigError(f"frame-level training needs a model on spliced frames; "
                          f"'{type(model).__name__}' has no frames()")
    return model.frames()


def is_frame_model(model: nn.Module) -> bool:
    """True for models on spliced frames (DNN), False for sequence models (BLSTM, MDLSTM)."""
    return hasattr(model, "frames") and hasattr(model, "context")


def utterance_logits(model: nn.Module, data: FrameData, idx: Sequence[int], device: torch.device
                     ) -> tuple[Tensor, Tensor]:
    """Logits (N, K) and targets (N,) of the valid frames of utterances ``idx`` (one padded batch)."""
    utts = [data.utterance(u) for u in idx]
    lens = torch.tensor([x.shape[0] for x, _ in utts], dtype=torch.long)
    x = torch.zeros(len(utts), int(lens.max()), data.feat_dim)
    for i, (f, _) in enumerate(utts):
        x[i, : f.shape[0]] = f
    z = model(x.to(device), lens)
    if z.shape[1] != x.shape[1]:
        raise ConfigError(f"frame-level training needs one output per frame; {type(model).__name__} gives "
                          f"{z.shape[1]} for {x.shape[1]} input frames (time subsampling?)")
    mask = torch.arange(z.shape[1])[None, :] < lens[:, None]
    return z[mask.to(z.device)], torch.cat([y for _, y in utts]).to(device)


@torch.no_grad()
def evaluate_utterances(model: nn.Module, data: FrameData, max_frames: int, device: torch.device
                        ) -> tuple[float, float]:
    """Frame CE (nats per frame) and accuracy of a sequence model on whole utterances."""
    total, correct, count = 0.0, 0, 0
    order = torch.argsort(data.lengths, descending=True, stable=True)
    for idx in batch_by_frames(data.lengths.tolist(), order.tolist(), max_frames):
        z, y = utterance_logits(model, data, idx, device)
        total += float(torch.nn.functional.cross_entropy(z.float(), y, reduction="sum"))
        correct += int((z.argmax(-1) == y).sum())
        count += int(y.numel())
    return total / max(count, 1), correct / max(count, 1)


class TorchOptimizer:
    """A ``torch.optim`` optimizer on shuffled frame minibatches of ``cfg.batch_size`` frames
    (DNN), or on shuffled minibatches of whole utterances of at most ``cfg.utt_batch_frames``
    padded frames (BLSTM, MDLSTM); the loss of a minibatch is the criterion's mean per frame."""

    def __init__(self, ctx: TrainContext, optimizer: torch.optim.Optimizer) -> None:
        self.ctx = ctx
        self.opt = optimizer
        self.frame_fn = frame_function(ctx.model) if is_frame_model(ctx.model) else None
        self.params = [p for p in ctx.model.parameters() if p.requires_grad]

    def _minibatches(self):
        """(iterator of (logits, targets) computed lazily, number of minibatches) for one epoch."""
        ctx, cfg = self.ctx, self.ctx.cfg
        if self.frame_fn is not None:
            batches = ctx.train.frame_batches(cfg.batch_size, ctx.model.context, ctx.generator)
            total = ctx.train.num_batches(cfg.batch_size)
            return ((self.frame_fn(rows.to(ctx.device)), y) for rows, y in batches), total
        order = torch.randperm(len(ctx.train), generator=ctx.generator)
        groups = batch_by_frames(ctx.train.lengths.tolist(), order.tolist(), cfg.utt_batch_frames)

        return (utterance_logits(ctx.model, ctx.train, idx, ctx.device) for idx in groups), len(groups)

    def train_epoch(self, epoch: int, lr: float) -> dict[str, float]:
        ctx, cfg = self.ctx, self.ctx.cfg
        for g in self.opt.param_groups:
            g["lr"] = lr
        ctx.model.train()
        total, correct, count = 0.0, 0, 0
        batches, num = self._minibatches()
        bar = tqdm(batches, total=num, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not ctx.progress)
        for i, (z, y) in enumerate(bar):
            y = y.to(ctx.device)
            loss_sum, n = ctx.criterion.loss(z, y)
            loss = loss_sum / max(n, 1)
            if not torch.isfinite(loss):
                raise TrainingError(f"non-finite training loss ({float(loss.detach())}) in epoch {epoch}, "
                                    f"minibatch {i}; lower the learning rate (the last checkpoint is intact)")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            self.opt.step()
            total += float(loss_sum.detach())
            correct += ctx.criterion.correct(z.detach(), y)
            count += n
            if i % 20 == 0:
                bar.set_postfix(loss=f"{total / count:.4f}", acc=f"{100 * correct / count:.1f}")
        return {"train_loss": total / max(count, 1), "train_acc": correct / max(count, 1)}

    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state)


def _sgd(ctx: TrainContext) -> TorchOptimizer:
    c = ctx.cfg
    return TorchOptimizer(ctx, torch.optim.SGD(ctx.model.parameters(), lr=OPTIMIZERS["sgd"].default_lr,
                                               momentum=c.momentum, nesterov=c.nesterov,
                                               weight_decay=c.weight_decay))


def _adam(ctx: TrainContext) -> TorchOptimizer:
    c = ctx.cfg
    return TorchOptimizer(ctx, torch.optim.Adam(ctx.model.parameters(), lr=OPTIMIZERS["adam"].default_lr,
                                                betas=tuple(c.betas), weight_decay=c.weight_decay))


def _hf(ctx: TrainContext):
    from hfasr.train.hf_driver import HFFrameOptimizer

    if not is_frame_model(ctx.model):
        raise ConfigError(f"--optimizer hf for CE training needs a frame-level model (dnn), not '{ctx.cfg.model}'; "
                          "train the recurrent model with adam or sgd, then sequence-train it with HF")

    return HFFrameOptimizer(ctx)


register_optimizer("sgd", _sgd, default_lr=0.1)
register_optimizer("adam", _adam, default_lr=1e-3)
register_optimizer("hf", _hf, default_lr=1.0)  # HF has no learning rate; use lr_schedule: constant


# --- the trainer -------------------------------------------------------------------------------

class Trainer:
    """Epoch loop with dev reports, schedule, atomic checkpoints and exact resumption.

    Args:
        cfg: the resolved :class:`TrainConfig`.
        train, dev: frame data of the training and dev sets (same pdf inventory).
        out_dir: experiment dir (``checkpoint.pt``, ``train.log``).
        cmvn: global ``(mean, std)`` put into the model.
        progress: tqdm bars.
    """

    def __init__(self, cfg: TrainConfig, train: FrameData, dev: FrameData, out_dir: str | Path,
                 cmvn: tuple[Tensor, Tensor] | None = None, progress: bool = True) -> None:
        if dev.num_pdfs != train.num_pdfs or dev.feat_dim != train.feat_dim:
            raise ConfigError(f"dev set has {dev.num_pdfs} pdfs / {dev.feat_dim}-dim features, "
                              f"training set {train.num_pdfs} / {train.feat_dim}")
        self.cfg = cfg
        self.train_data, self.dev_data = train, dev
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device '{cfg.device}' requested but CUDA is not available")
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model_config(train.feat_dim, train.num_pdfs))
        if cmvn is not None:
            self.model.set_cmvn(*cmvn)
        self.model.to(self.device)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.criterion = CRITERIA[cfg.criterion](cfg)
        entry = OPTIMIZERS[cfg.optimizer]
        self.optimizer = entry.factory(TrainContext(cfg, self.model, self.criterion, train, dev, self.generator,
                                                    self.device, progress))
        lr = cfg.lr if cfg.lr is not None else entry.default_lr
        self.schedule = make_schedule(cfg.lr_schedule, lr, cfg.epochs, cfg.min_lr, cfg.newbob)
        self.frame_fn = frame_function(self.model) if is_frame_model(self.model) else None
        self.epoch = 0
        self.finished = False
        self.history: list[dict[str, Any]] = []

    # --- state ---
    def state_dict(self) -> dict[str, Any]:
        return {
            "model_config": dict(self.model.model_config),
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()},
            "epoch": self.epoch,
            "finished": self.finished,
            "history": copy.deepcopy(self.history),
            "train_config": self.cfg.as_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "<checkpoint>") -> None:
        old, new = state.get("train_config", {}), self.cfg.as_dict()
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
        if changed:
            detail = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
            raise ConfigError(f"{source} was written with a different config ({detail}); only "
                              f"{', '.join(RESUMABLE_CHANGES)} may change on --resume")
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        self.epoch = int(state["epoch"])
        self.finished = bool(state["finished"])
        self.history = list(state["history"])

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        path = Path(path) if path is not None else self.out_dir / "checkpoint.pt"
        atomic_save(self.state_dict(), path)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        # CPU first: RNG states must stay CPU tensors; weights and optimizer state are copied
        # onto the model's device by load_state_dict.
        self.load_state_dict(load_checkpoint(path, map_location="cpu"), str(path))

    # --- loop ---
    def evaluate(self) -> tuple[float, float]:
        """Dev frame CE (nats per frame) and frame accuracy."""
        was = self.model.training
        self.model.eval()
        try:
            if self.frame_fn is not None:
                loss, acc = evaluate_frames(self.frame_fn, self.dev_data, self.model.context, device=self.device)
            else:
                loss, acc = evaluate_utterances(self.model, self.dev_data, self.cfg.utt_batch_frames, self.device)
        finally:
            self.model.train(was)
        if not math.isfinite(loss):
            raise TrainingError(f"non-finite dev loss after epoch {self.epoch}; lower the learning rate "
                                "(the last checkpoint is intact)")
        return loss, acc

    def log_line(self, text: str) -> None:
        """One line to stdout (above the progress bar) and to ``train.log``."""
        tqdm.write(text)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "train.log", "a") as f:
            f.write(text + "\n")

    def _snapshot(self) -> tuple[dict, dict]:
        return copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict())

    def fit(self, max_epochs: int | None = None) -> nn.Module:
        """Train until ``cfg.epochs`` (or ``max_epochs`` more epochs, or the schedule stops);
        returns the model (after the last accepted epoch)."""
        cfg = self.cfg
        if not self.history:
            dev_loss, dev_acc = self.evaluate()
            self.schedule.start(dev_loss)
            self.history.append({"epoch": 0, "dev_loss": dev_loss, "dev_acc": dev_acc})
            self.log_line(f"epoch=0 dev_loss={dev_loss:.4f} dev_acc={100 * dev_acc:.2f} "
                          f"frames_train={self.train_data.num_frames} frames_dev={self.dev_data.num_frames} "
                          f"params={sum(p.numel() for p in self.model.parameters())}")
        stop_at = cfg.epochs if max_epochs is None else min(cfg.epochs, self.epoch + max_epochs)
        while not self.finished and self.epoch < stop_at:
            e = self.epoch + 1
            lr = self.schedule.lr
            before = self._snapshot() if self.schedule.can_reject else None
            t0 = time.perf_counter()
            stats = self.optimizer.train_epoch(e, lr)
            dev_loss, dev_acc = self.evaluate()
            decision = self.schedule.step(e, dev_loss)
            if not decision.accept and before is not None:
                self.model.load_state_dict(before[0])
                self.optimizer.load_state_dict(before[1])
            self.epoch = e
            self.finished = decision.stop
            rec = {"epoch": e, "lr": lr, **stats, "dev_loss": dev_loss, "dev_acc": dev_acc,
                   "accepted": decision.accept, "seconds": time.perf_counter() - t0}
            self.history.append(rec)
            self.log_line(f"epoch={e} lr={lr:.6g} train_loss={rec['train_loss']:.4f} "
                          f"train_acc={100 * rec['train_acc']:.2f} dev_loss={dev_loss:.4f} "
                          f"dev_acc={100 * dev_acc:.2f} status={'accepted' if decision.accept else 'rejected'}"
                          f"{' stop' if decision.stop else ''} seconds={rec['seconds']:.1f}")
            self.save_checkpoint()
        return self.model

    def final_metrics(self) -> dict[str, float]:
        """Dev loss / accuracy of the current model (the last accepted epoch)."""
        accepted = [h for h in self.history if h.get("accepted", True)]
        h = accepted[-1] if accepted else {}
        return {"epoch": h.get("epoch", 0), "dev_loss": h.get("dev_loss", math.nan),
                "dev_acc": h.get("dev_acc", math.nan)}


# --- the whole stage ---------------------------------------------------------------------------

def run_training(cfg: TrainConfig, data_dir: str | Path, task: str, ali_dir: str | Path,
                 out_dir: str | Path, resume: bool = False, progress: bool = True) -> Trainer:
    """``hfasr train``: load data, write ``config.yaml`` and ``prior.pt``, train (resuming from
    ``<out>/checkpoint.pt`` with ``resume``), write ``final.pt``. Returns the trainer."""
    from hfasr.config import save_config
    from hfasr.data.features import load_stats
    from hfasr.models import save_model
    from hfasr.train.ce import prior_from_data, save_prior

    out = Path(out_dir)
    ckpt = out / "checkpoint.pt"
    if ckpt.is_file() and not resume:
        raise HfasrError(f"{out} already holds a training run (checkpoint.pt): pass --resume to continue it, "
                         "or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    train = FrameData.load(data_dir, task, cfg.train_split, ali_dir, cfg.data, progress=progress)
    dev = FrameData.load(data_dir, task, cfg.dev_split, ali_dir, cfg.data, progress=progress)
    log.info("%s: %d cuts / %d frames; %s: %d cuts / %d frames; %d pdfs", cfg.train_split, len(train),
             train.num_frames, cfg.dev_split, len(dev), dev.num_frames, train.num_pdfs)
    cmvn = load_stats(Path(data_dir) / f"{task}_stats.pt")
    if getattr(getattr(cfg, cfg.model), "utt_cmn", False):
        # the model removes each utterance's mean itself (forward); the frame-level training
        # data must match, and the global CMVN is then taken over the mean-removed frames
        for d in (train, dev):
            d.apply_utterance_cmn()
        cmvn = (train.feats.mean(0), train.feats.std(0).clamp(min=1e-5))
    trainer = Trainer(cfg, train, dev, out, cmvn=cmvn, progress=progress)
    if resume and ckpt.is_file():
        trainer.load_checkpoint(ckpt)
        trainer.log_line(f"# resumed from {ckpt} at epoch {trainer.epoch}")
    save_config(cfg, out / "config.yaml")
    save_prior(out / "prior.pt", prior_from_data(train, cfg.prior_floor))
    trainer.fit()
    m = trainer.final_metrics()
    save_model(out / "final.pt", trainer.model, epoch=int(m["epoch"]), dev_loss=float(m["dev_loss"]),
               dev_acc=float(m["dev_acc"]), criterion=cfg.criterion, optimizer=cfg.optimizer)
    trainer.log_line(f"# final.pt: epoch {m['epoch']} dev_loss={m['dev_loss']:.4f} "
                     f"dev_acc={100 * m['dev_acc']:.2f}")
    return trainer
