"""CTC training (``hfasr train --criterion ctc --model blstm|mdlstm|dnn --optimizer hf|adam``).

The task: train a BLSTM, MDLSTM or DNN from scratch with CTC (:mod:`hfasr.criteria.ctc`) on
the features of ``hfasr features`` (``<data_dir>/<task>_feats_<split>.jsonl.gz``, transcripts
from the cuts' supervisions; no alignment). Tokens (``units``): the phones of the task lexicon
(``--lang`` dir's ``lexicon.txt``, or the built-in lexicon of the task) or the characters of the
training transcripts with a ``<space>`` token between words. The global CMVN is taken over the
loaded training features (over per-utterance mean-removed ones for a DNN with ``utt_cmn``).
Examples are whole utterances (batches of at most ``max_frames`` padded frames); the batch
criterion is :class:`~hfasr.criteria.ctc.CtcLoss` with its convex softmax-Fisher curvature
(Cho, Dhir & Lee 2015); the BLSTM and MDLSTM also give the structural-damping weights. The dev
report is the CTC loss (``dev_obj``, normalised as in training), the greedy-decoding WER
(``dev_wer``, percent) and token error rate (``dev_ter``).

Drivers: ``hf`` (section ``hf:``; held-out ρ / backtracking / line search, optional structural
damping ``hf.optimizer.structural_damping``, successive subsets; distributed under ``torchrun``)
and ``adam`` (section ``adam:``: minibatches of whole utterances, gradient clipping). The out dir
also gets ``tokens.txt``; ``final.pt`` holds ``tokens``, ``unit`` and ``word_boundary`` for
``hfasr ctc-decode``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from hfasr.config import TORCH_DEVICE, bounded, check_ranges
from hfasr.criteria.ctc import SPACE, CtcLoss, TokenTable, ctc_count
from hfasr.data.batching import Batch, pad_batch, pad_targets
from hfasr.data.utterances import Utterances, UtteranceSet, read_cuts
from hfasr.errors import ConfigError, DataError
from hfasr.models.blstm import BLSTMConfig as BLSTMSection
from hfasr.models.dnn import DNNConfig
from hfasr.models.mdlstm import MDLSTMConfig as MDLSTMSection
from hfasr.optim import HFConfig
from hfasr.train.drivers import FirstOrderConfig, HFTrainConfig
from hfasr.train.task import Task, check_features

log = logging.getLogger(__name__)

MODELS = ("blstm", "mdlstm", "dnn")

@dataclass
class CtcTrainConfig:
    """Options of ``hfasr train --criterion ctc`` (YAML via ``--config``)."""

    RESUMABLE: ClassVar[tuple[str, ...]] = ("hf.updates", "adam.epochs", "num_threads", "device", "keep_models",
                                           "select")

    criterion: str = "ctc"
    model: Literal["blstm", "mdlstm", "dnn"] = "blstm"  # architecture; hyper-parameters in its section
    optimizer: Literal["hf", "adam"] = "hf"
    blstm: BLSTMSection = field(default_factory=BLSTMSection)
    mdlstm: MDLSTMSection = field(default_factory=MDLSTMSection)
    dnn: DNNConfig = field(default_factory=lambda: DNNConfig(hidden_dim=128, num_layers=3, context=5,
                                                             activation="relu"))
    units: Literal["phone", "char"] = "phone"  # phones of the lexicon, or characters
    word_boundary: bool = True  # char units: a <space> token between words
    normalize: Literal["utterance", "frame"] = "frame"  # loss (and G) per utterance or per output frame
    # output-layer bias at initialisation: "prior" = log of the token frequencies per output frame
    # of the training data (each target token one frame, blank the rest; :func:`token_prior`), so
    # training starts where the all-blank stage would otherwise first have to be learned; "zero":
    # the layer's default (uniform outputs)
    output_bias: Literal["prior", "zero"] = "prior"
    max_frames: int = bounded(20000, ge=1)  # padded input frames per forward/backward batch
    train_split: str = "train"
    dev_split: str = "dev"
    dev_wer: bool = True  # greedy-decode the dev set at every report (WER, token error rate)
    # also write models/<update>.pt at every report, e.g. to start HF fine-tuning (--init) from
    # the Adam epoch with the lowest dev loss
    keep_models: bool = False
    # final.pt: "last" = the last accepted report's model; "dev_obj" / "dev_wer" = the report with
    # the lowest dev CTC loss / dev greedy WER (the earliest of equals; needs keep_models), i.e. the
    # number of epochs or updates chosen on the dev set (e.g. Adam's epoch to start HF from)
    select: Literal["last", "dev_obj", "dev_wer"] = "last"
    # HF: held-out 10% for ρ / backtracking / line search, G v on a 10% sample. Structural damping
    # μ (blstm/mdlstm) is off by default: from a random start, μ = 0.3 kept a yesno BLSTM at the
    # all-blank plateau for 14 updates; μ = 0 (with a 25% curvature sample and 100 CG iterations)
    # left it slowly, after ~15 updates
    hf: HFTrainConfig = field(default_factory=lambda: HFTrainConfig(
        updates=20, heldout_fraction=0.1, curvature_fraction=0.1, curvature_min=8, optimizer=HFConfig(
            damping=1.0, cg_max_iters=50, structural_damping=0.0, rho_data="heldout", backtrack_data="heldout",
            linesearch_data="heldout")))
    # the first-order baseline: minibatches of whole utterances, gradient norm clipped at 5
    adam: FirstOrderConfig = field(default_factory=lambda: FirstOrderConfig(lr=1e-3, epochs=20, max_grad_norm=5.0))
    seed: int = bounded(0, ge=0)
    num_threads: int = bounded(0, ge=0)  # torch threads; 0 = torch's default
    device: str = bounded("cpu", **TORCH_DEVICE)  # cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.criterion != "ctc":
            raise ValueError(f"CTC training needs criterion 'ctc', got '{self.criterion}'")
        if self.model not in MODELS:
            raise ValueError(f"unknown model '{self.model}' (known: {', '.join(MODELS)})")
        if self.optimizer not in ("hf", "adam"):
            raise ValueError(f"CTC training supports optimizers hf and adam, got '{self.optimizer}'")
        if self.select not in ("last", "dev_obj", "dev_wer"):
            raise ValueError(f"select must be last, dev_obj or dev_wer, got {self.select!r}")
        if self.select != "last" and not self.keep_models:
            raise ValueError(f"select: {self.select} needs keep_models: true")
        if self.select == "dev_wer" and not self.dev_wer:
            raise ValueError("select: dev_wer needs dev_wer: true")
        if self.output_bias not in ("prior", "zero"):
            raise ValueError(f"output_bias must be 'prior' or 'zero', got {self.output_bias!r}")

    def first_order(self) -> FirstOrderConfig:
        return self.adam

    def unused_sections(self) -> list[str]:
        """The other models' sections and the other optimizer's (ignored on ``--resume``)."""
        return [m for m in MODELS if m != self.model] + ["adam" if self.optimizer == "hf" else "hf"]

    def model_config(self, input_dim: int, num_outputs: int) -> dict[str, Any]:
        """``{"arch", "input_dim", "num_outputs", **section}`` for :func:`hfasr.models.build_model`."""
        from dataclasses import asdict

        return {"arch": self.model, "input_dim": input_dim, "num_outputs": num_outputs,
                **asdict(getattr(self, self.model))}

    @property
    def run_name(self) -> str:
        return f"{self.optimizer}-ctc-{self.model}"


# ---------------------------------------------------------------------------------------- data

def encode_cuts(cuts: list, table: TokenTable, where: Path) -> UtteranceSet:
    """The utterances of :func:`~hfasr.data.utterances.read_cuts`' output with their CTC targets
    (token ids) as supervisions; DataError naming the cut and the manifest."""
    ids, feats, texts, targets = [], [], [], []
    for cid, x, text in cuts:
        try:
            y = table.encode(text)
        except DataError as e:
            raise DataError(f"cut '{cid}' of {where}: {e}") from e
        ids.append(cid)
        feats.append(x)
        texts.append(text)
        targets.append(torch.tensor(y, dtype=torch.long))
    return UtteranceSet(ids, feats, targets, texts)


def lexicon_path(task: str, lang_dir: str | Path | None) -> Path:
    """``<lang_dir>/lexicon.txt``, or the built-in lexicon of ``task``; ConfigError if neither."""
    from hfasr.lang.lexicon import builtin_lexicon_path

    if lang_dir is not None:
        return Path(lang_dir) / "lexicon.txt"
    path = builtin_lexicon_path(task)
    if path is None:
        raise ConfigError(f"units: phone needs a lexicon: pass --lang (a lang dir) for task '{task}'")
    return path


def make_token_table(cfg: CtcTrainConfig, train_texts: list[str], task: str, lang_dir: str | Path | None):
    """The token table and the pronunciations (word → list of phone tuples; None for chars)."""
    from hfasr.lang.lexicon import Lexicon

    if cfg.units == "char":
        return TokenTable.from_transcripts(train_texts, SPACE if cfg.word_boundary else None), None
    lex = Lexicon.read(lexicon_path(task, lang_dir))
    return TokenTable.from_lexicon(lex), lex.prons


def token_prior(targets: list[Tensor], num_frames: int, num_tokens: int, floor: float = 1e-3) -> Tensor:
    """Token frequencies per output frame: each target token counts one frame, the blank (id 0)
    takes the remaining frames; every probability at least ``floor`` (then renormalised).

    ``log`` of it is the output bias of a model whose logits do not depend on the input yet: the
    constant softmax that fits CTC's frame-level soft targets after the blank stage (most frames
    blank, every token on about one frame), i.e. the point a randomly initialised CTC model
    spends its first updates reaching (Graves' "blank stage").
    """
    counts = torch.zeros(num_tokens, dtype=torch.float64)
    for y in targets:
        counts += torch.bincount(y, minlength=num_tokens).double()
    counts[0] = max(float(num_frames) - float(counts[1:].sum()), 0.0)
    p = (counts / counts.sum().clamp_min(1.0)).clamp_min(floor)
    return (p / p.sum()).float()


# ---------------------------------------------------------------------------------------- the task
class CtcTask(Task):
    """CTC training from scratch (module docstring).

    Args:
        cfg: the resolved config.
        table: token table (its size is the model's output size).
        train, dev: the two splits.
        device: where the model and the batches live.
        cmvn: global ``(mean, std)`` put into the model.
        prons: word → pronunciations (phone units: greedy tokens → words).
    """

    def __init__(self, cfg: CtcTrainConfig, table: TokenTable, train: UtteranceSet, dev: UtteranceSet,
                 device: torch.device | str = "cpu", cmvn: tuple[Tensor, Tensor] | None = None,
                 prons: dict | None = None) -> None:
        from hfasr.models import build_model

        # non-finite or absurd features: an error naming the cut, before any training
        check_features(train.cut_ids, train.feats, f"split '{cfg.train_split}'")
        check_features(dev.cut_ids, dev.feats, f"split '{cfg.dev_split}'")
        self.cfg, self.table, self.prons = cfg, table, prons
        self.device = torch.device(device)
        self.run_name, self.model_name = cfg.run_name, cfg.model
        self.structural = cfg.model != "dnn"
        torch.manual_seed(cfg.seed)
        dim = int(train.feats[0].shape[1])
        self.net = self.model = build_model(cfg.model_config(dim, len(table)))
        if cmvn is not None:
            self.model.set_cmvn(*cmvn)
        self.model.to(self.device)
        self.train = self._feasible(train, cfg.train_split)
        self.dev = self._feasible(dev, cfg.dev_split)
        if cfg.output_bias == "prior":
            olens = self.model.output_lengths(torch.tensor([int(x.shape[0]) for x in self.train.feats]))
            with torch.no_grad():
                self.model.output.bias.copy_(token_prior(self.train.sups, int(olens.sum()), len(table)).log())
        self.criterion = CtcLoss(cfg.normalize)
        self.train_data = self._utterances(self.train)
        self.dev_data = self._utterances(self.dev)

    # --- data ---------------------------------------------------------------------------------
    def _feasible(self, data: UtteranceSet, split: str) -> UtteranceSet:
        """Drop (with a warning) utterances with fewer output frames than their targets need."""
        lens = self.model.output_lengths(torch.tensor([x.shape[0] for x in data.feats]))
        keep, bad = [], []
        for i, (y, L) in enumerate(zip(data.sups, lens.tolist())):
            need = len(y) + int((y[1:] == y[:-1]).sum()) if len(y) else 0
            (keep if L >= need else bad).append(i)
        if bad:
            log.warning("%s: %d of %d utterances have too few output frames for their targets and are left out "
                        "(e.g. %s)", split, len(bad), len(data), data.cut_ids[bad[0]])
        if not keep:
            raise DataError(f"{split}: no utterance has enough output frames for its CTC targets")
        return data.subset(keep) if bad else data

    def _utterances(self, data: UtteranceSet) -> Utterances:
        """The utterances of ``data`` in batches (the collated batches of the fixed plan are kept)."""

        def collate(idx: list[int]) -> Batch:
            feats, flens = pad_batch([data.feats[i] for i in idx])
            targets, tlens = pad_targets([data.sups[i] for i in idx])
            olens = self.model.output_lengths(flens)
            return Batch((feats.to(self.device), flens), (targets, tlens, olens),
                         ctc_count(olens, self.cfg.normalize), lengths=olens, names=[data.cut_ids[i] for i in idx])

        return Utterances(data.lengths, collate, self.cfg.max_frames, cache=True)

    def minibatches(self, generator: torch.Generator) -> list[list[int]]:
        """The fixed batches (similar lengths together) in a random order."""
        plan = self.train_data.plan()
        return [plan[i] for i in torch.randperm(len(plan), generator=generator).tolist()]

    # --- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, decode: bool | None = None) -> dict[str, float]:
        """Dev CTC loss (normalised as in training) and, with ``decode``, greedy WER / token error
        rate in percent."""
        from hfasr.decode.ctc import greedy_ids, tokens_to_words
        from hfasr.decode.score import score

        decode = self.cfg.dev_wer if decode is None else decode
        self.model.eval()
        total, count = 0.0, 0
        hyps: dict[str, list[str]] = {}
        units: dict[str, list[str]] = {}
        for idx in self.dev_data.plan():
            batch = self.dev_data.batch(idx)
            z = self.model(*batch.inputs)
            total += float(self.criterion.loss(z, batch))
            count += batch.count
            if decode:
                olens = batch.target[2]
                logp = torch.log_softmax(z.float(), -1).cpu()
                for b, i in enumerate(idx):
                    u = self.table.decode(greedy_ids(logp[b, : int(olens[b])]))
                    cid = self.dev.cut_ids[i]
                    units[cid] = u
                    hyps[cid] = tokens_to_words(u, self.table.unit, self.table.word_boundary, self.prons)
        res = {"dev_obj": total / max(count, 1)}
        if decode:
            ids = self.dev.cut_ids
            res["dev_wer"] = float(score({c: t.split() for c, t in zip(ids, self.dev.texts)}, hyps).wer)
            res["dev_ter"] = float(score({c: self.table.units(t) for c, t in zip(ids, self.dev.texts)}, units).wer)
        return res

    # --- the experiment's hooks -----------------------------------------------------------------
    def summary(self) -> str:
        return (f"{len(self.train)} train utterances ({self.train.num_frames} frames), {len(self.dev)} dev, "
                f"{len(self.table)} tokens")

    def write_files(self, out: Path) -> None:
        self.table.write(out / "tokens.txt")

    def final_info(self) -> dict[str, Any]:
        return {"tokens": list(self.table.tokens), "unit": self.table.unit,
                "word_boundary": self.table.word_boundary}

    def state_dict(self) -> dict[str, Any]:
        return {"tokens": list(self.table.tokens)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("tokens") != list(self.table.tokens):
            raise DataError(f"the checkpoint was trained with other tokens ({len(state.get('tokens') or [])} vs "
                            f"{len(self.table)}); use another --out")


def compute_cmvn(feats: list[Tensor], utt_cmn: bool = False, cut_ids: list[str] | None = None,
                 where: str = "the training set") -> tuple[Tensor, Tensor]:
    """Global mean / std over all frames (per-utterance mean removed first with ``utt_cmn``),
    accumulated in float64. With ``cut_ids``, a non-finite or absurd feature value
    (:func:`~hfasr.train.task.check_features`) is first an error naming its cut: one frame of
    1e30 would otherwise make the std ~3e28 and squash every other frame to zero."""
    if cut_ids is not None:
        check_features(cut_ids, feats, where)
    x = torch.cat([(f - f.mean(0, keepdim=True) if utt_cmn else f).double() for f in feats])
    dtype = feats[0].dtype if feats else torch.float32
    return x.mean(0).to(dtype), x.std(0).clamp_min(1e-5).to(dtype)


def load_init(task: CtcTask, init: str | Path) -> None:
    """Copy the weights of the CTC model ``init`` into ``task.model``: its model config must equal
    the task's (architecture, sizes, tokens); a DataError naming the file otherwise."""
    from hfasr.models import load_checkpoint

    init = Path(init)
    ckpt = load_checkpoint(init)
    ours = dict(task.model.model_config)
    theirs = dict(ckpt["model_config"])
    if theirs != ours:
        diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise DataError(f"--init {init}: its model differs from this run's in {diff} "
                        f"({ {k: theirs.get(k) for k in diff} } vs { {k: ours.get(k) for k in diff} })")
    try:
        task.model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise DataError(f"--init {init}: weights do not fit the model: {e}") from e
    task.model.to(task.device)
    log.info("CTC: starting from %s", init)


INIT_FILE = "init.txt"  # in a run's dir: the --init model it started from


def run_ctc_training(cfg: CtcTrainConfig, data_dir: str | Path, task: str, out_dir: str | Path,
                     lang_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
                     init: str | Path | None = None):
    """``hfasr train --criterion ctc``: load the data, train (resuming from ``<out>/checkpoint.pt``
    with ``resume``), write ``config.yaml``, ``tokens.txt`` and ``final.pt``. ``init``: start
    from this CTC model's weights (``final.pt`` of a run with the same model config and tokens,
    e.g. Adam's, to fine-tune with HF) instead of a random initialisation. Returns the
    :class:`~hfasr.train.experiment.Experiment`."""
    from hfasr.train.experiment import run_experiment

    if cfg.units == "phone":
        lexicon_path(task, lang_dir)  # fail before loading the data

    def build(exp) -> CtcTask:
        train_cuts, train_path = read_cuts(data_dir, task, cfg.train_split, exp.progress)
        dev_cuts, dev_path = read_cuts(data_dir, task, cfg.dev_split, exp.progress)
        table, prons = make_token_table(cfg, [t for _, _, t in train_cuts], task, lang_dir)
        train, dev = encode_cuts(train_cuts, table, train_path), encode_cuts(dev_cuts, table, dev_path)
        log.info("CTC %s: %d train utterances (%d frames), %d dev, %d tokens", cfg.run_name, len(train),
                 train.num_frames, len(dev), len(table))
        cmvn = compute_cmvn(train.feats, cfg.model == "dnn" and cfg.dnn.utt_cmn, train.cut_ids, str(train_path))
        ctc_task = CtcTask(cfg, table, train, dev, exp.device, cmvn=cmvn, prons=prons)
        if init is not None:
            load_init(ctc_task, init)
            from hfasr.fileio import write_text

            # the model this run started from: `hfasr report` adds that run's training time
            write_text(Path(out_dir) / INIT_FILE, f"{Path(init).resolve()}\n")
        return ctc_task

    return run_experiment(cfg, build, out_dir, resume, progress)
