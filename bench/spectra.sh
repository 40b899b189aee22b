#!/usr/bin/env bash
# The curvature spectra of bench/results/spectrum_{an4_ce,fsdd_ce,an4_blstm_ctc,yesno_mdlstm5_ctc,fsdd_mdlstm_ctc}.md
# (issue 17), with the extra model states they need. Needs the recipes' exp dirs: recipes/an4
# (stages 1-6 and `--stage 10 --stop-stage 10 --ctc-runs "blstm_adam blstm_adamhf"`), recipes/fsdd
# (stages 1-6, and `--stage 10 --stop-stage 10 --ctc-runs "mdlstm_adam mdlstm_adamhf"`) and
# recipes/yesno (stages 1-3). The blank-stage / plateau states are trained here
# into WORK: the AN4 BLSTM after 1 Adam epoch; the 5-level yesno MDLSTM after 10 Adam epochs and
# after 4 HF updates from init (bench/configs/ctc_mdlstm_deep_*.yaml).
# Usage: bench/spectra.sh [WORK] [OUT]   (defaults /tmp/hfasr_spectra, bench/results)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${1:-/tmp/hfasr_spectra}; out=${2:-$root/bench/results}
venv=$("$root/tools/setup-env.sh"); export PATH="$venv/bin:$PATH"
cd "$root"; mkdir -p "$work" "$out"
S="python bench/spectrum.py --probes 3 --steps 30 --block-probes 1 --block-steps 15"
A="--data-dir recipes/an4/data --task an4"
Y="--data-dir recipes/yesno/data --task yesno --lang recipes/yesno/exp/lang"
sed -E 's/epochs: [0-9]+}/epochs: 1}/' recipes/an4/conf/ctc_blstm_adam.yaml > "$work/an4_blstm_ep1.yaml"
sed 's/epochs: 40/epochs: 10/' bench/configs/ctc_mdlstm_deep_adam.yaml > "$work/deep_adam10.yaml"
sed 's/updates: 40/updates: 4/' bench/configs/ctc_mdlstm_deep_hf.yaml > "$work/deep_hf4.yaml"
[ -f "$work/an4_blstm_ep1/final.pt" ] || hfasr train --config "$work/an4_blstm_ep1.yaml" $A --lang recipes/an4/exp/lang \
  --out "$work/an4_blstm_ep1" --quiet
for r in deep_adam10 deep_hf4; do
  [ -f "$work/$r/final.pt" ] || hfasr train --criterion ctc --model mdlstm $Y --out "$work/$r" --config "$work/$r.yaml" --quiet
done
$S --exp recipes/an4/exp/dnn_ce --init $A --ali-dir recipes/an4/exp/gmm --threads 1 --out "$out/spectrum_an4_ce" \
  --title "AN4 CE-DNN 4x256 ReLU: init, Adam (CE recipe)"
$S --exp recipes/fsdd/exp/dnn_ce --init --data-dir recipes/fsdd/data --task fsdd_conn --ali-dir recipes/fsdd/exp/gmm \
  --out "$out/spectrum_fsdd_ce" --title "FSDD connected-digit CE-DNN 3x512 ReLU (masked): init, Adam (CE recipe)"
$S --exp "$work/an4_blstm_ep1" --exp recipes/an4/exp/ctc_blstm_adam --exp recipes/an4/exp/ctc_blstm_adamhf --init $A \
  --lang recipes/an4/exp/lang --gates --damping 0.01 --threads 1 --out "$out/spectrum_an4_blstm_ctc" \
  --title "AN4 BLSTM-CTC 2x64: init, blank stage (Adam 1 epoch), Adam (dev-best epoch), Adam -> HF (2 updates)"
$S --exp "$work/deep_adam10" --exp "$work/deep_hf4" --init $Y --gates --damping 0.01 --threads 1 \
  --out "$out/spectrum_yesno_mdlstm5_ctc" \
  --title "yesno 5-level MDLSTM-CTC: init (blank plateau), Adam 10 epochs (plateau), HF 4 updates from init"
# FSDD MDLSTM-CTC: Adam's final.pt (its dev-WER epoch) with the HF section of the fine-tuning
# config (the operator HF starts with), then the fine-tuned model
rm -rf "$work/fsdd_mdlstm_adam" && cp -r recipes/fsdd/exp/ctc_mdlstm_adam "$work/fsdd_mdlstm_adam"
python - "$work/fsdd_mdlstm_adam/config.yaml" recipes/fsdd/conf/ctc_mdlstm_adamhf.yaml <<'PY'
import sys, yaml
cfg, ft = yaml.safe_load(open(sys.argv[1])), yaml.safe_load(open(sys.argv[2]))["hf"]
cfg["hf"]["optimizer"].update(ft.pop("optimizer", {}))
cfg["hf"].update(ft)
yaml.safe_dump(cfg, open(sys.argv[1], "w"))
PY
python bench/spectrum.py --probes 2 --steps 20 --block-probes 1 --block-steps 10 --exp "$work/fsdd_mdlstm_adam" \
  --exp recipes/fsdd/exp/ctc_mdlstm_adamhf --init --data-dir recipes/fsdd/data --task fsdd_conn \
  --lang recipes/fsdd/exp/lang --gates --damping 0.01 --threads 2 --out "$out/spectrum_fsdd_mdlstm_ctc" \
  --title "FSDD MDLSTM-CTC (2 levels, 8/16 units): init, Adam (dev-WER epoch), Adam -> HF (dev-WER update)"
