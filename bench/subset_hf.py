#!/usr/bin/env python
"""Full-batch HF vs HF on successive data subsets, with each kind of reuse switched off in turn.

Usage (after a recipe has produced the CE model, the GMM alignments and the lattices, i.e. its
stages up to 7 with --seq-runs):
  .venv/bin/python bench/subset_hf.py --data-dir recipes/fsdd/data --task fsdd_conn --exp recipes/fsdd/exp \
      [--updates 8] [--subsets 4] [--time-budget SECONDS | --budget-fraction F] [--dev-wer] [--no-decode-test] [--out DIR]

HF-sMBR sequence training (:class:`hfasr.train.sequence.SequenceTask` run by :class:`hfasr.train.experiment.Experiment`, the code path of
``hfasr train --criterion smbr --optimizer hf``) from ``EXP/dnn_ce/final.pt`` on
``EXP/lats/lats_{train,dev}.pt`` and the alignments of ``EXP/gmm``, in these variants (all with
the same base config: ``--config``, default ``EXP/../conf/seq_smbr_hf.yaml`` if it exists):

  full        full-batch HF, ``--updates`` updates (gradient on all training utterances)
  subset      K = ``--subsets`` successive subsets, all reuse on: gradient_reuse dynamic
              (dynamically weighted stochastic-average gradient), CG warm start and damping
              carried over (HFConfig.reuse_warm_start / reuse_damping)
  subset-sag        ... with plain SAG averaging instead of the dynamic weights
  subset-no-grad    ... no gradient reuse (each update: its subset's gradient only)
  subset-saga       ... SAGA: stale mean corrected by the subset's own gradient change
                    (g_s − g_s,stored + mean of the stored gradients)
  subset-decay      ... stored gradients weighted reuse_decay^age (age in updates; --reuse-decay, default 0.5)
  subset-no-warm    ... CG from 0 every update
  subset-no-damp    ... λ reset to its initial value every update

The held-out set (ρ / CG-backtracking / line search) is the same in all variants. A subset
variant runs at most ``--subset-updates`` updates (default K × ``--updates``: as many gradient
passes over the data as full-batch HF) and stops once its training wall time exceeds
``--time-budget`` (default: ``--budget-fraction`` (1.0) × the full-batch run's training wall time).

Each variant writes ``OUT/<variant>/`` (history.jsonl with the dev objective and wall time after
every update, train.log, checkpoint.pt, final.pt, prior.pt, config.yaml; a killed variant
resumes from its checkpoint, a finished one is reused unless ``--force``), and unless
``--no-decode-test`` its test WER (``OUT/<variant>/decode_test``, as the recipes decode:
LM-weight sweep on dev, test WER with 95% CI). Prints (and writes ``OUT/subset_hf.md``) a
markdown table: variant, updates, wall s, final and best dev objective, the wall time at which
the variant first reaches full-batch HF's final dev objective and its ratio to full-batch's own
time to it (the issue's bar: ≤ 0.5 for subset HF with reuse), dev / test WER; then runs
``hfasr report`` over the variants (``OUT/report.png``, ``OUT/report.md``).

``--gradient-error VARIANT ...`` trains nothing: along each named variant's trajectory (its
``OUT/<variant>/models/<update>.pt``, kept by ``keep_models``) it computes every subset's gradient
at every update's starting point and prints how far each reuse rule's combined gradient (none,
sag, saga, decay with ``--reuse-decay``) is from the full-batch gradient there (relative error
‖ĝ − g‖/‖g‖ and cosine), as if that rule had been used on that trajectory
(``OUT/gradient_error.md``).

``--clock cpu`` measures training time (the history's ``wall_s``, the time budget, the table) in
CPU seconds of this process instead of wall seconds: with 1 torch thread, closer to the work done
when other jobs compete for the cores (the dev box is shared), but not immune to them (cache,
memory and page-cache contention remain: bench/results/subset_hf.md, 2026-11-30). A variant's
output dir keeps the clock it was run with: use a separate ``--out`` per clock.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

VARIANTS = {
    "full": {"num_subsets": 1},
    "subset": {"gradient_reuse": "dynamic", "reuse_warm_start": True, "reuse_damping": True},
    "subset-sag": {"gradient_reuse": "sag", "reuse_warm_start": True, "reuse_damping": True},
    "subset-no-grad": {"gradient_reuse": "none", "reuse_warm_start": True, "reuse_damping": True},
    "subset-saga": {"gradient_reuse": "saga", "reuse_warm_start": True, "reuse_damping": True},
    "subset-decay": {"gradient_reuse": "decay", "reuse_warm_start": True, "reuse_damping": True},
    "subset-no-warm": {"gradient_reuse": "dynamic", "reuse_warm_start": False, "reuse_damping": True},
    "subset-no-damp": {"gradient_reuse": "dynamic", "reuse_warm_start": True, "reuse_damping": False},
}


def variant_config(base, name: str, args):
    cfg = copy.deepcopy(base)
    v = VARIANTS[name]
    cfg.regenerate_every = 0  # the lattices are shared by the variants
    cfg.dev_wer = bool(args.dev_wer)
    if name == "full":
        cfg.hf.num_subsets = 1
        cfg.hf.updates = args.updates
    else:
        cfg.hf.num_subsets = args.subsets
        cfg.hf.updates = args.subset_updates or args.subsets * args.updates
        for k, val in v.items():
            setattr(cfg.hf.optimizer, k, val)
        if args.reuse_decay is not None:
            cfg.hf.optimizer.reuse_decay = args.reuse_decay
    return cfg


class Context:
    """Everything the variants share: the CE model's path and prior, lattices and utterances."""

    def __init__(self, args) -> None:
        from hfasr.lattice.generate import lattice_path, load_lattices
        from hfasr.models import load_prior
        from hfasr.train.sequence import load_seq_data

        exp = args.exp
        self.init = exp / "dnn_ce" / "final.pt"
        self.ali_dir = exp / "gmm"
        self.lat_dir = exp / "lats"
        for p in (self.init, self.init.parent / "prior.pt", self.ali_dir / "ali_train.pt",
                  lattice_path(self.lat_dir, "train"), lattice_path(self.lat_dir, "dev")):
            if not p.is_file():
                sys.exit(f"subset_hf: missing {p} (run the recipe up to stage 7 with --seq-runs)")
        self.prior_path = self.init.parent / "prior.pt"
        self.log_prior = load_prior(self.prior_path)
        self.graph_dir, self.model_dir = exp / "gmm" / "graph", exp / "gmm"
        lt = load_lattices(lattice_path(self.lat_dir, "train"))
        ld = load_lattices(lattice_path(self.lat_dir, "dev"))
        lt["graph"] = None
        self.meta = lt
        self.train = load_seq_data(args.data_dir, args.task, "train", self.ali_dir, lt, lattice_path(self.lat_dir, "train"))
        self.dev = load_seq_data(args.data_dir, args.task, "dev", self.ali_dir, ld, lattice_path(self.lat_dir, "dev"))
        print(f"# {args.task}: {len(self.train.utts)} train utterances ({self.train.num_frames} frames), "
              f"{len(self.dev.utts)} dev", flush=True)


