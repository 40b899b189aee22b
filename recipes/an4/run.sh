#!/usr/bin/env bash
# hfasr recipe for CMU AN4 (census: spelled letters, digits, names, commands; 16 kHz): the
# official test set (10 speakers, 130 utterances), dev = whole training speakers held out
# (~100 utterances, conf/prepare.yaml), train = the other training speakers.
#   0 download  fetch the SphinxTrain AN4 archive (NIST SPHERE audio; only when --corpus-dir is
#               not given)
#   1 prepare   an4 manifests and data/an4_lexicon.txt (the corpus's an4.dic)
#   2 features  fbank (lilcom) + global CMVN stats
#   3-9         lang (lexicon from an4.dic; prints the OOV rate and perplexity of G on dev/test),
#               (stage 5 realigns with a first CE DNN and trains dnn_ce on its alignments)
#               GMM, CE DNN, decoding, lattices, sequence training (--seq-runs), WER table and
#               sequence-training report (tools/hybrid.sh)
#   10-11       CTC training of each run of --ctc-runs (BLSTM / MDLSTM with HF / Adam,
#               conf/ctc_<run>.yaml) and greedy / TLG decoding, WER table (tools/ctc.sh)
# conf/ holds the settings chosen on the dev set (see the comments in each file).
# Usage: recipes/an4/run.sh [--corpus-dir DIR] [--stage N] [--stop-stage M] [--data DIR] [--exp DIR] [--conf DIR] [--seq-runs "smbr_hf mmi_hf smbr_sgd"] [--ctc-runs "blstm_hf blstm_adam mdlstm_hf mdlstm_adam"]
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
lm_weights="4,5,6,7,9,11,13"  # dev sweep of the decode stages (acoustic scale 1/LMWT; the CE model is best at 6-7)
word_penalties="0,0.5"
ctc_runs=""  # CTC runs <model>_<optimizer> (conf/ctc_<run>.yaml), e.g. "blstm_hf blstm_adam mdlstm_hf mdlstm_adam"
. "$root/tools/parse_options.sh"
marks=$exp/marks
. "$root/tools/recipe.sh"
task=an4
results_cer=1  # AN4 is also scored in CER (the published reference gives both)
realign=1  # a first CE DNN realigns the training data (dev WER 3.92 vs 4.28 on the GMM alignments)

if [ -z "$corpus_dir" ]; then
  stage_run 0 download hfasr prepare an4 --download --out "$data"
  corpus_dir=$data/download/an4
fi
stage_run 1 prepare hfasr prepare an4 --corpus-dir "$corpus_dir" --out "$data" --config "$conf/prepare.yaml"
stage_run 2 features hfasr features "$data" --task an4 --config "$conf/fbank.yaml"
. "$root/tools/hybrid.sh"
. "$root/tools/ctc.sh"
