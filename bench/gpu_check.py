#!/usr/bin/env python
"""CUDA checks of the pure-torch parts (no Kaldi needed): lattice forward-backward and the
sequence criteria on CUDA equal the CPU results; G v / gradient cost of the 5x1024 DNN on the GPU.

Usage: PYTHONPATH=.:tests python bench/gpu_check.py
"""

from __future__ import annotations

import time

import torch
from lattice_utils import random_lattice

from hfasr.criteria.sequence import SeqSupervision, SequenceConfig, SequenceCriterion
from hfasr.lattice import LatticeBatch


def main() -> None:
    assert torch.cuda.is_available(), "no CUDA device"
    dev = torch.device("cuda")
    print(torch.__version__, torch.cuda.get_device_name(0))
    K, B, T = 40, 32, 150
    lats = [random_lattice(T, K, seed=s, width=6) for s in range(B)]
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(B, T, K, generator=g, dtype=torch.float64)
    for device in ("cpu", "cuda"):
        lb = LatticeBatch(lats, device=device)
        w = lb.arc_scores(scores.to(device), 0.1)
        lb.forward_backward(w)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(3):
            _, _, logz, post = lb.forward_backward(w)
        if device == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / 3
        arcs = lb.src.numel()
        print(f"FB {device}: {B} lattices, {arcs} arcs, {lb.max_level} levels: {1e3 * dt:.1f} ms")
        if device == "cpu":
            ref = (logz.clone(), post.clone())
        else:
            print("  max |logZ diff|", float((logz.cpu() - ref[0]).abs().max()), " max |post diff|", float((post.cpu() - ref[1]).abs().max()))
    # criteria on CUDA vs CPU
    ref_pdf = [torch.tensor([int(l.pdf[(l.frame == t) & (l.pdf >= 0)][0]) for t in range(T)]) for l in lats[:8]]
    logits = torch.randn(8, T, K, generator=g, dtype=torch.float64)
    lens = torch.full((8,), T)
    for crit in ("mmi", "bmmi", "smbr", "mpe"):
        outs = {}
        for device in ("cpu", "cuda"):
            c = SequenceCriterion(SequenceConfig(criterion=crit, curvature="den-cov"),
                                  torch.full((K,), -3.0, dtype=torch.float64).to(device),
                                  tid2phone=torch.arange(K + 2) // 2, silence_phones=[0])
            sups = [SeqSupervision(l, r, (r + 1) // 2) for l, r in zip(lats[:8], ref_pdf)]
            z = logits.to(device)
            out = c(z, lens, sups)
            h = c.curvature(z, out)
            u = torch.ones_like(z)
            outs[device] = (float(out.loss), out.grad.cpu(), h.hvp(u).cpu())
        d = outs["cuda"]
        print(f"{crit}: loss cpu {outs['cpu'][0]:.6f} cuda {d[0]:.6f}; max grad diff {float((d[1] - outs['cpu'][1]).abs().max()):.2e};"
              f" max den-cov hvp diff {float((d[2] - outs['cpu'][2]).abs().max()):.2e}")
    # G v cost on the GPU
    import sys
    sys.argv = ["gv_cost", "--frames", "8192", "--reps", "20"]
    from torch import nn
    from torch.func import functional_call

    from hfasr.criteria.curvature import SoftmaxFisher
    from hfasr.optim import GaussNewton
    for frames in (1024, 8192):
        dnn = nn.Sequential(nn.Linear(440, 1024), nn.Sigmoid(), *[m for _ in range(4) for m in (nn.Linear(1024, 1024), nn.Sigmoid())],
                            nn.Linear(1024, 1000)).to(dev)
        x = torch.randn(frames, 440, device=dev)
        y = torch.randint(0, 1000, (frames,), device=dev)
        params = list(dnn.parameters())
        names = [n for n, _ in dnn.named_parameters()]

        def grad(dnn=dnn, x=x, y=y, params=params):
            torch.autograd.grad(nn.functional.cross_entropy(dnn(x), y, reduction="sum"), params)

        def timeit(f, r=20):
            f(); torch.cuda.synchronize(); t0 = time.perf_counter()
            for _ in range(r):
                f()
            torch.cuda.synchronize()
            return (time.perf_counter() - t0) / r

        tg = timeit(grad)
        gn = GaussNewton(lambda ps, dnn=dnn, names=names, x=x: functional_call(dnn, dict(zip(names, ps)), (x,)), [p.detach() for p in params], SoftmaxFisher, frames)
        v = torch.randn(sum(p.numel() for p in params), device=dev)
        tv = timeit(lambda gn=gn, v=v: gn(v))
        print(f"DNN 5x1024 sigmoid, {frames} frames: grad {1e3 * tg:.2f} ms ({frames / tg / 1e6:.2f} M frames/s), Gv {1e3 * tv:.2f} ms, Gv/grad {tv / tg:.2f}")


if __name__ == "__main__":
    main()
