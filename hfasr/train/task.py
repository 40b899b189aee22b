"""The task interface: the speech-specific part of a training run.

A task holds the data, the model, the dev evaluation and the batch criterion (loss and
output-space curvature); :mod:`hfasr.train.experiment` runs it with a driver of
:mod:`hfasr.train.drivers`, which only sees the attributes and methods below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


class Task:
    """Base class of the tasks (:class:`~hfasr.train.ce.CETask`,
    :class:`~hfasr.train.sequence.SequenceTask`, :class:`~hfasr.train.ctc.CtcTask`).

    Attributes set by a task:
        run_name, model_name: labels of the history records (e.g. ``hf-smbr``, ``dnn``).
        net: the model that is saved (``checkpoint.pt``, ``final.pt``; has ``model_config``).
        model: the module the drivers call as ``model(*batch.inputs)`` (``net`` or a view of it
            sharing its parameters, e.g. the DNN on spliced frame rows).
        train_data: the training examples (:class:`hfasr.optim.BatchData`).
        criterion: the batch criterion (:class:`hfasr.optim.BatchCriterion`).
        structural: whether the model gives structural-damping weights (recurrent models).
    """

    run_name: str
    model_name: str
    net: nn.Module
    model: nn.Module
    train_data: Any
    criterion: Any
    structural: bool = False

    def minibatches(self, generator: torch.Generator) -> list:
        """One epoch of first-order minibatches: index groups into ``train_data``, in an order
        drawn with ``generator``."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """The dev report: at least ``dev_obj`` (lower is better), optionally ``dev_acc``,
        ``dev_wer``, ``dev_ter``."""
        raise NotImplementedError

    def example_names(self, indices) -> list[str]:
        """The utterances of the training examples ``indices`` (for error messages)."""
        return []

    def summary(self) -> str:
        """One line on the data, logged when a run starts."""
        return ""

    def after_report(self, update: int, finished: bool, log_line) -> None:
        """Work between reports that counts as training time (e.g. lattice regeneration)."""

    def write_files(self, out: Path) -> None:
        """Files of the experiment dir besides the model (priors, token tables)."""

    def final_info(self) -> dict[str, Any]:
        """Extra fields of ``final.pt`` (e.g. what decoding needs)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Task state that a resumed run must restore (plain data, loadable with weights_only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; raise a DataError if the checkpoint does not fit."""
