"""Random tiny lattices and brute-force path enumeration for tests of hfasr.lattice / criteria."""

from __future__ import annotations

import itertools
import math
import random

import torch

from hfasr.lattice import Lattice


def random_lattice(T: int, K: int, seed: int, width: int = 3, eps: bool = True, num_tids: int | None = None) -> Lattice:
    rng = random.Random(seed)
    layers, sid = [], 0
    for t in range(T + 1):
        n = 1 if t == 0 else rng.randint(1, width)
        layers.append(list(range(sid, sid + n)))
        sid += n
    src, dst, frame, pdf, gc, tid = [], [], [], [], [], []
    for t in range(T):
        a, b = layers[t], layers[t + 1]
        for s in a:
            outs = rng.sample(b, rng.randint(1, len(b)))
            for d in outs:
                src.append(s), dst.append(d), frame.append(t)
                k = rng.randrange(K)
                pdf.append(k), gc.append(rng.uniform(0, 2)), tid.append(k + 1)
        for d in b:  # every state reachable
            if d not in dst:
                s = rng.choice(a)
                src.append(s), dst.append(d), frame.append(t)
                k = rng.randrange(K)
                pdf.append(k), gc.append(rng.uniform(0, 2)), tid.append(k + 1)
        if eps and len(b) > 1 and rng.random() < 0.7:  # epsilon arc within a time step
            s, d = sorted(rng.sample(b, 2))
            src.append(s), dst.append(d), frame.append(t + 1), pdf.append(-1), gc.append(rng.uniform(0, 1)), tid.append(0)
    final = torch.full((sid,), math.inf, dtype=torch.float64)
    for s in layers[-1]:
        final[s] = rng.uniform(0, 1)
    order = sorted(range(len(src)), key=lambda i: (src[i], dst[i]))
    L = lambda xs, dt=torch.long: torch.tensor([xs[i] for i in order], dtype=dt)
    lat = Lattice(num_states=sid, num_frames=T, src=L(src), dst=L(dst), frame=L(frame), pdf=L(pdf),
                  graph_cost=L(gc, torch.float64), final_cost=final, tid=L(tid), word=torch.zeros(len(src), dtype=torch.long))
    lat.validate()
    return lat


def enumerate_paths(lat: Lattice):
    """All (arc list, final cost) complete paths."""
    out = []
    arcs_from = {}
    for a in range(lat.num_arcs):
        arcs_from.setdefault(int(lat.src[a]), []).append(a)

    def rec(s, path):
        if math.isfinite(float(lat.final_cost[s])):
            out.append((list(path), float(lat.final_cost[s])))
        for a in arcs_from.get(s, []):
            path.append(a)
            rec(int(lat.dst[a]), path)
            path.pop()

    rec(0, [])
    return out


def path_scores(lat: Lattice, paths, scores: torch.Tensor, kappa: float, lm_scale: float = 1.0, extra=None):
    """log-scores of paths given per-frame scores (T, K): κ·acoustic − lm_scale·(arc graph costs +
    final cost) (+ ``extra`` per arc); the final cost is graph cost too, scaled like the arcs'
    (Kaldi's ScaleLattice, :mod:`hfasr.lattice.fb`)."""
    vals = []
    for arcs, fc in paths:
        v = -lm_scale * fc
        for a in arcs:
            v += -lm_scale * float(lat.graph_cost[a])
            if int(lat.pdf[a]) >= 0:
                v += kappa * float(scores[int(lat.frame[a]), int(lat.pdf[a])])
            if extra is not None:
                v += float(extra[a])
        vals.append(v)
    return torch.tensor(vals, dtype=torch.float64)


def path_onehots(lat: Lattice, paths, K: int) -> torch.Tensor:
    phis = torch.zeros(len(paths), lat.num_frames, K, dtype=torch.float64)
    for i, (arcs, _) in enumerate(paths):
        for a in arcs:
            if int(lat.pdf[a]) >= 0:
                phis[i, int(lat.frame[a]), int(lat.pdf[a])] = 1.0
    return phis


__all__ = ["enumerate_paths", "itertools", "path_onehots", "path_scores", "random_lattice"]


def random_seq_data(n: int, seed: int, K: int, F: int, t_span: int, dtype=torch.float32):
    """An ``UtteranceSet`` of ``n`` utterances (6 .. 6+t_span-1 frames) on random lattices over ``K``
    pdfs; features (``F`` dims) noisy but informative about the reference (first arc's pdf)."""
    from hfasr.criteria.sequence import SeqSupervision
    from hfasr.data.utterances import UtteranceSet

    g = torch.Generator().manual_seed(seed)
    ids, utts = [], []
    for i in range(n):
        T = 6 + i % t_span
        lat = random_lattice(T, K, seed=seed * 100 + i)
        ref = torch.tensor([int(lat.pdf[(lat.frame == t) & (lat.pdf >= 0)][0]) for t in range(T)])
        x = torch.randn(T, F, generator=g, dtype=dtype) + torch.nn.functional.one_hot(ref, K)[:, :F].to(dtype)
        ids.append(f"u{seed}-{i}")
        utts.append((x, SeqSupervision(lat, ref, ref_phone=ref + 1)))
    return UtteranceSet.from_pairs(ids, utts)
