#!/usr/bin/env python
"""Cost of one Gauss-Newton product G v relative to one gradient for the recurrent CTC models.

Usage: .venv/bin/python bench/gv_cost_recurrent.py [--threads 2] [--batch 8] [--frames 300] [--reps 5]

Like ``bench/gv_cost.py``, on the same padded batch and machine: the gradient is forward +
backward of the summed CTC loss; G v is one product of :class:`hfasr.optim.GaussNewton` with
the convex CTC curvature (:func:`hfasr.criteria.ctc.ctc_curvature`), amortized over ``--reps``
CG-style products after one linearization (setup reported separately, in gradients), for the
J v modes ``model`` (the models' hand-written R-op, :class:`hfasr.criteria.ctc.ModelGaussNewton`,
what :class:`~hfasr.optim.BatchObjective` uses for these models), ``double-vjp`` (the double-backward
trick) and, on request (``--modes``), ``linearize`` (``torch.func.linearize``: its trace of the
time loop costs hundreds of gradients of setup at T=300), with and without the
structural-damping pre-activations. Also prints the forward+backward speed in frames per second.

Measured (torch 2.11, the 16-core host of an H200 machine, 2 threads, B=8, T=300, 40-dim input,
48 outputs; Gv/grad, structural damping off / on):

    model                               grad ms  frames/s  model Gv/grad   double-vjp  setup (model)
    BLSTM 2x128/dir                       320      6277    0.86 / 0.96       1.71      0.75 grads
    MDLSTM (8,16)/dir, ff 16, patch 4    1209      1662    0.89 / 1.02       1.73      0.81 grads

``linearize`` (BLSTM, T=100): 0.79 / 0.90 per product but 166 / 105 gradients of setup.

The CTC recipes' models (``--only recipes --threads 1``, this project's 2-core CPU with one
training run on the other core, torch 2.14.1): BLSTM 2x64 on 3 stacked frames 1.24 / 1.19
(grad 47 ms), MDLSTM (8,16) with 3x2 input cells 1.38 / 1.52 (grad 136 ms); double-vjp 2.37 /
2.16.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch
from torch import nn
from torch.func import functional_call

from hfasr.criteria.ctc import ctc_curvature, ctc_loss
from hfasr.models.blstm import BLSTM
from hfasr.models.mdlstm import MDLSTM
from hfasr.optim import GaussNewton, ModelGaussNewton


def timeit(fn, reps: int) -> float:
    """Best of ``reps`` runs after a warm-up (robust to other load on the machine)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_models(batch: int, frames: int, feat_dim: int = 40, tokens: int = 48):
    """(name, model, feats, lengths) for the recurrent models at realistic small sizes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, frames, feat_dim, generator=g)
    lens = torch.randint(int(0.7 * frames), frames + 1, (batch,), generator=g)
    lens[0] = frames
    torch.manual_seed(0)
    return [
        ("BLSTM 2x128/dir, 40 in", BLSTM(feat_dim, tokens, hidden_size=128, num_layers=2), x, lens),
        ("MDLSTM (8,16)/dir, ff 16, patch 4", MDLSTM(feat_dim, tokens, hidden_sizes=(8, 16), ff_sizes=(16,), freq_patches=(4,)), x, lens),
        # the CTC recipes' models (recipes/*/conf/ctc_{blstm,mdlstm}_*.yaml)
        ("BLSTM 2x64/dir, 3 frames stacked (recipes)", BLSTM(feat_dim, tokens, hidden_size=64, num_layers=2, subsample=3), x, lens),
        ("MDLSTM (8,16)/dir, cells 3x2, ff 16, patch 4 (recipes)",
         MDLSTM(feat_dim, tokens, hidden_sizes=(8, 16), ff_sizes=(16,), freq_patches=(4,), input_patch=2, time_patch=3), x, lens),
    ]


def measure(model: nn.Module, x: torch.Tensor, lens: torch.Tensor, reps: int, modes: list[str]) -> dict:
    model.eval()
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    olens = model.output_lengths(lens)
    g = torch.Generator().manual_seed(1)
    S = max(1, int(olens.min()) // 4)
    targets = torch.randint(1, 48, (x.shape[0], S), generator=g)
    tlens = torch.full((x.shape[0],), S)

    def grad():
        loss, _ = ctc_loss(model(x, lens), olens, targets, tlens)
        torch.autograd.grad(loss, params)

    res = {"grad": timeit(grad, reps)}
    v = torch.randn(sum(p.numel() for p in params))
    for mode in modes:
        for structural in (False, True):
            if structural and mode == "double-vjp":  # GaussNewton's double-vjp mode has no structural damping
                continue
            kw = {"return_preacts": structural}

            def fn(ps, kw=kw):
                return functional_call(model, dict(zip(names, ps)), (x, lens), kw)

            sw = (lambda acts: model.structural_weights(acts, olens)) if structural else None
            t0 = time.perf_counter()
            ps = [p.detach() for p in params]
            curv = lambda z: ctc_curvature(z, olens)
            if mode == "model":
                gn = ModelGaussNewton(model, names, fn, ps, curv, x.shape[0], sw, args=(x, lens), kwargs=kw)
            else:
                gn = GaussNewton(fn, ps, curv, normalizer=x.shape[0], structural_weights=sw, jvp_mode=mode)
            setup = time.perf_counter() - t0
            res[(mode, structural)] = (timeit(partial(gn, v, 0.03), reps), setup)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--modes", default="model,double-vjp")
    ap.add_argument("--only", default="", help="substring of the model names to run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    modes = args.modes.split(",")
    print(f"threads={args.threads} batch={args.batch} frames={args.frames} torch={torch.__version__}")
    print(f"{'model':36s} {'grad ms':>8s} {'frames/s':>9s} {'mode':>10s} {'struct':>6s} {'Gv ms':>8s} {'Gv/grad':>8s} {'setup/grad':>10s}")
    for name, model, x, lens in bench_models(args.batch, args.frames):
        if args.only not in name:
            continue
        r = measure(model, x, lens, args.reps, modes)
        fps = float(lens.sum()) / r["grad"]
        for mode in modes:
            for structural in (False, True):
                if (mode, structural) not in r:
                    continue
                gv, setup = r[(mode, structural)]
                print(f"{name:36s} {1e3 * r['grad']:8.1f} {fps:9.0f} {mode:>10s} {'yes' if structural else 'no':>6s} "
                      f"{1e3 * gv:8.1f} {gv / r['grad']:8.2f} {setup / r['grad']:10.2f}", flush=True)


if __name__ == "__main__":
    main()
