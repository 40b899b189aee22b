"""CTC training (``hfasr train --criterion ctc --model blstm|mdlstm|dnn --optimizer hf|adam``).

Trains a BLSTM, MDLSTM or DNN from scratch with CTC (:mod:`hfasr.criteria.ctc`) on the features
of ``hfasr features`` (``<data_dir>/<task>_feats_<split>.jsonl.gz``, transcripts from the cuts'
supervisions; no alignment). Tokens (``units``): the phones of the task lexicon (``--lang``
dir's ``lexicon.txt``, or the built-in lexicon of the task) or the characters of the training
transcripts with a ``<space>`` token between words. The global CMVN is taken over the loaded
training features (over per-utterance mean-removed ones for a DNN with ``utt_cmn``).

Optimizers:

- ``hf``: :class:`hfasr.optim.HessianFree` over a :class:`~hfasr.criteria.ctc.CtcObjective`
  (Cho, Dhir & Lee 2015): gradient on all training utterances but a held-out
  ``hf.heldout_fraction``, G v products with the convex CTC curvature (per-frame softmax
  Fisher) on a ``hf.curvature_fraction`` sample, ρ / CG-backtracking / line search on the
  held-out utterances, and structural damping (``hf.optimizer.structural_damping`` μ > 0) for the
  BLSTM and MDLSTM (their hand-written J v). ``hf.num_subsets`` > 1 runs HF on successive
  subsets (with the reuse options of :class:`~hfasr.optim.HFConfig`).
- ``adam``: the first-order baseline, minibatches of whole utterances (at most ``max_frames``
  padded frames), ``adam.reports_per_epoch`` reports per epoch.

After the initial model and after every HF update (Adam: every report) the dev set's CTC loss
(``dev_obj``, normalised as in training), its greedy-decoding WER (``dev_wer``, percent) and
token error rate (``dev_ter``) go to ``history.jsonl`` (the format ``hfasr report`` reads) and a
``ctc ...`` line to stdout and ``train.log``; then ``checkpoint.pt`` is written atomically with
all state (model, optimizer, history, position), so ``--resume`` continues a killed run exactly.
``wall_s`` counts training time only. The out dir also gets ``config.yaml``, ``tokens.txt`` and
finally ``final.pt`` (the model, with ``tokens``, ``unit`` and ``word_boundary`` for decoding).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from hfasr.criteria.ctc import SPACE, CtcObjective, TokenTable, collate, ctc_loss
from hfasr.errors import ConfigError, DataError, HfasrError
from hfasr.models.blstm import BLSTMConfig as BLSTMSection
from hfasr.models.dnn import DNNConfig
from hfasr.models.mdlstm import MDLSTMConfig as MDLSTMSection
from hfasr.optim import HessianFree, HFConfig
from hfasr.train.trainer import TrainingError

log = logging.getLogger(__name__)

MODELS = ("blstm", "mdlstm", "dnn")

@dataclass
class CtcHFConfig:
    """``hf:`` section: Hessian-free CTC training."""

    updates: int = 20  # HF updates
    heldout_fraction: float = 0.1  # training utterances kept out of the gradient (ρ / backtracking / line search)
    curvature_fraction: float = 0.1  # utterances of the gradient set sampled per update for G v products
    curvature_min_utts: int = 8
    num_subsets: int = 1  # > 1: HF on successive subsets (update k: subset k mod K)
    # structural damping μ (blstm/mdlstm) is off by default: from a random start, μ = 0.3 kept a
    # yesno BLSTM at the all-blank plateau for 14 updates; μ = 0 (with a 25% curvature sample and
    # 100 CG iterations) left it slowly, after ~15 updates
    optimizer: HFConfig = field(default_factory=lambda: HFConfig(
        damping=1.0, cg_max_iters=50, structural_damping=0.0, rho_data="heldout", backtrack_data="heldout",
        linesearch_data="heldout"))


@dataclass
class CtcAdamConfig:
    """``adam:`` section: the first-order baseline."""

    lr: float = 1e-3
    epochs: int = 20
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    max_grad_norm: float = 5.0  # clip the gradient norm per minibatch; 0 = no clipping
    reports_per_epoch: int = 1  # dev reports (history lines, checkpoints) per epoch


@dataclass
class CtcTrainConfig:
    """Options of ``hfasr train --criterion ctc`` (YAML via ``--config``)."""

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
    max_frames: int = 20000  # padded input frames per forward/backward batch
    train_split: str = "train"
    dev_split: str = "dev"
    dev_wer: bool = True  # greedy-decode the dev set at every report (WER, token error rate)
    hf: CtcHFConfig = field(default_factory=CtcHFConfig)
    adam: CtcAdamConfig = field(default_factory=CtcAdamConfig)
    seed: int = 0
    num_threads: int = 0  # torch threads; 0 = torch's default
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.criterion != "ctc":
            raise ValueError(f"CTC training needs criterion 'ctc', got '{self.criterion}'")
        if self.model not in MODELS:
            raise ValueError(f"unknown model '{self.model}' (known: {', '.join(MODELS)})")
        if self.optimizer not in ("hf", "adam"):
            raise ValueError(f"CTC training supports optimizers hf and adam, got '{self.optimizer}'")
        if not 0.0 <= self.hf.heldout_fraction < 1.0:
            raise ValueError(f"hf.heldout_fraction must be in [0, 1), got {self.hf.heldout_fraction}")
        if min(self.hf.updates, self.hf.num_subsets, self.adam.epochs, self.adam.reports_per_epoch,
               self.max_frames) < 1:
            raise ValueError("hf.updates, hf.num_subsets, adam.epochs, adam.reports_per_epoch and max_frames "
                             "must be >= 1")
        if self.output_bias not in ("prior", "zero"):
            raise ValueError(f"output_bias must be 'prior' or 'zero', got {self.output_bias!r}")
        if not self.adam.lr > 0:
            raise ValueError(f"adam.lr must be > 0, got {self.adam.lr}")
        if len(self.adam.betas) != 2:
            raise ValueError(f"adam.betas must have two values, got {self.adam.betas}")

    def model_config(self, input_dim: int, num_outputs: int) -> dict[str, Any]:
        """``{"arch", "input_dim", "num_outputs", **section}`` for :func:`hfasr.models.build_model`."""
        from dataclasses import asdict

        return {"arch": self.model, "input_dim": input_dim, "num_outputs": num_outputs,
                **asdict(getattr(self, self.model))}

    @property
    def run_name(self) -> str:
        return f"{self.optimizer}-ctc-{self.model}"


# ---------------------------------------------------------------------------------------- data

@dataclass
class CtcData:
    """Utterances of one split: features (T, F), transcripts and CTC targets (token ids)."""

    cut_ids: list[str]
    feats: list[Tensor]
    texts: list[str]
    targets: list[Tensor]

    def __len__(self) -> int:
        return len(self.cut_ids)

    @property
    def num_frames(self) -> int:
        return sum(int(x.shape[0]) for x in self.feats)

    def subset(self, idx: list[int]) -> CtcData:
        return CtcData([self.cut_ids[i] for i in idx], [self.feats[i] for i in idx], [self.texts[i] for i in idx],
                       [self.targets[i] for i in idx])


def read_cuts(data_dir: str | Path, task: str, split: str, progress: bool = False) -> tuple[list, Path]:
    """``(cut_id, features (T, F), transcript)`` of every cut of the split's feature manifest."""
    from lhotse import load_manifest
    from tqdm import tqdm

    from hfasr.data.frames import feats_manifest_path

    manifest = feats_manifest_path(data_dir, task, split)
    if not manifest.is_file():
        raise DataError(f"feature manifest not found: {manifest}; run `hfasr features` first")
    out = []
    for cut in tqdm(load_manifest(manifest), desc=f"load {task}/{split}", disable=not progress, leave=False):
        if not cut.has_features:
            raise DataError(f"cut '{cut.id}' of {manifest} has no features")
        text = " ".join(s.text or "" for s in cut.supervisions).strip()
        if not text:
            raise DataError(f"cut '{cut.id}' of {manifest} has no transcript")
        out.append((cut.id, torch.from_numpy(cut.load_features()).float(), text))
    if not out:
        raise DataError(f"{manifest}: no cuts")
    return out, manifest


