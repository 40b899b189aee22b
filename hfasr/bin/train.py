"""``hfasr train``: train an acoustic model on GMM alignments (frame cross-entropy).

Reads ``DATA_DIR/<task>_feats_{train,dev}.jsonl.gz`` and ``<task>_stats.pt`` (``hfasr
features``) and ``ALI_DIR/ali_{train,dev}.pt`` (``hfasr gmm``); writes to ``--out``:
``config.yaml`` (resolved), ``train.log`` (one ``epoch=N ...`` line per epoch), ``checkpoint.pt``
(latest epoch, atomic), ``final.pt`` and ``prior.pt``. ``--resume`` continues a killed run
exactly from its last checkpoint (or starts one if there is none yet).

Options come from ``--config`` (YAML :class:`hfasr.train.TrainConfig`); the flags below
override it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train an acoustic model (CE with SGD/Adam or Hessian-free) on GMM alignments"

# Kept in step with hfasr.train.trainer.CRITERIA / OPTIMIZERS (not imported here: torch is slow
# to import and every subcommand's arguments are built at start-up).
CRITERIA = ("ce",)
OPTIMIZERS = ("sgd", "adam", "hf")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, required=True,
                   help="dir with <task>_feats_<split>.jsonl.gz and <task>_stats.pt")
    p.add_argument("--task", required=True, help="task name, e.g. yesno, synth")
    p.add_argument("--ali-dir", type=Path, required=True, help="GMM dir with ali_train.pt and ali_dev.pt")
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
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> None:
    from hfasr.config import load_config
    from hfasr.train import TrainConfig, run_training

    overrides = {"criterion": args.criterion, "optimizer": args.optimizer, "epochs": args.epochs,
                 "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
                 "num_threads": args.num_threads, "device": args.device}
    cfg = load_config(TrainConfig, args.config, overrides)
    trainer = run_training(cfg, args.data_dir, args.task, args.ali_dir, args.out, resume=args.resume,
                           progress=not args.quiet)
    m = trainer.final_metrics()
    print(f"{args.out}/final.pt: epoch {m['epoch']}, dev frame CE {m['dev_loss']:.4f}, "
          f"dev frame accuracy {100 * m['dev_acc']:.2f}%")