def run_variant(name: str, cfg, ctx: Context, out: Path, budget: float | None, force: bool) -> Path:
    """Train one variant in ``out/name`` (resuming / reusing what is there); returns the dir."""
    from hfasr.models import load_model
    from hfasr.train.experiment import Experiment
    from hfasr.train.sequence import SequenceTask

    vdir = out / name
    if force and vdir.exists():
        shutil.rmtree(vdir)
    if (vdir / "final.pt").is_file():
        print(f"# {name}: reusing {vdir} (finished; --force to rerun)", flush=True)
        return vdir
    exp = Experiment(cfg, vdir, resume=True, progress=False)
    torch.manual_seed(cfg.seed)
    task = SequenceTask(cfg, load_model(ctx.init), ctx.log_prior, ctx.meta, ctx.train, ctx.dev, exp.device,
                        ctx.graph_dir if cfg.dev_wer else None, ctx.model_dir if cfg.dev_wer else None,
                        progress=False)
    task.run_name = f"hf-{cfg.criterion}-{name}"
    task.prior_path, task.init = ctx.prior_path, ctx.init
    exp.run(task, max_wall=budget)  # the budget is checked after every update
    exp.save_final(task)
    return vdir


def decode_test(vdir: Path, args, ctx: Context) -> None:
    """The recipes' decode_model: loglikes of dev/test, LM-weight sweep on dev, test WER with CI."""
    if (vdir / "decode_test" / "wer.txt").is_file() and not args.force:
        return
    hf = [sys.executable, "-m", "hfasr.cli"]
    common = ["--data-dir", str(args.data_dir), "--task", args.task]
    for split in ("dev", "test"):
        subprocess.run([*hf, "loglikes", "--model", str(vdir / "final.pt"), *common, "--split", split,
                        "--out", str(vdir / f"loglikes_{split}.pt"), "--text", str(vdir / f"ref_{split}.txt")],
                       check=True)
    subprocess.run([*hf, "decode", "--loglikes", str(vdir / "loglikes_test.pt"), "--ref", str(vdir / "ref_test.txt"),
                    "--dev-loglikes", str(vdir / "loglikes_dev.pt"), "--dev-ref", str(vdir / "ref_dev.txt"),
                    "--graph-dir", str(ctx.graph_dir), "--model-dir", str(ctx.model_dir),
                    "--out", str(vdir / "decode_test"), "--set", "test", "--num-workers", str(args.nj)],
                   check=True, stdout=subprocess.DEVNULL)


