#!/usr/bin/env bash
# hfasr recipe for the embedded synthetic AN4-style alphanumeric corpus (generated offline with
# eSpeak NG; needs nothing but the installed package). Stages:
#   1 prepare   synthesize train/dev/test (speaker-independent test voices) -> lhotse manifests
#   2 features  fbank (lilcom) + global CMVN stats
#   3-9         lang, GMM, CE DNN, decoding, lattices, sequence training (--seq-runs),
#               WER table and sequence-training report (tools/hybrid.sh)
#   10-11       CTC training of each run of --ctc-runs (BLSTM / MDLSTM with HF / Adam,
#               conf/ctc_<run>.yaml) and greedy / TLG decoding, WER table (tools/ctc.sh)
# Usage: recipes/synth/run.sh [--stage N] [--stop-stage M] [--nj J] [--data DIR] [--exp DIR] [--conf DIR] [--seq-runs "smbr_hf mmi_hf smbr_sgd"] [--ctc-runs "blstm_hf blstm_adam mdlstm_hf mdlstm_adam"]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
stage=1
stop_stage=100
nj=2
data=$here/data
exp=$here/exp
conf=$here/conf  # YAML configs of every stage
seq_runs="smbr_hf"  # sequence-training runs <criterion>_<optimizer> (conf/seq_<run>.yaml); "" for none
ctc_runs=""  # CTC runs <model>_<optimizer> (conf/ctc_<run>.yaml), e.g. "blstm_hf blstm_adam mdlstm_hf mdlstm_adam"
lm_weights="4,5,6,7,9"  # dev sweep of the decode stages (acoustic scale 1/LMWT)
word_penalties="0,0.5"
. "$root/tools/parse_options.sh"
marks=$exp/marks
. "$root/tools/recipe.sh"
task=synth

stage_run 1 prepare hfasr prepare synth --out "$data" --config "$conf/synth.yaml" --num-jobs "$nj"
stage_run 2 features hfasr features "$data" --task $task --config "$conf/fbank.yaml"
. "$root/tools/hybrid.sh"
. "$root/tools/ctc.sh"
