"""Curvature spectra of an HF objective (issue 17 item 1): SLQ on the Gauss-Newton operator G that
HF's CG multiplies by, its per-block spectra, and the preconditioned operator CG actually sees.

For every model state it computes (:mod:`hfasr.optim.spectrum`), at the model's parameters and
on the curvature sample that HF's next update would draw (the optimizer's generator state from
``checkpoint.pt``; at initialization a fresh one seeded as the run's):

- G: extreme Ritz values, density, κ(λ) = (λ_max + λ)/(λ_min + λ) at HF's damping λ (λ_min: the
  5 % quantile of the SLQ measure; the worst case uses the smallest Ritz value, ≈ 0 for a
  rank-deficient G), and the same per parameter block (module prefix; ``--gates`` splits LSTM
  gate groups);
- P = M^{-1/2}(G + λI)M^{-1/2} with HF's preconditioner M (when the config has one).

Writes ``<out>.md`` (tables, the command), ``<out>.png`` (density on a log axis with the damping
line, per-block extreme eigenvalues, the preconditioned density) and ``<out>.json`` (all of it).

Usage::

    # states of hfasr train runs (CE or CTC): the initialization and the final model of each --exp
    python bench/spectrum.py --exp EXP [--exp EXP2 ...] --init --data-dir D --task T \
        [--ali-dir GMMDIR | --lang LANGDIR] --out bench/results/spectrum_yesno_ce
    # a built-in toy task (a sigmoid DNN + CE on a Gaussian mixture), before and after HF updates
    python bench/spectrum.py --toy --out /tmp/spectrum_toy
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hfasr.optim import HessianFree, HFConfig
from hfasr.optim.spectrum import (
    Spectrum,
    SpectrumConfig,
    gate_blocks,
    hf_system,
    parameter_blocks,
    slq,
    spectra,
)


@dataclass
class State:
    """One model state: its label, HF objective, HF config, damping and generator (copy)."""

    label: str
    model: torch.nn.Module
    objective: Any
    config: HFConfig
    damping: float
    generator: torch.Generator
    update: int


def _generator(state: torch.Tensor | None, seed: int) -> torch.Generator:
    g = torch.Generator().manual_seed(seed)
    if state is not None:
        g.set_state(state)
    return g


# ------------------------------------------------------------------------------------------ tasks
def load_task(exp: Path, data_dir: Path, task: str, ali_dir: Path | None, lang: Path | None):
    """The run's config and its task (data, freshly initialised model), as ``hfasr train`` builds them."""
    import yaml

    from hfasr.config import load_config

    raw = yaml.safe_load((exp / "config.yaml").read_text())
    criterion = raw.get("criterion", "ce")
    if criterion == "ce":
        from hfasr.data.frames import FrameData
        from hfasr.train.ce import CETask, TrainConfig, load_cmvn_stats

        if ali_dir is None:
            raise SystemExit("a CE run needs --ali-dir (the GMM dir of its alignments)")
        cfg = load_config(TrainConfig, exp / "config.yaml")
        train = FrameData.load(data_dir, task, cfg.train_split, ali_dir, cfg.data, progress=False)
        dev = FrameData.load(data_dir, task, cfg.dev_split, ali_dir, cfg.data, progress=False)
        cmvn = load_cmvn_stats(data_dir / f"{task}_stats.pt", train.feat_dim)
        if getattr(getattr(cfg, cfg.model), "utt_cmn", False):
            for d in (train, dev):
                d.apply_utterance_cmn()
            cmvn = (train.feats.mean(0), train.feats.std(0).clamp(min=1e-5))
        return cfg, CETask(cfg, train, dev, torch.device(cfg.device), cmvn)
    if criterion == "ctc":
        from hfasr.data.utterances import read_cuts
        from hfasr.train.ctc import (
            CtcTask,
            CtcTrainConfig,
            compute_cmvn,
            encode_cuts,
            make_token_table,
        )

        cfg = load_config(CtcTrainConfig, exp / "config.yaml")
        train_cuts, train_path = read_cuts(data_dir, task, cfg.train_split, False)
        dev_cuts, dev_path = read_cuts(data_dir, task, cfg.dev_split, False)
        table, prons = make_token_table(cfg, [t for _, _, t in train_cuts], task, lang)
        train, dev = encode_cuts(train_cuts, table, train_path), encode_cuts(dev_cuts, table, dev_path)
        cmvn = compute_cmvn(train.feats, cfg.model == "dnn" and cfg.dnn.utt_cmn)
        return cfg, CtcTask(cfg, table, train, dev, torch.device(cfg.device), cmvn=cmvn, prons=prons)
    raise SystemExit(f"{exp}: criterion {criterion!r} is not supported here (ce, ctc)")


