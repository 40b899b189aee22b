#!/usr/bin/env bash
# hfasr recipe for the Free Spoken Digit Dataset: isolated digits (own split, held-out
# speakers) and connected digits built from them (held-out speakers; the main real-data task).
#   0 download  fetch the FSDD archive (only when --corpus-dir is not given)
#   1 prepare   fsdd_iso, fsdd_spk, fsdd_conn manifests
#   2 features  fbank (lilcom) + global CMVN stats of the three tasks
#   3-9         on fsdd_conn: lang, GMM, CE DNN, decoding, lattices, sequence training
#               (--seq-runs), WER table and sequence-training report (tools/hybrid.sh)
#   10-11       on fsdd_conn: CTC training of each run of --ctc-runs (BLSTM / MDLSTM with HF /
#               Adam, conf/ctc_<run>.yaml) and greedy / TLG decoding, WER table (tools/ctc.sh)
# Usage: recipes/fsdd/run.sh [--corpus-dir DIR] [--stage N] [--stop-stage M] [--data DIR] [--exp DIR] [--conf DIR] [--seq-runs "smbr_hf mmi_hf smbr_sgd"] [--ctc-runs "blstm_hf blstm_adam mdlstm_hf mdlstm_adam"]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
stage=0
stop_stage=100
nj=2
corpus_dir=""
data=$here/data
exp=$here/exp
conf=$here/conf  # YAML configs of every stage
seq_runs="smbr_hf mmi_hf smbr_sgd"  # sequence-training runs <criterion>_<optimizer> (conf/seq_<run>.yaml); "" for none
ctc_runs=""  # CTC runs <model>_<optimizer> (conf/ctc_<run>.yaml), e.g. "blstm_hf blstm_adam mdlstm_hf mdlstm_adam"
. "$root/tools/parse_options.sh"
marks=$exp/marks
. "$root/tools/recipe.sh"
task=fsdd_conn

if [ -z "$corpus_dir" ]; then
  stage_run 0 download hfasr prepare fsdd --download --out "$data"
  corpus_dir=$(ls -d "$data"/download/free-spoken-digit-dataset-* | head -1)
fi
stage_run 1 prepare hfasr prepare fsdd --corpus-dir "$corpus_dir" --out "$data" --config "$conf/prepare.yaml"
stage_run 2 features hfasr features "$data" --task fsdd_conn fsdd_spk fsdd_iso --config "$conf/fbank.yaml"
# LM-weight sweeps on dev (GMM and DNNs): on this digit loop both still improve at LMWT 17
gmm_lm_weights=${gmm_lm_weights:-9,11,13,15,17,20,24,28}
lm_weights=${lm_weights:-7,9,11,13,15,17,20,24,28}
. "$root/tools/hybrid.sh"
. "$root/tools/ctc.sh"
