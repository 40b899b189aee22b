"""Frame cross-entropy training of a hybrid model on GMM alignments (``hfasr train --criterion ce``).

The task: the features of ``hfasr features`` with the pdf targets of ``hfasr gmm``'s
alignments (:class:`~hfasr.data.frames.FrameData`), a DNN on spliced frames (examples = frames,
:class:`~hfasr.data.utterances.FrameRows`) or a BLSTM / MDLSTM with a pdf softmax on whole
utterances (one output per alignment frame, :class:`~hfasr.data.utterances.Utterances`), the
criterion :class:`FrameCE` (summed softmax CE; its curvature is the softmax Fisher, the exact
Gauss-Newton block of CE) and the dev set's frame CE (``dev_obj``) and accuracy.

Drivers: ``sgd`` / ``adam`` (the top-level first-order keys: ``epochs``, ``lr``,
``lr_schedule``, ...; minibatches of ``batch_size`` shuffled frames, or of whole utterances up to
``utt_batch_frames`` padded frames) and ``hf`` (section ``hf:``). Pdf priors
(``log max(count_k / N, floor)`` over the training alignments) go to ``prior.pt``; hybrid
decoding divides the posteriors by them (:func:`hfasr.models.compute_loglikes`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from hfasr.config import TORCH_DEVICE, bounded, check_ranges
from hfasr.data.augment import AugmentConfig, AugmentedRows
from hfasr.data.batching import Batch, make_batches
from hfasr.data.frames import IGNORE_INDEX, FrameData, FrameDataConfig
from hfasr.data.utterances import FrameRows, Utterances
from hfasr.errors import ConfigError, DataError
from hfasr.models import DNNConfig, build_model
from hfasr.models.blstm import BLSTMConfig
from hfasr.models.mdlstm import MDLSTMConfig
from hfasr.optim import HFConfig
from hfasr.train.drivers import FirstOrderConfig, HFTrainConfig
from hfasr.train.task import Task, check_features

log = logging.getLogger(__name__)

MODELS = ("dnn", "blstm", "mdlstm")


# ---------------------------------------------------------------------------------------- config
@dataclass
class TrainConfig(FirstOrderConfig):
    """Options of ``hfasr train --criterion ce`` (YAML via ``--config``; resolved copy ``config.yaml``).

    The first-order keys (``lr``, ``epochs``, ``lr_schedule``, ``newbob``, ``momentum``,
    ``betas``, ...) are those of :class:`~hfasr.train.drivers.FirstOrderConfig`, at top level."""

    RESUMABLE: ClassVar[tuple[str, ...]] = ("epochs", "hf.updates", "num_threads", "device")

    lr: float | None = bounded(None, gt=0)  # learning rate; null: the optimizer's default (sgd 0.1, adam 0.001)
    lr_schedule: Literal["newbob", "cosine", "constant"] = "newbob"
    criterion: str = "ce"  # training criterion (ce)
    optimizer: Literal["sgd", "adam", "hf"] = "sgd"  # sgd (with momentum) | adam | hf (Hessian-free, section hf:)
    model: Literal["dnn", "blstm", "mdlstm"] = "dnn"  # architecture; its hyper-parameters are the section of the same name
    dnn: DNNConfig = field(default_factory=DNNConfig)  # DNN hyper-parameters
    blstm: BLSTMConfig = field(default_factory=BLSTMConfig)  # --model blstm (subsample must be 1)
    mdlstm: MDLSTMConfig = field(default_factory=MDLSTMConfig)  # --model mdlstm (time_patch must be 1)
    data: FrameDataConfig = field(default_factory=FrameDataConfig)  # alignment/feature matching
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # dnn + sgd / adam: frequency warping / masking of the training rows
    train_split: str = "train"  # features <task>_feats_<split>, alignment ali_<split>.pt
    dev_split: str = "dev"  # reported every epoch; drives the newbob schedule
    batch_size: int = bounded(256, ge=1)  # sgd / adam, dnn: frames per minibatch (shuffled across utterances)
    utt_batch_frames: int = bounded(4000, ge=1)  # blstm / mdlstm: padded frames per batch of whole utterances
    chunk_size: int = bounded(8192, ge=1)  # dnn: frames per forward/backward chunk (HF passes, dev evaluation)
    # dnn + sgd / adam: > 0 reads the training features from disk when a batch needs them and
    # shuffles frames within blocks of this many utterances (hfasr/data/stream.py); 0 = in memory
    stream_buffer_utts: int = bounded(0, ge=0)
    prior_floor: float = bounded(1e-5, gt=0, le=1)  # pdf priors: floor of count/total (pdfs unseen in training)
    seed: int = bounded(0, ge=0)  # model initialisation and frame order
    num_threads: int = bounded(0, ge=0)  # torch intra-op threads; 0 = torch's default
    device: str = bounded("cpu", **TORCH_DEVICE)  # cpu | cuda | cuda:N
    # optimizer hf: updates in all, one dev report per updates_per_report; G v on a 2% frame sample
    hf: HFTrainConfig = field(default_factory=lambda: HFTrainConfig(
        updates=20, heldout_fraction=0.0, curvature_fraction=0.02, curvature_min=4096,
        optimizer=HFConfig(cg_max_iters=100)))

    DEFAULT_LR: ClassVar[dict[str, float]] = {"sgd": 0.1, "adam": 1e-3}

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.criterion != "ce":
            raise ValueError(f"frame-level training needs criterion 'ce', got '{self.criterion}'")
        if self.optimizer not in ("sgd", "adam", "hf"):
            raise ValueError(f"unknown optimizer '{self.optimizer}' (known: sgd, adam, hf)")
        if self.model not in MODELS:
            raise ValueError(f"unknown model '{self.model}' (known: {', '.join(MODELS)})")
        rate_key = {"blstm": "subsample", "mdlstm": "time_patch"}.get(self.model)  # output frames per input frame
        if rate_key and getattr(getattr(self, self.model), rate_key) != 1:
            raise ValueError(f"{self.model}.{rate_key} must be 1 for frame-level (hybrid) training: one output "
                             f"per alignment frame (got {getattr(getattr(self, self.model), rate_key)})")
        self.first_order()  # checks the first-order keys
        if self.optimizer == "hf" and self.model == "dnn" and self.dnn.dropout > 0:
            raise ValueError(f"dnn.dropout {self.dnn.dropout} needs a first-order optimizer: Hessian-free needs a "
                             "deterministic network (set dnn.dropout: 0 or optimizer: sgd / adam)")
        if self.stream_buffer_utts and (self.optimizer == "hf" or self.model != "dnn"):
            raise ValueError(f"stream_buffer_utts ({self.stream_buffer_utts}) is implemented for model 'dnn' with "
                             f"optimizer sgd / adam (got model '{self.model}', optimizer '{self.optimizer}'); "
                             "set stream_buffer_utts: 0")
        if self.augment.active and (self.optimizer == "hf" or self.model != "dnn"):
            raise ValueError("augment (warp / freq_masks) is implemented for model 'dnn' with optimizer sgd / adam "
                             f"(got model '{self.model}', optimizer '{self.optimizer}'): Hessian-free needs one "
                             "deterministic objective; set augment.warp: 0 and augment.freq_masks: 0")

    def first_order(self) -> FirstOrderConfig:
        """The first-order driver's settings (the top-level keys)."""
        keys = {f.name: getattr(self, f.name) for f in dataclasses.fields(FirstOrderConfig)}
        lr = self.lr if self.lr is not None else self.DEFAULT_LR.get(self.optimizer, 1.0)
        return FirstOrderConfig(**{**keys, "lr": lr})

    def unused_sections(self) -> list[str]:
        """Sections this run does not read (ignored on ``--resume``)."""
        out = [m for m in MODELS if m != self.model]
        first_order = [f.name for f in dataclasses.fields(FirstOrderConfig)] + ["batch_size"]
        return out + (["hf"] if self.optimizer != "hf" else first_order)

    def model_config(self, input_dim: int, num_outputs: int) -> dict[str, Any]:
        """``{"arch", "input_dim", "num_outputs", **hyper-parameters}`` for :func:`build_model`."""
        return {"arch": self.model, "input_dim": input_dim, "num_outputs": num_outputs,
                **dataclasses.asdict(getattr(self, self.model))}

    @property
    def run_name(self) -> str:
        return f"{self.optimizer}-ce-{self.model}"


