#!/usr/bin/env bash
# hfasr recipe for Kaldi's yesno corpus (lhotse's 30/30 split). Stages:
#   0 download  fetch waves_yesno (only when --corpus-dir is not given and not yet present)
#   1 prepare   lhotse manifests
#   2 features  fbank (lilcom) + global CMVN stats
#   3-9         lang, GMM, CE DNN, decoding, lattices, sequence training (--seq-runs),
#               WER table and sequence-training report (tools/hybrid.sh)
#   10-11       CTC training of each run of --ctc-runs (BLSTM / MDLSTM with HF / Adam,
#               conf/ctc_<run>.yaml) and greedy / TLG decoding, WER table (tools/ctc.sh)
# Usage: recipes/yesno/run.sh [--corpus-dir DIR/waves_yesno] [--stage N] [--stop-stage M] [--data DIR] [--exp DIR] [--conf DIR] [--seq-runs "smbr_hf mmi_hf smbr_sgd"] [--ctc-runs "blstm_hf blstm_adam mdlstm_hf mdlstm_adam"]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
stage=0
stop_stage=100
nj=1
corpus_dir=""
data=$here/data
exp=$here/exp
conf=$here/conf  # YAML configs of every stage
seq_runs=""  # sequence-training runs <criterion>_<optimizer> (conf/seq_<run>.yaml); "" for none
ctc_runs=""  # CTC runs <model>_<optimizer> (conf/ctc_<run>.yaml), e.g. "blstm_hf blstm_adam mdlstm_hf mdlstm_adam"
. "$root/tools/parse_options.sh"
marks=$exp/marks
. "$root/tools/recipe.sh"
task=yesno

if [ -z "$corpus_dir" ]; then
  corpus_dir=$here/download/waves_yesno
  stage_run 0 download python -c "from lhotse.recipes import download_yesno; download_yesno('$here/download')"
fi
stage_run 1 prepare hfasr prepare yesno --corpus-dir "$corpus_dir" --out "$data"
stage_run 2 features hfasr features "$data" --task $task --config "$conf/fbank.yaml"
. "$root/tools/hybrid.sh"
. "$root/tools/ctc.sh"
