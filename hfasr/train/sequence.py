"""Lattice-based sequence training (``hfasr train --criterion mmi|bmmi|mpe|smbr``).

The task: fine-tune a CE model (``--init exp/.../final.pt``) with a sequence criterion of
:mod:`hfasr.criteria.sequence` on the denominator lattices of ``hfasr lattices`` and the forced
alignments of ``hfasr gmm`` (the numerator). Examples are whole utterances; the batch criterion
(:class:`SequenceLoss`) gives the training loss (with the optional CE smoothing) and the
configured convex curvature (``sequence.curvature``: fisher | den-block | den-cov; Kingsbury,
Sainath & Soltau 2012). The dev report is the sequence objective per frame (without CE
smoothing; for sMBR/MPE minus the expected frame accuracy), the frame accuracy and, with
``dev_wer``, the WER decoded over ``--graph-dir`` at ``decode_acoustic_scale``.

Drivers:

- ``hf`` (section ``hf:``): gradient on all training utterances but a held-out
  ``hf.heldout_fraction`` of them, G v products on a ``hf.curvature_fraction`` sample, and
  ρ / CG-backtracking / line search with the true sequence objective on the held-out utterances;
  ``hf.num_subsets`` > 1 runs HF on successive subsets with reuse. Runs distributed under
  ``torchrun`` (:mod:`hfasr.train.experiment`).
- ``sgd`` (section ``sgd:``): Kaldi nnet1's ``nnet-train-mmi-sequential`` / ``-mpe-sequential``
  baseline: per-utterance SGD on the summed (not averaged) utterance gradient, learning rate
  1e-5, no momentum, 4 epochs, 4 reports per epoch.

``regenerate_every`` N > 0 re-decodes the training lattices with the current model every N HF
updates (SGD: reports); the lattices are then part of the checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from hfasr.config import TORCH_DEVICE, bounded, check_ranges
from hfasr.criteria.sequence import SeqSupervision, SequenceConfig, SequenceCriterion
from hfasr.data.batching import Batch, make_batches, pad_batch
from hfasr.data.utterances import Utterances, UtteranceSet
from hfasr.errors import ConfigError, DataError
from hfasr.optim import HFConfig
from hfasr.train.drivers import FirstOrderConfig, HFTrainConfig
from hfasr.train.task import Task, check_features

log = logging.getLogger(__name__)

SEQUENCE_CRITERIA = ("mmi", "bmmi", "mpe", "smbr")


@dataclass
class SeqTrainConfig:
    """Options of ``hfasr train --criterion mmi|bmmi|mpe|smbr`` (YAML via ``--config``)."""

    RESUMABLE: ClassVar[tuple[str, ...]] = ("hf.updates", "sgd.epochs", "num_threads", "device", "keep_models",
                                           "select")

    criterion: str = "smbr"  # mmi | bmmi | mpe | smbr (copied into sequence.criterion)
    optimizer: Literal["hf", "sgd"] = "hf"
    # κ, boosting, CE smoothing, curvature; the softmax Fisher at CE scale (fisher_scale 1):
    # κ² under-estimates the curvature of sMBR/MMI and makes every full CG step overshoot
    # (ρ < 0 on the held-out set, measured on FSDD)
    sequence: SequenceConfig = field(default_factory=lambda: SequenceConfig(fisher_scale=1.0))
    # HF: gradient on all training utterances but a held-out 10% (ρ / CG-backtracking / line search
    # with the true sequence objective), G v on a 10% sample of at most 20,000 frames (3.3 min of
    # speech: its linearizations, about 15 kB per frame for a 4 x 256 DNN with its batch, stay in
    # memory through CG, so the cap bounds memory on any corpus); the held-out loss is reported, so the pass over
    # the gradient set after each step (train_loss_after) is off
    hf: HFTrainConfig = field(default_factory=lambda: HFTrainConfig(
        updates=20, heldout_fraction=0.1, curvature_fraction=0.1, curvature_min=16, curvature_max_frames=20000,
        optimizer=HFConfig(
            damping=1e-2, cg_max_iters=50, rho_data="heldout", backtrack_data="heldout",
            linesearch_data="heldout", train_loss_after=False)))
    # the per-utterance SGD baseline (Kaldi nnet1's nnet-train-mmi-sequential / -mpe-sequential):
    # summed (not averaged) utterance gradient, learning rate 1e-5, no momentum, 4 epochs
    sgd: FirstOrderConfig = field(default_factory=lambda: FirstOrderConfig(
        lr=1e-5, momentum=0.0, epochs=4, reports_per_epoch=4, loss="sum"))
    max_frames: int = bounded(20000, ge=1)  # padded frames per forward/backward batch (HF passes, dev evaluation)
    # > 0: the training split is streamed (StreamedSeqSet): features read from disk when a batch
    # needs them (through a cache of this many utterances), lattices memory-mapped per shard with at
    # most lattice_map_mb of mapped pages resident; only alignments (8 bytes per frame) stay in
    # memory. 0 = the whole split in memory (faster on small corpora)
    stream_cache_utts: int = bounded(0, ge=0)
    lattice_map_mb: float = bounded(64.0, gt=0)  # stream_cache_utts > 0: resident lattice pages (with the 64 KiB fault-around) before they are dropped
    train_split: str = "train"
    dev_split: str = "dev"
    regenerate_every: int = bounded(0, ge=0)  # > 0: re-decode the training lattices with the current model every N HF updates / SGD reports
    dev_wer: bool = True  # decode the dev set at every report (needs graph_dir / model_dir)
    decode_acoustic_scale: float = bounded(0.1, gt=0)  # acoustic scale of those dev decodes
    decode_beam: float = bounded(13.0, gt=0)  # their search beam (hfasr decode's --beam)
    decode_max_active: int = bounded(7000, ge=21)  # their most active states per frame (--max-active)
    keep_models: bool = False  # also write models/<update>.pt at every report (as Kaldi's per-epoch nnets)
    # final.pt: "last" = the last accepted report's model; "dev_wer" = the report with the lowest
    # dev WER (the earliest of equals; needs keep_models and dev_wer), i.e. the number of updates
    # chosen on the dev set
    select: Literal["last", "dev_wer"] = "last"
    seed: int = bounded(0, ge=0)
    num_threads: int = bounded(0, ge=0)  # torch threads; 0 = torch's default
    device: str = bounded("cpu", **TORCH_DEVICE)  # cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.criterion not in SEQUENCE_CRITERIA:
            raise ValueError(f"unknown sequence criterion '{self.criterion}' (known: {', '.join(SEQUENCE_CRITERIA)})")
        if self.optimizer not in ("hf", "sgd"):
            raise ValueError(f"sequence training supports optimizers hf and sgd, got '{self.optimizer}'")
        self.sequence.criterion = self.criterion  # type: ignore[assignment]
        if self.select not in ("last", "dev_wer"):
            raise ValueError(f"select must be last or dev_wer, got {self.select!r}")
        if self.select == "dev_wer" and not (self.keep_models and self.dev_wer):
            raise ValueError("select: dev_wer needs keep_models: true and dev_wer: true")
        if self.stream_cache_utts and self.regenerate_every:
            raise ValueError(f"regenerate_every ({self.regenerate_every}) re-decodes the training lattices in "
                             f"memory: it cannot be combined with stream_cache_utts ({self.stream_cache_utts}); "
                             "set one of them to 0")

    @property
    def run_name(self) -> str:
        return f"{self.optimizer}-{self.criterion}"

    def first_order(self) -> FirstOrderConfig:
        """The first-order driver's settings: the ``sgd:`` section."""
        return self.sgd

    def unused_sections(self) -> list[str]:
        """The other optimizer's section (ignored on ``--resume``)."""
        return ["sgd" if self.optimizer == "hf" else "hf"]