# ---------------------------------------------------------------------------------------- criterion
class FrameCE:
    """Softmax cross-entropy per frame (a :class:`hfasr.optim.BatchCriterion`): the batch's
    target holds pdf ids shaped like the logits without their last axis; frames with target
    :data:`~hfasr.data.frames.IGNORE_INDEX` are padding and count for nothing."""

    name = "ce"

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        """Summed CE over the valid frames."""
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), batch.target.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")

    def curvature(self, outputs: Tensor, batch: Batch):
        """Softmax Fisher ``diag(y) − y yᵀ`` per valid frame (HF's Gauss-Newton block)."""
        from hfasr.criteria.curvature import SoftmaxFisher

        return SoftmaxFisher(outputs, mask=batch.target != IGNORE_INDEX)


# ---------------------------------------------------------------------------------------- priors
def compute_log_prior(counts: Tensor, floor: float = 1e-5) -> tuple[Tensor, int]:
    """``log max(count / total, floor)`` (float32) and the number of floored pdfs."""
    if floor <= 0:
        raise ValueError(f"prior floor must be > 0, got {floor}")
    p = counts.double() / counts.sum().clamp_min(1)
    floored = int((p < floor).sum())
    return p.clamp_min(floor).log().float(), floored


def save_prior(path: str | Path, log_prior: Tensor) -> None:
    """Atomically write ``{"log_prior": FloatTensor(num_pdfs)}``."""
    from hfasr.models import atomic_save

    atomic_save({"log_prior": log_prior.float().cpu()}, path)


