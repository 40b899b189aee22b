"""Frame-level training data: features of a CutSet with frame targets from a GMM alignment.

:meth:`FrameData.load` reads ``<data_dir>/<task>_feats_<split>.jsonl.gz`` (``hfasr features``)
and ``<ali_dir>/ali_<split>.pt`` (``hfasr gmm``, see ``docs/formats.md``) and keeps every frame
in memory (the corpora here are at most a few hours: 1 h of 40-dim fbank is 58 MB):

- ``feats`` (N, F) float32: all utterances concatenated, raw (CMVN is part of the model);
- ``targets`` (N,) long: pdf ids; ``phones`` (N,) long: phone ids (MPE, analysis);
- ``offsets`` (U + 1,): utterance u is frames ``offsets[u] : offsets[u + 1]``.

Access for batching (:mod:`hfasr.data.utterances` builds the training batches on it):

- :meth:`FrameData.spliced`: spliced frame rows (B, (2c+1)·F) of any frames, replicating each
  utterance's edge frames, so that they match :class:`hfasr.models.DNN` on whole utterances;
- :meth:`FrameData.collate`: padded utterances (:class:`UtteranceBatch`) for recurrent models.

Every cut of the manifest must have an alignment of the same length (up to
``length_tolerance`` frames, after which both are cut to the shorter); otherwise a
:class:`~hfasr.errors.DataError` names the cut. Cuts without an alignment (the aligner lists
the ones it gave up on in ``ali_<split>_excluded.txt``) are an error unless
``drop_unaligned`` is set, which drops them with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from hfasr.config import bounded, check_ranges
from hfasr.errors import DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # target of padded frames (torch.nn.functional.cross_entropy's default)


@dataclass
class FrameDataConfig:
    """How alignments are matched to features (the ``data:`` section of a training config)."""

    drop_unaligned: bool = False  # cuts without an alignment: error (false) or dropped with a warning (true)
    length_tolerance: int = bounded(0, ge=0)  # allowed |alignment frames − feature frames|; both are cut to the shorter

    def __post_init__(self) -> None:
        check_ranges(self)


def alignment_path(ali_dir: str | Path, split: str) -> Path:
    """``<ali_dir>/ali_<split>.pt``."""
    return Path(ali_dir) / f"ali_{split}.pt"


def feats_manifest_path(data_dir: str | Path, task: str, split: str) -> Path:
    """``<data_dir>/<task>_feats_<split>.jsonl.gz``."""
    return Path(data_dir) / f"{task}_feats_{split}.jsonl.gz"


def load_alignment(path: str | Path, mmap: bool = False) -> dict:
    """Read and check an alignment file (``docs/formats.md``); DataError naming the file.
    ``mmap``: its tensors are views of the memory-mapped file (no private copy: a streamed
    loader that keeps int32 copies of what it needs then drops the map)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"alignment file not found: {path}; run `hfasr gmm` first")
    from hfasr.fileio import load_torch

    ali = load_torch(path, "an alignment file written by `hfasr gmm` or `hfasr align`", mmap=mmap)
    need = ("cut_ids", "pdfs", "num_pdfs")
    if not isinstance(ali, dict) or any(k not in ali for k in need):
        raise DataError(f"{path}: expected a dict with keys {list(need)} (+ 'tids', 'phones')")
    n = len(ali["cut_ids"])
    for k in ("pdfs", "tids", "phones"):
        if k in ali and len(ali[k]) != n:
            raise DataError(f"{path}: {n} cut ids but {len(ali[k])} entries in '{k}'")
    if len(set(ali["cut_ids"])) != n:
        raise DataError(f"{path}: duplicate cut ids")
    return ali


def _excluded(ali_path: Path) -> dict[str, str]:
    """Cuts the aligner listed in ``ali_<split>_excluded.txt`` (id → reason), if that file exists."""
    p = ali_path.with_name(ali_path.stem + "_excluded.txt")
    if not p.is_file():
        return {}
    out = {}
    for line in p.read_text().splitlines():
        if line.strip():
            cid, _, why = line.partition("\t")
            out[cid] = why or "excluded"
    return out


@dataclass
class UtteranceBatch:
    """Padded utterances: ``feats`` (B, T, F), ``lengths`` (B,), ``targets`` / ``phones`` (B, T)
    long with :data:`IGNORE_INDEX` at padded frames, ``indices`` (B,) into the FrameData."""

    cut_ids: list[str]
    feats: Tensor
    lengths: Tensor
    targets: Tensor
    phones: Tensor | None
    indices: Tensor


