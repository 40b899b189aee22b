#!/usr/bin/env bash
# The bounded-memory pipeline at 1x, 4x and 16x the synth training size (issue 16's bar):
# peak RSS and CPU seconds of features, lattice generation, CE training (streamed) and HF-sMBR
# (streamed), every factor with the same 1x models, so that each stage does the same work per
# utterance and only the corpus size changes.
#
# Usage: bench/scale_streamed.sh WORK OUT [FACTOR ...]   (default factors: 1 4 16)
#   WORK: bench/scale.py's --work. WORK/x1 must hold a finished 1x recipe (exp/gmm, exp/lang,
#   exp/dnn_ce); WORK/x<k>/data the prepared corpus of factor k (bench/scale.py, or
#   `hfasr prepare synth` with num_train = 2000 k).
#   OUT: per-factor outputs (lattices, alignments, models), res_<k>.jsonl (HFASR_RESOURCE_LOG)
#   and the table scale_streamed.md + scale_streamed.png.
#
# Per factor k, on WORK/x<k>/data with the models of WORK/x1:
#   features   hfasr features (recomputed: the archives are rewritten in place)
#   lattices   hfasr lattices with the 1x DNN (one shard per 1000 cuts)
#   align      hfasr align with the 1x DNN (the references of CE and HF-sMBR; not in the bar: it
#              holds every log-likelihood of a split, as the GMM stage holds every feature)
#   ce         1 Adam epoch of the recipe's 4 x 256 DNN, stream_buffer_utts 256
#   hf-smbr    2 HF updates of the recipe's sMBR config from the 1x DNN, stream_cache_utts 256,
#              no dev decode (its cost does not grow with the corpus)
# A step whose output exists is not rerun (delete it to redo). Wall times depend on what else
# runs on the machine; CPU seconds (user + system, workers included) much less so.
set -euo pipefail
work=$1; out=$2; shift 2
factors=${*:-1 4 16}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$("$root/tools/setup-env.sh")
export PATH="$venv/bin:$PATH"
x1=$work/x1
mkdir -p "$out"
python - "$root/recipes/synth/conf" "$out" <<'PY'
import sys, yaml
conf, out = sys.argv[1:]
ce = yaml.safe_load(open(f"{conf}/train_ce.yaml"))
ce.update(epochs=1, lr_schedule="constant", stream_buffer_utts=256)
yaml.safe_dump(ce, open(f"{out}/ce_stream.yaml", "w"))
seq = yaml.safe_load(open(f"{conf}/seq_smbr_hf.yaml"))
seq.update(dev_wer=False, keep_models=False, select="last", stream_cache_utts=256)
seq["hf"]["updates"] = 2
yaml.safe_dump(seq, open(f"{out}/smbr_stream.yaml", "w"))
PY
for k in $factors; do
  x=$work/x$k
  export HFASR_RESOURCE_LOG=$out/res_$k.jsonl
  echo "== factor $k: $(zcat "$x/data/synth_cuts_train.jsonl.gz" | wc -l) training cuts"
  [ -f "$out/.feats_$k" ] || { hfasr features "$x/data" --task synth --config "$root/recipes/synth/conf/fbank.yaml" \
      --num-jobs 2 --quiet && touch "$out/.feats_$k"; }
  [ -d "$out/lats_$k" ] || hfasr lattices --model "$x1/exp/dnn_ce/final.pt" --data-dir "$x/data" --task synth \
      --lang "$x1/exp/lang" --gmm-dir "$x1/exp/gmm" --out "$out/lats_$k" --num-jobs 2 --quiet
  [ -d "$out/ali_$k" ] || hfasr align --model "$x1/exp/dnn_ce/final.pt" --data-dir "$x/data" --task synth \
      --gmm-dir "$x1/exp/gmm" --lang "$x1/exp/lang" --out "$out/ali_$k" --num-jobs 2 --quiet
  [ -f "$out/ce_$k/final.pt" ] || hfasr train --criterion ce --optimizer adam --data-dir "$x/data" --task synth \
      --ali-dir "$out/ali_$k" --out "$out/ce_$k" --config "$out/ce_stream.yaml" --quiet
  [ -f "$out/smbr_$k/final.pt" ] || hfasr train --criterion smbr --data-dir "$x/data" --task synth \
      --ali-dir "$out/ali_$k" --lat-dir "$out/lats_$k" --init "$x1/exp/dnn_ce/final.pt" --out "$out/smbr_$k" \
      --config "$out/smbr_stream.yaml" --quiet