def prior_from_data(data: FrameData, floor: float = 1e-5) -> Tensor:
    """Log priors of the pdf targets of ``data`` (logs how many pdfs were floored)."""
    log_prior, floored = compute_log_prior(data.pdf_counts(), floor)
    if floored:
        log.info("prior: %d of %d pdfs below the floor %g (unseen in training: %d)", floored,
                 data.num_pdfs, floor, int((data.pdf_counts() == 0).sum()))
    return log_prior


def load_cmvn_stats(path: Path, feat_dim: int) -> tuple[Tensor, Tensor]:
    """The global CMVN ``(mean, std)`` of ``hfasr features`` (``<task>_stats.pt``, read by
    :func:`hfasr.data.features.load_stats` through :func:`hfasr.fileio.load_torch`: a tampered
    file's code never runs); DataError naming the file if it is missing, truncated, of the wrong
    kind, holds non-finite values, or does not match the ``feat_dim`` of the features."""
    from hfasr.data.features import load_stats

    mean, std = load_stats(path)
    if tuple(mean.shape) != (feat_dim,):
        raise DataError(f"{path}: CMVN stats of {mean.numel()}-dim features, but the features have {feat_dim} "
                        f"dims (shape ({feat_dim},) expected); rerun `hfasr features`")
    return mean, std


# ---------------------------------------------------------------------------------------- evaluation
def utterance_collate(data: FrameData, device: torch.device | str) -> Callable[[list[int]], Batch]:
    """``collate(utterance indices) -> Batch`` of padded utterances of ``data``: inputs
    ``(feats (B, T, F), lengths)``, targets (B, T) with :data:`IGNORE_INDEX` at padding."""

    def collate(idx: list[int]) -> Batch:
        ub = data.collate(idx)
        return Batch((ub.feats.to(device), ub.lengths), ub.targets.to(device), int(ub.lengths.sum()),
                     names=ub.cut_ids)

    return collate


@torch.no_grad()
def evaluate_frames(model, data: FrameData, criterion: FrameCE | None = None, chunk: int = 8192,
                    device: torch.device | str = "cpu", max_frames: int = 4000) -> tuple[float, float]:
    """Mean per-frame CE and frame accuracy of ``model`` on all frames of ``data``: spliced frame
    rows in chunks for a frame-level model (one with ``frames()``), else whole utterances."""
    criterion = criterion or FrameCE()
    was = model.training
    model.eval()
    if hasattr(model, "frames"):
        fn, rows = model.frames(), FrameRows(data, model.context, chunk, device)
        plan, get = rows.plan(), rows.batch
    else:
        fn, collate = model, utterance_collate(data, device)
        plan, get = make_batches(data.lengths.tolist(), max_frames), collate
    total, correct, count = 0.0, 0, 0
    try:
        for idx in plan:
            batch = get(idx)
            z = fn(*batch.inputs)
            if z.shape[:-1] != batch.target.shape:
                raise ConfigError(f"frame-level training needs one output per frame; {type(model).__name__} "
                                  f"gives {tuple(z.shape[:-1])} for targets {tuple(batch.target.shape)}")
            total += float(criterion.loss(z.float(), batch))
            correct += int(((z.argmax(-1) == batch.target) & (batch.target != IGNORE_INDEX)).sum())
            count += batch.count
    finally:
        model.train(was)
    return total / max(count, 1), correct / max(count, 1)