# ---------------------------------------------------------------------------------------- data

def load_seq_data(data_dir: str | Path, task: str, split: str, ali_dir: str | Path, lat_file: dict,
                  lat_path: Path, progress: bool = False) -> UtteranceSet:
    """Features + alignment (``FrameData``) + lattice of every cut that has all three, as an
    :class:`~hfasr.data.utterances.UtteranceSet` whose supervisions are
    :class:`~hfasr.criteria.sequence.SeqSupervision`."""
    from hfasr.data.corpora import load_cuts
    from hfasr.data.frames import FrameData, FrameDataConfig, feats_manifest_path

    fd = FrameData.load(data_dir, task, split, ali_dir, FrameDataConfig(drop_unaligned=True), progress=progress)
    if fd.phones is None:
        raise DataError(f"{ali_dir}/ali_{split}.pt has no phone alignment ('phones'); rerun `hfasr gmm`")
    lats = dict(zip(lat_file["cut_ids"], lat_file["lattices"]))
    texts = {c.id: " ".join(s.text for s in c.supervisions)
             for c in load_cuts(feats_manifest_path(data_dir, task, split))}
    ids, utts, skipped = [], [], []
    for u, cid in enumerate(fd.cut_ids):
        lat = lats.get(cid)
        if lat is None:
            skipped.append((cid, "no lattice"))
            continue
        x, y = fd.utterance(u)
        if lat.num_frames != x.shape[0]:
            skipped.append((cid, f"lattice has {lat.num_frames} frames, features/alignment {x.shape[0]}"))
            continue
        s, e = int(fd.offsets[u]), int(fd.offsets[u + 1])
        ids.append(cid)
        utts.append((x.clone(), SeqSupervision(lattice=lat, ref_pdf=y.clone(), ref_phone=fd.phones[s:e].clone())))
    if skipped:
        log.warning("%s/%s: %d of %d aligned cuts skipped (e.g. %s: %s)", task, split, len(skipped), len(fd),
                    *skipped[0])
    if not utts:
        raise DataError(f"{task}/{split}: no cut has features, an alignment in {ali_dir} and a lattice in {lat_path}")
    return UtteranceSet.from_pairs(ids, utts, [texts.get(c, "") for c in ids])


