"""Training of acoustic models (``hfasr train``).

- :mod:`~hfasr.train.trainer`: :class:`TrainConfig`, :class:`Trainer` (epochs, dev reports,
  checkpoints, exact resume), the optimizer / criterion registries and :func:`run_training`.
- :mod:`~hfasr.train.ce`: frame cross-entropy (:class:`FrameCE`), dev evaluation, pdf priors.
- :mod:`~hfasr.train.schedule`: constant / cosine / newbob learning-rate schedules.
- :mod:`~hfasr.train.sequence`: lattice-based sequence training (MMI / bMMI / MPE / sMBR).
- :mod:`~hfasr.train.ctc`: CTC training of BLSTM / MDLSTM / DNN with HF or Adam.
"""

from hfasr.train.ce import FrameCE, compute_log_prior, evaluate_frames, prior_from_data, save_prior
from hfasr.train.schedule import NewBobConfig, make_schedule
from hfasr.train.trainer import (
    CRITERIA,
    OPTIMIZERS,
    EpochOptimizer,
    TorchOptimizer,
    TrainConfig,
    TrainContext,
    Trainer,
    TrainingError,
    register_criterion,
    register_optimizer,
    run_training,
)

__all__ = [
    "CRITERIA",
    "OPTIMIZERS",
    "EpochOptimizer",
    "FrameCE",
    "NewBobConfig",
    "TorchOptimizer",
    "TrainConfig",
    "TrainContext",
    "Trainer",
    "TrainingError",
    "compute_log_prior",
    "evaluate_frames",
    "make_schedule",
    "prior_from_data",
    "register_criterion",
    "register_optimizer",
    "run_training",
    "save_prior",
]