# ---------------------------------------------------------------------------------------- the task
class CETask(Task):
    """Frame CE on GMM alignments (module docstring). ``net`` is the model that is saved;
    ``model`` the module the drivers call (the DNN on spliced rows, or ``net`` itself)."""

    def __init__(self, cfg: TrainConfig, train: FrameData, dev: FrameData, device: torch.device,
                 cmvn: tuple[Tensor, Tensor] | None = None) -> None:
        if dev.num_pdfs != train.num_pdfs or dev.feat_dim != train.feat_dim:
            raise ConfigError(f"dev set has {dev.num_pdfs} pdfs / {dev.feat_dim}-dim features, "
                              f"training set {train.num_pdfs} / {train.feat_dim}")
        # non-finite or absurd features: an error naming the cut, before any training (streamed
        # training data was checked cut by cut when it was loaded)
        if not getattr(train, "streamed", False):
            check_features(train.cut_ids, train.feats, f"split '{cfg.train_split}'", train.offsets)
        check_features(dev.cut_ids, dev.feats, f"split '{cfg.dev_split}'", dev.offsets)
        self.cfg, self.train, self.dev, self.device = cfg, train, dev, device
        self.run_name, self.model_name = cfg.run_name, cfg.model
        torch.manual_seed(cfg.seed)
        self.net = build_model(cfg.model_config(train.feat_dim, train.num_pdfs))
        if cmvn is not None:
            self.net.set_cmvn(*cmvn)
        self.net.to(device)
        self.criterion = FrameCE()
        self.frame_level = hasattr(self.net, "frames") and hasattr(self.net, "context")
        if self.frame_level:
            # the drivers train the module on spliced rows; it shares the DNN's parameters
            self.model = self.net.frames()
            if cfg.augment.active:
                # masked bins take the training mean, which the input normalisation maps to 0
                fill = cmvn[0] if cmvn is not None else (train.mean if getattr(train, "streamed", False)
                                                         else train.feats.mean(0))
                self.train_data: Any = AugmentedRows(train, self.net.context, cfg.augment, fill, cfg.seed,
                                                     cfg.chunk_size, device)
            else:
                self.train_data = FrameRows(train, self.net.context, cfg.chunk_size, device)
        else:
            self.model = self.net
            self.train_data = Utterances(train.lengths.tolist(), utterance_collate(train, device),
                                         cfg.utt_batch_frames)

    def example_names(self, indices) -> list[str]:
        if not self.frame_level:
            return [self.train.cut_ids[i] for i in indices]
        frames = torch.as_tensor(indices, dtype=torch.long)
        utts = torch.searchsorted(self.train.offsets, frames, right=True) - 1
        return [self.train.cut_ids[u] for u in torch.unique(utts).tolist()]

    def minibatches(self, generator: torch.Generator) -> list:
        if self.frame_level:
            return self.train_data.shuffled(generator, self.cfg.batch_size)
        return self.train_data.shuffled(generator)

    def evaluate(self) -> dict[str, float]:
        loss, acc = evaluate_frames(self.net, self.dev, self.criterion, self.cfg.chunk_size, self.device,
                                    self.cfg.utt_batch_frames)
        return {"dev_obj": loss, "dev_acc": acc}

    def summary(self) -> str:
        return (f"{len(self.train)} train utterances ({self.train.num_frames} frames), {len(self.dev)} dev "
                f"({self.dev.num_frames} frames), {self.train.num_pdfs} pdfs")

    def write_files(self, out: Path) -> None:
        save_prior(out / "prior.pt", prior_from_data(self.train, self.cfg.prior_floor))


def run_training(cfg: TrainConfig, data_dir: str | Path, task: str, ali_dir: str | Path, out_dir: str | Path,
                 resume: bool = False, progress: bool = True):
    """``hfasr train --criterion ce``: load the data, train (resuming from ``<out>/checkpoint.pt``
    with ``resume``), write ``config.yaml``, ``prior.pt`` and ``final.pt``. Returns the
    :class:`~hfasr.train.experiment.Experiment`."""
    from hfasr.train.experiment import run_experiment

    def build(exp) -> CETask:
        utt_cmn = getattr(getattr(cfg, cfg.model), "utt_cmn", False)
        if cfg.stream_buffer_utts:
            from hfasr.data.stream import StreamedFrameData

            train: Any = StreamedFrameData.load(data_dir, task, cfg.train_split, ali_dir, cfg.data, utt_cmn,
                                                cfg.stream_buffer_utts, progress=exp.progress)
        else:
            train = FrameData.load(data_dir, task, cfg.train_split, ali_dir, cfg.data, progress=exp.progress)
        dev = FrameData.load(data_dir, task, cfg.dev_split, ali_dir, cfg.data, progress=exp.progress)
        cmvn = load_cmvn_stats(Path(data_dir) / f"{task}_stats.pt", train.feat_dim)
        if utt_cmn:
            # the model removes each utterance's mean itself (forward); the frame-level training
            # data must match, and the global CMVN is then taken over the mean-removed frames
            dev.apply_utterance_cmn()
            if cfg.stream_buffer_utts:  # mean-removed when read; statistics of load()'s pass
                cmvn = (train.mean, train.std)
            else:
                train.apply_utterance_cmn()
                cmvn = (train.feats.mean(0), train.feats.std(0).clamp(min=1e-5))
        return CETask(cfg, train, dev, exp.device, cmvn)

    return run_experiment(cfg, build, out_dir, resume, progress)