class StreamedSeqSet:
    """The sequence-training utterances of one split, read from disk when a batch needs them.

    Kept in memory per utterance: a :class:`~hfasr.data.features.FeatureRef` (what reading its
    features needs, not the whole cut), the length, the reference pdf and phone alignments
    (int32, 8 bytes per frame) and the transcript. Features are read from the
    lhotse archives through a cache of ``cache_utts`` utterances, lattices from the memory-mapped
    shards of a :class:`~hfasr.lattice.store.LatticeShards` (bounded resident pages). It offers
    the part of :class:`~hfasr.data.utterances.UtteranceSet` that training uses: ``cut_ids``,
    ``texts``, ``lengths``, ``num_frames``, :meth:`text_of` and ``utts`` (a lazy sequence of
    ``(features, SeqSupervision)`` pairs). :meth:`load` makes one pass over the split with the
    checks of :func:`load_seq_data`."""

    streamed = True

    def __init__(self, cuts: Sequence, manifest: Path, lengths: Sequence[int], ref_pdf: Tensor,
                 ref_phone: Tensor, lattices, texts: Sequence[str], cache_utts: int) -> None:
        from collections import OrderedDict

        from hfasr.data.features import FeatureRef

        self._cuts = [c if isinstance(c, FeatureRef) else FeatureRef(c) for c in cuts]  # not the cuts
        self.cut_ids = [c.id for c in self._cuts]
        self.manifest = manifest
        lens = torch.as_tensor(list(lengths), dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
        self.ref_pdf, self.ref_phone = ref_pdf, ref_phone  # (N,) int32, all utterances concatenated
        self.lattices = lattices
        self.texts = list(texts)
        self.cache_utts = int(cache_utts)
        self._cache: OrderedDict[int, Tensor] = OrderedDict()
        self.loads = 0  # utterances whose features were read from disk (tests, diagnostics)

    def __len__(self) -> int:
        return len(self.cut_ids)

    @property
    def lengths(self) -> list[int]:
        return (self.offsets[1:] - self.offsets[:-1]).tolist()

    @property
    def num_frames(self) -> int:
        return int(self.offsets[-1])

    def text_of(self) -> dict[str, str]:
        return dict(zip(self.cut_ids, self.texts))

    def features(self, u: int) -> Tensor:
        x = self._cache.get(u)
        if x is not None:
            self._cache.move_to_end(u)
            return x
        from hfasr.data.stream import read_cached

        x = read_cached(self._cache, self.cache_utts, self._cuts[u], self.manifest,
                        int(self.offsets[u + 1] - self.offsets[u]), u)
        self.loads += 1
        return x

    def __getitem__(self, u: int) -> tuple[Tensor, SeqSupervision]:
        s, e = int(self.offsets[u]), int(self.offsets[u + 1])
        sup = SeqSupervision(lattice=self.lattices.get(self.cut_ids[u]), ref_pdf=self.ref_pdf[s:e].long(),
                             ref_phone=self.ref_phone[s:e].long())
        return self.features(u), sup

    @property
    def utts(self) -> StreamedSeqSet:
        return self  # indexable: utts[i] -> (features, supervision), read on demand

    @classmethod
    def load(cls, data_dir: str | Path, task: str, split: str, ali_dir: str | Path, lattices,
             cache_utts: int, progress: bool = False) -> StreamedSeqSet:
        """One pass over ``split``: every cut with features, an alignment (with phones) and a
        lattice of the same length; the skipped ones are logged as :func:`load_seq_data` does."""
        from hfasr.data.features import FeatureRef
        from hfasr.data.frames import AlignedCuts, FrameDataConfig

        aligned = AlignedCuts(data_dir, task, split, ali_dir, FrameDataConfig(drop_unaligned=True),
                              mmap_alignment=True, lazy=True)
        if not aligned.have_phones:
            raise DataError(f"{aligned.ali_path} has no phone alignment ('phones'); rerun `hfasr gmm`")
        cuts, lengths, pdfs, phones, texts, skipped = [], [], [], [], [], []
        for cut, cid, x, y, ph in aligned.iterate(progress):
            if cid not in lattices:
                skipped.append((cid, "no lattice"))
                continue
            n = lattices.get(cid).num_frames
            if n != x.shape[0]:
                skipped.append((cid, f"lattice has {n} frames, features/alignment {x.shape[0]}"))
                continue
            check_features([cid], [x], f"split '{split}'")
            cuts.append(FeatureRef(cut))
            lengths.append(int(x.shape[0]))
            pdfs.append(y.to(torch.int32))
            phones.append(ph.to(torch.int32))
            texts.append(" ".join(s.text or "" for s in cut.supervisions))
        if skipped:
            log.warning("%s/%s: %d of %d aligned cuts skipped (e.g. %s: %s)", task, split, len(skipped),
                        len(skipped) + len(cuts), *skipped[0])
        if not cuts:
            raise DataError(f"{task}/{split}: no cut has features, an alignment in {ali_dir} and a lattice")
        out = cls(cuts, aligned.manifest, lengths, torch.cat(pdfs), torch.cat(phones), lattices, texts, cache_utts)
        del aligned, pdfs, phones, x, y, ph
        from hfasr.heap import trim_heap

        trim_heap()  # the alignment file's freed tensors (module hfasr.heap)
        return out


# ---------------------------------------------------------------------------------------- criterion
class _SeqLoss(torch.autograd.Function):
    """The sequence loss as a function of the logits, with the criterion's own gradient."""

    @staticmethod
    def forward(ctx, logits: Tensor, loss: Tensor, grad: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(grad.to(logits.dtype))
        return loss.detach().clone()

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return g * grad, None, None


class SequenceLoss:
    """A :class:`~hfasr.criteria.sequence.SequenceCriterion` as a batch criterion: ``loss`` is
    the training loss (with CE smoothing), differentiable in the logits; ``curvature`` its
    configured convex curvature. A batch's target is its list of supervisions."""

    def __init__(self, crit: SequenceCriterion) -> None:
        self.crit = crit

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        out = self.crit(outputs.detach(), batch.inputs[1], batch.target)
        return _SeqLoss.apply(outputs, out.loss, out.grad)

    def curvature(self, outputs: Tensor, batch: Batch):
        z = outputs.detach()
        return self.crit.curvature(z, self.crit(z, batch.inputs[1], batch.target))


def seq_collate(utts: Sequence[tuple[Tensor, SeqSupervision]], device: torch.device | str = "cpu",
                cut_ids: Sequence[str] | None = None):
    """``collate(utterance indices) -> Batch`` of ``(features (T, F), supervision)`` pairs:
    inputs ``(padded features, lengths)``, target the supervisions, count the frames."""

    def collate(idx: list[int]) -> Batch:
        x, lens = pad_batch([utts[i][0] for i in idx])
        return Batch((x.to(device), lens), [utts[i][1] for i in idx], int(lens.sum()),
                     names=[cut_ids[i] for i in idx] if cut_ids is not None else None)

    return collate


def seq_examples(utts: Sequence[tuple[Tensor, SeqSupervision]], max_frames: int = 20000,
                 device: torch.device | str = "cpu", cut_ids: Sequence[str] | None = None,
                 lengths: Sequence[int] | None = None) -> Utterances:
    """Sequence-training utterances as the examples of an HF objective (:class:`Utterances`);
    ``lengths`` (frames per utterance) saves reading them from ``utts`` (streamed data)."""
    if lengths is None:
        lengths = [int(x.shape[0]) for x, _ in utts]
    return Utterances(lengths, seq_collate(utts, device, cut_ids), max_frames)


# ---------------------------------------------------------------------------------------- the task
class SequenceTask(Task):
    """Lattice-based sequence training of a CE model (module docstring)."""

    def __init__(self, cfg: SeqTrainConfig, model, log_prior: Tensor, lat_meta: dict, train: UtteranceSet,
                 dev: UtteranceSet, device: torch.device, graph_dir: str | Path | None = None,
                 model_dir: str | Path | None = None, progress: bool = True) -> None:
        # non-finite or absurd features: an error naming the cut, before any training (streamed
        # data: checked by its loading pass)
        if not getattr(train, "streamed", False):
            check_features(train.cut_ids, train.feats, f"split '{cfg.train_split}'")
        check_features(dev.cut_ids, dev.feats, f"split '{cfg.dev_split}'")
        self.cfg, self.train, self.dev, self.device = cfg, train, dev, device
        self.run_name = cfg.run_name
        self.net = self.model = model.to(device)
        self.model_name = str(model.model_config.get("arch", "dnn"))
        self.log_prior = log_prior
        self.lat_meta = lat_meta
        self.progress = progress
        self.crit = SequenceCriterion(cfg.sequence, log_prior.to(device), tid2phone=lat_meta["tid2phone"],
                                      silence_phones=list(lat_meta["silence_phones"]))
        self.criterion = SequenceLoss(self.crit)
        self.graph_dir = Path(graph_dir) if graph_dir else None
        self.model_dir = Path(model_dir) if model_dir else None
        if cfg.dev_wer and (self.graph_dir is None or self.model_dir is None):
            raise ConfigError("dev_wer: true needs the decoding graph (--graph-dir) and the GMM dir (--model-dir)")
        if cfg.regenerate_every and not lat_meta.get("graph"):
            raise ConfigError("regenerate_every needs the lattice dir's weak-LM graph (graph_weak/HCLG.fst)")
        self.train_data = seq_examples(train.utts, cfg.max_frames, device, train.cut_ids, train.lengths)
        # the dev set as HF's held-out data (hf.heldout_data: dev)
        self.dev_data = seq_examples(dev.utts, cfg.max_frames, device, dev.cut_ids)

    def minibatches(self, generator: torch.Generator) -> list[list[int]]:
        """Kaldi nnet1's order: one utterance per minibatch, shuffled."""
        return [[i] for i in torch.randperm(len(self.train_data), generator=generator).tolist()]

    # --- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, data: UtteranceSet | None = None, decode: bool | None = None) -> dict[str, float]:
        """Sequence objective per frame (without CE smoothing), frame accuracy and (``decode``)
        WER of ``data`` (default: the dev set)."""
        data = self.dev if data is None else data
        decode = self.cfg.dev_wer if decode is None else decode
        self.model.eval()
        tot, frames, correct = 0.0, 0, 0
        lls: dict[str, Tensor] = {}
        collate = seq_collate(data.utts, self.device, data.cut_ids)
        for idx in make_batches(data.lengths, self.cfg.max_frames):
            batch = collate(idx)
            lens, sups = batch.inputs[1], batch.target
            z = self.model(*batch.inputs)
            out = self.crit(z, lens, sups)
            tot += out.criterion_loss
            frames += out.frames
            for b, i in enumerate(idx):
                T = int(lens[b])
                correct += int((z[b, :T].argmax(-1).cpu() == sups[b].ref_pdf).sum())
                if decode:
                    lls[data.cut_ids[i]] = (torch.log_softmax(z[b, :T].float(), -1).cpu()
                                            - self.log_prior.float().cpu())
        res = {"dev_obj": tot / frames, "dev_acc": correct / frames}
        if decode:
            res["dev_wer"] = self._wer(data, lls)
        return res

    def _wer(self, data: UtteranceSet, lls: dict[str, Tensor]) -> float:
        from hfasr.decode import decode_wer
        from hfasr.gmm.model import GmmModel

        if not hasattr(self, "_tid2pdf"):
            tm = GmmModel.read(self.model_dir / "final.mdl").tm
            self._tid2pdf = torch.tensor(tm.transition_id_to_pdf_array(), dtype=torch.long)
        from hfasr.decode.decoder import DecoderConfig

        return decode_wer(self.graph_dir, self._tid2pdf, lls, self.cfg.decode_acoustic_scale, data.text_of(),
                          config=DecoderConfig(beam=self.cfg.decode_beam, max_active=self.cfg.decode_max_active))

    # --- lattice regeneration ------------------------------------------------------------------
    @torch.no_grad()
    def regenerate_lattices(self, log_line=print) -> int:
        """Re-decode every training lattice with the current model (same graph, κ and beams as
        ``hfasr lattices``); a cut whose decoding fails keeps its old lattice. Returns the
        number of lattices replaced."""
        from hfasr.lattice.generate import LatticeConfig, decode_to_lattices
        from hfasr.lattice.store import compact_lattice
        from hfasr.lattice.tensors import Lattice

        meta = self.lat_meta
        self.model.eval()
        items = []
        for cid, x in zip(self.train.cut_ids, self.train.feats):
            z = self.model(x[None].to(self.device), torch.tensor([x.shape[0]]))[0]
            items.append((cid, (torch.log_softmax(z.float(), -1).cpu() - self.log_prior.float()).numpy()))
        cfg = LatticeConfig(acoustic_scale=float(meta["acoustic_scale"]), beam=float(meta.get("beam", 13.0)),
                            lattice_beam=float(meta.get("lattice_beam", 6.0)), num_jobs=int(meta.get("num_jobs", 2)))
        res = decode_to_lattices(meta["graph"], meta["tid2pdf"].numpy(), items, cfg, self.progress,
                                 desc="regenerate lattices")
        n = 0
        for sup, (_, d, _) in zip(self.train.sups, res):
            if d is not None:
                sup.lattice = compact_lattice(Lattice.from_dict(d))
                n += 1
        log_line(f"# regenerated {n} of {len(items)} training lattices with the current model")
        return n

    def after_report(self, update: int, finished: bool, log_line) -> None:
        k = self.cfg.regenerate_every
        if k and update % k == 0:
            if finished:  # not needed unless the run is extended (--resume with more updates)
                self._regenerate_pending = True
            else:
                self.regenerate_lattices(log_line)

    # --- the experiment's hooks -----------------------------------------------------------------
    def summary(self) -> str:
        return f"{len(self.train)} train utterances ({self.train.num_frames} frames), {len(self.dev)} dev"

    def write_files(self, out: Path) -> None:
        from hfasr.fileio import write_bytes

        write_bytes(out / "prior.pt", Path(self.prior_path).read_bytes())  # the CE model's, atomically

    def final_info(self) -> dict[str, Any]:
        return {"init": str(self.init)}

    def state_dict(self) -> dict[str, Any]:
        # regenerated lattices are part of the state (resume must see the same ones)
        return {"train_lattices": ([sup.lattice.to_dict() for sup in self.train.sups]
                                   if self.cfg.regenerate_every else None),
                "regenerate_pending": bool(getattr(self, "_regenerate_pending", False))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("train_lattices") is not None:
            from hfasr.lattice.store import compact_lattice
            from hfasr.lattice.tensors import Lattice

            for sup, d in zip(self.train.sups, state["train_lattices"]):
                sup.lattice = compact_lattice(Lattice.from_dict(d))
        if state.get("regenerate_pending") and self.cfg.regenerate_every:
            # the run ended where a regeneration was due: an extended run must see its lattices
            self.regenerate_lattices()
            self._regenerate_pending = False


def run_sequence_training(cfg: SeqTrainConfig, data_dir: str | Path, task: str, ali_dir: str | Path,
                          lat_dir: str | Path, init: str | Path, out_dir: str | Path,
                          graph_dir: str | Path | None = None, model_dir: str | Path | None = None,
                          resume: bool = False, progress: bool = True):
    """``hfasr train --criterion <seq>``: load everything, train, write ``final.pt`` + ``prior.pt``.
    Returns the :class:`~hfasr.train.experiment.Experiment` (``.task``, ``.history``, ``.wall``).

    Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) it first joins the process
    group (unless the caller already did; a group it created is destroyed at the end)."""
    from hfasr.lattice.generate import lattice_path
    from hfasr.lattice.store import LatticeShards, load_lattice_dir
    from hfasr.models import load_model, load_prior
    from hfasr.train.experiment import run_experiment

    def build(exp) -> SequenceTask:
        init_path = Path(init)
        if not init_path.is_file():
            raise DataError(f"--init model not found: {init_path}")
        prior_path = init_path.parent / "prior.pt"
        log_prior = load_prior(prior_path)
        torch.manual_seed(cfg.seed)
        model = load_model(init_path)
        if getattr(model, "dropout", 0.0) > 0.0:
            # sequence training (Kaldi nnet1 too) runs without dropout: HF's G v and the line
            # search need a deterministic network, and SGD fine-tunes the CE solution
            log.info("%s: dropout %g of the CE model is off for sequence training", init_path, model.dropout)
            model.dropout = 0.0
            model.model_config["dropout"] = 0.0
        # every shard of the split, packed (int32 / float32) and memory-mapped: the OS reads what
        # the batches touch, the ranks of a machine share the pages, only the level cache (4 bytes
        # per state) is private; a lattice dir of earlier versions (one lats_<split>.pt) is read too
        lt_path, ld_path = lattice_path(lat_dir, cfg.train_split), lattice_path(lat_dir, cfg.dev_split)
        if cfg.stream_cache_utts:  # resident lattice pages bounded (LatticeShards)
            shards = LatticeShards(lat_dir, cfg.train_split, cfg.lattice_map_mb)
            lt = dict(shards.meta, lattices=shards.cut_ids)
        else:
            lt = load_lattice_dir(lat_dir, cfg.train_split, mmap=True)
        ld = load_lattice_dir(lat_dir, cfg.dev_split, mmap=True)
        if lt["lattices"] and int(lt["tid2pdf"].max()) + 1 != log_prior.numel():
            raise DataError(f"{lt_path}: lattices index {int(lt['tid2pdf'].max()) + 1} pdfs, the model "
                            f"{log_prior.numel()}")
        if abs(float(lt["acoustic_scale"]) - cfg.sequence.acoustic_scale) > 1e-9:
            log.warning("lattices were generated at acoustic scale %g, training uses %g", lt["acoustic_scale"],
                        cfg.sequence.acoustic_scale)
        if cfg.stream_cache_utts:
            train = StreamedSeqSet.load(data_dir, task, cfg.train_split, ali_dir, shards, cfg.stream_cache_utts,
                                        exp.progress)
        else:
            train = load_seq_data(data_dir, task, cfg.train_split, ali_dir, lt, lt_path, exp.progress)
        dev = load_seq_data(data_dir, task, cfg.dev_split, ali_dir, ld, ld_path, exp.progress)
        weak = Path(lat_dir) / "graph_weak" / "HCLG.fst"
        lt["graph"] = str(weak) if weak.is_file() else None
        t = SequenceTask(cfg, model, log_prior, lt, train, dev, exp.device, graph_dir, model_dir, exp.progress)
        t.prior_path, t.init = prior_path, init_path
        return t

    return run_experiment(cfg, build, out_dir, resume, progress)
