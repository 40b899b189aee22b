"""``hfasr train``: train an acoustic model (one command for every criterion and optimizer).

Each criterion has its own config schema (YAML via ``--config``), and the flags below each set
exactly one of its keys; a flag the chosen criterion (or optimizer) does not read is an error:

========================  =====================  ========================  ======================
flag                      ``ce`` (TrainConfig)   ``mmi|bmmi|mpe|smbr``      ``ctc`` (CtcTrainConfig)
                                                 (SeqTrainConfig)
========================  =====================  ========================  ======================
``--model``               ``model``              (error)                   ``model``
``--epochs``              ``epochs``             ``sgd.epochs``            ``adam.epochs``
``--lr``                  ``lr``                 ``sgd.lr``                ``adam.lr``
``--batch-size``          ``batch_size``         (error)                   (error)
``--updates``             ``hf.updates``         ``hf.updates``            ``hf.updates``
``--optimizer``           ``optimizer``: sgd|adam|hf, sgd|hf, adam|hf
``--seed`` ...            ``seed``, ``num_threads``, ``device`` (every schema)
========================  =====================  ========================  ======================

``--epochs`` / ``--lr`` / ``--batch-size`` need a first-order optimizer, ``--updates`` needs
``--optimizer hf``. Inputs: CE reads ``--ali-dir`` (GMM alignments); sequence training reads
``--ali-dir``, ``--init`` (the CE model) and ``--lat-dir`` (``hfasr lattices``), and with
``--graph-dir`` / ``--model-dir`` decodes the dev set at every report; CTC reads ``--lang``
(phone units). Every run writes ``config.yaml`` (resolved), ``train.log``, ``history.jsonl``
(one record per report, for ``hfasr report``), ``checkpoint.pt`` (atomic, after every report)
and ``final.pt``; ``--resume`` continues a killed run exactly. Under ``torchrun`` HF training
runs distributed (``torchrun --nproc-per-node N $(which hfasr) train ...``). ``--tensorboard DIR``
(optional package: ``pip install 'hfasr[tensorboard]'``) also writes the history's curves as
TensorBoard scalars in DIR (``dev/obj``, ``dev/wer``, ``train/obj``, ``hf/damping``, ...: step =
the record's ``update``, walltime = the run's start + ``wall_s``); it is not part of the config,
so a run may be resumed with or without it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("train an acoustic model: CE (SGD/Adam/HF) on GMM alignments, sequence training (MMI/bMMI/MPE/sMBR, "
        "HF/SGD) on lattices, or CTC (BLSTM/MDLSTM/DNN, HF/Adam)")

# The choices (not imported from hfasr.train: torch is slow to import and every subcommand's
# arguments are built at start-up; tests/test_config.py checks them against the schemas).
CRITERIA = ("ce", "mmi", "bmmi", "mpe", "smbr", "ctc")
OPTIMIZERS = ("sgd", "adam", "hf")

# flag -> config key, per kind of criterion (None: the flag is not read by that kind)
FLAG_KEYS: dict[str, dict[str, str | None]] = {
    "ce": {"model": "model", "epochs": "epochs", "lr": "lr", "batch_size": "batch_size", "updates": "hf.updates"},
    "sequence": {"model": None, "epochs": "sgd.epochs", "lr": "sgd.lr", "batch_size": None, "updates": "hf.updates"},
    "ctc": {"model": "model", "epochs": "adam.epochs", "lr": "adam.lr", "batch_size": None, "updates": "hf.updates"},
}
# path flags each kind reads (the others are an error)
PATH_FLAGS = {"ce": ("ali_dir",), "sequence": ("ali_dir", "init", "lat_dir", "graph_dir", "model_dir"),
              "ctc": ("lang", "init")}
SCHEMA = {"ce": "TrainConfig (hfasr/train/ce.py)", "sequence": "SeqTrainConfig (hfasr/train/sequence.py)",
          "ctc": "CtcTrainConfig (hfasr/train/ctc.py)"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, required=True,
                   help="dir with <task>_feats_<split>.jsonl.gz and <task>_stats.pt")
    p.add_argument("--task", required=True, help="task name, e.g. yesno, synth")
    p.add_argument("--out", type=Path, required=True, help="experiment dir")
    p.add_argument("--config", type=Path,
                   help="YAML config; its schema depends on the criterion: ce: " + SCHEMA["ce"]
                   + "; mmi/bmmi/mpe/smbr: " + SCHEMA["sequence"] + "; ctc: " + SCHEMA["ctc"])
    p.add_argument("--criterion", choices=CRITERIA, help="training criterion (config: criterion; default ce)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer (config: optimizer)")
    p.add_argument("--model", choices=("blstm", "mdlstm", "dnn"),
                   help="ce / ctc: architecture (config: model); ce: dnn on spliced frames, blstm / mdlstm on "
                   "whole utterances")
    p.add_argument("--epochs", type=int, help="sgd / adam: epochs (ce: epochs; sequence: sgd.epochs; ctc: adam.epochs)")
    p.add_argument("--lr", type=float, help="sgd / adam: learning rate (ce: lr; sequence: sgd.lr; ctc: adam.lr)")
    p.add_argument("--batch-size", type=int, help="ce with sgd / adam: frames per minibatch (batch_size)")
    p.add_argument("--updates", type=int, help="hf: number of HF updates (hf.updates)")
    p.add_argument("--seed", type=int, help="random seed (seed)")
    p.add_argument("--num-threads", type=int, help="torch intra-op threads (num_threads)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (device)")
    p.add_argument("--ali-dir", type=Path, help="ce / sequence: GMM dir with ali_train.pt and ali_dev.pt")
    p.add_argument("--init", type=Path, help="sequence: the CE model to start from (final.pt); ctc: a CTC model of "
                                            "the same architecture to fine-tune (e.g. Adam's final.pt, then HF)")
    p.add_argument("--lat-dir", type=Path, help="sequence: the lattice dir of hfasr lattices (lats_<split>.index.pt + shards)")
    p.add_argument("--graph-dir", type=Path, help="sequence: HCLG dir for the dev WER reports")
    p.add_argument("--model-dir", type=Path, help="sequence: GMM dir (final.mdl) for the dev WER reports")
    p.add_argument("--lang", type=Path, help="ctc with phone units: lang dir whose lexicon.txt gives the phones")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--tensorboard", type=Path, metavar="DIR",
                   help="also write the training curves (every numeric history.jsonl field per report) as "
                   "TensorBoard scalars in DIR; needs pip install 'hfasr[tensorboard]'; --resume continues DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def kind_of(criterion: str) -> str:
    return "ce" if criterion == "ce" else "ctc" if criterion == "ctc" else "sequence"


def load_train_config(args: argparse.Namespace):
    """The criterion's config from ``--config`` and the flags (errors name the unused flag)."""
    from hfasr.config import load_config
    from hfasr.errors import ConfigError

    criterion = args.criterion or _config_criterion(args.config) or "ce"
    kind = kind_of(criterion)
    for flag in ("ali_dir", "init", "lat_dir", "graph_dir", "model_dir", "lang"):
        if getattr(args, flag) is not None and flag not in PATH_FLAGS[kind]:
            raise ConfigError(f"--{flag.replace('_', '-')} is not used by --criterion {criterion}")
    overrides = {"criterion": criterion, "optimizer": args.optimizer, "seed": args.seed,
                 "num_threads": args.num_threads, "device": args.device}
    given = {}
    for flag, key in FLAG_KEYS[kind].items():
        value = getattr(args, flag)
        if value is None:
            continue
        if key is None:
            raise ConfigError(f"--{flag.replace('_', '-')} is not used by --criterion {criterion} "
                              f"(schema {SCHEMA[kind]})")
        overrides[key] = value
        given[flag] = key
    if kind == "ce":
        from hfasr.train.ce import TrainConfig as cls
    elif kind == "ctc":
        from hfasr.train.ctc import CtcTrainConfig as cls
    else:
        from hfasr.train.sequence import SeqTrainConfig as cls
    cfg = load_config(cls, args.config, overrides)
    unused = cfg.unused_sections()
    for flag, key in given.items():
        if any(key == s or key.startswith(s + ".") for s in unused) and flag != "model":
            raise ConfigError(f"--{flag.replace('_', '-')} ({key}) is not used by --criterion {criterion} with "
                              f"--optimizer {cfg.optimizer}")
    return cfg