done
python - "$out" $factors <<'PY'
import json, sys
from pathlib import Path

import torch

out, ks = Path(sys.argv[1]), [int(k) for k in sys.argv[2:]]
stages = [("features", lambda a: a[0] == "features"), ("lattices", lambda a: a[0] == "lattices"),
          ("align", lambda a: a[0] == "align"), ("ce (streamed, 1 epoch)", lambda a: a[0] == "train" and "ce" in a),
          ("hf-smbr (streamed, 2 updates)", lambda a: a[0] == "train" and "smbr" in a)]
res = {}
for k in ks:
    recs = [json.loads(x) for x in (out / f"res_{k}.jsonl").read_text().splitlines() if x.strip()]
    res[k] = {}
    for name, match in stages:
        rows = [r for r in recs if match(r["argv"]) and r["status"] == 0]
        if rows:
            r = rows[-1]  # the last successful run of the step
            res[k][name] = {"rss": max(r["max_rss_mb"], r["max_rss_children_mb"]), "cpu": r.get("cpu_s"),
                            "wall": r["wall_s"]}
k0, kn = min(ks), max(ks)
lines = ["# Bounded-memory pipeline at " + ", ".join(f"{k}x" for k in ks) + " the synth training size", "",
         f"`bench/scale_streamed.sh WORK {out} {' '.join(map(str, ks))}`: every factor with the 1x models "
         "(features recomputed, lattices, DNN alignment, CE 1 epoch streamed, HF-sMBR 2 updates streamed).", "",
         "| stage | " + " | ".join(f"{k}x RSS MB | {k}x CPU s | {k}x wall s" for k in ks)
         + f" | RSS {kn}x / {k0}x | CPU {kn}x / linear |",
         "|---|" + "---:|---:|---:|" * len(ks) + "---:|---:|"]
for name, _ in stages:
    cells = []
    for k in ks:
        s = res[k].get(name)
        cells += ([f"{s['rss']:.0f}", f"{s['cpu']:.0f}" if s["cpu"] is not None else "-", f"{s['wall']:.0f}"]
                  if s else ["-", "-", "-"])
    a, b = res[k0].get(name), res[kn].get(name)
    ratio = f"{b['rss'] / a['rss']:.2f}" if a and b and kn != k0 else "-"
    lin = (f"{b['cpu'] / (a['cpu'] * kn / k0):.2f}" if a and b and kn != k0 and a["cpu"] and b["cpu"] else "-")
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} | {lin} |")
lines += ["", "| factor | train cuts | train arcs | arcs / frame | bytes / arc on disk | HF-sMBR CG iterations (2 updates) |",
          "|---:|---:|---:|---:|---:|---:|"]
for k in ks:
    idx = torch.load(out / f"lats_{k}" / "lats_train.index.pt", weights_only=True)
    arcs = frames = disk = 0
    for sh in idx["shards"]:
        d = torch.load(out / f"lats_{k}" / sh["file"], weights_only=True, mmap=True)
        arcs += int(d["src"].numel()); frames += int(d["num_frames"].sum())
        disk += (out / f"lats_{k}" / sh["file"]).stat().st_size
    hist = out / f"smbr_{k}" / "history.jsonl"
    cg = sum(json.loads(x).get("cg_iters") or 0 for x in hist.read_text().splitlines()) if hist.is_file() else "-"
    lines.append(f"| {k} | {sum(len(sh['cut_ids']) for sh in idx['shards'])} | {arcs} | {arcs / frames:.1f} | "
                 f"{disk / arcs:.1f} | {cg} |")
text = "\n".join(lines) + "\n"
print(text)
(out / "scale_streamed.md").write_text(text)
(out / "scale_streamed.json").write_text(json.dumps(res, indent=1))
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, _ in stages:
        kk = [k for k in ks if name in res[k]]
        axes[0].plot([2000 * k for k in kk], [res[k][name]["rss"] for k in kk], "o-", label=name)
        axes[1].plot([2000 * k for k in kk], [res[k][name]["cpu"] or float("nan") for k in kk], "o-", label=name)
    for ax, yl in zip(axes, ("peak RSS (MB)", "CPU seconds")):
        ax.set_xscale("log"); ax.set_yscale("log"); ax.set_xlabel("training utterances"); ax.set_ylabel(yl)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scale_streamed.png", dpi=110)
except ImportError:
    pass
PY
