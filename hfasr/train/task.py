"""The task interface: the speech-specific part of a training run.

A task holds the data, the model, the dev evaluation and the batch criterion (loss and
output-space curvature); :mod:`hfasr.train.experiment` runs it with a driver of
:mod:`hfasr.train.drivers`, which only sees the attributes and methods below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


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


# Features beyond this magnitude are refused as absurd: fbank / MFCC values (log energies) stay
# within a few hundred; a 1e30 in a few frames would make the CMVN std 3e28 and train nothing.
FEATURE_LIMIT = 1e6


def check_features(cut_ids: Sequence[str], feats: Sequence[Tensor] | Tensor, where: str,
                   offsets: Tensor | None = None) -> None:
    """DataError naming the first cut whose features hold a non-finite value or one beyond
    ±:data:`FEATURE_LIMIT`. ``feats``: one (T, F) tensor per cut, or all frames concatenated
    (N, F) with the cuts' ``offsets`` (N+1,). One ``aminmax`` pass per tensor (NaN propagates
    into it); the offending cut and frame are searched only on failure."""
    if isinstance(feats, Tensor):
        if _in_range(feats):
            return
        if offsets is None:
            raise ValueError("check_features: concatenated features need their offsets")
        row = _first_bad_row(feats)
        u = int(torch.searchsorted(offsets, torch.tensor([row]), right=True)[0]) - 1
        _refuse(cut_ids[u], feats[row], row - int(offsets[u]), where)
    for cid, x in zip(cut_ids, feats):
        if not _in_range(x):
            row = _first_bad_row(x)
            _refuse(cid, x[row], row, where)


def _in_range(x: Tensor) -> bool:
    if x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x.detach())
    return bool(lo >= -FEATURE_LIMIT) and bool(hi <= FEATURE_LIMIT)  # False for NaN


def _first_bad_row(x: Tensor) -> int:
    bad = ~(x.detach().abs() <= FEATURE_LIMIT)  # NaN compares False
    return int(bad.reshape(x.shape[0], -1).any(1).nonzero()[0])


def _refuse(cut_id: str, row: Tensor, frame: int, where: str) -> None:
    from hfasr.errors import DataError

    bad = row[~(row.abs() <= FEATURE_LIMIT)]
    value = float(bad[0]) if bad.numel() else float("nan")
    kind = "a non-finite" if not math.isfinite(value) else f"an absurd (|x| > {FEATURE_LIMIT:g})"
    raise DataError(f"cut '{cut_id}' of {where}: {kind} feature value ({value:g}) in frame {frame}; "
                    "check its audio and features (hfasr features)")