def experiment_states(exps: list[Path], init: bool, data_dir: Path, task: str, ali_dir: Path | None,
                      lang: Path | None) -> list[State]:
    """The initialization (of the first run, with ``init``) and the final model of every run."""
    from hfasr.models import load_checkpoint
    from hfasr.train.drivers import HFDriver

    states = []
    for k, exp in enumerate(exps):
        cfg, t = load_task(exp, data_dir, task, ali_dir, lang)
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        hf = cfg.hf
        driver = HFDriver(t, hf, cfg.seed, log_line=lambda s: None)  # the run's objective and optimizer
        if init and k == 0:
            states.append(State("init", t.model, driver.objective, hf.optimizer, hf.optimizer.damping,
                                _generator(None, hf.optimizer.seed), 0))
            cfg, t = load_task(exp, data_dir, task, ali_dir, lang)
            driver = HFDriver(t, hf, cfg.seed, log_line=lambda s: None)
        ck = load_checkpoint(exp / "checkpoint.pt")
        final = exp / "final.pt"
        model_ck = load_checkpoint(final) if final.is_file() else ck
        t.net.load_state_dict(model_ck["state_dict"])
        if cfg.optimizer == "hf" and "driver" in ck:
            driver.load_state_dict(ck["driver"])
            damping, gen = driver.opt.damping, _generator(driver.opt.generator.get_state(), 0)
            upd = int(model_ck.get("update", driver.opt.updates))  # final.pt may be a selected earlier update
        else:  # a first-order run: HF's initial damping, a fresh generator
            damping, gen = hf.optimizer.damping, _generator(None, hf.optimizer.seed)
            # the model's own update (a kept model copied to final.pt need not be the run's last)
            upd = int(model_ck.get("update", len(ck.get("history", [])) - 1))
        states.append(State(f"{exp.name} update {upd}", t.model, driver.objective, hf.optimizer, damping, gen, upd))
    return states


def toy_states(updates: int, seed: int = 0) -> list[State]:
    """A sigmoid DNN (20 → 64 → 64 → 8) + CE on an 8-class Gaussian mixture (4,000 frames): its
    initialization and the model after ``updates`` HF updates."""
    from torch import nn

    from hfasr.criteria.curvature import SoftmaxFisher
    from hfasr.optim import softmax_ce, tensor_objective

    gen = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(8, 20, generator=gen)
    y = torch.randint(0, 8, (4000,), generator=gen)
    x = means[y] + torch.randn(4000, 20, generator=gen)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 64), nn.Sigmoid(), nn.Linear(64, 64), nn.Sigmoid(), nn.Linear(64, 8))
    obj = tensor_objective(model, softmax_ce, lambda z, t: SoftmaxFisher(z), (x[:3600], y[:3600]),
                           heldout=(x[3600:], y[3600:]), curvature_fraction=0.25, curvature_min=256)
    cfg = HFConfig(damping=1.0, cg_max_iters=50, backtrack_data="heldout", linesearch_data="heldout")
    states = [State("init", model, obj, cfg, cfg.damping, _generator(None, cfg.seed), 0)]
    if updates:
        trained = copy.deepcopy(model)
        obj2 = tensor_objective(trained, softmax_ce, lambda z, t: SoftmaxFisher(z), (x[:3600], y[:3600]),
                                heldout=(x[3600:], y[3600:]), curvature_fraction=0.25, curvature_min=256)
        opt = HessianFree(trained.parameters(), cfg)
        for _ in range(updates):
            st = opt.step(obj2)
        print(f"toy: {updates} HF updates, loss {st.loss_after:.4g}, damping {opt.damping:.4g}", flush=True)
        states.append(State(f"update {updates}", trained, obj2, cfg, opt.damping,
                            _generator(opt.generator.get_state(), 0), opt.updates))
    return states


# ------------------------------------------------------------------------------------------ spectra
def compute(state: State, spec: SpectrumConfig, block_spec: SpectrumConfig, gates: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    named = [(n, p) for n, p in state.model.named_parameters() if p.requires_grad]
    blocks = gate_blocks(named) if gates else parameter_blocks(named)
    sys_ = hf_system(state.objective, state.config, state.damping, state.generator, update=state.update,
                     block_sizes=[p.numel() for _, p in named])
    kw = {"op_dtype": sys_.dtype, "device": named[0][1].device}
    G = spectra(sys_.curvature(), sys_.dim, blocks, spec, block_spec, name="all", label="G", damping=state.damping,
                **kw)
    P = None
    if sys_.precond is not None:
        P = slq(sys_.preconditioned(), sys_.dim, spec, name="all", label="M^-1/2(G+λI)M^-1/2", damping=0.0, **kw)
    secs = time.perf_counter() - t0
    print(f"[{state.label}] damping {state.damping:.4g}, {secs:.1f} s\n{G.summary()}"
          + (f"\n{P.line()}" if P else ""), flush=True)
    return {"label": state.label, "damping": state.damping, "G": G, "P": P, "seconds": secs,
            "curvature_normalizer": float(sys_.gn.normalizer), "dim": sys_.dim,
            "preconditioner": state.config.preconditioner, "damping_matrix": state.config.damping_matrix}


# ------------------------------------------------------------------------------------------ output
def fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.3g}"


