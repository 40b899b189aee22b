"""Peak resident memory of an ``hfasr`` command per phase of HF training (the profile in
bench/results/scale_streamed.md): runs the command in-process, samples RSS every 50 ms and
attributes it to the phase running then (load, dev, gradient, curvature, cg, loss = held-out /
curvature-set losses; start = anything else). Prints {phase: peak MB} on stderr.

    python bench/profile_phases.py train --criterion smbr --data-dir X/data --task synth \
        --ali-dir OUT/ali_4 --lat-dir OUT/lats_4 --init X1/exp/dnn_ce/final.pt --out /tmp/p4 \
        --config OUT/smbr_stream.yaml --quiet          # OUT, X: bench/scale_streamed.sh's
"""
import sys
import threading
import time
from collections import defaultdict

phase = ["start"]
peak = defaultdict(float)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
def sampler():
    while True:
        r = rss(); p = phase[0]
        peak[p] = max(peak[p], r)
        time.sleep(0.05)
threading.Thread(target=sampler, daemon=True).start()
from hfasr.optim import objective as O
from hfasr.train import sequence as S


def wrap(cls, name, label):
    f = getattr(cls, name)
    def g(*a, **k):
        old = phase[0]; phase[0] = label
        try: return f(*a, **k)
        finally: phase[0] = old
    setattr(cls, name, g)
wrap(O.BatchObjective, "gradient", "gradient")
wrap(O.BatchObjective, "curvature", "curvature")
wrap(O.BatchObjective, "_mean", "loss")
import hfasr.optim.hf as H

wrap(H, "pcg", "cg")
wrap(S.SequenceTask, "evaluate", "dev")
wrap(S, "load_seq_data", "load")
wrap(S.StreamedSeqSet, "load", "load")
from hfasr.cli import main

rc = main(sys.argv[1:])
print({k: round(v) for k, v in peak.items()}, file=sys.stderr)
