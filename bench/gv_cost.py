#!/usr/bin/env python
"""Cost of one Gauss-Newton product G v relative to one gradient, on the same batch and machine.

Usage: .venv/bin/python bench/gv_cost.py [--threads 2] [--frames 1024] [--reps 20]

For each model: time of a gradient (forward + backward of the summed CE loss) and of one G v
product of :class:`hfasr.optim.GaussNewton` amortized over ``--reps`` CG-style products after
one linearization (setup reported separately, as ratio of a gradient too). Ratio = Gv / grad.
The physical floor for a DNN is ≈1.3 (tangent forward pass + one backward pass).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.func import functional_call

from hfasr.criteria.curvature import SoftmaxFisher
from hfasr.optim import GaussNewton


def timeit(fn, reps: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def models(frames: int):
    """(name, model, input) triples; recurrent models are added as they exist."""
    out = []
    dnn = nn.Sequential(nn.Linear(440, 1024), nn.Sigmoid(), *[m for _ in range(4) for m in (nn.Linear(1024, 1024), nn.Sigmoid())],
                        nn.Linear(1024, 1000))
    out.append(("DNN 5x1024 sigmoid, 440 in, 1000 pdfs", dnn, torch.randn(frames, 440)))
    try:
        from hfasr.models import build_model  # project models, when available

        for name, cfg, x in getattr(build_model, "bench_models", lambda f: [])(frames):
            out.append((name, build_model(cfg), x))
    except ImportError:
        pass
    return out


def measure(model: nn.Module, x: torch.Tensor, reps: int) -> dict:
    model.eval()
    names = [n for n, p in model.named_parameters()]
    params = [p for p in model.parameters()]
    with torch.no_grad():
        z = model(x)
    targets = torch.randint(0, z.shape[-1], z.shape[:-1])

    def grad():
        loss = nn.functional.cross_entropy(model(x).reshape(-1, z.shape[-1]), targets.reshape(-1), reduction="sum")
        torch.autograd.grad(loss, params)

    t_grad = timeit(grad, reps)

    def fn(ps):
        return functional_call(model, dict(zip(names, ps)), (x,))

    t0 = time.perf_counter()
    gn = GaussNewton(fn, [p.detach() for p in params], SoftmaxFisher, normalizer=x.shape[0])
    t_setup = time.perf_counter() - t0
    v = torch.randn(sum(p.numel() for p in params))
    t_gv = timeit(lambda: gn(v), reps)

    def fresh():
        g2 = GaussNewton(fn, [p.detach() for p in params], SoftmaxFisher, normalizer=x.shape[0])
        g2(v)

    t_fresh = timeit(fresh, max(3, reps // 4))
    return {"grad": t_grad, "gv": t_gv, "setup": t_setup, "fresh": t_fresh}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"threads={args.threads} frames={args.frames} torch={torch.__version__}")
    print(f"{'model':45s} {'grad ms':>8s} {'Gv ms':>8s} {'Gv/grad':>8s} {'setup/grad':>10s} {'fresh/grad':>10s}")
    for name, model, x in models(args.frames):
        m = measure(model, x, args.reps)
        print(f"{name:45s} {1e3 * m['grad']:8.1f} {1e3 * m['gv']:8.1f} {m['gv'] / m['grad']:8.2f} "
              f"{m['setup'] / m['grad']:10.2f} {m['fresh'] / m['grad']:10.2f}")


if __name__ == "__main__":
    main()