def markdown(results: list[dict[str, Any]], command: str, spec: SpectrumConfig, block_spec: SpectrumConfig,
             title: str, preamble: str = "") -> str:
    lines = [f"# Curvature spectra: {title}", "",
             ("Stochastic Lanczos quadrature (`hfasr/optim/spectrum.py`) on the Gauss-Newton operator G that HF's CG "
             "multiplies by (the run's objective, on the curvature sample of HF's next update), and on the "
             "preconditioned operator P = M^-1/2 (G + λI) M^-1/2 that CG actually sees. "
             f"{spec.probes} Rademacher probes × {spec.steps} Lanczos steps (full reorthogonalization) for the whole "
             f"operator, {block_spec.probes} × {block_spec.steps} per block. λ: HF's damping at that state. "
             f"λ_min: the {spec.quantile:g} quantile of the SLQ spectral measure (G is rank-deficient: its smallest "
             "eigenvalue is 0); κ = (λ_max + λ)/(λ_min + λ); κ⁺ uses λ_min⁺, the same quantile of the non-null part "
              "of the measure; κ_worst uses the smallest Ritz value (≈ 0) instead. "
             "null: fraction of eigenvalues ≤ 10·eps·λ_max; < λ: fraction of eigenvalues below the damping."), "",
             "```", command, "```", "", *([preamble.rstrip(), ""] if preamble.strip() else []),
             "| state | operator | dim | λ | λ_max | λ_min (q) | λ_min⁺ (q) | smallest Ritz | tr | null | < λ | κ | κ⁺ | κ_worst |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for key in ("G", "P"):
            s: Spectrum | None = r[key]
            if s is None:
                continue
            lam = r["damping"] if key == "G" else 0.0
            lines.append(f"| {r['label']} | {s.label} | {s.dim} | {fmt(r['damping'])} | {fmt(s.lambda_max)} | "
                         f"{fmt(s.lambda_min)} | {fmt(s.lambda_min_nonnull)} | {fmt(s.lambda_min_ritz)} | {fmt(s.moment(1))} | "
                         f"{s.null_fraction:.3f} | {f'{s.fraction_below(lam):.3f}' if key == 'G' else '–'} | "
                         f"{fmt(s.condition(lam))} | {fmt(s.condition_nonnull(lam))} | {fmt(s.condition_worst(lam))} |")
    lines += ["", "Per block (G restricted to the block's parameters, the diagonal block), at each state's λ:", "",
              "| state | block | dim | λ_max | λ_min (q) | λ_min⁺ (q) | tr / dim | null | < λ | κ | κ⁺ |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for b in r["G"].blocks:
            lines.append(f"| {r['label']} | {b.name} | {b.dim} | {fmt(b.lambda_max)} | {fmt(b.lambda_min)} | {fmt(b.lambda_min_nonnull)} | "
                         f"{fmt(b.moment(1) / b.dim)} | {b.null_fraction:.3f} | {b.fraction_below(r['damping']):.3f} | "
                         f"{fmt(b.condition(r['damping']))} | {fmt(b.condition_nonnull(r['damping']))} |")
    lams = [10.0 ** e for e in range(-5, 2)]
    lines += ["", "κ⁺(λ) of G over a damping sweep (λ_min⁺ as above):", "",
              "| state | " + " | ".join(f"λ={x:g}" for x in lams) + " |",
              "|---|" + "---:|" * len(lams)]
    for r in results:
        lines.append(f"| {r['label']} | " + " | ".join(fmt(r["G"].condition_nonnull(x)) for x in lams) + " |")
    lines += ["", "Time: " + ", ".join(f"{r['label']} {r['seconds']:.1f} s "
                                       f"({r['G'].products + sum(b.products for b in r['G'].blocks) + (r['P'].products if r['P'] else 0)} G v)"
                                       for r in results), ""]
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have_p = any(r["P"] is not None for r in results)
    fig, axes = plt.subplots(1, 3 if have_p else 2, figsize=(17 if have_p else 12, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ax = axes[0]
    for i, r in enumerate(results):
        c = colors[i % len(colors)]
        grid, dens = r["G"].density(sigma=0.1)
        ax.plot(grid.numpy(), dens.numpy(), color=c,
                label=f"{r['label']} (κ⁺={fmt(r['G'].condition_nonnull())}, null {r['G'].null_fraction:.2f})")
        ax.axvline(r["damping"], color=c, ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom=1e-2)
    ax.set_xlabel("eigenvalue of G")
    ax.set_ylabel("density (eigenvalues per decade)")
    ax.set_title("spectral density of G (dashed: damping λ)")
    ax.legend(fontsize=7)
    ax = axes[1]
    names = [b.name for b in results[0]["G"].blocks]
    x = range(len(names))
    for i, r in enumerate(results):
        c = colors[i % len(colors)]
        bl = {b.name: b for b in r["G"].blocks}
        off = (i - (len(results) - 1) / 2) * 0.15
        hi = [bl[n].lambda_max for n in names]
        lo = [max(bl[n].lambda_min, 1e-12) for n in names]
        ax.vlines([k + off for k in x], lo, hi, color=c, lw=3, alpha=0.6)
        ax.scatter([k + off for k in x], hi, color=c, marker="^", s=18, label=f"{r['label']} λ_max")
        ax.scatter([k + off for k in x], lo, color=c, marker="v", s=18, label=f"{r['label']} λ_min (q)")
        ax.axhline(r["damping"], color=c, ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
    ax.set_title("per-block extreme eigenvalues (dashed: λ)")
    ax.legend(fontsize=6)
    if have_p:
        ax = axes[2]
        for i, r in enumerate(results):
            if r["P"] is None:
                continue
            grid, dens = r["P"].density(sigma=0.05)
            ax.plot(grid.numpy(), dens.numpy(), color=colors[i % len(colors)],
                    label=f"{r['label']} (κ={fmt(r['P'].condition(0.0))})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(bottom=1e-2)
        ax.set_xlabel("eigenvalue of M^-1/2 (G+λI) M^-1/2")
        ax.set_title("what preconditioned CG sees")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _round(x: Any) -> Any:
    """Floats to 6 significant digits (the JSON's size), recursively."""
    if isinstance(x, float):
        return float(f"{x:.6g}") if math.isfinite(x) else x
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", type=Path, action="append", default=[], help="hfasr train out dir (repeatable)")
    p.add_argument("--init", action="store_true", help="also the first run's initialization")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--task")
    p.add_argument("--ali-dir", type=Path, help="CE runs: the GMM dir of the alignments")
    p.add_argument("--lang", type=Path, help="CTC runs with phone units: the lang dir")
    p.add_argument("--toy", action="store_true", help="the built-in toy task instead of --exp")
    p.add_argument("--toy-updates", type=int, default=10, help="--toy: HF updates of the trained state")
    p.add_argument("--gates", action="store_true", help="blocks: LSTM gate groups (else module prefixes)")
    p.add_argument("--probes", type=int, default=8)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--block-probes", type=int, default=4)
    p.add_argument("--block-steps", type=int, default=48)
    p.add_argument("--quantile", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: the run's num_threads / default)")
    p.add_argument("--damping", type=float, default=None,
                   help="evaluate every state at this λ (default: HF's damping of the state)")
    p.add_argument("--preamble", type=Path, default=None,
                   help="markdown file inserted after the command in <out>.md (e.g. how the runs were made)")
    p.add_argument("--title", default=None)
    p.add_argument("--out", type=Path, required=True, help="output prefix: <out>.md, <out>.png, <out>.json")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.toy:
        states = toy_states(a.toy_updates, a.seed)
        title = a.title or "toy sigmoid DNN + CE"
    else:
        if not a.exp or a.data_dir is None or a.task is None:
            p.error("give --exp (with --data-dir, --task) or --toy")
        states = experiment_states(a.exp, a.init, a.data_dir, a.task, a.ali_dir, a.lang)
        title = a.title or f"{a.task}: " + ", ".join(e.name for e in a.exp)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.damping is not None:
        for s in states:
            s.damping = a.damping
    spec = SpectrumConfig(probes=a.probes, steps=a.steps, seed=a.seed, quantile=a.quantile)
    block_spec = SpectrumConfig(probes=a.block_probes, steps=a.block_steps, seed=a.seed, quantile=a.quantile)
    results = [compute(s, spec, block_spec, a.gates) for s in states]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python bench/spectrum.py " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    preamble = a.preamble.read_text() if a.preamble is not None else ""
    (a.out.with_suffix(".md")).write_text(markdown(results, command, spec, block_spec, title, preamble))
    plot(results, a.out.with_suffix(".png"), title)
    data = [{k: (_round(v.to_dict()) if isinstance(v, Spectrum) else v) for k, v in r.items()} for r in results]
    (a.out.with_suffix(".json")).write_text(json.dumps({"command": command, "results": data}, default=str))
    print(f"wrote {a.out.with_suffix('.md')}, {a.out.with_suffix('.png')}, {a.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
