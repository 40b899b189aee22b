"""``hfasr train``: train an acoustic model on GMM alignments (frame cross-entropy).

Reads ``DATA_DIR/<task>_feats_{train,dev}.jsonl.gz`` and ``<task>_stats.pt`` (``hfasr
features``) and ``ALI_DIR/ali_{train,dev}.pt`` (``hfasr gmm``); writes to ``--out``:
``config.yaml`` (resolved), ``train.log`` (one ``epoch=N ...`` line per epoch), ``checkpoint.pt``
(latest epoch, atomic), ``final.pt`` and ``prior.pt``. ``--resume`` continues a killed run
exactly from its last checkpoint (or starts one if there is none yet).

Options come from ``--config`` (YAML :class:`hfasr.train.TrainConfig`); the flags below
override it.

Sequence training (``--criterion mmi|bmmi|mpe|smbr``) fine-tunes ``--init`` (a CE model) on
the lattices of ``hfasr lattices`` (``--lat-dir``) with ``--optimizer hf`` or ``sgd`` (Kaldi
nnet1's per-utterance SGD baseline); its config is :class:`hfasr.train.sequence.SeqTrainConfig`
and it also writes ``history.jsonl`` (dev objective / accuracy / WER per update, for ``hfasr
report``). ``--graph-dir`` and ``--model-dir`` (HCLG and GMM dirs) enable the dev WER reports.

CTC training (``--criterion ctc --model blstm|mdlstm|dnn --optimizer hf|adam``) trains from
scratch on the transcripts (no ``--ali-dir``); tokens are the phones of ``--lang``'s lexicon
(or the task's built-in one) or characters (config ``units: char``). Its config is
:class:`hfasr.train.ctc.CtcTrainConfig`; it writes ``history.jsonl`` (dev CTC loss and greedy
WER per HF update / Adam report), ``tokens.txt`` and ``final.pt`` (decode with ``hfasr
ctc-decode``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("train an acoustic model: CE (SGD/Adam/HF) on GMM alignments, sequence training (MMI/bMMI/MPE/sMBR, "
        "HF/SGD) on lattices, or CTC (BLSTM/MDLSTM/DNN, HF/Adam)")

# Kept in step with hfasr.train.trainer.CRITERIA / OPTIMIZERS (not imported here: torch is slow
# to import and every subcommand's arguments are built at start-up).
CRITERIA = ("ce", "mmi", "bmmi", "mpe", "smbr", "ctc")
OPTIMIZERS = ("sgd", "adam", "hf")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, required=True,
                   help="dir with <task>_feats_<split>.jsonl.gz and <task>_stats.pt")
    p.add_argument("--task", required=True, help="task name, e.g. yesno, synth")
    p.add_argument("--ali-dir", type=Path, help="GMM dir with ali_train.pt and ali_dev.pt (CE and sequence training)")
    p.add_argument("--out", type=Path, required=True, help="experiment dir")
    p.add_argument("--config", type=Path, help="YAML TrainConfig")
    p.add_argument("--criterion", choices=CRITERIA, help="training criterion (config: criterion; default ce)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer (config: optimizer; default sgd)")
    p.add_argument("--epochs", type=int, help="maximum epochs")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--batch-size", type=int, help="frames per minibatch")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--num-threads", type=int, help="torch intra-op threads")
    p.add_argument("--device", help="cpu, cuda, cuda:N")
    p.add_argument("--init", type=Path, help="sequence training: the CE model to start from (final.pt)")
    p.add_argument("--lat-dir", type=Path, help="sequence training: dir with lats_<split>.pt (hfasr lattices)")
    p.add_argument("--graph-dir", type=Path, help="sequence training: HCLG dir for the dev WER reports")
    p.add_argument("--model-dir", type=Path, help="sequence training: GMM dir (final.mdl) for the dev WER reports")
    p.add_argument("--updates", type=int, help="sequence / CTC training with hf: number of HF updates")
    p.add_argument("--model", choices=("blstm", "mdlstm", "dnn"), help="architecture (config: model); CE (hybrid): dnn on spliced frames, blstm / mdlstm on whole utterances")
    p.add_argument("--lang", type=Path, help="CTC with phone units: lang dir whose lexicon.txt gives the phones")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_sequence(args: argparse.Namespace) -> None:
    from hfasr.config import load_config
    from hfasr.errors import HfasrError
    from hfasr.train.sequence import SeqTrainConfig, run_sequence_training

    if args.init is None or args.lat_dir is None:
        raise HfasrError(f"--criterion {args.criterion} (sequence training) needs --init (a CE model) and --lat-dir")
    cfg = load_config(SeqTrainConfig, args.config, {"criterion": args.criterion, "optimizer": args.optimizer,
                                                    "seed": args.seed, "num_threads": args.num_threads,
                                                    "device": args.device})
    if args.updates is not None:
        cfg.hf.updates = args.updates
    if args.epochs is not None:
        cfg.sgd.epochs = args.epochs
    if args.lr is not None:
        cfg.sgd.lr = args.lr
    if cfg.dev_wer and (args.graph_dir is None or args.model_dir is None):
        cfg.dev_wer = False
    t = run_sequence_training(cfg, args.data_dir, args.task, args.ali_dir, args.lat_dir, args.init, args.out,
                              graph_dir=args.graph_dir, model_dir=args.model_dir, resume=args.resume,
                              progress=not args.quiet)
    last = t.history[-1]
    print(f"{args.out}/final.pt: {cfg.optimizer}-{cfg.criterion}, {last['update']} updates, "
          f"{t.wall:.1f} s, dev objective {last['dev_obj']:.5f}, dev frame accuracy {100 * last['dev_acc']:.2f}%")


def run_ctc(args: argparse.Namespace) -> None:
    from hfasr.config import load_config
    from hfasr.train.ctc import CtcTrainConfig, run_ctc_training

    cfg = load_config(CtcTrainConfig, args.config, {"criterion": "ctc", "model": args.model,
                                                    "optimizer": args.optimizer, "seed": args.seed,
                                                    "num_threads": args.num_threads, "device": args.device})
    if args.updates is not None:
        cfg.hf.updates = args.updates
    if args.epochs is not None:
        cfg.adam.epochs = args.epochs
    if args.lr is not None:
        cfg.adam.lr = args.lr
    t = run_ctc_training(cfg, args.data_dir, args.task, args.out, lang_dir=args.lang, resume=args.resume,
                         progress=not args.quiet)
    last = t.history[-1]
    wer = "" if last["dev_wer"] is None else f", dev greedy WER {last['dev_wer']:.2f}%"
    print(f"{args.out}/final.pt: {cfg.run_name}, {last['update']} updates, {t.wall:.1f} s, "
          f"dev CTC loss {last['dev_obj']:.5f}{wer}")


def run(args: argparse.Namespace) -> None:
    from hfasr.config import load_config
    from hfasr.errors import HfasrError

    criterion = args.criterion or _config_criterion(args.config)
    if criterion == "ctc":
        return run_ctc(args)
    if args.ali_dir is None:
        raise HfasrError(f"--criterion {criterion or 'ce'} needs --ali-dir (the GMM dir with the alignments)")
    if criterion not in (None, "ce"):
        return run_sequence(args)
    from hfasr.train import TrainConfig, run_training

    overrides = {"criterion": args.criterion, "optimizer": args.optimizer, "model": args.model, "epochs": args.epochs,
                 "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
                 "num_threads": args.num_threads, "device": args.device}
    cfg = load_config(TrainConfig, args.config, overrides)
    trainer = run_training(cfg, args.data_dir, args.task, args.ali_dir, args.out, resume=args.resume,
                           progress=not args.quiet)
    m = trainer.final_metrics()
    print(f"{args.out}/final.pt: epoch {m['epoch']}, dev frame CE {m['dev_loss']:.4f}, "
          f"dev frame accuracy {100 * m['dev_acc']:.2f}%")


def _config_criterion(path: Path | None) -> str | None:
    """The ``criterion`` key of a YAML config (to choose CE or sequence training)."""
    if path is None or not path.is_file():
        return None
    import yaml

    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None  # load_config reports it
    return d.get("criterion") if isinstance(d, dict) else None
