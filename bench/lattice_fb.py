#!/usr/bin/env python
"""Throughput of the batched lattice forward-backward and of the sequence criteria.

Usage: .venv/bin/python bench/lattice_fb.py [--frames 300] [--arcs-per-frame 64] [--batch 4]
       [--pdfs 1000] [--reps 3] [--device cpu|cuda] [--threads 1]

Builds ``--batch`` random state-level lattices shaped like Kaldi denominator lattices: per
frame a layer of 8-16 states (``--states-per-frame``), about ``--arcs-per-frame`` emitting arcs
from one layer to the next (every state reachable and co-reachable), an epsilon arc inside a
layer with probability ``--eps-prob`` (a word boundary), small graph costs with an occasional
LM-sized one. With the defaults a lattice holds ~19k arcs. Then times, on ``--device``:

- ``LatticeBatch(...)``: the one-time preparation, cold (including the Python topological-level
  pass :meth:`Lattice.levels`, which a Lattice caches) and warm (levels cached; what
  :class:`SequenceCriterion` pays on every call);
- ``arc_scores``, ``forward_backward`` (log semiring), ``forward_backward`` + ``expectations``
  (the sMBR expectation semiring), ``expectations`` alone (one den-cov curvature product costs
  about that), ``scatter_frames`` (arc posteriors to (B, T, K));
- the whole :class:`SequenceCriterion` call (loss and logits gradient) for ``mmi`` and ``smbr``,
  and one ``den-cov`` curvature product of the sMBR output.

Each row reports the median over ``--reps`` calls after one warm-up call (CUDA is synchronized
around every call), as ms per call and utterance frames per second (``batch × frames / t``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from hfasr.criteria.sequence import DenCovariance, SeqSupervision, SequenceConfig, SequenceCriterion
from hfasr.lattice import Lattice, LatticeBatch


def random_lattice(T: int, K: int, gen: torch.Generator, states_per_frame: int = 16,
                   arcs_per_frame: int = 64, eps_prob: float = 0.3) -> Lattice:
    """A random top-sorted lattice of ``T`` frames over ``K`` pdfs (vectorized; fast for 50k arcs).

    Layer ``t`` holds the states at time ``t`` (layer 0 = the start state, layer ``T`` = the
    final states), ``states_per_frame // 2 .. states_per_frame`` states each. Frame ``t``'s
    emitting arcs go from layer ``t`` to layer ``t + 1``: one into every state, one out of every
    state, and random extra ones up to ``arcs_per_frame``. States are numbered layer by layer.
    """
    W = max(1, states_per_frame)
    sizes = torch.cat([torch.ones(1, dtype=torch.long),
                       torch.randint(max(1, W // 2), W + 1, (T,), generator=gen)])
    off = torch.cumsum(sizes, 0) - sizes
    S = int(sizes.sum())
    layer = torch.repeat_interleave(torch.arange(T + 1), sizes)  # layer (= time) of each state

    def pick(lay: Tensor) -> Tensor:  # a uniformly random state of each given layer
        return off[lay] + (torch.rand(lay.numel(), generator=gen) * sizes[lay]).long().clamp(max=sizes[lay] - 1)

    st = torch.arange(S)
    into = st[layer > 0]  # every state but the start gets an incoming arc ...
    src1, dst1 = pick(layer[into] - 1), into
    outof = st[layer < T]  # ... and every non-final state an outgoing one
    src2, dst2 = outof, pick(layer[outof] + 1)
    extra = (arcs_per_frame - sizes[:-1] - sizes[1:]).clamp(min=0)
    t3 = torch.repeat_interleave(torch.arange(T), extra)
    src3, dst3 = pick(t3), pick(t3 + 1)
    src = torch.cat([src1, src2, src3])
    dst = torch.cat([dst1, dst2, dst3])
    frame = layer[src]
    pdf = torch.randint(0, K, (src.numel(),), generator=gen)
    # epsilon arcs inside a layer (time t >= 1), from a lower to a higher state id
    cand = torch.arange(1, T + 1)
    cand = cand[(sizes[cand] >= 2) & (torch.rand(T, generator=gen) < eps_prob)]
    n = sizes[cand]
    i = (torch.rand(cand.numel(), generator=gen) * (n - 1)).long().clamp(max=n - 2)
    j = i + 1 + (torch.rand(cand.numel(), generator=gen) * (n - 1 - i)).long().clamp(max=n - 2 - i)
    src = torch.cat([src, off[cand] + i])
    dst = torch.cat([dst, off[cand] + j])
    frame = torch.cat([frame, cand])
    pdf = torch.cat([pdf, torch.full((cand.numel(),), -1, dtype=torch.long)])
    A = src.numel()
    gc = torch.rand(A, generator=gen, dtype=torch.float64)
    lm = torch.rand(A, generator=gen) < 0.1
    gc[lm] += 10.0 * torch.rand(int(lm.sum()), generator=gen, dtype=torch.float64)
    order = torch.argsort(src * S + dst, stable=True)
    final = torch.full((S,), math.inf, dtype=torch.float64)
    last = st[layer == T]
    final[last] = torch.rand(last.numel(), generator=gen, dtype=torch.float64)
    src, dst, frame, pdf, gc = src[order], dst[order], frame[order], pdf[order], gc[order]
    return Lattice(num_states=S, num_frames=T, src=src, dst=dst, frame=frame, pdf=pdf, graph_cost=gc,
                   final_cost=final, tid=(pdf + 1).clamp(min=0), word=torch.zeros(A, dtype=torch.long))


def reference(lat: Lattice, gen: torch.Generator) -> Tensor:
    """A reference alignment: at each frame the pdf of a random emitting arc of that frame."""
    e = torch.nonzero(lat.pdf >= 0).squeeze(1)
    e = e[torch.randperm(e.numel(), generator=gen)]
    first = torch.full((lat.num_frames,), e.numel(), dtype=torch.long)
    first = first.scatter_reduce(0, lat.frame[e], torch.arange(e.numel()), reduce="amin")
    return lat.pdf[e[first]]


def timer(fn: Callable[[], object], reps: int, device: torch.device) -> float:
    """Median seconds of ``fn`` over ``reps`` calls after one warm-up call (CUDA synchronized)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=300, help="frames per utterance (T)")
    p.add_argument("--arcs-per-frame", type=int, default=64, help="emitting arcs per frame and lattice")
    p.add_argument("--states-per-frame", type=int, default=16, help="largest lattice layer (states at one time)")
    p.add_argument("--eps-prob", type=float, default=0.3, help="probability of an epsilon arc in a layer")
    p.add_argument("--batch", type=int, default=4, help="lattices (utterances) per batch")
    p.add_argument("--pdfs", type=int, default=1000, help="number of pdfs (K)")
    p.add_argument("--reps", type=int, default=3, help="timed calls per row (after one warm-up)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False")
    B, T, K = args.batch, args.frames, args.pdfs
    frames = B * T
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    lats = [random_lattice(T, K, gen, args.states_per_frame, args.arcs_per_frame, args.eps_prob) for _ in range(B)]
    t_gen = time.perf_counter() - t0
    lats[0].validate("benchmark lattice 0")
    refs = [reference(lat, gen) for lat in lats]
    logits = (2.0 * torch.randn(B, T, K, generator=gen, dtype=torch.float64)).to(dev)
    log_prior = torch.full((K,), -math.log(K), dtype=torch.float64, device=dev)
    scores = torch.log_softmax(logits, -1) - log_prior
    lengths = torch.full((B,), T, dtype=torch.long)
    kappa = 0.1
    tid2phone = torch.arange(K + 1) // 3  # 3 pdfs per phone; phones 0 and 1 are silence
    sups = [SeqSupervision(lat, r, tid2phone[r + 1]) for lat, r in zip(lats, refs)]

    rows: list[tuple[str, float]] = []

    def cold() -> LatticeBatch:
        for lat in lats:
            lat._level = None  # forget the cached topological levels
        return LatticeBatch(lats, device=dev)

    rows.append(("LatticeBatch construction, cold (incl. Lattice.levels)", timer(cold, args.reps, dev)))
    rows.append(("LatticeBatch construction, levels cached", timer(lambda: LatticeBatch(lats, device=dev), args.reps, dev)))
    lb = LatticeBatch(lats, device=dev)
    w = lb.arc_scores(scores, kappa)
    alpha, beta, _, post = lb.forward_backward(w)
    c = torch.rand(lb.src.numel(), generator=gen, dtype=torch.float64).to(dev) * lb.emitting
    rows.append(("arc_scores", timer(lambda: lb.arc_scores(scores, kappa), args.reps, dev)))
    rows.append(("forward_backward (log semiring)", timer(lambda: lb.forward_backward(w), args.reps, dev)))

    def fb_exp():
        a, b, _, _ = lb.forward_backward(w)
        return lb.expectations(w, a, b, c)

    rows.append(("forward_backward + expectations (sMBR)", timer(fb_exp, args.reps, dev)))
    rows.append(("expectations alone (≈ one den-cov product)", timer(lambda: lb.expectations(w, alpha, beta, c), args.reps, dev)))
    rows.append(("scatter_frames (arc posteriors → B×T×K)", timer(lambda: lb.scatter_frames(post, (B, T, K)), args.reps, dev)))
    smbr_out = None
    for crit in ("mmi", "smbr"):
        cfg = SequenceConfig(criterion=crit, acoustic_scale=kappa, curvature="den-cov")
        sc = SequenceCriterion(cfg, log_prior, tid2phone=tid2phone, silence_phones=[0, 1])
        rows.append((f"SequenceCriterion {crit} (loss + grad)",
                     timer(lambda sc=sc: sc(logits, lengths, sups), args.reps, dev)))
        if crit == "smbr":
            smbr_out = sc(logits, lengths, sups)
    h = DenCovariance(smbr_out.cache, logits.shape, kappa**2, logits.dtype)
    u = torch.randn(B, T, K, generator=gen, dtype=torch.float64).to(dev)
    rows.append(("den-cov curvature product (sMBR)", timer(lambda: h.hvp(u), args.reps, dev)))

    arcs = [lat.num_arcs for lat in lats]
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)"
    print(f"torch {torch.__version__}, {name}; float64")
    print(f"{B} lattices × {T} frames, {K} pdfs; arcs per lattice {min(arcs)}-{max(arcs)} "
          f"(mean {sum(arcs) / B:.0f}), states {lb.num_states}, levels {lb.max_level}; "
          f"generated in {t_gen:.2f} s; median of {args.reps} calls\n")
    print("| step | ms / call | frames/s |")
    print("|---|---:|---:|")
    for label, t in rows:
        print(f"| {label} | {1e3 * t:.1f} | {frames / t:,.0f} |")


if __name__ == "__main__":
    main()
