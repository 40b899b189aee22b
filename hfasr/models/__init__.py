"""Acoustic models: plain ``torch.nn.Module``s mapping features (B, T, F) to per-frame logits.

- :class:`~hfasr.models.dnn.DNN`: feed-forward DNN on spliced frames (hybrid DNN-HMM).
- ``blstm`` (:mod:`hfasr.models.blstm`): bidirectional LSTM.

Checkpoints are plain dicts (``torch.load(weights_only=True)`` works)::

    {"model_config": {"arch": "dnn", "input_dim": 40, "num_outputs": 120, ...},
     "state_dict": {...}, ...extra entries (training state, metrics)}

``model_config`` holds the architecture name and its constructor arguments; :func:`build_model`
turns it back into a module and :func:`load_model` restores a saved one. A new architecture is
added with :func:`register_model`.

For decoding, :func:`compute_loglikes` turns a model's logits into the pseudo log-likelihoods
``log p(pdf | x) − log prior(pdf)`` that :mod:`hfasr.decode` expects.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hfasr.errors import DataError
from hfasr.fileio import load_torch, save_torch
from hfasr.models.dnn import DNN, DNNConfig, SplicedFrames, splice

__all__ = [
    "DNN",
    "DNNConfig",
    "SplicedFrames",
    "atomic_save",
    "build_model",
    "compute_loglikes",
    "compute_loglikes_set",
    "load_checkpoint",
    "load_model",
    "load_prior",
    "register_model",
    "save_model",
    "splice",
]

# arch name -> class or "module:Class" (imported when first used)
_ARCHS: dict[str, type[nn.Module] | str] = {"dnn": DNN, "blstm": "hfasr.models.blstm:BLSTM",
                                            "mdlstm": "hfasr.models.mdlstm:MDLSTM"}


def register_model(arch: str, cls: type[nn.Module] | str) -> None:
    """Make ``arch`` buildable from a ``model_config`` (``cls`` may be ``"module:Class"``)."""
    _ARCHS[arch] = cls


def _resolve(arch: str) -> type[nn.Module]:
    if arch not in _ARCHS:
        raise DataError(f"unknown model architecture '{arch}' (known: {', '.join(sorted(_ARCHS))})")
    cls = _ARCHS[arch]
    if isinstance(cls, str):
        mod, name = cls.split(":")
        cls = getattr(importlib.import_module(mod), name)
        _ARCHS[arch] = cls
    return cls


def build_model(model_config: dict[str, Any]) -> nn.Module:
    """Build a freshly initialised model from ``{"arch": name, **constructor kwargs}``.

    The returned module carries ``model_config`` as an attribute (what :func:`save_model` saves).
    """
    cfg = dict(model_config)
    arch = cfg.pop("arch", None)
    if arch is None:
        raise DataError(f"model_config has no 'arch': {model_config}")
    try:
        model = _resolve(arch)(**cfg)
    except (TypeError, ValueError) as e:
        raise DataError(f"bad model_config for '{arch}': {e}") from e
    # a model that records its own full config (defaults included) keeps it
    model.model_config = dict(getattr(model, "model_config", None) or model_config)
    return model


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` through :func:`hfasr.fileio.atomic_path` (a per-process
    temporary name, fsync'ed, renamed, the directory fsync'ed): readers never see a partly
    written file, and a crash leaves the previous version intact. A full disk is a
    :class:`DataError` naming ``path`` (the previous version stays valid, no temporary file is
    left): :func:`hfasr.fileio.save_torch`."""
    save_torch(obj, path)


