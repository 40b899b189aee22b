#!/usr/bin/env bash
# Peak RSS of the memory-bounded paths on bench/scale.py's data (bench/results/scale.md, second
# table): `hfasr lattices` with the default one shard per 1000 cuts, and one Adam epoch of the
# synth recipe's CE DNN in memory vs streamed (stream_buffer_utts: 256), per factor.
# Usage: bench/scale_memory.sh WORK OUT [FACTOR ...]   (WORK: bench/scale.py's --work; default factors 1 4)
set -euo pipefail
work=$1; out=$2; shift 2
factors=${*:-1 4}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$("$root/tools/setup-env.sh")
export PATH="$venv/bin:$PATH"
mkdir -p "$out"
python - "$root/recipes/synth/conf/train_ce.yaml" "$out" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
cfg.update(epochs=1, lr_schedule="constant")
yaml.safe_dump(cfg, open(f"{sys.argv[2]}/mem.yaml", "w"))
yaml.safe_dump({**cfg, "stream_buffer_utts": 256}, open(f"{sys.argv[2]}/stream.yaml", "w"))
PY
for k in $factors; do
  x=$work/x$k
  export HFASR_RESOURCE_LOG=$out/res_$k.jsonl
  rm -f "$HFASR_RESOURCE_LOG"
  hfasr lattices --model "$x/exp/dnn_ce/final.pt" --data-dir "$x/data" --task synth --lang "$x/exp/lang" \
    --gmm-dir "$x/exp/gmm" --out "$out/lats_$k" --num-jobs 2 --quiet
  for m in mem stream; do
    hfasr train --criterion ce --optimizer adam --data-dir "$x/data" --task synth --ali-dir "$x/exp/gmm" \
      --out "$out/ce_${m}_$k" --config "$out/$m.yaml" --quiet
  done
done
python - "$out" $factors <<'PY'
import json, sys
out, ks = sys.argv[1], sys.argv[2:]
print("| factor | lattices RSS MB | CE in memory RSS MB | CE streamed RSS MB |\n|---:|---:|---:|---:|")
for k in ks:
    recs = [json.loads(x) for x in open(f"{out}/res_{k}.jsonl")]
    rss = [max(r["max_rss_mb"], r["max_rss_children_mb"]) for r in recs]
    print(f"| {k} | {rss[0]:.0f} | {rss[1]:.0f} | {rss[2]:.0f} |")
PY