def run(args: argparse.Namespace) -> None:
    from hfasr.train.experiment import tensorboard_logging

    cfg = load_train_config(args)
    with tensorboard_logging(getattr(args, "tensorboard", None)):  # checks the tensorboard package first
        exp = _train(args, cfg)
    last = exp.final_record()
    metrics = ", ".join(f"{name} {last[k]:.5g}" for k, name in
                        (("dev_obj", "dev objective"), ("dev_acc", "dev frame accuracy"), ("dev_wer", "dev WER"))
                        if k in last)
    if exp.rank == 0:
        print(f"{args.out}/final.pt: {cfg.run_name}, update {last['update']}, {exp.wall:.1f} s, {metrics}")


def _train(args: argparse.Namespace, cfg):
    from hfasr.errors import HfasrError

    kind = kind_of(cfg.criterion)
    progress = not args.quiet
    if kind == "ce":
        from hfasr.train.ce import run_training

        if args.ali_dir is None:
            raise HfasrError("--criterion ce needs --ali-dir (the GMM dir with the alignments)")
        exp = run_training(cfg, args.data_dir, args.task, args.ali_dir, args.out, resume=args.resume,
                           progress=progress)
    elif kind == "ctc":
        from hfasr.train.ctc import run_ctc_training

        exp = run_ctc_training(cfg, args.data_dir, args.task, args.out, lang_dir=args.lang, resume=args.resume,
                               progress=progress, init=args.init)
    else:
        from hfasr.train.sequence import run_sequence_training

        if args.ali_dir is None or args.init is None or args.lat_dir is None:
            raise HfasrError(f"--criterion {cfg.criterion} (sequence training) needs --ali-dir, --init (a CE model) "
                             "and --lat-dir")
        if cfg.dev_wer and (args.graph_dir is None or args.model_dir is None):
            cfg.dev_wer = False
        exp = run_sequence_training(cfg, args.data_dir, args.task, args.ali_dir, args.lat_dir, args.init, args.out,
                                    graph_dir=args.graph_dir, model_dir=args.model_dir, resume=args.resume,
                                    progress=progress)
    return exp


def _config_criterion(path: Path | None) -> str | None:
    """The ``criterion`` key of a YAML config (to choose the schema)."""
    if path is None or not path.is_file():
        return None
    import yaml

    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None  # load_config reports it
    return d.get("criterion") if isinstance(d, dict) else None
