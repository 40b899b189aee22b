#!/usr/bin/env python
"""Distributed HF throughput: gradient and G v frames/s for 1 vs 2 processes on CPU.

Usage:
  .venv/bin/python bench/distributed.py [--procs 1 2] [--reps 3] [--lat-dir recipes/fsdd/exp/lats]

Every process runs with one thread (``torch.set_num_threads(1)``) and joins a gloo process group
(N > 1); each computes its share of the batches and the objectives all-reduce losses, gradients and
G v products exactly as in training (:mod:`hfasr.optim.distributed`):

- ``frame``: the frame-level DNN cross-entropy objective (:func:`hfasr.optim.tensor_objective`:
  a :class:`hfasr.optim.BatchObjective` on rows, chunks dealt to the ranks) on random spliced
  frames; the G v batch is ``--frame-curv-fraction`` of the frames;
- ``sequence``: the utterance-level sMBR objective (a :class:`hfasr.optim.BatchObjective` over
  :func:`hfasr.train.sequence.seq_examples`, batches dealt to the ranks) through the lattice
  forward-backward, on random layered lattices of
  realistic size (``--utts`` utterances of 150-350 frames, up to ``--width`` states per frame,
  ``--pdfs`` outputs), or, with ``--lat-dir``, on the real lattices of ``lats_train.pt`` (their
  topology, frame counts and pdfs; the features are random, the model sized to the lattices'
  pdfs); the G v batch is ``--seq-curv-fraction`` of the utterances.

For each: one warm-up call, then ``--reps`` timed calls, each from a barrier to the slowest
rank's end; the median call counts. Throughput = global frames processed / seconds (the gradient covers all
frames, a G v product the curvature batch); the G v batch is linearized once, outside the
timing. Prints a markdown table with the ratio N-proc / 1-proc. Speed-ups need N idle cores:
on a loaded machine the numbers say little.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

HIDDEN, LAYERS, FEAT, CONTEXT = 256, 3, 40, 5


# ------------------------------------------------------------------------------------ data

def random_lattice(T: int, K: int, rng: random.Random, width: int):
    """A layered lattice: 1..width states per frame boundary, every state reachable, random
    pdfs (0..K-1) and graph costs; arcs sorted by (src, dst) (topological state numbering)."""
    from hfasr.lattice import Lattice

    layers, sid = [], 0
    for t in range(T + 1):
        n = 1 if t in (0, T) else rng.randint(1, width)
        layers.append(range(sid, sid + n))
        sid += n
    src, dst, frame, pdf, gc = [], [], [], [], []
    for t in range(T):
        a, b = layers[t], layers[t + 1]
        reached = set()
        for s in a:
            for d in rng.sample(b, rng.randint(1, min(len(b), 3))):
                src.append(s), dst.append(d), frame.append(t), pdf.append(rng.randrange(K)), gc.append(rng.uniform(0, 2))
                reached.add(d)
        for d in b:
            if d not in reached:
                src.append(rng.choice(a)), dst.append(d), frame.append(t), pdf.append(rng.randrange(K))
                gc.append(rng.uniform(0, 2))
    order = sorted(range(len(src)), key=lambda i: (src[i], dst[i]))

    def L(xs, dt=torch.long):
        return torch.tensor([xs[i] for i in order], dtype=dt)

    final = torch.full((sid,), math.inf, dtype=torch.float64)
    final[layers[-1][0]] = 0.0
    p = L(pdf)
    return Lattice(num_states=sid, num_frames=T, src=L(src), dst=L(dst), frame=L(frame), pdf=p,
                   graph_cost=L(gc, torch.float64), final_cost=final, tid=p + 1, word=torch.zeros(len(src), dtype=torch.long))


def seq_utterances(args):
    """(utterances, K, tid2phone, silence phones): random or real lattices, random features."""
    from hfasr.criteria.sequence import SeqSupervision

    g = torch.Generator().manual_seed(1)
    if args.lat_dir:
        from hfasr.lattice.generate import lattice_path, load_lattices

        d = load_lattices(lattice_path(args.lat_dir, "train"))
        lats = d["lattices"][: args.utts] if args.utts else d["lattices"]
        K = int(d["tid2pdf"].max()) + 1
        tid2phone, sil = d["tid2phone"], list(d["silence_phones"])
    else:
        rng = random.Random(0)
        K = args.pdfs
        lats = [random_lattice(rng.randint(150, 350), K, rng, args.width) for _ in range(args.utts)]
        tid2phone, sil = torch.arange(K + 1), []
    utts = []
    for lat in lats:
        T = lat.num_frames
        ref, ref_tid = torch.zeros(T, dtype=torch.long), torch.zeros(T, dtype=torch.long)
        emit = lat.pdf >= 0
        ref[lat.frame[emit].flip(0)] = lat.pdf[emit].flip(0)  # some lattice arc's pdf per frame
        ref_tid[lat.frame[emit].flip(0)] = lat.tid[emit].flip(0)
        utts.append((torch.randn(T, FEAT, generator=g), SeqSupervision(lat, ref, ref_phone=tid2phone[ref_tid])))
    return utts, K, tid2phone, sil


# ------------------------------------------------------------------------------------ timing

def timed(fn, reps: int) -> float:
    """Median seconds of one call of ``fn`` over ``reps`` calls after one warm-up; each call is
    timed from a barrier to the slowest rank's end (the median damps other jobs' noise)."""
    from hfasr.optim.distributed import is_distributed

    fn()
    times = []
    for _ in range(reps):
        if is_distributed():
            torch.distributed.barrier()
        t0 = time.perf_counter()
        fn()
        dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        if is_distributed():
            torch.distributed.all_reduce(dt, op=torch.distributed.ReduceOp.MAX)
        times.append(float(dt))
    return reps * sorted(times)[len(times) // 2]


def bench_frame(args, rank: int, world: int) -> dict:
    from hfasr.criteria.curvature import SoftmaxFisher
    from hfasr.models import DNN
    from hfasr.optim import softmax_ce, tensor_objective

    torch.manual_seed(0)
    f = DNN(FEAT, args.pdfs, hidden_dim=HIDDEN, num_layers=LAYERS, context=CONTEXT).frames()
    g = torch.Generator().manual_seed(0)
    N = args.frames
    X = torch.randn(N, f.dnn.spliced_dim, generator=g)
    y = torch.randint(0, args.pdfs, (N,), generator=g)
    obj = tensor_objective(f, softmax_ce, lambda z, t: SoftmaxFisher(z), (X, y),
                           curvature_fraction=args.frame_curv_fraction, curvature_min=1, chunk_size=2048)
    gen = torch.Generator().manual_seed(0)
    t_grad = timed(lambda: obj.gradient(gen), args.reps)
    gn = obj.curvature(gen)
    v = torch.randn(sum(p.numel() for p in f.parameters()), generator=torch.Generator().manual_seed(2))
    m = min(N, max(1, math.ceil(args.frame_curv_fraction * N)))
    t_gv = timed(lambda: gn(v), args.reps)
    return {"frames": N, "gv_frames": m, "grad_fps": N * args.reps / t_grad, "gv_fps": m * args.reps / t_gv}


def bench_seq(args, rank: int, world: int) -> dict:
    from hfasr.criteria.sequence import SequenceConfig, SequenceCriterion
    from hfasr.models import DNN
    from hfasr.optim import BatchObjective
    from hfasr.train.sequence import SequenceLoss, seq_examples

    utts, K, tid2phone, sil = seq_utterances(args)
    torch.manual_seed(0)
    model = DNN(FEAT, K, hidden_dim=HIDDEN, num_layers=LAYERS, context=CONTEXT)
    crit = SequenceCriterion(SequenceConfig(criterion="smbr", acoustic_scale=0.1, curvature="fisher"),
                             torch.full((K,), -math.log(K)), tid2phone=tid2phone, silence_phones=sil)
    obj = BatchObjective(model, SequenceLoss(crit), seq_examples(utts, args.max_frames),
                         curvature_fraction=args.seq_curv_fraction, curvature_min=1)
    gen = torch.Generator().manual_seed(0)
    N = sum(int(x.shape[0]) for x, _ in utts)
    t_grad = timed(lambda: obj.gradient(gen), args.reps)
    gn = obj.curvature(gen)
    m = int(gn.normalizer)  # global frames of the curvature sample
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(2))
    t_gv = timed(lambda: gn(v), args.reps)
    return {"frames": N, "gv_frames": m, "utts": len(utts), "grad_fps": N * args.reps / t_grad,
            "gv_fps": m * args.reps / t_gv}


# ------------------------------------------------------------------------------------ driver

def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        res = {}
        if "frame" in args.objectives:
            res["frame"] = bench_frame(args, rank, world)
        if "sequence" in args.objectives:
            res["sequence"] = bench_seq(args, rank, world)
        if rank == 0:
            Path(out).write_text(json.dumps(res))
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts (first = baseline)")
    ap.add_argument("--objectives", nargs="+", default=["frame", "sequence"], choices=["frame", "sequence"])
    ap.add_argument("--reps", type=int, default=5, help="timed calls per measurement (after one warm-up); the median counts")
    ap.add_argument("--frames", type=int, default=65536, help="frame objective: training frames")
    ap.add_argument("--frame-curv-fraction", type=float, default=0.25)
    ap.add_argument("--pdfs", type=int, default=500, help="outputs (random lattices and the frame DNN)")
    ap.add_argument("--utts", type=int, default=192, help="sequence objective: utterances (0 with --lat-dir: all)")
    ap.add_argument("--width", type=int, default=6, help="random lattices: max states per frame")
    ap.add_argument("--seq-curv-fraction", type=float, default=0.25)
    ap.add_argument("--max-frames", type=int, default=1000,
                    help="padded frames per sequence batch (whole batches are dealt to the ranks: many small ones balance them)")
    ap.add_argument("--lat-dir", type=Path, help="use the real lattices of LAT_DIR/lats_train.pt")
    ap.add_argument("--out", type=Path, help="also write the table (markdown) and raw numbers (json) here")
    args = ap.parse_args()
    import torch.multiprocessing as mp

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.procs:
            t0 = time.perf_counter()
            out = os.path.join(tmp, f"w{n}.json")
            mp.spawn(_worker, args=(n, _free_port(), args, out), nprocs=n, join=True)
            results[n] = json.loads(Path(out).read_text())
            print(f"# {n} process(es): {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    base = args.procs[0]
    lines = [f"| objective | quantity | {' | '.join(f'{n} proc frames/s' for n in args.procs)} | "
             + " | ".join(f"ratio {n}/{base}" for n in args.procs[1:]) + " |",
             "|---|---|" + "---:|" * (2 * len(args.procs) - 1)]
    for obj in args.objectives:
        for key, name in (("grad_fps", "gradient"), ("gv_fps", "G v")):
            vals = [results[n][obj][key] for n in args.procs]
            ratios = [f"{v / vals[0]:.2f}x" for v in vals[1:]]
            lines.append(f"| {obj} | {name} | {' | '.join(f'{v:,.0f}' for v in vals)} | {' | '.join(ratios)} |")
    r = results[base]
    notes = []
    if "frame" in r:
        notes.append(f"frame: DNN {FEAT}x{2 * CONTEXT + 1} -> {LAYERS}x{HIDDEN} -> {args.pdfs}, "
                     f"{r['frame']['frames']} frames, G v batch {r['frame']['gv_frames']} frames")
    if "sequence" in r:
        src = f"real lattices from {args.lat_dir}" if args.lat_dir else f"random lattices (width {args.width})"
        notes.append(f"sequence: sMBR, {src}, {r['sequence']['utts']} utterances / {r['sequence']['frames']} "
                     f"frames, G v batch {r['sequence']['gv_frames']} frames, max_frames {args.max_frames}")
    text = "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + \
        f"\n- one thread per process, gloo, {os.cpu_count()} CPUs visible, {args.reps} timed reps\n"
    print(text, end="")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "distributed.md").write_text(text)
        (args.out / "distributed.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