def gradient_error(name: str, cfg, ctx: Context, vdir: Path, decay: float) -> str:
    """Markdown table: the reuse rules' gradient error along ``vdir``'s trajectory (docstring)."""
    from hfasr.models import load_model
    from hfasr.train.drivers import HFDriver
    from hfasr.train.sequence import SequenceTask

    task = SequenceTask(cfg, load_model(ctx.init), ctx.log_prior, ctx.meta, ctx.train, ctx.dev, torch.device("cpu"),
                        None, None, progress=False)
    parts = HFDriver(task, cfg.hf, cfg.seed, log_line=lambda _: None).objective.subsets
    K = len(parts)
    frames = [float(sum(p.data.sizes())) for p in parts]
    models = sorted(int(f.stem) for f in (vdir / "models").glob("*.pt"))
    if not models:
        sys.exit(f"subset_hf: no {vdir}/models/*.pt (keep_models: true in the config)")
    rules = ("none", "sag", "saga", "decay")
    lines = [(f"Gradient error along `{name}`'s trajectory (K = {K}, decay {decay}): relative error ‖ĝ − g‖/‖g‖ "
              "(cosine) of each rule's gradient ĝ against the full-batch gradient g at the update's start.\n"),
             "| update | subset | " + " | ".join(rules) + " |", "|---:|---:|" + "---:|" * len(rules)]
    stored: dict[int, tuple[int, torch.Tensor]] = {}  # subset -> (update index it was computed at, gradient)
    totals = {r: [] for r in rules}
    gen = torch.Generator()
    for m in models[:-1]:  # update m + 1 starts from models/m.pt
        task.net.load_state_dict(load_model(vdir / "models" / f"{m}.pt").state_dict())
        grads = [p.gradient(gen)[1].double() for p in parts]
        full = sum(w * g for w, g in zip(frames, grads)) / sum(frames)
        s = m % K
        old = stored.get(s)
        new = {**stored, s: (m, grads[s])}
        est = {"none": grads[s], "sag": sum(g for _, g in new.values()) / len(new)}
        est["saga"] = est["sag"] if old is None else grads[s] - old[1] + sum(g for _, g in stored.values()) / len(stored)
        w = [decay ** (m - at) for at, _ in new.values()]
        est["decay"] = sum(wi * g for wi, (_, g) in zip(w, new.values())) / sum(w)
        stored = new
        cells = []
        for r in rules:
            err = float((est[r] - full).norm() / full.norm())
            cos = float(torch.dot(est[r], full) / (est[r].norm() * full.norm()))
            totals[r].append(err)
            cells.append(f"{err:.3f} ({cos:.3f})")
        lines.append(f"| {m + 1} | {s} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    late = [i for i, m in enumerate(models[:-1]) if m >= K]  # past the start-up
    if late:
        lines.append(f"| mean, updates > {K} | | " + " | ".join(
            f"{sum(totals[r][i] for i in late) / len(late):.3f}" for r in rules) + " |")
    return "\n".join(lines) + "\n"


def use_cpu_clock() -> None:
    """Make :class:`~hfasr.train.experiment.Experiment` count training time in CPU seconds of
    this process (``time.process_time``) instead of wall seconds (``time.perf_counter``)."""
    import time
    import types

    from hfasr.train import experiment

    experiment.time = types.SimpleNamespace(perf_counter=time.process_time, time=time.time)


def table(runs: dict, base: str, clock: str = "wall") -> str:
    from hfasr.bin.report import time_to_target

    full = runs.get(base)
    target = full.final.dev_obj if full else None
    full_t = None
    if full:
        hit = time_to_target(full, target)
        full_t = hit.wall_s if hit else full.final.wall_s
    lines = [(f"| variant | updates | {clock} s | final dev obj | best dev obj | {clock} time to full-batch final dev obj (s) "
              "| ratio to full-batch | final dev %WER | test %WER [95% CI] |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in runs.items():
        t, ratio = "-", "-"
        if full:
            hit = time_to_target(r, target)
            if hit is None:
                t = "not reached"
            else:
                t = f"{hit.wall_s:.1f} (update {hit.update})"
                ratio = f"{hit.wall_s / full_t:.2f}" if full_t else "-"
        test = "-"
        if r.test_wer:
            ci = r.test_wer["ci"]
            test = f"{r.test_wer['wer']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        wer = "-" if r.final_dev_wer is None else f"{r.final_dev_wer:.2f}"
        lines.append(f"| {name} | {r.final.update} | {r.final.wall_s:.1f} | {r.final.dev_obj:.5f} | "
                     f"{r.best_dev_obj:.5f} | {t} | {ratio} | {wer} | {test} |")
    note = (f"\nTarget: full-batch HF's final dev objective {target:.5f}, first reached by it at {full_t:.1f} s; "
            "ratio = variant's time / full-batch's time (< 1: faster).\n") if full else "\n"
    return "\n".join(lines) + "\n" + note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--exp", type=Path, required=True, help="recipe exp dir: dnn_ce/final.pt, gmm/, lats/")
    ap.add_argument("--config", type=Path, help="base SeqTrainConfig YAML (default EXP/../conf/seq_smbr_hf.yaml)")
    ap.add_argument("--out", type=Path, help="output dir (default EXP/subset_hf)")
    ap.add_argument("--updates", type=int, default=8, help="full-batch HF updates")
    ap.add_argument("--subsets", type=int, default=4, help="K: number of successive subsets")
    ap.add_argument("--subset-updates", type=int, help="max updates of a subset variant (default K x --updates)")
    ap.add_argument("--time-budget", type=float,
                    help="training seconds per subset variant (default: --budget-fraction x the full-batch run's wall time)")
    ap.add_argument("--budget-fraction", type=float, default=1.0,
                    help="subset variants' default time budget as a fraction of full-batch HF's training wall time "
                         "(e.g. 0.6: enough to show the bar of 0.5 met or missed, in 60%% of the time)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--reuse-decay", type=float, help="HFConfig.reuse_decay of subset-decay (default: the config's, 0.5)")
    ap.add_argument("--dev-wer", action="store_true", help="decode the dev set after every update (slow)")
    ap.add_argument("--decode-test", action=argparse.BooleanOptionalAction, default=True,
                    help="decode dev/test with each variant's final model (test WER with 95%% CI)")
    ap.add_argument("--threads", type=int, help="torch threads (default: the config's num_threads, else 1)")
    ap.add_argument("--nj", type=int, default=2, help="decoding workers")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="training time in wall seconds or in this process's CPU seconds (shared machines)")
    ap.add_argument("--gradient-error", nargs="+", metavar="VARIANT", choices=[v for v in VARIANTS if v != "full"],
                    help="train nothing: the reuse rules' gradient error along these variants' trajectories")
    ap.add_argument("--force", action="store_true", help="rerun variants that already finished")
    args = ap.parse_args()
    if args.reuse_decay is not None and not 0 < args.reuse_decay <= 1:
        ap.error(f"--reuse-decay {args.reuse_decay}: must be in (0, 1]")

    from hfasr.bin.report import read_history
    from hfasr.bin.report import run as report
    from hfasr.config import load_config
    from hfasr.train.sequence import SeqTrainConfig

    cfg_path = args.config or args.exp.parent / "conf" / "seq_smbr_hf.yaml"
    base = load_config(SeqTrainConfig, cfg_path if cfg_path.is_file() else None, {"criterion": "smbr", "optimizer": "hf"})
    print(f"# base config: {cfg_path if cfg_path.is_file() else 'SeqTrainConfig defaults'}", flush=True)
    threads = args.threads or base.num_threads or 1
    torch.set_num_threads(threads)
    if args.clock == "cpu":
        use_cpu_clock()
    out = args.out or args.exp / "subset_hf"
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(args)

    if args.gradient_error:
        decay = args.reuse_decay if args.reuse_decay is not None else base.hf.optimizer.reuse_decay
        text = "\n".join(gradient_error(n, variant_config(base, n, args), ctx, out / n, decay) for n in args.gradient_error)
        (out / "gradient_error.md").write_text(text)
        print(text)
        return
    names = [n for n in VARIANTS if n in args.variants]
    budget = args.time_budget
    dirs: dict[str, Path] = {}
    for name in names:
        cfg = variant_config(base, name, args)
        b = None if name == "full" else budget
        if name != "full" and b is None and "full" in dirs:
            b = args.budget_fraction * read_history(dirs["full"]).final.wall_s
        print(f"# {name}: K={cfg.hf.num_subsets} gradient_reuse={cfg.hf.optimizer.gradient_reuse}"
              + (f" reuse_decay={cfg.hf.optimizer.reuse_decay}" if cfg.hf.optimizer.gradient_reuse == "decay" else "")
              + f" warm_start={cfg.hf.optimizer.reuse_warm_start} damping={cfg.hf.optimizer.reuse_damping} "
              f"max updates {cfg.hf.updates}" + ("" if b is None else f", time budget {b:.1f} s"), flush=True)
        dirs[name] = run_variant(name, cfg, ctx, out, b, args.force)
        if args.decode_test:
            decode_test(dirs[name], args, ctx)
    runs = {n: read_history(d) for n, d in dirs.items()}
    text = (f"# Subset HF vs full-batch HF ({args.task}, HF-sMBR, K = {args.subsets}, {threads} thread(s), "
            f"{args.clock} clock)\n\n" + table(runs, "full", args.clock))
    (out / "subset_hf.md").write_text(text)
    (out / "subset_hf.json").write_text(json.dumps({n: [vars(p) for p in r.points] for n, r in runs.items()}, indent=1))
    print(text)
    with contextlib.redirect_stdout(io.StringIO()):  # its markdown goes to OUT/report.md
        report(argparse.Namespace(exp_dirs=list(dirs.values()), out=out / "report"))
    print(f"# written: {out / 'subset_hf.md'}, {out / 'report.png'}, {out / 'report.md'}")


if __name__ == "__main__":
    main()
