"""Fbank features with lhotse, stored in lilcom archives, and global mean/variance statistics.

``hfasr features <data-dir> --task T`` reads ``<data-dir>/T_cuts_<split>.jsonl.gz`` (written by
``hfasr prepare``), computes fbank for every split (optionally speed-perturbing the training
set by 0.9/1.0/1.1), stores them with :class:`lhotse.LilcomChunkyWriter` under
``<data-dir>/feats/`` and writes ``T_feats_<split>.jsonl.gz`` plus the training set's global
mean / standard deviation per bin as ``T_stats.pt`` (a dict of tensors, ``torch.load``-able
with ``weights_only=True``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lhotse import CutSet, Fbank, FbankConfig, LilcomChunkyWriter, load_manifest
from lhotse.utils import fastcopy

from hfasr.data.corpora import SPLITS, manifest_path
from hfasr.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class FeatureConfig:
    """Options of ``hfasr features`` (fbank as in Kaldi: 25 ms window, 10 ms shift)."""

    num_mel_bins: int = 40  # mel filters = feature dimension
    frame_length: float = 0.025  # seconds
    frame_shift: float = 0.01  # seconds
    dither: float = 0.0  # 0 keeps features deterministic
    low_freq: float = 20.0  # Hz
    high_freq: float = 0.0  # Hz; <= 0 means Nyquist + high_freq (Kaldi's convention)
    speed_perturb: bool = False  # add 0.9x and 1.1x speed copies of the training set
    # stored features: "none" = fbank as computed; "speaker" = mean and variance normalised per
    # speaker over all of the speaker's utterances in the split (Kaldi's apply-cmvn with spk2utt;
    # a speed-perturbed copy counts as its own speaker)
    cmvn: Literal["none", "speaker"] = "none"
    num_jobs: int = 1  # extraction processes; >1 only pays off on large corpora (worker start-up)


def make_extractor(cfg: FeatureConfig, sampling_rate: int) -> Fbank:
    return Fbank(FbankConfig(sampling_rate=sampling_rate, num_filters=cfg.num_mel_bins,
                             frame_length=cfg.frame_length, frame_shift=cfg.frame_shift,
                             dither=cfg.dither, low_freq=cfg.low_freq, high_freq=cfg.high_freq))


def _sampling_rate(cuts: CutSet, where: str) -> int:
    rates = {c.sampling_rate for c in cuts}
    if len(rates) != 1:
        raise DataError(f"{where}: cuts have mixed sampling rates {sorted(rates)}; resample them first")
    return rates.pop()


def compute_features(data_dir: str | Path, task: str, cfg: FeatureConfig | None = None,
                     progress: bool = True) -> dict[str, CutSet]:
    """Compute and store fbank for ``task``'s train/dev/test; return the CutSets with features."""
    cfg = cfg or FeatureConfig()
    data_dir = Path(data_dir).resolve()
    out = {}
    feats_dir = data_dir / "feats"
    feats_dir.mkdir(parents=True, exist_ok=True)
    if cfg.num_jobs > 1:
        torch.set_num_threads(1)  # worker processes + intra-op threads can deadlock (lhotse)
    for split in SPLITS:
        src = manifest_path(data_dir, task, split)
        if not src.is_file():
            raise DataError(f"{src}: manifest not found; run `hfasr prepare` first")
        cuts = load_manifest(src)
        sr = _sampling_rate(cuts, str(src))
        if split == "train" and cfg.speed_perturb:
            cuts = (cuts + cuts.perturb_speed(0.9) + cuts.perturb_speed(1.1)).to_eager()
        log.info("fbank for %s/%s: %d cuts", task, split, len(cuts))
        storage = feats_dir / f"{task}_{split}"
        with_feats = cuts.compute_and_store_features(
            extractor=make_extractor(cfg, sr), storage_path=storage, num_jobs=cfg.num_jobs,
            storage_type=LilcomChunkyWriter, progress_bar=progress,
        ).to_eager()
        # lhotse returns cuts in completion order with multiple jobs: keep a stable order.
        with_feats = CutSet.from_cuts(sorted(with_feats, key=lambda c: c.id))
        if cfg.cmvn == "speaker":
            with_feats = speaker_cmvn(with_feats, feats_dir / f"{task}_{split}_spkcmvn")
        elif cfg.cmvn != "none":
            raise DataError(f"cmvn: expected none or speaker, got {cfg.cmvn!r}")
        with_feats.to_file(manifest_path(data_dir, task, split, "feats"))
        out[split] = with_feats
    stats = out["train"].compute_global_feature_stats()
    save_stats(data_dir / f"{task}_stats.pt", torch.from_numpy(stats["norm_means"]), torch.from_numpy(stats["norm_stds"]))
    return out


def cmvn_speaker(cut) -> str:
    """The CMVN group of a cut: its supervision's speaker (the cut id if it has none), with a
    speed-perturbed copy's ``_sp<factor>`` suffix appended."""
    spk = (cut.supervisions[0].speaker if cut.supervisions else None) or cut.id
    tail = cut.id.rsplit("_sp", 1)
    return f"{spk}_sp{tail[1]}" if len(tail) == 2 and tail[1].replace(".", "").isdigit() else spk


def speaker_cmvn(cuts: CutSet, storage: Path) -> CutSet:
    """Per-speaker mean / variance normalised copies of ``cuts``' features, stored at ``storage``
    (lilcom); returns the cuts pointing at them, in the same order."""
    groups: dict[str, list] = {}
    for c in cuts:
        groups.setdefault(cmvn_speaker(c), []).append(c)
    out = {}
    with LilcomChunkyWriter(storage) as writer:
        for group in groups.values():
            feats = [c.load_features().astype(np.float64) for c in group]
            x = np.concatenate(feats)
            mean, std = x.mean(0), np.maximum(x.std(0), 1e-5)
            for c, f in zip(group, feats):
                key = writer.write(c.id, ((f - mean) / std).astype(np.float32))
                out[c.id] = fastcopy(c, features=fastcopy(c.features, storage_type=writer.name,
                                                              storage_path=str(writer.storage_path), storage_key=key))
    log.info("speaker CMVN over %d speakers -> %s", len(groups), storage)
    return CutSet.from_cuts([out[c.id] for c in cuts])


def save_stats(path: Path, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Write global CMVN stats atomically as ``{"mean": (F,), "std": (F,)}``."""
    tmp = path.with_suffix(".tmp")
    torch.save({"mean": mean.float(), "std": std.float()}, tmp)
    tmp.replace(path)


def load_stats(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``(mean, std)`` written by :func:`save_stats`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: CMVN stats not found; run `hfasr features` first")
    d = torch.load(path, weights_only=True)
    return d["mean"], d["std"]
