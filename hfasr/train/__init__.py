"""Training of acoustic models (``hfasr train``): an experiment runs a task with a driver.

- :mod:`~hfasr.train.experiment`: the experiment driver, once for every task and driver: out
  dir, resolved ``config.yaml``, checkpoints (``weights_only`` loading, declared resumable
  keys), ``history.jsonl``, logging, distributed init, numerical errors.
- :mod:`~hfasr.train.drivers`: :class:`HFDriver` (Hessian-free) and :class:`FirstOrderDriver`
  (SGD / Adam with a learning-rate schedule); they know no speech.
- Tasks (data, model, dev evaluation, batch criterion with its output-space curvature):
  :mod:`~hfasr.train.ce` (frame CE on GMM alignments), :mod:`~hfasr.train.sequence`
  (MMI / bMMI / MPE / sMBR on lattices), :mod:`~hfasr.train.ctc` (CTC from scratch).
- :mod:`~hfasr.train.schedule`: constant / cosine / newbob learning-rate schedules.
"""

from hfasr.train.ce import (
    CETask,
    FrameCE,
    TrainConfig,
    compute_log_prior,
    prior_from_data,
    run_training,
    save_prior,
)
from hfasr.train.drivers import (
    FirstOrderConfig,
    FirstOrderDriver,
    HFDriver,
    HFTrainConfig,
    TrainingError,
)
from hfasr.train.experiment import Experiment, run_experiment
from hfasr.train.schedule import NewBobConfig, make_schedule

__all__ = [
    "CETask",
    "Experiment",
    "FirstOrderConfig",
    "FirstOrderDriver",
    "FrameCE",
    "HFDriver",
    "HFTrainConfig",
    "NewBobConfig",
    "TrainConfig",
    "TrainingError",
    "compute_log_prior",
    "make_schedule",
    "prior_from_data",
    "run_experiment",
    "run_training",
    "save_prior",
]