def encode_cuts(cuts: list, table: TokenTable, where: Path) -> CtcData:
    """CTC targets of :func:`read_cuts`' output; DataError naming the cut and the manifest."""
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
    return CtcData(ids, feats, texts, targets)


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


def make_batches(lengths: list[int], max_frames: int) -> list[list[int]]:
    """Utterance indices grouped by length (longest first), each group padded to at most
    ``max_frames`` frames (always at least one utterance)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    out: list[list[int]] = []
    for i in order:
        if out and (len(out[-1]) + 1) * lengths[out[-1][0]] <= max_frames:
            out[-1].append(i)
        else:
            out.append([i])
    return out


# ---------------------------------------------------------------------------------------- trainer

class CtcTrainer:
    """HF or Adam CTC training with dev reports and exact resumption (module docstring).

    Args:
        cfg: the resolved config.
        table: token table (its size is the model's output size).
        train, dev: the two splits.
        out_dir: experiment dir (``history.jsonl``, ``train.log``, ``checkpoint.pt``).
        cmvn: global ``(mean, std)`` put into the model.
        prons: word → pronunciations (phone units: greedy tokens → words).
    """

    def __init__(self, cfg: CtcTrainConfig, table: TokenTable, train: CtcData, dev: CtcData, out_dir: str | Path,
                 cmvn: tuple[Tensor, Tensor] | None = None, prons: dict | None = None, progress: bool = True) -> None:
        from hfasr.models import build_model

        self.cfg, self.table, self.prons = cfg, table, prons
        self.out = Path(out_dir)
        self.progress = progress
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device '{cfg.device}' requested but CUDA is not available")
        torch.manual_seed(cfg.seed)
        dim = int(train.feats[0].shape[1])
        self.model = build_model(cfg.model_config(dim, len(table)))
        if cmvn is not None:
            self.model.set_cmvn(*cmvn)
        self.model.to(self.device)
        self.train = self._feasible(train, cfg.train_split)
        self.dev = self._feasible(dev, cfg.dev_split)
        if cfg.output_bias == "prior":
            olens = self.model.output_lengths(torch.tensor([int(x.shape[0]) for x in self.train.feats]))
            with torch.no_grad():
                self.model.output.bias.copy_(token_prior(self.train.targets, int(olens.sum()), len(table)).log())
        self.history: list[dict[str, Any]] = []
        self.wall = 0.0
        self.position: dict[str, int] = {"update": 0, "epoch": 0, "batch": 0}
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.dev_groups = make_batches([int(x.shape[0]) for x in self.dev.feats], cfg.max_frames)
        self.dev_batches = self._batches(self.dev, list(range(len(self.dev))))
        n = len(self.train)
        if cfg.optimizer == "hf":
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 7)).tolist()
            n_held = round(cfg.hf.heldout_fraction * n)
            held, grad = sorted(perm[:n_held]), sorted(perm[n_held:])
            if not grad:
                raise ConfigError(f"hf.heldout_fraction = {cfg.hf.heldout_fraction} leaves no training utterance")
            held_b = self._batches(self.train, held) if held else None
            structural = cfg.model != "dnn" and cfg.hf.optimizer.structural_damping > 0

            def objective(idx: list[int], heldout=None) -> CtcObjective:
                return CtcObjective(self.model, self._batches(self.train, idx), heldout,
                                    curvature_fraction=cfg.hf.curvature_fraction,
                                    curvature_min_utts=cfg.hf.curvature_min_utts, normalize=cfg.normalize,
                                    structural=structural)

            K = cfg.hf.num_subsets
            if K > 1:
                from hfasr.optim import SubsetObjective

                if len(grad) < K:
                    raise ConfigError(f"hf.num_subsets = {K} but only {len(grad)} training utterances")
                self.objective: Any = SubsetObjective([objective(grad[k::K]) for k in range(K)],
                                                      objective(held) if held else None)
            else:
                self.objective = objective(grad, held_b)
            self.opt: Any = HessianFree(self.params, cfg.hf.optimizer)
        else:
            self.train_batches = self._batches(self.train, list(range(n)))
            a = cfg.adam
            self.opt = torch.optim.Adam(self.params, lr=a.lr, betas=tuple(a.betas), weight_decay=a.weight_decay)

    # --- data ---------------------------------------------------------------------------------
    def _feasible(self, data: CtcData, split: str) -> CtcData:
        """Drop (with a warning) utterances with fewer output frames than their targets need."""
        lens = self.model.output_lengths(torch.tensor([x.shape[0] for x in data.feats]))
        keep, bad = [], []
        for i, (y, L) in enumerate(zip(data.targets, lens.tolist())):
            need = len(y) + int((y[1:] == y[:-1]).sum()) if len(y) else 0
            (keep if L >= need else bad).append(i)
        if bad:
            log.warning("%s: %d of %d utterances have too few output frames for their targets and are left out "
                        "(e.g. %s)", split, len(bad), len(data), data.cut_ids[bad[0]])
        if not keep:
            raise DataError(f"{split}: no utterance has enough output frames for its CTC targets")
        return data.subset(keep) if bad else data

    def _batches(self, data: CtcData, idx: list[int]) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        groups = make_batches([int(data.feats[i].shape[0]) for i in idx], self.cfg.max_frames)
        out = []
        for g in groups:
            feats, flens, targets, tlens = collate([(data.feats[idx[j]], data.targets[idx[j]]) for j in g])
            out.append((feats.to(self.device), flens, targets, tlens))
        return out

    # --- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, decode: bool = True) -> dict[str, float]:
        """Dev CTC loss (normalised as in training) and, with ``decode``, greedy WER / token error
        rate in percent."""
        from hfasr.decode.ctc import greedy_ids, tokens_to_words
        from hfasr.decode.score import score

        self.model.eval()
        total, count = 0.0, 0
        hyps: dict[str, list[str]] = {}
        units: dict[str, list[str]] = {}
        for grp, (feats, flens, targets, tlens) in zip(self.dev_groups, self.dev_batches):
            z = self.model(feats, flens)
            olens = self.model.output_lengths(flens)
            loss, n = ctc_loss(z, olens, targets, tlens, self.cfg.normalize)
            total += float(loss)
            count += n
            if decode:
                logp = torch.log_softmax(z.float(), -1).cpu()
                for b, i in enumerate(grp):
                    u = self.table.decode(greedy_ids(logp[b, : int(olens[b])]))
                    cid = self.dev.cut_ids[i]
                    units[cid] = u
                    hyps[cid] = tokens_to_words(u, self.table.unit, self.table.word_boundary, self.prons)
        res = {"obj": total / max(count, 1)}
        if decode:
            ids = self.dev.cut_ids
            res["wer"] = float(score({c: t.split() for c, t in zip(ids, self.dev.texts)}, hyps).wer)
            res["ter"] = float(score({c: self.table.units(t) for c, t in zip(ids, self.dev.texts)}, units).wer)
        return res

    def report(self, **extra: Any) -> dict[str, Any]:
        ev = self.evaluate(self.cfg.dev_wer)
        rec = {"run": self.cfg.run_name, "optimizer": self.cfg.optimizer, "criterion": "ctc", "model": self.cfg.model,
               "update": self.position["update"], "wall_s": round(self.wall, 3), "dev_obj": ev["obj"],
               "dev_wer": ev.get("wer"), "dev_ter": ev.get("ter"), **extra}
        if not math.isfinite(ev["obj"]):
            raise TrainingError(f"non-finite dev CTC loss at update {self.position['update']} (the last checkpoint "
                                "is intact)")
        self.history.append(rec)
        with (self.out / "history.jsonl").open("a") as f:
            f.write(json.dumps(rec) + "\n")
        parts = " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()
                         if k not in ("run", "optimizer", "criterion", "model") and v is not None)
        self.log_line(f"ctc {self.cfg.run_name} {parts}")
        return rec

    def log_line(self, line: str) -> None:
        from tqdm import tqdm

        tqdm.write(line)
        with (self.out / "train.log").open("a") as f:
            f.write(line + "\n")

    # --- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"state_dict": self.model.state_dict(), "model_config": dict(self.model.model_config),
                "optimizer": self.opt.state_dict(), "history": list(self.history), "wall": self.wall,
                "position": dict(self.position), "config": plain_config(self.cfg), "tokens": list(self.table.tokens)}

    def save_checkpoint(self) -> None:
        from hfasr.models import atomic_save

        atomic_save(self.state_dict(), self.out / "checkpoint.pt")

    def load_checkpoint(self, path: Path) -> None:
        from hfasr.models import load_checkpoint

        st = load_checkpoint(path)
        old, new = st.get("config", {}), plain_config(self.cfg)
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(f"{path} was written with a different config (keys {', '.join(diff)}); "
                              "use another --out or the same config")
        if st.get("tokens") != list(self.table.tokens):
            raise DataError(f"{path} was trained with other tokens ({len(st.get('tokens') or [])} vs "
                            f"{len(self.table)}); use another --out")
        self.model.load_state_dict(st["state_dict"])
        self.opt.load_state_dict(st["optimizer"])
        self.history = list(st["history"])
        self.wall = float(st["wall"])
        self.position = dict(st["position"])
        # history.jsonl may hold lines written after the checkpoint: rewrite it from the state
        with (self.out / "history.jsonl").open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.history)

    # --- training -----------------------------------------------------------------------------
    def fit(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if not self.history:
            (self.out / "history.jsonl").write_text("")
            self.log_line(f"# {self.cfg.run_name}: {len(self.train)} train utterances ({self.train.num_frames} "
                          f"frames), {len(self.dev)} dev, {len(self.table)} tokens, "
                          f"{sum(p.numel() for p in self.params)} parameters")
            self.report(note="init")
            self.save_checkpoint()
        if self.cfg.optimizer == "hf":
            self._fit_hf()
        else:
            self._fit_adam()

    def _fit_hf(self) -> None:
        while self.position["update"] < self.cfg.hf.updates:
            t0 = time.perf_counter()
            try:
                st = self.opt.step(self.objective)
            except FloatingPointError as e:
                raise TrainingError(f"{e} (the last checkpoint is intact)") from e
            self.wall += time.perf_counter() - t0
            self.position["update"] += 1
            self.log_line(st.line())
            if st.loss_after is not None and not math.isfinite(st.loss_after):
                raise TrainingError(f"non-finite CTC loss after HF update {self.position['update']}")
            self.report(train_obj=st.loss_after, heldout_obj=st.heldout_after, damping=st.damping_after,
                        cg_iters=st.cg_iters)
            self.save_checkpoint()

    def _fit_adam(self) -> None:
        from tqdm import tqdm

        cfg = self.cfg.adam
        n = len(self.train_batches)
        marks = {max(1, round(n * (k + 1) / cfg.reports_per_epoch)) for k in range(cfg.reports_per_epoch)}
        while self.position["epoch"] < cfg.epochs:
            ep = self.position["epoch"]
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed * 1000 + ep)).tolist()
            bar = tqdm(total=n, initial=self.position["batch"], desc=f"adam epoch {ep + 1}", leave=False,
                       disable=not self.progress)
            t0 = time.perf_counter()
            tot, cnt = 0.0, 0
            while self.position["batch"] < n:
                feats, flens, targets, tlens = self.train_batches[order[self.position["batch"]]]
                self.model.train()
                z = self.model(feats, flens)
                loss, c = ctc_loss(z, self.model.output_lengths(flens), targets, tlens, self.cfg.normalize)
                if not torch.isfinite(loss):
                    raise TrainingError(f"non-finite CTC loss in epoch {ep + 1}, batch {self.position['batch']}; "
                                        "lower adam.lr (the last checkpoint is intact)")
                self.opt.zero_grad(set_to_none=True)
                (loss / c).backward()
                if cfg.max_grad_norm > 0:
                    nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.opt.step()
                tot += float(loss.detach())
                cnt += c
                self.position["batch"] += 1
                bar.update(1)
                if self.position["batch"] in marks:
                    self.wall += time.perf_counter() - t0
                    self.position["update"] += 1
                    done = self.position["batch"] == n
                    if done:
                        self.position["epoch"] += 1
                        self.position["batch"] = 0
                    self.report(train_obj=tot / max(cnt, 1), epoch=ep + (1.0 if done else self.position["batch"] / n))
                    self.save_checkpoint()
                    tot, cnt = 0.0, 0
                    if done:
                        break
                    t0 = time.perf_counter()
            bar.close()


def plain_config(cfg: CtcTrainConfig) -> dict:
    """The config as compared on ``--resume``: all but the run length, threads, device and the
    sections that the run does not read (the other models' and the other optimizer's)."""
    from hfasr.config import _plain

    d = _plain(cfg)
    for k in ("num_threads", "device"):
        d.pop(k, None)
    for k in MODELS:
        if k != cfg.model:
            d.pop(k, None)
    d.pop("adam" if cfg.optimizer == "hf" else "hf", None)
    d.get("hf", {}).pop("updates", None)
    d.get("adam", {}).pop("epochs", None)
    return d


def compute_cmvn(feats: list[Tensor], utt_cmn: bool = False) -> tuple[Tensor, Tensor]:
    """Global mean / std over all frames (per-utterance mean removed first with ``utt_cmn``)."""
    x = torch.cat([f - f.mean(0, keepdim=True) if utt_cmn else f for f in feats])
    return x.mean(0), x.std(0).clamp_min(1e-5)


def run_ctc_training(cfg: CtcTrainConfig, data_dir: str | Path, task: str, out_dir: str | Path,
                     lang_dir: str | Path | None = None, resume: bool = False, progress: bool = True) -> CtcTrainer:
    """``hfasr train --criterion ctc``: load the data, train (resuming from ``<out>/checkpoint.pt``
    with ``resume``), write ``config.yaml``, ``tokens.txt`` and ``final.pt``."""
    from hfasr.config import save_config
    from hfasr.models import save_model

    out = Path(out_dir)
    ckpt = out / "checkpoint.pt"
    if ckpt.is_file() and not resume:
        raise HfasrError(f"{out} already holds a training run (checkpoint.pt): pass --resume to continue it, "
                         "or choose another --out")
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    if cfg.units == "phone":
        lexicon_path(task, lang_dir)  # fail before loading the data
    train_cuts, train_path = read_cuts(data_dir, task, cfg.train_split, progress)
    dev_cuts, dev_path = read_cuts(data_dir, task, cfg.dev_split, progress)
    table, prons = make_token_table(cfg, [t for _, _, t in train_cuts], task, lang_dir)
    train, dev = encode_cuts(train_cuts, table, train_path), encode_cuts(dev_cuts, table, dev_path)
    log.info("CTC %s: %d train utterances (%d frames), %d dev, %d tokens", cfg.run_name, len(train),
             train.num_frames, len(dev), len(table))
    cmvn = compute_cmvn(train.feats, cfg.model == "dnn" and cfg.dnn.utt_cmn)
    out.mkdir(parents=True, exist_ok=True)
    trainer = CtcTrainer(cfg, table, train, dev, out, cmvn=cmvn, prons=prons, progress=progress)
    if resume and ckpt.is_file():
        trainer.load_checkpoint(ckpt)
        trainer.log_line(f"# resumed from {ckpt} at update {trainer.position['update']}")
    save_config(cfg, out / "config.yaml")
    table.write(out / "tokens.txt")
    trainer.fit()
    last = trainer.history[-1]
    save_model(out / "final.pt", trainer.model, criterion="ctc", optimizer=cfg.optimizer, tokens=list(table.tokens),
               unit=table.unit, word_boundary=table.word_boundary, dev_obj=float(last["dev_obj"]),
               dev_wer=last["dev_wer"], update=int(last["update"]))
    trainer.log_line(f"# final.pt: update {last['update']} dev_obj={last['dev_obj']:.6f} "
                     f"dev_wer={last['dev_wer']} wall_s={trainer.wall:.1f}")
    return trainer