class FrameData:
    """All frames of one split in memory (see the module docstring)."""

    def __init__(self, cut_ids: Sequence[str], feats: Sequence[Tensor], targets: Sequence[Tensor],
                 num_pdfs: int, phones: Sequence[Tensor] | None = None) -> None:
        if not (len(cut_ids) == len(feats) == len(targets)):
            raise ValueError("cut_ids, feats and targets must have the same length")
        if not cut_ids:
            raise DataError("no utterances")
        for c, x, y in zip(cut_ids, feats, targets):
            if x.dim() != 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
                raise DataError(f"cut '{c}': features {tuple(x.shape)} do not match targets {tuple(y.shape)}")
        self.cut_ids = list(cut_ids)
        self.num_pdfs = int(num_pdfs)
        lens = torch.tensor([x.shape[0] for x in feats], dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
        self.feats = torch.cat([x.float() for x in feats])
        self.targets = torch.cat([y.long() for y in targets])
        self.phones = torch.cat([p.long() for p in phones]) if phones is not None else None
        bad = (self.targets < 0) | (self.targets >= self.num_pdfs)
        if bad.any():
            u = int(torch.searchsorted(self.offsets, bad.nonzero()[0], right=True)[0]) - 1
            raise DataError(f"cut '{self.cut_ids[u]}': pdf ids outside [0, {self.num_pdfs})")

    # --- sizes ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.cut_ids)

    @property
    def num_frames(self) -> int:
        return int(self.feats.shape[0])

    @property
    def feat_dim(self) -> int:
        return int(self.feats.shape[1])

    @property
    def lengths(self) -> Tensor:
        """Frames per utterance (U,)."""
        return self.offsets[1:] - self.offsets[:-1]

    def shuffled_frames(self, generator: torch.Generator) -> Tensor:
        """A random permutation of all frame indices (the first-order minibatch order)."""
        return torch.randperm(self.num_frames, generator=generator)

    def pdf_counts(self) -> Tensor:
        """Frames per pdf (num_pdfs,), float64."""
        return torch.bincount(self.targets, minlength=self.num_pdfs).double()

    # --- access --------------------------------------------------------------------------------
    def apply_utterance_cmn(self) -> None:
        """Subtract each utterance's mean feature vector (in place), as ``DNN(utt_cmn=True)``
        does on its input, so that spliced training rows match what the model sees."""
        for u in range(len(self)):
            s, e = int(self.offsets[u]), int(self.offsets[u + 1])
            self.feats[s:e] -= self.feats[s:e].mean(0, keepdim=True)

    def utterance(self, u: int) -> tuple[Tensor, Tensor]:
        """Features (T, F) and targets (T,) of utterance ``u``."""
        s, e = int(self.offsets[u]), int(self.offsets[u + 1])
        return self.feats[s:e], self.targets[s:e]

    def spliced(self, idx: Tensor, context: int) -> Tensor:
        """Raw spliced rows (len(idx), (2c+1)·F) of global frame indices ``idx``; the context
        is clamped to each frame's utterance (edge frames replicated)."""
        idx = idx.long()
        if context == 0:
            return self.feats[idx]
        u = torch.searchsorted(self.offsets, idx, right=True) - 1
        first, last = self.offsets[u], self.offsets[u + 1] - 1
        src = idx[:, None] + torch.arange(-context, context + 1)[None, :]
        src = torch.minimum(torch.maximum(src, first[:, None]), last[:, None])
        return self.feats[src].reshape(idx.shape[0], -1)

    def collate(self, indices: Sequence[int]) -> UtteranceBatch:
        """Pad utterances ``indices`` into an :class:`UtteranceBatch`."""
        lens = self.lengths[list(indices)]
        B, T = len(indices), int(lens.max())
        feats = self.feats.new_zeros(B, T, self.feat_dim)
        targets = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        phones = torch.full((B, T), IGNORE_INDEX, dtype=torch.long) if self.phones is not None else None
        for b, u in enumerate(indices):
            s, e = int(self.offsets[u]), int(self.offsets[u + 1])
            feats[b, : e - s] = self.feats[s:e]
            targets[b, : e - s] = self.targets[s:e]
            if phones is not None:
                phones[b, : e - s] = self.phones[s:e]
        return UtteranceBatch([self.cut_ids[u] for u in indices], feats, lens, targets, phones,
                              torch.tensor(list(indices), dtype=torch.long))

    # --- loading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, data_dir: str | Path, task: str, split: str, ali_dir: str | Path,
             cfg: FrameDataConfig | None = None, progress: bool = False) -> FrameData:
        """Features of ``<data_dir>/<task>_feats_<split>.jsonl.gz`` + targets of
        ``<ali_dir>/ali_<split>.pt`` (see the module docstring for the checks; a truncated or
        corrupt manifest, an unreadable archive or non-finite features are DataErrors naming the
        file or cut)."""
        ids, feats, targets, phones = [], [], [], []
        aligned = AlignedCuts(data_dir, task, split, ali_dir, cfg)
        for _, cid, x, y, ph in aligned.iterate(progress):
            ids.append(cid)
            feats.append(x)
            targets.append(y)
            if ph is not None:
                phones.append(ph)
        return cls(ids, feats, targets, aligned.num_pdfs, phones if aligned.have_phones else None)


