#!/usr/bin/env python
"""HF vs Adam vs SGD on the same DNN, data and machine (frame cross-entropy training).

Usage (after a recipe has produced features and GMM alignments):
  .venv/bin/python bench/hf_vs_sgd.py --data-dir recipes/fsdd/data --task fsdd_conn \
      --ali-dir recipes/fsdd/exp/gmm --out exp/bench_hf_vs_sgd [--epochs 8] [--hf-updates 20]

Each optimizer trains the same architecture from the same initialisation (same seed) with
``hfasr.train.run_training``; after every epoch (first-order) or every HF update the dev frame
CE and accuracy are recorded. The x axis "data passes" counts gradient-equivalent passes over
the training frames: 1 per first-order epoch; per HF update 1 (gradient) + (G v products ×
curvature fraction × the measured G v / gradient cost) + (loss evaluations × 1/3, a forward pass
over the evaluated data). Writes ``OUT/hf_vs_sgd.png`` and ``OUT/hf_vs_sgd.md`` and prints the
table, including the ratio of the best first-order dev accuracy to HF's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def gv_ratio(frames: int = 1024) -> float:
    import time

    from torch import nn
    from torch.func import functional_call

    from hfasr.criteria.curvature import SoftmaxFisher
    from hfasr.models import DNN
    from hfasr.optim import GaussNewton

    m = DNN(40, 100, hidden_dim=256, num_layers=4, context=5)
    rows = torch.randn(frames, m.spliced_dim)
    f = m.frames()
    names = [n for n, _ in f.named_parameters()]
    ps = list(f.parameters())
    y = torch.randint(0, 100, (frames,))

    def grad():
        torch.autograd.grad(nn.functional.cross_entropy(f(rows), y, reduction="sum"), ps)

    gn = GaussNewton(lambda p: functional_call(f, dict(zip(names, p)), (rows,)), [p.detach() for p in ps], SoftmaxFisher, frames)
    v = torch.randn(sum(p.numel() for p in ps))

    def t(fn, r=20):
        fn()
        t0 = time.perf_counter()
        for _ in range(r):
            fn()
        return (time.perf_counter() - t0) / r

    return t(lambda: gn(v)) / t(grad)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--ali-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=8, help="first-order epochs")
    ap.add_argument("--hf-updates", type=int, default=60)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hfasr.config import load_config
    from hfasr.train import TrainConfig, run_training

    ratio = gv_ratio()
    common = {"dnn": {"hidden_dim": args.hidden, "num_layers": 4, "context": 5}, "num_threads": args.threads,
              "seed": 0, "batch_size": 512}
    runs = {
        "adam": {**common, "optimizer": "adam", "lr": 1e-3, "epochs": args.epochs, "lr_schedule": "newbob"},
        "sgd": {**common, "optimizer": "sgd", "lr": 0.1, "epochs": args.epochs, "lr_schedule": "newbob"},
        # the settings of recipes/fsdd/conf/train_hf.yaml: Martens' sparse init, small initial
        # damping, rho / backtracking / line search on 5% held-out training frames
        "hf": {**common, "dnn": {**common["dnn"], "init": "sparse"}, "optimizer": "hf",
               "hf": {"updates": args.hf_updates, "curvature_fraction": 0.02, "heldout_fraction": 0.05,
                      "optimizer": {"cg_max_iters": 100, "damping": 0.01, "rho_data": "heldout",
                                    "backtrack_data": "heldout", "linesearch_data": "heldout"}}},
    }
    curves = {}
    for name, d in runs.items():
        cfg = load_config(TrainConfig, None, d)
        out = args.out / name
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        exp = run_training(cfg, args.data_dir, args.task, args.ali_dir, out, progress=False)
        passes, secs, acc, ce = [0.0], [0.0], [exp.history[0]["dev_acc"]], [exp.history[0]["dev_obj"]]
        hist = exp.driver.opt.history if name == "hf" else None
        for i, h in enumerate(exp.history[1:]):
            if name == "hf":
                s = hist[i]
                ev = sum(s.evals.values())
                p = 1.0 + s.products * 0.02 * ratio + ev / 3.0
            else:
                p = 1.0
            passes.append(passes[-1] + p)
            secs.append(h["wall_s"])
            acc.append(h["dev_acc"])
            ce.append(h["dev_obj"])
        curves[name] = (passes, secs, acc, ce)
    args.out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for name, (p, s, a, c) in curves.items():
        ax[0].plot(p, [100 * x for x in a], marker="o", label=name)
        ax[1].plot(s, [100 * x for x in a], marker="o", label=name)
        ax[2].plot(p, c, marker="o", label=name)
    ax[0].set_xlabel("data passes (gradient-equivalent)"), ax[0].set_ylabel("dev frame accuracy %")
    ax[1].set_xlabel("wall time (s)"), ax[1].set_ylabel("dev frame accuracy %")
    ax[2].set_xlabel("data passes"), ax[2].set_ylabel("dev frame CE")
    for a in ax:
        a.legend(), a.grid(alpha=0.3)
    fig.suptitle(f"{args.task}: HF vs Adam vs SGD (DNN 4x{args.hidden}, {args.threads} thread(s), Gv/grad {ratio:.2f})")
    fig.tight_layout()
    fig.savefig(args.out / "hf_vs_sgd.png", dpi=100)
    lines = [f"G v / gradient cost (measured, same machine): {ratio:.2f}", "",
             "| optimizer | best dev acc % | final dev CE | data passes | wall s |", "|---|---|---|---|---|"]
    for name, (p, s, a, c) in curves.items():
        lines.append(f"| {name} | {100 * max(a):.2f} | {c[-1]:.4f} | {p[-1]:.1f} | {s[-1]:.0f} |")
    best_fo = max(max(curves["adam"][2]), max(curves["sgd"][2]))
    lines.append("")
    lines.append(f"HF best dev acc − best first-order dev acc: {100 * (max(curves['hf'][2]) - best_fo):+.2f} points")
    text = "\n".join(lines)
    (args.out / "hf_vs_sgd.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
