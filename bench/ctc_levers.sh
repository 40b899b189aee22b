#!/usr/bin/env bash
# HF fine-tuning levers on the AN4 BLSTM-CTC (bench/results/ctc_finetune.md, 2026-12-01 section):
# 4 HF updates of recipes/an4/conf/ctc_blstm_adamhf.yaml from an Adam model, with one setting
# changed per run: curvature sample 2.5 / 5 / 10 / 20%, CG budget 25 / 50 / 200.
# Usage: bench/ctc_levers.sh ADAM_FINAL_PT AN4_DATA_DIR AN4_LANG_DIR [OUT]   (OUT default /tmp/ctc_levers)
# (ADAM_FINAL_PT: the measurement started from Adam epoch 15: recipes/an4/exp/ctc_blstm_adam/models/15.pt)
# Each run's dev CTC loss per update is in OUT/<variant>/history.jsonl.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
init=$1; data=$2; lang=$3; out=${4:-/tmp/ctc_levers}
venv=$("$root/tools/setup-env.sh"); export PATH="$venv/bin:$PATH"
mkdir -p "$out"
for v in cf0.025 cf0.05 cf0.1 cf0.2 cg25 cg50 cg200; do
  python - "$root/recipes/an4/conf/ctc_blstm_adamhf.yaml" "$out/$v.yaml" "$v" <<'PY'
import sys, yaml
d = yaml.safe_load(open(sys.argv[1])); v = sys.argv[3]
d["hf"]["updates"] = 4
if v.startswith("cf"):
    d["hf"]["curvature_fraction"] = float(v[2:])
else:
    d["hf"]["optimizer"]["cg_max_iters"] = int(v[2:])
yaml.safe_dump(d, open(sys.argv[2], "w"))
PY
  [ -f "$out/$v/final.pt" ] || hfasr train --criterion ctc --model blstm --optimizer hf --data-dir "$data" --task an4 \
    --lang "$lang" --out "$out/$v" --config "$out/$v.yaml" --init "$init" --quiet
  python -c "import json,sys; h=[json.loads(l) for l in open(sys.argv[1])]; print(sys.argv[2], ' '.join(f\"{r['dev_obj']:.5f}\" for r in h))" \
    "$out/$v/history.jsonl" "$v"
done