class AlignedCuts:
    """The cuts of a feature manifest matched with their alignment (the checks of the module
    docstring), read one at a time: :meth:`iterate` yields ``(cut, cut_id, features (T, F)
    float32, pdfs (T,) long, phones (T,) long or None)``, both cut to the shorter length.
    :class:`FrameData` keeps them all; :class:`hfasr.data.stream.StreamedFrameData` keeps the
    targets only and reads the features again when a batch needs them. ``mmap_alignment``: the
    alignment's tensors are views of the mapped file; ``lazy``: the manifest is read while
    iterating, not held whole (the streamed loaders)."""

    def __init__(self, data_dir: str | Path, task: str, split: str, ali_dir: str | Path,
                 cfg: FrameDataConfig | None = None, mmap_alignment: bool = False, lazy: bool = False) -> None:
        from hfasr.data.corpora import iter_cuts, load_cuts

        self.cfg = cfg or FrameDataConfig()
        self.task, self.split = task, split
        self.manifest = feats_manifest_path(data_dir, task, split)
        if not self.manifest.is_file():
            raise DataError(f"feature manifest not found: {self.manifest}; run `hfasr features` first")
        self.ali_path = alignment_path(ali_dir, split)
        self.ali = load_alignment(self.ali_path, mmap=mmap_alignment)
        self.num_pdfs = int(self.ali["num_pdfs"])
        self.have_phones = "phones" in self.ali
        hint = "run `hfasr features` first"
        manifest = self.manifest  # (not self: no reference cycle keeping the alignment alive)
        self.cuts = (lambda: iter_cuts(manifest, hint)) if lazy else load_cuts(manifest, hint)

    def iterate(self, progress: bool = False):
        from tqdm import tqdm

        from hfasr.data.features import cut_features

        cfg, ali, ali_path, manifest = self.cfg, self.ali, self.ali_path, self.manifest
        pos = {c: i for i, c in enumerate(ali["cut_ids"])}
        excluded = _excluded(ali_path)
        missing, n = [], 0
        cuts = self.cuts() if callable(self.cuts) else self.cuts
        for cut in tqdm(cuts, desc=f"load {self.task}/{self.split}", disable=not progress, leave=False):
            i = pos.get(cut.id)
            if i is None:
                if not cfg.drop_unaligned:
                    why = f" ({ali_path.stem}_excluded.txt: {excluded[cut.id]})" if cut.id in excluded else ""
                    raise DataError(f"cut '{cut.id}' of {manifest} has no alignment in {ali_path}{why}; "
                                    "set `data: {drop_unaligned: true}` to train without it")
                missing.append(cut.id)
                continue
            x = torch.from_numpy(cut_features(cut, manifest)).float()
            y = ali["pdfs"][i].long()
            if abs(x.shape[0] - y.shape[0]) > cfg.length_tolerance:
                raise DataError(f"cut '{cut.id}': alignment has {y.shape[0]} frames but its features have "
                                f"{x.shape[0]} ({ali_path} vs {manifest}; tolerance {cfg.length_tolerance})")
            T = min(x.shape[0], y.shape[0])
            n += 1
            yield cut, cut.id, x[:T], y[:T], (ali["phones"][i].long()[:T] if self.have_phones else None)
        if missing:
            log.warning("%s/%s: dropped %d of %d cuts without an alignment in %s (e.g. %s)", self.task, self.split,
                        len(missing), len(missing) + n, ali_path, ", ".join(missing[:5]))
        if not n:
            raise DataError(f"{manifest}: no cut has an alignment in {ali_path}")
        unused = len(pos) - n
        if unused:
            log.info("%s: %d aligned cuts are not in %s (ignored)", ali_path, unused, manifest)