def save_model(path: str | Path, model: nn.Module, **extra: Any) -> None:
    """Atomically write ``{"model_config", "state_dict", **extra}`` (``extra`` must be plain
    data: tensors, numbers, strings, lists, dicts, so that ``weights_only=True`` loads it)."""
    cfg = getattr(model, "model_config", None)
    if cfg is None:
        raise ValueError(f"{type(model).__name__} has no model_config; build it with build_model()")
    atomic_save({"model_config": dict(cfg), "state_dict": model.state_dict(), **extra}, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """:func:`hfasr.fileio.load_torch` (``weights_only=True``: a pickle that would run code is
    refused, never executed); DataError naming the file if missing, truncated, tampered with or
    not a model checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    ckpt = load_torch(path, "checkpoint written by hfasr train (final.pt / checkpoint.pt)", map_location=map_location)
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "state_dict" not in ckpt:
        raise DataError(f"{path}: not a model checkpoint (expected 'model_config' and 'state_dict')")
    return ckpt


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved at ``path`` (final.pt or checkpoint.pt), in eval mode."""
    ckpt = load_checkpoint(path, map_location)
    model = build_model(ckpt["model_config"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise DataError(f"{path}: weights do not match the model config: {e}") from e
    return model.to(map_location).eval()


def load_prior(path: str | Path) -> Tensor:
    """``log_prior`` (num_pdfs,) from a ``prior.pt`` written by ``hfasr train``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prior file not found: {path}")
    d = load_torch(path, "a prior file written by hfasr train (prior.pt)", keys=("log_prior",))
    lp = d["log_prior"]
    if not isinstance(lp, Tensor) or lp.dim() != 1 or lp.numel() == 0 or not lp.is_floating_point():
        raise DataError(f"{path}: 'log_prior' must be a non-empty 1-D float tensor (prior.pt of hfasr train)")
    if not bool(torch.isfinite(lp).all()):
        raise DataError(f"{path}: 'log_prior' has non-finite values (pdf {_first_bad(lp)}); rerun `hfasr train`")
    return lp


def _first_bad(x: Tensor) -> int:
    """The flat index of the first non-finite value of ``x``."""
    return int((~torch.isfinite(x)).reshape(-1).nonzero()[0])


@torch.no_grad()
def compute_loglikes(model: nn.Module, feats: Tensor, log_prior: Tensor | None = None,
                     prior_scale: float = 1.0, device: str | torch.device | None = None,
                     name: str = "the utterance") -> Tensor:
    """Pseudo log-likelihoods (T', num_pdfs) of one utterance's features ``feats`` (T, F):
    ``log_softmax(logits) − prior_scale · log_prior`` (no prior subtracted if ``log_prior`` is
    None). T' = T for a DNN (a frame-stacking model returns its own frame rate). Runs in eval
    mode and returns a float32 CPU tensor. Non-finite features or outputs are a DataError
    naming ``name`` (e.g. ``"cut 'x'"``): never a NaN in the result."""
    if feats.dim() != 2:
        raise ValueError(f"compute_loglikes expects features (T, F), got {tuple(feats.shape)}")
    if not bool(torch.isfinite(feats).all()):
        frame = _first_bad(feats) // max(feats.shape[1], 1)
        raise DataError(f"{name}: non-finite feature value in frame {frame}; check the features (hfasr features)")
    was_training = model.training
    model.eval()
    try:
        dev = device if device is not None else next(model.parameters()).device
        x = feats.to(dev, torch.float32)[None]
        lengths = torch.tensor([feats.shape[0]], dtype=torch.long)
        logp = torch.log_softmax(model(x, lengths)[0].float(), dim=-1)
        if log_prior is not None:
            if log_prior.shape[-1] != logp.shape[-1]:
                raise DataError(f"prior has {log_prior.shape[-1]} pdfs but the model {logp.shape[-1]} outputs")
            logp = logp - prior_scale * log_prior.to(logp)
        if not bool(torch.isfinite(logp).all()):
            frame = _first_bad(logp) // max(logp.shape[1], 1)
            raise DataError(f"{name}: the model gives non-finite outputs (frame {frame}) on finite features; "
                            "the model is broken (retrain it)")
        return logp.cpu()
    finally:
        model.train(was_training)


def compute_loglikes_set(model: nn.Module, utterances: Iterable[tuple[str, Tensor]],
                         log_prior: Tensor | None = None, prior_scale: float = 1.0,
                         device: str | torch.device | None = None) -> dict[str, list]:
    """``{"cut_ids": [...], "loglikes": [(T, K), ...]}`` (the ``hfasr decode --loglikes`` file
    format) for ``(cut_id, feats)`` pairs."""
    ids, lls = [], []
    for cid, feats in utterances:
        ids.append(cid)
        lls.append(compute_loglikes(model, feats, log_prior, prior_scale, device, name=f"cut '{cid}'"))
    return {"cut_ids": ids, "loglikes": lls}
