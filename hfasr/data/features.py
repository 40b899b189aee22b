"""Fbank features with lhotse, stored in lilcom archives, and global mean/variance statistics.

``hfasr features <data-dir> --task T`` reads ``<data-dir>/T_cuts_<split>.jsonl.gz`` (written by
``hfasr prepare``), computes fbank for every split (optionally speed-perturbing the training
set by 0.9/1.0/1.1), stores them with :class:`lhotse.LilcomChunkyWriter` under
``<data-dir>/feats/`` and writes ``T_feats_<split>.jsonl.gz`` plus the training set's global
mean / standard deviation per bin as ``T_stats.pt`` (a dict of tensors, ``torch.load``-able
with ``weights_only=True``).

Checks: every cut's audio is read here (a file corrupted after ``prepare`` is found), its samples
must be finite and within :data:`~hfasr.data.audio.MAX_ABS_SAMPLE`, and its features finite and
within :data:`MAX_ABS_FEATURE`; a bad cut is a :class:`DataError` naming the utterance and its
file, or with ``skip_bad`` left out and listed in ``<data-dir>/<task>_feats_skipped.txt``: the
cuts written plus the cuts listed always equal the cuts read. Outputs are staged
(:func:`hfasr.fileio.staged_dir`): the archives, manifests, stats and skip list of all splits are
written to a temporary directory and published together only when every split succeeded, so
a failed run leaves the previous features (and the manifests pointing at them) intact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lhotse import CutSet, Fbank, FbankConfig, Features, LilcomChunkyWriter
from lhotse.utils import fastcopy

from hfasr.config import bounded, check_ranges, ordered
from hfasr.data.audio import check_sample_array
from hfasr.data.corpora import SPLITS, load_cuts, manifest_path, write_cuts
from hfasr.errors import DataError
from hfasr.fileio import load_torch, save_torch, staged_dir, write_text

log = logging.getLogger(__name__)

# Largest |value| accepted in a feature matrix: log-mel energies of audio within full scale lie
# within about ±40; anything beyond this is corrupt data, not speech.
MAX_ABS_FEATURE = 1e4


@dataclass
class FeatureConfig:
    """Options of ``hfasr features`` (fbank as in Kaldi: 25 ms window, 10 ms shift)."""

    num_mel_bins: int = bounded(40, ge=1)  # mel filters = feature dimension
    frame_length: float = bounded(0.025, gt=0)  # seconds
    frame_shift: float = bounded(0.01, gt=0)  # seconds
    dither: float = bounded(0.0, ge=0)  # 0 keeps features deterministic
    low_freq: float = bounded(20.0, ge=0)  # Hz
    high_freq: float = bounded(0.0)  # Hz; <= 0 means Nyquist + high_freq (Kaldi's convention)
    speed_perturb: bool = False  # add 0.9x and 1.1x speed copies of the training set
    # stored features: "none" = fbank as computed; "speaker" = mean and variance normalised per
    # speaker over all of the speaker's utterances in the split (Kaldi's apply-cmvn with spk2utt;
    # a speed-perturbed copy counts as its own speaker)
    cmvn: Literal["none", "speaker"] = "none"
    num_jobs: int = bounded(1, ge=1)  # extraction processes; >1 only pays off on large corpora (worker start-up)

    def __post_init__(self) -> None:
        check_ranges(self)
        ordered(self, "frame_shift", "frame_length")
        if self.high_freq > 0:  # otherwise relative to the Nyquist frequency, known only with the audio
            ordered(self, "low_freq", "high_freq", strict=True)


def make_extractor(cfg: FeatureConfig, sampling_rate: int) -> Fbank:
    return Fbank(FbankConfig(sampling_rate=sampling_rate, num_filters=cfg.num_mel_bins,
                             frame_length=cfg.frame_length, frame_shift=cfg.frame_shift,
                             dither=cfg.dither, low_freq=cfg.low_freq, high_freq=cfg.high_freq))


def _sampling_rate(cuts: CutSet, where: str) -> int:
    rates = {c.sampling_rate for c in cuts}
    if len(rates) != 1:
        raise DataError(f"{where}: cuts have mixed sampling rates {sorted(rates)}; resample them first")
    return rates.pop()


def check_features(x: np.ndarray, where: str) -> None:
    """DataError naming ``where`` unless every value of the feature matrix ``x`` (T, F) is finite
    and within ±:data:`MAX_ABS_FEATURE`."""
    x = np.asarray(x)
    finite = np.isfinite(x)
    if not finite.all():
        frames = np.flatnonzero(~finite.all(axis=-1)) if x.ndim == 2 else np.flatnonzero(~finite)
        raise DataError(f"{where}: {int(np.size(x) - np.count_nonzero(finite))} non-finite (NaN/inf) feature "
                        f"value(s) in {len(frames)} frame(s), the first at frame {int(frames[0])}")
    if x.size and float(np.abs(x).max()) > MAX_ABS_FEATURE:
        big = np.abs(x) > MAX_ABS_FEATURE
        frames = np.flatnonzero(big.any(axis=-1)) if x.ndim == 2 else np.flatnonzero(big)
        raise DataError(f"{where}: absurd feature value {float(np.abs(x).max()):.3g} (limit {MAX_ABS_FEATURE:g}) in "
                        f"{len(frames)} frame(s), the first at frame {int(frames[0])}")


def cut_source(cut) -> str:
    """The audio file(s) of ``cut``, for messages."""
    rec = getattr(cut, "recording", None)
    return ", ".join(str(src.source) for src in rec.sources) if rec is not None else "no recording"


_ARCHIVES: dict[str, Features] = {}  # FeatureRef's shared per-archive Features templates


class FeatureRef:
    """What reading one cut's features needs, without the rest of its manifest entry (recording,
    supervisions): the cut id, its storage key, its span, and a :class:`lhotse.Features`
    template shared by every cut of the same archive. Streamed training keeps one per utterance
    in place of the cut: about 0.3 kB against 3.3 kB for a lhotse cut with its features.
    It quacks like a cut for :func:`cut_features`; :meth:`load_features` returns what
    ``MonoCut.load_features`` does."""

    __slots__ = ("archive", "duration", "feat_duration", "feat_start", "id", "key", "num_frames", "start")
    has_features = True

    def __init__(self, cut) -> None:
        if not cut.has_features:
            raise DataError(f"cut '{cut.id}' has no features")
        f = cut.features
        tmpl = fastcopy(f, storage_key="", start=0.0, duration=0.0, num_frames=0, recording_id=None)
        self.archive = _ARCHIVES.setdefault(repr(tmpl), tmpl)
        self.id, self.key = cut.id, f.storage_key
        self.feat_start, self.feat_duration = f.start, f.duration
        self.start, self.duration, self.num_frames = cut.start, cut.duration, cut.num_frames

    @property
    def features(self) -> Features:
        return fastcopy(self.archive, storage_key=self.key, start=self.feat_start, duration=self.feat_duration,
                        num_frames=self.num_frames)

    def load_features(self) -> np.ndarray:
        feats = self.features.load(start=self.start, duration=self.duration)
        d = feats.shape[0] - self.num_frames  # lhotse forgives one frame either way, as MonoCut does
        if d == 1:
            feats = feats[: self.num_frames, :]
        elif d == -1:
            feats = np.concatenate((feats, feats[-1:, :]), axis=0)
        return feats


def cut_features(cut, manifest: str | Path) -> np.ndarray:
    """The checked features (T, F) of ``cut`` of ``manifest``: DataError naming the cut, the
    manifest and the archive when it has none, its archive cannot be read, or a value is
    non-finite or absurd (:func:`check_features`)."""
    if not cut.has_features:
        raise DataError(f"cut '{cut.id}' of {manifest} has no features")
    archive = cut.features.storage_path
    try:
        x = cut.load_features()
    except Exception as e:  # truncated / replaced archive: lilcom, OSError, ...
        raise DataError(f"cut '{cut.id}' of {manifest}: cannot read its features from {archive} "
                        f"({type(e).__name__}: {str(e)[:200]}); re-run `hfasr features`") from e
    check_features(x, f"cut '{cut.id}' of {manifest} ({archive})")
    return x


def _extract_one(cut, extractor: Fbank, writer: LilcomChunkyWriter):
    """Load ``cut``'s audio, check it, compute and check its fbank, store it; return the cut
    with its :class:`~lhotse.Features` (as ``DataCut.compute_and_store_features`` would)."""
    where = f"utterance '{cut.id}' ({cut_source(cut)})"
    try:
        samples = cut.load_audio()
    except Exception as e:  # lhotse's AudioLoadingError, DurationMismatchError, libsndfile errors
        raise DataError(f"{where}: audio could not be read ({type(e).__name__}: {str(e)[:200]})") from e
    check_sample_array(samples, where)
    sr = cut.sampling_rate
    feats = extractor.extract(samples, sr)
    check_features(feats, where)
    key = writer.write(cut.id, feats)
    info = Features(start=cut.start, duration=round(samples.shape[1] / sr, ndigits=8), type=extractor.name,
                    num_frames=feats.shape[0], num_features=feats.shape[1], frame_shift=extractor.frame_shift,
                    sampling_rate=sr, channels=cut.channel, storage_type=writer.name,
                    storage_path=str(writer.storage_path), storage_key=key)
    return fastcopy(cut, features=info)


def _extract_chunk(cuts: list, cfg: FeatureConfig, sampling_rate: int, storage: str, skip_bad: bool,
                   progress: bool = False) -> tuple[list, list[tuple[str, str]]]:
    """Features of ``cuts`` stored in one archive ``storage``; returns ``(cuts with features,
    [(cut id, reason)] of the cuts left out)`` (left out only with ``skip_bad``; otherwise the
    first bad cut's DataError propagates). Runs in a worker process with ``num_jobs > 1``."""
    from tqdm import tqdm

    extractor = make_extractor(cfg, sampling_rate)
    done, skipped = [], []
    with LilcomChunkyWriter(storage) as writer:
        for cut in tqdm(cuts, desc="fbank", disable=not progress, leave=False):
            try:
                done.append(_extract_one(cut, extractor, writer))
            except DataError as e:
                if not skip_bad:
                    raise
                log.warning("skipping %s", e)
                skipped.append((cut.id, str(e)))
    return done, skipped


def _extract(cuts: list, cfg: FeatureConfig, sampling_rate: int, storage: Path, skip_bad: bool,
             progress: bool) -> tuple[list, list[tuple[str, str]]]:
    """:func:`_extract_chunk` over ``cfg.num_jobs`` processes (archives ``storage/feats-<i>``)."""
    if cfg.num_jobs <= 1 or len(cuts) < 2:
        return _extract_chunk(cuts, cfg, sampling_rate, str(storage), skip_bad, progress)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    n = min(cfg.num_jobs, len(cuts))
    storage.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as ex:
        futures = [ex.submit(_extract_chunk, cuts[i::n], cfg, sampling_rate, str(storage / f"feats-{i}"), skip_bad)
                   for i in range(n)]
        results = [f.result() for f in futures]
    return [c for done, _ in results for c in done], [x for _, sk in results for x in sk]


def _relocate(cuts: CutSet, stage: Path, final: Path) -> CutSet:
    """The cuts with feature archive paths under ``stage`` moved to the same place under ``final``."""
    def move(c):
        path = c.features.storage_path
        if path.startswith(str(stage) + "/"):
            return fastcopy(c, features=fastcopy(c.features, storage_path=str(final) + path[len(str(stage)):]))
        return c
    return CutSet.from_cuts(move(c) for c in cuts)


def global_stats(cuts: CutSet, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin mean and standard deviation (floored at 1e-5) over all frames of ``cuts``,
    accumulated per utterance in float64 (Chan et al.'s pairwise update); every matrix is
    checked (:func:`cut_features`), so one corrupt utterance is an error naming it instead of a
    std of 1e28 that silently flattens every feature."""
    n, mean, m2 = 0, None, None
    for c in cuts:
        x = cut_features(c, where).astype(np.float64)
        k = x.shape[0]
        if k == 0:
            continue
        mk = x.mean(0)
        m2k = ((x - mk) ** 2).sum(0)
        if mean is None:
            n, mean, m2 = k, mk, m2k
            continue
        delta = mk - mean
        tot = n + k
        mean = mean + delta * (k / tot)
        m2 = m2 + m2k + delta**2 * (n * k / tot)
        n = tot
    if mean is None:
        raise DataError(f"{where}: no feature frames to compute CMVN statistics from")
    std = np.maximum(np.sqrt(m2 / n), 1e-5)
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


def compute_features(data_dir: str | Path, task: str, cfg: FeatureConfig | None = None,
                     progress: bool = True, skip_bad: bool = False) -> dict[str, CutSet]:
    """Compute and store fbank for ``task``'s train/dev/test; return the CutSets with features.

    A bad cut (unreadable audio, non-finite or absurd samples or features) is a DataError naming
    it; with ``skip_bad`` it is left out and listed in ``<data_dir>/<task>_feats_skipped.txt``.
    Nothing is published unless every split succeeded and kept at least one cut.
    """
    cfg = cfg or FeatureConfig()
    data_dir = Path(data_dir).resolve()
    if cfg.cmvn not in ("none", "speaker"):
        raise DataError(f"cmvn: expected none or speaker, got {cfg.cmvn!r}")
    if cfg.num_jobs > 1:
        torch.set_num_threads(1)  # worker processes + intra-op threads can deadlock (lhotse)
    sources = {}
    for split in SPLITS:  # every input is read (and checked) before anything is computed
        src = manifest_path(data_dir, task, split)
        cuts = load_cuts(src)
        sources[split] = (src, cuts, _sampling_rate(cuts, str(src)))
    out = {}
    skipped: list[tuple[str, str]] = []
    with staged_dir(data_dir) as stage:
        (stage / "feats").mkdir()
        for split, (src, cuts, sr) in sources.items():
            if split == "train" and cfg.speed_perturb:
                cuts = (cuts + cuts.perturb_speed(0.9) + cuts.perturb_speed(1.1)).to_eager()
            cuts = list(cuts)
            log.info("fbank for %s/%s: %d cuts", task, split, len(cuts))
            done, bad = _extract(cuts, cfg, sr, stage / "feats" / f"{task}_{split}", skip_bad, progress)
            if len(done) + len(bad) != len(cuts):  # never silent: every cut read is written or listed
                lost = sorted({c.id for c in cuts} - {c.id for c in done} - {i for i, _ in bad})
                raise DataError(f"{src}: {len(cuts)} cuts read but {len(done)} written and {len(bad)} skipped "
                                f"(lost: {', '.join(lost[:5])})")
            skipped += [(f"{split}/{cid}", why) for cid, why in bad]
            if not done:
                raise DataError(f"{src}: no cut of the {split} split has usable features ({len(bad)} bad); "
                                f"nothing was written")
            # lhotse returns cuts in completion order with multiple jobs: keep a stable order.
            with_feats = CutSet.from_cuts(sorted(done, key=lambda c: c.id))
            if cfg.cmvn == "speaker":
                with_feats = speaker_cmvn(with_feats, stage / "feats" / f"{task}_{split}_spkcmvn")
            out[split] = with_feats
        final = manifest_path(data_dir, task, "train", "feats")
        mean, std = global_stats(out["train"], f"{final} (staged)")
        save_stats(stage / f"{task}_stats.pt", mean, std)
        for split in SPLITS:
            out[split] = _relocate(out[split], stage, data_dir)
            write_cuts(out[split], manifest_path(stage, task, split, "feats"),
                       manifest_path(data_dir, task, split, "feats"))
        write_text(stage / f"{task}_feats_skipped.txt", "".join(f"{i}\t{why}\n" for i, why in skipped))
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
            feats = [cut_features(c, f"the cuts normalised into {storage}").astype(np.float64) for c in group]
            x = np.concatenate(feats)
            mean, std = x.mean(0), np.maximum(x.std(0), 1e-5)
            for c, f in zip(group, feats):
                y = ((f - mean) / std).astype(np.float32)
                check_features(y, f"utterance '{c.id}' after speaker CMVN")
                key = writer.write(c.id, y)
                out[c.id] = fastcopy(c, features=fastcopy(c.features, storage_type=writer.name,
                                                              storage_path=str(writer.storage_path), storage_key=key))
    log.info("speaker CMVN over %d speakers -> %s", len(groups), storage)
    return CutSet.from_cuts([out[c.id] for c in cuts])


def save_stats(path: Path, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Write global CMVN stats atomically (fsync'ed) as ``{"mean": (F,), "std": (F,)}``."""
    save_torch({"mean": mean.float(), "std": std.float()}, path)


def load_stats(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``(mean, std)`` written by :func:`save_stats`; a missing, truncated or tampered file,
    or one whose mean / std are not equal-length vectors of finite values with std > 0, is a
    DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: CMVN stats not found; run `hfasr features` first")
    what = "CMVN statistics written by `hfasr features` ({'mean': (F,), 'std': (F,)})"
    d = load_torch(path, what, keys=("mean", "std"))
    mean, std = d["mean"], d["std"]
    if not (isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor) and mean.dim() == 1
            and mean.shape == std.shape and mean.numel() > 0):
        raise DataError(f"{path}: expected {what}; 'mean' and 'std' are not two vectors of one length")
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise DataError(f"{path}: corrupt {what}: non-finite values or a std <= 0; re-run `hfasr features`")
    return mean.float(), std.float()
