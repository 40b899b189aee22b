"""The sequence objective of models at several acoustic scales kappa, on a split's lattices: how much
of a sequence-training "gain" is a mere rescaling of the network's outputs.

For each model (a CE ``final.pt`` or a kept ``models/<update>.pt`` of a sequence run), the dev
sMBR objective (state accuracy per frame, lattices of ``--lat-dir``) at each kappa of ``--kappas``,
one line per model (bench/results/ce_ablation.md, "The acoustic scale of sMBR").

Usage: ``python bench/seq_kappa.py MODEL [MODEL ...] --data-dir DATA --task an4 --lat-dir EXP/lats
--ali-dir EXP/dnn_ali --prior EXP/dnn_ce/prior.pt [--split dev] [--criterion smbr]
[--kappas 0.05,0.1,0.15,0.2,0.3,0.5,1]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hfasr.config import from_dict
from hfasr.lattice.generate import lattice_path, load_lattices
from hfasr.models import load_model, load_prior
from hfasr.train.sequence import SeqTrainConfig, SequenceTask, load_seq_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--lat-dir", type=Path, required=True)
    ap.add_argument("--ali-dir", type=Path, required=True)
    ap.add_argument("--prior", type=Path, required=True, help="prior.pt of the CE model")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--criterion", default="smbr")
    ap.add_argument("--kappas", default="0.05,0.1,0.15,0.2,0.3,0.5,1")
    args = ap.parse_args()
    torch.set_num_threads(1)
    kappas = [float(k) for k in args.kappas.split(",")]
    lats = load_lattices(lattice_path(args.lat_dir, args.split))
    data = load_seq_data(args.data_dir, args.task, args.split, args.ali_dir, lats, lattice_path(args.lat_dir, args.split))
    prior = load_prior(args.prior)
    print("| model | " + " | ".join(f"kappa {k:g}" for k in kappas) + " |")
    print("|---|" + "---|" * len(kappas))
    for m in args.models:
        row = []
        for k in kappas:
            cfg = from_dict(SeqTrainConfig, {"criterion": args.criterion, "optimizer": "hf", "dev_wer": False,
                                             "sequence": {"acoustic_scale": k}})
            task = SequenceTask(cfg, load_model(m), prior, lats, data, data, torch.device("cpu"), progress=False)
            row.append(-task.evaluate(decode=False)["dev_obj"])
        print(f"| {m.parent.name}/{m.name} | " + " | ".join(f"{v:.4f}" for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()
