#!/usr/bin/env python
"""HF vs Adam CTC training on the same model, data and machine (dev CTC loss and greedy WER
against wall time).

Usage (after a recipe's stages 1-3: features and the lang dir), default the yesno recipe:
  OMP_NUM_THREADS=1 .venv/bin/python bench/ctc_hf_vs_adam.py [--recipe yesno] [--model blstm] \
      [--out exp/bench_ctc_hf_vs_adam] [--hf-updates 20] [--adam-epochs 20]

Both runs are ``hfasr train --criterion ctc`` (:func:`hfasr.train.ctc.run_ctc_training`) with
the recipe's ``conf/ctc_<model>_hf.yaml`` and ``conf/ctc_<model>_adam.yaml`` (or ``--hf-config``
/ ``--adam-config``), one after the other in this process, with the same seed (the same initial
model) and the same torch thread count (``--threads``, default 1). ``wall_s`` of the histories
counts training time only (not the dev reports). Writes ``OUT/<model>_hf/``, ``OUT/<model>_adam/``
(the experiment dirs), ``OUT/ctc_<model>_hf_vs_adam.png`` (dev CTC loss and dev greedy WER against
updates and wall time, :func:`hfasr.bin.report.plot`) and ``OUT/ctc_<model>_hf_vs_adam.md``
(printed too): the per-run table and the time-to-the-other's-final-dev-loss ratios of ``hfasr
report``, plus the wall time each run needs to first reach a dev greedy WER ≤ ``--wer-target``
(default 0) and the HF / Adam ratio of those times.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def first_time_at_wer(history: Path, target: float) -> float | None:
    """Wall time of the first report with ``dev_wer <= target`` (None: never)."""
    for line in history.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r.get("dev_wer") is not None and r["dev_wer"] <= target:
                return float(r["wall_s"])
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="yesno", help="recipes/<recipe> (data/, exp/lang, conf/); default yesno")
    p.add_argument("--task", help="task name of the feature manifests (default: the recipe's; fsdd: fsdd_conn)")
    p.add_argument("--data-dir", type=Path, help="default recipes/<recipe>/data")
    p.add_argument("--lang", type=Path, help="lang dir (default recipes/<recipe>/exp/lang)")
    p.add_argument("--model", default="blstm", choices=("blstm", "mdlstm", "dnn"))
    p.add_argument("--hf-config", type=Path, help="default recipes/<recipe>/conf/ctc_<model>_hf.yaml")
    p.add_argument("--adam-config", type=Path, help="default recipes/<recipe>/conf/ctc_<model>_adam.yaml")
    p.add_argument("--hf-updates", type=int, help="override hf.updates")
    p.add_argument("--adam-epochs", type=int, help="override adam.epochs")
    p.add_argument("--wer-target", type=float, default=0.0, help="dev greedy WER (percent) for the time-to-WER ratio")
    p.add_argument("--threads", type=int, default=1, help="torch threads for both runs (default 1)")
    p.add_argument("--out", type=Path, default=Path("exp/bench_ctc_hf_vs_adam"))
    p.add_argument("--fresh", action="store_true", help="delete existing run dirs first (default: resume them)")
    args = p.parse_args()

    import torch

    from hfasr.bin.report import markdown, plot, read_history
    from hfasr.config import load_config
    from hfasr.train.ctc import CtcTrainConfig, run_ctc_training

    root = Path("recipes") / args.recipe
    task = args.task or {"fsdd": "fsdd_conn"}.get(args.recipe, args.recipe)
    data_dir = args.data_dir or root / "data"
    lang = args.lang or root / "exp" / "lang"
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    dirs = {}
    for opt in ("hf", "adam"):
        conf = getattr(args, f"{opt}_config") or root / "conf" / f"ctc_{args.model}_{opt}.yaml"
        over = {"criterion": "ctc", "model": args.model, "optimizer": opt, "num_threads": args.threads}
        cfg = load_config(CtcTrainConfig, conf, over)
        if opt == "hf" and args.hf_updates:
            cfg.hf.updates = args.hf_updates
        if opt == "adam" and args.adam_epochs:
            cfg.adam.epochs = args.adam_epochs
        d = dirs[opt] = args.out / f"{args.model}_{opt}"
        if args.fresh and d.exists():
            shutil.rmtree(d)
        print(f"# {opt}: {conf} -> {d}", flush=True)
        run_ctc_training(cfg, data_dir, task, d, lang_dir=lang, resume=True, progress=False)

    runs = [read_history(dirs["hf"]), read_history(dirs["adam"])]
    prefix = args.out / f"ctc_{args.model}_hf_vs_adam"
    plot(runs, prefix.with_suffix(".png"))
    t_hf = first_time_at_wer(dirs["hf"] / "history.jsonl", args.wer_target)
    t_adam = first_time_at_wer(dirs["adam"] / "history.jsonl", args.wer_target)
    fmt = lambda t: "never" if t is None else f"{t:.1f}"
    ratio = f"{t_hf / t_adam:.2f}" if t_hf is not None and t_adam else "n/a"
    text = (f"# CTC {args.model}: HF vs Adam on {args.recipe} ({args.threads} torch thread(s), this machine)\n\n"
            + markdown(runs)
            + f"\n\n| wall s to dev greedy WER <= {args.wer_target:g}% | HF | Adam | HF / Adam |\n|---|---|---|---|\n"
            + f"| | {fmt(t_hf)} | {fmt(t_adam)} | {ratio} |\n")
    prefix.with_suffix(".md").write_text(text)
    print(text)
    print(f"plot: {prefix.with_suffix('.png')}")


if __name__ == "__main__":
    main()
